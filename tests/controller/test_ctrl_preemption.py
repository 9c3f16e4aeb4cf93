"""Preemption with a fit check and rollback (issue 15 point 1), vendor ``auto`` by where the model fits (point 4):
the controller against the fake API server with the homelab's Nodes as the agents publish them."""

from __future__ import annotations

import pytest
from flexinfer.controller.reconcile import Controller, activate, rfc3339

from flexinfer import keys

from .conftest import publish_nodes

pytestmark = pytest.mark.integration
NS = "ai"
T0 = 1_800_000_000.0
GROUP = "7900xtx-quality"


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


def mlc(name: str, prio: int, vram_mib: int, min_replicas: int = 0, cold: str = "10m") -> dict:
    """The homelab's quality lane: MLC-LLM on the RX 7900 XTX (gfx1100) nodes."""
    return {"apiVersion": keys.MODEL_API_VERSION, "kind": keys.MODEL_KIND,
            "metadata": {"name": name, "namespace": NS},
            "spec": {"backend": "mlc-llm", "source": f"HF://mlc-ai/{name}-MLC",
                     "gpu": {"vendor": "amd", "shared": GROUP, "priority": prio, "vramEstimateMB": vram_mib},
                     "nodeSelector": {keys.LABEL_ARCH: "gfx1100"},
                     "serverless": {"minReplicas": min_replicas, "idleTimeout": "15m", "coldStartTimeout": cold}}}


def replicas(fake, name):
    return fake.get_object("deployments", name, NS)["spec"]["replicas"]


def status(fake, name):
    return fake.get_object("models", name, NS).get("status") or {}


def ready_condition(fake, name):
    return next(c for c in status(fake, name)["conditions"] if c["type"] == "Ready")


def events(fake, name, reason):
    return [e for e in fake.list_objects("events", NS)
            if e["involvedObject"]["name"] == name and e["reason"] == reason]


def run_pod(fake, name, node, *, ready, started=None):
    """Play kube-scheduler + kubelet: the Deployment's pod, bound to `node` (template annotations/resources)."""
    dep = fake.get_object("deployments", name, NS)
    tpl = dep["spec"]["template"]
    conds = [{"type": "PodScheduled", "status": "True", "lastTransitionTime": rfc3339(T0)},
             {"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": rfc3339(T0)}]
    started = ready if started is None else started
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": f"{name}-pod", "namespace": NS, "labels": tpl["metadata"]["labels"],
                        "annotations": tpl["metadata"]["annotations"]},
           "spec": {**tpl["spec"], "nodeName": node},
           "status": {"phase": "Running", "conditions": conds,
                      "containerStatuses": [{"name": "server", "ready": ready, "started": started,
                                             "state": {"running": {"startedAt": rfc3339(T0)}}}]}}
    fake.put_object(pod)
    fake.patch_object("deployments", name, {"status": {"replicas": 1, "readyReplicas": 1 if ready else 0}}, NS)


def stop_pod(fake, name):
    fake.delete_object("pods", f"{name}-pod", NS)
    fake.patch_object("deployments", name, {"status": {"replicas": 0, "readyReplicas": 0}}, NS)


@pytest.fixture
def lane(fake_api, kube_api):
    clock = Clock()
    ctl = Controller(kube_api, namespace=NS, cooldown_seconds=30, clock=clock)
    return fake_api, kube_api, ctl, clock


def start_14b(fake, api, ctl, clock, used_7900xtx: int):
    """The always-on 14B is started, placed on cblevins-7900xtx and Ready; the node shows its memory."""
    ctl.reconcile_once()
    assert replicas(fake, "qwen3-14b-mlc") == 1
    run_pod(fake, "qwen3-14b-mlc", "cblevins-7900xtx", ready=True)
    publish_nodes(fake, clock.t, cblevins_7900xtx=used_7900xtx, cblevins_5930k=20000)
    clock.t += 10
    ctl.reconcile_once()
    assert status(fake, "qwen3-14b-mlc")["phase"] == "Ready"


