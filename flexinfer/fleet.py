"""Fleet files: simulated nodes and GPUs for the fake readers, the demo, preflight and benchmarks.

Format (YAML; MiB, watts, celsius, percent carry their unit in the key):

    apiVersion: flexinfer.ai/v1
    kind: Fleet
    nodes:
      - name: cblevins-7900xtx
        labels: {topology.kubernetes.io/zone: homelab}   # extra Node labels
        taints: [{key: dedicated, value: gpu, effect: NoSchedule}]
        driverVersion: "6.10.5"                            # optional
        gpuReplicas: 4              # device-plugin time-slicing: each GPU advertised 4 times
        faults: [{type: library-missing}]                  # node-level faults
        gpus:
          - vendor: amd                 # nvidia | amd | intel
            arch: gfx1100               # sm_XY or gfxNNN
            product: AMD Radeon RX 7900 XTX
            totalMiB: 24560
            usedMiB: 900
            powerW: 38
            powerCapW: 327
            temperatureC: 41
            utilizationPct: 0
            pcie: {gen: 4, width: 16, maxGen: 4, maxWidth: 16}
            unifiedMemory: false        # APUs (Strix Halo): VRAM carved from system RAM
            healthy: true
            faults:
              - {type: noise, mib: 100}             # +/- jitter on used memory every sample
              - {type: xid, xid: 79, atSample: 3}   # NVIDIA Xid event at the 3rd sample
              - {type: ecc, uncorrectable: 1, atSample: 2}   # AMD RAS event
              - {type: lost, atSample: 5}           # GPU falls off the bus
              - {type: not-supported, metric: power}   # NVML/amdsmi NotSupported forever

Telemetry and sharing (all optional): memoryTemperatureC (absent: the GPU has no memory sensor, as on
GeForce cards), memoryUtilizationPct, encoderPct, decoderPct, pcie {txKBps, rxKBps}, gttTotalMiB /
gttUsedMiB (AMD), mig: [{profile: 3g.40gb, totalMiB: 40192, usedMiB: 0}] (NVIDIA MIG mode on, one entry per
MIG instance), driver: xe | i915 and deviceId: "0x56a0" (Intel). Node: cudaVersion / rocmVersion next
to driverVersion.

GPU faults: noise, xid, ecc, lost, not-supported, throttle (reasons list), row-remap {correctable,
uncorrectable, pending, failed} (NVIDIA Ampere+), retired-pages {correctable = single-bit,
uncorrectable = double-bit, pending} (NVIDIA before Ampere). Node faults: library-missing (the vendor
library cannot be loaded), driver-mismatch.
"""

from __future__ import annotations

import hashlib
import random
import re
from importlib import resources
from pathlib import Path
from typing import Literal

import msgspec
import yaml

from flexinfer.arch import arch_info
from flexinfer.errors import ParseError

FaultType = Literal["noise", "xid", "ecc", "lost", "not-supported", "throttle", "library-missing",
                    "driver-mismatch", "row-remap", "retired-pages"]
# Metric groups a `not-supported` fault can switch off (the readers' names for them).
METRICS = ("power", "temperature", "utilization", "clocks", "pcie", "ecc", "memory_v2", "throttle", "events",
           "energy", "memory_temperature", "pcie_throughput", "encoder", "decoder", "row_remap", "retired_pages",
           "mig", "gtt")

# What the fake libraries report when the fleet file does not say (and what offline labels assume).
DEFAULT_NVIDIA_DRIVER = "580.95.05"
DEFAULT_CUDA_VERSION = "13.0"
DEFAULT_AMD_DRIVER = "6.12.12"
DEFAULT_ROCM_VERSION = "7.0.2"
DEFAULT_INTEL_DRIVER = "6.12.12"


class Fault(msgspec.Struct, rename="camel", forbid_unknown_fields=True, omit_defaults=True):
    type: FaultType
    at_sample: int = 0  # 0 = from the start
    mib: int = 0
    xid: int = 0
    uncorrectable: int = 0
    correctable: int = 0
    metric: str = ""
    reasons: list[str] = []
    pending: bool = False
    failed: bool = False


