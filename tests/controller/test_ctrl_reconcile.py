"""Reconcile at the HTTP level against the local fake API server: the homelab's three-model quality lane
(docs/homelab.md).

qwen3-14b (P:100, minReplicas 1) stays; an activation of qwen3-32b (P:80) preempts it; deepseek-r1 (P:70)
cannot take the GPU from a busy 32B; after the 32B idles out the 14B reclaims the GPU.
"""

from __future__ import annotations

import pytest
from flexinfer.controller.reconcile import Controller, activate, rfc3339

from flexinfer import keys

from .conftest import publish_nodes

pytestmark = pytest.mark.integration

NS = "ai"
T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


def model(name, prio, min_replicas=0, idle="60s"):
    return {"apiVersion": keys.MODEL_API_VERSION, "kind": keys.MODEL_KIND,
            "metadata": {"name": name, "namespace": NS},
            "spec": {"backend": "llamacpp", "source": f"HF://Qwen/{name}-GGUF",
                     "gpu": {"vendor": "amd", "shared": "7900xtx-quality", "priority": prio},
                     "serverless": {"minReplicas": min_replicas, "idleTimeout": idle, "coldStartTimeout": "2m"},
                     "serviceLabels": ["quality-chat"]}}


def dep(fake, name):
    return fake.get_object("deployments", name, NS)


def status(fake, name):
    return fake.get_object("models", name, NS).get("status") or {}


def kubelet(fake, name, ready):
    """Play kubelet: reflect the Deployment's replicas in its status."""
    n = dep(fake, name)["spec"]["replicas"]
    fake.patch_object("deployments", name, {"status": {"replicas": n, "readyReplicas": n if ready else 0}}, NS)


@pytest.fixture
def lane(fake_api, kube_api):
    publish_nodes(fake_api, T0)  # the homelab's GPUs, so the controller's fit checks have somewhere to place
    for obj in (model("qwen3-14b", 100, min_replicas=1), model("qwen3-32b", 80), model("deepseek-r1", 70)):
        fake_api.put_object(obj)
    clock = Clock()
    ctl = Controller(kube_api, namespace=NS, cooldown_seconds=30, clock=clock)
    return fake_api, kube_api, ctl, clock


