"""VRAM reservations: memory promised to pods the agent's numbers do not show yet.

The race (docs/extender-protocol.md, "The assume/bind race"): kube-scheduler runs scheduling cycles one at
a time, but binds asynchronously. Pod A is filtered, prioritized and *assumed* on node X; pod B's cycle starts at
once and reaches the extender before A is bound, visible in a watch, or loaded on the GPU. Without
a reservation both "fit" the same GPU.

Design (cheap, self-healing, no node locks, no API calls on the request path):
1. *Tentative* reservation at the end of the pod's extender cycle: in `prioritize`, on the node the
   extender scored best (re-checked under the reservation lock, so concurrent requests cannot both
   take the last slot); in `filter`, when exactly one node is feasible (kube-scheduler skips
   prioritize then, and that node is the only possible choice). TTL `tentative_ttl_seconds` (30 s).
   A pod's own reservation is ignored when it is evaluated again (retries do not block themselves)
   and replaced by the new one.
2. *Confirmed* when the pod watch shows the pod bound (spec.nodeName): moved to the node it was
   actually bound to if the scheduler chose another (other plugins also score), with GPUs picked
   by the policy there. Confirmed reservations live until the agent's observation postdates the
   pod becoming Ready (the model is loaded, so the agent's free memory includes it), or
   `bound_ttl_seconds` (15 min) as a backstop for pods that never get Ready.
3. Dropped when the pod is deleted, finishes (Succeeded/Failed), or the TTL passes.

Bounds (the reservation map is keyed by pod UIDs from requests): one reservation per pod identity (a
retry replaces it), each exactly what that pod asks for (its GPU count x its per-GPU estimate, on GPUs the
policy found free for it), and at most `max_tentative` tentative reservations in all: beyond, the oldest
tentative one is dropped (counted in `evicted`). Who may reserve at all is decided at the edge: with mutual
TLS only kube-scheduler (and the other replicas forwarding to the leader) reach filter/prioritize.

A tentative reservation on the wrong node (the scheduler picked another one) only makes the
extender conservative for at most the TTL or until the bind shows up in the watch. Without a pod
watch (static `--nodes-from` mode) reservations expire by TTL; embedders (the demo) call
`confirm()` themselves after binding.

Thread-safe: one lock; every operation is O(reservations on a node) or O(1).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class Reservation:
    pod: str  # pod key (uid)
    node: str
    gpus: tuple[int, ...]
    mib_per_gpu: int
    created_unix: float
    expires_unix: float
    bound: bool = False
    ready_unix: float = 0.0  # when the pod became Ready (0 = not yet)
    name: str = ""  # "namespace/pod": matched with the GPUs the node's agent says the pod holds


DEFAULT_MAX_TENTATIVE = 4096  # pods between an extender answer and their bind; kube-scheduler binds in ms


class Reservations:
    def __init__(self, tentative_ttl_seconds: float = 30.0, bound_ttl_seconds: float = 900.0,
                 max_tentative: int = DEFAULT_MAX_TENTATIVE) -> None:
        self.tentative_ttl_seconds = tentative_ttl_seconds
        self.bound_ttl_seconds = bound_ttl_seconds
        self.max_tentative = max_tentative
        self.evicted = 0  # tentative reservations dropped at the cap
        self._lock = threading.RLock()
        self._by_pod: dict[str, Reservation] = {}
        self._by_node: dict[str, dict[str, Reservation]] = {}
        self._tentative: OrderedDict[str, None] = OrderedDict()  # tentative pods, oldest first

    @property
    def lock(self) -> threading.RLock:
        """Held by the extender across evaluate-then-reserve so two requests cannot take one slot."""
        return self._lock

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_pod)

    def get(self, pod: str) -> Reservation | None:
        with self._lock:
            return self._by_pod.get(pod)

    def all(self) -> list[Reservation]:
        with self._lock:
            return list(self._by_pod.values())

    def _put(self, r: Reservation) -> None:
        self._drop(r.pod)
        if not r.bound:
            while len(self._tentative) >= self.max_tentative:
                self._drop(next(iter(self._tentative)))
                self.evicted += 1
            self._tentative[r.pod] = None
        self._by_pod[r.pod] = r
        self._by_node.setdefault(r.node, {})[r.pod] = r

    def tentative_count(self) -> int:
        with self._lock:
            return len(self._tentative)

    def _drop(self, pod: str) -> Reservation | None:
        self._tentative.pop(pod, None)
        old = self._by_pod.pop(pod, None)
        if old is not None:
            per = self._by_node.get(old.node)
            if per is not None:
                per.pop(pod, None)
                if not per:
                    del self._by_node[old.node]
        return old

    def nodes_holding(self) -> frozenset[str]:
        """Nodes with at least one live-or-unexpired reservation (a snapshot)."""
        with self._lock:
            return frozenset(self._by_node)

    def reserved_mib(self, node: str, now_unix: float, *, exclude_pod: str = "",
                     observed_unix: float = 0.0,
                     placed: Mapping[str, tuple[int, ...]] | None = None) -> dict[int, int]:
        """GPU index -> MiB held on `node` by other pods' live reservations. `placed` ("namespace/pod" -> GPU
        indexes, from the agent's kubelet attribution in the node's state): a bound pod the device plugin gave
        other GPUs than the ones reserved for it holds its memory on the GPUs it actually got."""
        with self._lock:
            per = self._by_node.get(node)
            if not per:
                return {}
            out: dict[int, int] = {}
            for r in list(per.values()):
                if r.pod == exclude_pod:
                    continue
                if self._expired(r, now_unix, observed_unix):
                    self._drop(r.pod)
                    continue
                gpus = placed.get(r.name, r.gpus) if placed and r.bound and r.name else r.gpus
                for i in gpus:
                    out[i] = out.get(i, 0) + r.mib_per_gpu
            return out

    @staticmethod
    def _expired(r: Reservation, now_unix: float, observed_unix: float) -> bool:
        if now_unix >= r.expires_unix:
            return True
        return bool(r.bound and r.ready_unix and observed_unix > r.ready_unix)

    def reserve(self, pod: str, node: str, gpus: tuple[int, ...], mib_per_gpu: int, now_unix: float, *,
                name: str = "") -> Reservation:
        """Tentative reservation (replaces the pod's previous one unless that one is bound)."""
        with self._lock:
            old = self._by_pod.get(pod)
            if old is not None and old.bound:
                return old
            r = Reservation(pod, node, tuple(gpus), mib_per_gpu, now_unix, now_unix + self.tentative_ttl_seconds,
                            name=name)
            self._put(r)
            return r

    def confirm(self, pod: str, node: str, now_unix: float, *, ready_unix: float = 0.0,
                pick: Callable[[str], tuple[tuple[int, ...], int] | None] | None = None,
                name: str = "") -> Reservation | None:
        """The pod is bound to `node`. Keep (or move) its reservation with the bound TTL.

        `pick(node)` returns (gpus, mib_per_gpu) when the pod was bound to a node it was not
        reserved on (or had no reservation); None means nothing to hold.
        """
        with self._lock:
            old = self._by_pod.get(pod)
            if old is not None and old.node == node:
                expires = old.expires_unix if old.bound else now_unix + self.bound_ttl_seconds
                r = replace(old, bound=True, expires_unix=expires, ready_unix=ready_unix or old.ready_unix,
                            name=name or old.name)
                self._put(r)
                return r
            if old is not None and old.bound:
                # Bound pods do not move; a different node means a new pod with a reused key.
                self._drop(pod)
            picked = pick(node) if pick is not None else None
            if picked is None:
                self._drop(pod)
                return None
            gpus, mib = picked
            r = Reservation(pod, node, tuple(gpus), mib, now_unix, now_unix + self.bound_ttl_seconds, True,
                            ready_unix, name)
            self._put(r)
            return r

    def release(self, pod: str) -> Reservation | None:
        with self._lock:
            return self._drop(pod)

    def expire(self, now_unix: float, observed: Callable[[str], float] | None = None) -> int:
        """Drop expired reservations everywhere; returns how many were dropped."""
        with self._lock:
            dead = [r.pod for r in self._by_pod.values()
                    if self._expired(r, now_unix, observed(r.node) if observed else 0.0)]
            for pod in dead:
                self._drop(pod)
            return len(dead)
