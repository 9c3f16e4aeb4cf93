"""Issue 7 item 4, agent side, end to end over HTTP to the local fake API server: what the user sees.

* A GPU lost mid-run: the Node is re-published at once (health change) with the GPU unhealthy and the
  reason, and the extender, reading that Node, turns a new pod away naming the reason.
* The API server hangs past the client timeout on every write: the sampling loop is not stuck (each cycle
  ends within the retry budget), the write is reported as "no response" and counted as an error, the state
  is kept, and the next cycle after recovery writes it.
* 409 / 429 on a write: retried within the same cycle, the Node gets the state, no error is counted.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from flexinfer.agent.agent import Agent
from flexinfer.agent.publish import Publisher
from flexinfer.agent.readers.fake import fleet_reader
from flexinfer.extender.cache import NodeCache
from flexinfer.extender.pod import requirements_from_dict
from flexinfer.extender.service import Extender

from flexinfer import keys, kube
from flexinfer.nodes import view_of
from flexinfer.sim.fakeapi import FakeApiServer

from .agent_helpers import node_from, nvidia_gpu

pytestmark = pytest.mark.integration
FAST = kube.RetryPolicy(attempts=2, initial_s=0.01, max_s=0.02)
NODE_PATH = "/api/v1/nodes/n1"


def k8s_node(name: str = "n1") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {}}}


def gpu_pod(est_mib: int) -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": "models", "uid": "u1",
                         "annotations": {keys.POD_VRAM_ESTIMATE_MB: str(est_mib), keys.POD_BACKEND: "vllm"}},
            "spec": {"containers": [{"name": "c", "resources": {"limits": {keys.RESOURCE_NVIDIA: "1"}}}]}}


@pytest.fixture
def short_client_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The production request path with a 0.3 s read timeout instead of 30 s (a hang costs little here)."""
    monkeypatch.setitem(kube.request.__kwdefaults__, "timeout_s", (1.0, 0.3))


def test_gpu_lost_mid_run_reaches_the_node_and_the_scheduler(fake_api: FakeApiServer, kube_api: Any) -> None:
    fake_api.put_object(k8s_node())
    node = node_from([nvidia_gpu(), nvidia_gpu(faults=[{"type": "lost", "atSample": 3}])])
    agent = Agent("n1", fleet_reader(node), Publisher(kube_api, "n1", retry=FAST), heartbeat_seconds=3600)
    now = time.time()
    assert agent.step(now=now).publish.reason == "first"  # type: ignore[union-attr]
    assert not agent.step(now=now + 1).publish.written  # type: ignore[union-attr]
    res = agent.step(now=now + 2).publish  # the GPU is lost at this sample: written at once, not at heartbeat
    assert res is not None and res.written and res.reason in ("health", "agent-status")
    obj = fake_api.get_object("nodes", "n1")
    assert "GPU is lost" in obj["metadata"]["annotations"][keys.ANN_AGENT_STATUS]
    view = view_of(obj)
    assert view.state is not None
    assert [(g.healthy, g.reason) for g in view.state.gpus] == [(True, ""), (False, "GPU is lost")]
    assert view.state.healthy_free_mib == 23028 - 1000  # the lost GPU's memory is not offered
    cache = NodeCache()
    cache.replace_all([fake_api.get_object("nodes", "n1")])
    ext = Extender(cache)
    ok = ext.filter(requirements_from_dict(gpu_pod(8000)), ["n1"])
    assert ok.passed == ["n1"]  # the healthy GPU still takes a pod
    two = requirements_from_dict({**gpu_pod(8000), "spec": {"containers": [
        {"name": "c", "resources": {"limits": {keys.RESOURCE_NVIDIA: "2"}}}]}})
    (verdict,) = ext.explain(two, ["n1"])
    assert not verdict.feasible and verdict.reason == "not enough healthy GPUs"
    assert "GPU 1: GPU is lost" in verdict.detail  # what `flexinfer explain` shows the user


