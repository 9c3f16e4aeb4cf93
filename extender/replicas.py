"""Replicas agree: one Lease holder answers filter/prioritize; the other replicas forward to it.

Why (extender/README.md "Replicas" has the full comparison): tentative reservations exist only between an
extender answer and the pod's bind showing up in the watch, a few milliseconds to a second. Two replicas
each keeping their own let a burst place two pods in one slot (10 pods in 5 slots). Writing each
reservation to the API (annotations, Leases) puts an API round trip and a write conflict on every
scheduling cycle; deriving them from bound pods cannot see the pods kube-scheduler has only *assumed*,
which is the race itself. So exactly one replica — the holder of the Lease `flexinfer-extender` — keeps
tentative reservations and answers the scheduling verbs; a follower forwards the request body unchanged to
the holder (mutual TLS, keep-alive connection) and passes its answer back. Every replica stays Ready
(rolling updates and the PodDisruptionBudget keep working) and keeps its caches and the pod watch warm, so
bound pods' commitments (extender/commitments.py) are already there when it takes over.

Failover:
* graceful (SIGTERM, rollout, drain): the holder stops answering (503, kube-scheduler retries), waits
  `handoff_grace_s` for the binds of pods it answered to reach the watch, then releases the Lease; a
  follower takes it within `retry_s`.
* hard (SIGKILL, node lost): followers answer 503 until the Lease expires (`lease_duration_s`), then one
  takes over.
* a holder that cannot renew stops answering at its renew deadline (3/4 of the lease, by its own monotonic
  clock), before any follower may consider the Lease expired: two replicas never answer at once
  (controller.leader implements client-go's rules; this module only adds forwarding).
* **takeover**: the new holder does not know the old holder's tentative reservations. The pods the old holder
  answered for last are assumed by kube-scheduler and bound asynchronously; until a pod's bind has reached the
  new holder's pod watch, its memory looks free there, and the new holder would place another pod onto it. The
  old holder's last answer can be only `lease - renew deadline` (1/4 of the lease) before the new holder's
  first, and bind + watch latency on a loaded API server is not bounded by that (the Lease moves precisely
  when the API server is slow to answer renewals). So a replica that takes the Lease over from another
  holder (expired or released; not when it creates the Lease or renews or re-takes its own) answers the
  scheduling verbs with 503 "leader changed, retry" (kube-scheduler retries the pod) until
  1. `takeover_grace_s` (default the renew deadline, 3/4 of the lease) has passed since it took the Lease, so
     the old holder's last answer is at least one lease duration old (time for kube-scheduler to bind those pods),
     and then
  2. its bound-pod watch has delivered every pod a fresh list of bound pods shows (each listed pod that
     holds VRAM is committed, or the watch has passed the list's resourceVersion),
  at most `takeover_timeout_s` (then it answers, with a warning in the log). The normal case (no leader
  change) pays nothing: one integer comparison per request.

The holder's addresses travel in the Lease's holderIdentity: `<pod>_<random> <http URL> <gRPC host:port|->`.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc

from flexinfer import logs

from . import wire
from .grpc_edge import FORWARDED_KEY, SCHEDULING, SERVICE_NAME
from .tls import TlsFiles, client_context, grpc_channel_credentials

FORWARDED_HEADER = FORWARDED_KEY  # the same name marks a forwarded HTTP request
log = logs.get("flexinfer.extender.replicas")

LEASE_NAME = "flexinfer-extender"
MAX_PEER_CHANNELS = 4  # gRPC channels kept to Lease holders (one per address); the least recently used is closed


@dataclass(frozen=True, slots=True)
class Holder:
    identity: str
    http_url: str
    grpc_target: str  # "" when the holder serves no gRPC

    @classmethod
    def parse(cls, identity: str) -> Holder | None:
        parts = identity.split()
        if len(parts) != 3 or not parts[1].startswith(("http://", "https://")):
            return None
        return cls(identity, parts[1].rstrip("/"), "" if parts[2] == "-" else parts[2])


def make_identity(http_url: str, grpc_target: str = "") -> str:
    pod = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{pod}_{uuid.uuid4().hex[:8]} {http_url.rstrip('/')} {grpc_target or '-'}"


def _error_body(message: str) -> bytes:
    return wire.encoder.encode(wire.ErrorBody(Error=message))


def _rv(value: Any) -> int | None:
    """A resourceVersion as an integer (etcd's revision; the API server's are), None when it is not one."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class BoundSnapshot:
    """A consistent list of bound pods: its resourceVersion and the keys of the listed pods that hold VRAM."""

    resource_version: int | None
    holding: tuple[str, ...]


