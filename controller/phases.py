"""Model phase, message and conditions from what the cluster shows (pure; no I/O).

Phases: Idle (scaled to zero, nobody asked), Pending (wants to run, no pod running yet: creating,
unschedulable, waiting for the cache, or waiting for its busy GPU group), Loading (pod running, not
ready: weights loading),
Ready (serving), Preempted (scaled to zero because another member of its GPU group holds the GPU),
Failed (crash loop, image pull failure, device admission error, progress deadline exceeded).

Conditions use the Kubernetes format (type, status, reason, message, lastTransitionTime,
observedGeneration); lastTransitionTime only changes when the status of that condition changes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

IDLE, PENDING, LOADING, READY, PREEMPTED, FAILED = "Idle", "Pending", "Loading", "Ready", "Preempted", "Failed"
PHASES = (IDLE, PENDING, LOADING, READY, PREEMPTED, FAILED)

# metav1.Condition's reason: CamelCase letters, digits, '_', ',' and ':' (the CRD schema enforces it).
REASON_RE = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?\Z")
MAX_MESSAGE_CHARS = 32768

# container waiting reasons that mean "this will not start without a change"
FATAL_WAITING = {
    "CrashLoopBackOff": "the model server keeps crashing (CrashLoopBackOff); see the pod logs",
    "ImagePullBackOff": "the image cannot be pulled (ImagePullBackOff); check spec.image and registry access",
    "ErrImagePull": "the image cannot be pulled (ErrImagePull); check spec.image and registry access",
    "InvalidImageName": "the image name is invalid (InvalidImageName); check spec.image",
    "CreateContainerConfigError": "the container config is invalid (CreateContainerConfigError)",
    "CreateContainerError": "the container could not be created (CreateContainerError)",
}
FATAL_POD_REASONS = {
    "UnexpectedAdmissionError": "the node could not allocate the GPU (UnexpectedAdmissionError); "
                                "the device plugin may be unhealthy",
}


@dataclass(frozen=True, slots=True)
class PodInfo:
    """What matters about the model's pod(s) for the phase."""

    waiting_reasons: tuple[str, ...] = ()
    pod_reason: str = ""  # pod status.reason (e.g. UnexpectedAdmissionError)
    unschedulable: str = ""  # PodScheduled=False message
    scheduled: bool = False
    running: bool = False
    known: bool = False  # at least one pod was seen


def pod_info(pods: list[dict[str, Any]]) -> PodInfo:
    """Summarize pods (plain API dicts) of one model. Never raises on odd shapes."""
    waiting: list[str] = []
    reason = unsched = ""
    scheduled = running = False
    for pod in pods or []:
        st = pod.get("status") or {}
        if st.get("reason"):
            reason = str(st["reason"])
        if st.get("phase") == "Running":
            running = True
        for c in st.get("conditions") or []:
            if c.get("type") == "PodScheduled":
                if c.get("status") == "True":
                    scheduled = True
                elif c.get("reason") == "Unschedulable":
                    unsched = str(c.get("message") or "no node fits")
        for cs in (st.get("containerStatuses") or []) + (st.get("initContainerStatuses") or []):
            w = (cs.get("state") or {}).get("waiting") or {}
            if w.get("reason"):
                waiting.append(str(w["reason"]))
    return PodInfo(tuple(waiting), reason, "" if scheduled else unsched, scheduled, running, bool(pods))


@dataclass(frozen=True, slots=True)
class PhaseResult:
    phase: str
    message: str
    reason: str  # CamelCase machine reason for the Ready condition


def _progress_deadline(dep_status: dict[str, Any]) -> bool:
    return any(c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded"
               for c in dep_status.get("conditions") or [])


