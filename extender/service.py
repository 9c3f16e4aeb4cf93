"""The extender core shared by HTTP and gRPC: cache + reservations + commitments + policy + metrics + logs.

No I/O here besides logging; in particular no API-server calls on the request path.
"""

from __future__ import annotations

import logging
import time
from collections import Counter as TallyCounter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flexinfer import logs
from flexinfer.nodes import NodeViewMemo
from flexinfer.state import NodeView

from .cache import NodeCache
from .commitments import Commitment, Release, commitment_of, finished, released_view
from .memo import FilterAnswer, NameIntern, Names, NodeNames, ShapeMemo, VerdictCache, rejudged, tally_of
from .metrics import ExtenderMetrics
from .pod import PodRequirements, requirements_from_dict
from .policy import R_PODS_NOT_SYNCED, NodeVerdict, PolicyConfig, commit_gpus, evaluate, lead
from .reservations import Reservations

log = logs.get("flexinfer.extender")


@dataclass(slots=True)
class FilterOutcome:
    """Filter's answer. `verdicts` (in request order) is None when the answer came from the verdict
    cache; `verdict(name)` / `all_verdicts(names)` give them either way. The lists and maps may be the verdict
    cache's own (shared between requests): read them, never change them."""

    verdicts: list[NodeVerdict] | None
    passed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    unresolvable: dict[str, str] = field(default_factory=dict)
    count: int = 0
    lookup: Callable[[str], NodeVerdict] | None = None
    tally: TallyCounter[tuple[bool, str]] = field(default_factory=TallyCounter)  # (unresolvable, reason) -> nodes

    def verdict(self, name: str) -> NodeVerdict:
        if self.lookup is not None:
            return self.lookup(name)
        assert self.verdicts is not None
        return next(v for v in self.verdicts if v.node == name)

    def all_verdicts(self, names: Sequence[str]) -> list[NodeVerdict]:
        if self.verdicts is not None:
            return self.verdicts
        return [self.verdict(n) for n in names]


@dataclass(slots=True)
class PriorityOutcome:
    """Prioritize's answer: `scores[i]` for `names[i]` (0 = not feasible); `best` = index of the node the
    pod was reserved on (-1: none feasible). `verdict(name)` gives the full verdict; `tally` counts the
    rejections by (unresolvable, reason) for the metrics."""

    names: Sequence[str]
    scores: list[int]
    best: int
    lookup: Callable[[str], NodeVerdict]
    tally: TallyCounter[tuple[bool, str]]

    def verdict(self, name: str) -> NodeVerdict:
        return self.lookup(name)

    def verdicts(self) -> list[NodeVerdict]:
        return [self.lookup(n) for n in self.names]


def _as_in(base: FilterAnswer, v: NodeVerdict) -> bool:
    """The per-request verdict puts its node where the index answer has it already (passing, or rejected with the
    same reason): e.g. the reservation on it is the asking pod's own (kube-scheduler asking again)."""
    if v.feasible:
        return v.node in base.passing
    return (base.unresolvable if v.unresolvable else base.failed).get(v.node) == v.reason


def _with_specials(base: FilterAnswer, special: Iterable[NodeVerdict], *, maps: bool = True,
                   ) -> tuple[dict[str, str], dict[str, str], TallyCounter[tuple[bool, str]]]:
    """The index answer's FailedNodes, FailedAndUnresolvableNodes and tally with the verdicts of nodes holding
    reservations (evaluated for this request) in place of the index's. A map no such verdict changes is the
    index answer's own object (shared, never changed by its users; its encoding is kept), a changed one a copy.
    `maps=False`: the tally only (the two maps come back empty)."""
    special = [v for v in special if not _as_in(base, v)]
    if not special:  # the cached answer itself (shared: never changed by its users)
        return (base.failed, base.unresolvable, base.tally) if maps else ({}, {}, base.tally)
    failed, unresolvable = (base.failed, base.unresolvable) if maps else ({}, {})
    tally = base.tally.copy()
    for v in special:
        for flag, table in ((False, base.failed), (True, base.unresolvable)):
            old = table.get(v.node)
            if old is not None:
                tally[(flag, old)] -= 1
        if not v.feasible:
            tally[(v.unresolvable, v.reason)] += 1
        if not maps:
            continue
        if v.node in failed or (not v.feasible and not v.unresolvable):
            if failed is base.failed:
                failed = dict(failed)
            failed.pop(v.node, None)
            if not v.feasible and not v.unresolvable:
                failed[v.node] = v.reason
        if v.node in unresolvable or (not v.feasible and v.unresolvable):
            if unresolvable is base.unresolvable:
                unresolvable = dict(unresolvable)
            unresolvable.pop(v.node, None)
            if not v.feasible and v.unresolvable:
                unresolvable[v.node] = v.reason
    return failed, unresolvable, +tally


