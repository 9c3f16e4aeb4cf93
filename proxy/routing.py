"""Which Model serves a request (pure; table-tested).

A request names a Model or a service label (``spec.serviceLabels``). A Model whose name equals the
requested text is the only candidate; otherwise every Model carrying the label is. Then, in order:

1. **Serving** (a ready endpoint): send it there; with several, the caller balances between them
   (least requests in flight). An Idle Model is never activated for a label a serving Model carries.
2. **On its way** (Loading, Pending with a pod coming, Ready with no endpoint yet): wait for it; nothing
   new is activated.
3. **Only Idle/Preempted ones**: activate the one that can actually become Ready:
   a. its shared GPU group would let it win: the controller's own decision
      (:func:`flexinfer.controller.groups.decide_group`) is run with a request for it now. A Model that
      cannot preempt the holder (lower or equal priority against a holder that is serving traffic) is
      never picked: this is the case of a reasoning model sharing a label with a busy, higher-priority
      model, which would otherwise be activated and time out;
   b. it can be placed: the extender's policy over the cluster's nodes (:mod:`flexinfer.proxy.fit`,
      counting the VRAM committed to bound model pods as the extender does) says it fits now, or fits once
      the GPU its group holder occupies is released (the holder's pods and memory given back, as in the
      controller's preemption check); a Model that fits nowhere, or that would displace its holder and
      still not fit, is never activated;
   then the best by fit (fits now first), priority (highest first), name. None: 503 with each
   candidate's reason and a ``Retry-After`` (when the blocking holder idles out, if that is known).
4. **Failed** Models are not activated by traffic (that would restart a crash loop on every request):
   503 with their message; ``flexinfer activate`` retries them.

Cooldowns between swaps are ignored in 3a: they only delay a swap, which the request waits out.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from flexinfer.controller import groups
from flexinfer.controller.phases import FAILED, LOADING, PENDING, READY

from .catalog import ModelState

NOT_STARTING_REASONS = {"WaitingForGroup", "ScaledToZero", "Preempted"}


class Fit(enum.IntEnum):
    """Fit verdict of the extender's policy; the value orders preference (lower is better)."""

    FITS = 0  # at least one node can take it now
    UNKNOWN = 1  # fit check off or unavailable (the controller and scheduler still decide)
    AFTER_RELEASE = 2  # GPUs are big enough and compatible but full now (its group holder frees one)
    NEVER = 3  # no node could ever take it (size, vendor, backend/arch, node selector)


@dataclass(frozen=True, slots=True)
class FitVerdict:
    fit: Fit
    reason: str = ""
    released: bool = False  # the check gave back what the group members it would displace hold (pods, memory)


@dataclass(frozen=True, slots=True)
class Serve:
    models: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Wait:
    model: str
    activate: bool
    why: str


@dataclass(frozen=True, slots=True)
class Choose:
    """Idle candidates whose group would let them win; the caller gets their fit verdicts, then `choose`."""

    requested: str
    candidates: tuple[str, ...]
    displaces: frozenset[str] = frozenset()  # candidates that would preempt a running holder
    rejected: dict[str, str] = field(default_factory=dict)
    retry_after_s: float | None = None
    # candidate -> the running members of its group, whose pods the controller releases in its fit check
    releasing: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Refuse:
    status: int
    code: str
    message: str
    retry_after_s: float | None = None


Route = Serve | Wait | Choose | Refuse


def candidates(requested: str, states: Mapping[str, ModelState]) -> list[ModelState]:
    if requested in states:
        return [states[requested]]
    return [m for m in states.values() if requested in m.labels]


def is_serving(m: ModelState) -> bool:
    return bool(m.endpoints)


def is_starting(m: ModelState) -> bool:
    """A pod is on its way (or just became ready and its endpoint is not published yet)."""
    if m.endpoints:
        return False
    if m.phase in (READY, LOADING):
        return True
    return m.phase == PENDING and m.reason not in NOT_STARTING_REASONS


def _last_active(m: ModelState, activity: Mapping[str, float]) -> float | None:
    times = [t for t in (m.last_active_unix, activity.get(m.name)) if t is not None]
    return max(times) if times else None


def member(m: ModelState, now: float, activity: Mapping[str, float], *, request: bool = False) -> groups.Member:
    """The controller's view of one Model, as it will be once loads in progress finish. `request`: a request
    for it arrives now."""
    phase = m.phase
    ready_since = m.ready_since_unix
    if phase == LOADING:
        phase, ready_since = READY, now  # loading is transient: judge the steady state the request waits for
    running = phase == READY or (phase == PENDING and m.reason not in NOT_STARTING_REASONS) or bool(m.endpoints)
    if running and phase != FAILED:
        phase = READY
        ready_since = ready_since if ready_since is not None else now
    return groups.Member(
        name=m.name, priority=m.priority, phase=phase, running=running, min_replicas=m.min_replicas,
        idle_timeout_seconds=m.idle_timeout_s, last_active_unix=now if request else _last_active(m, activity),
        activate_unix=m.activate_unix, ready_since_unix=ready_since if phase == READY else None,
        cold_start_timeout_seconds=m.cold_start_timeout_s)


