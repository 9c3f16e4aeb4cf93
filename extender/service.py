"""The extender core shared by HTTP and gRPC: cache + reservations + policy + metrics + logs.

No I/O here besides logging; in particular no API-server calls on the request path.
"""

from __future__ import annotations

import logging
import time
from collections import Counter as TallyCounter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flexinfer import logs
from flexinfer.state import NodeView

from .cache import NodeCache
from .metrics import ExtenderMetrics
from .pod import PodRequirements, requirements_from_dict
from .policy import NodeVerdict, PolicyConfig, StaticFit, evaluate, static_check, static_key
from .reservations import Reservations

log = logs.get("flexinfer.extender")


def _valid_until(view: NodeView, now: float, cfg: PolicyConfig) -> float:
    """Until when a verdict computed at `now` for this exact view stays right (no reservations)."""
    state = view.state
    if state is None:
        return float("inf")
    stale_at = state.observed_unix + cfg.max_state_age_seconds
    if now > stale_at:
        return float("inf")  # already stale: stays stale until the Node object changes
    until = stale_at
    for g in state.gpus:
        end = g.last_error_unix + cfg.error_window_seconds
        if g.last_error_unix and now <= end:
            until = min(until, end)
    return until


@dataclass(slots=True)
class FilterOutcome:
    verdicts: list[NodeVerdict]
    passed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    unresolvable: dict[str, str] = field(default_factory=dict)


def _rfc3339_unix(value: object) -> float:
    if not isinstance(value, str) or not value:
        return 0.0
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _ready_unix(pod: Mapping[str, Any]) -> float:
    status = pod.get("status") or {}
    for c in status.get("conditions") or ():
        if isinstance(c, dict) and c.get("type") == "Ready" and c.get("status") == "True":
            return _rfc3339_unix(c.get("lastTransitionTime")) or time.time()
    return 0.0


