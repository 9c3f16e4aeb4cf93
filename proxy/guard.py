"""A time limit on a new connection's request head, which aiohttp does not have.

aiohttp bounds a request head's size (`max_line_size`, `max_field_size`) and closes idle keep-alive
connections, but a client that opens a connection and trickles its first request head a byte at a time
("slow loris") holds the connection, its buffers and a file descriptor until the idle timeout. `GuardedSite`
listens like `web.TCPSite` and wraps each connection's protocol: when the end of the first request head
(an empty line) has not arrived within `head_timeout_s`, the connection is closed and counted. Later requests
on a kept-alive connection are bounded by the keep-alive timeout and by the proxy's body and request timeouts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web

HEAD_TIMEOUT_S = 10.0
_END_OF_HEAD = b"\r\n\r\n"


class _HeadGuard(asyncio.Protocol):
    """Forwards every protocol callback to aiohttp's handler; closes the connection when the first request
    head is not complete in time."""

    def __init__(self, inner: Any, head_timeout_s: float, on_timeout: Callable[[], None]) -> None:
        self._inner = inner
        self._head_timeout_s = head_timeout_s
        self._on_timeout = on_timeout
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""  # the last bytes seen, so an end of head split across reads is found
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._timer = asyncio.get_running_loop().call_later(self._head_timeout_s, self._expire)
        self._inner.connection_made(transport)

    def _expire(self) -> None:
        self._timer = None
        self._on_timeout()
        if self._transport is not None:
            self._transport.close()

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def data_received(self, data: bytes) -> None:
        if self._timer is not None:
            seen = self._tail + data
            if _END_OF_HEAD in seen:
                self._disarm()
                self._tail = b""
            else:
                self._tail = seen[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class GuardedSite(web.TCPSite):
    """`web.TCPSite` whose connections must send their first request head within `head_timeout_s`."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, head_timeout_s: float = HEAD_TIMEOUT_S,
                 on_timeout: Callable[[], None] = lambda: None, **kwargs: Any) -> None:
        super().__init__(runner, host, port, **kwargs)
        self._head_timeout_s = head_timeout_s
        self._on_timeout = on_timeout

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _HeadGuard(server(), self._head_timeout_s, self._on_timeout),
            self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port)
