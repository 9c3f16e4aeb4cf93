"""Connection-level limits of the extender's HTTP listeners (uvicorn + httptools underneath).

Why a protocol subclass: uvicorn (0.54) bounds neither the request head (httptools buffers a header line of
any length: 10 connections x 64 MiB header lines took 770 MiB) nor the time a client may take to send it,
does not count connections still in the TLS handshake, and its `limit_concurrency` answers 503 *after* a
connection was accepted and its request parsed, so idle or trickling connections still pile up until the
process runs out of file descriptors (then every accept logs a traceback). h11's
`h11_max_incomplete_event_size` bounds the head size but not the header count or the time, costs ~3x the
parse time of httptools, and rejects with a bare 400 we cannot count. So the listener keeps uvicorn and
httptools for parsing and adds, per connection (event-loop thread only, no locks):

| limit | default | answer |
|---|---|---|
| request head (request line + headers) | 16 KiB | 431 `{"Error"}`, connection closed |
| header count | 100 | 431 |
| head (and TLS handshake) must arrive within | 10 s of the connection / of its first byte | 408, closed |
| idle keep-alive connection | 30 s | closed (uvicorn's `timeout_keep_alive`) |
| open connections per listener | 512, below the fd limit (`connection_cap`) | see below |

At the connection cap the oldest connection that is not inside a request (handshaking, idle, or still
sending its head) is closed to admit the new one; if every connection is inside a request, the new one
is closed.

The body limits (size, read time, nodes per request) are the app's (`extender.http`). Every rejection is
counted in `flexinfer_extender_connections_rejected_total{listener,reason}`; the log gets at most one line
per reason every `LOG_EVERY_S` seconds, with the count since the last one.

TLS is started by the protocol itself (`loop.start_tls`) instead of by the server socket, so a connection
is counted (and evictable, and timed) from accept, not only after its handshake.

A response's head and body leave in one write (`CorkedTransport`): uvicorn writes them separately, which on a
kept-alive connection meant two TLS records and two send() calls per answer.
"""

from __future__ import annotations

import asyncio
import resource
import ssl
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from flexinfer import logs

from . import wire
from .tls import ReloadingContext

log = logs.get("flexinfer.extender.listener")

LOG_EVERY_S = 10.0
FD_RESERVE = 128  # files the process needs besides client connections (API watches, logs, gRPC internals)

# Closed set of `reason` label values of flexinfer_extender_connections_rejected_total.
REASONS = ("header_too_large", "too_many_headers", "header_timeout", "bad_http", "connection_limit", "evicted",
           "tls_handshake_failed")


@dataclass(frozen=True, slots=True)
class Limits:
    """Every size, count and time limit of the extender's request paths (HTTP and gRPC)."""

    max_body_bytes: int = 32 * 1024 * 1024
    max_nodes: int = 100_000  # NodeNames or Nodes.items per request (Kubernetes supports 5000 nodes)
    max_head_bytes: int = 16 * 1024
    max_headers: int = 100
    head_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    idle_timeout_s: float = 30.0
    max_connections: int = 512  # per listener
    inline_body_bytes: int = 256 * 1024  # larger request bodies are decoded and evaluated on a worker thread
    max_large_requests: int = 2  # such requests in memory at once; the others wait (at most the body timeout)
    max_concurrent_rpcs: int = 64  # gRPC


