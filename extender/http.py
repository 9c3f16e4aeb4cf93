"""HTTP face of the extender for kube-scheduler: starlette on uvicorn (httptools + uvloop).

Routes: POST /filter, POST /prioritize (paths configurable), GET /healthz, /readyz, /metrics, and
POST /explain (not a kube-scheduler verb: every node's verdict with its detail, reserves nothing).
`ExtenderApp.read_only_app` serves only /explain, /healthz, /readyz and /metrics: the plaintext
`--read-only-port` for probes, Prometheus and `flexinfer explain` while the scheduling port requires a client
certificate (extender.tls).

Error policy (one rule, documented in the README):
* The request itself is malformed (not JSON, JSON nested deeper than the decoder allows, wrong types, no Pod,
  neither NodeNames nor Nodes): HTTP 400 with `{"Error": "..."}`. kube-scheduler treats any non-200 as an
  extender error (attempt fails, retried with backoff) and does not read the body; our log and
  `flexinfer_extender_bad_requests_total` carry the message.
* Too large: body over `max_body_bytes` (default 32 MiB, without reading it) or more than `max_nodes` node
  names/objects: HTTP 413. Body not received within the body timeout: 408. Too many large requests at once
  (each waits up to the body timeout for its turn): 503. These answers close the connection.
* The pod is well-formed but one of OUR annotations holds junk: HTTP 200, every node in
  `FailedAndUnresolvableNodes` with a reason naming the annotation, so the user reads it in the
  pod's FailedScheduling event. `Error` is always "" in a 200 answer.
* A node name not in the cache: that node goes to FailedNodes ("node not in extender cache").
Responses mirror the request form: NodeNames in, NodeNames out (`Nodes` null); Nodes in, Nodes out
(`{"metadata":{},"items":[...]}` with the passing node objects exactly as received, `NodeNames`
null). Lists and maps are never null. Prioritize answers a bare array `[{"Host","Score"}]`.

The event loop never waits on the policy: a request body above `Limits.inline_body_bytes`, or any request
while another thread holds the reservation lock, is decoded and evaluated on a worker thread, so /healthz
and small requests keep answering while a 1M-name request is processed (connection-level limits:
extender.listener).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from flexinfer import logs
from flexinfer.state import NodeView, node_view

from . import wire
from .grpc_edge import FORWARDED_KEY as FORWARDED_HEADER  # marks a request a replica forwarded to the leader
from .listener import Limits, Listener, ReloadingContext, connection_cap, protocol_for
from .memo import NodeNames
from .pod import PodRequirements, requirements_from_wire
from .service import Extender
from .tls import TlsFiles

log = logs.get("flexinfer.extender.http")

DEFAULT_LIMITS = Limits()
DEFAULT_MAX_BODY_BYTES = DEFAULT_LIMITS.max_body_bytes
JSON = "application/json"


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _json(body: bytes, status: int = 200, *, close: bool = False) -> Response:
    return Response(body, status_code=status, media_type=JSON, headers={"connection": "close"} if close else None)


def _error(status: int, message: str) -> Response:
    # 408/413/503: the client may still be sending; closing is the only way to stop reading its body.
    return _json(wire.encoder.encode(wire.ErrorBody(Error=message)), status, close=status in (408, 413, 503))


def _too_deep() -> BadRequest:
    return BadRequest(400, "request body is JSON nested too deeply (the decoder stops at about "
                           f"{sys.getrecursionlimit()} levels; ExtenderArgs needs about 20)")


@dataclass(slots=True)
class Parsed:
    req: PodRequirements
    names: Sequence[str]
    mode: str  # "names" | "nodes"
    items: list[msgspec.Raw]
    views: dict[str, NodeView] | None


_gc_lock = threading.Lock()
_gc_paused = 0  # large requests in progress with the collector paused
_gc_was_enabled = True


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a large request runs on a worker thread.

    A 1M-name request creates millions of short-lived objects; the allocation counts trigger full
    collections that walk every tracked object with the GIL held (0.3-0.6 s each, measured), stalling the
    event loop (/healthz) although the work itself is off the loop. What such a request allocates is freed by
    reference counting when it ends, so nothing piles up meanwhile. Nested: the first large request pauses,
    the last one resumes (only if the collector was on before)."""
    global _gc_paused, _gc_was_enabled
    with _gc_lock:
        if _gc_paused == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_paused += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_paused -= 1
            if _gc_paused == 0 and _gc_was_enabled:
                gc.enable()


