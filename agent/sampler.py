"""Readers' samples -> NodeGpuState (flexinfer.state), the agent's one view of the node.

Free memory: free = total - used - reserved, i.e. what the driver reports as free. With NVML's v2
memory API `used` excludes the driver/firmware `reserved` memory, so reserved is subtracted
separately; with v1 (and amdsmi) `used` already includes it and reserved is unknown (0). Either
way a scheduler never counts reserved memory as free.
"""

from __future__ import annotations

from flexinfer.arch import arch_info
from flexinfer.errors import ParseError
from flexinfer.state import GpuState, NodeGpuState

from .readers.base import GpuSample

MIB = 1024 * 1024


def free_mib(s: GpuSample) -> int:
    return s.memory_free_bytes // MIB


def gpu_state(s: GpuSample) -> GpuState:
    return GpuState(
        index=s.index, uuid=s.uuid, vendor=s.vendor, arch=s.arch,
        total_mib=s.memory_total_bytes // MIB, free_mib=free_mib(s), healthy=s.healthy, product=s.product,
        reason=s.reason if not s.healthy else "", error_events=s.error_events,
        last_error_unix=s.last_error_unix, unified_memory=s.unified_memory,
    )


def node_state(node: str, samples: list[GpuSample], status: str, now: float) -> NodeGpuState:
    """One observation. An unhealthy GPU stays listed (with its reason) so the extender can say why.

    A GPU whose architecture cannot be determined is left out (labels and fit need it) and the
    agent status says so.
    """
    gpus: list[GpuState] = []
    skipped: list[str] = []
    for s in sorted(samples, key=lambda s: s.index):
        try:
            arch_info(s.vendor, s.arch)
        except ParseError:
            skipped.append(f"gpu {s.index} ({s.vendor}) architecture unknown")
            continue
        gpus.append(gpu_state(s))
    status = status or "ok"
    if skipped:
        status = "; ".join(([] if status == "ok" else [status]) + skipped)
    return NodeGpuState(node=node, gpus=tuple(gpus), observed_unix=now, agent_status=status)