def connection_cap(wanted: int, listeners: int) -> int:
    """Connections one listener may hold so that all listeners together stay below the process's file limit.

    Raises the soft RLIMIT_NOFILE to the hard limit first (as Go programs do), then leaves FD_RESERVE
    descriptors for everything else."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (ValueError, OSError):
                pass
    except (ValueError, OSError):  # pragma: no cover - no rlimits on this platform
        return wanted
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(8, min(wanted, (soft - FD_RESERVE) // max(1, listeners)))


class Listener:
    """Shared state of one listening port: its limits, TLS context, open connections and counters."""

    def __init__(self, name: str, limits: Limits, tls: ReloadingContext | None = None, metrics: Any = None,
                 max_connections: int | None = None) -> None:
        self.name = name
        self.limits = limits
        self.tls = tls
        self.metrics = metrics
        self.max_connections = max_connections or limits.max_connections
        self.conns: dict[LimitedHttpProtocol, None] = {}  # in accept order; event-loop thread only
        self.rejected: dict[str, int] = dict.fromkeys(REASONS, 0)
        self._logged: dict[str, tuple[float, int]] = {}

    def admit(self, conn: LimitedHttpProtocol) -> bool:
        if len(self.conns) >= self.max_connections:
            victim = next((c for c in self.conns if c.evictable()), None)
            if victim is None:
                return False
            self.count("evicted")
            victim.close_now()
            self.conns.pop(victim, None)
        self.conns[conn] = None
        self._gauge()
        return True

    def release(self, conn: LimitedHttpProtocol) -> None:
        if self.conns.pop(conn, 0) is None:
            self._gauge()

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.open_connections.labels(self.name).set(len(self.conns))

    def count(self, reason: str, detail: str = "") -> None:
        self.rejected[reason] += 1
        if self.metrics is not None:
            self.metrics.connections_rejected.labels(self.name, reason).inc()
        now = time.monotonic()
        last, suppressed = self._logged.get(reason, (0.0, 0))
        if now - last >= LOG_EVERY_S:
            log.warning("extender_connection_rejected", listener=self.name, reason=reason, detail=detail[:200],
                        suppressed_since_last=suppressed)
            self._logged[reason] = (now, 0)
        else:
            self._logged[reason] = (last, suppressed + 1)


CORK_JOIN_BYTES = 64 * 1024  # gathered writes up to this size are joined into one (one TLS record)


class CorkedTransport:
    """The connection's transport, with writes gathered until the response is complete (the protocol calls `flush`
    in `on_response_complete`) or, at the latest, the event loop's next turn; close() flushes first, abort() drops
    them. Everything else is the transport's."""

    __slots__ = ("_buf", "_loop", "_scheduled", "_t")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._t = transport
        self._loop = loop
        self._buf: list[bytes] = []
        self._scheduled = False

    @property
    def transport(self) -> asyncio.Transport:
        return self._t

    def write(self, data: bytes) -> None:
        if not data:
            return
        self._buf.append(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        buf = self._buf
        if not buf:
            return
        self._buf = []
        t = self._t
        if t.is_closing():
            return
        if len(buf) == 1:
            t.write(buf[0])
        elif sum(map(len, buf)) <= CORK_JOIN_BYTES:
            t.write(b"".join(buf))
        else:
            t.writelines(buf)

    def writelines(self, data: Any) -> None:
        for chunk in data:
            self.write(chunk)

    def get_write_buffer_size(self) -> int:
        return self._t.get_write_buffer_size() + sum(map(len, self._buf))

    def close(self) -> None:
        self.flush()
        self._t.close()

    def abort(self) -> None:
        self._buf = []
        self._t.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._t, name)