def _check_count(n: int, what: str, max_nodes: int | None) -> None:
    if max_nodes is not None and n > max_nodes:
        raise BadRequest(413, f"{what} has {n} entries; the limit is {max_nodes} per request (--max-nodes-per-request)")


def parse_request_body(body: bytes, extender: Extender, *, names_optional: bool = False,
               name_lists: wire.NameLists | None = None, max_nodes: int | None = None) -> Parsed:
    """Decode ExtenderArgs (either spelling). Raises BadRequest(400) with a clear message, 413 for more than
    `max_nodes` names/objects. `name_lists`: reuse recently seen NodeNames lists (the server keeps one)."""
    if not body:
        raise BadRequest(400, "empty request body; expected ExtenderArgs JSON {\"Pod\", \"NodeNames\"|\"Nodes\"}")
    try:
        args = wire.args_decoder.decode(body)
    except msgspec.ValidationError as e:
        raise BadRequest(400, f"malformed ExtenderArgs: {e}") from None
    except msgspec.DecodeError as e:
        raise BadRequest(400, f"request body is not valid JSON: {e}") from None
    except RecursionError:
        raise _too_deep() from None
    pod = args.the_pod
    if pod is None:
        raise BadRequest(400, "ExtenderArgs has no Pod")
    req = requirements_from_wire(pod)
    raw_names = args.the_names
    if raw_names is not None:
        try:
            names = name_lists.decode(raw_names) if name_lists is not None else NodeNames(wire.names_of(raw_names))
        except (msgspec.ValidationError, msgspec.DecodeError) as e:
            raise BadRequest(400, f"malformed ExtenderArgs: {e}") from None
        except RecursionError:
            raise _too_deep() from None
        _check_count(len(names), "NodeNames", max_nodes)
        return Parsed(req, names, "names", [], None)
    nodes = args.the_nodes
    if (nodes is None or nodes.items is None) and names_optional:
        return Parsed(req, sorted(extender.cache.names()), "names", [], None)
    if nodes is None or nodes.items is None:
        raise BadRequest(400, "ExtenderArgs has neither NodeNames nor Nodes.items")
    _check_count(len(nodes.items), "Nodes.items", max_nodes)
    views: dict[str, NodeView] = {}
    names = []
    decode = wire.node_item_decoder.decode
    cached = extender.cache.get_if_current
    # Bounded memo of views parsed from earlier requests (flexinfer.nodes.NodeViewMemo), for full-Nodes mode
    # without an informer; None: every cache miss is parsed.
    memo = extender.request_views
    for i, raw in enumerate(nodes.items):
        try:
            meta = decode(raw).metadata
        except (msgspec.ValidationError, msgspec.DecodeError) as e:
            raise BadRequest(400, f"malformed Nodes.items[{i}]: {e}") from None
        except RecursionError:
            raise _too_deep() from None
        if meta is None or not meta.name:
            raise BadRequest(400, f"Nodes.items[{i}] has no metadata.name")
        name, rv = meta.name, meta.resource_version
        names.append(name)
        view = cached(name, rv)
        if view is None and memo is not None:
            view = memo.get(name, rv)
            if view is None:
                view = node_view(name, meta.labels, meta.annotations)
                memo.put(name, rv, view)
        views[name] = view if view is not None else node_view(name, meta.labels, meta.annotations)
    return Parsed(req, names, "nodes", list(nodes.items), views)