def test_three_model_group_preempt_and_reclaim(lane):
    fake, api, ctl, clock = lane

    # 1. Nothing runs yet: the always-on 14B is started, the others get Deployments at 0 replicas.
    r = ctl.reconcile_once()
    assert not r.errors
    assert dep(fake, "qwen3-14b")["spec"]["replicas"] == 1
    assert dep(fake, "qwen3-32b")["spec"]["replicas"] == 0
    assert dep(fake, "deepseek-r1")["spec"]["replicas"] == 0
    d14 = dep(fake, "qwen3-14b")
    assert d14["spec"]["strategy"] == {"type": "Recreate"}
    assert d14["metadata"]["ownerReferences"][0]["uid"] == fake.get_object("models", "qwen3-14b", NS)["metadata"]["uid"]
    assert fake.get_object("services", "qwen3-14b", NS)["spec"]["ports"][0]["port"] == 8080
    s14 = status(fake, "qwen3-14b")
    assert s14["phase"] == "Loading"
    assert s14["endpoint"] == "http://qwen3-14b.ai.svc:8080"
    assert s14["observedGeneration"] == fake.get_object("models", "qwen3-14b", NS)["metadata"]["generation"]
    assert status(fake, "qwen3-32b")["phase"] == "Idle"

    # 2. 14B becomes ready and stays; a second pass without changes writes nothing.
    kubelet(fake, "qwen3-14b", ready=True)
    clock.t += 10
    ctl.reconcile_once()
    assert status(fake, "qwen3-14b")["phase"] == "Ready"
    ready_cond = next(c for c in status(fake, "qwen3-14b")["conditions"] if c["type"] == "Ready")
    assert ready_cond["status"] == "True" and ready_cond["lastTransitionTime"] == rfc3339(T0 + 10)
    clock.t += 5
    assert ctl.reconcile_once().writes == []

    # 3. Someone asks for the 32B (after the 14B idled past its timeout): it preempts the 14B.
    clock.t = T0 + 100
    activate(api, NS, "qwen3-32b", now=clock.t)
    r = ctl.reconcile_once()
    assert dep(fake, "qwen3-14b")["spec"]["replicas"] == 0
    assert dep(fake, "qwen3-32b")["spec"]["replicas"] == 1
    assert status(fake, "qwen3-14b")["phase"] == "Preempted"
    assert "preempted by qwen3-32b" in status(fake, "qwen3-14b")["message"]
    assert status(fake, "qwen3-32b")["phase"] == "Loading"
    assert any("scale Deployment ai/qwen3-14b 1->0" in w for w in r.writes)
    events = {(e["involvedObject"]["name"], e["reason"]) for e in fake.list_objects("events", NS)}
    assert ("qwen3-14b", "Preempted") in events and ("qwen3-32b", "ScaledUp") in events
    kubelet(fake, "qwen3-14b", ready=False)

    # 4. A loading 32B is never scaled down: R1 (P:70) activation waits; so does anything else.
    clock.t = T0 + 105
    activate(api, NS, "deepseek-r1", now=clock.t)
    ctl.reconcile_once()
    assert dep(fake, "qwen3-32b")["spec"]["replicas"] == 1
    assert dep(fake, "deepseek-r1")["spec"]["replicas"] == 0
    assert status(fake, "deepseek-r1")["phase"] == "Pending"
    assert "waiting for the GPU held by qwen3-32b" in status(fake, "deepseek-r1")["message"]

    # 5. 32B ready: swap duration observed (preempt-to-ready = 15 s), preemption counted.
    kubelet(fake, "qwen3-32b", ready=True)
    clock.t = T0 + 115
    ctl.reconcile_once()
    assert status(fake, "qwen3-32b")["phase"] == "Ready"
    reg = ctl.metrics.registry
    assert reg.get_sample_value("flexinfer_model_swap_duration_seconds_sum",
                                {"model_namespace": NS, "group": "7900xtx-quality"}) == 15.0
    assert reg.get_sample_value("flexinfer_group_preemptions_total",
                                {"model_namespace": NS, "group": "7900xtx-quality"}) == 1.0
    assert reg.get_sample_value("flexinfer_model_phase",
                                {"model": "qwen3-32b", "model_namespace": NS, "phase": "Ready"}) == 1.0
    assert status(fake, "qwen3-14b")["phase"] == "Preempted"  # still wants the GPU (always-on)

    # 6. After the 32B idles out (and R1's request expired), the 14B reclaims the GPU.
    clock.t = T0 + 115 + 61
    ctl.reconcile_once()
    assert dep(fake, "qwen3-32b")["spec"]["replicas"] == 0
    assert dep(fake, "qwen3-14b")["spec"]["replicas"] == 1
    assert dep(fake, "deepseek-r1")["spec"]["replicas"] == 0
    assert status(fake, "qwen3-32b")["phase"] == "Idle"
    assert status(fake, "qwen3-14b")["phase"] == "Loading"
    assert status(fake, "deepseek-r1")["phase"] == "Idle"
    kubelet(fake, "qwen3-32b", ready=False)
    kubelet(fake, "qwen3-14b", ready=True)
    clock.t += 20
    ctl.reconcile_once()
    assert status(fake, "qwen3-14b")["phase"] == "Ready"
    assert reg.get_sample_value("flexinfer_group_preemptions_total",
                                {"model_namespace": NS, "group": "7900xtx-quality"}) == 2.0


def test_last_active_time_is_traffic_and_never_overwritten(lane):
    fake, api, ctl, clock = lane
    ctl.reconcile_once()
    kubelet(fake, "qwen3-14b", ready=True)
    clock.t += 200
    # the proxy reports traffic on the 14B: the R1 request cannot preempt it
    fake.patch_object("models", "qwen3-14b", {"status": {"lastActiveTime": rfc3339(clock.t - 5)}}, NS)
    activate(api, NS, "deepseek-r1", now=clock.t)
    ctl.reconcile_once()
    assert dep(fake, "qwen3-14b")["spec"]["replicas"] == 1
    assert dep(fake, "deepseek-r1")["spec"]["replicas"] == 0
    assert status(fake, "qwen3-14b")["lastActiveTime"] == rfc3339(clock.t - 5)


def test_serverless_model_scales_to_zero_and_invalid_model_reported(fake_api, kube_api):
    clock = Clock()
    fake_api.put_object({"apiVersion": keys.MODEL_API_VERSION, "kind": keys.MODEL_KIND,
                         "metadata": {"name": "embed", "namespace": NS},
                         "spec": {"backend": "ollama", "source": "ollama://nomic-embed-text",
                                  "serverless": {"idleTimeout": "60s"}}})
    fake_api.put_object({"apiVersion": keys.MODEL_API_VERSION, "kind": keys.MODEL_KIND,
                         "metadata": {"name": "broken", "namespace": NS},
                         "spec": {"backend": "nonsense", "source": "HF://a/b"}})
    ctl = Controller(kube_api, namespace=NS, clock=clock)
    ctl.reconcile_once()
    assert fake_api.get_object("deployments", "embed", NS)["spec"]["replicas"] == 0
    bad = fake_api.get_object("models", "broken", NS)["status"]
    assert bad["phase"] == "Failed" and "spec.backend" in bad["message"]
    assert fake_api.get_object("deployments", "broken", NS) is None
    activate(kube_api, NS, "embed", now=clock.t)
    ctl.reconcile_once()
    assert fake_api.get_object("deployments", "embed", NS)["spec"]["replicas"] == 1
    assert "strategy" not in fake_api.get_object("deployments", "embed", NS)["spec"]
    kubelet(fake_api, "embed", ready=True)
    clock.t += 30
    ctl.reconcile_once()
    assert fake_api.get_object("models", "embed", NS)["status"]["phase"] == "Ready"
    clock.t += 61
    ctl.reconcile_once()
    assert fake_api.get_object("deployments", "embed", NS)["spec"]["replicas"] == 0
    assert fake_api.get_object("models", "embed", NS)["status"]["phase"] == "Idle"


