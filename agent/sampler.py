"""Readers' samples -> NodeGpuState (flexinfer.state), the agent's one view of the node.

Free memory: free = total - used - reserved, i.e. what the driver reports as free. With NVML's v2
memory API `used` excludes the driver/firmware `reserved` memory, so reserved is subtracted
separately; with v1 (and amdsmi) `used` already includes it and reserved is unknown (0). Either
way a scheduler never counts reserved memory as free.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from flexinfer.arch import arch_info
from flexinfer.errors import ParseError
from flexinfer.state import GpuState, NodeGpuState

from .attribution import Holding
from .readers.base import GpuSample, MigSample

MIB = 1024 * 1024
_NOBODY = Holding()


def free_mib(s: GpuSample) -> int:
    return s.memory_free_bytes // MIB


def gpu_state(s: GpuSample) -> GpuState:
    return GpuState(
        index=s.index, uuid=s.uuid, vendor=s.vendor, arch=s.arch,
        total_mib=s.memory_total_bytes // MIB, free_mib=free_mib(s), healthy=s.healthy, product=s.product,
        reason=s.reason if not s.healthy else "", error_events=s.error_events,
        last_error_unix=s.last_error_unix, unified_memory=s.unified_memory,
    )


def mig_state(s: GpuSample, m: MigSample, index: int) -> GpuState:
    """A MIG instance as the schedulable entry it is: its own memory, its parent's health and identity."""
    total, free = m.memory_total_bytes // MIB, m.memory_free_bytes // MIB
    return replace(gpu_state(s), index=index, uuid=m.uuid, total_mib=total, free_mib=free, mig_profile=m.profile,
                   mig_parent=s.index)


def add_notes(status: str, notes: list[str]) -> str:
    """The agent status with `notes` appended ("ok" is replaced, empty notes are dropped); "ok" when none."""
    parts = ([] if status in ("", "ok") else [status]) + [n for n in notes if n]
    return "; ".join(parts) or "ok"


def _versions(samples: list[GpuSample]) -> tuple[str, str, str]:
    """(driver, CUDA, ROCm) versions for the node: the driver only when every GPU reports the same one."""
    drivers = {s.driver_version for s in samples if s.driver_version}
    cuda = next((s.cuda_version for s in samples if s.cuda_version), "")
    rocm = next((s.rocm_version for s in samples if s.rocm_version), "")
    return (drivers.pop() if len(drivers) == 1 else ""), cuda, rocm


def node_state(node: str, samples: list[GpuSample], status: str, now: float, *,
               holders: Mapping[str, Holding] | None = None,
               replicas: Mapping[str, int] | None = None) -> NodeGpuState:
    """One observation. An unhealthy GPU stays listed (with its reason) so the extender can say why, and the
    agent status names it: the status is never "ok" while a GPU is lost or unhealthy.

    Entries are what a pod can be given: a MIG-enabled GPU contributes its MIG instances (numbered in physical
    order on such a node), any other GPU itself. `holders` (entry UUID -> containers, from the kubelet) and
    `replicas` (vendor -> time-slicing replicas) add who holds what and how shared it is. A GPU whose driver
    does not publish memory usage (Intel xe) counts as full while any container holds it.

    A GPU whose architecture cannot be determined is left out (labels and fit need it) and the status says so.
    """
    holders = holders or {}
    replicas = replicas or {}
    ordered = sorted(samples, key=lambda s: s.index)
    renumber = any(s.mig_instances or s.mig_enabled for s in ordered)
    gpus: list[GpuState] = []
    notes: list[str] = []
    for s in ordered:
        try:
            arch_info(s.vendor, s.arch)
        except ParseError:
            notes.append(f"gpu {s.index} ({s.vendor}) architecture unknown")
            continue
        if not s.healthy:
            notes.append(f"gpu {s.index} unhealthy: {s.reason or 'unknown reason'}")
        if s.mig_enabled and not s.mig_instances:
            notes.append(f"gpu {s.index} has MIG enabled but no MIG instances (nothing to schedule on it)")
            continue
        entries = [mig_state(s, m, len(gpus) + k) for k, m in enumerate(s.mig_instances)] if s.mig_enabled \
            else [gpu_state(s) if not renumber else replace(gpu_state(s), index=len(gpus))]
        for g in entries:
            held = holders.get(g.uuid, _NOBODY)
            shared = replicas.get(g.vendor, 1)
            if held.pods or shared != 1:
                g = replace(g, pods=held.pods, replicas=shared, replicas_used=held.replicas_used)
            if not s.memory_used_known and held.pods:
                # The driver does not say how much memory is used: a GPU someone holds has none to promise.
                g = replace(g, free_mib=0)
            gpus.append(g)
    driver, cuda, rocm = _versions(ordered)
    return NodeGpuState(node=node, gpus=tuple(gpus), observed_unix=now, agent_status=add_notes(status, notes),
                        driver_version=driver, cuda_version=cuda, rocm_version=rocm)
