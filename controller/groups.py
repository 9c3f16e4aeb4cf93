"""Shared GPU groups and scale-to-zero: the pure decision function (no I/O, table-tested).

Scope of a group
----------------
A group is keyed by ``(namespace, spec.gpu.shared)``: namespace-scoped. Reasons:

* Models are namespaced objects; a namespace-scoped key means a tenant in namespace A can never
  preempt (or starve) a model in namespace B merely by picking the same group name and a higher
  priority. Priority is a policy a namespace owner sets; it must not leak across namespaces.
* The controller can then be run per namespace (``--namespace``) with the same semantics as a
  cluster-wide controller, and RBAC stays namespace-local.
* A group describes time-sharing of one GPU (the extender decides *which* GPU). Two namespaces that
  really share a card should put their Models in one namespace (the homelab layout does).

Demand ("wants to run"), three tiers
------------------------------------
* ``DEMAND`` (2): traffic or an activation request within the idle timeout. Traffic is
  ``status.lastActiveTime``; activation is the ``flexinfer.ai/activate`` annotation (RFC 3339 time of
  the request). A request that arrived during the load (within coldStartTimeout before Ready) counts
  from the moment the model became Ready (the proxy writes lastActiveTime once at request arrival; a
  load may take longer than the idle timeout). Becoming Ready without any request (an always-on
  model coming back) is not demand.
* ``BASELINE`` (1): no recent demand but ``minReplicas >= 1`` (always-on) — it should hold the GPU
  when nobody with demand needs it.
* ``NONE`` (0): idle past its timeout and ``minReplicas 0``: scale to zero.

Rules (one active member per group)
-----------------------------------
1. A member in ``Loading`` is never scaled down; a preemption waits until it is Ready or Failed.
2. Nothing holding the GPU (or the holder Failed/not wanting): start the member with the strongest
   want, highest priority first (ties: name) — never leave a group with nothing serving when a member
   could serve.
3. A challenger with strictly higher priority displaces the holder when its want is at least as
   strong (demand preempts anything lower; an always-on higher-priority model reclaims the GPU from
   a lower one once that one is idle past its timeout). No cooldown: priority is explicit policy.
4. Otherwise (equal or lower priority) a challenger displaces the holder only when its want is
   stronger — i.e. the holder is idle past its idle timeout — AND the group cooldown since the last
   swap has passed. Equal priorities therefore never preempt a busy member. This is how an explicit
   activation of the 32B (P:80) takes the GPU from an idle always-on 14B (P:100), while a request for
   R1 (P:70) cannot take it from a 14B that is serving traffic.
5. A member known to fail (phase Failed, scaled down) never displaces a serving member; it is retried
   only when nothing else in the group serves and no member that has not failed wants the GPU (not even
   one that cannot be placed right now: a rolled-back member must not come back while the member it gave
   the GPU back to waits for its memory to be published free).
8. Never tear down what you would roll back to: a member listed in ``unplaceable`` (the controller found,
   with the extender's policy, that its pod fits on no node even after the holder released its GPU)
   neither displaces the holder nor is started; it waits, and its decision says why (``blocked``).
6. The displaced member is marked preempted (phase ``Preempted``) while it still wants to run; a
   member that wants to run but never held the GPU waits (replicas 0, reason says for whom).
7. Non-group models (serverless): replicas = 1 while they want to run, ``minReplicas`` otherwise;
   Loading is never scaled down.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

NONE, BASELINE, DEMAND = 0, 1, 2

LOADING, READY, FAILED, PREEMPTED = "Loading", "Ready", "Failed", "Preempted"


@dataclass(frozen=True, slots=True)
class Member:
    """What the decision needs to know about one Model (times are Unix seconds)."""

    name: str
    priority: int = 0
    phase: str = "Idle"  # current phase (status or freshly derived)
    running: bool = False  # its Deployment currently asks for >= 1 replica
    min_replicas: int = 0
    idle_timeout_seconds: float = 600.0
    last_active_unix: float | None = None  # status.lastActiveTime
    activate_unix: float | None = None  # flexinfer.ai/activate annotation
    ready_since_unix: float | None = None  # when it last became Ready (if Ready)
    cold_start_timeout_seconds: float = 300.0  # how long a request may wait for the model to load


@dataclass(frozen=True, slots=True)
class MemberDecision:
    name: str
    replicas: int
    preempted: bool
    reason: str
    demand: int
    blocked: bool = False  # wants to run but cannot be placed (rule 8)


@dataclass(frozen=True, slots=True)
class GroupDecision:
    active: str | None  # the member holding (or about to hold) the GPU
    members: dict[str, MemberDecision]
    preempted: tuple[str, ...] = ()  # members displaced by THIS decision (a swap happened)
    reason: str = ""

    def replicas(self, name: str) -> int:
        return self.members[name].replicas


def last_used_unix(m: Member) -> float | None:
    """Time of the last request (traffic or activation). A request that arrived while the model was
    loading (at most coldStartTimeout before it became Ready) is served when it becomes Ready, so the
    idle clock then starts at Ready — a slow load never eats the idle timeout."""
    times = [t for t in (m.last_active_unix, m.activate_unix) if t is not None]
    if not times:
        return None
    last = max(times)
    rs = m.ready_since_unix
    if m.phase == READY and rs is not None and rs - m.cold_start_timeout_seconds <= last <= rs:
        return rs
    return last


def demand(m: Member, now: float) -> int:
    """NONE / BASELINE / DEMAND, see the module docstring."""
    last = last_used_unix(m)
    if last is not None and now - last < m.idle_timeout_seconds:
        return DEMAND
    return BASELINE if m.min_replicas >= 1 else NONE


def _idle_words(m: Member, now: float) -> str:
    last = last_used_unix(m)
    if last is None:
        return "no traffic seen"
    return f"idle for {int(now - last)}s (timeout {int(m.idle_timeout_seconds)}s)"


def decide_single(m: Member, now: float) -> MemberDecision:
    """A model outside any shared group: serverless scale-to-minReplicas."""
    d = demand(m, now)
    if m.phase == LOADING and m.running:
        return MemberDecision(m.name, 1, False, "loading; never scaled down while loading", d)
    if d == DEMAND:
        return MemberDecision(m.name, 1, False, "recent traffic or activation", d)
    if d == BASELINE:
        return MemberDecision(m.name, 1, False, "always on (minReplicas 1)", d)
    return MemberDecision(m.name, 0, False, f"scaled to zero: {_idle_words(m, now)}", d)


def _best(cands: Iterable[Member], dem: dict[str, int]) -> Member | None:
    ordered = sorted(cands, key=lambda m: (-dem[m.name], -m.priority, m.name))
    return ordered[0] if ordered else None


def decide_group(
    members: Iterable[Member], now: float, cooldown_seconds: float, last_swap_unix: float | None = None,
    unplaceable: Mapping[str, str] | None = None,
) -> GroupDecision:
    """Decide which member of one shared group holds the GPU and every member's replicas. `unplaceable`:
    members whose pod cannot be placed even if the holder releases its GPU -> why (rule 8)."""
    blocked = dict(unplaceable or {})
    ms = sorted(members, key=lambda m: m.name)
    if not ms:
        return GroupDecision(None, {}, (), "empty group")
    dem = {m.name: demand(m, now) for m in ms}
    by_name = {m.name: m for m in ms}
    cooldown_left = 0.0 if last_swap_unix is None else max(0.0, cooldown_seconds - (now - last_swap_unix))

    holders = [m for m in ms if m.running or m.phase == LOADING]
    loading = [m for m in holders if m.phase == LOADING]
    serving = [m for m in holders if m.phase != FAILED]

    active: Member | None
    preempted: list[str] = []
    note = ""
    if loading:
        # Rule 1: a loading member keeps the GPU; anything else waits.
        active = _best(loading, dem)
        note = f"{active.name} is loading; changes wait until it is Ready or Failed"
    else:
        holder = _best(serving, dem)
        # A holder that no longer wants to run only keeps the GPU while a swap is on cooldown.
        if holder is None:
            wanting = [m for m in ms if dem[m.name] > NONE]
            startable = [m for m in wanting if m.name not in blocked]
            active = _best([m for m in startable if m.phase != FAILED], dem)
            if active is None and not any(m.phase != FAILED for m in wanting):
                active = _best(startable, dem)  # only members that failed want the GPU: retry the best one
            if active:
                note = f"nothing serving; starting {active.name}"
            else:
                note = "no member can be placed now" if wanting else "nobody wants to run"
        else:
            active = holder
            note = f"{holder.name} holds the GPU"
            winners = []
            for c in ms:
                if c.name == holder.name or dem[c.name] == NONE or c.phase == FAILED or c.name in blocked:
                    continue  # a member known to fail (or that cannot be placed) never displaces one that serves
                if c.priority > holder.priority and dem[c.name] >= dem[holder.name]:
                    winners.append(c)  # rule 3
                elif dem[c.name] > dem[holder.name] and cooldown_left <= 0:
                    winners.append(c)  # rule 4
            winner = _best(winners, dem)
            if winner is not None:
                active = winner
                preempted.append(holder.name)
                why = "higher priority" if winner.priority > holder.priority else (
                    f"{holder.name} is idle ({_idle_words(holder, now)})")
                note = (f"{winner.name} (priority {winner.priority}) preempts {holder.name} "
                        f"(priority {holder.priority}): {why}")
            elif dem[holder.name] == NONE:
                healthy = [c for c in ms if c.name != holder.name and dem[c.name] > NONE and c.phase != FAILED]
                waiting = [c for c in healthy if c.name not in blocked]
                retry = _best([c for c in ms if c.name != holder.name and dem[c.name] > NONE
                               and c.name not in blocked], dem)
                if not healthy and retry is not None:
                    active = retry  # only members that failed before want the GPU: retry the best one
                    note = f"{holder.name} is idle; retrying {retry.name}, which failed before"
                elif not waiting:
                    active = None
                    note = f"{holder.name} scaled to zero: {_idle_words(holder, now)}"
                else:
                    note = (f"{holder.name} is idle; swap to {_best(waiting, dem).name} "  # type: ignore[union-attr]
                            f"waits {int(cooldown_left)}s of cooldown")

    out: dict[str, MemberDecision] = {}
    for m in ms:
        d = dem[m.name]
        if active is not None and m.name == active.name:
            out[m.name] = MemberDecision(m.name, 1, False, note, d)
            continue
        if m.phase == LOADING and m.running:
            # two loading at once (manual scaling, restart): still never scaled down
            out[m.name] = MemberDecision(m.name, 1, False, "loading; never scaled down while loading", d)
            continue
        was_preempted = m.name in preempted or (m.phase == PREEMPTED and d > NONE) or (
            m.running and d > NONE and m.phase != FAILED)
        holder_name = active.name if active else None
        if d > NONE and m.name in blocked and not was_preempted:
            held = f" (the GPU stays with {holder_name})" if holder_name else ""
            out[m.name] = MemberDecision(m.name, 0, False, f"{blocked[m.name]}{held}", d, blocked=True)
            continue
        if d == NONE:
            reason = f"scaled to zero: {_idle_words(m, now)}"
            was_preempted = False
        elif was_preempted and holder_name:
            reason = f"preempted by {holder_name} (priority {by_name[holder_name].priority}) in this GPU group"
        elif holder_name:
            reason = f"waiting for the GPU held by {holder_name} (priority {by_name[holder_name].priority})"
        else:
            reason = "waiting for the GPU"
        out[m.name] = MemberDecision(m.name, 0, was_preempted and holder_name is not None, reason, d)
    return GroupDecision(active.name if active else None, out, tuple(preempted), note)
