"""The pure hysteresis policy and the desired label/annotation computation (incl. stale key removal)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from flexinfer.agent.agent import Agent
from flexinfer.agent.publish import desired_metadata, should_publish
from flexinfer.agent.readers.fake import FakeNvml, FleetReader
from flexinfer.agent.readers.nvml import NvmlReader

from flexinfer import keys
from flexinfer.state import GpuState, NodeGpuState

from .agent_helpers import node_from, nvidia_gpu


def gpu(i: int = 0, free: int = 20000, **kw: object) -> GpuState:
    base = {"index": i, "uuid": f"GPU-{i}", "vendor": "nvidia", "arch": "sm_86", "total_mib": 23028,
            "free_mib": free, "product": "NVIDIA A10"}
    base.update(kw)
    return GpuState(**base)  # type: ignore[arg-type]


def node(*gpus: GpuState, t: float = 0.0, status: str = "ok") -> NodeGpuState:
    return NodeGpuState("n1", tuple(gpus), t, status)


PREV = node(gpu(0), gpu(1), t=100.0)


@pytest.mark.parametrize("current,now,expected", [
    (node(gpu(0), gpu(1), t=110), 110, (False, "")),
    (node(gpu(0, free=20000 - 1024), gpu(1), t=110), 110, (False, "")),  # exactly the threshold: no
    (node(gpu(0, free=20000 - 1025), gpu(1), t=110), 110, (True, "memory")),
    (node(gpu(0), gpu(1, free=20000 + 2048), t=110), 110, (True, "memory")),
    (node(gpu(0, healthy=False, reason="Xid 79"), gpu(1), t=110), 110, (True, "health")),
    (node(gpu(0, error_events=1), gpu(1), t=110), 110, (True, "errors")),
    (node(gpu(0), t=110), 110, (True, "gpu-set")),
    (node(gpu(0), gpu(2), t=110), 110, (True, "gpu-set")),
    (node(gpu(0), gpu(1), t=110, status="NVML unavailable"), 110, (True, "agent-status")),
    (node(gpu(0), gpu(1, product="NVIDIA A10G"), t=110), 110, (True, "labels")),
    (node(gpu(0), gpu(1), t=399.9), 399.9, (False, "")),
    (node(gpu(0), gpu(1), t=400), 400, (True, "heartbeat")),
])
def test_should_publish_table(current: NodeGpuState, now: float, expected: tuple[bool, str]) -> None:
    assert should_publish(PREV, current, now, threshold_mib=1024, heartbeat_seconds=300) == expected


def test_first_observation_is_always_written() -> None:
    assert should_publish(None, node(), 0.0) == (True, "first")


def test_slow_drift_is_written_once_it_crosses_the_threshold() -> None:
    published = node(gpu(0, free=20000), t=0)
    writes = 0
    for step in range(1, 50):
        cur = node(gpu(0, free=20000 - 100 * step), t=step)
        due, _ = should_publish(published, cur, step, 1024, 300)
        if due:
            writes += 1
            published = cur
    assert writes == 4  # 4900 MiB drift in 100 MiB steps -> a write every ~1.1 GiB


def run_agent(faults: list[dict], samples: int, heartbeat: float = 300.0, step_seconds: float = 10.0) -> list[str]:
    """Drive a real Agent over the fake NVML and record the publish decisions (no API: dry policy)."""
    fake = FakeNvml(node_from([nvidia_gpu(usedMiB=4000, faults=faults)]))
    reader = FleetReader(NvmlReader(fake, events="poll"), [fake])
    agent = Agent("n1", reader, heartbeat_seconds=heartbeat)
    published: NodeGpuState | None = None
    reasons = []
    for i in range(samples):
        st = agent.step(now=1000.0 + i * step_seconds).state
        due, why = should_publish(published, st, st.observed_unix, 1024, heartbeat)
        reasons.append(why if due else "")
        if due:
            published = st
    return reasons


def test_noisy_signal_causes_no_writes() -> None:
    reasons = run_agent([{"type": "noise", "mib": 100}], samples=200, heartbeat=1e9)
    assert reasons[0] == "first" and reasons[1:] == [""] * 199


def test_two_gib_drop_is_written_at_the_next_sample() -> None:
    fake = FakeNvml(node_from([nvidia_gpu(usedMiB=4000, faults=[{"type": "noise", "mib": 100}])]))
    agent = Agent("n1", FleetReader(NvmlReader(fake, events="poll"), [fake]))
    published = agent.step(now=0).state
    for i in range(1, 10):
        assert not should_publish(published, agent.step(now=i).state, i, 1024, 300)[0]
    fake.gpus[0][1].used_mi_b += 2048  # a model loads: 2 GiB less free
    st = agent.step(now=10).state
    assert should_publish(published, st, 10, 1024, 300) == (True, "memory")


def test_heartbeat_and_health_change_in_a_run() -> None:
    reasons = run_agent([{"type": "xid", "xid": 79, "atSample": 5}], samples=40, heartbeat=100, step_seconds=10)
    assert reasons[0] == "first"
    assert reasons[4] == "health"  # sample 5 (1-based): Xid 79 -> unhealthy
    beats = [i for i, r in enumerate(reasons) if r == "heartbeat"]
    assert beats == [14, 24, 34]


def test_desired_metadata_removes_stale_owned_labels_only() -> None:
    st = node(gpu(0, vendor="amd", arch="gfx1100", product="AMD Radeon RX 7900 XTX"), t=5)
    current = {
        keys.LABEL_COMPUTE: "8.6",  # was an NVIDIA node: no compute label for AMD any more
        keys.LABEL_ARCH_COUNT_PREFIX + "sm_86": "1",  # was mixed
        keys.LABEL_VENDOR: "nvidia",
        "kubernetes.io/hostname": "n1",  # not ours: untouched
        "flexinfer.ai/lane": "quality",  # our prefix but not an agent key: untouched
    }
    labels, annotations = desired_metadata(st, current)
    assert labels[keys.LABEL_COMPUTE] is None
    assert labels[keys.LABEL_ARCH_COUNT_PREFIX + "sm_86"] is None
    assert labels[keys.LABEL_VENDOR] == "amd" and labels[keys.LABEL_ARCH] == "gfx1100"
    assert "kubernetes.io/hostname" not in labels and "flexinfer.ai/lane" not in labels
    assert set(annotations) == set(keys.NODE_ANNOTATION_KEYS) and None not in annotations.values()


def test_unhealthy_gpu_does_not_count_as_free() -> None:
    st = node(gpu(0, free=1000), replace(gpu(1, free=5000), healthy=False, reason="Xid 79"), t=1)
    _, ann = desired_metadata(st)
    assert ann[keys.ANN_FREE_MEMORY] == "1000"