def idle_14b_then_activate_32b(fake, api, ctl, clock, vram_32b_mib: int, cold: str = "10m") -> None:
    """The always-on 14B (P:100) serves on cblevins-7900xtx and idles past its timeout; then the 32B (P:80) is
    activated: the next pass decides whether it preempts the 14B."""
    publish_nodes(fake, clock.t, cblevins_5930k=20000)
    fake.put_object(mlc("qwen3-14b-mlc", 100, 12288, min_replicas=1))
    fake.put_object(mlc("qwen3-32b-quality", 80, vram_32b_mib, cold=cold))
    start_14b(fake, api, ctl, clock, used_7900xtx=520 + 12288)
    clock.t += 700
    publish_nodes(fake, clock.t, cblevins_7900xtx=520 + 12288, cblevins_5930k=20000)
    activate(api, NS, "qwen3-32b-quality", now=clock.t)


def test_no_preemption_when_the_preemptor_fits_nowhere(lane):
    """The issue's story: the 32B needs 30000 MiB, more than any gfx1100 card. Activating it must not scale
    the serving always-on 14B down (the group would serve nothing until the 32B idles out)."""
    fake, api, ctl, clock = lane
    idle_14b_then_activate_32b(fake, api, ctl, clock, 30000)
    for _ in range(3):
        r = ctl.reconcile_once()
        assert not r.errors
        assert replicas(fake, "qwen3-14b-mlc") == 1 and replicas(fake, "qwen3-32b-quality") == 0
        clock.t += 10
    assert status(fake, "qwen3-14b-mlc")["phase"] == "Ready"
    st = status(fake, "qwen3-32b-quality")
    cond = ready_condition(fake, "qwen3-32b-quality")
    assert st["phase"] == "Pending" and cond["reason"] == "PreemptionBlocked"
    assert "cannot preempt qwen3-14b-mlc" in cond["message"]
    assert "GPU memory too small for model" in cond["message"] and "30000 MiB" in cond["message"]
    ev = events(fake, "qwen3-32b-quality", "PreemptionBlocked")
    assert len(ev) == 1 and ev[0]["type"] == "Warning"  # once, not every pass
    assert ctl.metrics.registry.get_sample_value("flexinfer_group_preemptions_total",
                                                 {"model_namespace": NS, "group": GROUP}) is None