def _response(status: int, message: str) -> bytes:
    body = wire.encoder.encode(wire.ErrorBody(Error=message))
    phrase = {400: "Bad Request", 408: "Request Timeout", 431: "Request Header Fields Too Large"}.get(status, "")
    return (f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode() + body


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the head limits, timeouts, connection cap and TLS start above."""

    listener: ClassVar[Listener]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._raw: asyncio.Transport | None = None
        self._started = False  # uvicorn's connection_made ran (after the TLS handshake, if any)
        self._closed = False
        self._in_head = True  # waiting for / reading a request head
        self._head_bytes = 0
        self._headers_seen = 0
        self._limit_hit = ""
        self._deadline: asyncio.TimerHandle | None = None
        self._tls_task: asyncio.Task | None = None
        self._early: list[bytes] = []  # decrypted bytes that arrived before start_tls returned

    # --- lifecycle -------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._raw = transport
        lst = self.listener
        if not lst.admit(self):
            lst.count("connection_limit", f"{len(lst.conns)} connections, each inside a request")
            self._closed = True
            transport.abort()
            return
        self._arm()
        if lst.tls is None:
            self._start(transport)
            return
        transport.pause_reading()
        self._tls_task = self.loop.create_task(self._start_tls(transport, lst.tls.get()))

    async def _start_tls(self, raw: asyncio.Transport, ctx: ssl.SSLContext) -> None:
        try:
            tls = await self.loop.start_tls(raw, self, ctx, server_side=True,
                                            ssl_handshake_timeout=self.listener.limits.head_timeout_s)
        except (OSError, ssl.SSLError, EOFError, TimeoutError, asyncio.CancelledError, RuntimeError) as e:
            if not self._closed:
                self.listener.count("tls_handshake_failed", repr(e))
            self._finish()
            raw.abort()
            return
        if self._closed or tls is None:
            if tls is not None:
                tls.abort()
            return
        self._start(tls)

    def _start(self, transport: asyncio.Transport) -> None:
        self._started = True
        super().connection_made(CorkedTransport(transport, self.loop))  # type: ignore[arg-type]
        early, self._early = self._early, []
        for chunk in early:
            self.data_received(chunk)

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish()
        if self._started:
            super().connection_lost(exc)

    def _finish(self) -> None:
        self._closed = True
        self._disarm()
        self.listener.release(self)

    def evictable(self) -> bool:
        """Not inside a request (handshaking, idle, or still sending a head): safe to close at the cap."""
        return not self._started or self._in_head

    def close_now(self) -> None:
        self._closed = True
        self._disarm()
        t = self.transport if self._started else self._raw
        if t is not None:
            t.abort()
        if self._tls_task is not None and not self._started:
            self._tls_task.cancel()

    # --- timers ---------------------------------------------------------------------------------
    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.listener.limits.head_timeout_s, self._on_deadline)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _on_deadline(self) -> None:
        self._deadline = None
        if self._closed:
            return
        if not self._started:
            self.listener.count("tls_handshake_failed", "handshake not finished in time")
            self.close_now()
            return
        if self._in_head:
            s = self.listener.limits.head_timeout_s
            self._reject(408, "header_timeout", f"request head not received within {s:g} s")

    def _reject(self, status: int, reason: str, message: str) -> None:
        self.listener.count(reason, message)
        self._closed = True
        self._disarm()
        if not self.transport.is_closing():
            self.transport.write(_response(status, message))
            self.transport.close()

    # --- parsing ----------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        if not self._started:
            # TLS: the client's first request can arrive with the end of the handshake, before start_tls has
            # returned the new transport to us; keep it (within the head limit) for when it has
            if self.listener.tls is not None and sum(map(len, self._early)) + len(data) <= \
                    self.listener.limits.max_head_bytes + 2**18:
                self._early.append(data)
            return
        self._unset_keepalive_if_required()
        if self._in_head and self._deadline is None:  # first bytes of a request on a kept-alive connection
            self._arm()
        lim = self.listener.limits
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            if self._limit_hit:
                self._reject(431, self._limit_hit, f"more than {lim.max_headers} request headers")
            else:
                self._reject(400, "bad_http", "invalid HTTP request")
            return
        except httptools.HttpParserUpgrade:
            self._reject(400, "bad_http", "protocol upgrades are not supported")
            return
        except httptools.HttpParserError as e:
            self._reject(400, "bad_http", f"invalid HTTP request: {e}")
            return
        if self._in_head and not self._closed:
            # the whole chunk belongs to an unfinished head: bounded by the limit plus one read (<= 256 KiB)
            self._head_bytes += len(data)
            if self._head_bytes > lim.max_head_bytes:
                self._reject(431, "header_too_large",
                             f"request head larger than {lim.max_head_bytes} bytes (request line and headers)")

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._headers_seen = 0
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers_seen += 1
        if self._headers_seen > self.listener.limits.max_headers:
            self._limit_hit = "too_many_headers"
            raise ValueError(self._limit_hit)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        self.transport.flush()  # type: ignore[attr-defined]  # the CorkedTransport: head and body in one write
        super().on_response_complete()
        self._in_head = True  # idle (uvicorn's keep-alive timer runs) until the next request's first byte


def protocol_for(listener: Listener) -> type[LimitedHttpProtocol]:
    """A protocol class bound to `listener` (uvicorn's Config(http=...) takes a class)."""
    return type(f"LimitedHttpProtocol_{listener.name}", (LimitedHttpProtocol,), {"listener": listener})

