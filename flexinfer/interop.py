"""Our node labels next to NVIDIA GPU Feature Discovery's and AMD's node labeller's: the mapping (the README
table and docs/label-interop.md are checked against it) and a cross-check of their labels with what the agent
reads, whose findings go into `flexinfer.ai/agent-status`.

We never write `nvidia.com/*` or `amd.com/*` keys: GFD (through NFD) and the AMD labeller own them and remove
what they did not write. When they are present the agent compares the facts both sides measure (GPU count and
memory, compute capability, driver version, AMD VRAM and family) and reports a disagreement: it means one of
the two sees the node wrongly (a GPU missing from one view, a labeller that has not relabelled since a driver
upgrade, a product table that is out of date). Facts whose meaning differs by labeller version (GFD's family
names moved between releases) are not compared. Pure functions; no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from flexinfer import keys
from flexinfer.arch import AMD, NVIDIA
from flexinfer.state import NodeGpuState

# --- foreign keys ---------------------------------------------------------------------------------------------
GFD = "nvidia.com/"
GFD_PRODUCT = GFD + "gpu.product"
GFD_COUNT = GFD + "gpu.count"
GFD_MEMORY = GFD + "gpu.memory"  # MiB
GFD_FAMILY = GFD + "gpu.family"
GFD_COMPUTE_MAJOR = GFD + "gpu.compute.major"
GFD_COMPUTE_MINOR = GFD + "gpu.compute.minor"
GFD_DRIVER_FULL = GFD + "cuda.driver-version.full"
GFD_DRIVER_MAJOR = GFD + "cuda.driver-version.major"
GFD_RUNTIME_FULL = GFD + "cuda.runtime-version.full"
GFD_RUNTIME_MAJOR = GFD + "cuda.runtime-version.major"
GFD_RUNTIME_MINOR = GFD + "cuda.runtime-version.minor"
GFD_SHARING = GFD + "gpu.sharing-strategy"
GFD_REPLICAS = GFD + "gpu.replicas"
GFD_MIG_STRATEGY = GFD + "mig.strategy"

AMD_LABELLER = "amd.com/"
AMD_PRODUCT = AMD_LABELLER + "gpu.product-name"
AMD_VRAM = AMD_LABELLER + "gpu.vram"  # GiB with a G suffix: "24G"
AMD_FAMILY = AMD_LABELLER + "gpu.family"  # driver family id name: AI, NV, GC_11_0_0, ...
AMD_DRIVER = AMD_LABELLER + "gpu.driver-version"
AMD_DEVICE_ID = AMD_LABELLER + "gpu.device-id"
AMD_PARTITION = AMD_LABELLER + "gpu.compute-memory-partition"


@dataclass(frozen=True, slots=True)
class Equivalent:
    ours: str
    gfd: str  # "" = GFD has no such label
    amd: str  # "" = the AMD labeller has no such label
    note: str


# One row per label of ours: what NVIDIA's and AMD's labellers call the same fact, and how the values differ.
EQUIVALENTS: tuple[Equivalent, ...] = (
    Equivalent(keys.LABEL_VENDOR, "", "", "GFD and the AMD labeller run only on their vendor's nodes"),
    Equivalent(keys.LABEL_PRODUCT, GFD_PRODUCT, AMD_PRODUCT,
               "GFD: same sanitising, `-SHARED` / `-MIG-<profile>` suffixes; AMD: spaces become `_`"),
    Equivalent(keys.LABEL_COUNT, GFD_COUNT, "", "both count what a pod can be given (MIG instances under MIG)"),
    Equivalent(keys.LABEL_MEMORY_MIB, GFD_MEMORY, AMD_VRAM, "GFD: MiB; AMD: GiB with a `G` suffix (`24G`)"),
    Equivalent(keys.LABEL_VRAM, GFD_MEMORY, AMD_VRAM, "Kubernetes quantity (`24Gi`) of the same number"),
    Equivalent(keys.LABEL_FAMILY, GFD_FAMILY, AMD_FAMILY,
               "GFD's names change between releases (Ada was `ampere` before v0.18); AMD's is the driver's family "
               "id (`AI` covers gfx900 to gfx942), so `gpu.arch` is what backend compatibility needs"),
    Equivalent(keys.LABEL_ARCH, "", "", "the gfx target or `sm_XY`; neither labeller has it"),
    Equivalent(keys.LABEL_COMPUTE, "", "", "GFD splits it into major and minor"),
    Equivalent(keys.LABEL_COMPUTE_MAJOR, GFD_COMPUTE_MAJOR, "", "same value"),
    Equivalent(keys.LABEL_COMPUTE_MINOR, GFD_COMPUTE_MINOR, "", "same value"),
    Equivalent(keys.LABEL_DRIVER_VERSION, GFD_DRIVER_FULL, AMD_DRIVER, "same value"),
    Equivalent(keys.LABEL_DRIVER_MAJOR, GFD_DRIVER_MAJOR, "", "same value"),
    Equivalent(keys.LABEL_CUDA_VERSION, GFD_RUNTIME_FULL, "", "GFD calls the driver's CUDA version the runtime"),
    Equivalent(keys.LABEL_CUDA_MAJOR, GFD_RUNTIME_MAJOR, "", "same value"),
    Equivalent(keys.LABEL_CUDA_MINOR, GFD_RUNTIME_MINOR, "", "same value"),
    Equivalent(keys.LABEL_ROCM_VERSION, "", "", "neither labeller publishes it"),
    Equivalent(keys.LABEL_ROCM_MAJOR, "", "", "integer"),
    Equivalent(keys.LABEL_ROCM_MINOR, "", "", "integer"),
    Equivalent(keys.LABEL_SHARING, GFD_SHARING, AMD_PARTITION,
               "GFD: none, time-slicing, mps (MIG in `mig.strategy`); AMD: partition mode, not sharing"),
    Equivalent(keys.LABEL_REPLICAS, GFD_REPLICAS, "", "GFD: as configured; ours: from the Node's GPU capacity"),
    Equivalent(keys.LABEL_UNIFIED_MEMORY, "", "", "APUs whose VRAM is system RAM (Strix Halo)"),
)

# gfx target -> the AMD labeller's family id name (the amdgpu driver's family; only unambiguous targets).
AMD_FAMILY_IDS: Mapping[str, str] = {
    **{g: "AI" for g in ("gfx900", "gfx906", "gfx908", "gfx90a", "gfx940", "gfx941", "gfx942", "gfx950")},
    **{g: "NV" for g in ("gfx1010", "gfx1011", "gfx1012", "gfx1030", "gfx1031", "gfx1032", "gfx1034")},
    **{g: "GC_11_0_0" for g in ("gfx1100", "gfx1101", "gfx1102")},
    "gfx1103": "GC_11_0_1",
    **{g: "GC_11_5_0" for g in ("gfx1150", "gfx1151", "gfx1152")},
    **{g: "GC_12_0_0" for g in ("gfx1200", "gfx1201")},
}

MAX_MISMATCHES = 3  # reported in agent-status (one line); the rest are counted


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    v = value.strip()
    return int(v) if v.isascii() and v.isdigit() and len(v) < 10 else None


def _gib(value: str | None) -> int | None:
    """AMD labeller VRAM: '24G' -> 24."""
    if value is None or not value.endswith("G"):
        return None
    return _int(value[:-1])


def cross_check(labels: Mapping[str, str], state: NodeGpuState) -> list[str]:
    """Disagreements between GFD's / the AMD labeller's labels on this Node and what the agent reads.

    One short text per fact, e.g. "nvidia.com/gpu.count=2 but the agent sees 1 NVIDIA GPU". Empty when they agree
    or the labels are absent. Whole GPUs only for counts and memory (MIG instances are compared by count only
    under GFD's `single` strategy, which is what our entries mirror)."""
    out: list[str] = []
    nv = [g for g in state.gpus if g.vendor == NVIDIA]
    amd = [g for g in state.gpus if g.vendor == AMD]
    if nv and any(k.startswith(GFD) for k in labels):
        mig = any(g.mig_profile for g in nv)
        strategy = labels.get(GFD_MIG_STRATEGY, "none")
        products = {g.product for g in nv if not g.mig_profile}
        count = _int(labels.get(GFD_COUNT))
        if count is not None and strategy != "mixed" and len(products) <= 1 and count != len(nv):
            what = "MIG instance" if mig else "NVIDIA GPU"
            out.append(f"{GFD_COUNT}={count} but the agent sees {len(nv)} {what}{'s' if len(nv) != 1 else ''}")
        memory = _int(labels.get(GFD_MEMORY))
        if memory is not None and not mig and len(products) <= 1:
            ours = min(g.total_mib for g in nv)
            if abs(memory - ours) > max(1, ours // 100):
                out.append(f"{GFD_MEMORY}={memory} but the agent reads {ours} MiB")
        archs = {g.info.cc for g in nv}
        if len(archs) == 1 and (cc := next(iter(archs))) is not None:
            for key, ours_part in ((GFD_COMPUTE_MAJOR, cc[0]), (GFD_COMPUTE_MINOR, cc[1])):
                theirs = _int(labels.get(key))
                if theirs is not None and theirs != ours_part:
                    out.append(f"{key}={theirs} but the agent reads compute capability {cc[0]}.{cc[1]}")
        driver = labels.get(GFD_DRIVER_FULL)
        if driver and state.driver_version and not amd and driver != state.driver_version:
            out.append(f"{GFD_DRIVER_FULL}={driver} but the agent reads driver {state.driver_version}")
    if amd and any(k.startswith(AMD_LABELLER) for k in labels):
        vram = _gib(labels.get(AMD_VRAM))
        if vram is not None and len({g.total_mib for g in amd}) == 1:
            ours_gib = round(amd[0].total_mib / 1024)
            if abs(vram - ours_gib) > 1:
                out.append(f"{AMD_VRAM}={labels[AMD_VRAM]} but the agent reads {amd[0].total_mib} MiB")
        family = labels.get(AMD_FAMILY)
        expected = {AMD_FAMILY_IDS.get(g.arch) for g in amd}
        if family and len(expected) == 1 and (want := next(iter(expected))) is not None and family != want:
            out.append(f"{AMD_FAMILY}={family} but the agent reads {amd[0].arch} (family {want})")
    return out


def mismatch_status(mismatches: list[str]) -> str:
    """One agent-status fragment for the cross-check's findings ('' when none)."""
    if not mismatches:
        return ""
    shown = "; ".join(mismatches[:MAX_MISMATCHES])
    more = f" (+{len(mismatches) - MAX_MISMATCHES} more)" if len(mismatches) > MAX_MISMATCHES else ""
    return f"label mismatch: {shown}{more}"


def gfd_replicas(labels: Mapping[str, str]) -> int | None:
    """GFD's configured time-slicing replicas per GPU, when it says (>= 1)."""
    n = _int(labels.get(GFD_REPLICAS))
    return n if n is not None and n >= 1 else None
