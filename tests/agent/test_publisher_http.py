"""Publishing at the HTTP level against the local fake API server (tests/conftest.py fake_api/kube_api)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner
from flexinfer.agent.agent import Agent
from flexinfer.agent.main import main
from flexinfer.agent.publish import Publisher
from flexinfer.agent.readers.fake import fleet_reader

from flexinfer import keys
from flexinfer.fleet import dump_fleet, parse_fleet
from flexinfer.kube import RetryPolicy
from flexinfer.sim.fakeapi import FakeApiServer

from .agent_helpers import amd_gpu, node_from, nvidia_gpu

pytestmark = pytest.mark.integration
FAST = RetryPolicy(attempts=2, initial_s=0.01, max_s=0.02)


def k8s_node(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}


def test_first_write_sets_ours_removes_stale_and_keeps_foreign(fake_api: FakeApiServer, kube_api: Any) -> None:
    fake_api.put_object(k8s_node("n1", {
        "kubernetes.io/hostname": "n1", "flexinfer.ai/lane": "quality",
        keys.LABEL_COMPUTE: "8.6", keys.LABEL_ARCH_COUNT_PREFIX + "sm_86": "1", keys.LABEL_VENDOR: "mixed",
    }))
    agent = Agent("n1", fleet_reader(node_from([amd_gpu()])), Publisher(kube_api, "n1", retry=FAST))
    res = agent.step(now=1000.0).publish
    assert res is not None and res.written and res.reason == "first"
    obj = fake_api.get_object("nodes", "n1")
    labels, ann = obj["metadata"]["labels"], obj["metadata"]["annotations"]
    assert labels[keys.LABEL_VENDOR] == "amd" and labels[keys.LABEL_ARCH] == "gfx1100"
    assert keys.LABEL_COMPUTE not in labels and keys.LABEL_ARCH_COUNT_PREFIX + "sm_86" not in labels
    assert labels["kubernetes.io/hostname"] == "n1" and labels["flexinfer.ai/lane"] == "quality"
    assert ann[keys.ANN_FREE_MEMORY] == str(24560 - 500) and ann[keys.ANN_AGENT_STATUS] == "ok"
    assert json.loads(ann[keys.ANN_GPU_STATE])["g"][0]["a"] == "gfx1100"
    patches = fake_api.requests("PATCH", "/api/v1/nodes/n1")
    assert len(patches) == 1 and "merge-patch" in patches[0].content_type
    assert set(patches[0].body["metadata"]) == {"labels", "annotations"}
    assert len(fake_api.requests("GET", "/api/v1/nodes/n1")) == 1


def test_no_write_per_sample_then_write_on_change(fake_api: FakeApiServer, kube_api: Any) -> None:
    fake_api.put_object(k8s_node("n1", {}))
    node = node_from([nvidia_gpu(faults=[{"type": "noise", "mib": 100}, {"type": "xid", "xid": 79, "atSample": 8}])])
    agent = Agent("n1", fleet_reader(node), Publisher(kube_api, "n1", retry=FAST), heartbeat_seconds=3600)
    for i in range(7):
        agent.step(now=1000.0 + i)
    assert len(fake_api.requests("PATCH")) == 1
    res = agent.step(now=1008.0).publish
    assert res is not None and res.written and res.reason == "health"
    state = json.loads(fake_api.get_object("nodes", "n1")["metadata"]["annotations"][keys.ANN_GPU_STATE])
    assert state["g"][0]["h"] == 0 and state["g"][0]["r"] == "Xid 79" and state["g"][0]["e"] == 1
    assert len(fake_api.requests("PATCH")) == 2


def test_api_errors_are_logged_kept_and_retried_next_cycle(fake_api: FakeApiServer, kube_api: Any) -> None:
    fake_api.put_object(k8s_node("n1", {}))
    agent = Agent("n1", fleet_reader(node_from([nvidia_gpu()])), Publisher(kube_api, "n1", retry=FAST))
    fake_api.fail("PATCH", "/api/v1/nodes/n1", status=500, times=-1)
    res = agent.step(now=1.0).publish
    assert res is not None and not res.written and res.error
    assert b'flexinfer_agent_node_writes_total{node="n1",result="error"} 1.0' in agent.metrics.exposition()
    fake_api.clear_failures()
    res = agent.step(now=2.0).publish  # nothing changed, but nothing was written yet: retried
    assert res is not None and res.written
    assert fake_api.get_object("nodes", "n1")["metadata"]["annotations"][keys.ANN_AGENT_STATUS] == "ok"


def test_missing_node_does_not_crash(fake_api: FakeApiServer, kube_api: Any) -> None:
    agent = Agent("ghost", fleet_reader(node_from([nvidia_gpu()])), Publisher(kube_api, "ghost", retry=FAST))
    res = agent.step(now=1.0).publish
    assert res is not None and not res.written
    assert "404" in res.error or "not found" in res.error.lower()


def test_cli_once_patches_the_node(fake_api: FakeApiServer, tmp_path: Any) -> None:
    fleet = parse_fleet({"nodes": [{"name": "n1", "gpus": [nvidia_gpu(arch="sm_52", product="GTX 980 Ti",
                                                                      totalMiB=6144, usedMiB=344)]}]})
    path = tmp_path / "fleet.yaml"
    path.write_text(dump_fleet(fleet))
    fake_api.put_object(k8s_node("n1", {}))
    out = CliRunner().invoke(main, ["--fake-gpus", str(path), "--node", "n1", "--once",
                                    "--kube-server", fake_api.url])
    assert out.exit_code == 0, out.output
    meta = fake_api.get_object("nodes", "n1")["metadata"]
    assert meta["labels"][keys.LABEL_ARCH] == "sm_52" and meta["annotations"][keys.ANN_FREE_MEMORY] == "5800"


def test_stale_keys_are_learned_when_the_first_read_failed(fake_api: FakeApiServer, kube_api: Any) -> None:
    fake_api.put_object(k8s_node("n1", {keys.LABEL_COMPUTE: "8.6"}))
    fake_api.fail("GET", "/api/v1/nodes/n1", status=500, times=-1)
    pub = Publisher(kube_api, "n1", retry=FAST, heartbeat_seconds=10)
    agent = Agent("n1", fleet_reader(node_from([amd_gpu()])), pub, heartbeat_seconds=10)
    assert agent.step(now=1.0).publish.written  # type: ignore[union-attr]
    assert keys.LABEL_COMPUTE in fake_api.get_object("nodes", "n1")["metadata"]["labels"]  # not known yet
    fake_api.clear_failures()
    res = agent.step(now=20.0).publish  # heartbeat: labels read again, stale key removed
    assert res is not None and res.written and res.labels[keys.LABEL_COMPUTE] is None
    assert keys.LABEL_COMPUTE not in fake_api.get_object("nodes", "n1")["metadata"]["labels"]