def test_spec_change_updates_deployment(lane):
    fake, _api, ctl, _clock = lane
    ctl.reconcile_once()
    m = fake.get_object("models", "qwen3-14b", NS)
    m["spec"]["image"] = "me/llama:2"
    fake.put_object(m)
    r = ctl.reconcile_once()
    assert any(w.startswith("update Deployment ai/qwen3-14b") for w in r.writes)
    assert dep(fake, "qwen3-14b")["spec"]["template"]["spec"]["containers"][0]["image"] == "me/llama:2"
    assert dep(fake, "qwen3-14b")["spec"]["replicas"] == 1


def test_api_errors_do_not_crash_the_pass(lane):
    fake, _api, ctl, _clock = lane
    fake.fail("POST", f"/apis/apps/v1/namespaces/{NS}/deployments", status=403, times=100)
    r = ctl.reconcile_once()
    assert r.errors
    assert "403" in r.errors[0] or "forbidden" in r.errors[0].lower()
    fake.clear_failures()
    assert not ctl.reconcile_once().errors
    assert dep(fake, "qwen3-14b")["spec"]["replicas"] == 1


def test_activate_unknown_model_is_a_clear_error(kube_api):
    from flexinfer.kube import KubeError
    with pytest.raises(KubeError, match="Model ai/nope not found"):
        activate(kube_api, NS, "nope")


def test_crashing_pod_fails_and_frees_the_group(lane):
    fake, _api, ctl, clock = lane
    ctl.reconcile_once()
    fake.put_object({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": "qwen3-14b-abc", "namespace": NS, "labels": {keys.LABEL_MODEL: "qwen3-14b"}},
                     "status": {"phase": "Running",
                                "conditions": [{"type": "PodScheduled", "status": "True"}],
                                "containerStatuses": [{"state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}})
    clock.t += 5
    ctl.reconcile_once()
    s14 = status(fake, "qwen3-14b")
    assert s14["phase"] == "Failed" and "CrashLoopBackOff" in s14["message"]
    # a Failed holder does not block a request for another member
    activate(_api, NS, "deepseek-r1", now=clock.t)
    ctl.reconcile_once()
    assert dep(fake, "deepseek-r1")["spec"]["replicas"] == 1
    assert dep(fake, "qwen3-14b")["spec"]["replicas"] == 0
    fake.delete_object("pods", "qwen3-14b-abc", NS)  # the ReplicaSet removed the crashing pod
    kubelet(fake, "deepseek-r1", ready=True)
    for _ in range(2):  # no flapping: the failed always-on 14B does not reclaim the GPU
        clock.t += 5
        ctl.reconcile_once()
        assert dep(fake, "qwen3-14b")["spec"]["replicas"] == 0
        assert status(fake, "qwen3-14b")["phase"] == "Failed"
        assert "CrashLoopBackOff" in status(fake, "qwen3-14b")["message"]
    # an explicit activation after the failure retries it (P:100 preempts R1)
    activate(_api, NS, "qwen3-14b", now=clock.t)
    ctl.reconcile_once()
    assert dep(fake, "qwen3-14b")["spec"]["replicas"] == 1
    assert dep(fake, "deepseek-r1")["spec"]["replicas"] == 0
    assert status(fake, "qwen3-14b")["phase"] == "Loading"


def test_unparsable_activation_counts_from_first_sight_and_deleted_models_leave_metrics(lane):
    fake, _api, ctl, clock = lane
    ctl.reconcile_once()
    kubelet(fake, "qwen3-14b", ready=True)
    ctl.reconcile_once()  # 14B Ready (busy for its idle timeout from now)
    clock.t += 1000
    publish_nodes(fake, clock.t)  # the agents kept publishing meanwhile
    fake.patch_object("models", "qwen3-32b", {"metadata": {"annotations": {keys.MODEL_ACTIVATE: "please"}}}, NS)
    ctl.reconcile_once()
    assert dep(fake, "qwen3-32b")["spec"]["replicas"] == 1
    reg = ctl.metrics.registry
    labels = {"model": "deepseek-r1", "model_namespace": NS, "phase": "Idle"}
    assert reg.get_sample_value("flexinfer_model_phase", labels) == 1.0
    fake.delete_object("models", "deepseek-r1", NS)
    assert dep(fake, "deepseek-r1") is None  # owner references: deleting the Model cleans up
    ctl.reconcile_once()
    assert reg.get_sample_value("flexinfer_model_phase", labels) is None
