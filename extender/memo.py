"""The verdict cache: every memo between the node cache and the policy, and their invalidation, in one place.

Per pod shape (`ShapeMemo`, at most `shape_limit` of them, least recently used dropped):
* the static verdict per node class (`policy.static_check` once per class of `policy.static_class`, not once
  per node; bounded);
* filter tables for EVERY cached node: the passing names (a set), FailedNodes and FailedAndUnresolvableNodes
  (dicts), built class by class from the node cache's columns (`NodeCache.table`) by `policy.split_class` in
  C-level passes, so a shape costs a few comparisons per node, not a Python call. They are built on the shape's
  SECOND request (or its first prioritize): its first filter is answered for the named nodes alone, from the same
  columns through the name list's projection onto the classes (`Projection`, kept per name list while no node
  joins or leaves a class), so a shape seen once (a new Model, a changed estimate) costs what its request names,
  not what the cache holds, and leaves no tables behind;
* scores of passing nodes, filled for the names prioritize asks about.

A verdict for (pod shape, node) only changes when
* the Node object changes, or the VRAM committed to bound pods on it does (the node cache folds commitments into
  its free columns and logs the node): the node cache's change log (`NodeCache.changes_since`) rebuilds the tables
  and drops the changed nodes' scores;
* time passes a boundary the policy names (`NodeVerdict.valid_until`, `policy.split_class`, `policy.score`):
  the GPU state turning stale, an Xid penalty window ending;
* a reservation (a pod being placed, not bound yet) lands on the node: nodes holding reservations are judged per
  request by the Extender (`VerdictCache.evaluate`), never from the tables.

Everything here is keyed by data from outside (pod shapes, node names, gfx targets) and bounded. The Extender
calls it under its reservation lock; table reads happen under the node cache's lock.
"""

from __future__ import annotations

import heapq
import threading
from bisect import bisect_left
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain, compress, filterfalse, repeat
from operator import le, not_
from typing import Generic, NamedTuple, TypeVar

import msgspec

from flexinfer.state import NodeView

from .cache import NodeCache, NodeClass, NodeTable
from .pod import PodRequirements
from .policy import (
    INF,
    NODE_DETAIL,
    R_INSUFFICIENT,
    R_NOT_IN_CACHE,
    R_STALE,
    Chosen,
    NodeVerdict,
    PolicyConfig,
    StaticFit,
    _before,
    evaluate,
    pick_gpus,
    score,
    split_class,
    stale_after,
    static_check,
    static_class,
    static_key,
    static_size,
    static_usable,
    usable_key,
)

K = TypeVar("K")
V = TypeVar("V")

STATIC_MEMO_CLASSES = 1024  # static verdicts kept per shape (classes of cached nodes and of request-borne views)
MAX_USABLE = 8192  # estimate-free static results kept across shapes (pod compatibility keys x node classes)
MAX_KEPT_NAMES = 16_384  # longer name lists and their answers are never kept (3x Kubernetes' largest cluster)


class NodeNames(tuple[str, ...]):
    """An immutable node-name list with its set, made once per distinct request list (see wire.NameLists):
    kube-scheduler sends the same NodeNames for pod after pod, so hashing thousands of fresh strings
    into a set is paid once per list, not once per request."""

    wanted: frozenset[str]
    _positions: dict[str, int] | None

    def __new__(cls, names: list[str]) -> NodeNames:
        self = super().__new__(cls, names)
        self.wanted = frozenset(self)
        self._positions = None
        return self

    def positions(self) -> dict[str, int]:
        """Name -> its first index in the list (made on first use, then kept with the list)."""
        if self._positions is None:
            n = len(self)
            # the first occurrence wins
            self._positions = dict(zip(reversed(self), range(n - 1, -1, -1), strict=True))
        return self._positions


MAX_HELD_VERDICTS = 256  # per shape: verdicts of nodes holding reservations, kept while view and memory are the same
MAX_REPLAYED = 256  # passing-set changes a shape keeps to update an answer's passed list instead of rebuilding it
ANSWERS_PER_SHAPE = 3  # name lists a shape keeps its last answer for (filter's list, prioritize's, one more)
CHEAP_COVERAGE = 64  # a list's coverage found among at most this many names is not remembered (VerdictCache)


def rejudged(passed: list[str], names: NodeNames, changed: set[str], passing: Names) -> list[str]:
    """`passed` (passing names of `names`, in list order, no repeats) after the nodes in `changed` were judged
    again: those of them in `passing` (and named) at their places in the list, the others gone. Costs one pass
    over `passed` and a binary search per re-added node, instead of a pass over every name of the list."""
    out = list(filterfalse(changed.__contains__, passed))
    back = [n for n in changed if n in passing and n in names.wanted]
    if back:
        pos = names.positions()
        key = pos.__getitem__
        for name in sorted(back, key=key):
            out.insert(bisect_left(out, key(name), key=key), name)
    return out


