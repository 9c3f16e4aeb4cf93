"""The proxy's HTTP side: OpenAI-compatible API in, model servers out (aiohttp server + aiohttp client).

Request path: authenticate (optional API keys) -> read the body (size and time limits) -> decode the
routing facts (:mod:`.body`) -> route (:mod:`.routing`; the fit check for idle candidates runs in a
worker thread) -> serve now, or wait in the Model's bounded queue (activating it first when routing says
so) until it has a ready endpoint, it stalls, fails, or its cold-start timeout passes -> forward to the
least busy endpoint of the least busy serving Model, clamping ``max_tokens`` on the way -> stream the
answer back as it arrives.

Streaming: the upstream body is read with ``iter_any`` (whatever bytes have arrived) and written to
the client at once, so server-sent events are never held back. The server runs with handler
cancellation on: when a client disconnects, its handler is cancelled where it waits (upstream read,
queue, body read) and the upstream connection is closed at once, which makes the model server stop
generating for it.

Activity (:mod:`.activity`) is recorded when a request for a Model arrives, while it is in flight and
when it completes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from flexinfer.controller.phases import PHASES
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from flexinfer import logs
from flexinfer.buildinfo import user_agent

from . import openai, routing
from .activity import ActivityWriter
from .body import BadBody, RequestFacts, clamp_body, read_facts
from .catalog import LOADING_WEIGHTS, WARMING_UP, Catalog, ModelState
from .fit import FitChecker, NoFitCheck
from .metrics import ProxyMetrics

log = logs.get("flexinfer.proxy")

MIB = 1024 * 1024
# Substages in which the no-progress rule applies. Image pulls show no progress in the pod status, so a
# slow pull is bounded by the cold-start timeout only.
STALL_SUBSTAGES = frozenset({LOADING_WEIGHTS, WARMING_UP})
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "trailers", "transfer-encoding", "upgrade", "content-length", "host"})
MODEL_HEADER = "X-FlexInfer-Model"  # routing for pass-through requests without a JSON body
APIS = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/embeddings": "embeddings"}


@dataclass(frozen=True)
class ProxyConfig:
    max_body_bytes: int = 16 * MIB
    body_timeout_s: float = 30.0
    max_queue_per_model: int = 100
    max_in_flight: int = 4096
    stall_timeout_s: float = 120.0
    retry_after_s: float = 30.0
    clamp_margin_tokens: int = 512
    clamp: bool = True
    activate: bool = True
    upstream_connect_timeout_s: float = 5.0
    upstream_read_timeout_s: float = 300.0
    request_timeout_s: float = 3600.0
    max_upstream_connections: int = 1024
    buffer_limit_bytes: int = 1 * MIB  # non-streamed answers up to this size are sent in one write
    api_keys: frozenset[str] = field(default_factory=frozenset)
    access_log: bool = False


class Reply(Exception):
    """An answer the proxy gives itself (an OpenAI error)."""

    def __init__(self, status: int, code: str, message: str, *, retry_after_s: float | None = None,
                 reason: str | None = None, model: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.retry_after_s, self.reason, self.model = retry_after_s, reason, model

    def response(self) -> web.Response:
        headers = openai.retry_after_header(self.retry_after_s) if self.status in (429, 503) else {}
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="flexinfer-proxy"'
        return web.Response(status=self.status, body=openai.error_body(self.status, self.message, self.code),
                            content_type="application/json", headers=headers)


class Proxy:
    """The proxy: ``api_app`` (OpenAI API) and ``ops_app`` (/metrics, /healthz, /readyz)."""

    def __init__(self, catalog: Catalog, activity: ActivityWriter, *, fit: FitChecker | None = None,
                 config: ProxyConfig | None = None, metrics: ProxyMetrics | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.catalog = catalog
        self.activity = activity
        self.fit = fit or NoFitCheck()
        self.config = config or ProxyConfig()
        self.metrics = metrics or activity.metrics
        self.clock = clock
        self.session: aiohttp.ClientSession | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.draining = False
        self._in_flight: dict[str, int] = {}  # Model -> requests being forwarded
        self._endpoint_load: dict[str, int] = {}  # endpoint URL -> requests being forwarded
        self._queued: dict[str, int] = {}  # Model -> requests waiting
        self._events: dict[str, asyncio.Event] = {}  # Model -> wakes its waiters on a catalog change
        self._rr = itertools.count()
        self._total = 0
        self._keys = tuple(k.encode() for k in self.config.api_keys)
        self._ua = user_agent("flexinfer-proxy")
        self.api_app = self._build_api_app()
        self.ops_app = self._build_ops_app()
        catalog.add_listener(self._on_catalog_change)
        activity.busy = lambda: [m for m, n in self._in_flight.items() if n > 0]
        activity.known = lambda m: m in self.catalog.states

    # -- lifecycle ------------------------------------------------------------------------------------
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        c = self.config
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=c.max_upstream_connections, limit_per_host=0,
                                           keepalive_timeout=30.0, ttl_dns_cache=10),
            auto_decompress=False,  # bytes pass through as the model server sent them (Content-Encoding kept)
            timeout=aiohttp.ClientTimeout(total=None, connect=c.upstream_connect_timeout_s,
                                          sock_read=c.upstream_read_timeout_s),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    def _on_catalog_change(self, names: set[str]) -> None:
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop is closing
            loop.call_soon_threadsafe(self._wake, names)

    def _wake(self, names: set[str]) -> None:
        for n in names:
            ev = self._events.pop(n, None)
            if ev is not None:
                ev.set()

    # -- apps -----------------------------------------------------------------------------------------
    def _build_api_app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{id:.+}", self._model)
        for path, api in APIS.items():
            app.router.add_post(path, self._endpoint(api))
        app.router.add_route("*", "/v1/{tail:.*}", self._endpoint("other"))
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        return app

    def _build_ops_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_get("/metrics", self._metrics_page)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        return app

    async def _metrics_page(self, request: web.Request) -> web.Response:
        counts: dict[str, int] = {}
        for st in self.catalog.states.values():
            counts[st.phase] = counts.get(st.phase, 0) + 1
        for phase in PHASES:
            self.metrics.models.labels(phase).set(counts.get(phase, 0))
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        if self.draining:
            return web.Response(status=503, text="draining\n")
        if not self.catalog.synced:
            return web.Response(status=503, text="waiting for the Model and EndpointSlice caches to sync\n")
        return web.Response(text="ok\n")

    # -- small handlers -------------------------------------------------------------------------------
    def _check_auth(self, request: web.Request) -> None:
        if not self._keys:
            return
        auth = request.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        given = token.strip().encode()
        ok = scheme.lower() == "bearer" and any(hmac.compare_digest(given, k) for k in self._keys)
        if not ok:
            raise Reply(401, "invalid_api_key", "Missing or invalid API key: send 'Authorization: Bearer <key>'")

    async def _models(self, request: web.Request) -> web.Response:
        try:
            self._check_auth(request)
        except Reply as r:
            return self._answer(r, "models", None)
        self.metrics.requests.labels("none", "models", "200").inc()
        return web.Response(body=openai.model_list(self.catalog.states), content_type="application/json")

    async def _model(self, request: web.Request) -> web.Response:
        try:
            self._check_auth(request)
            body = openai.model_entry(request.match_info["id"], self.catalog.states)
            if body is None:
                raise Reply(404, "model_not_found", f"The model '{request.match_info['id'][:253]}' does not exist")
        except Reply as r:
            return self._answer(r, "models", None)
        self.metrics.requests.labels("none", "models", "200").inc()
        return web.Response(body=body, content_type="application/json")

    async def _not_found(self, request: web.Request) -> web.Response:
        return self._answer(Reply(404, "not_found", f"No such endpoint {request.path[:200]}: the proxy serves "
                                                     "the OpenAI API under /v1"), "other", None)

    def _answer(self, r: Reply, api: str, model: str | None) -> web.Response:
        label = self.metrics.model_label(model)
        self.metrics.requests.labels(label, api, str(r.status)).inc()
        if r.reason:
            self.metrics.unavailable.labels(label, r.reason).inc()
        log.debug("answered by the proxy", status=r.status, code=r.code, model=model, message=r.message)
        return r.response()

    # -- the main path ----------------------------------------------------------------------------------
    def _endpoint(self, api: str) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await self._handle(request, api)
        return handler

    async def _handle(self, request: web.Request, api: str) -> web.StreamResponse:
        t0 = time.perf_counter()
        model: str | None = None
        self._total += 1
        try:
            self._check_auth(request)
            if self.draining:
                raise Reply(503, "shutting_down", "The proxy is shutting down; retry", retry_after_s=1.0)
            if self._total > self.config.max_in_flight:
                raise Reply(503, "overloaded", "The proxy has too many requests in progress; retry later",
                            retry_after_s=self.config.retry_after_s, reason="overloaded")
            body = await self._read_body(request)
            facts = self._facts(request, body)
            async with asyncio.timeout(self.config.request_timeout_s):
                st, model = await self._resolve(facts, api)
                return await self._forward(request, st, body, facts, api, t0)
        except Reply as r:
            return self._answer(r, api, r.model or model)
        except TimeoutError:
            return self._answer(Reply(504, "timeout", f"The request took longer than the proxy's limit of "
                                                      f"{self.config.request_timeout_s:g} s"), api, model)
        finally:
            self._total -= 1

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self.config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise Reply(413, "request_too_large", f"The request body is larger than the limit of {limit} bytes")
        try:
            async with asyncio.timeout(self.config.body_timeout_s):
                return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise Reply(413, "request_too_large",
                        f"The request body is larger than the limit of {limit} bytes") from None
        except TimeoutError:
            raise Reply(408, "request_timeout",
                        f"The request body did not arrive within {self.config.body_timeout_s:g} s") from None

    def _facts(self, request: web.Request, body: bytes) -> RequestFacts:
        header = request.headers.get(MODEL_HEADER)
        ctype = request.headers.get("Content-Type", "")
        if header and (not body or "json" not in ctype):
            return RequestFacts(header.strip()[:253], False, None)  # pass-through without a JSON body
        try:
            return read_facts(body)
        except BadBody as e:
            hint = f" (or set the {MODEL_HEADER} header)" if request.path not in APIS else ""
            raise Reply(400, "invalid_request", f"{e}{hint}") from None

    async def _resolve(self, facts: RequestFacts, api: str) -> tuple[ModelState, str]:
        """The Model to forward to, once it can serve (waiting in its queue if needed)."""
        states = self.catalog.states
        now = self.clock()
        decision = routing.route(facts.model, states, now, self.activity.last_seen)
        if isinstance(decision, routing.Choose):
            fits = {}
            for name in decision.candidates:
                m = states[name].model
                if m is not None:
                    fits[name] = await asyncio.to_thread(self.fit.check, m, decision.releasing.get(name, ()))
            decision = routing.choose(decision, states, fits)
        if isinstance(decision, routing.Refuse):
            cands = sorted(c.name for c in routing.candidates(facts.model, states))
            reason = None
            if decision.status == 503:
                reason = "failed" if all(states[c].phase == routing.FAILED for c in cands) else "cannot_start"
            raise Reply(decision.status, decision.code, decision.message, retry_after_s=decision.retry_after_s,
                        reason=reason, model=cands[0] if cands else None)
        if isinstance(decision, routing.Serve):
            st = self._pick(decision.models, states)
            self.activity.touch(st.name)
            return st, st.name
        assert isinstance(decision, routing.Wait)
        if decision.activate and not self.config.activate:
            raise Reply(503, "model_scaled_to_zero",
                        f"The model '{decision.model}' is scaled to zero and this proxy does not activate models "
                        f"(--no-activate); activate it with 'flexinfer activate {decision.model}'",
                        retry_after_s=self.config.retry_after_s, reason="activation_disabled", model=decision.model)
        self.activity.touch(decision.model)
        st = await self._wait(decision.model, decision.activate)
        return st, st.name

    def _pick(self, names: tuple[str, ...], states: Mapping[str, ModelState]) -> ModelState:
        """Least requests in flight; ties taken in turn."""
        if len(names) == 1:
            return states[names[0]]
        low = min(self._in_flight.get(n, 0) for n in names)
        tied = [n for n in names if self._in_flight.get(n, 0) == low]
        return states[tied[next(self._rr) % len(tied)]]

    async def _wait(self, name: str, activate: bool) -> ModelState:
        """Wait in `name`'s queue until it has a ready endpoint (see module docstring for the ways out)."""
        cfg = self.config
        depth = self._queued.get(name, 0)
        if depth >= cfg.max_queue_per_model:
            raise Reply(429, "queue_full", f"{depth} requests are already waiting for '{name}' to start; retry later",
                        retry_after_s=cfg.retry_after_s, reason="queue_full", model=name)
        label = self.metrics.model_label(name)
        self._queued[name] = depth + 1
        self.metrics.queue_depth.labels(label).set(depth + 1)
        t0 = time.monotonic()
        outcome = "ready"
        try:
            st = self.catalog.get(name)
            deadline = t0 + (st.cold_start_timeout_s if st else 0.0)
            if activate:
                await self.activity.activate(name)
            while True:
                st = self.catalog.get(name)
                if st is None:
                    outcome = "deleted"
                    raise Reply(503, "model_deleted", f"The model '{name}' was deleted while the request waited",
                                reason="deleted")
                if st.endpoints:
                    return st
                self._check_waiting(st, deadline)
                if activate and not routing.is_starting(st):
                    await self.activity.activate(name)  # rate-limited; retries a lost or failed write
                ev = self._events.get(name)
                if ev is None:
                    ev = self._events[name] = asyncio.Event()
                remaining = deadline - time.monotonic()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ev.wait(), timeout=max(0.01, min(1.0, remaining)))
        except Reply as r:
            outcome = r.reason or outcome
            r.model = name
            raise
        except asyncio.CancelledError:
            outcome = "client_gone"
            raise
        finally:
            n = self._queued.get(name, 1) - 1
            if n > 0:
                self._queued[name] = n
            else:
                self._queued.pop(name, None)
            self.metrics.queue_depth.labels(label).set(max(0, n))
            self.metrics.queue_wait.labels(label, outcome).observe(time.monotonic() - t0)

    def _check_waiting(self, st: ModelState, deadline: float) -> None:
        cfg = self.config
        if st.phase == routing.FAILED:
            raise Reply(503, "model_failed", f"The model '{st.name}' failed to start: {st.message}",
                        retry_after_s=cfg.retry_after_s, reason="failed")
        if st.substage in STALL_SUBSTAGES and st.progress_unix is not None:
            quiet = self.clock() - st.progress_unix
            if quiet > cfg.stall_timeout_s:
                log.info("loading stalled; failing fast", model=st.name, substage=st.substage,
                         no_progress_seconds=round(quiet))
                raise Reply(503, "model_loading_stalled",
                            f"The model '{st.name}' is loading ({st.substage}) but has made no progress for "
                            f"{int(quiet)} s (limit {cfg.stall_timeout_s:g} s); retry later",
                            retry_after_s=cfg.retry_after_s, reason="stalled")
        if time.monotonic() >= deadline:
            raise Reply(503, "model_cold_start_timeout",
                        f"The model '{st.name}' did not become ready within its cold-start timeout of "
                        f"{st.cold_start_timeout_s:g} s (phase {st.phase}"
                        f"{', ' + st.substage if st.substage else ''}: {st.message})",
                        retry_after_s=cfg.retry_after_s, reason="cold_start_timeout")

    # -- forwarding ------------------------------------------------------------------------------------
    def _endpoint_for(self, st: ModelState) -> str:
        eps = st.endpoints
        if len(eps) == 1:
            return eps[0]
        low = min(self._endpoint_load.get(e, 0) for e in eps)
        tied = [e for e in eps if self._endpoint_load.get(e, 0) == low]
        return tied[next(self._rr) % len(tied)]

    def _upstream_headers(self, request: web.Request) -> dict[str, str]:
        out = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        if self._keys:
            out.pop("Authorization", None)  # the proxy's key is not the model server's
        peer = request.remote or ""
        prior = request.headers.get("X-Forwarded-For")
        out["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
        out.setdefault("User-Agent", self._ua)
        return out

    async def _forward(self, request: web.Request, st: ModelState, body: bytes, facts: RequestFacts, api: str,
                       t0: float) -> web.StreamResponse:
        cfg = self.config
        name = st.name
        label = self.metrics.model_label(name)
        if cfg.clamp and facts.max_tokens is not None and st.context_tokens and facts.max_tokens >= st.context_tokens:
            body, original = clamp_body(body, st.context_tokens, cfg.clamp_margin_tokens)
            if original is not None:
                self.metrics.clamped.labels(label).inc()
                log.debug("max_tokens clamped", model=name, max_tokens=original,
                          context_window_tokens=st.context_tokens)
        endpoint = self._endpoint_for(st)
        url = endpoint + request.rel_url.raw_path_qs
        assert self.session is not None, "Proxy.start() not called"
        self._in_flight[name] = self._in_flight.get(name, 0) + 1
        self._endpoint_load[endpoint] = self._endpoint_load.get(endpoint, 0) + 1
        self.metrics.child(self.metrics.in_flight, label).inc()
        resp: web.StreamResponse | None = None
        code = "502"
        try:
            async with self.session.request(request.method, url, data=body or None,
                                            headers=self._upstream_headers(request), allow_redirects=False) as up:
                headers = {k: v for k, v in up.headers.items() if k.lower() not in HOP_BY_HOP}
                headers["X-FlexInfer-Model"] = name
                code = str(up.status)
                ctype = up.headers.get("Content-Type", "")
                streamed = ctype.startswith("text/event-stream") or up.content_length is None \
                    or up.content_length > cfg.buffer_limit_bytes
                if not streamed:
                    data = await up.read()
                    self.metrics.child(self.metrics.ttfb, label, api).observe(time.perf_counter() - t0)
                    resp = web.Response(status=up.status, body=data, headers=headers)
                    return resp
                if ctype.startswith("text/event-stream"):
                    headers["X-Accel-Buffering"] = "no"  # tell a buffering ingress in front not to hold events
                resp = web.StreamResponse(status=up.status, headers=headers)
                if up.content_length is not None:
                    resp.content_length = up.content_length
                await resp.prepare(request)
                first = True
                async for chunk in up.content.iter_any():
                    if first:
                        self.metrics.child(self.metrics.ttfb, label, api).observe(time.perf_counter() - t0)
                        first = False
                    await resp.write(chunk)
                await resp.write_eof()
                return resp
        except asyncio.CancelledError:
            code = "499"  # the client went away: leaving the block above closed the upstream connection
            self.metrics.client_disconnects.labels(label).inc()
            log.debug("client disconnected; upstream released", model=name, endpoint=endpoint)
            raise
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            code = "499"  # writing to a client that is gone
            self.metrics.client_disconnects.labels(label).inc()
            return resp if resp is not None else web.Response(status=499)
        except aiohttp.ClientConnectorError as e:
            self.metrics.upstream_errors.labels(label, "connect").inc()
            why = e.os_error.strerror if e.os_error and e.os_error.strerror else str(e)
            raise Reply(502, "upstream_unreachable",
                        f"The model server of '{name}' at {endpoint} refused the connection: {why}",
                        model=name) from None
        except TimeoutError:
            self.metrics.upstream_errors.labels(label, "timeout").inc()
            code = "504"
            if resp is not None and resp.prepared:
                log.warning("upstream stopped sending mid-answer; closing", model=name, endpoint=endpoint)
                return _abort(request, resp)
            raise Reply(504, "upstream_timeout", f"The model server of '{name}' at {endpoint} sent nothing for "
                        f"{cfg.upstream_read_timeout_s:g} s", model=name) from None
        except aiohttp.ClientError as e:
            self.metrics.upstream_errors.labels(label, "protocol").inc()
            if resp is not None and resp.prepared:
                log.warning("upstream failed mid-answer; closing", model=name, endpoint=endpoint, error=str(e))
                return _abort(request, resp)
            raise Reply(502, "upstream_error", f"The model server of '{name}' at {endpoint} failed: "
                                               f"{type(e).__name__}: {e}", model=name) from None
        finally:
            self._in_flight[name] -= 1
            if self._in_flight[name] <= 0:
                del self._in_flight[name]
            self._endpoint_load[endpoint] -= 1
            if self._endpoint_load[endpoint] <= 0:
                del self._endpoint_load[endpoint]
            self.metrics.child(self.metrics.in_flight, label).dec()
            self.activity.touch(name)  # completion (or failure) is traffic too
            elapsed = time.perf_counter() - t0
            if code not in ("502", "504") or resp is not None:
                self.metrics.child(self.metrics.requests, label, api, code).inc()
            self.metrics.child(self.metrics.latency, label, api).observe(elapsed)
            if cfg.access_log:
                log.info("request", model=name, api=api, status=code, endpoint=endpoint,
                         duration_ms=round(elapsed * 1000, 1))


def _abort(request: web.Request, resp: web.StreamResponse) -> web.StreamResponse:
    """End a started answer abruptly (the client sees a truncated body, never a silently complete one)."""
    resp.force_close()
    if request.transport is not None:
        request.transport.abort()
    return resp
