"""VRAM reservations: memory promised to pods that are being placed and not bound yet.

The race (docs/extender-protocol.md, "The assume/bind race"): kube-scheduler runs scheduling cycles one at
a time, but binds asynchronously. Pod A is filtered, prioritized and *assumed* on node X; pod B's cycle starts at
once and reaches the extender before A is bound or visible in a watch. Without a reservation both "fit" the same GPU.

Design (cheap, self-healing, no node locks, no API calls on the request path):
1. *Tentative* reservation at the end of the pod's extender cycle: in `prioritize`, on the node the
   extender scored best (re-checked under the reservation lock, so concurrent requests cannot both
   take the last slot); in `filter`, when exactly one node is feasible (kube-scheduler skips
   prioritize then, and that node is the only possible choice). TTL `tentative_ttl_seconds` (30 s).
   A pod's own reservation is ignored when it is evaluated again (retries do not block themselves)
   and replaced by the new one.
2. When the pod watch shows the pod bound (spec.nodeName), its reservation ends and the pod's memory becomes a
   *commitment* (`extender.commitments`, kept by the node cache): held on the GPUs reserved for it when it was bound
   where it was reserved, for exactly as long as the pod stays bound. Nothing here guesses when a model's memory
   shows up in the agent's numbers: the policy fits against min(observed free, total - committed) - reserved.
3. Dropped when the TTL passes (the scheduler chose no node, or a bind failed), when the pod is deleted, or when a
   retry replaces it.

Bounds (the reservation map is keyed by pod UIDs from requests): one reservation per pod identity (a
retry replaces it), each exactly what that pod asks for (its GPU count x its per-GPU estimate, on GPUs the
policy found free for it), and at most `max_tentative` reservations in all: beyond, the oldest is dropped
(counted in `evicted`). Who may reserve at all is decided at the edge: with mutual TLS only kube-scheduler (and the
other replicas forwarding to the leader) reach filter/prioritize.

A reservation on the wrong node (the scheduler picked another one) would both block memory the pod does not use
and leave the node it went to looking emptier than it is until the bind shows up in the watch, so the answer makes
the reserved node the only best one (`policy.lead`) and the shipped extender weight makes that lead decide.
Without a pod watch (static `--nodes-from` mode)
reservations expire by TTL; embedders (the demo) feed pod events to `Extender.on_pod_event` themselves.

Thread-safe: one lock (held by the extender across evaluate-then-reserve); every operation is O(reservations on a
node) or O(1).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reservation:
    pod: str  # pod key (uid)
    node: str
    gpus: tuple[int, ...]
    mib_per_gpu: int
    created_unix: float
    expires_unix: float
    name: str = ""  # "namespace/pod"


DEFAULT_MAX_TENTATIVE = 4096  # pods between an extender answer and their bind; kube-scheduler binds in ms


class Reservations:
    def __init__(self, tentative_ttl_seconds: float = 30.0, max_tentative: int = DEFAULT_MAX_TENTATIVE) -> None:
        self.tentative_ttl_seconds = tentative_ttl_seconds
        self.max_tentative = max_tentative
        self.evicted = 0  # reservations dropped at the cap
        self._lock = threading.RLock()
        self._by_node: dict[str, dict[str, Reservation]] = {}
        self._by_pod: OrderedDict[str, Reservation] = OrderedDict()  # oldest first

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

    def _drop(self, pod: str) -> Reservation | None:
        old = self._by_pod.pop(pod, None)
        if old is not None:
            per = self._by_node.get(old.node)
            if per is not None:
                per.pop(pod, None)
                if not per:
                    del self._by_node[old.node]
        return old

    def nodes_holding(self) -> frozenset[str]:
        """Nodes with at least one unexpired reservation (a snapshot)."""
        with self._lock:
            return frozenset(self._by_node)

    def reserved_mib(self, node: str, now_unix: float, *, exclude_pod: str = "") -> dict[int, int]:
        """GPU index -> MiB reserved on `node` for other pods being placed (expired reservations are dropped)."""
        with self._lock:
            per = self._by_node.get(node)
            if not per:
                return {}
            out: dict[int, int] = {}
            for r in list(per.values()):
                if r.pod == exclude_pod:
                    continue
                if now_unix >= r.expires_unix:
                    self._drop(r.pod)
                    continue
                for i in r.gpus:
                    out[i] = out.get(i, 0) + r.mib_per_gpu
            return out

    def reserve(self, pod: str, node: str, gpus: tuple[int, ...], mib_per_gpu: int, now_unix: float, *,
                name: str = "") -> Reservation:
        """Reserve for a pod being placed (replaces the pod's previous reservation)."""
        with self._lock:
            self._drop(pod)
            while len(self._by_pod) >= self.max_tentative:
                self._drop(next(iter(self._by_pod)))
                self.evicted += 1
            r = Reservation(pod, node, tuple(gpus), mib_per_gpu, now_unix, now_unix + self.tentative_ttl_seconds,
                            name=name)
            self._by_pod[pod] = r
            self._by_node.setdefault(node, {})[pod] = r
            return r

    def release(self, pod: str) -> Reservation | None:
        """The pod was bound (its memory is now committed), deleted or finished: its reservation ends."""
        with self._lock:
            return self._drop(pod)

    def expire(self, now_unix: float) -> int:
        """Drop expired reservations everywhere; returns how many were dropped."""
        with self._lock:
            dead = [r.pod for r in self._by_pod.values() if now_unix >= r.expires_unix]
            for pod in dead:
                self._drop(pod)
            return len(dead)