class Pcie(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    gen: int = 4
    width: int = 16
    max_gen: int = 4
    max_width: int = 16
    tx_k_bps: int = msgspec.field(default=0, name="txKBps")  # throughput, KiB/s
    rx_k_bps: int = msgspec.field(default=0, name="rxKBps")


class FleetMig(msgspec.Struct, rename="camel", forbid_unknown_fields=True, omit_defaults=True):
    """One MIG instance of an NVIDIA GPU in MIG mode."""

    profile: str  # "3g.40gb" (or "1c.3g.40gb")
    total_mi_b: int = msgspec.field(name="totalMiB")
    used_mi_b: int = msgspec.field(default=0, name="usedMiB")
    uuid: str = ""


class FleetGpu(msgspec.Struct, rename="camel", forbid_unknown_fields=True, omit_defaults=True):
    vendor: str
    arch: str
    total_mi_b: int = msgspec.field(name="totalMiB")
    product: str = ""
    used_mi_b: int = msgspec.field(default=0, name="usedMiB")
    uuid: str = ""
    power_w: float = 50.0
    power_cap_w: float = 250.0
    temperature_c: float = 40.0
    utilization_pct: float = 0.0
    sm_clock_mhz: int = 1500
    mem_clock_mhz: int = 7000
    pcie: Pcie = msgspec.field(default_factory=Pcie)
    unified_memory: bool = False
    healthy: bool = True
    faults: list[Fault] = []
    memory_temperature_c: float | None = None
    memory_utilization_pct: float = 0.0
    encoder_pct: float = 0.0
    decoder_pct: float = 0.0
    gtt_total_mi_b: int = msgspec.field(default=16384, name="gttTotalMiB")
    gtt_used_mi_b: int = msgspec.field(default=64, name="gttUsedMiB")
    mig: list[FleetMig] = []
    driver: str = ""  # Intel kernel driver: xe (default) or i915
    device_id: str = ""  # Intel PCI device id ("0x56a0"); default: the platform's best-known part

    @property
    def total_mib(self) -> int:
        return self.total_mi_b

    @property
    def used_mib(self) -> int:
        return self.used_mi_b


class FleetNode(msgspec.Struct, rename="camel", forbid_unknown_fields=True, omit_defaults=True):
    name: str
    gpus: list[FleetGpu] = []
    labels: dict[str, str] = {}
    taints: list[dict[str, str]] = []
    driver_version: str = ""
    cuda_version: str = ""
    rocm_version: str = ""
    gpu_replicas: int = 1  # device-plugin time-slicing replicas per GPU (nvidia.com/gpu: count x replicas)
    cpu: str = "16"
    memory: str = "64Gi"
    faults: list[Fault] = []


class Fleet(msgspec.Struct, rename="camel", forbid_unknown_fields=True, omit_defaults=True):
    nodes: list[FleetNode]
    api_version: str = "flexinfer.ai/v1"
    kind: str = "Fleet"
    description: str = ""

    def node(self, name: str) -> FleetNode:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"node {name!r} is not in the fleet (nodes: {', '.join(n.name for n in self.nodes)})")


_MIG_PROFILE = re.compile(r"^([0-9]{1,2}c\.)?[0-9]{1,2}g\.[0-9]{1,4}gb$")


def mig_uuid(node: str, index: int, k: int, m: FleetMig) -> str:
    if m.uuid:
        return m.uuid
    d = hashlib.sha256(f"{node}/{index}/mig/{k}".encode()).hexdigest()
    return f"MIG-{d[:8]}-{d[8:12]}-{d[12:16]}-{d[16:20]}-{d[20:32]}"


def gpu_uuid(node: str, index: int, gpu: FleetGpu) -> str:
    if gpu.uuid:
        return gpu.uuid
    digest = hashlib.sha256(f"{node}/{index}".encode()).hexdigest()
    if gpu.vendor.lower() == "nvidia":
        return f"GPU-{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


def parse_fleet(data: object, source: str = "fleet") -> Fleet:
    """Validate a fleet document. Errors name the path: `fleet: nodes[2].gpus[0].arch: ...`."""
    if not isinstance(data, dict):
        raise ParseError(source, data, "a mapping with a 'nodes' list")
    try:
        fleet = msgspec.convert(data, Fleet, str_keys=True)
    except msgspec.ValidationError as e:
        # Put the path (`$.nodes[0].gpus[1].totalMiB`) in `what` so truncating the value never hides it.
        text, _, path = str(e).rpartition(" - at `$")
        where = f"{source}: {path.rstrip('`')}" if text else source
        raise ParseError(where, text or str(e), "a valid fleet document (see flexinfer.fleet)") from None
    seen: set[str] = set()
    for i, node in enumerate(fleet.nodes):
        if not node.name or node.name in seen:
            raise ParseError(f"{source}: nodes[{i}].name", node.name, "a unique non-empty node name")
        seen.add(node.name)
        if not 1 <= node.gpu_replicas <= 64:
            raise ParseError(f"{source}: nodes[{i}].gpuReplicas", node.gpu_replicas, "1 to 64")
        for j, g in enumerate(node.gpus):
            where = f"{source}: nodes[{i}].gpus[{j}]"
            try:
                arch_info(g.vendor, g.arch)
            except ParseError as e:
                raise ParseError(where, f"{g.vendor}/{g.arch}", str(e)) from None
            if g.total_mi_b <= 0 or not 0 <= g.used_mi_b <= g.total_mi_b:
                raise ParseError(where, (g.total_mi_b, g.used_mi_b), "totalMiB > 0 and 0 <= usedMiB <= totalMiB")
            if g.mig and g.vendor.lower() != "nvidia":
                raise ParseError(f"{where}.mig", g.vendor, "MIG instances on an NVIDIA GPU only")
            if len(g.mig) > 7 or sum(m.total_mi_b for m in g.mig) > g.total_mi_b:
                raise ParseError(f"{where}.mig", len(g.mig), "at most 7 MIG instances within the GPU's memory")
            for k, m in enumerate(g.mig):
                if not _MIG_PROFILE.match(m.profile) or m.total_mi_b <= 0 or not 0 <= m.used_mi_b <= m.total_mi_b:
                    raise ParseError(f"{where}.mig[{k}]", m.profile,
                                     "a profile like 3g.40gb with totalMiB > 0 and 0 <= usedMiB <= totalMiB")
            if g.driver not in ("", "xe", "i915") or (g.driver and g.vendor.lower() != "intel"):
                raise ParseError(f"{where}.driver", g.driver, "xe or i915, on an Intel GPU")
            if g.device_id and not re.fullmatch(r"0x[0-9a-fA-F]{4}", g.device_id):
                raise ParseError(f"{where}.deviceId", g.device_id, "a PCI device id such as 0x56a0")
            for k, f in enumerate(g.faults):
                if f.type == "not-supported" and f.metric not in METRICS:  # a typo would silently do nothing
                    raise ParseError(f"{where}.faults[{k}].metric", f.metric, "one of " + ", ".join(METRICS))
    return fleet