class Lru(Generic[K, V]):
    """A thread-safe map of at most `size` entries, the least recently used dropped first: the one shape of the
    memos keyed by what clients send (name lists by their bytes or their names)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._map: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._map)

    def get(self, key: K) -> V | None:
        with self._lock:
            hit = self._map.get(key)
            if hit is not None:
                self._map.move_to_end(key)
            return hit

    def keep(self, key: K, value: V) -> V:
        """`value` under `key`, or what another thread kept there first (returned either way)."""
        with self._lock:
            kept = self._map.setdefault(key, value)
            self._map.move_to_end(key)
            while len(self._map) > self.size:
                self._map.popitem(last=False)
            return kept


class NameIntern:
    """One `NodeNames` object per distinct name list, whichever transport decoded it (HTTP JSON in wire.NameLists,
    gRPC protobuf in grpc_wire.RequestDecoder): the verdict index keeps its answers by the list object, so the
    same list asked over both shares one answer and its encodings instead of rebuilding them turn about.
    Consulted only when a transport meets bytes it has not seen (one tuple hash). Bounded: `size` lists, least
    recently used dropped; lists over `MAX_KEPT_NAMES` are never kept."""

    def __init__(self, size: int = 8) -> None:
        self._lists: Lru[tuple[str, ...], NodeNames] = Lru(size)

    def __len__(self) -> int:
        return len(self._lists)

    def get(self, names: list[str]) -> NodeNames:
        if len(names) > MAX_KEPT_NAMES:
            return NodeNames(names)
        key = tuple(names)
        hit = self._lists.get(key)
        return hit if hit is not None else self._lists.keep(key, NodeNames(names))


Names = set[str] | frozenset[str]  # a request's node names as a set
# (every cached node is named, named nodes the cache lacks, cached nodes not named or None: VerdictCache._coverage)
Coverage = tuple[bool, frozenset[str], frozenset[str] | None]


def subset(table: dict[str, str], wanted: Names) -> dict[str, str]:
    """The entries of `table` whose key is in `wanted` (a copy), cheapest way first."""
    if wanted.issuperset(table):  # kube-scheduler sent every node this table knows: copy in C
        return dict(table)
    if len(table) <= len(wanted):
        return {n: r for n, r in table.items() if n in wanted}
    return {n: table[n] for n in wanted if n in table}


def _named(table: dict[str, str], wanted: Names, rest: Names | None, missing: frozenset[str] | None,
           ) -> dict[str, str]:
    """The entries of a shape's FailedNodes or FailedAndUnresolvableNodes table for the named nodes (a copy), the
    cheapest way: from `rest` (the named nodes that do not pass: every named entry is among them) when known, by
    copying the table (in C) without `missing` (the cached nodes the list leaves out) when those are fewer than
    the names `subset` would go through one by one, else `subset`."""
    if rest is not None:
        return subset(table, rest)
    if missing is not None and len(missing) < min(len(table), len(wanted)):
        out = dict(table)
        for name in [n for n in missing if n in out]:
            del out[name]
        return out
    return subset(table, wanted)


def tally_of(failed: dict[str, str], unresolvable: dict[str, str]) -> Counter[tuple[bool, str]]:
    """(unresolvable, reason) -> number of nodes, counted in C: what the verdict metrics and log need."""
    tally = Counter({(True, r): n for r, n in Counter(unresolvable.values()).items()})
    tally.update({(False, r): n for r, n in Counter(failed.values()).items()})
    return tally


def _fold_rejected(short: list[str], stale: list[str], failed: dict[str, str], unresolvable: dict[str, str],
                   tally: Counter[tuple[bool, str]]) -> None:
    """Adds one class's `split_class` rejections (short of free memory, stale) to the filter maps and the tally."""
    if short:
        failed.update(dict.fromkeys(short, R_INSUFFICIENT))
        tally[(False, R_INSUFFICIENT)] += len(short)
    if stale:
        unresolvable.update(dict.fromkeys(stale, R_STALE))
        tally[(True, R_STALE)] += len(stale)


@dataclass(slots=True)
class FilterAnswer:
    """Filter's answer for one name list from the index alone: passed names in request order, FailedNodes,
    FailedAndUnresolvableNodes, Counter of (unresolvable, reason) -> nodes, and `passing`: a set holding the
    passing names (the shape's table, or this answer's own; ask it only about names of the request)."""

    passed: list[str]
    failed: dict[str, str]
    unresolvable: dict[str, str]
    tally: Counter[tuple[bool, str]]
    table: Names | None = None  # the shape's passing set, when the answer comes from its tables

    @property
    def passing(self) -> Names:
        if self.table is None:
            self.table = set(self.passed)
        return self.table


