from __future__ import annotations

import json
import time

import httpx
import pytest
import yaml
from flexinfer.extender.cache import NodeCache
from flexinfer.extender.http import serve_in_thread
from flexinfer.extender.main import build
from flexinfer.extender.pod import requirements_from_dict

from flexinfer import keys
from flexinfer.errors import ParseError
from flexinfer.fleet import default_fleet_path

from .ext_fixtures import Clock, fleet_nodes, gpu, model_pod, node_obj


def test_informer_events_build_the_cache() -> None:
    clock = Clock(1000.0)
    c = NodeCache(clock=clock, stale_after_seconds=60)
    assert c.readiness() == (False, "node cache has not synced yet")
    c.on_event("ADDED", node_obj("early", [gpu(0)]))  # events before the first list do not make it ready
    assert not c.readiness()[0]
    c.on_event("SYNC", {"items": fleet_nodes(), "metadata": {"resourceVersion": "5"}})
    assert c.synced and len(c) == 8 and "early" not in c
    assert c.readiness()[0]
    c.on_event("ADDED", node_obj("new", [gpu(0)]))
    assert c.get("new").state.gpus[0].arch == "sm_89"
    c.on_event("MODIFIED", node_obj("new", [gpu(0, "amd", "gfx1100", 24560)], resource_version="2"))
    assert c.get("new").vendor == "amd"
    c.on_event("DELETED", node_obj("new", []))
    assert c.get("new") is None and "new" not in c.names()
    c.on_event("MODIFIED", {"metadata": "junk"})  # junk is ignored, not fatal
    c.on_event("ADDED", {"no": "metadata"})
    assert len(c) == 8
    junk = c.get("junk")
    assert junk is not None and junk.error  # unparseable annotation: kept, rejected by policy


def test_same_resource_version_reuses_the_parsed_view() -> None:
    c = NodeCache()
    obj = node_obj("n", [gpu(0)], resource_version="7")
    c.replace_all([obj])
    first = c.get("n")
    c.upsert(obj)
    assert c.get("n") is first and c.get_if_current("n", "7") is first and c.get_if_current("n", "8") is None


def test_readiness_when_the_api_server_goes_away() -> None:
    clock = Clock(1000.0)
    c = NodeCache(clock=clock, stale_after_seconds=60)
    healthy = {"ok": True}
    c.source_healthy = lambda: healthy["ok"]
    c.replace_all(fleet_nodes())
    assert c.readiness()[0]
    healthy["ok"] = False
    clock.t = 1030.0
    ready, reason = c.readiness()
    assert ready and "watch failing" in reason and "8 cached nodes" in reason
    clock.t = 1100.0
    ready, reason = c.readiness()
    assert not ready and "100 s old" in reason
    assert c.get("ada-24g") is not None  # still served from cache