def test_preemption_when_the_holders_gpu_is_enough_and_rollback_after_cold_start_timeout(lane):
    """The 32B (21000 MiB) fits only on the GPU the 14B frees (the other gfx1100 card is busy): the 14B is
    preempted. The 32B is scheduled but never becomes Ready: after its coldStartTimeout the controller rolls
    back and the 14B serves again."""
    fake, api, ctl, clock = lane
    idle_14b_then_activate_32b(fake, api, ctl, clock, 21000, cold="10m")
    ctl.reconcile_once()
    assert replicas(fake, "qwen3-14b-mlc") == 0 and replicas(fake, "qwen3-32b-quality") == 1
    assert status(fake, "qwen3-14b-mlc")["phase"] == "Preempted"
    stop_pod(fake, "qwen3-14b-mlc")
    # the 32B is placed where the 14B was and starts loading, but never becomes Ready
    run_pod(fake, "qwen3-32b-quality", "cblevins-7900xtx", ready=False, started=False)
    clock.t += 20
    publish_nodes(fake, clock.t, cblevins_7900xtx=520 + 21000, cblevins_5930k=20000)
    ctl.reconcile_once()
    assert status(fake, "qwen3-32b-quality")["phase"] == "Loading"
    scheduled = next(c for c in status(fake, "qwen3-32b-quality")["conditions"] if c["type"] == "Scheduled")
    assert scheduled["status"] == "True"
    clock.t += 300  # within the 10 minutes: still loading, nothing changes (a loading member is never stopped)
    publish_nodes(fake, clock.t, cblevins_7900xtx=520 + 21000, cblevins_5930k=20000)
    ctl.reconcile_once()
    assert replicas(fake, "qwen3-32b-quality") == 1 and replicas(fake, "qwen3-14b-mlc") == 0
    clock.t += 301  # past coldStartTimeout since it was scheduled: roll back
    publish_nodes(fake, clock.t, cblevins_7900xtx=520 + 21000, cblevins_5930k=20000)
    ctl.reconcile_once()
    assert replicas(fake, "qwen3-32b-quality") == 0 and replicas(fake, "qwen3-14b-mlc") == 1
    cond = ready_condition(fake, "qwen3-32b-quality")
    assert status(fake, "qwen3-32b-quality")["phase"] == "Failed" and cond["reason"] == "ColdStartTimeout"
    assert "rolled back" in cond["message"] and "qwen3-14b-mlc" in cond["message"]
    assert len(events(fake, "qwen3-32b-quality", "ColdStartTimeout")) == 1
    # the failed 32B does not take the GPU back on the next passes, although it would fit again and its
    # activation (from before the failure) is still recent; only a new activation retries it
    stop_pod(fake, "qwen3-32b-quality")
    run_pod(fake, "qwen3-14b-mlc", "cblevins-7900xtx", ready=True)
    for _ in range(2):
        clock.t += 10
        publish_nodes(fake, clock.t, cblevins_7900xtx=520 + 12288, cblevins_5930k=20000)
        ctl.reconcile_once()
        assert replicas(fake, "qwen3-32b-quality") == 0 and replicas(fake, "qwen3-14b-mlc") == 1
    failed = next(c for c in status(fake, "qwen3-32b-quality")["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == "ColdStartTimeout"
    activate(api, NS, "qwen3-32b-quality", now=clock.t)
    ctl.reconcile_once()
    assert replicas(fake, "qwen3-32b-quality") == 1 and replicas(fake, "qwen3-14b-mlc") == 0


def test_a_retry_in_the_same_second_as_the_rollback_is_not_lost(lane):
    """Condition times are whole seconds (the failure's rounded down); an activation written in the same second,
    after the failure (a user or the proxy retrying at once; the e2e preemption test did), is a new request and
    is honoured: activation times carry microseconds."""
    fake, api, ctl, clock = lane
    idle_14b_then_activate_32b(fake, api, ctl, clock, 21000, cold="10m")
    ctl.reconcile_once()
    stop_pod(fake, "qwen3-14b-mlc")
    run_pod(fake, "qwen3-32b-quality", "cblevins-7900xtx", ready=False, started=False)
    clock.t += 20
    publish_nodes(fake, clock.t, cblevins_7900xtx=520 + 21000, cblevins_5930k=20000)
    ctl.reconcile_once()
    clock.t += 601.2  # past coldStartTimeout, at .2 of a second: roll back
    publish_nodes(fake, clock.t, cblevins_7900xtx=520 + 21000, cblevins_5930k=20000)
    ctl.reconcile_once()
    assert status(fake, "qwen3-32b-quality")["phase"] == "Failed"
    assert replicas(fake, "qwen3-32b-quality") == 0 and replicas(fake, "qwen3-14b-mlc") == 1
    stop_pod(fake, "qwen3-32b-quality")
    run_pod(fake, "qwen3-14b-mlc", "cblevins-7900xtx", ready=True)
    clock.t += 0.5  # the same wall-clock second as the failure
    publish_nodes(fake, clock.t, cblevins_7900xtx=520 + 12288, cblevins_5930k=20000)
    activate(api, NS, "qwen3-32b-quality", now=clock.t)
    ctl.reconcile_once()
    assert replicas(fake, "qwen3-32b-quality") == 1 and replicas(fake, "qwen3-14b-mlc") == 0


def ollama(name: str, vram_mib: int) -> dict:
    """A model outside the group that Ollama loads on its first request: bound and running, no GPU memory used."""
    return {"apiVersion": keys.MODEL_API_VERSION, "kind": keys.MODEL_KIND,
            "metadata": {"name": name, "namespace": NS},
            "spec": {"backend": "ollama", "source": "ollama://llama3.1:8b",
                     "gpu": {"vendor": "amd", "vramEstimateMB": vram_mib},
                     "nodeSelector": {keys.LABEL_ARCH: "gfx1100"}, "serverless": {"minReplicas": 1}}}


def test_no_preemption_while_a_bound_model_has_not_loaded_yet(lane):
    """An Ollama model (8000 MiB, loads on its first request) is bound to the 14B's card but uses no memory yet:
    the agent shows the card with only the 14B on it. The 32B (21000 MiB) would fit in what the 14B frees by the
    agent's numbers (24560 - 520), but not next to the Ollama model's commitment (24560 - 8000): the extender
    would not place it, so the controller must not scale the 14B down for it."""
    fake, api, ctl, clock = lane
    publish_nodes(fake, clock.t, cblevins_5930k=20000)
    fake.put_object(mlc("qwen3-14b-mlc", 100, 12288, min_replicas=1))
    fake.put_object(mlc("qwen3-32b-quality", 80, 21000))
    fake.put_object(ollama("llama-ollama", 8000))
    start_14b(fake, api, ctl, clock, used_7900xtx=520 + 12288)
    run_pod(fake, "llama-ollama", "cblevins-7900xtx", ready=True)  # serving, its model not loaded yet
    clock.t += 700
    publish_nodes(fake, clock.t, cblevins_7900xtx=520 + 12288, cblevins_5930k=20000)
    activate(api, NS, "qwen3-32b-quality", now=clock.t)
    r = ctl.reconcile_once()
    assert not r.errors
    assert replicas(fake, "qwen3-14b-mlc") == 1 and replicas(fake, "qwen3-32b-quality") == 0
    cond = ready_condition(fake, "qwen3-32b-quality")
    assert cond["reason"] == "PreemptionBlocked" and "cannot preempt qwen3-14b-mlc" in cond["message"]
    assert "Insufficient free GPU memory" in cond["message"] and "8000 MiB committed to bound pods" in cond["message"]
    # the Ollama model goes away: the same activation now preempts the 14B
    stop_pod(fake, "llama-ollama")
    fake.delete_object("models", "llama-ollama", NS)
    clock.t += 10
    publish_nodes(fake, clock.t, cblevins_7900xtx=520 + 12288, cblevins_5930k=20000)
    ctl.reconcile_once()
    assert replicas(fake, "qwen3-14b-mlc") == 0 and replicas(fake, "qwen3-32b-quality") == 1


def test_a_preemptor_that_is_never_scheduled_is_rolled_back_too(lane):
    fake, api, ctl, clock = lane
    idle_14b_then_activate_32b(fake, api, ctl, clock, 21000, cold="2m")
    ctl.reconcile_once()
    assert replicas(fake, "qwen3-32b-quality") == 1
    stop_pod(fake, "qwen3-14b-mlc")
    clock.t += 121  # someone else took the card meanwhile: the 32B's pod stays Pending
    publish_nodes(fake, clock.t, cblevins_7900xtx=20000, cblevins_5930k=20000)
    ctl.reconcile_once()
    assert replicas(fake, "qwen3-32b-quality") == 0
    assert ready_condition(fake, "qwen3-32b-quality")["reason"] == "ColdStartTimeout"
    assert "given the GPU" in ready_condition(fake, "qwen3-32b-quality")["message"]


def test_nothing_serving_starts_the_member_that_fits(lane):
    """Rule 2 with the fit check: with the group empty, the strongest want (the activated 32B) fits nowhere,
    so the always-on 14B starts instead of leaving the group with nothing serving."""
    fake, api, ctl, clock = lane
    publish_nodes(fake, clock.t, cblevins_5930k=20000)
    fake.put_object(mlc("qwen3-14b-mlc", 100, 12288, min_replicas=1))
    fake.put_object(mlc("qwen3-32b-quality", 80, 30000))
    activate(api, NS, "qwen3-32b-quality", now=clock.t)
    ctl.reconcile_once()
    assert replicas(fake, "qwen3-14b-mlc") == 1 and replicas(fake, "qwen3-32b-quality") == 0
    assert ready_condition(fake, "qwen3-32b-quality")["reason"] == "NoNodeFits"  # nothing held the GPU yet
    run_pod(fake, "qwen3-14b-mlc", "cblevins-7900xtx", ready=True)
    clock.t += 10
    ctl.reconcile_once()  # now the 14B holds it: the 32B would preempt it, and may not
    assert replicas(fake, "qwen3-14b-mlc") == 1 and replicas(fake, "qwen3-32b-quality") == 0
    assert ready_condition(fake, "qwen3-32b-quality")["reason"] == "PreemptionBlocked"


# --- vendor auto (point 4) -----------------------------------------------------------------------------------

def auto_model(name: str, vram_mib: int, **spec) -> dict:
    return {"apiVersion": keys.MODEL_API_VERSION, "kind": keys.MODEL_KIND,
            "metadata": {"name": name, "namespace": NS},
            "spec": {"backend": "llamacpp", "source": "HF://org/chat-8b-GGUF", "gpu": {"vramEstimateMB": vram_mib},
                     "serverless": {"minReplicas": 1},
                     "tolerations": [{"key": "workload.ai/dedicated", "operator": "Exists"}], **spec}}


def gpu_resource(fake, name):
    limits = fake.get_object("deployments", name, NS)["spec"]["template"]["spec"]["containers"][0]["resources"]
    return set(limits["limits"])


def vendor_condition(fake, name):
    return next(c for c in status(fake, name)["conditions"] if c["type"] == "VendorSelected")


def test_auto_picks_the_vendor_where_the_model_fits_now(fake_api, kube_api):
    """The homelab has more AMD nodes than NVIDIA ones (the old majority rule picked amd); today every AMD GPU
    is busy and only the RTX PRO 4000 can take 8000 MiB: auto must request nvidia.com/gpu and say why."""
    publish_nodes(fake_api, T0, cblevins_7900xtx=20000, cblevins_5930k=20000, cblevins_radeonvii=15000,
                  khelben=45000)
    fake_api.put_object(auto_model("chat", 8000))
    ctl = Controller(kube_api, namespace=NS, clock=lambda: T0)
    ctl.reconcile_once()
    assert gpu_resource(fake_api, "chat") == {keys.RESOURCE_NVIDIA}
    assert status(fake_api, "chat")["resolvedVendor"] == "nvidia"
    cond = vendor_condition(fake_api, "chat")
    assert cond["status"] == "True" and cond["reason"] == "FitsNow"
    assert "rtxpro4000-worker" in cond["message"] and "amd: no node fits" in cond["message"]


def test_auto_keeps_a_running_models_vendor_and_falls_back_when_nothing_fits(fake_api, kube_api):
    publish_nodes(fake_api, T0, cblevins_7900xtx=20000, cblevins_5930k=20000, cblevins_radeonvii=15000,
                  khelben=45000)
    fake_api.put_object(auto_model("chat", 8000))
    fake_api.put_object(auto_model("huge", 60000))
    ctl = Controller(kube_api, namespace=NS, clock=lambda: T0 + 1, auto_vendor="amd")
    ctl.reconcile_once()
    # a running model never switches vendor because the fleet changed
    publish_nodes(fake_api, T0 + 1, rtxpro4000_worker=24000)
    ctl.reconcile_once()
    assert gpu_resource(fake_api, "chat") == {keys.RESOURCE_NVIDIA}
    assert vendor_condition(fake_api, "chat")["reason"] == "FitsNow"
    # fits nowhere: the --auto-vendor fallback, and the condition says so
    assert gpu_resource(fake_api, "huge") == {keys.RESOURCE_AMD}
    cond = vendor_condition(fake_api, "huge")
    assert cond["status"] == "False" and cond["reason"] == "NoFitNow" and "requesting amd" in cond["message"]


def test_auto_without_node_access_uses_the_flag(fake_api, kube_api):
    fake_api.fail("GET", "/api/v1/nodes", status=403, times=1000)
    fake_api.put_object(auto_model("chat", 8000))
    ctl = Controller(kube_api, namespace=NS, clock=lambda: T0, auto_vendor="amd")
    ctl.reconcile_once()
    assert gpu_resource(fake_api, "chat") == {keys.RESOURCE_AMD}
    assert vendor_condition(fake_api, "chat")["reason"] == "NodesUnknown"


def test_a_preemptor_that_was_ready_is_not_rolled_back_later(lane):
    """The swap worked (the 32B became Ready); a later loss of readiness is not a failed cold start."""
    fake, api, ctl, clock = lane
    idle_14b_then_activate_32b(fake, api, ctl, clock, 21000, cold="2m")
    ctl.reconcile_once()
    stop_pod(fake, "qwen3-14b-mlc")
    run_pod(fake, "qwen3-32b-quality", "cblevins-7900xtx", ready=True)
    clock.t += 10
    ctl.reconcile_once()
    assert status(fake, "qwen3-32b-quality")["phase"] == "Ready"
    run_pod(fake, "qwen3-32b-quality", "cblevins-7900xtx", ready=False, started=True)  # readiness lost
    for _ in range(2):
        clock.t += 100
        publish_nodes(fake, clock.t, cblevins_7900xtx=520 + 21000, cblevins_5930k=20000)
        ctl.reconcile_once()
    assert replicas(fake, "qwen3-32b-quality") == 1 and replicas(fake, "qwen3-14b-mlc") == 0
    assert ready_condition(fake, "qwen3-32b-quality")["reason"] != "ColdStartTimeout"