class Kept(NamedTuple):
    """A shape's last answer for one NodeNames list, with the versions of the shape's tables it was made from."""

    names: NodeNames
    version: int  # ShapeMemo.version: the whole answer still holds
    passed_version: int  # ShapeMemo.passed_version: its passed list still holds, or can be updated from the moves
    answer: FilterAnswer
    failed_version: int  # its FailedNodes map still holds (when `unknown` is the list's current one)
    unresolvable_version: int  # its FailedAndUnresolvableNodes map still holds
    unknown: frozenset[str]  # the named nodes the cache lacked (in FailedNodes)


@dataclass(slots=True)
class Group:
    """The members of one node class a name list names, in list order: `rows` their rows in the class's columns
    (None: the whole class, in row order, so its columns are used as they are), `positions` their places in the
    list without repeats."""

    cls: NodeClass
    members: list[str]
    rows: list[int] | None
    positions: list[int]


MAX_MERGED = 4  # merged static rejection maps kept per projection


@dataclass(slots=True)
class Projection:
    """A name list laid over the node table's classes, valid while the table's `layout` is `layout`: `unique`
    (the list without repeats), its `groups` (one per class it names) and the names the cache does not hold.
    `merged`: the FailedAndUnresolvableNodes of recent static outcomes (which groups were rejected, and why),
    shared read-only by the answers that use them (at most MAX_MERGED)."""

    layout: int
    unique: Sequence[str]
    groups: list[Group]
    unknown: list[str]
    merged: dict[tuple[tuple[int, str], ...], dict[str, str]] = field(default_factory=dict)

    def rejected(self, key: tuple[tuple[int, str], ...]) -> dict[str, str]:
        """Every member of the groups `key` names (group index, reason) mapped to its reason (read-only)."""
        found = self.merged.get(key)
        if found is None:
            if len(self.merged) >= MAX_MERGED:
                self.merged.clear()
            found = {}
            for index, reason in key:
                g = self.groups[index]
                found.update(g.cls.rejected(reason) if g.rows is None else dict.fromkeys(g.members, reason))
            self.merged[key] = found
        return found


def project(table: NodeTable, unique: Sequence[str]) -> Projection:
    """`unique`'s Projection onto `table` (node cache lock held): one dict lookup per name."""
    by_class: dict[NodeClass, tuple[list[str], list[int]]] = {}
    unknown: list[str] = []
    for pos, (name, cls) in enumerate(zip(unique, map(table.where.get, unique), strict=True)):
        if cls is None:
            unknown.append(name)
            continue
        entry = by_class.get(cls)
        if entry is None:
            entry = by_class[cls] = ([], [])
        entry[0].append(name)
        entry[1].append(pos)
    groups = [Group(cls, members, None if members == cls.names else list(map(cls.rows.__getitem__, members)),
                    positions) for cls, (members, positions) in by_class.items()]
    return Projection(table.layout, unique, groups, unknown)


SHARED_FAILED, SHARED_UNRESOLVABLE, SHARED_TALLY = 1, 2, 4  # ShapeMemo.shared: which tables an answer holds
SHARED_ALL = SHARED_FAILED | SHARED_UNRESOLVABLE | SHARED_TALLY


