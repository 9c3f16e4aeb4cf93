"""Pure helpers of flexinfer.kube and flexinfer.sim.fakeapi: exhaustive tables, no I/O."""

from __future__ import annotations

import pytest

from flexinfer import keys, kube
from flexinfer.sim.fakeapi import (
    ParsedPath,
    json_merge_patch,
    json_patch,
    match_field_selector,
    match_label_selector,
    parse_path,
)

# --- resource table and paths ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "plural"),
    [
        ("nodes", "nodes"), ("Node", "nodes"), ("node", "nodes"), ("pods", "pods"), ("Pod", "pods"),
        ("deployments", "deployments"), ("Deployment", "deployments"), ("Service", "services"),
        ("PersistentVolumeClaim", "persistentvolumeclaims"), ("pvc", "persistentvolumeclaims"),
        ("models", "models"), ("Model", "models"), ("model", "models"), ("Lease", "leases"),
    ],
)
def test_resource_for_aliases(kind: str, plural: str) -> None:
    assert kube.resource_for(kind).plural == plural


def test_resource_for_unknown_kind() -> None:
    with pytest.raises(kube.KubeError, match="unknown resource kind 'gadgets'"):
        kube.resource_for("gadgets")


@pytest.mark.parametrize(
    ("kind", "ns", "name", "sub", "path"),
    [
        ("nodes", None, None, None, "/api/v1/nodes"),
        ("nodes", "ignored", "n1", None, "/api/v1/nodes/n1"),
        ("pods", None, None, None, "/api/v1/pods"),
        ("pods", "ai", None, None, "/api/v1/namespaces/ai/pods"),
        ("pods", "ai", "p", None, "/api/v1/namespaces/ai/pods/p"),
        ("deployments", "ai", "d", None, "/apis/apps/v1/namespaces/ai/deployments/d"),
        ("models", "ai", "m", "status",
         f"/apis/{keys.MODEL_GROUP}/{keys.MODEL_VERSION}/namespaces/ai/models/m/status"),
        ("models", None, None, None, f"/apis/{keys.MODEL_GROUP}/{keys.MODEL_VERSION}/models"),
        ("nodes", None, "we/ird", None, "/api/v1/nodes/we%2Fird"),
    ],
)
def test_resource_path(kind: str, ns: str | None, name: str | None, sub: str | None, path: str) -> None:
    assert kube.resource_path(kube.resource_for(kind), ns, name, sub) == path


@pytest.mark.parametrize("res", list(kube.RESOURCES.values()), ids=lambda r: r.plural)
def test_resource_path_roundtrips_through_fake_parser(res: kube.Resource) -> None:
    path = kube.resource_path(res, "ns1", "obj", "status")
    assert parse_path(path) == ParsedPath(
        (res.group, res.version, res.plural), "ns1" if res.namespaced else "", "obj", "status"
    )


@pytest.mark.parametrize(
    ("path", "parsed"),
    [
        ("/api/v1/namespaces", ParsedPath(("", "v1", "namespaces"), "", None, None)),
        ("/api/v1/namespaces/ai", ParsedPath(("", "v1", "namespaces"), "", "ai", None)),
        ("/api/v1/namespaces/ai/pods", ParsedPath(("", "v1", "pods"), "ai", None, None)),
        ("/apis/apps/v1/deployments", ParsedPath(("apps", "v1", "deployments"), "", None, None)),
        ("/version", None),
        ("/apis/apps", None),
        ("/api/v1/namespaces/ai/pods/p/status/extra", None),
    ],
)
def test_parse_path(path: str, parsed: ParsedPath | None) -> None:
    assert parse_path(path) == parsed


# --- errors and retry classification ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retry"),
    [(0, True), (409, True), (429, True), (500, True), (503, True), (504, True),
     (400, False), (401, False), (403, False), (404, False), (410, False), (422, False), (None, False)],
)
def test_is_retryable(status: int | None, retry: bool) -> None:
    assert kube.is_retryable(kube.KubeError("x", status=status)) is retry


def test_non_kube_errors_are_not_retryable() -> None:
    assert not kube.is_retryable(ValueError("x"))


def test_kube_error_shortcuts() -> None:
    assert kube.KubeError("x", 404).not_found
    assert kube.KubeError("x", 409).conflict
    assert kube.KubeError("x", 410).gone
    assert not kube.KubeError("x", 500).not_found


# --- patches -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "annotations", "patch"),
    [
        ({"a": "1"}, {}, {"metadata": {"labels": {"a": "1"}}}),
        ({}, {"b": None}, {"metadata": {"annotations": {"b": None}}}),
        ({"a": None}, {"b": "2"}, {"metadata": {"labels": {"a": None}, "annotations": {"b": "2"}}}),
        ({}, {}, {"metadata": {}}),
    ],
)
def test_node_metadata_patch(labels: dict, annotations: dict, patch: dict) -> None:
    assert kube.node_metadata_patch(labels, annotations) == patch


