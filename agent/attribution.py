"""Which container holds which GPU, and how many time-slicing replicas a GPU has. Pure functions.

Device plugins name the devices they hand out in their own way; the kubelet's PodResources API reports those
names per container (agent/podresources.py). This module maps them back to the GPUs the readers see
(docs/pod-attribution.md):

* NVIDIA: the GPU UUID (`GPU-...`), a MIG instance's UUID (`MIG-...`), with `::<n>` appended per time-slicing
  replica (`GPU-...::2`); GKE's sharing appends `/vgpu<n>`.
* AMD: the PCI bus id (`0000:03:00.0`).
* Intel: `<card>-<n>` (`card0-0`, one per shared slot).

Counting the distinct device IDs held on a GPU gives the replicas handed out. The replicas themselves come from
the Node: its `nvidia.com/gpu` (or `amd.com/gpu`, `gpu.intel.com/*`) capacity divided by the devices the agent
sees, or GFD's `nvidia.com/gpu.replicas` label when present.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from flexinfer import keys
from flexinfer.arch import AMD, INTEL, NVIDIA
from flexinfer.state import MAX_PODS, MAX_REPLICAS

from .readers.base import GpuSample

# Resources whose devices are GPUs (MIG resources under NVIDIA's `mixed` strategy: nvidia.com/mig-3g.40gb).
GPU_RESOURCE_PREFIXES = ("nvidia.com/", "amd.com/", "gpu.intel.com/")
# Per vendor, the device-plugin resources whose capacity counts its GPUs (flexinfer.keys.GPU_RESOURCES, inverted).
VENDOR_RESOURCES: Mapping[str, tuple[str, ...]] = {
    vendor: tuple(r for r, v in keys.GPU_RESOURCES.items() if v == vendor) for vendor in (NVIDIA, AMD, INTEL)
}


@dataclass(frozen=True, slots=True)
class Assignment:
    """One device the kubelet gave one container (PodResources List)."""

    namespace: str
    pod: str
    container: str
    resource: str
    device_id: str

    @property
    def holder(self) -> str:
        return f"{self.namespace}/{self.pod}/{self.container}"


@dataclass(frozen=True, slots=True)
class Holding:
    """Who holds one GPU (or MIG instance): containers, and how many distinct devices (replicas) they hold."""

    pods: tuple[str, ...] = ()
    replicas_used: int = 0
    more: int = 0  # holders beyond MAX_PODS, counted only


_REPLICA_SUFFIX = re.compile(r"(::\d{1,6}|/vgpu\d{1,6})$")
_INTEL_SLOT = re.compile(r"^(card\d{1,4})-\d{1,6}$")
_PCI = re.compile(r"^([0-9a-fA-F]{1,8}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$")


def normalize_pci(bus_id: str) -> str:
    """'00000000:01:00.0' (NVML) and '0000:01:00.0' (amdsmi, sysfs) -> '0000:01:00.0'; '' when not a bus id."""
    m = _PCI.match(bus_id.strip())
    if not m:
        return ""
    return f"{int(m.group(1), 16):04x}:{m.group(2).lower()}:{m.group(3).lower()}.{m.group(4)}"


def device_key(device_id: str) -> str:
    """The physical device a device-plugin ID names: replica suffixes and Intel slot numbers dropped, PCI bus
    ids normalised, UUIDs lower-cased."""
    d = _REPLICA_SUFFIX.sub("", device_id.strip())
    m = _INTEL_SLOT.match(d)
    if m:
        return m.group(1)
    return normalize_pci(d) or d.lower()


def sample_keys(s: GpuSample) -> dict[str, str]:
    """Every name a device plugin may use for this GPU or its MIG instances -> the entry's UUID."""
    out = {s.uuid.lower(): s.uuid}
    if pci := normalize_pci(s.pci_bus_id):
        out.setdefault(pci, s.uuid)
    if s.drm_card:
        out.setdefault(s.drm_card, s.uuid)
    for m in s.mig_instances:
        out[m.uuid.lower()] = m.uuid
    return out


def is_gpu_resource(resource: str) -> bool:
    return resource.startswith(GPU_RESOURCE_PREFIXES)


def attribute(samples: Iterable[GpuSample], assignments: Iterable[Assignment]) -> dict[str, Holding]:
    """GPU (or MIG instance) UUID -> its Holding. Devices no sample matches are ignored (another node's plugin
    state, a GPU the readers cannot see); each container is listed once per GPU, sorted; at most MAX_PODS."""
    names: dict[str, str] = {}
    for s in samples:
        names.update(sample_keys(s))
    holders: dict[str, set[str]] = {}
    devices: dict[str, set[str]] = {}
    for a in assignments:
        if not is_gpu_resource(a.resource):
            continue
        uuid = names.get(device_key(a.device_id))
        if uuid is None:
            continue
        holders.setdefault(uuid, set()).add(a.holder)
        devices.setdefault(uuid, set()).add(a.device_id)
    out = {}
    for uuid, who in holders.items():
        ordered = sorted(who)
        out[uuid] = Holding(tuple(ordered[:MAX_PODS]), min(MAX_REPLICAS, len(devices[uuid])),
                            max(0, len(ordered) - MAX_PODS))
    return out


def _quantity(value: object) -> int | None:
    text = str(value).strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) < 7 else None


def replicas_by_vendor(capacity: Mapping[str, object], devices: Mapping[str, int],
                       gfd_replicas: int | None = None) -> dict[str, int]:
    """Time-slicing replicas per device, per vendor: the Node's GPU capacity over the devices the agent sees when
    it is a whole multiple of them (a device plugin advertising each GPU N times), else 1. GFD's own label wins for
    NVIDIA. `devices`: vendor -> schedulable devices (GPUs, or MIG instances) the agent reads."""
    out: dict[str, int] = {}
    for vendor, n in devices.items():
        if n <= 0:
            continue
        if vendor == NVIDIA and gfd_replicas is not None:
            out[vendor] = min(MAX_REPLICAS, gfd_replicas)
            continue
        advertised = [q for r in VENDOR_RESOURCES.get(vendor, ()) if (q := _quantity(capacity.get(r))) is not None]
        total = sum(advertised)
        out[vendor] = min(MAX_REPLICAS, total // n) if advertised and total > n and total % n == 0 else 1
    return out