class ShapeMemo:
    """One pod shape's verdicts (see the module doc). Built and read only through VerdictCache."""

    __slots__ = ("_answers", "_expiry", "failed", "failed_version", "generation", "held", "moves", "passed",
                 "passed_version", "req", "score_generation", "score_until", "scores", "seen", "shared", "static",
                 "tally", "unresolvable", "unresolvable_version", "until", "version")

    def __init__(self, req: PodRequirements) -> None:
        self.req = req  # the first pod of this shape: every field the policy reads is part of the shape key
        self.static: dict[tuple, NodeVerdict | StaticFit] = {}
        self.generation = -1  # node cache generation the tables were built at (-1: never built)
        self.seen = False  # a filter was answered for this shape (its first one without tables)
        self.until = -INF  # the tables hold while the clock is before this
        self.version = 0  # bumped on every change of the tables: derived answers are keyed by it
        self.passed_version = 0  # bumped per node `passed` gains or loses (an answer's passed list still holds)
        self.moves: list[str] = []  # those nodes, the last of them the latest (at most MAX_REPLAYED kept)
        # node -> (view, committed, reserved, verdict): `VerdictCache.evaluate` for nodes holding reservations
        self.held: dict[str, tuple[NodeView, dict[int, int], dict[int, int], NodeVerdict]] = {}
        self.passed: set[str] = set()
        self.failed: dict[str, str] = {}
        self.unresolvable: dict[str, str] = {}
        self.failed_version = 0  # bumped on every change of `failed` (an answer's copy of it still holds)
        self.unresolvable_version = 0  # the same for `unresolvable`
        self.tally: Counter[tuple[bool, str]] = Counter()  # of failed + unresolvable
        self.shared = 0  # SHARED_* bits: those tables are also an answer's: copy before patching them
        # id(names) -> the last answers, one per NodeNames list (a few: kube-scheduler asks filter with every node
        # and prioritize with the passing ones, turn about), with the versions they were made at
        self._answers: OrderedDict[int, Kept] = OrderedDict()
        self.score_generation = -1
        self.scores: dict[str, int] = {}  # passing nodes only
        self.score_until: dict[str, float] = {}  # finite validities of `scores`
        self._expiry: list[tuple[float, str]] = []  # heap of (valid until, name)

    def drop_scores(self, names: Sequence[str] | None) -> None:
        if names is None:
            self.scores.clear()
            self.score_until.clear()
            self._expiry.clear()
            return
        for n in names:
            if self.scores.pop(n, None) is not None:
                self.score_until.pop(n, None)

    def expire_scores(self, now: float) -> None:
        heap = self._expiry
        while heap and heap[0][0] <= now:
            until, name = heapq.heappop(heap)
            if self.score_until.get(name) == until:
                del self.score_until[name]
                del self.scores[name]
        if len(heap) > 2 * len(self.score_until) + 1024:  # superseded items pile up under churn: rebuild
            self._expiry = [(u, n) for n, u in self.score_until.items()]
            heapq.heapify(self._expiry)

    def put_score(self, name: str, value: int, until: float) -> None:
        self.scores[name] = value
        if until != INF:
            self.score_until[name] = until
            heapq.heappush(self._expiry, (until, name))