# RFC 7386 appendix A test vectors.
@pytest.mark.parametrize(
    ("target", "patch", "result"),
    [
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        (["a", "b"], ["c", "d"], ["c", "d"]),
        ({"a": "b"}, ["c"], ["c"]),
        ({"a": "foo"}, None, None),
        ({"a": "foo"}, "bar", "bar"),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ],
)
def test_json_merge_patch_rfc7386(target: object, patch: object, result: object) -> None:
    assert json_merge_patch(target, patch) == result


def test_json_merge_patch_does_not_mutate_inputs() -> None:
    target = {"a": {"b": 1}}
    patch = {"a": {"c": 2}}
    json_merge_patch(target, patch)
    assert target == {"a": {"b": 1}} and patch == {"a": {"c": 2}}


@pytest.mark.parametrize(
    ("ops", "result"),
    [
        ([{"op": "add", "path": "/b", "value": 2}], {"a": [1, 2], "b": 2}),
        ([{"op": "replace", "path": "/a/0", "value": 9}], {"a": [9, 2]}),
        ([{"op": "add", "path": "/a/-", "value": 3}], {"a": [1, 2, 3]}),
        ([{"op": "add", "path": "/a/0", "value": 0}], {"a": [0, 1, 2]}),
        ([{"op": "remove", "path": "/a/1"}], {"a": [1]}),
        ([{"op": "remove", "path": "/a"}], {}),
        ([{"op": "test", "path": "/a", "value": [1, 2]}, {"op": "add", "path": "/x~1y", "value": 1}],
         {"a": [1, 2], "x/y": 1}),
    ],
)
def test_json_patch(ops: list, result: dict) -> None:
    assert json_patch({"a": [1, 2]}, ops) == result


@pytest.mark.parametrize(
    "ops",
    [
        [{"op": "test", "path": "/a", "value": 1}],
        [{"op": "remove", "path": "/nope"}],
        [{"op": "replace", "path": "/nope", "value": 1}],
        [{"op": "move", "path": "/a", "from": "/b"}],
        [{"op": "add", "path": "", "value": {}}],
        [{"op": "add", "path": "a", "value": 1}],
    ],
)
def test_json_patch_errors(ops: list) -> None:
    with pytest.raises(ValueError):
        json_patch({"a": [1, 2]}, ops)


# --- selectors ---------------------------------------------------------------------------------------

LABELS = {"app": "web", "tier": "gpu", "flexinfer.ai/gpu.vendor": "nvidia"}


@pytest.mark.parametrize(
    ("selector", "match"),
    [
        (None, True), ("", True),
        ("app=web", True), ("app==web", True), ("app=db", False), ("app!=db", True), ("app!=web", False),
        ("missing!=x", True), ("app", True), ("missing", False), ("!missing", True), ("!app", False),
        ("app=web,tier=gpu", True), ("app=web,tier=cpu", False),
        ("tier in (gpu, cpu)", True), ("tier in (cpu)", False), ("missing in (x)", False),
        ("tier notin (cpu)", True), ("tier notin (gpu,cpu)", False), ("missing notin (x)", True),
        ("flexinfer.ai/gpu.vendor=nvidia,tier in (a,gpu)", True),
        ("flexinfer.ai/gpu.vendor", True),
    ],
)
def test_label_selector(selector: str | None, match: bool) -> None:
    assert match_label_selector(selector, LABELS) is match


POD = {"metadata": {"name": "p", "namespace": "ai"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}}


@pytest.mark.parametrize(
    ("selector", "match"),
    [
        (None, True), ("spec.nodeName=n1", True), ("spec.nodeName=n2", False), ("spec.nodeName!=n2", True),
        ("spec.nodeName==n1,status.phase=Running", True), ("status.phase!=Running", False),
        ("metadata.name=p", True), ("spec.schedulerName=", True), ("spec.nodeName=", False),
    ],
)
def test_field_selector(selector: str | None, match: bool) -> None:
    assert match_field_selector(selector, POD) is match


# --- apply helpers -----------------------------------------------------------------------------------


