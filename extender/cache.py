"""NodeCache: NodeViews by node name, parsed once per Node change (never on the request path).

Sources:
* a `flexinfer.kube.Informer` on nodes: `on_event` is `NodeCache.on_event` ("SYNC" rebuilds the whole
  cache from the list, ADDED/MODIFIED upsert, DELETED removes);
* static: `--nodes-from FILE` (a NodeList / Node JSON or YAML, or a fleet file turned into the Node
  objects the agents would publish, via flexinfer.nodes);
* embedders (the demo) call `upsert(obj)` / `remove(name)` directly.

It also keeps the VRAM committed to bound pods (`extender.commitments`, fed by the extender's pod watch through
`commit` / `uncommit`) and folds it into each node's free columns: a commitment changes one row and is logged like a
Node update, so the verdict memos follow it without any per-request work.

Readiness: ready only after the first full sync (or static load). When the API server goes away
the cache keeps serving what it has; `readiness()` stays ready while the last successful sync or
event is younger than `stale_after_seconds`, and says why in its text either way.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from flexinfer import freshness, logs
from flexinfer.nodes import load_node_objects, view_of
from flexinfer.state import NodeView

from .commitments import EMPTY, Commitment, Commitments, Placer
from .pod import PodRequirements
from .policy import INF, commit_gpus, effective_free, static_class

log = logs.get("flexinfer.extender.cache")


def _nth_largest(values: Sequence[int], count: int) -> int:
    """The `count`-th largest of `values` (`NodeClass.available`'s rule for one node; its columns take the
    one-GPU, best-of and worst-of cases in C)."""
    if len(values) == 1:
        return values[0]
    if count == 1:
        return max(values)
    if count == len(values):
        return min(values)
    return sorted(values)[-count]


class NodeClass:
    """The cached nodes of one static class (`policy.static_class`: the same GPU models, count and health, or
    the same reason to have none), with their live facts in parallel columns: row i is `names[i]`, its
    observation time `observed[i]` and its GPU at position p has `free[p][i]` MiB free (`policy.effective_free`: what
    the agent sees free, capped by what bound pods' commitments leave). A pod shape's static
    verdict is computed once per class; the columns let the policy judge every member in a few C-level passes
    (`policy.split_class`)."""

    __slots__ = ("_derived", "_oldest", "_rejected", "free", "key", "names", "observed", "rep", "rows")

    def __init__(self, key: tuple, rep: NodeView) -> None:
        self.key = key
        self.rep = rep  # the view the class was made from: the class's static facts
        self.names: list[str] = []
        self.rows: dict[str, int] = {}
        self.observed: list[float] = []
        gpus = rep.state.gpus if key[0] == "gpus" and rep.state is not None else ()
        self.free: list[list[int]] = [[] for _ in gpus]
        self._derived: dict[tuple[tuple[int, ...], int], list[int]] = {}
        self._rejected: dict[str, dict[str, str]] = {}  # reason -> {member: reason}, kept while members stay
        self._oldest: float | None = None  # min(observed), kept until a member changes

    def __len__(self) -> int:
        return len(self.names)

    def _set(self, row: int, view: NodeView, committed: Mapping[int, int]) -> None:
        state = view.state
        if self.free and state is not None:
            self.observed[row] = state.observed_unix
            if committed:
                for col, g in zip(self.free, state.gpus, strict=True):
                    col[row] = effective_free(g, committed)
            else:
                for col, g in zip(self.free, state.gpus, strict=True):
                    col[row] = g.available_mib if g.available_mib > 0 else 0  # 0 when no time-slicing replica is left
        self._derived.clear()
        self._oldest = None

    def add(self, name: str, view: NodeView, committed: Mapping[int, int] = EMPTY) -> None:
        self._rejected.clear()
        self.rows[name] = len(self.names)
        self.names.append(name)
        self.observed.append(0.0)
        for col in self.free:
            col.append(0)
        self._set(len(self.names) - 1, view, committed)

    def update(self, name: str, view: NodeView, committed: Mapping[int, int] = EMPTY) -> None:
        self._set(self.rows[name], view, committed)

    def discard(self, name: str) -> None:
        self._rejected.clear()
        row = self.rows.pop(name)
        last = len(self.names) - 1
        columns = [self.names, self.observed, *self.free]
        if row != last:  # move the last row into the hole
            for col in columns:
                col[row] = col[last]
            self.rows[self.names[row]] = row
        for col in columns:
            col.pop()
        self._derived.clear()
        self._oldest = None

    def oldest(self) -> float:
        """The oldest observation time among the members (inf for an empty class)."""
        if self._oldest is None:
            self._oldest = min(self.observed, default=INF)
        return self._oldest

    def rejected(self, reason: str) -> dict[str, str]:
        """Every member mapped to `reason` (a static rejection shared by every pod shape that gets it), kept
        until the membership changes (read-only: callers merge it into their own maps)."""
        found = self._rejected.get(reason)
        if found is None:
            if len(self._rejected) >= 16:
                self._rejected.clear()
            found = self._rejected[reason] = dict.fromkeys(self.names, reason)
        return found

    def available(self, positions: tuple[int, ...], count: int) -> list[int]:
        """Per member, the `count`-th largest free MiB among the GPUs at `positions` (the column the policy
        compares with a pod's estimate). Kept until a member changes."""
        key = (positions, count)
        col = self._derived.get(key)
        if col is None:
            cols = [self.free[p] for p in positions]
            if len(cols) == 1:
                col = cols[0]
            elif count == 1:
                col = list(map(max, *cols))
            elif count == len(cols):
                col = list(map(min, *cols))
            else:
                col = [_nth_largest(row, count) for row in zip(*cols, strict=True)]
            if len(self._derived) >= 16:
                self._derived.clear()
            self._derived[key] = col
        return col

    def available_at(self, positions: tuple[int, ...], count: int, row: int) -> int:
        """`available(positions, count)[row]`, from the kept column if there is one, else for this row alone (a
        patch judging one changed node need not rebuild the column the change just invalidated)."""
        col = self._derived.get((positions, count))
        if col is not None:
            return col[row]
        return _nth_largest([self.free[p][row] for p in positions], count)


class NodeTable:
    """Every cached node in its static class (see NodeClass). Written under NodeCache's lock; read under it."""

    def __init__(self) -> None:
        self.classes: dict[tuple, NodeClass] = {}
        self.where: dict[str, NodeClass] = {}
        # Bumped whenever a node joins or leaves a class (rows move): what is laid over the rows (a name list's
        # projection, extender.memo) holds while it stays the same. Live facts changing in place do not bump it.
        self.layout = 0

    def put(self, name: str, view: NodeView, committed: Mapping[int, int] = EMPTY) -> None:
        key = static_class(view)
        old = self.where.get(name)
        if old is not None:
            if old.key == key:
                old.update(name, view, committed)
                return
            self.remove(name)
        cls = self.classes.get(key)
        if cls is None:
            cls = self.classes[key] = NodeClass(key, view)
        cls.add(name, view, committed)
        self.where[name] = cls
        self.layout += 1

    def remove(self, name: str) -> None:
        cls = self.where.pop(name, None)
        if cls is not None:
            self.layout += 1
            cls.discard(name)
            if not cls.names:
                del self.classes[cls.key]


def _binpack_placer(req: PodRequirements, view: NodeView, committed: Mapping[int, int]) -> tuple[int, ...]:
    return commit_gpus(req, view, committed, True)


class NodeCache:
    def __init__(self, *, stale_after_seconds: float = freshness.MAX_STATE_AGE_SECONDS,
                 clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._views: dict[str, NodeView] = {}
        self._rv: dict[str, str] = {}
        self.synced = False
        # False from when a bound-pod watch is set up until its first list arrived: VRAM committed to bound pods is
        # unknown until then, so the extender places nothing (a restarted replica would see those GPUs as free).
        self.commitments_synced = True
        self.static = False
        self.last_update_unix = 0.0
        self.stale_after_seconds = stale_after_seconds
        self.source_healthy: Callable[[], bool] | None = None  # e.g. lambda: informer.healthy
        self.clock = clock
        self.events = 0
        # Change log: the name of every node whose view changed, in order; generation = _log_base + len(_log).
        # Verdict memos (extender.memo) replay it instead of re-checking every node on every request.
        self._log: list[str] = []
        self._log_base = 0
        self.table = NodeTable()  # the same nodes by static class, with columns of live facts
        self.members = 0  # bumped when the SET of cached names changes (a node added or removed)
        # Services set this: after each full sync, gc.freeze() moves the (long-lived, acyclic) cached views
        # out of the collector's generations, so full collections on the request path stop walking them
        # (the p99 tail at thousands of nodes). Freed views still go by reference counting.
        self.freeze_gc_on_sync = False
        # VRAM of bound pods (extender.commitments): the table, and per cached node with any, GPU index -> MiB
        # (a new dict on every change, never changed in place: read without the lock). `placer` picks the GPUs
        # of a commitment made without them (the extender sets its policy's; called with the lock held).
        self.commitments = Commitments()
        self._committed: dict[str, Mapping[int, int]] = {}
        self.placer: Placer = _binpack_placer

    # --- reads ---------------------------------------------------------------------------
    @property
    def lock(self) -> threading.Lock:
        """Held while reading `table` (its columns change in place when a node changes)."""
        return self._lock

    def get(self, name: str) -> NodeView | None:
        return self._views.get(name)  # dict reads are atomic; views are immutable

    @property
    def lookup(self) -> Callable[[str], NodeView | None]:
        """`get` without a method call per node on the hot path (the dict may be replaced whole)."""
        return self._views.get

    def get_if_current(self, name: str, resource_version: str) -> NodeView | None:
        """The cached view when it was built from this exact resourceVersion, else None."""
        if resource_version and self._rv.get(name) == resource_version:
            return self._views.get(name)
        return None

    @property
    def generation(self) -> int:
        """Bumped once per changed node (upsert with a new view, removal, a relist that changed it)."""
        return self._log_base + len(self._log)

    def changes_since(self, generation: int, *, locked: bool = False) -> tuple[int, list[str] | None]:
        """(current generation, names changed since `generation`); None when the log no longer reaches back.
        `locked`: the caller holds `lock`."""
        if not locked:
            with self._lock:
                return self.changes_since(generation, locked=True)
        now = self._log_base + len(self._log)
        if generation < self._log_base or generation > now:
            return now, None
        return now, self._log[generation - self._log_base:]

    def committed_mib(self, name: str) -> Mapping[int, int]:
        """GPU index -> MiB committed to bound pods on the cached node `name` ({} for most nodes)."""
        return self._committed.get(name, EMPTY)

    def committed_for(self, name: str, view: NodeView | None) -> Mapping[int, int]:
        """`committed_mib` for `view` of node `name`: the cached view's numbers, or (a view from a request) the same
        commitments with that view's attribution."""
        if name not in self.commitments.by_node or view is None or view.state is None:
            return EMPTY
        if view is self._views.get(name):
            return self._committed.get(name, EMPTY)
        with self._lock:
            return self.commitments.per_gpu(name, view.state.placements())

    def commitment(self, pod: str) -> Commitment | None:
        return self.commitments.get(pod)

    def all_commitments(self) -> list[Commitment]:
        with self._lock:
            return list(self.commitments.by_pod.values())

    def views_dict(self) -> dict[str, NodeView]:
        """The views by name, the live dict (read under `lock`, never change it): set operations against it run
        in C without copying its keys."""
        return self._views

    def _logged(self, names: Iterable[str]) -> None:
        """Append to the change log (lock held); trimmed to about twice the node count."""
        self._log.extend(names)
        limit = max(4096, 2 * len(self._views))
        if len(self._log) > limit:
            cut = len(self._log) - limit // 2
            del self._log[:cut]
            self._log_base += cut

    def names(self) -> list[str]:
        with self._lock:
            return list(self._views)

    def views(self) -> list[NodeView]:
        with self._lock:
            return list(self._views.values())

    def __len__(self) -> int:
        return len(self._views)

    def __contains__(self, name: object) -> bool:
        return name in self._views

    def age_seconds(self) -> float:
        if not self.last_update_unix:
            return float("inf")
        return max(0.0, self.clock() - self.last_update_unix)

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason) for /readyz."""
        if not self.synced:
            return False, "node cache has not synced yet"
        if not self.commitments_synced:
            return False, "bound pods have not been listed yet (VRAM committed to them unknown)"
        n = len(self._views)
        if self.static:
            return True, f"static node list: {n} nodes"
        healthy = self.source_healthy() if self.source_healthy else True
        age = self.age_seconds()
        if healthy:
            return True, f"node cache synced: {n} nodes, last update {age:.0f} s ago"
        if age < self.stale_after_seconds:
            return True, (f"API server watch failing; serving {n} cached nodes, last update {age:.0f} s ago "
                          f"(unready after {self.stale_after_seconds:.0f} s)")
        return False, f"API server watch failing; node cache is {age:.0f} s old"

    # --- writes --------------------------------------------------------------------------
    def _commit_view(self, name: str, view: NodeView) -> Mapping[int, int]:
        """(lock held) GPU index -> MiB committed on `name` as `view` shows it (its attribution), recorded for the
        node; commitments without GPUs get the placer's pick now that the node's GPU state is known."""
        out = self.commitments.settle(name, view, self.placer)
        if not out:
            self._committed.pop(name, None)
            return EMPTY
        self._committed[name] = out
        return out

    def _recommit(self, name: str) -> None:
        """(lock held) The node's commitments changed: its row and the change log follow when its numbers do."""
        view = self._views.get(name)
        if view is None:
            self._committed.pop(name, None)
            return
        before = self._committed.get(name, EMPTY)
        after = self._commit_view(name, view)
        if after != before:
            self.table.put(name, view, after)
            self._logged((name,))

    def commit(self, c: Commitment) -> bool:
        """A bound pod holds `c.mib_per_gpu` on `c.gpus` of `c.node` (replacing its previous commitment). False when
        it was already committed so (a pod's status updates change nothing)."""
        with self._lock:
            old = self.commitments.get(c.pod)
            if old is not None and old.node == c.node and c.gpus is None and old.gpus is not None:
                c.gpus, c.req = old.gpus, None  # the GPUs it got do not change with its annotations
            if old is not None and (old.node, old.mib_per_gpu, old.name, old.gpus) == (c.node, c.mib_per_gpu, c.name,
                                                                                        c.gpus):
                return False
            self.commitments.put(c)
            if old is not None and old.node != c.node:
                self._recommit(old.node)
            self._recommit(c.node)
            return True

    def uncommit(self, pod: str) -> Commitment | None:
        """The pod finished, was deleted or left the watch: its memory is no longer committed."""
        with self._lock:
            old = self.commitments.pop(pod)
            if old is not None:
                self._recommit(old.node)
            return old

    @staticmethod
    def _name_rv(obj: dict[str, Any]) -> tuple[str, str]:
        meta = obj.get("metadata") or {}
        if not isinstance(meta, dict):
            return "", ""
        return str(meta.get("name") or ""), str(meta.get("resourceVersion") or "")

    def upsert(self, obj: dict[str, Any]) -> NodeView | None:
        if not isinstance(obj, dict):
            return None
        name, rv = self._name_rv(obj)
        if not name:
            return None
        with self._lock:
            if rv and self._rv.get(name) == rv and name in self._views:
                return self._views[name]
        view = view_of(obj)
        with self._lock:
            if name not in self._views:
                self.members += 1
            self._views[name] = view
            self._rv[name] = rv
            self.table.put(name, view, self._commit_view(name, view))
            self._logged((name,))
            self.last_update_unix = self.clock()
        return view

    def remove(self, name: str) -> None:
        with self._lock:
            if self._views.pop(name, None) is not None:
                self.members += 1
                self.table.remove(name)
                self._committed.pop(name, None)
                self._logged((name,))
            self._rv.pop(name, None)
            self.last_update_unix = self.clock()

    def replace_all(self, objs: Iterable[dict[str, Any]]) -> None:
        views: dict[str, NodeView] = {}
        rvs: dict[str, str] = {}
        for obj in objs:
            if not isinstance(obj, dict):
                continue
            name, rv = self._name_rv(obj)
            if name:
                old = self._views.get(name)
                views[name] = old if (old is not None and rv and self._rv.get(name) == rv) else view_of(obj)
                rvs[name] = rv
        with self._lock:
            old = self._views
            changed = [n for n, v in views.items() if old.get(n) is not v]
            changed.extend(n for n in old if n not in views)
            if any(n not in old or n not in views for n in changed):
                self.members += 1
            self._views = views
            self._rv = rvs
            for n in changed:
                v = views.get(n)
                if v is None:
                    self.table.remove(n)
                    self._committed.pop(n, None)
                else:
                    self.table.put(n, v, self._commit_view(n, v))
            self._logged(changed)
            self.last_update_unix = self.clock()
            self.synced = True
        self.settle_gc()

    def settle_gc(self) -> None:
        """With `freeze_gc_on_sync`: collect, then freeze what survives (long-lived caches), so later
        collections on the request path do not walk it again. Called after a full sync and by the extender
        after it memoised a large batch of verdicts."""
        if self.freeze_gc_on_sync:
            gc.collect()
            gc.freeze()

    def on_event(self, kind: str, obj: dict[str, Any]) -> None:
        """Informer callback (called from the informer thread)."""
        self.events += 1
        if kind == "SYNC":
            self.replace_all((obj or {}).get("items") or [])
            log.info("node_cache_synced", nodes=len(self._views))
        elif kind in ("ADDED", "MODIFIED"):
            self.upsert(obj)
        elif kind == "DELETED":
            name, _ = self._name_rv(obj)
            if name:
                self.remove(name)

    def load_static(self, path: str | Path, now: float | None = None) -> int:
        """Static mode from a NodeList/Node/fleet file. Raises ParseError on junk files."""
        objs = load_node_objects(path, now)
        self.replace_all(objs)
        self.static = True
        log.info("node_cache_static", path=str(path), nodes=len(self._views))
        return len(self._views)
