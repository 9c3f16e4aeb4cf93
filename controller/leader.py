"""Leader election with a coordination.k8s.io/v1 Lease, so a second controller replica is safe.

Decision: the controller is deployed as a Deployment with 1 replica and strategy Recreate (the normal
case: at most one pod exists), AND it takes a Lease before reconciling. The Lease covers what Recreate
cannot: a rolling update configured by hand, ``kubectl scale --replicas=2``, a node partition where the
old pod still runs, or a developer running ``flexinfer-controller`` against the cluster from a laptop.
Only the holder writes; the others keep their caches warm and take over when the lease expires.

Writes use optimistic concurrency (resourceVersion): two candidates racing for an expired lease cannot
both win; the loser sees 409 and stays follower. Clock skew between nodes only shortens or lengthens
the takeover delay (renewTime is compared with the local clock, as client-go does).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import kubernetes.client

from flexinfer import kube, logs
from flexinfer.state import parse_rfc3339

log = logs.get("flexinfer.controller.leader")


def micro_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_micro_time(value: Any) -> float | None:
    return parse_rfc3339(value)


def default_identity() -> str:
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


class LeaseLock:
    def __init__(
        self,
        api: kubernetes.client.ApiClient,
        namespace: str,
        name: str = "flexinfer-controller",
        identity: str | None = None,
        lease_duration_s: int = 15,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity or default_identity()
        self.lease_duration_s = lease_duration_s
        self.clock = clock
        self.is_leader = False

    def _body(self, now: float, current: dict | None, transitions: int) -> dict:
        acquire = micro_time(now)
        spec = {"holderIdentity": self.identity, "leaseDurationSeconds": self.lease_duration_s,
                "renewTime": micro_time(now), "leaseTransitions": transitions}
        if current and (current.get("spec") or {}).get("holderIdentity") == self.identity:
            spec["acquireTime"] = (current.get("spec") or {}).get("acquireTime") or acquire
        else:
            spec["acquireTime"] = acquire
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if current:
            meta["resourceVersion"] = (current.get("metadata") or {}).get("resourceVersion")
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}

    def try_acquire_or_renew(self) -> bool:
        """One attempt; returns whether this replica holds the lease afterwards. Never raises."""
        now = self.clock()
        try:
            cur = kube.get_object(self.api, "leases", self.name, self.namespace, retry=kube.NO_RETRY)
            if cur is None:
                kube.create_object(self.api, self._body(now, None, 0), retry=kube.NO_RETRY)
                return self._set(True)
            spec = cur.get("spec") or {}
            holder = spec.get("holderIdentity")
            renew = parse_micro_time(spec.get("renewTime")) or 0.0
            duration = float(spec.get("leaseDurationSeconds") or self.lease_duration_s)
            if holder and holder != self.identity and now < renew + duration:
                return self._set(False)
            transitions = int(spec.get("leaseTransitions") or 0) + (0 if holder == self.identity else 1)
            kube.replace_object(self.api, self._body(now, cur, transitions), retry=kube.NO_RETRY)
            return self._set(True)
        except kube.KubeError as e:
            if not e.conflict:
                log.warning("lease update failed", error=str(e))
            return self._set(False)

    def release(self) -> None:
        """Give the lease up (on clean shutdown) so another replica takes over at once."""
        if not self.is_leader:
            return
        try:
            cur = kube.get_object(self.api, "leases", self.name, self.namespace, retry=kube.NO_RETRY)
            if cur and (cur.get("spec") or {}).get("holderIdentity") == self.identity:
                body = self._body(self.clock(), cur, int((cur.get("spec") or {}).get("leaseTransitions") or 0))
                body["spec"]["holderIdentity"] = ""
                body["spec"]["leaseDurationSeconds"] = 1
                kube.replace_object(self.api, body, retry=kube.NO_RETRY)
        except kube.KubeError as e:
            log.warning("lease release failed", error=str(e))
        self.is_leader = False

    def _set(self, leader: bool) -> bool:
        if leader != self.is_leader:
            log.info("leadership changed", leader=leader, identity=self.identity, lease=f"{self.namespace}/{self.name}")
        self.is_leader = leader
        return leader
