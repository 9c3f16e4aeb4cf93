"""Reconcile Models into Deployments/Services/PVCs/Jobs, scale per the group decision, write status.

Flow (one pass over a set of keys): snapshot (Models, Deployments, Services, PVCs, Jobs, pods, Nodes) -> per
model the observed phase (a preemptor not Ready within its coldStartTimeout counts as Failed: rollback) and
its cache state (:mod:`controller.cache`) -> per group ``(namespace, spec.gpu.shared)`` the pure decision
(:mod:`controller.groups`; non-group models: serverless), re-made until the member it would start can be
placed by the extender's policy, counting the VRAM committed to bound model pods, with the holder's pod and
its memory released (:mod:`controller.placement`) -> the vendor of ``auto`` models by where they fit -> render
(pure) -> apply only what differs -> status patch only when it changed (phase, conditions, resolvedVendor,
loadingSubstage/loadingProgressAt, cache) and an Event when a model is blocked, rolled back or in conflict.
``reconcile_once()`` lists everything from the API and runs one pass synchronously (the demo and tests use it);
:class:`ControllerLoop` in ``main`` keeps informer caches, a work queue of keys and a periodic resync (idle
timeouts are time-based).

State kept in memory (and why it is safe to lose): the time of the last swap per group (recovered on
start from the members' ``Ready`` conditions with reason ``Preempted``; losing it at worst allows one
early equal-priority swap), preemption start times (swap-duration histogram; the rollback of a preemptor
that was never scheduled; a scheduled one is judged by its persisted ``Scheduled`` condition), and the GPU
memory seen on a loading pod's node (loading progress; losing it restarts the progress clock).

Invalid Models never crash the loop: their status gets phase Failed and the validation message, and
their existing objects are left alone. Objects the Model does not own are never touched (``ownership``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import kubernetes.client
from flexinfer.extender.commitments import Commitments, from_pods
from flexinfer.extender.policy import PolicyConfig

from flexinfer import keys, kube, logs
from flexinfer.errors import ValidationError
from flexinfer.model import Model, parse_model
from flexinfer.nodes import view_of
from flexinfer.state import NodeView, parse_rfc3339

from . import cache as cache_mod
from . import groups, loading, ownership, phases, placement, render
from .activation import activate, rfc3339
from .metrics import ControllerMetrics

__all__ = ["Controller", "PassResult", "Snapshot", "activate", "model_key", "rfc3339"]

log = logs.get("flexinfer.controller")
JSON = dict[str, Any]
Key = tuple[str, str]  # (namespace, "group:<name>" | "model:<name>")
# Failed reasons that end by themselves when their cause goes away (not "the model fails to run").
RECOVERABLE_FAILURES = frozenset({ownership.REASON, "CacheFailed"})
ROLLBACK = "ColdStartTimeout"  # Ready reason of a preemptor rolled back for not becoming Ready in time
VENDOR_CONDITION = "VendorSelected"
# Ready reasons announced with a Warning Event when a Model enters them (once, not every pass).
WARNING_EVENTS = frozenset({"PreemptionBlocked", "NoNodeFits", ROLLBACK, "CacheFailed"})
STATUS_KEYS = ("phase", "endpoint", "message", "observedGeneration", "conditions", "resolvedVendor",
               loading.STATUS_SUBSTAGE, loading.STATUS_PROGRESS_AT, "cache")


def _meta(obj: JSON) -> JSON:
    return obj.get("metadata") or {}


def _nsname(obj: JSON) -> tuple[str, str]:
    m = _meta(obj)
    return str(m.get("namespace") or "default"), str(m.get("name") or "")


@dataclass
class Snapshot:
    models: list[JSON]
    deployments: list[JSON] = field(default_factory=list)
    services: list[JSON] = field(default_factory=list)
    pvcs: list[JSON] = field(default_factory=list)
    pods: list[JSON] = field(default_factory=list)
    nodes: list[JSON] | None = None  # None: not readable (no fit checks)
    jobs: list[JSON] = field(default_factory=list)


def model_key(model_obj: JSON) -> Key:
    ns, name = _nsname(model_obj)
    spec = model_obj.get("spec") or {}
    gpu = spec.get("gpu") if isinstance(spec, dict) else None
    shared = gpu.get("shared") if isinstance(gpu, dict) else None
    if isinstance(shared, str) and shared and str((gpu or {}).get("vendor", "auto")).lower() != "cpu":
        return ns, f"group:{shared}"
    return ns, f"model:{name}"


def _deployment_vendor(dep: JSON | None) -> str:
    """The GPU vendor whose resource a Deployment's pods request ("" for none)."""
    for c in (((dep or {}).get("spec") or {}).get("template") or {}).get("spec", {}).get("containers") or []:
        limits = (c.get("resources") or {}).get("limits") or {}
        for res, vendor in keys.GPU_RESOURCES.items():
            if res in limits:
                return vendor
    return ""


def _matches(want: JSON, have: JSON) -> bool:
    """Whether every field we render is already so in the stored object. apiVersion/kind are not compared:
    the API server leaves them out of the items of a List (and so of informer caches)."""
    return _subset({k: v for k, v in want.items() if k not in ("apiVersion", "kind")}, have)


