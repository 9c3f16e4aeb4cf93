"""Phase, message and conditions derivation (controller.phases)."""

from __future__ import annotations

import pytest
from flexinfer.controller.phases import (
    FAILED,
    IDLE,
    LOADING,
    PENDING,
    PREEMPTED,
    READY,
    PodInfo,
    conditions_for,
    derive_phase,
    pod_info,
    set_condition,
)


def dep(**status):
    return {"metadata": {"name": "x"}, "status": status}


PD = {"conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]}


@pytest.mark.parametrize(
    ("desired", "deployment", "pods", "cache", "preempted", "phase", "msg_part"),
    [
        (0, None, None, None, False, IDLE, "scaled to zero"),
        (0, dep(replicas=1, readyReplicas=1), None, None, False, IDLE, "shutting down"),
        (0, dep(), None, None, True, PREEMPTED, "preempted"),
        (1, None, None, None, False, PENDING, "creating the Deployment"),
        (1, dep(), None, None, False, LOADING, "loading the model"),
        (1, dep(replicas=1, unavailableReplicas=1), PodInfo(scheduled=True, running=True, known=True), None,
         False, LOADING, "loading"),
        (1, dep(replicas=1), PodInfo(known=True), None, False, PENDING, "scheduled"),
        (1, dep(replicas=1), PodInfo(unschedulable="0/3 nodes: needs 20480 MiB", known=True), None, False,
         PENDING, "needs 20480 MiB"),
        (1, dep(replicas=1, readyReplicas=1), None, None, False, READY, "serving"),
        (1, dep(replicas=1), None, False, False, PENDING, "cache"),
        (1, dep(replicas=1), PodInfo(waiting_reasons=("CrashLoopBackOff",), known=True), None, False, FAILED,
         "CrashLoopBackOff"),
        (1, dep(replicas=1), PodInfo(waiting_reasons=("ImagePullBackOff",), known=True), None, False, FAILED,
         "image"),
        (1, dep(replicas=1), PodInfo(pod_reason="UnexpectedAdmissionError", known=True), None, False, FAILED,
         "GPU"),
        (1, dep(replicas=1, **PD), None, None, False, FAILED, "progress deadline"),
        (1, dep(replicas=1, readyReplicas=1, **PD), None, None, False, READY, "serving"),
        (1, dep(replicas=1), PodInfo(waiting_reasons=("ContainerCreating",), scheduled=True, known=True), None,
         False, LOADING, "loading"),
    ],
)
def test_derive_phase(desired, deployment, pods, cache, preempted, phase, msg_part):
    r = derive_phase(desired, deployment, pods, cache, preempted, decision_reason="preempted by q32")
    assert r.phase == phase
    assert msg_part in r.message


def test_pod_info_from_api_dicts():
    pods = [{"status": {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "no GPU fits"}],
        "containerStatuses": [{"state": {"waiting": {"reason": "ContainerCreating"}}}]}}]
    info = pod_info(pods)
    assert info.unschedulable == "no GPU fits" and info.known and not info.scheduled
    assert info.waiting_reasons == ("ContainerCreating",)
    assert pod_info([]) == PodInfo()
    assert pod_info([{"status": {"reason": "UnexpectedAdmissionError"}}]).pod_reason == "UnexpectedAdmissionError"


def test_set_condition_preserves_transition_time():
    c1 = set_condition([], "Ready", "False", "Loading", "loading", "2026-01-01T00:00:00Z")
    c2 = set_condition(c1, "Ready", "False", "Pending", "other message", "2026-01-01T00:05:00Z")
    assert c2[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert c2[0]["message"] == "other message"
    c3 = set_condition(c2, "Ready", "True", "Ready", "serving", "2026-01-01T00:06:00Z", generation=3)
    assert c3[0]["lastTransitionTime"] == "2026-01-01T00:06:00Z"
    assert c3[0]["observedGeneration"] == 3
    assert c1[0]["status"] == "False"  # input not mutated


def test_conditions_for_ready_and_scheduled():
    r = derive_phase(1, dep(replicas=1, readyReplicas=1))
    conds = {c["type"]: c for c in conditions_for(r, [], "2026-01-01T00:00:00Z", 2)}
    assert conds["Ready"]["status"] == "True" and conds["Scheduled"]["status"] == "True"
    r2 = derive_phase(1, dep(replicas=1), PodInfo(unschedulable="no node", known=True))
    conds2 = {c["type"]: c for c in conditions_for(r2, [], "t")}
    assert conds2["Scheduled"]["reason"] == "Unschedulable"
    r3 = derive_phase(0, dep(), preempted=True)
    conds3 = {c["type"]: c for c in conditions_for(r3, [], "t")}
    assert conds3["Ready"]["reason"] == "Preempted" and conds3["Scheduled"]["reason"] == "ScaledToZero"


def test_waiting_for_group_is_pending_with_reason():
    r = derive_phase(0, None, decision_reason="waiting for the GPU held by q32 (priority 80)", waiting=True)
    assert r.phase == PENDING and r.message == "waiting for the GPU held by q32 (priority 80)"
