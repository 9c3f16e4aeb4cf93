"""The fake API server's semantics that FlexInfer relies on (through flexinfer.kube over HTTP)."""

from __future__ import annotations

import threading
import time

import pytest

from flexinfer import keys, kube
from flexinfer.sim.fakeapi import FakeApiServer

pytestmark = pytest.mark.integration

NO = kube.NO_RETRY


def pod(name: str, ns: str = "ai", node: str | None = None, phase: str = "Pending") -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
            "spec": {"containers": [{"name": "c", "image": "i"}], **({"nodeName": node} if node else {})},
            "status": {"phase": phase}}


def test_create_conflict_and_metadata(fake_api: FakeApiServer, kube_api) -> None:
    created = kube.create_object(kube_api, pod("p1"), retry=NO)
    meta = created["metadata"]
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z") and meta["generation"] == 1
    assert int(meta["resourceVersion"]) == fake_api.resource_version
    assert "status" not in created  # status is a subresource: dropped on create
    with pytest.raises(kube.KubeError) as ei:
        kube.create_object(kube_api, pod("p1"))
    assert ei.value.conflict and ei.value.reason == "AlreadyExists"
    assert len(fake_api.requests("POST")) == 2  # a create conflict is not retried


def test_replace_with_stale_resource_version_conflicts(fake_api: FakeApiServer, kube_api) -> None:
    created = kube.create_object(kube_api, pod("p1"), retry=NO)
    kube.merge_patch(kube_api, "pods", "p1", {"metadata": {"labels": {"x": "1"}}}, "ai")
    with pytest.raises(kube.KubeError) as ei:
        kube.replace_object(kube_api, created, retry=NO)
    assert ei.value.conflict


def test_generation_bumps_on_spec_change_only(fake_api: FakeApiServer, kube_api) -> None:
    kube.create_object(kube_api, pod("p1"), retry=NO)
    out = kube.merge_patch(kube_api, "pods", "p1", {"metadata": {"labels": {"x": "1"}}}, "ai")
    assert out["metadata"]["generation"] == 1
    out = kube.merge_patch(kube_api, "pods", "p1", {"spec": {"nodeName": "n1"}}, "ai")
    assert out["metadata"]["generation"] == 2


def test_status_subresource_split(fake_api: FakeApiServer, kube_api) -> None:
    kube.create_object(kube_api, pod("p1"), retry=NO)
    kube.merge_patch(kube_api, "pods", "p1", {"status": {"phase": "Running"}}, "ai")  # main: ignored
    assert "status" not in fake_api.get_object("pods", "p1", "ai")
    out = kube.merge_patch(kube_api, "pods", "p1", {"status": {"phase": "Running"}, "spec": {"nodeName": "x"}},
                           "ai", "status")
    assert out["status"] == {"phase": "Running"} and "nodeName" not in out["spec"]


def test_noop_patch_keeps_resource_version(fake_api: FakeApiServer, kube_api) -> None:
    kube.create_object(kube_api, pod("p1"), retry=NO)
    a = kube.merge_patch(kube_api, "pods", "p1", {"metadata": {"labels": {"x": "1"}}}, "ai")
    b = kube.merge_patch(kube_api, "pods", "p1", {"metadata": {"labels": {"x": "1"}}}, "ai")
    assert a["metadata"]["resourceVersion"] == b["metadata"]["resourceVersion"]


def test_json_patch_and_unsupported_patch_types(fake_api: FakeApiServer, kube_api) -> None:
    kube.create_object(kube_api, pod("p1"), retry=NO)
    path = "/api/v1/namespaces/ai/pods/p1"
    out = kube.request(kube_api, "PATCH", path, body=[{"op": "add", "path": "/metadata/labels/y", "value": "2"}],
                       content_type="application/json-patch+json")
    assert out["metadata"]["labels"] == {"app": "p1", "y": "2"}
    with pytest.raises(kube.KubeError) as ei:
        kube.request(kube_api, "PATCH", path, body={"a": 1}, content_type="application/apply-patch+yaml")
    assert ei.value.status == 415


def test_field_and_label_selectors_on_lists(fake_api: FakeApiServer, kube_api) -> None:
    fake_api.put_objects([pod("a", node="n1", phase="Running"), pod("b", node="n2"), pod("c", ns="other", node="n1")])
    names = lambda items: sorted(i["metadata"]["name"] for i in items)  # noqa: E731
    assert names(kube.list_objects(kube_api, "pods", field_selector="spec.nodeName=n1")) == ["a", "c"]
    assert names(kube.list_objects(kube_api, "pods", "ai", field_selector="spec.nodeName=n1")) == ["a"]
    assert names(kube.list_objects(kube_api, "pods", field_selector="status.phase!=Running")) == ["b", "c"]
    assert names(kube.list_objects(kube_api, "pods", label_selector="app in (a,b)")) == ["a", "b"]


# --- paged lists (limit/continue) ---------------------------------------------------------------------


