"""Labels that interoperate: the cross-check with GFD's and the AMD labeller's labels (agent-status), our stale keys
removed whoever wrote them, agent-status never "ok" while a GPU is lost, and preflight deciding the Ollama-on-Maxwell
driver requirement from the driver label."""

from __future__ import annotations

from typing import Any

import pytest
from flexinfer.agent.agent import Agent
from flexinfer.agent.publish import Publisher, label_drift
from flexinfer.agent.readers.fake import fleet_reader

from flexinfer import keys, kube
from flexinfer.interop import cross_check, mismatch_status
from flexinfer.model import parse_model
from flexinfer.preflight import Level, run
from flexinfer.sim.fakeapi import FakeApiServer
from flexinfer.state import GpuState, NodeGpuState, NodeView, state_labels

from .agent_helpers import amd_gpu, node_from, nvidia_gpu


def nv(i: int = 0, **kw: Any) -> GpuState:
    base: dict[str, Any] = dict(index=i, uuid=f"GPU-{i}", vendor="nvidia", arch="sm_86", total_mib=23028,
                                free_mib=20000, product="NVIDIA A10")
    base.update(kw)
    return GpuState(**base)


def state(*gpus: GpuState, driver: str = "580.95.05") -> NodeGpuState:
    return NodeGpuState("n1", gpus, 1.0, driver_version=driver, cuda_version="13.0")


GFD_AGREES = {"nvidia.com/gpu.count": "2", "nvidia.com/gpu.memory": "23028", "nvidia.com/gpu.compute.major": "8",
              "nvidia.com/gpu.compute.minor": "6", "nvidia.com/cuda.driver-version.full": "580.95.05",
              "nvidia.com/gpu.family": "ampere", "nvidia.com/gpu.product": "NVIDIA-A10"}


def test_gfd_labels_that_agree_say_nothing() -> None:
    assert cross_check(GFD_AGREES, state(nv(0), nv(1))) == []
    assert cross_check({}, state(nv(0))) == []  # no GFD on the node


@pytest.mark.parametrize(("key", "value", "says"), [
    ("nvidia.com/gpu.count", "3", "nvidia.com/gpu.count=3 but the agent sees 2 NVIDIA GPUs"),
    ("nvidia.com/gpu.memory", "16384", "nvidia.com/gpu.memory=16384 but the agent reads 23028 MiB"),
    ("nvidia.com/gpu.compute.major", "9", "nvidia.com/gpu.compute.major=9 but the agent reads compute capability 8.6"),
    ("nvidia.com/cuda.driver-version.full", "550.54.15",
     "nvidia.com/cuda.driver-version.full=550.54.15 but the agent reads driver 580.95.05"),
])
def test_gfd_disagreements(key: str, value: str, says: str) -> None:
    assert cross_check({**GFD_AGREES, key: value}, state(nv(0), nv(1))) == [says]


def test_gfd_family_names_are_not_compared() -> None:
    """GFD before v0.18 called Ada 'ampere': a version difference, not a wrong node."""
    ada = nv(arch="sm_89", product="NVIDIA L40S")
    assert cross_check({"nvidia.com/gpu.family": "ampere", "nvidia.com/gpu.count": "1"}, state(ada)) == []


def test_gfd_mixed_mig_strategy_counts_are_not_compared() -> None:
    mig = nv(uuid="MIG-1", mig_profile="3g.40gb", mig_parent=0)
    labels = {"nvidia.com/gpu.count": "0", "nvidia.com/mig.strategy": "mixed"}
    assert cross_check(labels, state(mig)) == []


def test_amd_labeller_checks() -> None:
    amd = GpuState(0, "a", "amd", "gfx1100", 24560, 24000, product="AMD Radeon RX 7900 XTX")
    st = NodeGpuState("n1", (amd,), 1.0)
    assert cross_check({"amd.com/gpu.vram": "24G", "amd.com/gpu.family": "GC_11_0_0"}, st) == []
    got = cross_check({"amd.com/gpu.vram": "16G", "amd.com/gpu.family": "AI"}, st)
    assert got == ["amd.com/gpu.vram=16G but the agent reads 24560 MiB",
                   "amd.com/gpu.family=AI but the agent reads gfx1100 (family GC_11_0_0)"]


def test_mismatch_status_is_one_bounded_line() -> None:
    assert mismatch_status([]) == ""
    text = mismatch_status([f"m{i}" for i in range(5)])
    assert text == "label mismatch: m0; m1; m2 (+2 more)"


def test_label_drift_finds_stale_and_changed_keys() -> None:
    st = state(nv(0))
    want = state_labels(st)
    assert label_drift(st, {**want, "team": "a"}) == []
    stale = {**want, keys.LABEL_ARCH_COUNT_PREFIX + "gfx906": "1"}
    assert label_drift(st, stale) == [keys.LABEL_ARCH_COUNT_PREFIX + "gfx906"]
    assert label_drift(st, {**want, keys.LABEL_VRAM: "48Gi"}) == [keys.LABEL_VRAM]
    assert label_drift(st, None) == []


