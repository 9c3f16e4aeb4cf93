"""Leader election with a coordination.k8s.io/v1 Lease, done the way client-go does it.

Why a Lease at all: the controller is deployed with 1 replica and strategy Recreate, but the Lease covers
what Recreate cannot: a rolling update configured by hand, ``kubectl scale --replicas=2``, a node
partition where the old pod still runs, a developer running ``flexinfer-controller`` from a laptop.
Only the holder writes; the others keep their caches warm and take over when the lease expires.

The rules (client-go's ``tools/leaderelection``):

* **Expiry is judged by local observation time, never by comparing clocks.** A candidate remembers the
  lease record it last saw and the local *monotonic* time at which that record last changed; the lease
  is expired only when the record has not changed for ``leaseDurationSeconds`` of this replica's own
  monotonic clock. ``renewTime`` is written for humans and is never compared with the local clock, so a
  replica whose wall clock is 20 s fast (or slow) neither steals a freshly renewed lease nor waits longer.
* **Renew deadline < lease duration.** The holder acts only while its last successful renewal *started*
  less than ``renew_deadline_s`` ago (monotonic). :attr:`LeaseLock.is_leader` checks this on every read,
  so leadership ends the moment the deadline passes, even while the renewing thread is stuck in a call to
  a hung API server. A follower cannot take over before ``lease_duration_s`` after it observed the last
  renewal, which is later than the holder's deadline: two replicas never act at once (as long as the
  clocks tick at the same rate; their offsets do not matter).
* **API timeouts < renew deadline.** Every Lease request carries ``api_timeout_s`` (default 4 s); a
  renewal that cannot complete fails in time to be retried within the deadline.
* Optimistic concurrency: writes carry the resourceVersion they read; of two candidates racing for an
  expired lease one gets 409 and stays follower. ``release()`` on clean shutdown empties
  ``holderIdentity`` so another replica takes over at once.
* **A takeover is not a fresh start.** Taking the lease from another holder (expired, or released: a Lease
  with an empty holder exists only after a release) is counted in ``takeovers`` (``takeover()`` gives the
  count, the monotonic start of the winning attempt and the previous holder), atomically with becoming
  leader. The previous holder acted until its renew deadline, and the effects of its last actions may not
  be visible to this replica yet; a user whose decisions depend on them waits before acting (the
  scheduler extender does: extender/replicas.py). Creating the Lease, and renewing or re-taking one's own,
  is not a takeover.

Why not ``kubernetes.leaderelection`` from the official Python client (evaluated at 37.0.2): its deadlines
use the wall clock (``time.time()``), so a clock step moves them; its Lease calls have no request timeout,
so against a hung API server a renewal blocks forever while the leading callback keeps running in its
thread (the renew deadline is only checked between attempts), i.e. the old leader keeps acting after
another replica took over; nothing lets the worker ask "am I still leader" before a write; ``run()`` leads
once and returns (no re-acquisition); configuration errors call ``sys.exit``; it builds its own
``CoordinationV1Api`` from the global default configuration instead of our client (User-Agent, timeouts,
retries off); no ``leaseTransitions`` and no release on shutdown. Its observed-time expiry rule is right,
and is the rule this module uses.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import kubernetes.client

from flexinfer import kube, logs
from flexinfer.state import rfc3339_micro

log = logs.get("flexinfer.controller.leader")


def default_identity() -> str:
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class LeaseTimings:
    """client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry period; plus the API timeout."""

    lease_duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0
    api_timeout_s: float = 4.0

    def __post_init__(self) -> None:
        if not 0 < self.api_timeout_s < self.renew_deadline_s:
            raise ValueError(f"API timeout ({self.api_timeout_s}s) must be shorter than the renew deadline "
                             f"({self.renew_deadline_s}s)")
        if not self.renew_deadline_s < self.lease_duration_s:
            raise ValueError(f"renew deadline ({self.renew_deadline_s}s) must be shorter than the lease duration "
                             f"({self.lease_duration_s}s)")
        if not 0 < self.retry_period_s * 1.2 < self.renew_deadline_s:  # client-go's JitterFactor 1.2
            raise ValueError(f"retry period ({self.retry_period_s}s) x 1.2 must be shorter than the renew deadline "
                             f"({self.renew_deadline_s}s)")


Record = tuple[str, float, str, str, int]  # holderIdentity, leaseDurationSeconds, acquireTime, renewTime, transitions


def _record(lease: dict[str, Any]) -> Record:
    spec = lease.get("spec") or {}
    return (str(spec.get("holderIdentity") or ""), float(spec.get("leaseDurationSeconds") or 0),
            str(spec.get("acquireTime") or ""), str(spec.get("renewTime") or ""),
            int(spec.get("leaseTransitions") or 0))


class LeaseLock:
    """One candidate. ``try_acquire_or_renew()`` makes one attempt (the controller loop calls it every
    ``retry_period_s``); ``is_leader`` says whether this replica may act *now*."""

    def __init__(
        self,
        api: kubernetes.client.ApiClient,
        namespace: str,
        name: str = "flexinfer-controller",
        identity: str | None = None,
        timings: LeaseTimings | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity or default_identity()
        self.timings = timings or LeaseTimings()
        self.clock = clock  # wall clock: only for the times written into the Lease (informational)
        self.monotonic = monotonic  # every decision
        self._lock = threading.Lock()
        self._leader = False
        self._valid_until = 0.0  # monotonic: start of the last successful renewal + renew deadline
        self._observed: Record | None = None
        self._observed_at = 0.0  # monotonic time the observed record last changed
        self.takeovers = 0  # acquisitions from another holder (see the module doc); read with takeover()
        self._taken_at = 0.0  # monotonic start of the attempt that made the last takeover
        self._taken_from = ""  # the holderIdentity it replaced ("" = a released lease)
        self._path = kube.resource_path(kube.resource_for("leases"), namespace, name)
        self._collection = kube.resource_path(kube.resource_for("leases"), namespace)

    # -- state ---------------------------------------------------------------------------------
    @property
    def is_leader(self) -> bool:
        """True while this replica holds the lease and its last renewal started less than the renew deadline
        ago (checked against the monotonic clock on every read)."""
        with self._lock:
            if self._leader and self.monotonic() >= self._valid_until:
                self._leader = False
                log.warning("leadership lost: no successful renewal within the renew deadline; stopped acting",
                            identity=self.identity, renew_deadline_s=self.timings.renew_deadline_s)
            return self._leader

    @property
    def holder(self) -> str:
        """holderIdentity as last observed ("" before the first attempt or when released). Read-only, for
        replicas that need to know who leads (the extender forwards to the holder)."""
        with self._lock:
            return self._observed[0] if self._observed else ""

    def takeover(self) -> tuple[int, float, str]:
        """(takeovers so far, monotonic start of the attempt that made the last one, the holder it replaced)."""
        with self._lock:
            return self.takeovers, self._taken_at, self._taken_from

    # -- one attempt ---------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        return kube.request(self.api, method, path, body=body, timeout_s=self.timings.api_timeout_s)

    def _body(self, current: dict | None, transitions: int, acquire_time: str) -> dict:
        now = rfc3339_micro(self.clock())
        spec = {"holderIdentity": self.identity, "leaseDurationSeconds": math.ceil(self.timings.lease_duration_s),
                "acquireTime": acquire_time or now, "renewTime": now, "leaseTransitions": transitions}
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if current:
            meta["resourceVersion"] = (current.get("metadata") or {}).get("resourceVersion")
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}

    def try_acquire_or_renew(self) -> bool:
        """One attempt to take or renew the lease; returns ``is_leader`` afterwards. Never raises."""
        started = self.monotonic()
        try:
            try:
                current = self._request("GET", self._path)
            except kube.KubeError as e:
                if not e.not_found:
                    raise
                try:
                    created = self._request("POST", self._collection, self._body(None, 0, ""))
                except kube.KubeError as lost:
                    if not lost.conflict:
                        raise
                    # another candidate created it first (both started at once): learn who holds it now, not one
                    # retry period later (the extender forwards to the holder it last observed)
                    self._observe(_record(self._request("GET", self._path)))
                    self._set(False)
                    return False
                self._won(created, started)
                return self.is_leader
            seen = _record(current)
            self._observe(seen)
            holder, duration = seen[0], seen[1] or self.timings.lease_duration_s
            mine = holder == self.identity
            if holder and not mine and self.monotonic() < self._observed_at + duration:
                self._set(False)
                return False
            acquire = seen[2] if mine else ""
            transitions = seen[4] + (0 if mine else 1)
            updated = self._request("PUT", self._path, self._body(current, transitions, acquire))
            self._won(updated, started, None if mine else holder)
        except kube.KubeError as e:
            # Leadership (if any) lasts until the deadline of the last successful renewal, not longer.
            if not e.conflict:
                log.warning("lease update failed", error=str(e), identity=self.identity)
        return self.is_leader

    def _observe(self, seen: Record) -> None:
        if seen != self._observed:
            self._observed, self._observed_at = seen, self.monotonic()

    def _won(self, lease: dict, started: float, taken_from: str | None = None) -> None:
        """`taken_from`: the holder this write replaced when it was not this replica ("" = released); None when
        the Lease was created or this replica's own was renewed."""
        with self._lock:
            self._observed, self._observed_at = _record(lease), started
            self._valid_until = started + self.timings.renew_deadline_s
            if taken_from is not None:  # counted before _leader is set: a reader never sees one without the other
                self.takeovers += 1
                self._taken_at, self._taken_from = started, taken_from
            if not self._leader or taken_from is not None:
                log.info("leadership acquired", identity=self.identity, lease=f"{self.namespace}/{self.name}",
                         previous_holder=taken_from)
            self._leader = True

    def _set(self, leader: bool, why: str = "another replica holds the lease") -> None:
        with self._lock:
            if self._leader and not leader:
                log.info(f"leadership lost: {why}", identity=self.identity)
            self._leader = leader

    def release(self) -> None:
        """Give the lease up (clean shutdown) so another replica takes over at once. Also when this replica's renew
        deadline passed meanwhile (a graceful hand-off waits with renewals stopped): the write carries the
        resourceVersion it read, so it only empties a Lease that still names this replica."""
        with self._lock:
            named = self._leader or (self._observed is not None and self._observed[0] == self.identity)
        if not named:
            return
        self._set(False, "released on shutdown")
        try:
            cur = self._request("GET", self._path)
            if (cur.get("spec") or {}).get("holderIdentity") == self.identity:
                body = self._body(cur, int((cur.get("spec") or {}).get("leaseTransitions") or 0), "")
                body["spec"]["holderIdentity"] = ""
                body["spec"]["leaseDurationSeconds"] = 1
                self._request("PUT", self._path, body)
        except kube.KubeError as e:
            log.warning("lease release failed", error=str(e))
