"""HTTP-level tests of flexinfer.kube against the local fake API server (no client monkeypatching)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from flexinfer import keys, kube
from flexinfer.kube.informer import METADATA_LIST_ACCEPT
from flexinfer.sim.fakeapi import FakeApiServer

pytestmark = pytest.mark.integration

FAST = kube.RetryPolicy(attempts=4, initial_s=0.01, max_s=0.05)


def node(name: str, labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": labels or {}, "annotations": annotations or {}}}


def model(name: str, ns: str = "default") -> dict:
    return {"apiVersion": keys.MODEL_API_VERSION, "kind": keys.MODEL_KIND,
            "metadata": {"name": name, "namespace": ns}, "spec": {"backend": "vllm", "source": "hf://x/y"}}


def wait_for(pred: Callable[[], Any], timeout_s: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


# --- patch_node_metadata -----------------------------------------------------------------------------


def test_patch_node_metadata_sends_merge_patch_with_only_our_keys(fake_api: FakeApiServer, kube_api) -> None:
    fake_api.put_object(node("n1", labels={"kubernetes.io/hostname": "n1", keys.LABEL_ARCH: "sm_52"},
                             annotations={"other/thing": "keep", keys.ANN_AGENT_STATUS: "old"}))
    kube.patch_node_metadata(
        kube_api, "n1",
        labels={keys.LABEL_VENDOR: "nvidia", keys.LABEL_ARCH: None},
        annotations={keys.ANN_FREE_MEMORY: "1024", keys.ANN_AGENT_STATUS: None},
    )
    [req] = fake_api.requests("PATCH")
    assert req.path == "/api/v1/nodes/n1"
    assert req.content_type == "application/merge-patch+json"
    assert req.body == {"metadata": {
        "labels": {keys.LABEL_VENDOR: "nvidia", keys.LABEL_ARCH: None},
        "annotations": {keys.ANN_FREE_MEMORY: "1024", keys.ANN_AGENT_STATUS: None},
    }}
    meta = fake_api.get_object("nodes", "n1")["metadata"]
    assert meta["labels"] == {"kubernetes.io/hostname": "n1", keys.LABEL_VENDOR: "nvidia"}
    assert meta["annotations"] == {"other/thing": "keep", keys.ANN_FREE_MEMORY: "1024"}


def test_patch_node_metadata_with_nothing_to_do_sends_nothing(fake_api: FakeApiServer, kube_api) -> None:
    fake_api.put_object(node("n1"))
    kube.patch_node_metadata(kube_api, "n1", {}, {})
    assert fake_api.requests("PATCH") == []


@pytest.mark.parametrize("status", [409, 429, 500, 503])
def test_patch_retries_transient_errors_then_succeeds(fake_api: FakeApiServer, kube_api, status: int) -> None:
    fake_api.put_object(node("n1"))
    rule = fake_api.fail("PATCH", "/api/v1/nodes/n1", status=status, times=2)
    kube.patch_node_metadata(kube_api, "n1", {keys.LABEL_VENDOR: "amd"}, {}, retry=FAST)
    assert rule.hits == 2
    assert [r.status for r in fake_api.requests("PATCH")] == [status, status, 200]
    assert fake_api.get_object("nodes", "n1")["metadata"]["labels"] == {keys.LABEL_VENDOR: "amd"}


def test_patch_gives_kube_error_after_retry_budget(fake_api: FakeApiServer, kube_api) -> None:
    fake_api.put_object(node("n1"))
    fake_api.fail("PATCH", "/api/v1/nodes/n1", status=500, times=-1)
    with pytest.raises(kube.KubeError, match="giving up after 4 attempts") as ei:
        kube.patch_node_metadata(kube_api, "n1", {keys.LABEL_VENDOR: "amd"}, {}, retry=FAST)
    assert ei.value.status == 500
    assert len(fake_api.requests("PATCH")) == 4


def test_patch_missing_node_is_not_retried(fake_api: FakeApiServer, kube_api) -> None:
    with pytest.raises(kube.KubeError) as ei:
        kube.patch_node_metadata(kube_api, "ghost", {keys.LABEL_VENDOR: "amd"}, {}, retry=FAST)
    assert ei.value.not_found
    assert len(fake_api.requests("PATCH")) == 1


def test_patch_retries_on_timeout(fake_api: FakeApiServer) -> None:
    fake_api.put_object(node("n1"))
    fake_api.fail("PATCH", "/api/v1/nodes/n1", status=504, times=1, hang_s=1.0)
    api = kube.api_client(server=fake_api.url)
    path = "/api/v1/nodes/n1"

    def patch_with_short_timeout() -> dict:
        return kube.request(api, "PATCH", path, body={"metadata": {"labels": {"a": "b"}}},
                            content_type=kube.MERGE_PATCH, timeout_s=(1.0, 0.2))

    result = kube.with_retry("patch", FAST, patch_with_short_timeout)
    assert result["metadata"]["labels"] == {"a": "b"}


def test_unreachable_server_is_a_kube_error() -> None:
    api = kube.api_client(server="http://127.0.0.1:9")
    with pytest.raises(kube.KubeError) as ei:
        kube.get_object(api, "nodes", "n1", retry=kube.RetryPolicy(attempts=2, initial_s=0.01, max_s=0.01))
    assert ei.value.status == 0


# --- object helpers ------------------------------------------------------------------------------------


def deployment(replicas: int = 1, image: str = "vllm:1") -> dict:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "m1", "namespace": "ai", "labels": {keys.LABEL_MODEL: "m1"}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {keys.LABEL_MODEL: "m1"}},
                 "template": {"metadata": {"labels": {keys.LABEL_MODEL: "m1"}},
                              "spec": {"containers": [{"name": "server", "image": image}]}}},
    }


def test_apply_object_is_idempotent(fake_api: FakeApiServer, kube_api) -> None:
    first = kube.apply_object(kube_api, deployment())
    second = kube.apply_object(kube_api, deployment())
    assert first["metadata"]["uid"] == second["metadata"]["uid"]
    assert first["metadata"]["resourceVersion"] == second["metadata"]["resourceVersion"]
    assert fake_api.requests("PUT") == []  # nothing changed, nothing written
    third = kube.apply_object(kube_api, deployment(image="vllm:2"))
    assert third["spec"]["template"]["spec"]["containers"][0]["image"] == "vllm:2"
    assert third["metadata"]["uid"] == first["metadata"]["uid"]
    assert len(fake_api.requests("PUT")) == 1


def test_apply_service_keeps_cluster_ip_and_pvc_spec(fake_api: FakeApiServer, kube_api) -> None:
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "m1", "namespace": "ai"},
           "spec": {"selector": {keys.LABEL_MODEL: "m1"}, "ports": [{"port": 80}]}}
    kube.apply_object(kube_api, svc)
    fake_api.patch_object("services", "m1", {"spec": {"clusterIP": "10.0.0.7"}}, "ai")
    svc["spec"]["ports"] = [{"port": 8080}]
    out = kube.apply_object(kube_api, svc)
    assert out["spec"]["clusterIP"] == "10.0.0.7"
    assert out["spec"]["ports"] == [{"port": 8080}]

    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "cache", "namespace": "ai"},
           "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}}}
    kube.apply_object(kube_api, pvc)
    assert kube.apply_object(kube_api, pvc)["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert len(fake_api.requests("PUT", r".*/persistentvolumeclaims/.*")) == 0


def test_apply_object_retries_replace_conflict(fake_api: FakeApiServer, kube_api) -> None:
    kube.apply_object(kube_api, deployment())
    fake_api.fail("PUT", "/apis/apps/v1/namespaces/ai/deployments/m1", status=409, times=1)
    out = kube.apply_object(kube_api, deployment(replicas=2), retry=FAST)
    assert out["spec"]["replicas"] == 2


def test_scale_get_list_delete(fake_api: FakeApiServer, kube_api) -> None:
    kube.apply_object(kube_api, deployment())
    assert kube.scale_deployment(kube_api, "ai", "m1", 0)["spec"]["replicas"] == 0
    assert kube.get_object(kube_api, "deployments", "m1", "ai")["spec"]["replicas"] == 0
    assert kube.get_object(kube_api, "Deployment", "nope", "ai") is None
    assert [d["metadata"]["name"] for d in kube.list_objects(kube_api, "deployments", "ai")] == ["m1"]
    assert kube.list_objects(kube_api, "deployments", "other") == []
    assert kube.list_objects(kube_api, "deployments", label_selector=f"{keys.LABEL_MODEL}=m1") != []
    assert kube.list_objects(kube_api, "deployments", label_selector=f"{keys.LABEL_MODEL}=m2") == []
    assert kube.delete_object(kube_api, "deployments", "m1", "ai") is True
    assert kube.delete_object(kube_api, "deployments", "m1", "ai") is False


def test_owner_references_cascade_delete(fake_api: FakeApiServer, kube_api) -> None:
    m = kube.create_object(kube_api, model("m1", "ai"))
    dep = deployment()
    dep["metadata"]["ownerReferences"] = [kube.owner_reference(m)]
    kube.apply_object(kube_api, dep)
    assert dep["metadata"]["ownerReferences"][0]["uid"] == m["metadata"]["uid"]
    kube.delete_object(kube_api, "models", "m1", "ai")
    assert fake_api.get_object("deployments", "m1", "ai") is None


def test_patch_model_status_hits_status_subresource(fake_api: FakeApiServer, kube_api) -> None:
    kube.create_object(kube_api, model("m1", "ai"))
    out = kube.patch_model_status(kube_api, "ai", "m1", {"phase": "Ready", "replicas": 1})
    [req] = fake_api.requests("PATCH")
    assert req.path == f"/apis/{keys.MODEL_GROUP}/{keys.MODEL_VERSION}/namespaces/ai/models/m1/status"
    assert req.content_type == "application/merge-patch+json"
    assert req.body == {"status": {"phase": "Ready", "replicas": 1}}
    assert out["status"] == {"phase": "Ready", "replicas": 1}
    kube.patch_model_status(kube_api, "ai", "m1", {"replicas": None, "message": "ok"})
    assert fake_api.get_object("models", "m1", "ai")["status"] == {"phase": "Ready", "message": "ok"}


def test_patch_model_annotations(fake_api: FakeApiServer, kube_api) -> None:
    kube.create_object(kube_api, model("m1", "ai"))
    kube.patch_model_annotations(kube_api, "ai", "m1", {keys.MODEL_ACTIVATE: "2026-01-01T00:00:00Z"})
    assert fake_api.get_object("models", "m1", "ai")["metadata"]["annotations"] == {
        keys.MODEL_ACTIVATE: "2026-01-01T00:00:00Z"}
    kube.patch_model_annotations(kube_api, "ai", "m1", {keys.MODEL_ACTIVATE: None})
    assert fake_api.get_object("models", "m1", "ai")["metadata"].get("annotations") == {}


# --- Informer ------------------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, etype: str, obj: dict) -> None:
        with self.lock:
            if etype == "SYNC":
                self.events.append(("SYNC", sorted(i["metadata"]["name"] for i in obj["items"])))
            else:
                self.events.append((etype, obj["metadata"]["name"]))

    def snapshot(self) -> list[tuple[str, Any]]:
        with self.lock:
            return list(self.events)

    def has(self, ev: tuple[str, Any]) -> bool:
        return ev in self.snapshot()


@pytest.fixture
def informer_factory(kube_api):
    made: list[kube.Informer] = []

    def make(kind: str = "nodes", **kw: Any) -> tuple[kube.Informer, Recorder]:
        rec = Recorder()
        inf = kube.Informer(kube_api, kind, rec, backoff_initial_s=0.02, backoff_max_s=0.1, **kw)
        made.append(inf)
        inf.start()
        assert inf.wait_synced(5)
        return inf, rec

    yield make
    for inf in made:
        inf.stop()


def test_informer_lists_then_watches(fake_api: FakeApiServer, informer_factory) -> None:
    fake_api.put_objects([node("a"), node("b")])
    inf, rec = informer_factory()
    assert rec.snapshot() == [("SYNC", ["a", "b"])]
    assert inf.synced and inf.healthy and inf.last_sync_unix > 0
    assert all(i["kind"] == "Node" for i in inf.items())
    wait_for(lambda: fake_api.watch_count("nodes") == 1)
    fake_api.put_object(node("c"))
    fake_api.patch_object("nodes", "a", {"metadata": {"labels": {"x": "1"}}})
    fake_api.delete_object("nodes", "b")
    wait_for(lambda: len(rec.snapshot()) == 4)
    assert rec.snapshot()[1:] == [("ADDED", "c"), ("MODIFIED", "a"), ("DELETED", "b")]
    assert sorted(i["metadata"]["name"] for i in inf.items()) == ["a", "c"]
    assert inf.get("", "a")["metadata"]["labels"]["x"] == "1" and inf.get("", "b") is None  # keyed lookup
    assert inf.resource_version == str(fake_api.resource_version)


def list_requests(fake_api: FakeApiServer, path: str = "/api/v1/nodes") -> list[dict[str, str]]:
    return [r.query for r in fake_api.requests("GET", path) if "watch" not in r.query]


def test_informer_lists_in_pages(fake_api: FakeApiServer, informer_factory) -> None:
    fake_api.put_objects([node(f"n{i:02d}") for i in range(12)])
    inf, rec = informer_factory(page_size=5)
    assert rec.snapshot()[0] == ("SYNC", [f"n{i:02d}" for i in range(12)])
    assert inf.list_pages == 3 and len(inf.items()) == 12
    lists = list_requests(fake_api)
    assert [q.get("limit") for q in lists] == ["5", "5", "5"]
    assert "continue" not in lists[0] and lists[1]["continue"] and lists[2]["continue"] != lists[1]["continue"]
    assert inf.resource_version == str(fake_api.resource_version)
    fake_api.put_object(node("late"))  # the watch resumes from the paged list's resourceVersion
    wait_for(lambda: rec.has(("ADDED", "late")))


def test_informer_reads_the_whole_list_when_its_continue_token_expires(fake_api: FakeApiServer,
                                                                       informer_factory) -> None:
    fake_api.put_objects([node(f"n{i:02d}") for i in range(7)])
    fake_api.fail("GET", "/api/v1/nodes", status=410, times=1, with_param="continue")
    inf, rec = informer_factory(page_size=3)
    assert rec.snapshot()[0] == ("SYNC", [f"n{i:02d}" for i in range(7)])
    lists = list_requests(fake_api)
    assert [(q.get("limit"), "continue" in q) for q in lists] == [("3", False), ("3", True), (None, False)]
    assert inf.list_pages == 2 and inf.relists == 1


def test_informer_without_paging_lists_once(fake_api: FakeApiServer, informer_factory) -> None:
    fake_api.put_objects([node(f"n{i}") for i in range(4)])
    inf, rec = informer_factory(page_size=0)
    assert rec.snapshot()[0] == ("SYNC", ["n0", "n1", "n2", "n3"])
    assert [q.get("limit") for q in list_requests(fake_api)] == [None] and inf.list_pages == 1


def test_informer_relists_after_410(fake_api: FakeApiServer, informer_factory) -> None:
    fake_api.put_object(node("a"))
    inf, rec = informer_factory()
    wait_for(lambda: fake_api.watch_count("nodes") == 1)
    assert fake_api.expire_watches("nodes") == 1
    fake_api.put_object(node("b"))  # may land in the relist or as a watch event
    wait_for(lambda: inf.relists == 2)
    wait_for(lambda: sorted(i["metadata"]["name"] for i in inf.items()) == ["a", "b"])
    assert rec.snapshot()[0] == ("SYNC", ["a"])
    assert any(e[0] == "SYNC" and e[1] in (["a"], ["a", "b"]) for e in rec.snapshot()[1:])


def test_informer_recovers_after_cut_stream(fake_api: FakeApiServer, informer_factory) -> None:
    fake_api.put_object(node("a"))
    inf, rec = informer_factory()
    wait_for(lambda: fake_api.watch_count("nodes") == 1)
    fake_api.fail("GET", "/api/v1/nodes", status=500, times=1, watch=True)  # the re-watch fails once
    assert fake_api.cut_watches("nodes") == 1
    fake_api.put_object(node("b"))  # happens while the informer is disconnected
    wait_for(lambda: rec.has(("ADDED", "b")))  # resumed from its resourceVersion: nothing lost
    wait_for(lambda: fake_api.watch_count("nodes") == 1)
    fake_api.delete_object("nodes", "a")
    wait_for(lambda: rec.has(("DELETED", "a")))
    assert inf.healthy
    assert inf.relists == 1


def test_informer_relists_when_resume_version_was_compacted(fake_api: FakeApiServer, informer_factory) -> None:
    fake_api.put_object(node("a"))
    inf, rec = informer_factory()
    wait_for(lambda: fake_api.watch_count("nodes") == 1)
    fake_api.fail("GET", "/api/v1/nodes", status=500, times=1, watch=True)
    fake_api.cut_watches("nodes")
    fake_api.put_object(node("b"))
    fake_api.compact()  # the informer's resourceVersion is now too old: watch answers 410 -> relist
    wait_for(lambda: inf.relists == 2)
    assert rec.has(("SYNC", ["a", "b"]))


def test_informer_backs_off_on_list_errors(fake_api: FakeApiServer, kube_api) -> None:
    fake_api.put_object(node("a"))
    fake_api.fail("GET", "/api/v1/nodes", status=500, times=3, watch=False)
    rec = Recorder()
    inf = kube.Informer(kube_api, "nodes", rec, backoff_initial_s=0.02, backoff_max_s=0.05).start()
    try:
        assert inf.wait_synced(5)
        assert rec.snapshot()[0] == ("SYNC", ["a"])
        assert len([r for r in fake_api.requests("GET") if "watch" not in r.query]) == 4
    finally:
        inf.stop()


def test_informer_selectors_and_namespaces(fake_api: FakeApiServer, informer_factory) -> None:
    fake_api.put_objects([node("gpu", labels={keys.LABEL_VENDOR: "nvidia"}), node("cpu")])
    _, rec = informer_factory(label_selector=keys.LABEL_VENDOR)
    assert rec.snapshot() == [("SYNC", ["gpu"])]
    for ns in ("ai", "other"):
        fake_api.put_object(model("m-" + ns, ns))
    _, mrec = informer_factory("models", namespace="ai")
    assert mrec.snapshot() == [("SYNC", ["m-ai"])]
    wait_for(lambda: fake_api.watch_count("models") == 1)
    fake_api.put_object(model("m2-other", "other"))
    fake_api.put_object(model("m2-ai", "ai"))
    wait_for(lambda: mrec.has(("ADDED", "m2-ai")))
    assert not mrec.has(("ADDED", "m2-other"))


def test_informer_handler_exception_does_not_kill_it(fake_api: FakeApiServer, kube_api) -> None:
    seen: list[str] = []

    def bad(etype: str, obj: dict) -> None:
        seen.append(etype)
        raise RuntimeError("boom")

    inf = kube.Informer(kube_api, "nodes", bad).start()
    try:
        assert inf.wait_synced(5)
        wait_for(lambda: fake_api.watch_count("nodes") == 1)
        fake_api.put_object(node("a"))
        wait_for(lambda: "ADDED" in seen)
        assert inf.running and inf.healthy
    finally:
        inf.stop()


def test_informer_stop_is_prompt(fake_api: FakeApiServer, kube_api) -> None:
    inf = kube.Informer(kube_api, "nodes", lambda *_: None).start()
    assert inf.wait_synced(5)
    wait_for(lambda: fake_api.watch_count("nodes") == 1)
    t0 = time.monotonic()
    inf.stop()
    assert time.monotonic() - t0 < 1.0
    assert not inf.running


def test_informer_stop_during_backoff_is_prompt(fake_api: FakeApiServer, kube_api) -> None:
    fake_api.fail("GET", "/api/v1/nodes", status=500, times=-1)
    inf = kube.Informer(kube_api, "nodes", lambda *_: None, backoff_initial_s=5, backoff_max_s=5).start()
    wait_for(lambda: fake_api.requests("GET"))
    t0 = time.monotonic()
    inf.stop()
    assert time.monotonic() - t0 < 1.0
    assert not inf.synced and not inf.healthy


def kubelet_node(name: str, free: str) -> dict:
    """A Node as a kubelet and the agent leave it: status (images, conditions) next to our metadata."""
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {keys.LABEL_VENDOR: "nvidia"},
                         "annotations": {keys.ANN_FREE_MEMORY: free}},
            "spec": {"podCIDR": "10.0.0.0/24"},
            "status": {"images": [{"names": [f"registry.example/img-{i}:v1"], "sizeBytes": 10**8} for i in range(20)],
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def test_metadata_only_informer_gets_labels_and_annotations_without_status(fake_api: FakeApiServer,
                                                                           informer_factory) -> None:
    fake_api.put_objects([kubelet_node("a", "1000"), kubelet_node("b", "2000")])
    inf, rec = informer_factory(metadata_only=True, page_size=1)
    assert rec.snapshot() == [("SYNC", ["a", "b"])]
    for item in inf.items():  # what the server sent: PartialObjectMetadata, no spec or status
        assert item["kind"] == "PartialObjectMetadata" and item["apiVersion"] == "meta.k8s.io/v1"
        assert set(item) == {"kind", "apiVersion", "metadata"}
        assert item["metadata"]["labels"] == {keys.LABEL_VENDOR: "nvidia"}
    wait_for(lambda: fake_api.watch_count("nodes") == 1)
    fake_api.patch_object("nodes", "a", {"metadata": {"annotations": {keys.ANN_FREE_MEMORY: "512"}}})
    fake_api.put_object(kubelet_node("c", "64"))
    wait_for(lambda: inf.get("", "c") is not None)
    a, c = inf.get("", "a"), inf.get("", "c")
    assert a["metadata"]["annotations"][keys.ANN_FREE_MEMORY] == "512" and "status" not in a
    assert c["kind"] == "PartialObjectMetadata" and "status" not in c
    assert c["metadata"]["resourceVersion"] == fake_api.get_object("nodes", "c")["metadata"]["resourceVersion"]
    plain, _ = informer_factory()  # without the option: whole objects, as before
    assert all(i["kind"] == "Node" and i["status"]["images"] for i in plain.items())


def test_fake_api_serves_the_accept_ranges_it_can_and_refuses_others(fake_api: FakeApiServer, kube_api) -> None:
    fake_api.put_object(kubelet_node("a", "1"))
    table = "application/json;as=Table;g=meta.k8s.io;v=v1"
    with pytest.raises(kube.KubeError) as e:
        kube.request(kube_api, "GET", "/api/v1/nodes", accept=table)
    assert e.value.status == 406
    whole = kube.request(kube_api, "GET", "/api/v1/nodes", accept=table + ",application/json")  # falls back
    assert whole["kind"] == "NodeList" and whole["items"][0]["status"]
    meta = kube.request(kube_api, "GET", "/api/v1/nodes", accept=METADATA_LIST_ACCEPT)
    assert meta["kind"] == "PartialObjectMetadataList" and set(meta["items"][0]) == {"kind", "apiVersion", "metadata"}
    with pytest.raises(kube.KubeError) as e:  # a list is not a PartialObjectMetadata: no range served
        kube.request(kube_api, "GET", "/api/v1/nodes",
                     accept="application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1")
    assert e.value.status == 406