PODS = "/api/v1/pods"


def page(kube_api, path: str = PODS, **query: str) -> dict:
    return kube.request(kube_api, "GET", path, query=query)


def names_of(lst: dict) -> list[str]:
    return [f"{i['metadata']['namespace']}/{i['metadata']['name']}" for i in lst["items"]]


def test_paged_list_walks_key_order_in_pages(fake_api: FakeApiServer, kube_api) -> None:
    fake_api.put_objects([pod("c"), pod("a", ns="zz"), pod("b"), pod("e"), pod("d", ns="b-ns"), pod("f"), pod("g")])
    first = page(kube_api, limit="3")
    assert names_of(first) == ["ai/b", "ai/c", "ai/e"]
    assert first["metadata"]["remainingItemCount"] == 4 and first["metadata"]["continue"]
    second = page(kube_api, limit="3", **{"continue": first["metadata"]["continue"]})
    assert names_of(second) == ["ai/f", "ai/g", "b-ns/d"]
    last = page(kube_api, limit="3", **{"continue": second["metadata"]["continue"]})
    assert names_of(last) == ["zz/a"]
    assert "continue" not in last["metadata"] and "remainingItemCount" not in last["metadata"]
    rvs = {first["metadata"]["resourceVersion"], second["metadata"]["resourceVersion"],
           last["metadata"]["resourceVersion"]}
    assert rvs == {str(fake_api.resource_version)}
    assert names_of(page(kube_api, "/api/v1/namespaces/ai/pods", limit="100")) == ["ai/b", "ai/c", "ai/e", "ai/f",
                                                                                 "ai/g"]
    assert len(page(kube_api, limit="0")["items"]) == 7  # limit=0: no limit


def test_continuation_pages_are_served_from_the_first_pages_snapshot(fake_api: FakeApiServer, kube_api) -> None:
    fake_api.put_objects([pod(n) for n in ("a", "b", "c", "d")])
    first = page(kube_api, limit="2")
    snapshot_rv = first["metadata"]["resourceVersion"]
    assert names_of(first) == ["ai/a", "ai/b"]
    fake_api.put_object(pod("e"))  # created after the snapshot: not listed
    fake_api.delete_object("pods", "d", "ai")  # deleted after the snapshot: still listed
    fake_api.patch_object("pods", "c", {"metadata": {"labels": {"late": "yes"}}}, "ai")  # listed as it was
    rest = page(kube_api, limit="5", **{"continue": first["metadata"]["continue"]})
    assert names_of(rest) == ["ai/c", "ai/d"]
    assert rest["items"][0]["metadata"]["labels"] == {"app": "c"}
    assert rest["metadata"]["resourceVersion"] == snapshot_rv
    assert names_of(page(kube_api)) == ["ai/a", "ai/b", "ai/c", "ai/e"]  # a fresh list sees today's state


def test_paged_list_with_a_selector_pages_the_matches_only(fake_api: FakeApiServer, kube_api) -> None:
    fake_api.put_objects([pod(n, node="n1" if n in "ace" else "n2") for n in "abcdef"])
    first = page(kube_api, limit="2", fieldSelector="spec.nodeName=n1")
    assert names_of(first) == ["ai/a", "ai/c"]
    assert "remainingItemCount" not in first["metadata"]  # the real server does not count through selectors
    rest = page(kube_api, limit="2", fieldSelector="spec.nodeName=n1", **{"continue": first["metadata"]["continue"]})
    assert names_of(rest) == ["ai/e"] and "continue" not in rest["metadata"]


def test_stale_or_bad_continue_tokens(fake_api: FakeApiServer, kube_api) -> None:
    fake_api.put_objects([pod(n) for n in "abc"])
    token = page(kube_api, limit="1")["metadata"]["continue"]
    with pytest.raises(kube.KubeError) as ei:
        page(kube_api, limit="1", **{"continue": "not-a-token"})
    assert ei.value.status == 400
    with pytest.raises(kube.KubeError) as ei:
        page(kube_api, limit="-1")
    assert ei.value.status == 400
    fake_api.put_object(pod("d"))
    fake_api.compact()  # the history back to the token's snapshot is gone
    with pytest.raises(kube.KubeError) as ei:
        page(kube_api, limit="1", **{"continue": token})
    assert ei.value.gone and ei.value.reason == "Expired"


def test_unknown_paths_and_health(fake_api: FakeApiServer, kube_api) -> None:
    assert kube.request(kube_api, "GET", "/version")["gitVersion"].startswith("v1.")
    with pytest.raises(kube.KubeError) as ei:
        kube.request(kube_api, "GET", "/nonsense")
    assert ei.value.not_found


