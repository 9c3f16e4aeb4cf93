"""Verdict index: one pod shape's memoised per-node verdicts, kept as C-level lookup tables.

A verdict for (pod shape, node) only changes when
* the Node object changes (the cache logs every changed name: `NodeCache.changes_since`),
* a reservation lands on the node (nodes holding reservations are never served from here),
* time passes a boundary (the GPU state turns stale, an Xid penalty window ends: `valid_until`).

Between those events the answer for thousands of nodes is a few set/dict operations done in C
(`passed`, `failed`, `unresolvable`), not one Python call per node. Entries are filled lazily, for the
names kube-scheduler actually sends, and dropped (not recomputed) on a change: the next request that
names the node evaluates it again.

Only verdicts computed from the node cache's own view go in (never a view parsed from a full-`Nodes`
request, which may differ from the cached one), so the change log is the only invalidation needed.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from flexinfer.state import NodeView

from .policy import NodeVerdict

INF = float("inf")


class NodeNames(tuple[str, ...]):
    """An immutable node-name list with its set, made once per distinct request list (see wire.NameLists):
    kube-scheduler sends the same NodeNames for pod after pod, so hashing thousands of fresh strings
    into a set is paid once per list, not once per request."""

    wanted: frozenset[str]

    def __new__(cls, names: list[str]) -> NodeNames:
        self = super().__new__(cls, names)
        self.wanted = frozenset(self)
        return self


Names = set[str] | frozenset[str]  # a request's node names as a set


def subset(table: dict[str, str], wanted: Names) -> dict[str, str]:
    """The entries of `table` whose key is in `wanted` (a copy), cheapest way first."""
    if wanted.issuperset(table):  # kube-scheduler sent every node this table knows: copy in C
        return dict(table)
    if len(table) <= len(wanted):
        return {n: r for n, r in table.items() if n in wanted}
    return {n: table[n] for n in wanted if n in table}


def tally_of(failed: dict[str, str], unresolvable: dict[str, str]) -> Counter[tuple[bool, str]]:
    """(unresolvable, reason) -> number of nodes, counted in C: what the verdict metrics and log need."""
    tally = Counter({(True, r): n for r, n in Counter(unresolvable.values()).items()})
    tally.update({(False, r): n for r, n in Counter(failed.values()).items()})
    return tally


@dataclass(slots=True)
class FilterAnswer:
    """Filter's answer for one name list from the index alone: passed names in request order, FailedNodes,
    FailedAndUnresolvableNodes, and Counter of (unresolvable, reason) -> nodes."""

    passed: list[str]
    failed: dict[str, str]
    unresolvable: dict[str, str]
    tally: Counter[tuple[bool, str]]


@dataclass(slots=True)
class VerdictIndex:
    generation: int  # the node cache generation the entries are current for
    # name -> (view the verdict was computed from, or None for "not in cache"; verdict; valid until unix)
    entries: dict[str, tuple[NodeView | None, NodeVerdict, float]] = field(default_factory=dict)
    passed: set[str] = field(default_factory=set)
    scores: dict[str, int] = field(default_factory=dict)  # feasible nodes only (1..10)
    failed: dict[str, str] = field(default_factory=dict)
    unresolvable: dict[str, str] = field(default_factory=dict)
    _expiry: list[tuple[float, str]] = field(default_factory=list)  # heap of (valid_until, name)
    drops: int = 0  # entries removed so far (any cause)
    version: int = 0  # bumped on every put/drop: derived answers below are keyed by it
    _answer_key: tuple[object, int] | None = None
    _answer: FilterAnswer | None = None
    # The last NodeNames served and what of it was not in `entries` afterwards (nodes holding reservations,
    # verdicts not memoised): while no entry has been dropped since, that is all a repeat of the list can miss.
    _last_names: NodeNames | None = None
    _last_drops: int = -1
    _last_pending: frozenset[str] = frozenset()

    def __len__(self) -> int:
        return len(self.entries)

    def put(self, name: str, view: NodeView | None, verdict: NodeVerdict, valid_until: float) -> None:
        if name in self.entries:
            self.drop(name)
        self.entries[name] = (view, verdict, valid_until)
        self.version += 1
        if verdict.feasible:
            self.passed.add(name)
            self.scores[name] = verdict.score
        elif verdict.unresolvable:
            self.unresolvable[name] = verdict.reason
        else:
            self.failed[name] = verdict.reason
        if valid_until != INF:
            heapq.heappush(self._expiry, (valid_until, name))

    def drop(self, name: str) -> None:
        if self.entries.pop(name, None) is not None:
            self.drops += 1
            self.version += 1
            self.passed.discard(name)
            self.scores.pop(name, None)
            self.failed.pop(name, None)
            self.unresolvable.pop(name, None)

    def drop_all(self, names: Iterable[str]) -> None:
        for name in names:
            self.drop(name)

    def clear(self) -> None:
        self.drops += 1
        self.version += 1
        self.entries.clear()
        self.passed.clear()
        self.scores.clear()
        self.failed.clear()
        self.unresolvable.clear()
        self._expiry.clear()

    def answer(self, names: Sequence[str], wanted: Names) -> FilterAnswer:
        """The index's verdicts for `names` as filter's three answers plus their reason tally (shared: copy
        before changing). Recomputed only when the index changed or another list comes; a repeat of the same
        NodeNames object against an unchanged index costs nothing."""
        key = (names, self.version)
        if self._answer is not None and self._answer_key is not None and self._answer_key[0] is names \
                and self._answer_key[1] == self.version:
            return self._answer
        unique = names if len(wanted) == len(names) else list(dict.fromkeys(names))
        failed, unresolvable = subset(self.failed, wanted), subset(self.unresolvable, wanted)
        answer = FilterAnswer(list(filter(self.passed.__contains__, unique)), failed, unresolvable,
                              tally_of(failed, unresolvable))
        if isinstance(names, NodeNames):  # immutable: safe to key by identity
            self._answer_key, self._answer = key, answer
        return answer

    def unknown(self, names: Sequence[str], wanted: Names) -> set[str] | frozenset[str]:
        """The names with no entry."""
        if names is self._last_names and self.drops == self._last_drops:
            return {n for n in self._last_pending if n not in self.entries}
        return wanted.difference(self.entries)

    def served(self, names: Sequence[str], candidates: AbstractSet[str]) -> None:
        """Remember what a request for `names` left out of `entries` (`candidates`: its unknown and held names)."""
        if isinstance(names, NodeNames):
            self._last_names = names
            self._last_drops = self.drops
            self._last_pending = frozenset(n for n in candidates if n not in self.entries)

    def expire(self, now_unix: float) -> int:
        """Drop entries whose validity ended at or before `now_unix`; returns how many."""
        heap = self._expiry
        dropped = 0
        while heap and heap[0][0] <= now_unix:
            until, name = heapq.heappop(heap)
            entry = self.entries.get(name)
            if entry is not None and entry[2] == until:
                self.drop(name)
                dropped += 1
        if len(heap) > 4 * len(self.entries) + 1024:  # superseded items pile up under churn: rebuild
            self._expiry = [(e[2], n) for n, e in self.entries.items() if e[2] != INF]
            heapq.heapify(self._expiry)
        return dropped

    def sync(self, changes: tuple[int, list[str] | None]) -> None:
        """Apply the node cache's change log since `generation` (None: too old, start over)."""
        generation, names = changes
        if names is None:
            self.clear()
        elif names:
            self.drop_all(names)
        self.generation = generation
