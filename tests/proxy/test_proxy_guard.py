"""A new connection that does not finish its first request head in time is closed (slow loris), over a real
socket; a prompt or a slow-but-in-time client is served."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

from aiohttp import web
from flexinfer.proxy.guard import GuardedSite


def _serve(head_timeout_s: float) -> tuple[int, list[int], asyncio.AbstractEventLoop, threading.Event]:
    timeouts: list[int] = []
    ready = threading.Event()
    stop = threading.Event()
    box: dict = {}

    async def hello(_req: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/", hello)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = GuardedSite(runner, "127.0.0.1", 0, head_timeout_s=head_timeout_s,
                           on_timeout=lambda: timeouts.append(1))
        await site.start()
        box["port"] = site._server.sockets[0].getsockname()[1]
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await runner.cleanup()

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True).start()
    assert ready.wait(10)
    return box["port"], timeouts, loop, stop


def _recv_all(s: socket.socket, limit_s: float) -> bytes:
    s.settimeout(limit_s)
    out = b""
    try:
        while chunk := s.recv(4096):
            out += chunk
    except TimeoutError:
        pass
    return out


def test_a_slow_first_head_is_cut_off_and_counted():
    port, timeouts, _loop, stop = _serve(head_timeout_s=0.5)
    try:
        s = socket.create_connection(("127.0.0.1", port))
        t0 = time.monotonic()
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never the empty line
        data = _recv_all(s, 5.0)
        assert time.monotonic() - t0 < 3.0, "the connection must be closed at the head timeout"
        assert data == b""
        assert timeouts == [1]

        ok = socket.create_connection(("127.0.0.1", port))  # still serving
        ok.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert _recv_all(ok, 5.0).startswith(b"HTTP/1.1 200")
    finally:
        stop.set()


def test_a_head_split_across_reads_within_the_limit_is_served():
    port, timeouts, _loop, stop = _serve(head_timeout_s=2.0)
    try:
        s = socket.create_connection(("127.0.0.1", port))
        for part in (b"GET / HTTP/1.1\r\nHo", b"st: x\r\nConnection: close\r", b"\n\r", b"\n"):
            s.sendall(part)
            time.sleep(0.1)
        assert _recv_all(s, 5.0).startswith(b"HTTP/1.1 200")
        time.sleep(2.2)  # the timer was disarmed: no late close is counted
        assert timeouts == []
    finally:
        stop.set()