def test_api_server_hanging_on_writes_does_not_stall_the_agent_and_loses_nothing(
        fake_api: FakeApiServer, kube_api: Any, short_client_timeouts: None) -> None:
    fake_api.put_object(k8s_node())
    agent = Agent("n1", fleet_reader(node_from([nvidia_gpu()])), Publisher(kube_api, "n1", retry=FAST))
    fake_api.fail("PATCH", NODE_PATH, status=504, times=-1, hang_s=0.6)
    t0 = time.monotonic()
    res = agent.step(now=1.0).publish
    elapsed = time.monotonic() - t0
    assert res is not None and not res.written and "no response" in res.error and "timed out" in res.error
    assert elapsed < 2.0  # two attempts of 0.3 s plus backoff: the sampling loop goes on
    assert agent.state is not None and agent.state.gpus[0].free_mib == 23028 - 1000  # served on gRPC/metrics
    assert b'flexinfer_agent_node_writes_total{node="n1",result="error"} 1.0' in agent.metrics.exposition()
    assert keys.ANN_GPU_STATE not in (fake_api.get_object("nodes", "n1")["metadata"].get("annotations") or {})
    fake_api.clear_failures()
    res = agent.step(now=2.0).publish  # nothing changed on the GPU, but the state was never written: written now
    assert res is not None and res.written
    ann = fake_api.get_object("nodes", "n1")["metadata"]["annotations"]
    assert ann[keys.ANN_FREE_MEMORY] == str(23028 - 1000) and ann[keys.ANN_AGENT_STATUS] == "ok"


@pytest.mark.parametrize("status", [409, 429])
def test_conflict_and_throttling_are_retried_within_the_cycle(fake_api: FakeApiServer, kube_api: Any,
                                                              status: int) -> None:
    fake_api.put_object(k8s_node())
    agent = Agent("n1", fleet_reader(node_from([nvidia_gpu()])), Publisher(kube_api, "n1", retry=FAST))
    fake_api.fail("PATCH", NODE_PATH, status=status, times=1)
    res = agent.step(now=1.0).publish
    assert res is not None and res.written and not res.error
    assert [r.status for r in fake_api.requests("PATCH", NODE_PATH)] == [status, 200]
    assert fake_api.get_object("nodes", "n1")["metadata"]["annotations"][keys.ANN_AGENT_STATUS] == "ok"
    assert b'result="error"' not in agent.metrics.exposition()


def test_a_hung_node_read_is_bounded_by_the_client_timeout(fake_api: FakeApiServer, kube_api: Any,
                                                           short_client_timeouts: None) -> None:
    fake_api.put_object(k8s_node())
    agent = Agent("n1", fleet_reader(node_from([nvidia_gpu()])), Publisher(kube_api, "n1", retry=FAST))
    fake_api.fail("GET", NODE_PATH, status=504, times=-1, hang_s=0.5)
    t0 = time.monotonic()
    agent.step(now=1.0)
    elapsed = time.monotonic() - t0
    sent = len(fake_api.requests("GET", NODE_PATH))
    assert elapsed < 0.45, f"one node read took {elapsed:.2f} s with a 0.3 s read timeout ({sent} GETs sent)"


def test_a_quiet_healthy_node_is_not_rejected_as_stale_between_heartbeats(fake_api: FakeApiServer,
                                                                           kube_api: Any) -> None:
    from flexinfer.extender.main import build

    fake_api.put_object(k8s_node())
    # Both sides with their CLI defaults: agent heartbeat, sampling every 10 s; extender max state age.
    agent = Agent("n1", fleet_reader(node_from([nvidia_gpu()])), Publisher(kube_api, "n1", retry=FAST))
    running = build(cache=NodeCache(), watch=False)
    t0 = time.time()
    clock = {"now": t0}
    running.extender.clock = lambda: clock["now"]
    req = requirements_from_dict(gpu_pod(8000))
    rejected = {}
    for dt in range(0, 601, 10):
        clock["now"] = t0 + dt
        agent.step(now=clock["now"])
        running.extender.cache.replace_all([fake_api.get_object("nodes", "n1")])
        out = running.extender.filter(req, ["n1"])
        if out.passed != ["n1"]:
            rejected[dt] = {**out.failed, **out.unresolvable}["n1"]
    assert not rejected, f"rejected at these seconds after start: {rejected}"