def _node(fake: FakeApiServer, labels: dict[str, str]) -> None:
    fake.put_object({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "labels": labels},
                     "status": {"capacity": {"nvidia.com/gpu": "4"}}})


@pytest.mark.integration
def test_foreign_arch_key_is_removed_even_when_added_later(fake_api: FakeApiServer, kube_api: Any) -> None:
    """Someone writes our gpu.arch.gfx906 after the agent started: the next write's answer shows it, and the
    agent removes it without waiting for a heartbeat; a GFD count that disagrees shows in agent-status."""
    _node(fake_api, {"team": "a"})
    node = node_from([nvidia_gpu()])
    agent = Agent("n1", fleet_reader(node), Publisher(kube_api, "n1"))
    first = agent.step(now=1000.0)
    assert first.publish is not None and first.publish.written
    labels = fake_api.get_object("nodes", "n1")["metadata"]["labels"]
    assert labels[keys.LABEL_REPLICAS] == "4" and labels[keys.LABEL_SHARING] == "time-slicing"  # capacity 4, 1 GPU
    stale = keys.LABEL_ARCH_COUNT_PREFIX + "gfx906"
    kube.merge_patch(kube_api, "nodes", "n1", {"metadata": {"labels": {stale: "1", "nvidia.com/gpu.count": "2"}}})
    agent.step(now=1005.0)  # nothing changed for the agent: no write, nothing learned yet
    forced = agent.step(now=2000.0)  # heartbeat: the answer shows the foreign keys
    assert forced.publish is not None and forced.publish.reason == "heartbeat"
    fixed = agent.step(now=2040.0)
    assert fixed.publish is not None and fixed.publish.written
    assert fixed.publish.labels.get(stale, "absent") is None
    labels = fake_api.get_object("nodes", "n1")["metadata"]["labels"]
    assert stale not in labels and labels["team"] == "a"
    status = fake_api.get_object("nodes", "n1")["metadata"]["annotations"][keys.ANN_AGENT_STATUS]
    assert status == "label mismatch: nvidia.com/gpu.count=2 but the agent sees 1 NVIDIA GPU"


def test_agent_status_is_never_ok_while_a_gpu_is_lost() -> None:
    node = node_from([nvidia_gpu(), nvidia_gpu(faults=[{"type": "lost", "atSample": 2}])])
    agent = Agent("n1", fleet_reader(node))
    assert agent.step(now=1.0).state.agent_status == "ok"
    for t in range(2, 6):  # the reader re-initialises and says "ok" for itself; the lost GPU stays listed
        st = agent.step(now=float(t)).state
        assert st.agent_status != "ok" and "gpu 1 unhealthy" in st.agent_status
    assert [g.healthy for g in st.gpus] == [True, False]


def test_amd_lost_gpu_keeps_status_not_ok() -> None:
    node = node_from([amd_gpu(), amd_gpu(faults=[{"type": "lost", "atSample": 2}])])
    agent = Agent("n1", fleet_reader(node))
    agent.step(now=1.0)
    for t in range(2, 5):
        st = agent.step(now=float(t)).state
    assert "unhealthy" in st.agent_status


MAXWELL_GPU = GpuState(0, "GPU-m", "nvidia", "sm_52", 6144, 5800, product="NVIDIA GeForce GTX 980 Ti")


def _maxwell(driver_major: str | None, name: str = "gtx980ti") -> NodeView:
    labels = {keys.LABEL_VENDOR: "nvidia"}
    if driver_major is not None:
        labels |= {keys.LABEL_DRIVER_MAJOR: driver_major, keys.LABEL_DRIVER_VERSION: f"{driver_major}.86.15"}
    return NodeView(name, labels, "nvidia", NodeGpuState(name, (MAXWELL_GPU,), 1_000.0))


def _ollama() -> Any:
    return parse_model({"metadata": {"name": "m"}, "spec": {"backend": "ollama", "source": "ollama://qwen3:4b",
                                                            "gpu": {"vendor": "nvidia", "vramEstimateMB": 4000}}})


def test_preflight_ollama_on_maxwell_with_a_new_driver_passes() -> None:
    report = run(_ollama(), [_maxwell("580")], 1_001.0)
    assert report.decision is Level.PASS, report.checks
    assert report.target_node == "gtx980ti"


def test_preflight_ollama_on_maxwell_with_an_old_driver_blocks() -> None:
    report = run(_ollama(), [_maxwell("550")], 1_001.0)
    assert report.decision is Level.BLOCK
    text = " ".join(c.message for c in report.checks)
    assert "needs NVIDIA driver >= 570; node has 550.86.15" in text


def test_preflight_ollama_on_maxwell_without_a_driver_label_warns() -> None:
    report = run(_ollama(), [_maxwell(None)], 1_001.0)
    assert report.decision is Level.WARN
    assert any("does not say its driver version" in c.message for c in report.checks)


def test_preflight_prefers_the_node_whose_driver_meets_it() -> None:
    report = run(_ollama(), [_maxwell("550", "old"), _maxwell("575", "new")], 1_001.0)
    assert report.decision is Level.PASS and report.target_node == "new"