class VerdictCache:
    """Memoised verdicts per pod shape over one NodeCache (see the module doc)."""

    def __init__(self, nodes: NodeCache, config: PolicyConfig, *, shape_limit: int = 64) -> None:
        self.nodes = nodes
        self.config = config
        self.shape_limit = shape_limit
        self._shapes: OrderedDict[tuple, ShapeMemo] = OrderedDict()
        self._covers: OrderedDict[int, tuple[NodeNames, int, Coverage]] = OrderedDict()
        self.cheap_coverage = CHEAP_COVERAGE
        self._projections: OrderedDict[int, tuple[NodeNames, Projection]] = OrderedDict()
        # (policy.usable_key, static class) -> policy.static_usable, for every shape (see `_static`)
        self._usable: dict[tuple, NodeVerdict | tuple[tuple[int, str], ...]] = {}

    def __len__(self) -> int:
        return len(self._shapes)

    def clear(self) -> None:
        self._shapes.clear()
        self._usable.clear()

    # --- shapes ------------------------------------------------------------------------------
    def shape(self, req: PodRequirements) -> ShapeMemo | None:
        """The memo for this pod's shape; None when the pod's verdicts are not memoised (it needs no GPU:
        passthrough, cpu, or a junk annotation: those verdicts cost nothing to compute)."""
        if not req.needs_gpu:
            return None
        key = (static_key(req), req.preferred_archs)
        memo = self._shapes.get(key)
        if memo is None:
            memo = self._shapes[key] = ShapeMemo(req)
            while len(self._shapes) > self.shape_limit:
                self._shapes.popitem(last=False)
        else:
            self._shapes.move_to_end(key)
        return memo

    def _static(self, shape: ShapeMemo, key: tuple, view: NodeView) -> NodeVerdict | StaticFit:
        """`static_check` for the class `key` (whose member `view` is), per shape; its estimate-free part
        (`static_usable`: vendor, count, health, compatibility) is shared by the shapes that differ only in their
        estimate, so a new estimate costs the size check per class."""
        found = shape.static.get(key)
        if found is None:
            if len(shape.static) >= STATIC_MEMO_CLASSES:
                shape.static.clear()
            ukey = (usable_key(shape.req), key)
            usable = self._usable.get(ukey)
            if usable is None:
                if len(self._usable) >= MAX_USABLE:
                    self._usable.clear()
                usable = self._usable[ukey] = static_usable(shape.req, view)
            found = shape.static[key] = usable if isinstance(usable, NodeVerdict) \
                else static_size(shape.req, view, usable)
        return found

    def static_for(self, shape: ShapeMemo, view: NodeView) -> NodeVerdict | StaticFit:
        """`policy.static_check(req, view)`, through the per-class memo: a fit re-targeted at this node's GPUs,
        a rejection renamed when its detail is the class's, else (`policy.NODE_DETAIL`, a node that failed to
        parse) checked for this node: such a detail reads facts outside the class key (a GPU's health reason, MIG
        or not), which may differ between members and change while a node stays in its class, so the memo's
        copy is never handed out, not even to the node it was made from."""
        key = static_class(view)
        found = self._static(shape, key, view)
        if isinstance(found, StaticFit):
            return found.on(view.state) if view.state is not None else static_check(shape.req, view)
        if key[0] == "error" or found.reason in NODE_DETAIL:
            return static_check(shape.req, view)
        return found if found.node == view.name else msgspec.structs.replace(found, node=view.name)

    # --- single verdicts ---------------------------------------------------------------------
    def evaluate(self, req: PodRequirements, shape: ShapeMemo | None, name: str, view: NodeView | None, now: float,
                 reserved: dict[int, int] | None = None) -> NodeVerdict:
        """The policy's full verdict (with detail) for one node, with the VRAM committed to bound pods there (node
        cache) and `reserved` (pods being placed); `shape` (of `req`, see `shape`): its static part memoised per
        class."""
        committed = self.nodes.committed_for(name, view)
        keep = shape is not None and view is not None and reserved is not None
        if keep:  # a node holding reservations, judged per request: again for its next request only if changed
            hit = shape.held.get(name)  # type: ignore[union-attr]
            if hit is not None and hit[0] is view and now < hit[3].valid_until and hit[2] == reserved \
                    and hit[1] == committed:
                return hit[3]
        static = self.static_for(shape, view) if shape is not None and view is not None else None
        verdict = evaluate(req, view, now, self.config, reserved, node=name, static=static, committed=committed)
        if keep and verdict.reason != R_STALE:  # a stale verdict's detail counts the seconds: never kept
            held = shape.held  # type: ignore[union-attr]
            if len(held) >= MAX_HELD_VERDICTS:
                held.clear()
            held[name] = (view, dict(committed), dict(reserved), verdict)  # type: ignore[arg-type]
        return verdict

    # --- filter tables -----------------------------------------------------------------------
    def _current(self, shape: ShapeMemo, now: float) -> None:
        """Bring the shape's tables up to date (node cache lock held): when a few nodes changed, judge just those
        (`_patch`); when many did, the log no longer reaches back, or the tables' time is up, rebuild them."""
        nodes = self.nodes
        if shape.generation == nodes.generation and now < shape.until:
            return
        if now < shape.until:
            _, changed = nodes.changes_since(shape.generation, locked=True)
            if changed is not None and len(changed) <= max(64, len(nodes) // 8):
                if self._patch(shape, set(changed), now):
                    shape.version += 1  # else every answer derived from the tables still holds
                shape.generation = nodes.generation
                return
        self._rebuild(shape, now)

    def _rebuild(self, shape: ShapeMemo, now: float) -> None:
        est = shape.req.vram_estimate_mib
        cfg = self.config
        passed: set[str] = set()
        failed: dict[str, str] = {}
        unresolvable: dict[str, str] = {}
        tally: Counter[tuple[bool, str]] = Counter()
        until = INF
        for cls in self.nodes.table.classes.values():
            fit = self._static(shape, cls.key, cls.rep)
            if isinstance(fit, NodeVerdict):
                unresolvable.update(cls.rejected(fit.reason))
                tally[(True, fit.reason)] += len(cls.names)
                continue
            ok, short, stale, valid = split_class(fit, est, cls.names, cls.observed,
                                                  cls.available(fit.positions, fit.count), now, cfg)
            passed.update(ok)
            _fold_rejected(short, stale, failed, unresolvable, tally)
            until = min(until, valid)
        shape.passed, shape.failed, shape.unresolvable, shape.tally = passed, failed, unresolvable, tally
        shape.failed_version += 1
        shape.unresolvable_version += 1
        shape.shared = 0
        shape.generation, shape.until = self.nodes.generation, until
        shape.version += 1
        shape.passed_version += 1
        shape.moves = []  # nothing before the rebuild can be replayed

    def _patch(self, shape: ShapeMemo, names: set[str], now: float) -> bool:
        """`_rebuild`'s verdicts for just these nodes (the same rules as `policy.split_class`, one node at a time).
        Returns whether any node's verdict changed (a heartbeat that moves free memory on the same side of the
        estimate changes none). A table an answer holds is copied before its first change, and only then: under
        a heartbeat fleet free memory moves nodes between passing and FailedNodes, and the (large, static)
        FailedAndUnresolvableNodes map stays the same object, whose encoding the transports keep."""
        est, limit = shape.req.vram_estimate_mib, self.config.max_state_age_seconds
        passed = shape.passed
        where = self.nodes.table.where
        changed = False
        for name in names:
            before = (name in passed, shape.failed.get(name), shape.unresolvable.get(name))
            cls = where.get(name)
            if cls is None:  # removed from the cache
                after: tuple[bool, str | None, str | None] = (False, None, None)
            else:
                fit = self._static(shape, cls.key, cls.rep)
                if isinstance(fit, NodeVerdict):
                    after = (False, None, fit.reason)
                else:
                    row = cls.rows[name]
                    observed = cls.observed[row]
                    if now - observed > limit:
                        after = (False, None, R_STALE)
                    else:
                        shape.until = min(shape.until, stale_after(observed, self.config))
                        fits = est <= cls.available_at(fit.positions, fit.count, row)
                        after = (True, None, None) if fits else (False, R_INSUFFICIENT, None)
            if after == before:
                continue
            changed = True
            if after[0] != before[0]:
                if after[0]:
                    passed.add(name)
                else:
                    passed.discard(name)
                shape.passed_version += 1
                shape.moves.append(name)
            if shape.shared & SHARED_TALLY:
                shape.tally = shape.tally.copy()
                shape.shared &= ~SHARED_TALLY
            tally = shape.tally
            for flag, old, new in ((False, before[1], after[1]), (True, before[2], after[2])):
                if old == new:
                    continue
                table = self._own(shape, flag)
                if flag:
                    shape.unresolvable_version += 1
                else:
                    shape.failed_version += 1
                if old is not None:
                    del table[name]
                    key = (flag, old)
                    tally[key] -= 1
                    if not tally[key]:
                        del tally[key]
                if new is not None:
                    table[name] = new
                    tally[(flag, new)] += 1
        if len(shape.moves) > 2 * MAX_REPLAYED:
            del shape.moves[:-MAX_REPLAYED]
        return changed

    @staticmethod
    def _own(shape: ShapeMemo, unresolvable: bool) -> dict[str, str]:
        """The shape's FailedNodes (or FailedAndUnresolvableNodes) table, copied first if an answer holds it."""
        bit = SHARED_UNRESOLVABLE if unresolvable else SHARED_FAILED
        if shape.shared & bit:
            if unresolvable:
                shape.unresolvable = dict(shape.unresolvable)
            else:
                shape.failed = dict(shape.failed)
            shape.shared &= ~bit
        return shape.unresolvable if unresolvable else shape.failed

    def _known_coverage(self, names: Sequence[str]) -> Coverage | None:
        """`_coverage`'s remembered answer for this NodeNames list, if it still holds."""
        if not isinstance(names, NodeNames):
            return None
        hit = self._covers.get(id(names))
        if hit is None or hit[0] is not names or hit[1] != self.nodes.members:
            return None
        self._covers.move_to_end(id(names))
        return hit[2]

    def _coverage(self, names: Sequence[str], wanted: Names, outside: Names) -> Coverage:
        """(every cached node is named, the names the cache does not hold, the cached nodes the list does not name
        or None), the second found among `outside` (a part of `wanted` holding every name the cache lacks: the
        named nodes a shape does not pass). Remembered per NodeNames list while the set of cached names stays the
        same (node cache lock held), when finding it took more than a few lookups: a list of every node, or of
        nearly every node (kube-scheduler leaves out nodes its own filters reject), is remembered with the cached
        nodes it leaves out; prioritize's lists of passing nodes are cheap to answer again (and would push the
        first out: 8 lists are kept)."""
        views = self.nodes.views_dict()
        unknown = frozenset(outside.difference(views))
        covers = len(wanted) - len(unknown) == len(self.nodes)
        if isinstance(names, NodeNames) and len(names) <= MAX_KEPT_NAMES and len(outside) > self.cheap_coverage:
            coverage = (covers, unknown, frozenset() if covers else frozenset(views.keys() - wanted))
            self._covers[id(names)] = (names, self.nodes.members, coverage)
            while len(self._covers) > 8:  # least recently used first
                self._covers.popitem(last=False)
            return coverage
        return covers, unknown, None

    def _projection(self, names: Sequence[str], wanted: Names) -> Projection:
        """`names` laid over the node classes (node cache lock held), remembered per NodeNames list (8 lists) while
        the table's layout stays the same."""
        layout = self.nodes.table.layout
        keep = isinstance(names, NodeNames) and len(names) <= MAX_KEPT_NAMES
        if keep:
            hit = self._projections.get(id(names))
            if hit is not None and hit[0] is names and hit[1].layout == layout:
                self._projections.move_to_end(id(names))
                return hit[1]
        proj = project(self.nodes.table, names if len(wanted) == len(names) else list(dict.fromkeys(names)))
        if keep:
            self._projections[id(names)] = (names, proj)  # type: ignore[assignment]
            while len(self._projections) > 8:  # least recently used first
                self._projections.popitem(last=False)
        return proj

    def _first_answer(self, shape: ShapeMemo, names: Sequence[str], wanted: Names, now: float) -> FilterAnswer:
        """(node cache lock held) `_rebuild`'s verdicts for the named nodes only, straight from the class columns
        through the list's projection, keeping no tables: a shape's first filter (see `answer`). Statically
        rejected groups share the projection's merged map; passing names come back in list order from the
        groups' positions."""
        proj = self._projection(names, wanted)
        cfg = self.config
        est, limit = shape.req.vram_estimate_mib, cfg.max_state_age_seconds
        failed: dict[str, str] = {}
        stale_map: dict[str, str] = {}
        tally: Counter[tuple[bool, str]] = Counter()
        rejected: list[tuple[int, str]] = []
        ok_positions: list[list[int]] = []
        for index, g in enumerate(proj.groups):
            cls = g.cls
            fit = self._static(shape, cls.key, cls.rep)
            if isinstance(fit, NodeVerdict):
                rejected.append((index, fit.reason))
                tally[(True, fit.reason)] += len(g.members)
                continue
            available: list[int] = cls.available(fit.positions, fit.count)
            members, positions = g.members, g.positions
            if g.rows is not None:
                available = list(map(available.__getitem__, g.rows))
            if now - cls.oldest() > limit:  # rare: some member of the class is stale; judge it the long way
                observed = cls.observed if g.rows is None else list(map(cls.observed.__getitem__, g.rows))
                ok, short, stale, _ = split_class(fit, est, members, observed, available, now, cfg)
                fresh = set(ok)
                ok_positions.append([p for p, n in zip(positions, members, strict=True) if n in fresh])
                _fold_rejected(short, stale, failed, stale_map, tally)
                continue
            fits = list(map(le, repeat(est), available))
            ok_positions.append(list(compress(positions, fits)))
            if len(ok_positions[-1]) < len(members):
                _fold_rejected(list(compress(members, map(not_, fits))), [], failed, stale_map, tally)
        if proj.unknown:
            failed.update(dict.fromkeys(proj.unknown, R_NOT_IN_CACHE))
            tally[(False, R_NOT_IN_CACHE)] += len(proj.unknown)
        unresolvable = proj.rejected(tuple(rejected)) if rejected else {}
        if stale_map:
            unresolvable = {**unresolvable, **stale_map}
        order = ok_positions[0] if len(ok_positions) == 1 else sorted(chain.from_iterable(ok_positions))
        passed = list(map(proj.unique.__getitem__, order))
        return FilterAnswer(passed, failed, unresolvable, tally)

    def answer(self, shape: ShapeMemo, names: Sequence[str], wanted: Names, now: float) -> FilterAnswer:
        """Filter's answer for `names` without reservations (shared: copy before changing). A repeat of the
        same NodeNames object against unchanged tables costs nothing. A shape's first filter is answered for the
        named nodes alone (`_first_answer`); the tables are built when it comes again."""
        with self.nodes.lock:
            if shape.generation < 0 and not shape.seen:
                shape.seen = True
                return self._first_answer(shape, names, wanted, now)
            self._current(shape, now)
            kept = shape._answers.get(id(names))  # holds the list: its id is not reused meanwhile
            if kept is not None and kept.version == shape.version:
                shape._answers.move_to_end(id(names))
                return kept.answer
            # The named nodes that do not pass (rejected, or unknown to the cache): for a list of the passing nodes
            # (prioritize's) a few, so both maps and the passed list come from them; not needed for a list of every
            # node (the tables themselves answer), whose coverage is remembered.
            rest: Names | None = None
            coverage = self._known_coverage(names)
            if coverage is None:
                rest = wanted.difference(shape.passed)
                coverage = self._coverage(names, wanted, rest)
            covers, unknown, missing = coverage
            passed = self._passed(shape, names, wanted, kept, rest)
            if covers and not unknown:  # kube-scheduler named exactly the cached nodes: the tables themselves
                failed, unresolvable, tally = shape.failed, shape.unresolvable, shape.tally
                shape.shared = SHARED_ALL
            else:
                # The answer's own maps. Those of the list's last answer still hold while their table has not
                # changed (the same objects again: their encoding is kept too); under heartbeat churn that is
                # FailedAndUnresolvableNodes, thousands of entries.
                prev = kept if kept is not None and kept.unknown is unknown else None
                if prev is not None and prev.failed_version == shape.failed_version:
                    failed = prev.answer.failed
                else:
                    failed = _named(shape.failed, wanted, rest, missing)
                    failed.update(dict.fromkeys(unknown, R_NOT_IN_CACHE))
                if prev is not None and prev.unresolvable_version == shape.unresolvable_version:
                    unresolvable = prev.answer.unresolvable
                else:
                    unresolvable = _named(shape.unresolvable, wanted, rest, missing)
                tally = prev.answer.tally if prev is not None and failed is prev.answer.failed and \
                    unresolvable is prev.answer.unresolvable else tally_of(failed, unresolvable)
            answer = FilterAnswer(passed, failed, unresolvable, tally, shape.passed)
            if isinstance(names, NodeNames) and len(names) <= MAX_KEPT_NAMES:  # immutable: keyed by identity
                answers = shape._answers
                answers[id(names)] = Kept(names, shape.version, shape.passed_version, answer, shape.failed_version,
                                          shape.unresolvable_version, unknown)
                answers.move_to_end(id(names))
                while len(answers) > ANSWERS_PER_SHAPE:  # least recently used first
                    answers.popitem(last=False)
            return answer

    @staticmethod
    def _passed(shape: ShapeMemo, names: Sequence[str], wanted: Names, kept: Kept | None,
                rest: Names | None = None) -> list[str]:
        """The passing names in request order, without repeats. `kept`: the shape's previous answer for the same
        NodeNames object (with the versions it was made at): its list as it is when the same nodes pass (its
        encoding is kept too), else updated by the nodes that moved since (`rejudged`) while the shape remembers
        them. `rest`: the named nodes that do not pass, when known."""
        if kept is not None:
            list_, last = kept.names, kept.answer
            behind = shape.passed_version - kept.passed_version
            if behind == 0:
                return last.passed
            if behind <= len(shape.moves) and behind <= MAX_REPLAYED:
                return rejudged(last.passed, list_, set(shape.moves[-behind:]), shape.passed)
        unique = names if len(wanted) == len(names) else list(dict.fromkeys(names))
        if rest is not None:
            return list(filterfalse(rest.__contains__, unique)) if rest else list(unique)
        return list(filter(shape.passed.__contains__, unique))

    # --- scores ------------------------------------------------------------------------------
    def _score(self, shape: ShapeMemo, names: Iterable[str], now: float) -> None:
        """Score passing nodes without reservations (commitments included; node cache lock held), class by class:
        the policy's `pick_gpus` and `score`; for one-GPU pods the pick reads the class's free columns instead of
        re-targeting the static fit at each node."""
        nodes, req, cfg = self.nodes, shape.req, self.config
        est, binpack = req.vram_estimate_mib, cfg.strategy == "binpack"
        lookup, where = nodes.lookup, nodes.table.where
        put = shape.put_score
        limit = cfg.max_state_age_seconds
        by_class: dict[NodeClass, list[str]] = {}
        for name in names:
            by_class.setdefault(where[name], []).append(name)
        for cls, members in by_class.items():
            fit = self._static(shape, cls.key, cls.rep)
            assert isinstance(fit, StaticFit)
            rows, positions = cls.rows, fit.positions
            if fit.count == 1 and len(positions) == 1:  # one candidate GPU: it is the pick
                col, p, deg = cls.free[positions[0]], positions[0], fit.gpus[0][1]
                for name in members:
                    state = lookup(name).state  # type: ignore[union-attr]  # passing nodes have state
                    value, _, until = score(req, [(col[rows[name]], state.gpus[p], deg)], now, cfg)
                    fresh = _before(state.observed_unix + limit)  # policy.stale_after, inlined
                    put(name, value, until if until < fresh else fresh)
                continue
            for name in members:
                state = lookup(name).state  # type: ignore[union-attr]
                if fit.count == 1:
                    # pick_gpus for one GPU: the tightest (binpack) or emptiest (spread) fitting GPU, first on ties
                    row = rows[name]
                    pick, f = -1, 0
                    for i, p in enumerate(positions):
                        v = cls.free[p][row]
                        if v >= est and (pick < 0 or (v < f if binpack else v > f)):
                            pick, f = i, v
                    chosen: list[Chosen] | None = [(f, state.gpus[positions[pick]], fit.gpus[pick][1])]
                else:
                    chosen, _ = pick_gpus(fit.on(state), est, binpack, committed=nodes.committed_mib(name))
                value, _, until = score(req, chosen, now, cfg)  # type: ignore[arg-type]
                put(name, value, min(until, stale_after(state.observed_unix, cfg)))

    def scores(self, shape: ShapeMemo, names: Sequence[str], wanted: Names, now: float) -> list[int]:
        """Per name, its score without reservations (0 = not feasible), in `names` order."""
        nodes = self.nodes
        with nodes.lock:
            self._current(shape, now)
            generation, changed = nodes.changes_since(shape.score_generation, locked=True)
            shape.drop_scores(changed)
            shape.score_generation = generation
            shape.expire_scores(now)
            # scores only ever holds passing nodes: as many scores as passing nodes means nothing is missing
            missing = (wanted.difference(shape.scores) & shape.passed) if len(shape.scores) < len(shape.passed) \
                else ()
            if missing:
                self._score(shape, missing, now)
            return list(map(shape.scores.get, names, repeat(0)))