def _subset(want: Any, have: Any) -> bool:
    if isinstance(want, dict):
        return isinstance(have, dict) and all(_subset(v, have.get(k)) for k, v in want.items())
    if isinstance(want, list):
        return (isinstance(have, list) and len(want) == len(have)
                and all(_subset(a, b) for a, b in zip(want, have, strict=True)))
    return want == have or (want in ({}, [], "") and have is None)


def _status_view(status: JSON) -> JSON:
    return {k: status.get(k) for k in STATUS_KEYS}


@dataclass
class PassResult:
    """What one pass did (tests and the demo read it)."""

    decisions: dict[Key, groups.GroupDecision | groups.MemberDecision] = field(default_factory=dict)
    phases: dict[tuple[str, str], str] = field(default_factory=dict)
    writes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class NotLeader(Exception):
    """Leadership ended in the middle of a pass: the pass stops before its next write."""


@dataclass
class _Entry:
    """One valid Model during a pass."""

    obj: JSON
    m: Model
    dep: JSON | None
    replicas: int
    info: phases.PodInfo
    obs: phases.PhaseResult
    pods: list[JSON]
    cache: cache_mod.CacheState | None = None
    plan: cache_mod.Plan | None = None


@dataclass(frozen=True, slots=True)
class _Placed:
    ok: bool
    vendor: str
    reason: str  # VendorSelected condition reason
    message: str  # why this vendor / why it fits nowhere


@dataclass
class _Pass:
    now: float
    deps: dict[tuple[str, str], JSON]
    svcs: dict[tuple[str, str], JSON]
    pvcs: dict[tuple[str, str], JSON]
    jobs: dict[tuple[str, str], JSON]
    pods: dict[tuple[str, str], list[JSON]]
    nodes: list[JSON] | None
    placed: dict[tuple, _Placed] = field(default_factory=dict)
    _views: dict[str, NodeView] | None = None
    _bound: Commitments | None = None

    def bound(self) -> Commitments:
        """The VRAM committed to the model pods bound now (the extender's rule, extender.commitments), for the fit
        checks: a pod bound but not using its memory yet still holds it."""
        if self._bound is None:
            self._bound = from_pods(p for pods in self.pods.values() for p in pods)
        return self._bound

    def view(self, node: str) -> NodeView | None:
        if self.nodes is None:
            return None
        if self._views is None:
            self._views = {str(_meta(n).get("name") or ""): view_of(n) for n in self.nodes}
        return self._views.get(node)