class ExtenderApp:
    """Holds the Extender and builds the starlette apps (all routes; read-only routes)."""

    def __init__(self, extender: Extender, *, filter_path: str = "/filter", prioritize_path: str = "/prioritize",
                 max_body_bytes: int | None = None, limits: Limits | None = None, replicas: Any = None) -> None:
        self.extender = extender
        self.name_lists = wire.NameLists(intern=extender.name_intern)
        self.shared_json = wire.SharedJson()
        limits = limits or DEFAULT_LIMITS
        if max_body_bytes is not None and max_body_bytes != limits.max_body_bytes:
            from dataclasses import replace

            limits = replace(limits, max_body_bytes=max_body_bytes)
        self.limits = limits
        self.max_body_bytes = limits.max_body_bytes
        self.replicas = replicas  # extender.replicas.Replicas: forward the scheduling verbs to the Lease holder
        self.filter_path = "/" + filter_path.strip("/")
        self.prioritize_path = "/" + prioritize_path.strip("/")
        self._gates: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}
        self._gates_lock = threading.Lock()
        read_only = [
            Route("/explain", self.explain, methods=["POST"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
        ]
        self.app = Starlette(routes=[
            Route(self.filter_path, self.filter, methods=["POST"]),
            Route(self.prioritize_path, self.prioritize, methods=["POST"]),
            *read_only,
        ])
        self.read_only_app = Starlette(routes=read_only)
        for app in (self.app, self.read_only_app):
            app.state.extender_app = self

    # --- reading ----------------------------------------------------------------------------------
    def _gate(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        with self._gates_lock:
            gate = self._gates.get(loop)
            if gate is None:
                gate = self._gates[loop] = asyncio.Semaphore(self.limits.max_large_requests)
            return gate

    async def _read_body(self, request: Request) -> tuple[bytes, asyncio.Semaphore | None]:
        """The body within the size and time limits. Bodies over `inline_body_bytes` first take a turn at the
        large-request gate (returned, to be released by the caller once the answer is computed)."""
        lim = self.limits
        limit = lim.max_body_bytes
        length = request.headers.get("content-length")
        n = -1
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                raise BadRequest(400, f"invalid Content-Length {length[:20]!r}") from None
            if n > limit:
                raise BadRequest(413, f"request body is {n} bytes; the limit is {limit} bytes (--max-body-bytes)")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + lim.body_timeout_s
        gate = None
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout_at(deadline):
                if n > lim.inline_body_bytes:
                    gate = await self._take(self._gate())
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise BadRequest(413, f"request body exceeds the limit of {limit} bytes (--max-body-bytes)")
                    if gate is None and size > lim.inline_body_bytes:
                        gate = await self._take(self._gate())
                    chunks.append(chunk)
        except TimeoutError:
            if gate is not None:
                gate.release()
            if n > lim.inline_body_bytes and size == 0:
                raise BadRequest(503, "too many large requests at once; retry (each waits at most "
                                      f"{lim.body_timeout_s:g} s for its turn)") from None
            raise BadRequest(408, f"request body not received within {lim.body_timeout_s:g} s "
                                  f"({size} bytes arrived)") from None
        except BaseException:
            if gate is not None:
                gate.release()
            raise
        return b"".join(chunks), gate

    @staticmethod
    async def _take(gate: asyncio.Semaphore) -> asyncio.Semaphore:
        await gate.acquire()
        return gate

    def _bad(self, verb: str, e: BadRequest) -> Response:
        self.extender.metrics.bad_requests.labels(verb, str(e.status)).inc()
        log.warning("extender_bad_request", verb=verb, status=e.status, error=e.message[:300])
        return _error(e.status, e.message)

    async def _handle(self, request: Request, verb: str, answer) -> Response:
        """Read, maybe forward to the leader, then answer (inline when small and the reservation lock is free,
        else on a worker thread)."""
        gate = None
        try:
            try:
                body, gate = await self._read_body(request)
            except ClientDisconnect:
                return _error(400, "client disconnected")
            if self.replicas is not None and verb in ("filter", "prioritize"):
                forwarded = await self.replicas.forward_http(request.url.path, body,
                                                             request.headers.get(FORWARDED_HEADER) is not None)
                if forwarded is not None:
                    status, payload = forwarded
                    return _json(payload, status, close=status == 503)
            work = functools.partial(answer, body)
            if len(body) <= self.limits.inline_body_bytes:
                lock = self.extender.reservations.lock
                if lock.acquire(blocking=False):
                    try:
                        return work()
                    finally:
                        lock.release()
                return await run_in_threadpool(work)
            return await run_in_threadpool(self._large, work)
        except BadRequest as e:
            return self._bad(verb, e)
        finally:
            if gate is not None:
                gate.release()

    @staticmethod
    def _large(work: Any) -> Response:
        with gc_paused():
            return work()

    def _parse(self, body: bytes, verb: str) -> Parsed:
        return parse_request_body(body, self.extender, names_optional=(verb == "explain"), name_lists=self.name_lists,
                          max_nodes=self.limits.max_nodes)

    # --- verbs ------------------------------------------------------------------------------------
    async def filter(self, request: Request) -> Response:
        return await self._handle(request, "filter", self._filter)

    def _filter(self, body: bytes) -> Response:
        p = self._parse(body, "filter")
        out = self.extender.filter(p.req, p.names, p.views)
        if p.mode == "names":
            js = self.shared_json.of  # the verdict index's shared parts: encoded once while they stay the same
            result = wire.ExtenderFilterResult(
                Nodes=None, NodeNames=js(out.passed), FailedNodes=js(out.failed),  # type: ignore[arg-type]
                FailedAndUnresolvableNodes=js(out.unresolvable), Error="")  # type: ignore[arg-type]
        else:
            items = [raw for raw, v in zip(p.items, out.verdicts, strict=True) if v.feasible]
            result = wire.ExtenderFilterResult(
                Nodes=wire.NodeListOut(metadata={}, items=items), NodeNames=None, FailedNodes=out.failed,
                FailedAndUnresolvableNodes=out.unresolvable, Error="")
        return _json(wire.encoder.encode(result))

    async def prioritize(self, request: Request) -> Response:
        return await self._handle(request, "prioritize", self._prioritize)

    def _prioritize(self, body: bytes) -> Response:
        p = self._parse(body, "prioritize")
        out = self.extender.prioritize_scores(p.req, p.names, p.views)
        return _json(wire.encoder.encode(list(map(wire.HostPriority, out.names, out.scores))))

    async def explain(self, request: Request) -> Response:
        """Not a kube-scheduler verb: every node's verdict with details (for `flexinfer explain`).

        Body: ExtenderArgs; without NodeNames/Nodes every cached node is judged. Reserves nothing.
        """
        return await self._handle(request, "explain", self._explain)

    def _explain(self, body: bytes) -> Response:
        p = self._parse(body, "explain")
        verdicts = self.extender.explain(p.req, p.names, p.views)
        r = p.req
        doc = {
            "Requirements": {"Namespace": r.namespace, "Name": r.name, "Managed": r.managed, "Model": r.model,
                             "Backend": r.backend, "Vendor": r.vendor, "VramEstimateMiB": r.vram_estimate_mib,
                             "GpuCount": r.gpu_count, "JitPolicy": r.jit_policy,
                             "PreferredArchs": list(r.preferred_archs), "Error": r.error},
            "Verdicts": [{"Node": v.node, "Feasible": v.feasible, "Unresolvable": v.unresolvable,
                          "Reason": v.reason, "Detail": v.detail, "Score": v.score, "Gpus": list(v.gpus)}
                         for v in verdicts],
        }
        return _json(wire.encoder.encode(doc))

    async def healthz(self, request: Request) -> Response:
        return _json(b'{"status":"ok"}')

    async def readyz(self, request: Request) -> Response:
        ready, reason = self.extender.cache.readiness()
        body = msgspec.json.encode({"ready": ready, "reason": reason})
        return _json(body, 200 if ready else 503)

    async def metrics(self, request: Request) -> Response:
        # refresh_gauges takes the reservation lock, which a large request may hold: never on the event loop
        return await run_in_threadpool(self._metrics)

    def _metrics(self) -> Response:
        self.extender.refresh_gauges()
        return Response(generate_latest(self.extender.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def build_app(extender: Extender, **kwargs: Any) -> Starlette:
    return ExtenderApp(extender, **kwargs).app


def uvicorn_config(app: Any, host: str = "127.0.0.1", port: int = 8888, *, tls_cert: str | None = None,
                   tls_key: str | None = None, client_ca: str | None = None, limits: Limits | None = None,
                   listener: str = "scheduling", listeners: int = 1, log_level: str = "warning") -> uvicorn.Config:
    """uvicorn configuration with the listener limits (extender.listener) and optional (mutual) TLS.

    `listeners`: how many listeners the process runs (their connection caps share the file limit)."""
    files = TlsFiles(tls_cert, tls_key, client_ca).check()
    ext_app = getattr(getattr(app, "state", None), "extender_app", None)
    if isinstance(app, ExtenderApp):
        ext_app, app = app, app.app
    limits = limits or (ext_app.limits if ext_app is not None else DEFAULT_LIMITS)
    lst = Listener(listener, limits, ReloadingContext(files) if files.enabled else None,
                   ext_app.extender.metrics if ext_app is not None else None,
                   max_connections=connection_cap(limits.max_connections, listeners))
    # TLS listeners run on the stdlib event loop: uvloop's start_tls on accepted server transports hands the
    # handshake bytes of every connection after the first to the application protocol (handshakes then time out;
    # uvloop 0.22, reproduced in tests/extender/test_who_can_reserve.py), and starting TLS in the protocol is
    # what lets the listener count, time and evict connections that are still handshaking.
    config = uvicorn.Config(
        app, host=host, port=port, loop="asyncio" if files.enabled else "uvloop", http=protocol_for(lst), ws="none",
        lifespan="off", access_log=False, log_level=log_level, timeout_keep_alive=limits.idle_timeout_s,
        server_header=False, backlog=min(2048, lst.max_connections),
    )
    config.flexinfer_listener = lst  # type: ignore[attr-defined]
    return config


class ServerHandle:
    """A uvicorn server running in a daemon thread (demo, bench, tests)."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, scheme: str) -> None:
        self.server = server
        self.thread = thread
        self.scheme = scheme

    @property
    def port(self) -> int:
        return self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def host(self) -> str:
        return self.server.config.host

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def listener(self) -> Listener | None:
        return getattr(self.server.config, "flexinfer_listener", None)

    def stop(self, timeout_s: float = 5.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_in_thread(app_or_config: Any, host: str = "127.0.0.1", port: int = 0, *,
                    timeout_s: float = 10.0, **config_kwargs: Any) -> ServerHandle:
    """Start uvicorn in a thread; returns once it listens. Port 0 picks a free port (see .url).

    `app_or_config`: a uvicorn.Config (from `uvicorn_config`), an ASGI app (Starlette), an ExtenderApp or an
    Extender; `config_kwargs` go to `uvicorn_config` (tls_cert, tls_key, client_ca, limits, listener)."""
    if isinstance(app_or_config, uvicorn.Config):
        config = app_or_config
    else:
        app = app_or_config
        if isinstance(app, Extender):
            app = build_app(app)
        config = uvicorn_config(app, host, port, **config_kwargs)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"extender-http-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"extender HTTP server did not start on {config.host}:{config.port}")
        time.sleep(0.01)
    lst = getattr(config, "flexinfer_listener", None)
    scheme = "https" if (lst is not None and lst.tls is not None) or config.ssl_certfile else "http"
    return ServerHandle(server, thread, scheme)