def derive_phase(
    desired_replicas: int,
    deployment: dict[str, Any] | None,
    pods: PodInfo | None = None,
    cache_ready: bool | None = None,
    preempted: bool = False,
    decision_reason: str = "",
    waiting: bool = False,
    blocked: str = "",
) -> PhaseResult:
    """Phase + human message. `deployment` is the Deployment object (or None if not created yet). `blocked`:
    the condition reason when the model wants to run but its pod fits on no node (PreemptionBlocked/NoNodeFits)."""
    pods = pods or PodInfo()
    dstatus = (deployment or {}).get("status") or {}
    ready = int(dstatus.get("readyReplicas") or 0)
    replicas = int(dstatus.get("replicas") or 0)  # pods that still exist (also while draining)
    why = f" ({decision_reason})" if decision_reason else ""
    if desired_replicas <= 0:
        draining = "; the old pod is shutting down" if replicas > 0 else ""
        if preempted:
            return PhaseResult(PREEMPTED, f"scaled to zero: {decision_reason or 'preempted'}{draining}",
                               "Preempted")
        if blocked:  # wants to run, fits nowhere (even after its group's holder would release the GPU)
            return PhaseResult(PENDING, f"{decision_reason or 'no node fits'}{draining}", blocked)
        if waiting:  # wants to run, its GPU group is busy
            return PhaseResult(PENDING, f"{decision_reason or 'waiting for the GPU'}{draining}", "WaitingForGroup")
        idle = decision_reason if decision_reason.startswith("scaled to zero") else f"scaled to zero{why}"
        return PhaseResult(IDLE, f"{idle}; activate it to start{draining}", "ScaledToZero")
    for w in pods.waiting_reasons:
        if w in FATAL_WAITING:
            return PhaseResult(FAILED, FATAL_WAITING[w], w)
    if pods.pod_reason in FATAL_POD_REASONS:
        return PhaseResult(FAILED, FATAL_POD_REASONS[pods.pod_reason], pods.pod_reason)
    if _progress_deadline(dstatus) and ready == 0:
        return PhaseResult(FAILED, "the Deployment did not become ready within its progress deadline "
                                   "(ProgressDeadlineExceeded)", "ProgressDeadlineExceeded")
    if ready >= 1:
        return PhaseResult(READY, "serving", "Ready")
    if cache_ready is False:
        return PhaseResult(PENDING, "waiting for the model cache to be ready", "CacheNotReady")
    if deployment is None:
        return PhaseResult(PENDING, f"creating the Deployment{why}", "Creating")
    if pods.unschedulable:
        return PhaseResult(PENDING, f"waiting for a node: {pods.unschedulable}", "Unschedulable")
    if pods.known and not pods.scheduled:
        return PhaseResult(PENDING, f"waiting for the pod to be scheduled{why}", "Starting")
    return PhaseResult(LOADING, "the pod is starting and loading the model", "Loading")


def condition_reason(reason: str) -> str:
    """`reason` as a valid metav1.Condition reason (CamelCase); anything else is reduced to its letters,
    digits and underscores, "Unknown" when nothing is left."""
    if REASON_RE.match(reason):
        return reason
    cleaned = "".join(w[:1].upper() + w[1:] for w in re.split(r"[^A-Za-z0-9_]+", reason) if w).lstrip("0123456789_")
    return cleaned[:1024] if cleaned and REASON_RE.match(cleaned[:1024]) else "Unknown"


def set_condition(
    conditions: list[dict[str, Any]], ctype: str, status: str, reason: str, message: str, now_iso: str,
    generation: int = 0,
) -> list[dict[str, Any]]:
    """Return a new list with `ctype` set; lastTransitionTime is kept when the status did not change.
    Every condition is a complete metav1.Condition (type, status, reason, message, lastTransitionTime)."""
    reason = condition_reason(reason)
    message = (message or "")[:MAX_MESSAGE_CHARS]
    out = [dict(c) for c in conditions or [] if isinstance(c, dict)]
    for c in out:
        if c.get("type") == ctype:
            if c.get("status") != status or not c.get("lastTransitionTime"):
                c["lastTransitionTime"] = now_iso
            c.update(status=status, reason=reason, message=message, observedGeneration=generation)
            return out
    out.append({"type": ctype, "status": status, "reason": reason, "message": message,
                "lastTransitionTime": now_iso, "observedGeneration": generation})
    return out


def conditions_for(
    result: PhaseResult, previous: list[dict[str, Any]], now_iso: str, generation: int = 0,
    pods: PodInfo | None = None,
) -> list[dict[str, Any]]:
    """Ready and Scheduled conditions for a phase result, and Failed (True from the moment the model failed:
    its lastTransitionTime is when, which a later activation is compared with; written once it applies)."""
    pods = pods or PodInfo()
    ready = "True" if result.phase == READY else "False"
    conds = set_condition(previous, "Ready", ready, result.reason, result.message, now_iso, generation)
    if result.phase == FAILED:
        conds = set_condition(conds, "Failed", "True", result.reason, result.message, now_iso, generation)
    elif any(isinstance(c, dict) and c.get("type") == "Failed" for c in conds):
        conds = set_condition(conds, "Failed", "False", result.reason, "not failed", now_iso, generation)
    if result.phase == READY or pods.scheduled:  # a bound pod, not just a Deployment asking for one
        sched = ("True", "Scheduled", "the pod is placed on a node")
    elif result.reason == "Unschedulable":
        sched = ("False", "Unschedulable", result.message)
    elif result.phase in (IDLE, PREEMPTED):
        sched = ("False", "ScaledToZero", "no pod: the model is scaled to zero")
    else:
        sched = ("False", "Waiting", result.message)
    return set_condition(conds, "Scheduled", *sched, now_iso, generation)


# Every condition reason the controller writes (tests check each against the CRD's metav1.Condition pattern;
# condition_reason() guards the rest at run time).
ALL_REASONS: tuple[str, ...] = (
    "Preempted", "WaitingForGroup", "ScaledToZero", *FATAL_WAITING, *FATAL_POD_REASONS, "ProgressDeadlineExceeded",
    "Ready", "CacheNotReady", "Creating", "Unschedulable", "Starting", "Loading", "Scheduled", "Waiting",
    "InvalidSpec", "Failed", "OwnershipConflict", "PreemptionBlocked", "NoNodeFits", "ColdStartTimeout",
    "VendorSelected", "Pinned", "FitsNow", "NoFitNow", "Kept", "NodesUnknown",
)
