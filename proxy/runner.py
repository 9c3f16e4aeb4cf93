"""Running a :class:`~.server.Proxy`: its two listeners, the activity flush loop, graceful shutdown.

``ProxyServer.serve(stop)`` runs in the caller's event loop (the console script); ``start()`` runs it on
a thread with its own loop (tests, the demo, the bench) and returns once both listeners are bound.

Shutdown: ``/readyz`` turns 503 and new requests get 503 ``shutting_down`` (so the Service stops sending
them), requests in progress get up to ``grace_s`` to finish, then the listeners close.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from typing import Any

from aiohttp import web

from flexinfer import logs

from .guard import HEAD_TIMEOUT_S, GuardedSite
from .server import Proxy

log = logs.get("flexinfer.proxy.runner")
# The final activity flush on shutdown: what the manifest's terminationGracePeriodSeconds (40) leaves after the
# default drain (25), with room to spare.
FINAL_FLUSH_TIMEOUT_S = 10.0

# A client connection with no request in progress is closed after this long (aiohttp's default is an hour).
IDLE_CONNECTION_TIMEOUT_S = 75.0


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (it comes with uvicorn[standard]), else asyncio's default loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a runtime dependency through uvicorn[standard]
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class ProxyServer:
    def __init__(self, proxy: Proxy, bind_address: str = "127.0.0.1", http_port: int = 0, ops_port: int = 0,
                 *, grace_s: float = 25.0, flush_tick_s: float | None = None,
                 cleanup: list[Any] | None = None, head_timeout_s: float = HEAD_TIMEOUT_S) -> None:
        self.proxy = proxy
        self.bind_address = bind_address
        self.http_port = http_port
        self.ops_port = ops_port
        self.grace_s = grace_s
        self.head_timeout_s = head_timeout_s
        self.flush_tick_s = flush_tick_s
        self.cleanup = cleanup or []  # objects with .stop() (informers) stopped after the listeners
        self.bound: dict[str, int] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{_host(self.bind_address)}:{self.bound['http']}"

    @property
    def ops_url(self) -> str:
        return f"http://{_host(self.bind_address)}:{self.bound['ops']}"

    async def serve(self, stop: asyncio.Event) -> None:
        """Bind, serve until `stop` is set, then shut down gracefully."""
        proxy = self.proxy
        await proxy.start()
        api = web.AppRunner(proxy.api_app, handler_cancellation=True, access_log=None,
                            shutdown_timeout=self.grace_s, keepalive_timeout=IDLE_CONNECTION_TIMEOUT_S)
        ops = web.AppRunner(proxy.ops_app, access_log=None, shutdown_timeout=1.0)
        await api.setup()
        await ops.setup()
        sites = []
        try:
            for name, runner, port in (("http", api, self.http_port), ("ops", ops, self.ops_port)):
                if name == "ops" and port is None:
                    continue
                site = GuardedSite(runner, self.bind_address, port, backlog=1024, reuse_address=True,
                                   head_timeout_s=self.head_timeout_s, on_timeout=proxy.metrics.slow_heads.inc)
                await site.start()
                sites.append(site)
                self.bound[name] = _port_of(site)
            flusher = asyncio.create_task(proxy.activity.run(self.flush_tick_s))
            log.info("flexinfer-proxy listening", api=f"{self.bind_address}:{self.bound['http']}",
                     ops=f"{self.bind_address}:{self.bound.get('ops')}")
            self._ready.set()
            await stop.wait()
            proxy.draining = True
            log.info("shutting down: draining requests in progress", grace_seconds=self.grace_s)
            await api.cleanup()  # stops accepting, waits up to grace_s for handlers, then cancels them
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            try:  # the last traffic times, within what the pod's termination grace leaves after the drain
                await asyncio.wait_for(proxy.activity.flush(), FINAL_FLUSH_TIMEOUT_S)
            except TimeoutError:
                log.warning("shutting down: the last activity times were not all written in time",
                            timeout_seconds=FINAL_FLUSH_TIMEOUT_S)
            except Exception as e:  # shutting down: report, never block the exit
                log.warning("shutting down: writing the last activity times failed", error=str(e))
        finally:
            await ops.cleanup()
            with contextlib.suppress(Exception):
                await api.cleanup()
            await proxy.close()
            for obj in self.cleanup:
                with contextlib.suppress(Exception):
                    obj.stop()

    # -- on a thread --------------------------------------------------------------------------------
    def start(self, timeout_s: float = 10.0) -> ProxyServer:
        def run() -> None:
            loop = new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            self._stop = asyncio.Event()
            try:
                loop.run_until_complete(self.serve(self._stop))
            except BaseException as e:  # reported to start()
                self._error = e
                self._ready.set()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="flexinfer-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s) or self._error is not None:
            raise RuntimeError(f"flexinfer-proxy did not start: {self._error!r}")
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout_s)

    def call(self, fn: Any, *args: Any) -> Any:
        """Run a coroutine function on the proxy's loop from another thread (tests)."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(fn(*args), self._loop).result(30)

    def __enter__(self) -> ProxyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _port_of(site: GuardedSite) -> int:
    server = site._server
    assert server is not None and server.sockets
    return int(server.sockets[0].getsockname()[1])


def _host(addr: str) -> str:
    if addr in ("0.0.0.0", ""):
        return "127.0.0.1"
    if addr == "::":
        return "[::1]"
    with contextlib.suppress(OSError):
        if socket.inet_pton(socket.AF_INET6, addr):
            return f"[{addr}]"
    return addr
