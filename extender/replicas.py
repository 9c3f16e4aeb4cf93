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
  takes over. By then every pod the old holder answered for is bound or failed.
* a holder that cannot renew stops answering at its renew deadline (3/4 of the lease, by its own monotonic
  clock), before any follower may consider the Lease expired: two replicas never answer at once
  (controller.leader implements client-go's rules; this module only adds forwarding).

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


class Replicas:
    """Lease-based leadership and forwarding (see the module doc). Thread-safe; `forward_http` runs on the
    HTTP event loop, `forward_grpc` on gRPC worker threads."""

    def __init__(self, api: Any, namespace: str, *, http_url: str, grpc_target: str = "",
                 tls: TlsFiles | None = None, peer_server_name: str | None = None, name: str = LEASE_NAME,
                 lease_duration_s: float = 8.0, retry_s: float = 1.0, handoff_grace_s: float = 1.0,
                 forward_timeout_s: float = 1.5, metrics: Any = None) -> None:
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

    def step(self) -> bool:
        """One election round (the loop calls it every `retry_s`): take or renew the Lease, note the holder."""
        if not self._draining:
            self.lock.try_acquire_or_renew()
        identity = self.lock.holder
        holder = Holder.parse(identity) if identity else None
        if holder != self._holder:
            log.info("extender_leader", leader=identity or None, me=identity == self.identity)
            self._holder = holder
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
