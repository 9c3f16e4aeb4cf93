"""Free GPU memory is computed in one place (GpuSample.memory_free_bytes); the node state and /metrics use it."""

from __future__ import annotations

import pytest
from flexinfer.agent.metrics import AgentMetrics
from flexinfer.agent.readers.base import GpuSample
from flexinfer.agent.sampler import MIB, free_mib, gpu_state

GIB = 1024 * MIB


@pytest.mark.parametrize(
    ("total", "used", "reserved", "free"),
    [
        (24 * GIB, 4 * GIB, None, 20 * GIB),  # NVML v1 / amdsmi / KFD: used includes the reserved part
        (24 * GIB, 4 * GIB, 512 * MIB, 20 * GIB - 512 * MIB),  # NVML v2: reserved reported apart from used
        (6 * GIB, 7 * GIB, None, 0),  # a reader reporting more used than total never yields negative free
        (6 * GIB, 1 * GIB, 6 * GIB, 0),
        (6 * GIB, -1, None, 6 * GIB),  # nor more free than the card has
        (0, 0, None, 0),
    ],
)
def test_free_is_total_minus_used_minus_reserved_within_the_card(total: int, used: int, reserved: int | None,
                                                                 free: int) -> None:
    s = GpuSample(index=0, uuid="GPU-1", vendor="nvidia", memory_total_bytes=total, memory_used_bytes=used,
                  memory_reserved_bytes=reserved)
    assert s.memory_free_bytes == free
    assert free_mib(s) == free // MIB
    assert gpu_state(s).free_mib == free // MIB


def test_metrics_export_the_same_free_memory() -> None:
    s = GpuSample(index=0, uuid="GPU-1", vendor="nvidia", arch="sm_86", product="RTX 3090",
                  memory_total_bytes=24 * GIB, memory_used_bytes=3 * GIB, memory_reserved_bytes=300 * MIB)
    metrics = AgentMetrics("n1")
    metrics.observe([s], 0.01, "NvmlReader", "ok")
    text = metrics.exposition().decode()
    line = next(ln for ln in text.splitlines() if ln.startswith("flexinfer_gpu_memory_free_bytes{"))
    assert float(line.rsplit(" ", 1)[1]) == s.memory_free_bytes == 24 * GIB - 3 * GIB - 300 * MIB
