"""HTTP face of the extender for kube-scheduler: starlette on uvicorn (httptools + uvloop).

Routes: POST /filter, POST /prioritize (paths configurable), GET /healthz, /readyz, /metrics, and
POST /explain (not a kube-scheduler verb: every node's verdict with its detail, reserves nothing).

Error policy (one rule, documented in the README):
* The request itself is malformed (not JSON, wrong types, no Pod, neither NodeNames nor Nodes):
  HTTP 400 with `{"Error": "..."}`. kube-scheduler treats any non-200 as an extender error
  (attempt fails, retried with backoff) and does not read the body; our log and
  `flexinfer_extender_bad_requests_total` carry the message.
* Body larger than `max_body_bytes` (default 32 MiB): HTTP 413 `{"Error": ...}`, without reading it.
* The pod is well-formed but one of OUR annotations holds junk: HTTP 200, every node in
  `FailedAndUnresolvableNodes` with a reason naming the annotation, so the user reads it in the
  pod's FailedScheduling event. `Error` is always "" in a 200 answer.
* A node name not in the cache: that node goes to FailedNodes ("node not in extender cache").
Responses mirror the request form: NodeNames in, NodeNames out (`Nodes` null); Nodes in, Nodes out
(`{"metadata":{},"items":[...]}` with the passing node objects exactly as received, `NodeNames`
null). Lists and maps are never null. Prioritize answers a bare array `[{"Host","Score"}]`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from flexinfer import logs
from flexinfer.errors import ParseError
from flexinfer.state import NodeView, node_view

from . import wire
from .memo import NodeNames
from .pod import PodRequirements, requirements_from_wire
from .service import Extender

log = logs.get("flexinfer.extender.http")

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
JSON = "application/json"


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _json(body: bytes, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type=JSON)


def _error(status: int, message: str) -> Response:
    return _json(wire.encoder.encode(wire.ErrorBody(Error=message)), status)


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        try:
            n = int(length)
        except ValueError:
            raise BadRequest(400, f"invalid Content-Length {length[:20]!r}") from None
        if n > limit:
            raise BadRequest(413, f"request body is {n} bytes; the limit is {limit} bytes (--max-body-bytes)")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, f"request body exceeds the limit of {limit} bytes (--max-body-bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass(slots=True)
class Parsed:
    req: PodRequirements
    names: Sequence[str]
    mode: str  # "names" | "nodes"
    items: list[msgspec.Raw]
    views: dict[str, NodeView] | None


def parse_request_body(body: bytes, extender: Extender, *, names_optional: bool = False,
               name_lists: wire.NameLists | None = None) -> Parsed:
    """Decode ExtenderArgs (either spelling). Raises BadRequest(400) with a clear message.
    `name_lists`: reuse recently seen NodeNames lists (the server keeps one)."""
    if not body:
        raise BadRequest(400, "empty request body; expected ExtenderArgs JSON {\"Pod\", \"NodeNames\"|\"Nodes\"}")
    try:
        args = wire.args_decoder.decode(body)
    except msgspec.ValidationError as e:
        raise BadRequest(400, f"malformed ExtenderArgs: {e}") from None
    except msgspec.DecodeError as e:
        raise BadRequest(400, f"request body is not valid JSON: {e}") from None
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
        return Parsed(req, names, "names", [], None)
    nodes = args.the_nodes
    if (nodes is None or nodes.items is None) and names_optional:
        return Parsed(req, sorted(extender.cache.names()), "names", [], None)
    if nodes is None or nodes.items is None:
        raise BadRequest(400, "ExtenderArgs has neither NodeNames nor Nodes.items")
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
    """Holds the Extender and builds the starlette app."""

    def __init__(self, extender: Extender, *, filter_path: str = "/filter", prioritize_path: str = "/prioritize",
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.extender = extender
        self.name_lists = wire.NameLists()
        self.max_body_bytes = max_body_bytes
        self.filter_path = "/" + filter_path.strip("/")
        self.prioritize_path = "/" + prioritize_path.strip("/")
        self.app = Starlette(routes=[
            Route(self.filter_path, self.filter, methods=["POST"]),
            Route(self.prioritize_path, self.prioritize, methods=["POST"]),
            Route("/explain", self.explain, methods=["POST"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
        ])

    async def _parse(self, request: Request, verb: str) -> Parsed:
        try:
            body = await _read_body(request, self.max_body_bytes)
            return parse_request_body(body, self.extender, names_optional=(verb == "explain"), name_lists=self.name_lists)
        except BadRequest as e:
            self.extender.metrics.bad_requests.labels(verb, str(e.status)).inc()
            log.warning("extender_bad_request", verb=verb, status=e.status, error=e.message[:300])
            raise

    async def filter(self, request: Request) -> Response:
        try:
            p = await self._parse(request, "filter")
        except BadRequest as e:
            return _error(e.status, e.message)
        out = self.extender.filter(p.req, p.names, p.views)
        if p.mode == "names":
            result = wire.ExtenderFilterResult(
                Nodes=None, NodeNames=out.passed, FailedNodes=out.failed,
                FailedAndUnresolvableNodes=out.unresolvable, Error="")
        else:
            items = [raw for raw, v in zip(p.items, out.verdicts, strict=True) if v.feasible]
            result = wire.ExtenderFilterResult(
                Nodes=wire.NodeListOut(metadata={}, items=items), NodeNames=None, FailedNodes=out.failed,
                FailedAndUnresolvableNodes=out.unresolvable, Error="")
        return _json(wire.encoder.encode(result))

    async def prioritize(self, request: Request) -> Response:
        try:
            p = await self._parse(request, "prioritize")
        except BadRequest as e:
            return _error(e.status, e.message)
        out = self.extender.prioritize_scores(p.req, p.names, p.views)
        return _json(wire.encoder.encode(list(map(wire.HostPriority, out.names, out.scores))))

    async def explain(self, request: Request) -> Response:
        """Not a kube-scheduler verb: every node's verdict with details (for `flexinfer explain`).

        Body: ExtenderArgs; without NodeNames/Nodes every cached node is judged. Reserves nothing.
        """
        try:
            p = await self._parse(request, "explain")
        except BadRequest as e:
            return _error(e.status, e.message)
        verdicts = self.extender.explain(p.req, p.names, p.views)
        r = p.req
        body = {
            "Requirements": {"Namespace": r.namespace, "Name": r.name, "Managed": r.managed, "Model": r.model,
                             "Backend": r.backend, "Vendor": r.vendor, "VramEstimateMiB": r.vram_estimate_mib,
                             "GpuCount": r.gpu_count, "JitPolicy": r.jit_policy,
                             "PreferredArchs": list(r.preferred_archs), "Error": r.error},
            "Verdicts": [{"Node": v.node, "Feasible": v.feasible, "Unresolvable": v.unresolvable,
                          "Reason": v.reason, "Detail": v.detail, "Score": v.score, "Gpus": list(v.gpus)}
                         for v in verdicts],
        }
        return _json(wire.encoder.encode(body))

    async def healthz(self, request: Request) -> Response:
        return _json(b'{"status":"ok"}')

    async def readyz(self, request: Request) -> Response:
        ready, reason = self.extender.cache.readiness()
        body = msgspec.json.encode({"ready": ready, "reason": reason})
        return _json(body, 200 if ready else 503)

    async def metrics(self, request: Request) -> Response:
        self.extender.refresh_gauges()
        return Response(generate_latest(self.extender.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def build_app(extender: Extender, **kwargs: Any) -> Starlette:
    return ExtenderApp(extender, **kwargs).app


def uvicorn_config(app: Any, host: str = "127.0.0.1", port: int = 8888, *, tls_cert: str | None = None,
                   tls_key: str | None = None, log_level: str = "warning") -> uvicorn.Config:
    if bool(tls_cert) != bool(tls_key):
        raise ParseError("TLS options", (tls_cert, tls_key), "both --tls-cert and --tls-key, or neither")
    return uvicorn.Config(
        app, host=host, port=port, loop="uvloop", http="httptools", lifespan="off", access_log=False,
        log_level=log_level, ssl_certfile=tls_cert, ssl_keyfile=tls_key, timeout_keep_alive=30,
        server_header=False,
    )


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

    `app_or_config`: a uvicorn.Config, an ASGI app (Starlette), an ExtenderApp or an Extender.
    """
    if isinstance(app_or_config, uvicorn.Config):
        config = app_or_config
    else:
        app = app_or_config
        if isinstance(app, Extender):
            app = build_app(app)
        elif isinstance(app, ExtenderApp):
            app = app.app
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
    scheme = "https" if config.ssl_certfile else "http"
    return ServerHandle(server, thread, scheme)
