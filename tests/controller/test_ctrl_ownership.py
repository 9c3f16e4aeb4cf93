"""Never adopt, modify or delete an object we do not own (issue 15 point 2), against the fake API server."""

from __future__ import annotations

import copy

import pytest
from flexinfer.controller.reconcile import Controller

from flexinfer import keys

pytestmark = pytest.mark.integration
NS = "ml"


def web_model() -> dict:
    return {"apiVersion": keys.MODEL_API_VERSION, "kind": keys.MODEL_KIND,
            "metadata": {"name": "web", "namespace": NS},
            "spec": {"backend": "llamacpp", "source": "HF://org/web-7b-GGUF", "gpu": {"vendor": "amd"},
                     "serverless": {"minReplicas": 1}, "cache": {"strategy": "SharedPVC"}}}


USER_DEPLOYMENT = {
    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": NS},
    "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
             "template": {"metadata": {"labels": {"app": "web"}},
                          "spec": {"containers": [{"name": "nginx", "image": "nginx:1.27"}]}}},
}
USER_SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": NS},
                "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}


def strip(obj: dict) -> dict:
    """What the user owns: everything but the server-maintained bookkeeping."""
    o = copy.deepcopy(obj)
    for k in ("resourceVersion", "managedFields"):
        o["metadata"].pop(k, None)
    o.pop("status", None)
    return o


def events(fake, reason):
    return [e for e in fake.list_objects("events", NS) if e["reason"] == reason]


def test_unowned_deployment_and_service_are_left_alone(fake_api, kube_api):
    dep = fake_api.put_object(copy.deepcopy(USER_DEPLOYMENT))
    svc = fake_api.put_object(copy.deepcopy(USER_SERVICE))
    fake_api.put_object(web_model())
    ctl = Controller(kube_api, namespace=NS)
    for _ in range(2):
        r = ctl.reconcile_once()
        assert not r.errors
    # untouched: image, selector, replicas, no ownerReferences; nothing else created for the Model
    assert strip(fake_api.get_object("deployments", "web", NS)) == strip(dep)
    assert strip(fake_api.get_object("services", "web", NS)) == strip(svc)
    assert fake_api.get_object("persistentvolumeclaims", "web-cache", NS) is None
    writes = [r for r in fake_api.requests() if r.method in ("POST", "PUT", "PATCH", "DELETE")]
    assert all("/deployments" not in w.path and "/services" not in w.path for w in writes), writes
    st = fake_api.get_object("models", "web", NS)["status"]
    assert st["phase"] == "Failed"
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "OwnershipConflict" and "Deployment ml/web" in ready["message"]
    assert len(events(fake_api, "OwnershipConflict")) == 1  # once, not every pass
    assert events(fake_api, "OwnershipConflict")[0]["type"] == "Warning"
    # deleting the Model leaves the user's objects in place (they never got our ownerReference)
    fake_api.delete_object("models", "web", NS)
    assert fake_api.get_object("deployments", "web", NS) is not None
    assert fake_api.get_object("services", "web", NS) is not None


def test_service_conflict_alone_is_named_and_recovers_when_removed(fake_api, kube_api):
    fake_api.put_object(copy.deepcopy(USER_SERVICE))
    fake_api.put_object(web_model())
    ctl = Controller(kube_api, namespace=NS)
    ctl.reconcile_once()
    st = fake_api.get_object("models", "web", NS)["status"]
    assert st["phase"] == "Failed" and "Service ml/web" in st["message"]
    assert fake_api.get_object("deployments", "web", NS) is None  # nothing of the Model is written
    fake_api.delete_object("services", "web", NS)  # the user moves their Service away
    ctl.reconcile_once()
    assert fake_api.get_object("deployments", "web", NS)["spec"]["replicas"] == 1
    svc = fake_api.get_object("services", "web", NS)
    assert svc["metadata"]["ownerReferences"][0]["uid"] == fake_api.get_object("models", "web", NS)["metadata"]["uid"]
    assert fake_api.get_object("models", "web", NS)["status"]["phase"] == "Loading"


def test_objects_of_a_previous_model_with_the_same_name_are_not_adopted(fake_api, kube_api):
    """A Deployment still owned by a deleted Model of the same name (garbage collection not done) is not ours."""
    fake_api.put_object(web_model())
    ctl = Controller(kube_api, namespace=NS)
    ctl.reconcile_once()
    dep = fake_api.get_object("deployments", "web", NS)
    dep["metadata"]["ownerReferences"][0]["uid"] = "uid-of-the-old-model"
    fake_api.put_object(dep)
    ctl.reconcile_once()
    st = fake_api.get_object("models", "web", NS)["status"]
    assert st["phase"] == "Failed" and "owned by Model/web" in st["message"]
    assert fake_api.get_object("deployments", "web", NS)["metadata"]["ownerReferences"][0]["uid"] == \
        "uid-of-the-old-model"


def test_own_objects_created_last_pass_are_recognised_before_the_cache_has_them(fake_api, kube_api):
    """An informer that has not seen our new Deployment yet must not turn it into a conflict."""
    from flexinfer.controller.reconcile import Snapshot

    fake_api.put_object(web_model())
    ctl = Controller(kube_api, namespace=NS)
    ctl.reconcile_once()
    stale = Snapshot(models=fake_api.list_objects("models", NS))  # no Deployments/Services/PVCs yet
    r = ctl.reconcile(stale, None)
    assert not r.errors and fake_api.get_object("models", "web", NS)["status"]["phase"] == "Loading"