def test_prepare_replace_keeps_server_owned_fields() -> None:
    current = {
        "kind": "Service",
        "metadata": {"name": "s", "resourceVersion": "7", "finalizers": ["x"],
                     "annotations": {"theirs": "1", "ours": "old"}},
        "spec": {"clusterIP": "10.0.0.1", "clusterIPs": ["10.0.0.1"], "ports": [{"port": 80}]},
        "status": {"loadBalancer": {}},
    }
    desired = {"kind": "Service", "metadata": {"name": "s", "annotations": {"ours": "new"}},
               "spec": {"ports": [{"port": 81}]}, "status": {"ignored": True}}
    out = kube.prepare_replace(desired, current)
    assert out["metadata"] == {"name": "s", "resourceVersion": "7", "finalizers": ["x"],
                               "annotations": {"theirs": "1", "ours": "new"}}
    assert out["spec"] == {"ports": [{"port": 81}], "clusterIP": "10.0.0.1", "clusterIPs": ["10.0.0.1"]}
    assert out["status"] == {"loadBalancer": {}}
    assert desired["spec"] == {"ports": [{"port": 81}]}  # input untouched


@pytest.mark.parametrize(
    ("desired_spec", "replicas"),
    [({"template": {}}, 5), ({"replicas": 2, "template": {}}, 2), ({"replicas": 0}, 0)],
)
def test_prepare_replace_deployment_replicas(desired_spec: dict, replicas: int) -> None:
    current = {"kind": "Deployment", "metadata": {"resourceVersion": "3"}, "spec": {"replicas": 5}}
    out = kube.prepare_replace({"kind": "Deployment", "metadata": {"name": "d"}, "spec": desired_spec}, current)
    assert out["spec"]["replicas"] == replicas


def test_prepare_replace_pvc_only_grows_storage() -> None:
    current = {"kind": "PersistentVolumeClaim", "metadata": {"resourceVersion": "1"},
               "spec": {"accessModes": ["ReadWriteOnce"], "volumeName": "pv-1",
                        "resources": {"requests": {"storage": "10Gi"}}}}
    desired = {"kind": "PersistentVolumeClaim", "metadata": {"name": "c"},
               "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "20Gi"}}}}
    out = kube.prepare_replace(desired, current)
    assert out["spec"] == {"accessModes": ["ReadWriteOnce"], "volumeName": "pv-1",
                           "resources": {"requests": {"storage": "20Gi"}}}


@pytest.mark.parametrize(
    ("desired", "current", "update"),
    [
        ({"spec": {"a": 1}}, {"spec": {"a": 1, "defaulted": True}}, False),
        ({"spec": {"a": 1}}, {"spec": {"a": 2}}, True),
        ({"spec": {"l": [{"n": "c", "i": "x"}]}}, {"spec": {"l": [{"n": "c", "i": "x", "pull": "IfNotPresent"}]}},
         False),
        ({"spec": {"l": [{"n": "c", "i": "y"}]}}, {"spec": {"l": [{"n": "c", "i": "x"}]}}, True),
        ({"spec": {"l": [1, 2]}}, {"spec": {"l": [1]}}, True),
        ({"metadata": {"labels": {}}}, {"metadata": {}}, False),
        ({"metadata": {"labels": {"a": "1"}}}, {"metadata": {}}, True),
    ],
)
def test_needs_update(desired: dict, current: dict, update: bool) -> None:
    assert kube.needs_update(desired, current) is update


def test_owner_reference() -> None:
    owner = {"apiVersion": keys.MODEL_API_VERSION, "kind": keys.MODEL_KIND,
             "metadata": {"name": "m", "uid": "u-1"}}
    assert kube.owner_reference(owner) == {
        "apiVersion": keys.MODEL_API_VERSION, "kind": keys.MODEL_KIND, "name": "m", "uid": "u-1",
        "controller": True, "blockOwnerDeletion": True,
    }


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"kind": "Deployment"}, "needs kind and metadata.name"),
        ({"kind": "Deployment", "apiVersion": "apps/v1", "metadata": {"name": "d"}}, "namespace is required"),
        ({"kind": "Deployment", "apiVersion": "v1", "metadata": {"name": "d", "namespace": "x"}}, "apiVersion"),
        ({"kind": "Gadget", "metadata": {"name": "g"}}, "unknown resource kind"),
    ],
)
def test_identify_rejects_bad_objects(obj: dict, message: str) -> None:
    with pytest.raises(kube.KubeError, match=message):
        kube.identify(obj)


def test_api_client_with_bad_kubeconfig_is_a_kube_error(tmp_path) -> None:
    bad = tmp_path / "kubeconfig"
    bad.write_text("not: [a kubeconfig")
    with pytest.raises(kube.KubeError, match="cannot load kubeconfig"):
        kube.api_client(kubeconfig=str(bad))


def test_api_client_explicit_server() -> None:
    api = kube.api_client(server="http://127.0.0.1:1234/")
    try:
        assert api.configuration.host == "http://127.0.0.1:1234"
    finally:
        api.close()
