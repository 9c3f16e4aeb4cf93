"""Issue 7 item 4, extender side, through its real faces (HTTP /readyz and /filter, gRPC health) while it
watches the local fake API server: what kube-scheduler and the operator see.

* The API server goes away: filter keeps answering from the cache with the same verdicts; /readyz stays
  200 and says "API server watch failing; serving N cached nodes"; gRPC health stays SERVING. Once the
  cache is older than the staleness window, /readyz answers 503 with the age and gRPC health NOT_SERVING.
* A node is deleted while cached: the DELETED event removes it; a filter naming it (kube-scheduler's own
  cache lags) gets it in FailedNodes with "node not in extender cache", the other nodes are unaffected.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
import httpx
import pytest
from flexinfer.extender.grpc_server import SERVICE_NAME, serve_grpc
from flexinfer.extender.http import serve_in_thread
from flexinfer.extender.main import build
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flexinfer.sim.fakeapi import FakeApiServer

from .ext_fixtures import fleet_nodes, model_pod

pytestmark = pytest.mark.integration


def wait_for(pred: Callable[[], Any], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def grpc_health(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME),
                                                    timeout=5).status


def test_api_server_gone_keeps_serving_from_cache_and_readiness_is_honest() -> None:
    fake = FakeApiServer().start()
    for n in fleet_nodes(time.time())[:3]:
        fake.put_object({"apiVersion": "v1", "kind": "Node", **n})
    running = build(kube_server=fake.url)
    g = serve_grpc(running.extender, "127.0.0.1", 0, health_interval_s=0.05)
    h = serve_in_thread(running.app, "127.0.0.1", 0)
    names = ["ada-24g", "maxwell-6g", "two-12g"]
    try:
        assert running.informers[0].wait_synced(10)
        with httpx.Client(base_url=h.url, timeout=10) as c:
            wait_for(lambda: c.get("/readyz").status_code == 200 and grpc_health(g.port) == 1)
            before = c.post("/filter", json={"Pod": model_pod(20480), "NodeNames": names}).json()
            assert before["NodeNames"] == ["ada-24g"]
            fake.stop()
            wait_for(lambda: not running.informers[0].healthy)
            ready = c.get("/readyz")
            assert ready.status_code == 200
            assert "API server watch failing; serving 3 cached nodes" in ready.json()["reason"]
            assert grpc_health(g.port) == health_pb2.HealthCheckResponse.SERVING
            after = c.post("/filter", json={"Pod": model_pod(20480), "NodeNames": names}).json()
            assert after == before  # same verdicts, same reasons, from the cache
            running.extender.cache.stale_after_seconds = 0  # the window (300 s by default) has passed
            stale = c.get("/readyz")
            assert stale.status_code == 503 and "API server watch failing; node cache is" in stale.json()["reason"]
            wait_for(lambda: grpc_health(g.port) == health_pb2.HealthCheckResponse.NOT_SERVING)
            assert c.get("/healthz").status_code == 200  # alive: not restarted by its liveness probe
    finally:
        h.stop()
        g.stop(0)
        running.stop()
        fake.stop()


def test_node_deleted_while_cached_is_reported_not_in_cache(fake_api: FakeApiServer) -> None:
    for n in fleet_nodes(time.time())[:3]:
        fake_api.put_object({"apiVersion": "v1", "kind": "Node", **n})
    running = build(kube_server=fake_api.url)
    names = ["ada-24g", "maxwell-6g", "two-12g"]
    pod = model_pod(5000, "llamacpp", 1)
    try:
        assert running.informers[0].wait_synced(10)
        with serve_in_thread(running.app, "127.0.0.1", 0) as h, httpx.Client(base_url=h.url, timeout=10) as c:
            before = c.post("/filter", json={"Pod": pod, "NodeNames": names}).json()
            assert sorted(before["NodeNames"]) == names
            wait_for(lambda: fake_api.watch_count("nodes") == 1)
            fake_api.delete_object("nodes", "two-12g")
            wait_for(lambda: "two-12g" not in running.extender.cache)
            after = c.post("/filter", json={"Pod": pod, "NodeNames": names}).json()
            assert sorted(after["NodeNames"]) == ["ada-24g", "maxwell-6g"]
            assert after["FailedNodes"] == {"two-12g": "node not in extender cache"}
            assert after["FailedAndUnresolvableNodes"] == {} and after["Error"] == ""
            scores = c.post("/prioritize", json={"Pod": pod, "NodeNames": names}).json()
            assert {s["Host"]: s["Score"] for s in scores}["two-12g"] == 0
    finally:
        running.stop()