class Extender:
    def __init__(
        self,
        cache: NodeCache,
        config: PolicyConfig | None = None,
        reservations: Reservations | None = None,
        metrics: ExtenderMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cache = cache
        self.config = config or PolicyConfig()
        self.reservations = reservations if reservations is not None else Reservations()
        self.metrics = metrics or ExtenderMetrics()
        self.clock = clock
        # static_key -> node -> (view, static_check result); valid while the cache holds that view.
        self._static: dict[tuple, dict[str, tuple[NodeView, NodeVerdict | StaticFit]]] = {}
        self.memo_shape_limit = 64  # pod shapes kept (each maps every node); cleared beyond
        # verdict_key -> node -> (view, verdict, valid_until_unix): whole verdicts for nodes that hold no
        # reservation. A verdict only changes when the Node object changes (a new view), a reservation
        # lands on the node, or time passes a boundary (state turning stale, an Xid penalty ending), so
        # thousands of nodes cost one dict lookup each for a pod shape seen before.
        self._verdicts: dict[tuple, dict[str, tuple[NodeView, NodeVerdict, float]]] = {}

    # --- evaluation ------------------------------------------------------------------------
    def _evaluate(self, req: PodRequirements, names: Sequence[str],
                  views: Mapping[str, NodeView] | None, now: float) -> list[NodeVerdict]:
        get = views.get if views is not None else self.cache.lookup
        res = self.reservations if req.needs_gpu else None
        cfg = self.config
        # Two-level memos (pod shape -> node -> entry): the shape tuple is hashed once per request,
        # not once per node (CPython does not cache tuple hashes).
        skey = static_key(req)
        vkey = (skey, tuple(req.preferred_archs), cfg.strategy, cfg.max_state_age_seconds,
                cfg.error_window_seconds)
        if len(self._static) > self.memo_shape_limit:
            self._static.clear()
        if len(self._verdicts) > self.memo_shape_limit:
            self._verdicts.clear()
        memo = self._static.setdefault(skey, {})
        vmemo = self._verdicts.setdefault(vkey, {})
        memoize = res is not None and req.managed and not req.error
        held = res.nodes_holding() if memoize else frozenset()
        out = []
        for name in names:
            view = get(name)
            if memoize and view is not None and name not in held:
                hit = vmemo.get(name)
                if hit is not None and hit[0] is view and now < hit[2]:
                    out.append(hit[1])
                    continue
            reserved = None
            static = None
            if res is not None and view is not None:
                shit = memo.get(name)
                if shit is not None and shit[0] is view:
                    static = shit[1]
                else:
                    static = static_check(req, view)
                    memo[name] = (view, static)
                if view.state is not None:
                    reserved = res.reserved_mib(name, now, exclude_pod=req.key,
                                                observed_unix=view.state.observed_unix)
            verdict = evaluate(req, view, now, cfg, reserved, node=name, static=static)
            if memoize and view is not None and not reserved and name not in held:
                vmemo[name] = (view, verdict, _valid_until(view, now, cfg))
            out.append(verdict)
        return out

    def _record(self, verb: str, req: PodRequirements, verdicts: list[NodeVerdict], elapsed: float,
                split: FilterOutcome | None = None) -> None:
        m = self.metrics
        m.request_duration.labels(verb).observe(elapsed)
        m.nodes_per_request.labels(verb).observe(len(verdicts))
        if split is not None:  # counted from the maps filter built anyway (C-speed Counter over values)
            feasible = len(split.passed)
            tally = TallyCounter({(True, r): n for r, n in TallyCounter(split.unresolvable.values()).items()})
            tally.update({(False, r): n for r, n in TallyCounter(split.failed.values()).items()})
        else:
            rejected = [v for v in verdicts if not v.feasible]
            feasible = len(verdicts) - len(rejected)
            tally = TallyCounter((v.unresolvable, v.reason) for v in rejected)
        if feasible:
            m.verdicts.labels(verb, "pass", "").inc(feasible)
        for (unresolvable, reason), n in tally.items():
            m.verdicts.labels(verb, "unresolvable" if unresolvable else "failed", reason[:120]).inc(n)
        m.reservations.set(len(self.reservations))
        reasons = {reason: n for (_, reason), n in tally.items()}
        log.info(f"extender_{verb}", pod=f"{req.namespace}/{req.name}", managed=req.managed,
                 nodes=len(verdicts), feasible=feasible, rejected=reasons, ms=round(elapsed * 1000, 2))
        bound = log.bind()
        if hasattr(bound, "is_enabled_for") and not bound.is_enabled_for(logging.DEBUG):
            return
        for v in verdicts:
            bound.debug("extender_node_verdict", verb=verb, pod=f"{req.namespace}/{req.name}", node=v.node,
                      result=v.result, reason=v.reason, detail=v.detail, score=v.score)

    def filter(self, req: PodRequirements, names: Sequence[str],
               views: Mapping[str, NodeView] | None = None) -> FilterOutcome:
        """Verdicts for the named nodes. `views` (nodes mode): NodeViews from the request itself."""
        t0 = time.perf_counter()
        now = self.clock()
        if req.needs_gpu:
            with self.reservations.lock:
                out = self._split(self._evaluate(req, names, views, now))
                if len(out.passed) == 1:
                    # kube-scheduler skips prioritize with one feasible node: this is its choice.
                    v = next(v for v in out.verdicts if v.feasible)
                    self.reservations.reserve(req.key, v.node, v.gpus, req.vram_estimate_mib, now)
        else:
            out = self._split(self._evaluate(req, names, views, now))
        self._record("filter", req, out.verdicts, time.perf_counter() - t0, out)
        return out

    @staticmethod
    def _split(verdicts: list[NodeVerdict]) -> FilterOutcome:
        """One pass: passed names, FailedNodes, FailedAndUnresolvableNodes."""
        out = FilterOutcome(verdicts)
        passed, failed, unresolvable = out.passed.append, out.failed, out.unresolvable
        for v in verdicts:
            if v.feasible:
                passed(v.node)
            elif v.unresolvable:
                unresolvable[v.node] = v.reason
            else:
                failed[v.node] = v.reason
        return out

    def prioritize(self, req: PodRequirements, names: Sequence[str],
                   views: Mapping[str, NodeView] | None = None) -> list[NodeVerdict]:
        """Scores for the named nodes (0 for infeasible ones); reserves on the best node."""
        t0 = time.perf_counter()
        now = self.clock()
        if req.needs_gpu:
            with self.reservations.lock:
                verdicts = self._evaluate(req, names, views, now)
                best = max((v for v in verdicts if v.feasible), key=lambda v: v.score, default=None)
                if best is not None:
                    self.reservations.reserve(req.key, best.node, best.gpus, req.vram_estimate_mib, now)
        else:
            verdicts = self._evaluate(req, names, views, now)
        self._record("prioritize", req, verdicts, time.perf_counter() - t0)
        return verdicts

    def explain(self, req: PodRequirements, names: Sequence[str] | None = None,
                views: Mapping[str, NodeView] | None = None) -> list[NodeVerdict]:
        """Every node's verdict with details; reserves nothing. No names: every cached node."""
        t0 = time.perf_counter()
        names = list(names) if names else sorted(self.cache.names())
        verdicts = self._evaluate(req, names, views, self.clock())
        self._record("explain", req, verdicts, time.perf_counter() - t0)
        return verdicts

    def refresh_gauges(self) -> None:
        self.metrics.cache_nodes.set(len(self.cache))
        age = self.cache.age_seconds()
        self.metrics.cache_age.set(age if age != float("inf") else -1)
        self.reservations.expire(self.clock(), self._observed_unix)
        self.metrics.reservations.set(len(self.reservations))

    def _observed_unix(self, node: str) -> float:
        view = self.cache.get(node)
        return view.state.observed_unix if view is not None and view.state is not None else 0.0

    # --- pod watch (reservation confirmation) --------------------------------------------
    def on_pod_event(self, kind: str, obj: dict[str, Any]) -> None:
        """Informer callback for Pods: confirm reservations on bind, drop them on delete/finish."""
        if kind == "SYNC":
            items = [i for i in (obj or {}).get("items") or () if isinstance(i, dict)]
            live = set()
            for item in items:
                key = self._pod_event(item, deleted=False)
                if key:
                    live.add(key)
            for r in self.reservations.all():
                if r.bound and r.pod not in live:
                    self.reservations.release(r.pod)
            return
        if isinstance(obj, dict):
            self._pod_event(obj, deleted=(kind == "DELETED"))

    def _pod_event(self, pod: dict[str, Any], *, deleted: bool) -> str:
        try:
            req = requirements_from_dict(pod)
        except ValueError:
            return ""
        if not req.managed:
            return ""
        key = req.key
        phase = (pod.get("status") or {}).get("phase")
        node = (pod.get("spec") or {}).get("nodeName") or ""
        if deleted or phase in ("Succeeded", "Failed") or (pod.get("metadata") or {}).get("deletionTimestamp"):
            self.reservations.release(key)
            return ""
        if not node or not req.needs_gpu:
            return key
        now = self.clock()

        def pick(n: str) -> tuple[tuple[int, ...], int] | None:
            view = self.cache.get(n)
            observed = view.state.observed_unix if view is not None and view.state is not None else 0.0
            reserved = self.reservations.reserved_mib(n, now, exclude_pod=key, observed_unix=observed)
            v = evaluate(req, view, now, self.config, reserved, node=n)
            return (v.gpus, req.vram_estimate_mib) if v.feasible else None

        with self.reservations.lock:
            self.reservations.confirm(key, node, now, ready_unix=_ready_unix(pod), pick=pick)
        return key