class Controller:
    """Programmatic controller: ``reconcile_once()`` for a synchronous pass; ``reconcile(snapshot, keys)``
    for the informer-driven loop."""

    def __init__(
        self,
        api: kubernetes.client.ApiClient,
        namespace: str | None = None,
        cooldown_seconds: float = 60.0,
        metrics: ControllerMetrics | None = None,
        clock: Callable[[], float] = time.time,
        auto_vendor: str | None = None,
        options: render.RenderOptions = render.DEFAULT_OPTIONS,
        hf_prefetch_image: str = cache_mod.HF_PREFETCH_IMAGE,
        policy_clock: Callable[[], float] | None = None,
    ) -> None:
        self.api = api
        self.options = options
        self.namespace = namespace or None
        self.cooldown_seconds = float(cooldown_seconds)
        self.metrics = metrics or ControllerMetrics()
        self.clock = clock
        # "now" for the extender's policy (freshness of the agents' data); the same clock unless an embedder
        # runs the controller on simulated time while the agents publish on the wall clock (the demo)
        self.policy_clock = policy_clock or clock
        # Vendor for spec.gpu.vendor auto when Nodes cannot be read or the model fits nowhere yet.
        self.auto_vendor = auto_vendor
        self.hf_prefetch_image = hf_prefetch_image
        self.policy = PolicyConfig()
        self._last_swap: dict[Key, float] = {}
        self._swap_started: dict[tuple[str, str], tuple[float, str]] = {}  # (ns, winner) -> (t, group)
        # (ns, model) -> (unparsable flexinfer.ai/activate value, when first seen); one entry per live Model
        self._activate_seen: dict[tuple[str, str], tuple[str, float]] = {}
        self._known: set[tuple[str, str]] = set()
        self._vram_seen: dict[tuple[str, str], int] = {}  # (ns, model) -> GPU MiB in use on its pod's node
        # Asked before every write (the leader election's is_leader): a replica that lost the lease stops
        # acting mid-pass instead of finishing it.
        self.write_guard: Callable[[], bool] | None = None

    def _may_write(self) -> None:
        if self.write_guard is not None and not self.write_guard():
            raise NotLeader("not the leader (any more); this pass stops before writing")

    # -- snapshot ------------------------------------------------------------------------------
    def list_snapshot(self) -> Snapshot:
        ns = self.namespace
        managed = f"{keys.LABEL_MANAGED_BY}={keys.MANAGED_BY}"
        snap = Snapshot(
            models=kube.list_objects(self.api, keys.MODEL_PLURAL, ns),
            deployments=kube.list_objects(self.api, "deployments", ns, label_selector=managed),
            services=kube.list_objects(self.api, "services", ns, label_selector=managed),
            pvcs=kube.list_objects(self.api, "persistentvolumeclaims", ns, label_selector=managed),
            pods=kube.list_objects(self.api, "pods", ns, label_selector=keys.LABEL_MODEL),
            jobs=kube.list_objects(self.api, "jobs", ns, label_selector=managed),
        )
        try:
            snap.nodes = kube.list_objects(self.api, "nodes")
        except kube.KubeError as e:  # namespaced RBAC: no node access; no fit checks, auto -> --auto-vendor
            log.debug("nodes not listable", error=str(e))
        return snap

    def reconcile_once(self) -> PassResult:
        """List everything, decide, apply, write status. Synchronous."""
        return self.reconcile(self.list_snapshot(), None)

    # -- one pass ------------------------------------------------------------------------------
    def reconcile(self, snap: Snapshot, only: set[Key] | None) -> PassResult:
        now = self.clock()
        result = PassResult()
        pods: dict[tuple[str, str], list[JSON]] = defaultdict(list)
        for p in snap.pods:
            ns, _ = _nsname(p)
            owner = (_meta(p).get("labels") or {}).get(keys.LABEL_MODEL)
            if owner:
                pods[(ns, owner)].append(p)
        ctx = _Pass(now, {_nsname(d): d for d in snap.deployments}, {_nsname(s): s for s in snap.services},
                    {_nsname(p): p for p in snap.pvcs}, {_nsname(j): j for j in snap.jobs}, pods, snap.nodes)
        by_key: dict[Key, list[JSON]] = defaultdict(list)
        for obj in snap.models:
            if self.namespace and _nsname(obj)[0] != self.namespace:
                continue
            by_key[model_key(obj)].append(obj)
        if only is None:
            present = {_nsname(o) for o in snap.models}
            for ns_name in self._known - present:
                self.metrics.forget(*ns_name)
                self._swap_started.pop(ns_name, None)
                self._vram_seen.pop(ns_name, None)
                self._activate_seen.pop(ns_name, None)
            self._known = present
            for gone in set(self._last_swap) - set(by_key):  # groups with no Model left (recovered if they return)
                del self._last_swap[gone]
        for key in sorted(by_key):
            if only is not None and key not in only:
                continue
            try:
                self._reconcile_key(key, by_key[key], ctx, result)
            except NotLeader as e:
                result.errors.append(str(e))
                log.warning("leadership lost during a pass; stopped before the next write")
                break
            except kube.KubeError as e:
                self.metrics.reconcile_errors.labels(kind="api").inc()
                result.errors.append(f"{key[0]}/{key[1]}: {e}")
                log.warning("reconcile failed; will retry", key=f"{key[0]}/{key[1]}", error=str(e))
            except Exception as e:  # a bug or odd input in one group must not stop the others
                self.metrics.reconcile_errors.labels(kind="internal").inc()
                result.errors.append(f"{key[0]}/{key[1]}: internal error: {e!r}")
                log.exception("reconcile crashed for one key", key=f"{key[0]}/{key[1]}")
        return result

    def _reconcile_key(self, key: Key, objs: list[JSON], ctx: _Pass, result: PassResult) -> None:
        now = ctx.now
        in_group = key[1].startswith("group:")
        entries: dict[str, _Entry] = {}
        for obj in objs:
            try:
                m = parse_model(obj)
            except ValidationError as e:
                self.metrics.reconcile_errors.labels(kind="invalid").inc()
                self._write_invalid(obj, str(e), now, result)
                continue
            plan = cache_mod.plan(m)
            conflict = self._claim(m, plan, ctx)
            if conflict:
                self._write_conflict(obj, m, conflict, now, result)
                continue
            entries[m.name] = self._observe(obj, m, plan, ctx)
        if not entries:
            return
        if in_group:  # rollback: a preemptor that did not become Ready in time gives the GPU back
            preempted = [e.m.name for e in entries.values() if e.m.status.get("phase") == phases.PREEMPTED]
            for e in entries.values():
                stuck = self._stuck(e, preempted, now) if preempted and e.replicas >= 1 else ""
                if stuck:
                    e.obs = phases.PhaseResult(phases.FAILED, stuck, ROLLBACK)
        members = [self._member(e, now) for e in entries.values()]
        gate: dict[str, tuple[str, str]] = {}  # name -> (condition reason, message): cannot start now
        for name, e in entries.items():
            if e.obs.reason == ROLLBACK and e.replicas >= 1:
                gate[name] = (ROLLBACK, e.obs.message)  # rolled back now: never the one started in its place
        for name, e in entries.items():
            if e.cache is not None and not e.cache.ready and e.plan is not None and e.plan.key:
                failed = e.cache.status.get("phase") == cache_mod.FAILED
                gate[name] = ("CacheFailed" if failed else "CacheNotReady",
                              f"the model cache is not ready: {e.cache.status.get('message', '')}")
        decisions: dict[str, groups.MemberDecision]
        if in_group:
            decisions = self._decide_group(key, entries, members, gate, ctx, result)
        else:
            md = groups.decide_single(members[0], now)
            e = next(iter(entries.values()))
            if md.replicas and not e.replicas and e.m.name in gate:
                md = groups.MemberDecision(md.name, 0, False, gate[md.name][1], md.demand, blocked=True)
            result.decisions[key] = md
            decisions = {md.name: md}
        releases = [r for e in entries.values() if e.replicas >= 1 and not decisions[e.m.name].replicas
                    for r in placement.release_of(e.pods)]
        for name, e in entries.items():
            self._finish(e, decisions[name], gate.get(name), releases, ctx, result)

    def _observe(self, obj: JSON, m: Model, plan: cache_mod.Plan | None, ctx: _Pass) -> _Entry:
        dep = ctx.deps.get((m.namespace, m.name))
        replicas = int(((dep or {}).get("spec") or {}).get("replicas") or 0) if dep else 0
        pods = ctx.pods.get((m.namespace, m.name), [])
        info = phases.pod_info(pods)
        cstate = None
        if plan is not None:
            jobs = {n: ctx.jobs.get((m.namespace, n)) for n in self._job_names(m, plan)}
            cstate = cache_mod.evaluate(m, plan, jobs, m.status.get("cache") if isinstance(m.status.get("cache"),
                                                                                      dict) else None,
                                        hf_image=self.hf_prefetch_image,
                                        overrides=self.options.image_overrides)
        obs = phases.derive_phase(replicas, dep, info, self._cache_ready(m, plan, cstate),
                                  preempted=m.status.get("phase") == phases.PREEMPTED)
        if replicas == 0 and self._known_failed(m, ctx.now):
            obs = phases.PhaseResult(phases.FAILED, str(m.status.get("message") or "failed"),
                                     self._ready_reason(m) or "Failed")
        return _Entry(obj, m, dep, replicas, info, obs, pods, cstate, plan)

    @staticmethod
    def _job_names(m: Model, plan: cache_mod.Plan) -> list[str]:
        """The cache Jobs this plan may still need (none once status.cache says ready for this key)."""
        prev = m.status.get("cache") if isinstance(m.status.get("cache"), dict) else {}
        if not plan.key or (prev.get("key") == plan.key and prev.get("ready") is True):
            return []
        whats = ("prefetch", "cache-check") if plan.prefetch else ("cache-check",)
        return [cache_mod.job_name(m, what, plan.key) for what in whats]

    def _member(self, e: _Entry, now: float) -> groups.Member:
        m = e.m
        return groups.Member(
            name=m.name, priority=m.priority, phase=e.obs.phase, running=e.replicas >= 1,
            min_replicas=m.min_replicas, idle_timeout_seconds=m.idle_timeout_seconds,
            last_active_unix=parse_rfc3339(m.status.get("lastActiveTime")),
            activate_unix=self._activate_time(m, now),
            ready_since_unix=self._ready_since(m, now) if e.obs.phase == phases.READY else None,
            cold_start_timeout_seconds=m.cold_start_timeout_seconds,
        )

    def _stuck(self, e: _Entry, preempted: list[str], now: float) -> str:
        """A running member that took the GPU and is not Ready within its coldStartTimeout (since it was
        scheduled, or since the swap when it never was): the rollback message, else ""."""
        if e.obs.phase not in (phases.LOADING, phases.PENDING):
            return ""
        others = [p for p in preempted if p != e.m.name]
        if not others:
            return ""
        cold = e.m.cold_start_timeout_seconds
        since = None
        became_unready = None
        for c in e.m.status.get("conditions") or []:
            if isinstance(c, dict) and c.get("type") == "Scheduled" and c.get("status") == "True":
                since = parse_rfc3339(c.get("lastTransitionTime"))
            if isinstance(c, dict) and c.get("type") == "Ready" and c.get("status") == "False":
                became_unready = parse_rfc3339(c.get("lastTransitionTime"))
        if since is not None and became_unready is not None and became_unready > since:
            return ""  # it was Ready after it was scheduled: the swap worked; a later failure is not a cold start
        what = "scheduled"
        if since is None and (e.m.namespace, e.m.name) in self._swap_started:
            since, what = self._swap_started[(e.m.namespace, e.m.name)][0], "given the GPU"
        if since is None or now - since <= cold:
            return ""
        names = ", ".join(others)
        return (f"not Ready {int(now - since)}s after it was {what} (coldStartTimeout {int(cold)}s): rolled back, "
                f"the GPU goes back to {names}; activate it to try again")

    def _decide_group(self, key: Key, entries: dict[str, _Entry], members: list[groups.Member],
                      gate: dict[str, tuple[str, str]], ctx: _Pass, result: PassResult
                      ) -> dict[str, groups.MemberDecision]:
        ns, now = key[0], ctx.now
        if key not in self._last_swap:
            recovered = self._recover_last_swap([e.m for e in entries.values()])
            if recovered is not None:
                self._last_swap[key] = recovered
        unplaceable = {name: msg for name, (_, msg) in gate.items()}
        while True:  # ends: every round adds a member to `unplaceable`
            gd = groups.decide_group(members, now, self.cooldown_seconds, self._last_swap.get(key), unplaceable)
            starting = gd.active
            if starting is None or ctx.nodes is None or entries[starting].replicas >= 1:
                break
            holders = [x.name for x in members if x.running and x.name != starting]
            releases = [r for h in holders for r in placement.release_of(entries[h].pods)]
            placed = self._placement(entries[starting].m, releases, ctx)
            if placed.ok:
                break
            if holders:
                who = ", ".join(holders)
                msg = (f"cannot preempt {who}: {starting} fits on no node even with the GPU {who} holds "
                       f"released ({placed.message})")
                gate[starting] = ("PreemptionBlocked", msg)
            else:
                gate[starting] = ("NoNodeFits", f"fits on no node now ({placed.message})")
            unplaceable[starting] = gate[starting][1]
            log.debug("start blocked: the model fits nowhere", namespace=ns, model=starting, holders=holders,
                      why=placed.message)
        result.decisions[key] = gd
        if gd.preempted:
            self._last_swap[key] = now
            group = key[1].removeprefix("group:")
            self.metrics.preemptions.labels(model_namespace=ns, group=group).inc(len(gd.preempted))
            if gd.active:
                self._swap_started[(ns, gd.active)] = (now, group)
            log.info("group swap", namespace=ns, group=group, active=gd.active, preempted=list(gd.preempted),
                     reason=gd.reason)
        return gd.members

    # -- placement and vendor ------------------------------------------------------------------
    def _placement(self, m: Model, releases: list[placement.Release], ctx: _Pass) -> _Placed:
        """Where `m` would go now (after `releases`), with the extender's policy. Memoised per pass."""
        memo_key = (m.namespace, m.name, tuple(releases))
        hit = ctx.placed.get(memo_key)
        if hit is not None:
            return hit
        assert ctx.nodes is not None
        fixed = self._fixed_vendor(m)
        vendors = [fixed[0]] if fixed else ["nvidia", "amd"]
        now = self.policy_clock()
        fits = {v: placement.place(placement.pod_of(render.render_deployment(m, 1, v, self.options)), ctx.nodes,
                                   now, releases=releases, config=self.policy, bound=ctx.bound()) for v in vendors}
        if fixed:
            f = fits[fixed[0]]
            where = f"fits on {f.node} (GPU {','.join(map(str, f.gpus))}, score {f.score})" if f.ok else f.reason
            out = _Placed(f.ok, fixed[0], fixed[1], f"{fixed[2]}; {where}")
        else:
            pinned = self.auto_vendor or ""
            vendor, why = placement.choose_vendor(fits, pinned)
            out = _Placed(fits[vendor].ok, vendor, "FitsNow" if fits[vendor].ok else "NoFitNow", why)
        ctx.placed[memo_key] = out
        return out

    @staticmethod
    def _fixed_vendor(m: Model) -> tuple[str, str, str] | None:
        """(vendor, reason, message) when the Model pins its vendor."""
        pinned = render.pinned_vendor(m)
        return (pinned[0], "Pinned", pinned[1]) if pinned else None

    def _vendor(self, e: _Entry, d: groups.MemberDecision, releases: list[placement.Release], ctx: _Pass
                ) -> tuple[str, str, str]:
        """(vendor, condition reason, message) of the GPU resource the pod requests."""
        m = e.m
        fixed = self._fixed_vendor(m)
        if fixed:
            return fixed
        current = _deployment_vendor(e.dep)
        starting = d.replicas >= 1 and e.replicas == 0
        if current and not starting:  # never switch a running (or parked) Deployment's vendor in passing
            prev = next((c for c in m.status.get("conditions") or []
                         if isinstance(c, dict) and c.get("type") == VENDOR_CONDITION), None)
            if prev is not None and m.status.get("resolvedVendor") == current:
                return current, str(prev.get("reason") or "Kept"), str(prev.get("message") or "")
            return current, "Kept", f"{current}: the Deployment already requests it"
        if ctx.nodes is None:
            fallback = self.auto_vendor or current or "nvidia"
            return fallback, "NodesUnknown", (f"cannot read Nodes (RBAC): requesting {fallback} "
                                              "(flexinfer-controller --auto-vendor)")
        placed = self._placement(m, releases if starting else [], ctx)
        return placed.vendor, placed.reason, f"{placed.vendor}: {placed.message}"

    # -- per model -----------------------------------------------------------------------------
    def _finish(self, e: _Entry, d: groups.MemberDecision, gated: tuple[str, str] | None,
                releases: list[placement.Release], ctx: _Pass, result: PassResult) -> None:
        m, now = e.m, ctx.now
        vendor, v_reason, v_message = self._vendor(e, d, releases, ctx) if m.needs_gpu else ("cpu", "", "")
        if e.plan is not None:
            self._apply_cache(e, ctx, result)
        dep = self._apply_model(m, d, e.dep, ctx, vendor, result)
        waiting = d.replicas == 0 and not d.preempted and d.demand > groups.NONE
        blocked = gated[0] if (d.blocked and gated) else ("Unschedulable" if d.blocked else "")
        ph = phases.derive_phase(d.replicas, dep, e.info, self._cache_ready(m, e.plan, e.cache), d.preempted, d.reason,
                                 waiting, blocked)
        if d.replicas == 0 and blocked == "CacheFailed":
            ph = phases.PhaseResult(phases.FAILED, d.reason, "CacheFailed")
        elif d.replicas == 0 and (e.obs.phase == phases.FAILED or self._known_failed(m, now)):
            # scaled down because it fails: keep saying so (until the spec changes or someone activates it)
            ph = phases.PhaseResult(phases.FAILED, e.obs.message, e.obs.reason)
        result.phases[(m.namespace, m.name)] = ph.phase
        extra: JSON = {"resolvedVendor": vendor if m.needs_gpu else None,
                       "cache": e.cache.status if e.cache is not None else None}
        extra.update(self._loading(e, ph, ctx))
        vendor_cond = (VENDOR_CONDITION, "False" if v_reason in ("NoFitNow", "NodesUnknown") else "True",
                       v_reason, v_message) if m.needs_gpu else None
        self._write_status(e.obj, m, ph, e.info, now, result, extra, vendor_cond)

    def _loading(self, e: _Entry, ph: phases.PhaseResult, ctx: _Pass) -> JSON:
        """status.loadingSubstage / loadingProgressAt (controller.loading) while the pod loads."""
        key = (e.m.namespace, e.m.name)
        if ph.phase not in (phases.LOADING, phases.PENDING) or not e.pods:
            self._vram_seen.pop(key, None)
            return {loading.STATUS_SUBSTAGE: None, loading.STATUS_PROGRESS_AT: None}
        pod = loading.current_pod(e.pods)
        node = str(((pod or {}).get("spec") or {}).get("nodeName") or "")
        view = ctx.view(node) if node else None
        used = sum(g.used_mib for g in view.state.gpus) if view is not None and view.state is not None else None
        before = self._vram_seen.get(key)
        if used is not None:
            self._vram_seen[key] = used
        state = loading.derive(e.pods, e.m.status, ctx.now, vram_used_mib=used, previous_vram_used_mib=before)
        if not state.substage:
            return {loading.STATUS_SUBSTAGE: None, loading.STATUS_PROGRESS_AT: None}
        at = rfc3339(state.progress_unix) if state.progress_unix is not None else None
        return {loading.STATUS_SUBSTAGE: state.substage, loading.STATUS_PROGRESS_AT: at}

    # -- ownership -------------------------------------------------------------------------------
    def _owned(self, m: Model, plural: str, kind: str, name: str, cache: dict) -> str:
        """"" when the object named `name` is absent or ours (then it is put into `cache`); else the
        conflict message. The caches hold only objects with our managed-by label, so an absent entry is
        looked up once: an object someone else made has no such label."""
        key = (m.namespace, name)
        obj = cache.get(key)
        if obj is None:
            obj = kube.get_object(self.api, plural, name, m.namespace)
            if obj is None:
                return ""
        if ownership.owned_by(obj, m):
            cache[key] = obj  # e.g. created by the previous pass, not yet in the informer cache
            return ""
        cache.pop(key, None)
        return ownership.conflict_message(kind, obj)

    def _claim(self, m: Model, plan: cache_mod.Plan | None, ctx: _Pass) -> str:
        """The first object of `m` that exists but is not ours (its conflict message), else ""."""
        checks = [("deployments", "Deployment", m.name, ctx.deps), ("services", "Service", m.name, ctx.svcs)]
        pvc = render.render_pvc(m)
        if pvc is not None:
            checks.append(("persistentvolumeclaims", "PersistentVolumeClaim", pvc["metadata"]["name"], ctx.pvcs))
        if plan is not None:
            checks += [("jobs", "Job", name, ctx.jobs) for name in self._job_names(m, plan)]
        for plural, kind, name, cache in checks:
            conflict = self._owned(m, plural, kind, name, cache)
            if conflict:
                return conflict
        return ""

    def _write_conflict(self, obj: JSON, m: Model, message: str, now: float, result: PassResult) -> None:
        ph = phases.PhaseResult(phases.FAILED, message, ownership.REASON)
        result.phases[(m.namespace, m.name)] = ph.phase
        if self._write_status(obj, m, ph, phases.PodInfo(), now, result):
            self._event(m, ownership.REASON, message, warning=True)
        log.warning("ownership conflict: leaving the object alone", namespace=m.namespace, model=m.name,
                    conflict=message)

    # -- inputs ----------------------------------------------------------------------------------
    @staticmethod
    def _cache_ready(m: Model, plan: cache_mod.Plan | None, state: cache_mod.CacheState | None) -> bool | None:
        """The cache's readiness: this pass's evaluation when the plan has something to check, else status.cache."""
        if state is not None and plan is not None and plan.key:
            return state.ready
        cache = m.status.get("cache")
        if isinstance(cache, dict) and "ready" in cache:
            return bool(cache["ready"]) if cache.get("ready") is not None else None
        return None

    def _activate_time(self, m: Model, now: float) -> float | None:
        raw = m.annotations.get(keys.MODEL_ACTIVATE)
        if raw is None:
            return None
        t = parse_rfc3339(raw)
        if t is not None:
            return min(t, now)
        # "any value = time": an unparsable value counts from when this controller first saw it
        seen = self._activate_seen.get((m.namespace, m.name))
        if seen is None or seen[0] != raw:
            seen = self._activate_seen[(m.namespace, m.name)] = (raw, now)
        return seen[1]

    @staticmethod
    def _ready_reason(m: Model) -> str:
        for c in m.status.get("conditions") or []:
            if isinstance(c, dict) and c.get("type") == "Ready":
                return str(c.get("reason") or "")
        return ""

    def _known_failed(self, m: Model, now: float) -> bool:
        """Status says Failed for this generation, and nobody asked for a retry since it failed."""
        st = m.status
        if st.get("phase") != phases.FAILED or st.get("observedGeneration") != m.generation:
            return False
        if self._ready_reason(m) in RECOVERABLE_FAILURES:
            return False  # failed because of something outside the model (e.g. a conflicting object): re-check
        failed_at = ready_at = None
        for c in st.get("conditions") or []:
            if isinstance(c, dict) and c.get("type") == "Failed" and c.get("status") == "True":
                failed_at = parse_rfc3339(c.get("lastTransitionTime"))
            if isinstance(c, dict) and c.get("type") == "Ready":
                ready_at = parse_rfc3339(c.get("lastTransitionTime"))
        failed_at = failed_at if failed_at is not None else ready_at  # status written before the Failed condition
        act = self._activate_time(m, now)
        return not (act is not None and failed_at is not None and act > failed_at)

    @staticmethod
    def _ready_since(m: Model, now: float) -> float:
        for c in m.status.get("conditions") or []:
            if isinstance(c, dict) and c.get("type") == "Ready" and c.get("status") == "True":
                t = parse_rfc3339(c.get("lastTransitionTime"))
                if t is not None:
                    return t
        return now

    @staticmethod
    def _recover_last_swap(models: list[Model]) -> float | None:
        times = []
        for m in models:
            for c in m.status.get("conditions") or []:
                if isinstance(c, dict) and c.get("type") == "Ready" and c.get("reason") == "Preempted":
                    t = parse_rfc3339(c.get("lastTransitionTime"))
                    if t is not None:
                        times.append(t)
        return max(times) if times else None

    # -- writes ----------------------------------------------------------------------------------
    def _apply_cache(self, e: _Entry, ctx: _Pass, result: PassResult) -> None:
        """The cache PVC (access mode from its storage class) and the prefetch/check Jobs the state asks for."""
        m, ns = e.m, e.m.namespace
        pvc = render.render_pvc(m)
        access = ""
        if pvc is not None:
            cur = ctx.pvcs.get((ns, pvc["metadata"]["name"]))
            if cur is None:
                access, why = cache_mod.access_mode(self._storage_class(m.spec.cache.storage_class))
                pvc = render.render_pvc(m, access)
                self._may_write()
                kube.apply_object(self.api, pvc)
                result.writes.append(f"apply PersistentVolumeClaim {ns}/{pvc['metadata']['name']} {access}")
                log.info("cache PVC created", namespace=ns, model=m.name, access_mode=access, why=why)
            else:
                access = ",".join((cur.get("spec") or {}).get("accessModes") or [])
        if e.cache is None:
            return
        if access and e.cache.status.get("accessMode") != access:
            e.cache = cache_mod.CacheState({**e.cache.status, "accessMode": access}, e.cache.create)
        for job in e.cache.create:
            self._may_write()
            kube.create_object(self.api, job, retry=kube.NO_RETRY)
            result.writes.append(f"create Job {ns}/{job['metadata']['name']}")
            self._event(m, "CacheJob", f"started Job {job['metadata']['name']}")

    def _storage_class(self, name: str | None) -> JSON | None:
        """The named StorageClass, else the cluster's default one; None when unknown or not readable."""
        try:
            if name:
                return kube.get_object(self.api, "storageclasses", name, retry=kube.NO_RETRY)
            return cache_mod.default_class(kube.list_objects(self.api, "storageclasses", retry=kube.NO_RETRY))
        except kube.KubeError as e:
            log.info("storage class not readable; the cache PVC asks for ReadWriteOnce", error=str(e))
            return None

    def _apply_model(self, m: Model, d: groups.MemberDecision, dep: JSON | None, ctx: _Pass,
                     vendor: str, result: PassResult) -> JSON | None:
        """Make the Deployment and Service match; returns the Deployment as it now stands."""
        ns = m.namespace
        want = render.render_deployment(m, d.replicas, vendor, self.options)
        if dep is None:
            self._may_write()
            dep = kube.apply_object(self.api, want)
            result.writes.append(f"create Deployment {ns}/{m.name} replicas={d.replicas}")
        else:
            cur_replicas = int((dep.get("spec") or {}).get("replicas") or 0)
            rest = {**want, "spec": {k: v for k, v in want["spec"].items() if k != "replicas"}}
            if not _matches(rest, dep):
                self._may_write()
                dep = kube.apply_object(self.api, want)
                result.writes.append(f"update Deployment {ns}/{m.name} replicas={d.replicas}")
            elif cur_replicas != d.replicas:
                self._may_write()
                dep = kube.scale_deployment(self.api, ns, m.name, d.replicas)
                result.writes.append(f"scale Deployment {ns}/{m.name} {cur_replicas}->{d.replicas}")
                reason = "ScaledUp" if d.replicas else ("Preempted" if d.preempted else "ScaledToZero")
                self._event(m, reason, f"{cur_replicas} -> {d.replicas} replicas: {d.reason}")
        svc = render.render_service(m)
        cur_svc = ctx.svcs.get((ns, m.name))
        if cur_svc is None or not _matches(svc, cur_svc):
            self._may_write()
            kube.apply_object(self.api, svc)
            result.writes.append(f"apply Service {ns}/{m.name}")
        return dep

    def _event(self, m: Model, reason: str, message: str, *, warning: bool = False) -> None:
        """A Kubernetes Event on the Model (best effort: never fails the pass)."""
        now = rfc3339(self.clock())
        ev = {"apiVersion": "v1", "kind": "Event",
              "metadata": {"name": f"{m.name}.{uuid.uuid4().hex[:16]}", "namespace": m.namespace},
              "involvedObject": {"apiVersion": keys.MODEL_API_VERSION, "kind": keys.MODEL_KIND, "name": m.name,
                                 "namespace": m.namespace, "uid": m.uid},
              "reason": reason, "message": message[:1024], "type": "Warning" if warning else "Normal", "count": 1,
              "firstTimestamp": now, "lastTimestamp": now,
              "source": {"component": keys.MANAGED_BY}, "reportingComponent": keys.MANAGED_BY}
        self._may_write()
        try:
            kube.create_object(self.api, ev, retry=kube.NO_RETRY)
        except kube.KubeError as e:
            log.debug("event not recorded", error=str(e))

    def _write_status(self, obj: JSON, m: Model, ph: phases.PhaseResult, info: phases.PodInfo, now: float,
                      result: PassResult, extra: JSON | None = None,
                      vendor_cond: tuple[str, str, str, str] | None = None) -> bool:
        """Patch the status when it changed; True when it was written. `extra`: further status fields (None
        removes one); `vendor_cond`: the VendorSelected condition (type, status, reason, message)."""
        prev = m.status
        conds = phases.conditions_for(ph, prev.get("conditions") or [], rfc3339(now), m.generation, info)
        if vendor_cond is not None:
            conds = phases.set_condition(conds, *vendor_cond, rfc3339(now), m.generation)
        new = {"phase": ph.phase, "endpoint": render.endpoint(m), "message": ph.message,
               "observedGeneration": m.generation, "conditions": conds, **(extra or {})}
        prev_phase = prev.get("phase")
        self.metrics.set_phase(m.namespace, m.name, ph.phase, prev_phase)
        if ph.phase == phases.READY and (m.namespace, m.name) in self._swap_started:
            t0, group = self._swap_started.pop((m.namespace, m.name))
            self.metrics.swap_duration.labels(model_namespace=m.namespace, group=group).observe(max(0.0, now - t0))
        if _status_view(new) == _status_view(prev):
            return False
        self._may_write()
        kube.patch_model_status(self.api, m.namespace, m.name, new)
        result.writes.append(f"status {m.namespace}/{m.name} {prev_phase}->{ph.phase}")
        log.info("model status", namespace=m.namespace, model=m.name, phase=ph.phase, message=ph.message)
        reason = phases.condition_reason(ph.reason)
        if reason in WARNING_EVENTS and reason != self._ready_reason(m):
            self._event(m, reason, ph.message, warning=True)
        return True

    def _write_invalid(self, obj: JSON, message: str, now: float, result: PassResult) -> None:
        ns, name = _nsname(obj)
        prev = obj.get("status") if isinstance(obj.get("status"), dict) else {}
        gen = _meta(obj).get("generation")
        gen = gen if isinstance(gen, int) and not isinstance(gen, bool) else 0
        ph = phases.PhaseResult(phases.FAILED, f"invalid Model: {message}", "InvalidSpec")
        conds = phases.conditions_for(ph, prev.get("conditions") or [], rfc3339(now), gen)
        new = {"phase": ph.phase, "message": ph.message, "observedGeneration": gen, "conditions": conds}
        result.phases[(ns, name)] = ph.phase
        if _status_view({**new, "endpoint": prev.get("endpoint")}) == _status_view(prev):
            return
        self._may_write()
        try:
            kube.patch_model_status(self.api, ns, name, new)
            result.writes.append(f"status {ns}/{name} invalid")
        except kube.KubeError as e:
            result.errors.append(f"{ns}/{name}: {e}")
        log.warning("invalid Model", namespace=ns, model=name, error=message)


def dumps(result: PassResult) -> str:  # pragma: no cover - debugging aid
    return json.dumps({"writes": result.writes, "errors": result.errors,
                       "phases": {f"{k[0]}/{k[1]}": v for k, v in result.phases.items()}}, indent=2)
