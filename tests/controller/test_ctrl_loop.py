"""Threaded loop (informers + work queue), Lease leader election and the CLI, against the fake API server."""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner
from flexinfer.controller.leader import LeaseLock
from flexinfer.controller.main import ControllerLoop, main
from flexinfer.controller.reconcile import Controller, activate, rfc3339

from flexinfer import keys

from .conftest import publish_nodes

pytestmark = pytest.mark.integration
NS = "ai"


def model(name, prio, min_replicas=0):
    return {"apiVersion": keys.MODEL_API_VERSION, "kind": keys.MODEL_KIND,
            "metadata": {"name": name, "namespace": NS},
            "spec": {"backend": "vllm", "source": f"HF://Qwen/{name}",
                     "gpu": {"vendor": "nvidia", "shared": "lane", "priority": prio},
                     # the homelab's RTX PRO 4000 node is tainted for GPU workloads
                     "tolerations": [{"key": "workload.ai/dedicated", "operator": "Exists"}],
                     "serverless": {"minReplicas": min_replicas, "idleTimeout": "10m"}}}


def wait_for(pred, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def replicas(fake, name):
    d = fake.get_object("deployments", name, NS)
    return None if d is None else d["spec"]["replicas"]


def test_loop_reacts_to_events_and_follower_stays_passive(fake_api, kube_api):
    publish_nodes(fake_api, time.time())
    fake_api.put_object(model("big", 100, min_replicas=1))
    fake_api.put_object(model("small", 50))
    leader = ControllerLoop(Controller(kube_api, namespace=NS), resync_seconds=5,
                            lease=LeaseLock(kube_api, NS, identity="leader"), watch_nodes=False)
    leader.lease.try_acquire_or_renew()
    follower = ControllerLoop(Controller(kube_api, namespace=NS), resync_seconds=5,
                              lease=LeaseLock(kube_api, NS, identity="follower"), watch_nodes=False)
    leader.start(sync_timeout_s=5)
    follower.start(sync_timeout_s=5)
    try:
        wait_for(lambda: replicas(fake_api, "big") == 1 and replicas(fake_api, "small") == 0)
        wait_for(lambda: (fake_api.get_object("models", "big", NS).get("status") or {}).get("phase") == "Loading")
        # higher priority holds; make it ready, then the higher one gets traffic-free... and small asks
        fake_api.patch_object("deployments", "big", {"status": {"replicas": 1, "readyReplicas": 1}}, NS)
        wait_for(lambda: fake_api.get_object("models", "big", NS)["status"]["phase"] == "Ready")
        fake_api.patch_object("models", "big", {"status": {"lastActiveTime": rfc3339(time.time())}}, NS)
        activate(kube_api, NS, "small")
        # small (P:50) cannot preempt a big that serves traffic: it waits, via the event path
        wait_for(lambda: (fake_api.get_object("models", "small", NS).get("status") or {}).get("phase")
                 == "Pending")
        assert replicas(fake_api, "big") == 1
        assert follower.passes == 0 and not follower.is_leader
        assert leader.passes >= 1
    finally:
        follower.stop()
        leader.stop()


def test_cli_once(fake_api):
    publish_nodes(fake_api, time.time())
    fake_api.put_object(model("big", 100, min_replicas=1))
    r = CliRunner().invoke(main, ["--kube-server", fake_api.url, "--namespace", NS, "--once",
                                  "--metrics-port", "0", "--log-format", "json"])
    assert r.exit_code == 0, r.output
    assert fake_api.get_object("deployments", "big", NS)["spec"]["replicas"] == 1
    assert fake_api.get_object("models", "big", NS)["status"]["phase"] == "Loading"


def test_cli_once_api_error_is_exit_1_with_a_message(fake_api):
    """--once against an API server that refuses to list Models: exit 1 (--help's contract), 'Error: ...', no
    traceback."""
    fake_api.fail("GET", "/apis/ai.flexinfer/v1alpha2/(namespaces/[^/]+/)?models", status=403, times=-1)
    r = CliRunner().invoke(main, ["--kube-server", fake_api.url, "--namespace", NS, "--once",
                                  "--metrics-port", "0", "--log-format", "json"])
    assert r.exit_code == 1, r.output
    assert isinstance(r.exception, SystemExit), r.exception  # click's error exit, not an escaped KubeError
    assert "Error: cannot read the cluster: " in r.output and "403" in r.output


def test_http_health_metrics_and_nodes_forbidden(fake_api, kube_api):
    import urllib.error
    import urllib.request

    from flexinfer.controller.main import serve_http

    fake_api.put_object(model("big", 100, min_replicas=1))
    fake_api.fail("GET", "/api/v1/nodes", status=403, times=1000)
    ctl = Controller(kube_api, namespace=NS)
    loop = ControllerLoop(ctl, resync_seconds=5, lease=None)
    assert "nodes" not in loop.informers  # forbidden: auto vendor falls back, no failing informer
    server = serve_http("127.0.0.1", 0, ctl.metrics.registry, loop)
    base = f"http://127.0.0.1:{server.port}"

    def get(path):
        try:
            with urllib.request.urlopen(base + path, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, ""

    try:
        assert get("/readyz")[0] == 503
        loop.start(sync_timeout_s=5)
        wait_for(lambda: replicas(fake_api, "big") == 1)
        assert get("/readyz")[0] == 200
        assert get("/healthz")[0] == 200
        sample = 'flexinfer_model_phase{model="big",model_namespace="ai",phase="Loading"} 1.0'
        wait_for(lambda: sample in get("/metrics")[1])
        assert get("/nope")[0] == 404
    finally:
        loop.stop()
        server.stop()


def test_child_event_queues_its_model_by_keyed_lookup(fake_api, kube_api):
    """An event on a pod/Deployment/Job labelled with a Model's name queues that Model (found with one keyed
    lookup in the Models informer), and nothing for a label naming no Model or a Model in another namespace."""
    from flexinfer.controller.reconcile import model_key

    fake_api.put_objects([model("m1", 1), {**model("m2", 1), "metadata": {"name": "m2", "namespace": "other"}}])
    loop = ControllerLoop(Controller(kube_api, namespace=None), watch_nodes=False)
    models = loop.informers["models"].start()
    try:
        assert models.wait_synced(10)
        loop.queue.get(timeout=1)  # the informer's SYNC queues a full pass
        on_pod = loop._handler("pods")

        def pod(owner, ns=NS):
            return {"metadata": {"name": "p", "namespace": ns, "labels": {keys.LABEL_MODEL: owner}}}

        on_pod("MODIFIED", pod("m1"))
        assert loop.queue.get_nowait() == model_key(model("m1", 1))
        for other in (pod("nope"), pod("m2"), pod("m1", "other"), {"metadata": {"name": "unlabelled"}}):
            on_pod("MODIFIED", other)
        assert loop.queue.empty()
    finally:
        models.stop()
