"""An OpenAI-compatible fake model server (what vLLM, llama.cpp or MLC-LLM answer), for tests, the demo and
the proxy bench.

``FakeModelServer(name)`` serves on 127.0.0.1:<free port> from a thread (``start()``/``stop()``, or
``serve()`` in the caller's loop):

- ``GET /v1/models``, ``GET /health``;
- ``POST /v1/chat/completions`` and ``/v1/completions``: ``stream: true`` answers server-sent events, one
  chunk per token, ``token_delay_s`` apart (``first_token_delay_s`` before the first), then ``data: [DONE]``;
  otherwise one JSON completion (after the same delays unless ``delay_unstreamed`` is off). The number of
  tokens is ``max_tokens`` (default ``tokens``), at most ``max_tokens_cap``;
- ``POST /v1/embeddings``: one small vector per input;
- ``max_model_len``: like vLLM, a request whose ``max_tokens`` is at or above it is rejected with 400
  (no room left for the prompt).

It records each request's path and body (bounded) and counts streams started, finished and cut off by
the client (``stats``), which the proxy tests read.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()


@dataclass
class ServerStats:
    requests: int = 0
    streams_started: int = 0
    streams_finished: int = 0
    streams_cut: int = 0  # the client (the proxy) closed the connection mid-stream
    open_streams: int = 0
    bodies: collections.deque = field(default_factory=lambda: collections.deque(maxlen=1000))


class FakeModelServer:
    def __init__(self, name: str = "model", host: str = "127.0.0.1", port: int = 0, *, tokens: int = 8,
                 token_delay_s: float = 0.0, first_token_delay_s: float = 0.0, max_model_len: int | None = None,
                 max_tokens_cap: int = 100_000, delay_unstreamed: bool = True) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.tokens = tokens
        self.token_delay_s = token_delay_s
        self.first_token_delay_s = first_token_delay_s
        self.max_model_len = max_model_len
        self.max_tokens_cap = max_tokens_cap
        self.delay_unstreamed = delay_unstreamed
        self.stats = ServerStats()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- app ------------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_post("/v1/chat/completions", self._complete)
        app.router.add_post("/v1/completions", self._complete)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_route("*", "/v1/{tail:.*}", self._other)  # any other OpenAI-style path: echo what came
        return app

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _models(self, request: web.Request) -> web.Response:
        entry = {"id": self.name, "object": "model", "owned_by": "fake", "max_model_len": self.max_model_len}
        return web.json_response({"object": "list", "data": [entry]})

    async def _other(self, request: web.Request) -> web.Response:
        """Another /v1 path (the proxy's pass-through): what arrived, so a test can see it was forwarded."""
        raw = await request.read()
        self._record(request, raw)
        return web.json_response({"server": self.name, "method": request.method, "path": request.path,
                                  "content_type": request.content_type, "body_bytes": len(raw)})

    def _record(self, request: web.Request, body: Any) -> None:
        self.stats.requests += 1
        self.stats.bodies.append((request.path, body, dict(request.headers)))

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        body = _dec.decode(await request.read())
        self._record(request, body)
        chat = request.path.endswith("/chat/completions")
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        if self.max_model_len is not None and isinstance(max_tokens, int) and max_tokens >= self.max_model_len:
            return web.json_response({"error": {
                "message": f"This model's maximum context length is {self.max_model_len} tokens. However, you "
                           f"requested {max_tokens} tokens for the completion, leaving no room for the prompt.",
                "type": "BadRequestError", "param": None, "code": 400}}, status=400)
        n = min(int(max_tokens) if isinstance(max_tokens, int) and max_tokens > 0 else self.tokens,
                self.max_tokens_cap)
        created = int(time.time())
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{self.stats.requests}"
        if body.get("stream") is True:
            return await self._stream(request, chat, rid, created, n)
        text = " ".join(f"t{i}" for i in range(n))
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
                  if chat else {"index": 0, "text": text, "finish_reason": "length"})
        if self.delay_unstreamed and (self.first_token_delay_s or self.token_delay_s):
            await asyncio.sleep(self.first_token_delay_s + self.token_delay_s * n)
        return web.Response(body=_enc.encode({
            "id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
            "model": self.name, "choices": [choice],
            "usage": {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": 5 + n}}),
            content_type="application/json")

    async def _stream(self, request: web.Request, chat: bool, rid: str, created: int, n: int) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        self.stats.streams_started += 1
        self.stats.open_streams += 1
        obj = "chat.completion.chunk" if chat else "text_completion"
        try:
            if self.first_token_delay_s:
                await asyncio.sleep(self.first_token_delay_s)
            for i in range(n):
                if i and self.token_delay_s:
                    await asyncio.sleep(self.token_delay_s)
                choice = ({"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None} if chat
                          else {"index": 0, "text": f"t{i} ", "finish_reason": None})
                chunk = {"id": rid, "object": obj, "created": created, "model": self.name, "choices": [choice]}
                await resp.write(b"data: " + _enc.encode(chunk) + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            self.stats.streams_finished += 1
        except (asyncio.CancelledError, ConnectionResetError):
            self.stats.streams_cut += 1
            raise
        finally:
            self.stats.open_streams -= 1
        return resp

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = _dec.decode(await request.read())
        self._record(request, body)
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        data = [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3, float(len(str(x)))]}
                for i, x in enumerate(items)]
        return web.json_response({"object": "list", "data": data, "model": self.name,
                                  "usage": {"prompt_tokens": len(items), "total_tokens": len(items)}})

    # -- running --------------------------------------------------------------------------------------
    async def serve(self, stop: asyncio.Event) -> None:
        runner = web.AppRunner(self.app(), handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, backlog=1024)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.port = int(server.sockets[0].getsockname()[1])
        self._ready.set()
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    def start(self) -> FakeModelServer:
        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._stop = asyncio.Event()
            try:
                loop.run_until_complete(self.serve(self._stop))
            except BaseException as e:
                self._error = e
                self._ready.set()
            finally:
                loop.close()

        self._ready.clear()
        self._thread = threading.Thread(target=run, name=f"fake-model-{self.name}", daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"fake model server did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> FakeModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