def test_watch_timeout_rewatches_without_relist(fake_api: FakeApiServer, kube_api) -> None:
    seen: list[str] = []
    inf = kube.Informer(kube_api, "nodes", lambda t, o: seen.append(t), watch_timeout_s=1).start()
    try:
        assert inf.wait_synced(5)
        deadline = time.monotonic() + 5
        while len([r for r in fake_api.requests("GET") if r.query.get("watch")]) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        fake_api.put_object({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "late"}})
        while "ADDED" not in seen:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert inf.relists == 1
        watches = [r for r in fake_api.requests("GET") if r.query.get("watch")]
        assert watches[1].query["resourceVersion"] == watches[0].query["resourceVersion"]  # bookmark, no change
    finally:
        inf.stop()


def test_many_writers_and_watchers_lose_nothing(fake_api: FakeApiServer) -> None:
    """A demo-like load: concurrent writers, several informers; every informer converges."""
    nodes = [f"n{i}" for i in range(10)]
    for n in nodes:
        fake_api.put_object({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}})
    seen: list[dict[str, str]] = [{} for _ in range(4)]

    def handler(idx: int):
        def on_event(etype: str, obj: dict) -> None:
            if etype in ("ADDED", "MODIFIED"):
                seen[idx][obj["metadata"]["name"]] = (obj["metadata"].get("labels") or {}).get("n", "")
        return on_event

    infs = [kube.Informer(kube.api_client(server=fake_api.url), "nodes", handler(i)).start() for i in range(4)]
    try:
        assert all(i.wait_synced(5) for i in infs)
        deadline = time.monotonic() + 5
        while fake_api.watch_count("nodes") < 4:
            assert time.monotonic() < deadline
            time.sleep(0.01)

        def writer(k: int) -> None:
            api = kube.api_client(server=fake_api.url)
            for step in range(50):
                kube.patch_node_metadata(api, nodes[(k + step) % len(nodes)], {"n": f"{k}-{step}"}, {})

        threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        final = {n: fake_api.get_object("nodes", n)["metadata"]["labels"]["n"] for n in nodes}
        while any(s != final for s in seen):
            assert time.monotonic() < deadline + 5, "informers did not converge"
            time.sleep(0.02)
        assert all(i.relists == 1 for i in infs)
    finally:
        for i in infs:
            i.stop()


def test_model_resource_roundtrip(fake_api: FakeApiServer, kube_api) -> None:
    m = {"apiVersion": keys.MODEL_API_VERSION, "kind": keys.MODEL_KIND,
         "metadata": {"name": "m", "namespace": "ai"}, "spec": {"backend": "vllm"}}
    kube.apply_object(kube_api, m)
    assert kube.list_objects(kube_api, "models")[0]["spec"] == {"backend": "vllm"}
    fake_api.patch_object("models", "m", {"status": {"phase": "Idle"}}, "ai")  # helper writes status directly
    assert kube.get_object(kube_api, "models", "m", "ai")["status"] == {"phase": "Idle"}


def test_bind_pod(fake_api: FakeApiServer, kube_api) -> None:
    kube.create_object(kube_api, pod("p1"), retry=NO)
    kube.bind_pod(kube_api, "ai", "p1", "n1")
    stored = fake_api.get_object("pods", "p1", "ai")
    assert stored["spec"]["nodeName"] == "n1"
    assert stored["status"]["conditions"][0]["type"] == "PodScheduled"
    [req] = fake_api.requests("POST", r".*/binding")
    assert req.path == "/api/v1/namespaces/ai/pods/p1/binding"
    assert req.body["target"] == {"apiVersion": "v1", "kind": "Node", "name": "n1"}
    with pytest.raises(kube.KubeError) as ei:
        kube.bind_pod(kube_api, "ai", "p1", "n2")
    assert ei.value.conflict


def test_watch_reports_objects_leaving_and_entering_the_selection(fake_api: FakeApiServer, kube_api) -> None:
    fake_api.put_objects([pod("a", node="n1", phase="Running"), pod("b")])
    seen: list[tuple[str, str]] = []
    sel = "spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed"  # what the extender watches

    def on_event(etype: str, obj: dict) -> None:
        if etype != "SYNC":
            seen.append((etype, obj["metadata"]["name"]))

    inf = kube.Informer(kube_api, "pods", on_event, field_selector=sel).start()
    try:
        assert inf.wait_synced(5)
        deadline = time.monotonic() + 5
        while fake_api.watch_count("pods") < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        kube.bind_pod(kube_api, "ai", "b", "n2")  # enters the selection
        fake_api.patch_object("pods", "a", {"status": {"phase": "Succeeded"}}, "ai")  # leaves it
        fake_api.patch_object("pods", "a", {"metadata": {"labels": {"x": "1"}}}, "ai")  # outside: nothing
        fake_api.patch_object("pods", "b", {"metadata": {"labels": {"x": "1"}}}, "ai")  # inside: MODIFIED
        while len(seen) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert seen == [("ADDED", "b"), ("DELETED", "a"), ("MODIFIED", "b")]
        assert [i["metadata"]["name"] for i in inf.items()] == ["b"]
    finally:
        inf.stop()
