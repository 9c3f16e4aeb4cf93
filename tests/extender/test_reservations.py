"""Reservations: a burst of pods must not overcommit one GPU (docs/extender-protocol.md, the assume/bind race)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from flexinfer.extender.cache import NodeCache
from flexinfer.extender.http import build_app, serve_in_thread
from flexinfer.extender.pod import requirements_from_dict
from flexinfer.extender.policy import R_INSUFFICIENT, PolicyConfig
from flexinfer.extender.reservations import Reservations
from flexinfer.extender.service import Extender

from .ext_fixtures import Clock, gpu, model_pod, node_obj


def make(nodes, clock=time.time, **res_kw) -> Extender:
    cache = NodeCache(clock=clock)
    cache.replace_all(nodes)
    return Extender(cache, PolicyConfig(max_state_age_seconds=1e9), Reservations(**res_kw), clock=clock)


def pod(i: int, est: int = 5000, **kw):
    return model_pod(est, "vllm", 1, uid=f"uid-{i}", name=f"burst-{i}", **kw)


# --- unit -------------------------------------------------------------------------------------

def test_reservations_unit_lifecycle() -> None:
    r = Reservations(tentative_ttl_seconds=30)
    r.reserve("a", "n1", (0,), 1000, 100.0)
    r.reserve("b", "n1", (0, 1), 500, 100.0)
    assert r.reserved_mib("n1", 101.0) == {0: 1500, 1: 500}
    assert r.reserved_mib("n1", 101.0, exclude_pod="a") == {0: 500, 1: 500}
    assert r.reserved_mib("n1", 131.0) == {}  # TTL passed
    assert len(r) == 0
    r.reserve("a", "n1", (0,), 1000, 200.0)
    r.reserve("a", "n2", (1,), 1000, 201.0)  # a retry replaces the pod's reservation
    assert r.reserved_mib("n1", 202.0) == {} and r.reserved_mib("n2", 202.0) == {1: 1000}
    assert r.release("a") is not None and len(r) == 0 and r.release("a") is None
    r.reserve("c", "n1", (0,), 1000, 300.0)
    assert r.expire(329.0) == 0 and r.expire(330.0) == 1 and r.nodes_holding() == frozenset()


def test_a_bound_pod_is_not_reserved_again() -> None:
    ext = make([node_obj("a", [gpu(0, total=24576, free=24000)])])
    p = pod(1, est=10000)
    ext.on_pod_event("MODIFIED", {**p, "spec": {**p["spec"], "nodeName": "a"}})
    assert ext.cache.commitment("uid-1") is not None
    ext.filter(requirements_from_dict(p), ["a"])  # a late retry of the same pod: its memory is committed already
    assert ext.reservations.get("uid-1") is None and ext.cache.committed_mib("a") == {0: 10000}


# --- the race: back-to-back scheduling cycles, nothing bound or observed yet ----------------

def schedule(ext: Extender, p: dict, names: list[str]) -> str | None:
    """What kube-scheduler does in one cycle (filter; prioritize only with >= 2 feasible)."""
    req = requirements_from_dict(p)
    out = ext.filter(req, names)
    if not out.passed:
        return None
    if len(out.passed) == 1:
        return out.passed[0]
    scores = ext.prioritize(req, out.passed)
    return max(scores, key=lambda v: v.score).node


def test_back_to_back_burst_does_not_overcommit() -> None:
    ext = make([node_obj("a", [gpu(0, total=24576, free=24000)]), node_obj("b", [gpu(0, total=24576, free=14000)])])
    placed = [schedule(ext, pod(i), ["a", "b"]) for i in range(20)]
    assert placed.count("a") == 4 and placed.count("b") == 2 and placed.count(None) == 14
    out = ext.filter(requirements_from_dict(pod(99)), ["a", "b"])
    assert out.failed == {"a": R_INSUFFICIENT, "b": R_INSUFFICIENT}
    assert "reserved for pods being placed" in ext.explain(
        requirements_from_dict(pod(99)), ["a"])[0].detail


@pytest.mark.integration
def test_20_concurrent_pods_over_http_do_not_overcommit_one_gpu() -> None:
    ext = make([node_obj("gpu-a", [gpu(0, total=24576, free=24000)])])
    with serve_in_thread(build_app(ext), "127.0.0.1", 0) as h:
        barrier = threading.Barrier(20)

        def one(i: int) -> bool:
            with httpx.Client(base_url=h.url, timeout=30) as c:
                barrier.wait()
                body = c.post("/filter", json={"Pod": pod(i), "NodeNames": ["gpu-a"]}).json()
                return body["NodeNames"] == ["gpu-a"]

        with ThreadPoolExecutor(20) as pool:
            passed = sum(pool.map(one, range(20)))
    assert passed == 4  # 4 x 5000 MiB fit in 24000 MiB free; the 5th would need 25000
    assert sum(r.mib_per_gpu for r in ext.reservations.all()) == 20000


@pytest.mark.integration
def test_20_concurrent_filter_prioritize_two_nodes() -> None:
    ext = make([node_obj("a", [gpu(0, total=24576, free=24000)]), node_obj("b", [gpu(0, total=24576, free=24000)])])
    with serve_in_thread(build_app(ext), "127.0.0.1", 0) as h:
        barrier = threading.Barrier(20)

        def one(i: int) -> str | None:
            with httpx.Client(base_url=h.url, timeout=30) as c:
                barrier.wait()
                p = pod(i, est=10000)
                passed = c.post("/filter", json={"Pod": p, "NodeNames": ["a", "b"]}).json()["NodeNames"]
                if len(passed) == 1:
                    return passed[0]
                if not passed:
                    return None
                prio = c.post("/prioritize", json={"Pod": p, "NodeNames": passed}).json()
                best = max(prio, key=lambda x: x["Score"])
                return best["Host"] if best["Score"] > 0 else None

        with ThreadPoolExecutor(20) as pool:
            placed = list(pool.map(one, range(20)))
    held: dict[str, int] = {}
    for r in ext.reservations.all():
        held[r.node] = held.get(r.node, 0) + r.mib_per_gpu
    assert all(v <= 24000 for v in held.values()), held
    for node in ("a", "b"):
        assert placed.count(node) <= 2
    assert sum(held.values()) == 40000  # all four slots taken, none twice


# --- confirmation from the pod watch ---------------------------------------------------------

def test_pod_watch_commits_moves_and_releases() -> None:
    clock = Clock(1000.0)
    ext = make([node_obj("a", [gpu(0, free=24000)], 990.0), node_obj("b", [gpu(0, free=24000)], 990.0)],
               clock=clock, tentative_ttl_seconds=30)
    p = pod(1, est=10000)
    assert schedule(ext, p, ["a", "b"]) in ("a", "b")
    first = ext.reservations.get("uid-1")
    assert first is not None
    other = "b" if first.node == "a" else "a"
    bound = {**p, "spec": {**p["spec"], "nodeName": other}, "status": {"phase": "Pending"}}
    clock.t = 1001.0
    ext.on_pod_event("MODIFIED", bound)
    # the scheduler chose the other node: the reservation ends, the pod's memory is committed where it is bound
    assert ext.reservations.get("uid-1") is None and len(ext.reservations) == 0
    c = ext.cache.commitment("uid-1")
    assert c is not None and c.node == other and c.gpus == (0,)
    assert ext.cache.committed_mib(other) == {0: 10000} and ext.cache.committed_mib(first.node) == {}
    clock.t = 1100.0  # past the tentative TTL: commitments have none
    ready = {**bound, "status": {"phase": "Running", "conditions": [
        {"type": "Ready", "status": "True", "lastTransitionTime": "1970-01-01T00:18:20Z"}]}}  # 1100
    ext.on_pod_event("MODIFIED", ready)
    # the agent publishes samples long after the pod became Ready: the commitment does not care when
    ext.cache.upsert(node_obj(other, [gpu(0, free=14000)], 1101.5, resource_version="2"))
    clock.t = 5000.0
    ext.refresh_gauges()
    assert ext.cache.committed_mib(other) == {0: 10000}
    sample = ext.metrics.registry.get_sample_value
    assert sample("flexinfer_extender_committed_pods") == 1 and sample("flexinfer_extender_reservations") == 0
    # deletion releases
    ext.on_pod_event("DELETED", ready)
    assert ext.cache.commitment("uid-1") is None and ext.cache.committed_mib(other) == {}
    p2 = pod(2, est=10000)
    schedule(ext, p2, ["a", "b"])
    assert ext.reservations.get("uid-2") is not None
    ext.on_pod_event("DELETED", p2)
    assert ext.reservations.get("uid-2") is None


def test_tentative_reservation_expires_without_a_watch() -> None:
    clock = Clock(1000.0)
    ext = make([node_obj("a", [gpu(0, free=12000)], 999.0)], clock=clock, tentative_ttl_seconds=30)
    assert ext.filter(requirements_from_dict(pod(1, est=10000)), ["a"]).passed == ["a"]
    assert ext.filter(requirements_from_dict(pod(2, est=10000)), ["a"]).passed == []
    # the same pod retried is not blocked by its own reservation
    assert ext.filter(requirements_from_dict(pod(1, est=10000)), ["a"]).passed == ["a"]
    clock.t = 1031.0
    assert ext.filter(requirements_from_dict(pod(2, est=10000)), ["a"]).passed == ["a"]


def test_pod_sync_drops_commitments_of_vanished_pods() -> None:
    ext = make([node_obj("a", [gpu(0, free=24000)])])
    p = {**pod(1, est=1000), "spec": {**pod(1)["spec"], "nodeName": "a"}}
    ext.on_pod_event("SYNC", {"items": [p]})
    assert ext.cache.commitment("uid-1") is not None and ext.cache.committed_mib("a") == {0: 1000}
    ext.on_pod_event("SYNC", {"items": []})
    assert ext.cache.commitment("uid-1") is None and ext.cache.committed_mib("a") == {}
