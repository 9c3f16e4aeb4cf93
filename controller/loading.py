"""Loading substage and loading progress of a Model's pod (pure; no I/O).

While a Model is ``Loading`` the controller publishes what the pod is doing and when that last changed:

- ``status.loadingSubstage``: ``PullingImage`` (scheduled; the image is being pulled or the container
  created: a container waiting in ContainerCreating/PodInitializing, or init containers still running),
  ``LoadingWeights`` (the server process runs; its startup probe has not passed yet: weights are being
  read and copied to the GPU), ``WarmingUp`` (the startup probe passed; the readiness probe has not yet).
- ``status.loadingProgressAt``: RFC 3339 time of the last observed progress.

Progress is what the controller can see: a substage change; a transition of a pod condition
(PodScheduled, Initialized, ContainersReady, Ready); a container starting (``state.running.startedAt``);
and, when the node agent publishes GPU memory, the GPU memory in use on the pod's node growing by at
least :data:`VRAM_PROGRESS_MIB` (the agent republishes every ~1 GiB of change, so a model copying weights
to the GPU moves it every few seconds; a load stalled on storage does not). A load that shows none of
these for a while is stalled; ``flexinfer-proxy`` answers new requests for it with 503 + Retry-After
instead of queueing them until the cold-start timeout (the rule and its default are in the proxy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flexinfer.state import parse_rfc3339

PULLING_IMAGE, LOADING_WEIGHTS, WARMING_UP = "PullingImage", "LoadingWeights", "WarmingUp"
SUBSTAGES = (PULLING_IMAGE, LOADING_WEIGHTS, WARMING_UP)
STATUS_SUBSTAGE = "loadingSubstage"
STATUS_PROGRESS_AT = "loadingProgressAt"
VRAM_PROGRESS_MIB = 256  # growth of GPU memory in use on the pod's node that counts as progress

_CREATING = {"ContainerCreating", "PodInitializing"}
_CONDITIONS = ("PodScheduled", "Initialized", "ContainersReady", "Ready")


@dataclass(frozen=True, slots=True)
class Loading:
    substage: str = ""  # "" = not loading (no pod, not scheduled, or Ready)
    progress_unix: float | None = None
    pod: str = ""  # the pod the substage describes
    node: str = ""


def _created(pod: dict[str, Any]) -> float:
    return parse_rfc3339((pod.get("metadata") or {}).get("creationTimestamp")) or 0.0


def current_pod(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest pod that is not being deleted (the one a Recreate rollout is waiting for)."""
    live = [p for p in pods or [] if isinstance(p, dict) and not (p.get("metadata") or {}).get("deletionTimestamp")]
    return max(live, key=_created, default=None)


def substage_of(pod: dict[str, Any]) -> str:
    """The substage one pod is in ("" when it is not loading)."""
    st = pod.get("status") or {}
    conds = {c.get("type"): c.get("status") for c in st.get("conditions") or [] if isinstance(c, dict)}
    if conds.get("PodScheduled") != "True" and not (pod.get("spec") or {}).get("nodeName"):
        return ""
    if conds.get("Ready") == "True":
        return ""
    inits = st.get("initContainerStatuses") or []
    if any(((c.get("state") or {}).get("terminated") or {}).get("exitCode") != 0 for c in inits
           if isinstance(c, dict)):
        return PULLING_IMAGE
    containers = [c for c in st.get("containerStatuses") or [] if isinstance(c, dict)]
    if not containers:
        return PULLING_IMAGE
    running = [c for c in containers if (c.get("state") or {}).get("running") is not None]
    if len(running) < len(containers):
        waiting = [((c.get("state") or {}).get("waiting") or {}).get("reason") for c in containers]
        if all(w in _CREATING or w is None for w in waiting) or not running:
            return PULLING_IMAGE
    if not all(c.get("started") is True for c in running):
        return LOADING_WEIGHTS
    return WARMING_UP


def _event_times(pod: dict[str, Any]) -> list[float]:
    st = pod.get("status") or {}
    times = [parse_rfc3339(c.get("lastTransitionTime")) for c in st.get("conditions") or []
             if isinstance(c, dict) and c.get("type") in _CONDITIONS]
    for c in (st.get("containerStatuses") or []) + (st.get("initContainerStatuses") or []):
        state = (c.get("state") or {}) if isinstance(c, dict) else {}
        times.append(parse_rfc3339((state.get("running") or {}).get("startedAt")))
        times.append(parse_rfc3339((state.get("terminated") or {}).get("finishedAt")))
    return [t for t in times if t is not None]


def derive(pods: list[dict[str, Any]], previous: dict[str, Any] | None, now: float, *,
           vram_used_mib: int | None = None, previous_vram_used_mib: int | None = None) -> Loading:
    """Substage and progress time for a Model's pods. `previous`: the Model's current status (its
    loadingSubstage / loadingProgressAt); `vram_used_mib`: GPU memory in use on the pod's node now, and
    what it was at the previous pass (None when unknown)."""
    pod = current_pod(pods)
    if pod is None:
        return Loading()
    sub = substage_of(pod)
    if not sub:
        return Loading()
    prev = previous or {}
    prev_sub = prev.get(STATUS_SUBSTAGE) or ""
    prev_at = parse_rfc3339(prev.get(STATUS_PROGRESS_AT))
    times = [t for t in _event_times(pod) if t <= now]
    if prev_sub == sub and prev_at is not None:
        progress = max([prev_at, *times])
    else:
        progress = now if prev_sub else max(times, default=now)  # a new substage is progress
    if (vram_used_mib is not None and previous_vram_used_mib is not None
            and vram_used_mib - previous_vram_used_mib >= VRAM_PROGRESS_MIB):
        progress = now
    meta = pod.get("metadata") or {}
    return Loading(sub, min(progress, now), str(meta.get("name") or ""),
                   str((pod.get("spec") or {}).get("nodeName") or ""))


def stalled_for(status: dict[str, Any], now: float) -> float | None:
    """Seconds since the last loading progress of a Model status, None when it is not loading."""
    if not status.get(STATUS_SUBSTAGE):
        return None
    at = parse_rfc3339(status.get(STATUS_PROGRESS_AT))
    return None if at is None else max(0.0, now - at)