MAX_FLEET_FILE_BYTES = 16 << 20  # a 5000-node generated fleet (generate_fleet) is ~3.6 MiB


def load_fleet(path: str | Path) -> Fleet:
    """Read and check a fleet file; ParseError when it is unreadable, over MAX_FLEET_FILE_BYTES or invalid."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_FLEET_FILE_BYTES + 1)
    except OSError as e:
        raise ParseError("fleet file", str(p), f"a readable file ({e.strerror})") from None
    if len(raw) > MAX_FLEET_FILE_BYTES:
        raise ParseError("fleet file", str(p), f"at most {MAX_FLEET_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ParseError("fleet file", str(p), f"UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError) as e:  # ValueError: e.g. an integer with > 4300 digits
        raise ParseError(f"fleet file {p}", text[:60], f"valid YAML ({e})") from None
    return parse_fleet(data, f"fleet file {p}")


def default_fleet_path() -> Path:
    """The embedded homelab fleet (hack/fleets/homelab.yaml links to this packaged file)."""
    return Path(str(resources.files("flexinfer") / "data" / "homelab.yaml"))


_GENERATED_SHAPES = (
    ("nvidia", "sm_90", "NVIDIA H100 80GB HBM3", 81559, 8, 700),
    ("nvidia", "sm_89", "NVIDIA L40S", 46068, 4, 350),
    ("nvidia", "sm_86", "NVIDIA A10", 23028, 1, 150),
    ("nvidia", "sm_75", "Tesla T4", 15360, 2, 70),
    ("nvidia", "sm_52", "NVIDIA GeForce GTX 980 Ti", 6144, 1, 250),
    ("nvidia", "sm_120", "NVIDIA RTX PRO 4000 Blackwell", 24467, 1, 70),
    ("amd", "gfx942", "AMD Instinct MI300X OAM", 196592, 8, 750),
    ("amd", "gfx1100", "AMD Radeon RX 7900 XTX", 24560, 1, 327),
    ("amd", "gfx906", "AMD Radeon VII", 16368, 1, 250),
    ("none", "", "", 0, 0, 0),
)


def generate_fleet(n: int, seed: int = 42) -> Fleet:
    """A deterministic large fleet (mixed datacenter + consumer GPUs) for benchmarks."""
    rng = random.Random(seed)
    nodes: list[FleetNode] = []
    for i in range(n):
        vendor, arch, product, total, count, cap = _GENERATED_SHAPES[i % len(_GENERATED_SHAPES)]
        gpus = []
        for _ in range(count):
            used = int(total * rng.choice((0.02, 0.1, 0.35, 0.6, 0.9)))
            gpus.append(FleetGpu(vendor=vendor, arch=arch, total_mi_b=total, product=product, used_mi_b=used,
                                 power_cap_w=cap, power_w=cap * 0.2))
        nodes.append(FleetNode(name=f"node-{i:05d}", gpus=gpus,
                               labels={"topology.kubernetes.io/zone": f"zone-{i % 3}"}))
    return Fleet(nodes=nodes, description=f"generated: {n} nodes, seed {seed}")


def dump_fleet(fleet: Fleet) -> str:
    return yaml.safe_dump(msgspec.to_builtins(fleet), sort_keys=False)
