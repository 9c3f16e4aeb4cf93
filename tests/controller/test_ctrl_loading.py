"""status.loadingSubstage / loadingProgressAt (controller.loading, written by the reconciler): pulling the
image, loading weights, warming up; progress advances with substage changes and GPU memory growing on the
pod's node, and stops when the load stalls."""

from __future__ import annotations

import pytest
from flexinfer.controller import loading
from flexinfer.controller.reconcile import Controller, rfc3339

from flexinfer import keys

from .conftest import publish_nodes

NS = "ai"
T0 = 1_800_000_000.0


def pod(*, scheduled=True, waiting=None, running=False, started=False, ready=False, created=T0):
    st: dict = {"phase": "Running" if running else "Pending",
                "conditions": [{"type": "PodScheduled", "status": "True" if scheduled else "False",
                                "lastTransitionTime": rfc3339(created)},
                               {"type": "Ready", "status": "True" if ready else "False",
                                "lastTransitionTime": rfc3339(created)}]}
    if waiting or running:
        state = {"waiting": {"reason": waiting}} if waiting else {"running": {"startedAt": rfc3339(created)}}
        st["containerStatuses"] = [{"name": "server", "ready": ready, "started": started, "state": state}]
    return {"metadata": {"name": "m-1", "namespace": NS, "creationTimestamp": rfc3339(created),
                         "labels": {keys.LABEL_MODEL: "m"}},
            "spec": {"nodeName": "cblevins-7900xtx" if scheduled else ""}, "status": st}


@pytest.mark.parametrize(("p", "substage"), [
    (pod(scheduled=False), ""),
    (pod(), loading.PULLING_IMAGE),
    (pod(waiting="ContainerCreating"), loading.PULLING_IMAGE),
    (pod(running=True), loading.LOADING_WEIGHTS),
    (pod(running=True, started=True), loading.WARMING_UP),
    (pod(running=True, started=True, ready=True), ""),
])
def test_substage_of_a_pod(p, substage):
    assert loading.substage_of(p) == substage


def test_progress_advances_on_a_substage_change_and_on_gpu_memory_growth():
    first = loading.derive([pod(running=True)], {}, T0 + 30)
    assert first.substage == loading.LOADING_WEIGHTS and first.progress_unix == T0  # container start time
    prev = {loading.STATUS_SUBSTAGE: first.substage, loading.STATUS_PROGRESS_AT: rfc3339(first.progress_unix)}
    stalled = loading.derive([pod(running=True)], prev, T0 + 60, vram_used_mib=5000, previous_vram_used_mib=5000)
    assert stalled.progress_unix == T0  # nothing moved: stalled for 60 s
    moving = loading.derive([pod(running=True)], prev, T0 + 90, vram_used_mib=6500, previous_vram_used_mib=5000)
    assert moving.progress_unix == T0 + 90
    warm = loading.derive([pod(running=True, started=True)], prev, T0 + 95)
    assert warm.substage == loading.WARMING_UP and warm.progress_unix == T0 + 95
    assert loading.stalled_for({**prev}, T0 + 100) == 100


@pytest.mark.integration
def test_controller_publishes_substage_and_progress(fake_api, kube_api):
    publish_nodes(fake_api, T0)
    fake_api.put_object({"apiVersion": keys.MODEL_API_VERSION, "kind": keys.MODEL_KIND,
                         "metadata": {"name": "m", "namespace": NS},
                         "spec": {"backend": "llamacpp", "source": "HF://org/m-7b-GGUF", "gpu": {"vendor": "amd"},
                                  "serverless": {"minReplicas": 1}}})
    clock = [T0]
    ctl = Controller(kube_api, namespace=NS, clock=lambda: clock[0])
    ctl.reconcile_once()

    def status():
        return fake_api.get_object("models", "m", NS)["status"]

    fake_api.put_object({"apiVersion": "v1", "kind": "Pod", **pod(waiting="ContainerCreating")})
    clock[0] += 5
    ctl.reconcile_once()
    assert status()["loadingSubstage"] == "PullingImage"
    fake_api.put_object({"apiVersion": "v1", "kind": "Pod", **pod(running=True, created=T0 + 20)})
    clock[0] = T0 + 30
    ctl.reconcile_once()
    assert status()["phase"] == "Loading" and status()["loadingSubstage"] == "LoadingWeights"
    at = status()["loadingProgressAt"]
    clock[0] = T0 + 60
    publish_nodes(fake_api, clock[0])
    ctl.reconcile_once()
    assert status()["loadingProgressAt"] == at  # no visible progress
    clock[0] = T0 + 90
    publish_nodes(fake_api, clock[0], cblevins_7900xtx=8000)  # weights arriving on the GPU
    ctl.reconcile_once()
    assert status()["loadingProgressAt"] == rfc3339(T0 + 90)
    fake_api.put_object({"apiVersion": "v1", "kind": "Pod", **pod(running=True, started=True, ready=True)})
    fake_api.patch_object("deployments", "m", {"status": {"replicas": 1, "readyReplicas": 1}}, NS)
    clock[0] = T0 + 100
    ctl.reconcile_once()
    assert status()["phase"] == "Ready"
    assert "loadingSubstage" not in status() and "loadingProgressAt" not in status()