class BoundPodCatchUp:
    """Has the extender's bound-pod watch delivered everything a fresh list of bound pods shows? (The takeover
    rule, module doc.) `informer`: the extender's pod Informer; `extender`: the Extender it feeds."""

    def __init__(self, api: Any, informer: Any, extender: Any, *, page_size: int = 500,
                 timeout_s: float = 10.0) -> None:
        self.api = api
        self.informer = informer
        self.extender = extender
        self.page_size = page_size
        self.timeout_s = timeout_s

    def snapshot(self) -> BoundSnapshot:
        """List bound pods now (a consistent read, paged). Raises KubeError."""
        from flexinfer import kube

        from .commitments import BOUND_PODS_SELECTOR, commitments_in

        path = kube.resource_path(kube.resource_for("pods"))
        items, rv, _ = kube.list_pages(
            lambda query: kube.request(self.api, "GET", path, timeout_s=self.timeout_s, query=query), path,
            {"fieldSelector": BOUND_PODS_SELECTOR}, self.page_size)  # every page from the first one's snapshot
        return BoundSnapshot(_rv(rv), tuple(c.pod for c in commitments_in(items)))

    def covers(self, snap: BoundSnapshot) -> bool:
        """True once the watch has passed the snapshot (an event newer than it was handled: the informer hands
        events on in order, one at a time) or every listed pod holding VRAM is committed."""
        seen = _rv(self.informer.resource_version)
        if seen is not None and snap.resource_version is not None and seen > snap.resource_version:
            return True
        commitment = self.extender.cache.commitment
        return all(commitment(key) is not None for key in snap.holding)