@dataclass(frozen=True, slots=True)
class GroupVerdict:
    wins: bool
    displaces: bool = False  # it would preempt a member that holds the GPU now
    reason: str = ""
    retry_after_s: float | None = None
    holders: tuple[str, ...] = ()  # the group's other running members (the controller releases their pods)


def group_verdict(m: ModelState, states: Mapping[str, ModelState], now: float,
                  activity: Mapping[str, float]) -> GroupVerdict:
    """Would the shared-group decision give `m` the GPU if a request for it arrived now?"""
    if m.group is None:
        return GroupVerdict(True)
    peers = [s for s in states.values() if s.group == m.group]
    members = [member(s, now, activity, request=s.name == m.name) for s in peers]
    gd = groups.decide_group(members, now, cooldown_seconds=0.0, last_swap_unix=None)
    if gd.active == m.name:
        holders = tuple(sorted(x.name for x in members if x.running and x.name != m.name))
        return GroupVerdict(True, displaces=bool(gd.preempted), holders=holders)
    holder = next((x for x in members if x.name == gd.active), None)
    retry = None
    why = gd.members[m.name].reason if m.name in gd.members else "it does not win its GPU group"
    if holder is not None:
        last = groups.last_used_unix(holder)
        if groups.demand(holder, now) == groups.DEMAND and last is not None:
            retry = max(1.0, last + holder.idle_timeout_seconds - now)
            why = (f"it cannot preempt {holder.name} (priority {holder.priority}, serving traffic) in GPU group "
                   f"{m.group} with priority {m.priority}")
        else:
            why = f"it cannot preempt {holder.name} (priority {holder.priority}) in GPU group {m.group}"
    return GroupVerdict(False, reason=why, retry_after_s=retry)


def route(requested: str, states: Mapping[str, ModelState], now: float,
          activity: Mapping[str, float] | None = None) -> Route:
    """Steps 1-3a and 4 of the module docstring. `activity`: this proxy's own last request time per Model
    (newer than the status it writes in batches)."""
    activity = activity or {}
    cands = candidates(requested, states)
    if not cands:
        return Refuse(404, "model_not_found",
                      f"The model '{requested}' does not exist: no Model of that name and no Model with that "
                      "serviceLabel (GET /v1/models lists them)")
    serving = [m.name for m in cands if is_serving(m)]
    if serving:
        return Serve(tuple(sorted(serving)))
    starting = sorted((m for m in cands if is_starting(m)), key=lambda m: (-m.priority, m.name))
    if starting:
        m = starting[0]
        return Wait(m.name, False, f"{m.name} is {m.phase.lower()}")
    rejected: dict[str, str] = {}
    retry: list[float] = []
    viable: list[str] = []
    displaces: set[str] = set()
    releasing: dict[str, tuple[str, ...]] = {}
    for m in sorted(cands, key=lambda m: m.name):
        if m.phase == FAILED:
            rejected[m.name] = f"it failed: {m.message or 'see its status'} (flexinfer activate {m.name} retries it)"
            continue
        gv = group_verdict(m, states, now, activity)
        if not gv.wins:
            rejected[m.name] = gv.reason
            if gv.retry_after_s is not None:
                retry.append(gv.retry_after_s)
            continue
        viable.append(m.name)
        if gv.displaces:
            displaces.add(m.name)
        if gv.holders:
            releasing[m.name] = gv.holders
    retry_after = min(retry) if retry else None
    if not viable:
        return refuse_all(requested, rejected, retry_after)
    return Choose(requested, tuple(viable), frozenset(displaces), rejected, retry_after, releasing)


def choose(plan: Choose, states: Mapping[str, ModelState], fits: Mapping[str, FitVerdict]) -> Wait | Refuse:
    """Step 3b: the best viable candidate by fit, priority, name; or 503 with every reason."""
    rejected = dict(plan.rejected)
    ranked: list[tuple[int, int, str]] = []
    for name in plan.candidates:
        v = fits.get(name, FitVerdict(Fit.UNKNOWN))
        if v.fit is Fit.NEVER:
            rejected[name] = f"it fits on no node: {v.reason}"
            continue
        rank = v.fit
        if v.fit is Fit.AFTER_RELEASE and name in plan.displaces:
            if v.released:  # even with its group holder's pod and memory given back: the controller refuses too
                holders = ", ".join(plan.releasing.get(name, ())) or "its group holder"
                rejected[name] = f"it fits on no node even with the GPU {holders} holds released: {v.reason}"
                continue
            rank = Fit.FITS  # the GPU it needs is the one its group holder gives back
        ranked.append((int(rank), -states[name].priority, name))
    if not ranked:
        return refuse_all(plan.requested, rejected, plan.retry_after_s)
    name = min(ranked)[2]
    return Wait(name, True, f"activating {name}")


def refuse_all(requested: str, rejected: Mapping[str, str], retry_after_s: float | None) -> Refuse:
    reasons = "; ".join(f"{n}: {why}" for n, why in sorted(rejected.items()))
    return Refuse(503, "model_unavailable", f"No model for '{requested}' can start now ({reasons})", retry_after_s)