def test_static_from_fleet_and_nodelist(tmp_path) -> None:
    c = NodeCache()
    fleet_size = len(yaml.safe_load(default_fleet_path().read_text())["nodes"])  # the homelab fleet grows
    assert c.load_static(default_fleet_path()) == fleet_size
    assert c.readiness() == (True, f"static node list: {fleet_size} nodes")
    nodelist = {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": fleet_nodes()}
    (tmp_path / "nodes.json").write_text(json.dumps(nodelist))
    (tmp_path / "nodes.yaml").write_text(yaml.safe_dump(nodelist))
    for f in ("nodes.json", "nodes.yaml"):
        c2 = NodeCache()
        assert c2.load_static(tmp_path / f) == 8
        assert c2.get("two-12g").state.gpus[1].total_mib == 12288
    (tmp_path / "bad.yaml").write_text("just: [a, string")
    with pytest.raises(ParseError):
        NodeCache().load_static(tmp_path / "bad.yaml")


@pytest.mark.integration
def test_static_mode_cli_build_serves_without_staleness(tmp_path) -> None:
    old = fleet_nodes(time.time() - 86400)  # a dump from yesterday: static mode does not judge age
    (tmp_path / "nodes.json").write_text(json.dumps({"items": old}))
    running = build(nodes_from=str(tmp_path / "nodes.json"), strategy="spread")
    with serve_in_thread(running.app, "127.0.0.1", 0) as h, httpx.Client(base_url=h.url) as c:
        body = c.post("/filter", json={"Pod": model_pod(20480), "NodeNames": ["ada-24g", "stale-ada"]}).json()
        assert body["NodeNames"] == ["ada-24g", "stale-ada"]
    strict = build(nodes_from=str(tmp_path / "nodes.json"), max_state_age_seconds=180)
    assert strict.extender.filter(
        requirements_from_dict(model_pod(20480)),
        ["ada-24g"]).unresolvable == {"ada-24g": "GPU state is stale"}


@pytest.mark.integration
def test_watch_mode_against_fake_api_server(fake_api) -> None:
    now = time.time()
    for n in fleet_nodes(now)[:3]:
        fake_api.put_object({"apiVersion": "v1", "kind": "Node", **n})
    running = build(kube_server=fake_api.url)
    try:
        assert running.informers[0].wait_synced(10) and running.informers[1].wait_synced(10)
        cache = running.extender.cache
        assert sorted(cache.names()) == ["ada-24g", "maxwell-6g", "two-12g"]
        assert cache.readiness()[0]
        # an agent publishes new state: the cache follows
        ann = {keys.ANN_GPU_STATE: node_obj("maxwell-6g", [gpu(0, "nvidia", "sm_52", 6144, 100)], now)["metadata"][
            "annotations"][keys.ANN_GPU_STATE]}
        fake_api.patch_object("nodes", "maxwell-6g", {"metadata": {"annotations": ann}})
        deadline = time.time() + 10
        while cache.get("maxwell-6g").state.gpus[0].free_mib != 100 and time.time() < deadline:
            time.sleep(0.02)
        assert cache.get("maxwell-6g").state.gpus[0].free_mib == 100
        fake_api.delete_object("nodes", "two-12g")
        while "two-12g" in cache and time.time() < deadline:
            time.sleep(0.02)
        assert "two-12g" not in cache
        # a pod bound by the scheduler: the pod watch commits its VRAM on the node
        pod = model_pod(8000, uid="watch-uid", node_name="ada-24g")
        fake_api.put_object({"apiVersion": "v1", "kind": "Pod", **pod})
        while cache.commitment("watch-uid") is None and time.time() < deadline:
            time.sleep(0.02)
        c = cache.commitment("watch-uid")
        assert c is not None and c.node == "ada-24g" and c.gpus == (0,) and cache.committed_mib("ada-24g") == {0: 8000}
        fake_api.delete_object("pods", pod["metadata"]["name"], "models")
        while cache.commitment("watch-uid") is not None and time.time() < deadline:
            time.sleep(0.02)
        assert cache.commitment("watch-uid") is None and cache.committed_mib("ada-24g") == {}
    finally:
        running.stop()


@pytest.mark.integration
def test_api_server_gone_keeps_serving_and_readiness_says_why() -> None:
    from flexinfer.sim.fakeapi import FakeApiServer

    fake = FakeApiServer().start()
    for n in fleet_nodes(time.time())[:2]:
        fake.put_object({"apiVersion": "v1", "kind": "Node", **n})
    running = build(kube_server=fake.url)
    try:
        assert all(i.wait_synced(10) for i in running.informers)  # Nodes, and the bound pods' commitments
        assert running.extender.cache.readiness()[0]
        fake.stop()
        deadline = time.time() + 15
        while running.informers[0].healthy and time.time() < deadline:
            time.sleep(0.05)
        ready, reason = running.extender.cache.readiness()
        assert ready and "API server watch failing; serving 2 cached nodes" in reason
        out = running.extender.filter(requirements_from_dict(model_pod(20480)), ["ada-24g", "maxwell-6g"])
        assert out.passed == ["ada-24g"]
        running.extender.cache.stale_after_seconds = 0
        assert running.extender.cache.readiness()[0] is False
    finally:
        running.stop()


def test_nothing_is_placed_before_the_bound_pods_are_listed() -> None:
    """A (re)started extender knows nothing of the VRAM bound pods hold until its pod watch's first list: until
    then every node fails resolvably (kube-scheduler retries), prioritize reserves nothing and /readyz says why.
    (The e2e burst with the extender killed midway bound 7 pods where 6 fit when filters ran before that list.)"""
    from flexinfer.extender.policy import R_PODS_NOT_SYNCED

    from flexinfer.sim.fakeapi import FakeApiServer

    fake = FakeApiServer().start()
    for n in fleet_nodes(time.time())[:2]:
        fake.put_object({"apiVersion": "v1", "kind": "Node", **n})
    bound = {"apiVersion": "v1", "kind": "Pod", **model_pod(20000, name="holder", uid="u-holder", node_name="ada-24g"),
             "status": {"phase": "Running"}}
    fake.put_object(bound)
    rule = fake.fail("GET", "/api/v1/pods", status=500, times=-1, watch=False)  # the pod list fails for now
    running = build(kube_server=fake.url)
    try:
        assert running.informers[0].wait_synced(10)
        ext = running.extender
        ready, reason = ext.cache.readiness()
        assert not ready and "bound pods have not been listed" in reason
        pod = requirements_from_dict(model_pod(10000, name="new", uid="u-new"))
        out = ext.filter(pod, ["ada-24g", "maxwell-6g"])
        assert out.passed == [] and out.failed == dict.fromkeys(["ada-24g", "maxwell-6g"], R_PODS_NOT_SYNCED)
        assert not out.unresolvable
        assert ext.prioritize_scores(pod, ["ada-24g"]).best == -1 and len(ext.reservations) == 0
        fake.clear_failures()
        assert rule is not None and running.informers[1].wait_synced(15)
        assert ext.cache.readiness()[0]
        # the holder's 20000 MiB now count: the 24 GiB card has no room for another 10000
        assert ext.filter(pod, ["ada-24g", "maxwell-6g"]).passed == []
        assert ext.filter(requirements_from_dict(model_pod(3000, name="small", uid="u-s")), ["ada-24g"]).passed == [
            "ada-24g"]
    finally:
        running.stop()
        fake.stop()