class Extender:
    """wire -> cache -> policy -> answer: the HTTP and gRPC faces decode a request into PodRequirements and node
    names (or views); `verdicts` (extender.memo.VerdictCache) answers from its memos, asking the policy for what
    it does not hold; nodes holding reservations are judged here, per request; the answer is recorded (metrics,
    one log line) and, at the end of a pod's cycle, reserved. The pod watch (`on_pod_event`) turns a bound pod's
    reservation into a commitment in the node cache (extender.commitments), which the memos follow like a Node
    update."""

    def __init__(
        self,
        cache: NodeCache,
        config: PolicyConfig | None = None,
        reservations: Reservations | None = None,
        metrics: ExtenderMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cache = cache
        self.reservations = reservations if reservations is not None else Reservations()
        self.metrics = metrics or ExtenderMetrics()
        self.clock = clock
        # Views parsed from full-Nodes requests, by (name, resourceVersion): for the no-informer setup where
        # kube-scheduler re-sends the same Node objects each cycle (enabled by main.build; see NodeViewMemo).
        self.request_views: NodeViewMemo | None = None
        self.verdicts = VerdictCache(cache, config or PolicyConfig())
        # one object per distinct node-name list for every transport (memo.NameIntern)
        self.name_intern = NameIntern()
        cache.placer = self._place

    @property
    def config(self) -> PolicyConfig:
        return self.verdicts.config

    @config.setter
    def config(self, value: PolicyConfig) -> None:
        self.verdicts.config = value
        self.verdicts.clear()

    # --- evaluation ------------------------------------------------------------------------
    def _evaluate(self, req: PodRequirements, names: Sequence[str],
                  views: Mapping[str, NodeView] | None, now: float) -> list[NodeVerdict]:
        """Every named node's full verdict in `names` order, with reservations (and commitments, from the node
        cache). `views` (nodes mode): views from the request instead of the cache."""
        get = views.get if views is not None else self.cache.lookup
        shape = self.verdicts.shape(req)
        evaluate = self.verdicts.evaluate
        res = self.reservations if req.needs_gpu else None
        held = res.nodes_holding() if res is not None else frozenset()
        out = []
        for name in names:
            view = get(name)
            reserved = None
            if name in held and view is not None and view.state is not None:
                reserved = res.reserved_mib(name, now, exclude_pod=req.key)  # type: ignore[union-attr]
            out.append(evaluate(req, shape, name, view, now, reserved))
        return out

    def _held(self, names: Sequence[str]) -> tuple[Names, frozenset[str]]:
        """The request's names as a set, and those of them holding reservations."""
        wanted: Names = names.wanted if isinstance(names, NodeNames) else set(names)
        held = self.reservations.nodes_holding()
        return wanted, (held & wanted if held else held)

    def _lookup(self, req: PodRequirements, shape: ShapeMemo, special: Mapping[str, NodeVerdict],
                now: float) -> Callable[[str], NodeVerdict]:
        """Full verdicts on demand (the node to reserve, debug logs): per-request ones first, else the policy."""
        evaluate, get = self.verdicts.evaluate, self.cache.get
        return lambda name: special.get(name) or evaluate(req, shape, name, get(name), now)

    def _filter_names(self, req: PodRequirements, shape: ShapeMemo, names: Sequence[str],
                      now: float) -> FilterOutcome:
        """Names mode with a memoisable pod: the cache's tables, with the nodes holding reservations judged
        for this request."""
        wanted, held = self._held(names)
        base = self.verdicts.answer(shape, names, wanted, now)
        special = self._evaluate(req, list(held), None, now) if held else []
        failed, unresolvable, tally = _with_specials(base, special)
        out = FilterOutcome(None, base.passed, failed, unresolvable, count=len(names), tally=tally)
        if any(v.feasible != (v.node in base.passing) for v in special):  # a reservation changed who passes
            feasible = {v.node for v in special if v.feasible}
            if isinstance(names, NodeNames):
                out.passed = rejudged(base.passed, names, set(held), feasible)
            else:
                passed_set = (set(base.passed) - held) | feasible
                unique = names if len(wanted) == len(names) else dict.fromkeys(names)
                out.passed = list(filter(passed_set.__contains__, unique))
        out.lookup = self._lookup(req, shape, {v.node: v for v in special}, now)
        return out

    def _record(self, verb: str, req: PodRequirements, verdicts: Callable[[], list[NodeVerdict]], count: int,
                elapsed: float, feasible: int, tally: TallyCounter[tuple[bool, str]]) -> None:
        """Metrics and the request's log line; `tally`: rejections by (unresolvable, reason). Per-node
        verdicts (`verdicts()`) are built only for debug logging."""
        m = self.metrics
        m.record(verb, elapsed, count, feasible, tally.items())
        m.reservations.set(len(self.reservations))
        reasons = {reason: n for (_, reason), n in tally.items()}
        log.info(f"extender_{verb}", pod=f"{req.namespace}/{req.name}", managed=req.managed,
                 nodes=count, feasible=feasible, rejected=reasons, ms=round(elapsed * 1000, 2))
        bound = log.bind()
        if hasattr(bound, "is_enabled_for") and not bound.is_enabled_for(logging.DEBUG):
            return
        for v in verdicts():
            bound.debug("extender_node_verdict", verb=verb, pod=f"{req.namespace}/{req.name}", node=v.node,
                      result=v.result, reason=v.reason, detail=v.detail, score=v.score)

    def filter(self, req: PodRequirements, names: Sequence[str],
               views: Mapping[str, NodeView] | None = None) -> FilterOutcome:
        """Verdicts for the named nodes. `views` (nodes mode): NodeViews from the request itself."""
        t0 = time.perf_counter()
        now = self.clock()
        if req.needs_gpu and not self.cache.commitments_synced:
            out = self._split(self._not_synced(names))
        elif req.needs_gpu:
            with self.reservations.lock:
                shape = self.verdicts.shape(req)
                if shape is not None and views is None:
                    out = self._filter_names(req, shape, names, now)
                else:
                    out = self._split(self._evaluate(req, names, views, now))
                if len(out.passed) == 1:
                    # kube-scheduler skips prioritize with one feasible node: this is its choice.
                    self._reserve(req, out.verdict(out.passed[0]), now)
        else:
            out = self._split(self._evaluate(req, names, views, now))
        self._record("filter", req, lambda: out.all_verdicts(names), out.count, time.perf_counter() - t0,
                     len(out.passed), out.tally)
        return out

    def _reserve(self, req: PodRequirements, v: NodeVerdict, now: float) -> None:
        """The end of the pod's cycle (reservation lock held). A pod the watch already shows bound holds a
        commitment: it is not reserved a second time."""
        if self.cache.commitment(req.key) is None:
            self.reservations.reserve(req.key, v.node, v.gpus, req.vram_estimate_mib, now,
                                      name=f"{req.namespace}/{req.name}")

    @staticmethod
    def _not_synced(names: Sequence[str]) -> list[NodeVerdict]:
        """Before the bound-pod watch's first list: every node fails, resolvably (kube-scheduler retries the pod),
        because what bound pods hold on each GPU is not known yet."""
        return [NodeVerdict(n, False, False, R_PODS_NOT_SYNCED, R_PODS_NOT_SYNCED) for n in names]

    @staticmethod
    def _split(verdicts: list[NodeVerdict]) -> FilterOutcome:
        """One pass: passed names, FailedNodes, FailedAndUnresolvableNodes."""
        out = FilterOutcome(verdicts, count=len(verdicts))
        passed, failed, unresolvable = out.passed.append, out.failed, out.unresolvable
        for v in verdicts:
            if v.feasible:
                passed(v.node)
            elif v.unresolvable:
                unresolvable[v.node] = v.reason
            else:
                failed[v.node] = v.reason
        out.tally = tally_of(failed, unresolvable)
        return out

    def prioritize(self, req: PodRequirements, names: Sequence[str],
                   views: Mapping[str, NodeView] | None = None) -> list[NodeVerdict]:
        """Verdicts with scores for the named nodes (0 for infeasible ones); reserves on the best node."""
        return self.prioritize_scores(req, names, views).verdicts()

    def prioritize_scores(self, req: PodRequirements, names: Sequence[str],
                          views: Mapping[str, NodeView] | None = None) -> PriorityOutcome:
        """Scores for the named nodes (0 for infeasible ones); reserves on the best node (the first of the
        highest score, in request order), which the answer makes the only best (`policy.lead`)."""
        t0 = time.perf_counter()
        now = self.clock()
        if req.needs_gpu and not self.cache.commitments_synced:
            out = self._priorities(names, self._not_synced(names))  # every score 0: nothing reserved
        elif req.needs_gpu:
            with self.reservations.lock:
                shape = self.verdicts.shape(req)
                if shape is not None and views is None:
                    out = self._prioritize_names(req, shape, names, now)
                else:
                    out = self._priorities(names, self._evaluate(req, names, views, now))
                if out.best >= 0:
                    self._reserve(req, out.verdict(names[out.best]), now)
                    out.scores = lead(out.scores, out.best)  # kube-scheduler must pick the reserved node
        else:
            out = self._priorities(names, self._evaluate(req, names, views, now))
        self._record("prioritize", req, out.verdicts, len(names), time.perf_counter() - t0,
                     len(out.scores) - out.scores.count(0), out.tally)
        return out

    @staticmethod
    def _priorities(names: Sequence[str], verdicts: list[NodeVerdict]) -> PriorityOutcome:
        scores = [v.score if v.feasible else 0 for v in verdicts]
        top = max(scores, default=0)
        by_name = {v.node: v for v in verdicts}
        return PriorityOutcome(names, scores, scores.index(top) if top > 0 else -1, by_name.__getitem__,
                               Extender._split(verdicts).tally)

    def _prioritize_names(self, req: PodRequirements, shape: ShapeMemo, names: Sequence[str],
                          now: float) -> PriorityOutcome:
        """Names mode with a memoisable pod: scores from the cache (looked up in C), nodes holding reservations
        judged for this request."""
        wanted, held = self._held(names)
        scores = self.verdicts.scores(shape, names, wanted, now)
        special: dict[str, NodeVerdict] = {}
        if held:
            special = {v.node: v for v in self._evaluate(req, list(held), None, now)}
        # prioritize answers scores only: the rejection maps are needed just for the metrics tally
        _, _, tally = _with_specials(self.verdicts.answer(shape, names, wanted, now), special.values(), maps=False)
        for name, v in special.items():
            i = -1
            while True:  # every position of the name (C-speed scans; held nodes are few)
                try:
                    i = names.index(name, i + 1)
                except ValueError:
                    break
                scores[i] = v.score if v.feasible else 0
        top = max(scores, default=0)
        return PriorityOutcome(names, scores, scores.index(top) if top > 0 else -1,
                               self._lookup(req, shape, special, now), tally)

    def explain(self, req: PodRequirements, names: Sequence[str] | None = None,
                views: Mapping[str, NodeView] | None = None) -> list[NodeVerdict]:
        """Every node's verdict with details; reserves nothing. No names: every cached node."""
        t0 = time.perf_counter()
        names = list(names) if names else sorted(self.cache.names())
        now = self.clock()
        with self.reservations.lock:
            verdicts = self._evaluate(req, names, views, now)
            own = self.cache.commitment(req.key) if req.needs_gpu else None
            if own is not None:  # a bound pod: judge its own node as if its memory were given back
                verdicts = [self._without_own(req, v, own, views, now) if v.node == own.node else v
                            for v in verdicts]
        split = self._split(verdicts)
        self._record("explain", req, lambda: verdicts, len(verdicts), time.perf_counter() - t0,
                     len(split.passed), split.tally)
        return verdicts

    def _without_own(self, req: PodRequirements, verdict: NodeVerdict, own: Commitment,
                     views: Mapping[str, NodeView] | None, now: float) -> NodeVerdict:
        """`explain` of a bound pod: its node judged as if the pod gave its memory back (its commitment left out,
        its memory in use returned), so "why is it here" is not answered with "its own memory does not fit"."""
        view = (views.get if views is not None else self.cache.get)(own.node)
        if view is None or view.state is None:
            return verdict
        with self.cache.lock:
            committed = self.cache.commitments.per_gpu(own.node, view.state.placements(), without={own.name})
        gpus = len(own.gpus) if own.gpus else max(1, req.gpu_count)
        view = released_view(view, Release(own.node, req.vendor, own.mib_per_gpu, gpus, own.name))
        reserved = self.reservations.reserved_mib(own.node, now, exclude_pod=req.key)
        return evaluate(req, view, now, self.config, reserved or None, node=own.node, committed=committed)

    def refresh_gauges(self) -> None:
        self.metrics.cache_nodes.set(len(self.cache))
        age = self.cache.age_seconds()
        self.metrics.cache_age.set(age if age != float("inf") else -1)
        self.reservations.expire(self.clock())
        self.metrics.reservations.set(len(self.reservations))
        self.metrics.committed_pods.set(len(self.cache.commitments))

    def _place(self, req: PodRequirements, view: NodeView, committed: Mapping[int, int]) -> tuple[int, ...]:
        """The node cache's placer: the GPUs of a bound pod neither its reservation nor the agent names."""
        return commit_gpus(req, view, committed, self.config.strategy == "binpack")

    # --- pod watch: reservations become commitments --------------------------------------
    def on_pod_event(self, kind: str, obj: dict[str, Any]) -> None:
        """Informer callback for bound, unfinished Pods: a bound pod's reservation becomes a commitment in the
        node cache; deleted or finished pods (and, on a relist, pods no longer listed) release theirs."""
        if kind == "SYNC":
            items = [i for i in (obj or {}).get("items") or () if isinstance(i, dict)]
            live = set()
            for item in items:
                key = self._pod_event(item, deleted=False)
                if key:
                    live.add(key)
            for c in self.cache.all_commitments():
                if c.pod not in live:
                    self.cache.uncommit(c.pod)
            self.cache.commitments_synced = True
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
        if deleted or finished(pod):
            with self.reservations.lock:
                self.reservations.release(key)
                self.cache.uncommit(key)
            return ""
        c = commitment_of(pod, req)  # the same rule the controller's and the proxy's fit checks use
        if c is None:
            return key
        held = self.cache.commitment(key)
        if held is not None and (held.node, held.mib_per_gpu, held.name) == (c.node, c.mib_per_gpu, c.name):
            return key  # already committed (status updates, relists): nothing to do
        with self.reservations.lock:
            r = self.reservations.release(key)
            # the GPUs reserved for it, when it was bound where it was reserved; else the cache's placer picks
            if r is not None and r.node == c.node:
                c.gpus, c.req = r.gpus, None
            self.cache.commit(c)
        return key