class Replicas:
    """Lease-based leadership and forwarding (see the module doc). Thread-safe; `forward_http` runs on the
    HTTP event loop, `forward_grpc` on gRPC worker threads."""

    def __init__(self, api: Any, namespace: str, *, http_url: str, grpc_target: str = "",
                 tls: TlsFiles | None = None, peer_server_name: str | None = None, name: str = LEASE_NAME,
                 lease_duration_s: float = 8.0, retry_s: float = 1.0, handoff_grace_s: float = 1.0,
                 forward_timeout_s: float = 1.5, metrics: Any = None, catch_up: BoundPodCatchUp | None = None,
                 takeover_grace_s: float | None = None, takeover_timeout_s: float | None = None) -> None:
        from flexinfer.controller.leader import LeaseLock, LeaseTimings

        self.identity = make_identity(http_url, grpc_target)
        # client-go's rules (controller.leader): expiry by local observation, renew deadline < lease duration
        timings = LeaseTimings(lease_duration_s=lease_duration_s, renew_deadline_s=lease_duration_s * 0.75,
                               retry_period_s=retry_s, api_timeout_s=min(2.0, lease_duration_s * 0.3))
        self.lock = LeaseLock(api, namespace, name, identity=self.identity, timings=timings)
        self.lease_duration_s = lease_duration_s
        self.retry_s = retry_s
        self.handoff_grace_s = handoff_grace_s
        self.forward_timeout_s = forward_timeout_s
        self.tls = tls if tls is not None and tls.enabled else None
        self.peer_server_name = peer_server_name
        self.metrics = metrics
        # takeover rule (module doc): wait this long after taking the Lease over, then for the pod watch
        self.catch_up = catch_up
        self.takeover_grace_s = timings.renew_deadline_s if takeover_grace_s is None else takeover_grace_s
        self.takeover_timeout_s = (self.takeover_grace_s + max(10.0, 2 * lease_duration_s)
                                   if takeover_timeout_s is None else takeover_timeout_s)
        self._caught_up = 0  # the last takeover (LeaseLock.takeovers) after which this replica may answer
        self._catching_up = 0  # the last takeover a catch-up thread was started for
        self.takeover_waits: list[float] = []  # seconds each completed takeover wait took (bounded: last 16)
        self._holder: Holder | None = None
        self._draining = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._http: dict[int, aiohttp.ClientSession] = {}
        self._channels: OrderedDict[str, tuple[grpc.Channel, Any]] = OrderedDict()  # by target, least recent first
        self._mu = threading.Lock()
        self.forwarded = 0

    # --- leadership ---------------------------------------------------------------------------------
    @property
    def is_leader(self) -> bool:
        return not self._draining and self.lock.is_leader

    @property
    def holder(self) -> Holder | None:
        return self._holder

    @property
    def catching_up(self) -> bool:
        """True between a takeover and the end of its wait (module doc), while this replica does not answer."""
        return self.lock.takeovers != self._caught_up

    def step(self) -> bool:
        """One election round (the loop calls it every `retry_s`): take or renew the Lease, note the holder."""
        if not self._draining:
            self.lock.try_acquire_or_renew()
        identity = self.lock.holder
        holder = Holder.parse(identity) if identity else None
        if holder != self._holder:
            log.info("extender_leader", leader=identity or None, me=identity == self.identity)
            self._holder = holder
        count, since, previous = self.lock.takeover()
        if count != self._catching_up:
            self._catching_up = count
            threading.Thread(target=self._catch_up, args=(count, since, previous), name="extender-takeover",
                             daemon=True).start()
        if self.metrics is not None:
            self.metrics.is_leader.set(1 if self.is_leader else 0)
        return self.is_leader

    def start(self) -> Replicas:
        self.step()
        self._thread = threading.Thread(target=self._loop, name="extender-lease", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.retry_s):
            try:
                self.step()
            except Exception as e:  # never let the election thread die; leadership lapses at its deadline
                log.warning("extender_lease_step_failed", error=repr(e))

    def _catch_up(self, count: int, since: float, previous: str) -> None:
        """After takeover number `count` (at monotonic `since`, from `previous`): wait `takeover_grace_s`, list
        the bound pods, wait until the pod watch has delivered them; then let this replica answer (module doc).
        Bounded by `takeover_timeout_s`; a newer takeover or stop() ends it without effect."""
        clock = self.lock.monotonic
        log.info("extender_takeover", previous_holder=previous or "(released)", grace_s=self.takeover_grace_s,
                 timeout_s=self.takeover_timeout_s)

        def waiting(until: float) -> bool:  # False once the wait is over or pointless
            if self._stop.is_set() or self.lock.takeovers != count or clock() >= until:
                return False
            self._stop.wait(0.05)
            return True

        deadline = since + self.takeover_timeout_s
        while waiting(min(since + self.takeover_grace_s, deadline)):
            pass
        snap = None
        while self.catch_up is not None and snap is None and clock() < deadline:
            try:
                snap = self.catch_up.snapshot()
            except Exception as e:  # the API server is slow or away: retry until the deadline
                log.warning("extender_takeover_list_failed", error=repr(e)[:300])
                while waiting(min(clock() + 0.5, deadline)):
                    pass
            if self._stop.is_set() or self.lock.takeovers != count:
                return
        while snap is not None and not self.catch_up.covers(snap) and waiting(deadline):  # type: ignore[union-attr]
            pass
        if self._stop.is_set() or self.lock.takeovers != count:
            return
        waited = clock() - since
        if self.catch_up is not None and (snap is None or not self.catch_up.covers(snap)):
            log.warning("extender_takeover_timeout", waited_s=round(waited, 2),
                        reason="the bound-pod watch did not catch up with the API server's list in time; answering")
        else:
            log.info("extender_takeover_done", waited_s=round(waited, 2), listed=len(snap.holding) if snap else None)
        self.takeover_waits = [*self.takeover_waits[-15:], waited]
        self._caught_up = count

    def stop(self) -> None:
        """Graceful hand-off: stop answering, let in-flight binds reach the watch, release the Lease."""
        was_leader = self.is_leader
        self._draining = True
        if self.metrics is not None:
            self.metrics.is_leader.set(0)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if was_leader:
            time.sleep(self.handoff_grace_s)
            self.lock.release()
        for channel, _ in self._channels.values():
            channel.close()

    # --- forwarding -----------------------------------------------------------------------------------
    def _target(self, forwarded: bool) -> tuple[Holder | None, str]:
        """(holder to forward to, "") or (None, reason to answer 503); (None, "") = answer locally."""
        if self._draining:
            return None, "this extender replica is shutting down and handing over; retry"
        if self.is_leader:
            if self.lock.takeovers != self._caught_up:  # the takeover rule (module doc); one int compare otherwise
                return None, ("this extender replica has just taken the Lease over from another one and waits until "
                              "that one's last placements are bound and in its pod watch (leader changed); retry")
            return None, ""
        if forwarded:
            return None, "forwarded to a replica that does not hold the extender Lease (leader changed); retry"
        holder = self._holder
        if holder is None or holder.identity == self.identity:
            return None, "no extender replica holds the Lease yet (leader election in progress); retry"
        return holder, ""

    def _session(self) -> aiohttp.ClientSession:
        """One aiohttp session (keep-alive pool) per event loop."""
        import asyncio

        key = id(asyncio.get_running_loop())
        session = self._http.get(key)
        if session is None or session.closed:
            ssl_ctx: Any = client_context(self.tls) if self.tls is not None else False
            session = self._http[key] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=ssl_ctx, limit=16, keepalive_timeout=20),
                timeout=aiohttp.ClientTimeout(total=self.forward_timeout_s), trust_env=False,
                skip_auto_headers=("User-Agent",))
        return session

    async def forward_http(self, path: str, body: bytes, forwarded: bool) -> tuple[int, bytes] | None:
        """None: answer locally. Else (status, body) to send back."""
        holder, why = self._target(forwarded)
        if holder is None:
            return (503, _error_body(why)) if why else None
        name = self.peer_server_name if self.peer_server_name and self.tls else None
        try:
            async with self._session().post(holder.http_url + path, data=body, server_hostname=name,
                                            headers={"content-type": "application/json", FORWARDED_HEADER: "1"}) as res:
                payload = await res.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            log.warning("extender_forward_failed", leader=holder.identity, error=repr(e)[:300])
            return 503, _error_body(f"the extender Lease holder {holder.http_url} is unreachable ({type(e).__name__}); "
                                    "retry")
        self.forwarded += 1
        return res.status, payload

    def forward_grpc(self, method: str, request: bytes, forwarded: bool) -> tuple[Any, Any] | None:
        """None: answer locally. Else (None, the holder's response bytes) or (grpc.StatusCode, message) to abort
        with. `request`: the request bytes as the caller sent them (forwarded unchanged)."""
        holder, why = self._target(forwarded)
        if holder is None:
            return (grpc.StatusCode.UNAVAILABLE, why) if why else None
        if not holder.grpc_target:
            return grpc.StatusCode.UNAVAILABLE, "the extender Lease holder serves no gRPC; retry"
        call = self._stub_call(holder.grpc_target, method)
        try:
            response = call(request, timeout=self.forward_timeout_s, metadata=((FORWARDED_KEY, "1"),))
        except grpc.RpcError as e:
            call_error = isinstance(e, grpc.Call)  # a bare RpcError has neither code() nor details()
            code = e.code() if call_error else grpc.StatusCode.UNAVAILABLE
            details = e.details() if call_error else repr(e)
            return code, f"forwarded to the extender Lease holder {holder.grpc_target}: {details}"
        self.forwarded += 1
        return None, response

    def _stub_call(self, target: str, method: str) -> Any:
        stale: list[grpc.Channel] = []
        with self._mu:
            entry = self._channels.get(target)
            if entry is not None:
                self._channels.move_to_end(target)
            else:
                if self.tls is not None:
                    options = [("grpc.ssl_target_name_override", self.peer_server_name)] if self.peer_server_name \
                        else []
                    channel = grpc.secure_channel(target, grpc_channel_credentials(self.tls), options=options)
                else:
                    channel = grpc.insecure_channel(target)
                # bytes in, bytes out: the request goes on as it came, the answer back as the holder wrote it
                entry = self._channels[target] = (channel, {m: channel.unary_unary(f"/{SERVICE_NAME}/{m}")
                                                            for m in SCHEDULING})
                # Targets come from the Lease (a new pod IP after every rollout): keep only the latest few.
                while len(self._channels) > MAX_PEER_CHANNELS:
                    stale.append(self._channels.popitem(last=False)[1][0])
        for channel in stale:
            channel.close()
        return entry[1][method]
