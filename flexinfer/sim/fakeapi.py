"""A small stateful fake Kubernetes API server for tests and ``flexinfer demo``.

Runs an aiohttp app in a background thread with its own event loop on 127.0.0.1:<free port>, so
synchronous code (the official client, our informers) can talk plain HTTP to it.

Why not kmock's ``KubernetesEmulator``: kmock 0.8 stores objects and serves list/watch/fetch/create/
patch/delete, but its lists carry a fixed ``resourceVersion: "..."``, watches ignore ``resourceVersion``
(they replay every object as ADDED) and never answer 410, there are no label/field selectors, PUT is not
an update, there is no status-subresource split, and it keeps every request and every object version
in memory forever (the demo runs for minutes at hundreds of requests/s). Extending it would have meant
replacing its request handler, storage and watch machinery, so this module implements the (small) part
of the API semantics FlexInfer relies on directly on aiohttp instead:

- any resource path (/api/v1/..., /apis/<group>/<version>/...), namespaced or cluster-scoped;
- pods/<name>/binding (what kube-scheduler posts: sets spec.nodeName, 409 if already bound);
- GET (object; list with labelSelector/fieldSelector and ``limit``/``continue`` paging: pages in key order,
  every page served from the first page's snapshot, 410 Expired when that snapshot was compacted),
  POST (409 AlreadyExists), PUT (409 on stale ``metadata.resourceVersion``), PATCH (merge-patch;
  strategic-merge treated as merge-patch; JSON patch add/remove/replace/test), DELETE (cascades to
  objects whose ownerReferences point at the deleted uid);
- integer resourceVersions from one global counter, ``metadata.uid``, ``creationTimestamp``,
  ``generation`` bumped on spec changes;
- ``status`` subresource: writes to the main resource keep the stored status, writes to ``/status``
  change only the status;
- watch with resourceVersion (replays retained history), ``timeoutSeconds``, ERROR 410 for compacted
  versions, BOOKMARK on timeout; with selectors, objects moving out of the selection arrive as DELETED
  and objects moving in as ADDED (like the real watch cache);
- metadata-only lists and watches (``Accept: application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1``,
  ``as=PartialObjectMetadata`` for a watch), as client-go's metadata informers ask; 406 when no range of the
  Accept header can be served;
- failure injection (``fail``), watch cutting (``cut_watches``), history compaction (``compact``), and a
  bounded request log (``requests``).

Usage::

    with FakeApiServer() as fake:
        fake.put_object({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
        api = flexinfer.kube.api_client(server=fake.url)
        ...
        fake.fail("PATCH", "/api/v1/nodes/n1", status=409, times=2)
        assert fake.get_object("nodes", "n1")["metadata"]["labels"] == {...}
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import copy
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web

from flexinfer import logs
from flexinfer.kube import RESOURCES, resource_for
from flexinfer.state import rfc3339

log = logs.get("flexinfer.sim.fakeapi")

JSON = dict[str, Any]
RKey = tuple[str, str, str]  # (group, version, plural)
OKey = tuple[RKey, str, str]  # (resource, namespace or "", name)

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()

_CLUSTER_SCOPED = {(r.group, r.version, r.plural) for r in RESOURCES.values() if not r.namespaced}
_KINDS = {(r.group, r.version, r.plural): r.kind for r in RESOURCES.values()}


# --- pure helpers ----------------------------------------------------------------------------------


def json_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386. Returns a new value; never mutates its inputs. Pure."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = json_merge_patch(out.get(k), v)
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ValueError(f"bad JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(doc: Any, ops: list[JSON]) -> Any:
    """RFC 6902 subset: add, remove, replace, test. Raises ValueError. Pure."""
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = _pointer(op.get("path", ""))
        if not parts:
            raise ValueError("whole-document JSON patch is not supported")
        parent = doc
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent[p]
        last = parts[-1]
        kind = op.get("op")
        if kind == "test":
            cur = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if cur != op.get("value"):
                raise ValueError(f"test failed at {op.get('path')}")
        elif kind in ("add", "replace"):
            if isinstance(parent, list):
                if last == "-":
                    parent.append(op.get("value"))
                elif kind == "add":
                    parent.insert(int(last), op.get("value"))
                else:
                    parent[int(last)] = op.get("value")
            else:
                if kind == "replace" and last not in parent:
                    raise ValueError(f"replace of missing {op.get('path')}")
                parent[last] = op.get("value")
        elif kind == "remove":
            if isinstance(parent, list):
                del parent[int(last)]
            else:
                if last not in parent:
                    raise ValueError(f"remove of missing {op.get('path')}")
                del parent[last]
        else:
            raise ValueError(f"unsupported JSON patch op {kind!r}")
    return doc


_SEL_RE = re.compile(r"^\s*([^\s!=<>]+)\s*(in|notin)\s*\(([^)]*)\)\s*$")


def _split_selector(sel: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in sel:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def match_label_selector(selector: str | None, labels: dict[str, str]) -> bool:
    """Kubernetes label selector syntax: =, ==, !=, in, notin, key, !key. Pure."""
    if not selector:
        return True
    for term in _split_selector(selector):
        if m := _SEL_RE.match(term):
            key, op, vals = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",") if v.strip()}
            if op == "in" and labels.get(key) not in vals:
                return False
            if op == "notin" and key in labels and labels[key] in vals:
                return False
        elif "!=" in term:
            k, v = (s.strip() for s in term.split("!=", 1))
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = (s.strip() for s in term.replace("==", "=").split("=", 1))
            if labels.get(k) != v:
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def _dig(obj: Any, dotted: str) -> Any:
    for p in dotted.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(p)
    return obj


def match_field_selector(selector: str | None, obj: JSON) -> bool:
    """Field selector: comma-separated path=value / path!=value (any dotted path). Pure."""
    if not selector:
        return True
    for term in _split_selector(selector):
        neg = "!=" in term
        k, v = (s.strip() for s in term.replace("==", "=").split("!=" if neg else "=", 1))
        have = _dig(obj, k)
        have_s = "" if have is None else str(have)
        if (have_s == v) == neg:
            return False
    return True


@dataclass(frozen=True)
class ParsedPath:
    rkey: RKey
    namespace: str  # "" for cluster-scoped or cluster-wide
    name: str | None
    subresource: str | None


def parse_path(path: str) -> ParsedPath | None:
    """Split an API URL path into resource/namespace/name/subresource. None if not a resource path. Pure."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = ""
    if len(rest) >= 3 and rest[0] == "namespaces" and not (len(rest) == 3 and rest[2] in ("status", "finalize")):
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3:
        return None
    name = rest[1] if len(rest) >= 2 else None
    sub = rest[2] if len(rest) == 3 else None
    return ParsedPath((group, version, rest[0]), namespace, name, sub)


def _parse_limit(raw: str | None) -> int | None:
    if raw in (None, ""):
        return None
    try:
        limit = int(raw)
    except ValueError:
        raise ApiError(400, f"invalid limit {raw!r}") from None
    if limit < 0:
        raise ApiError(400, f"limit must be >= 0, got {limit}")
    return limit or None  # limit=0 means no limit


def encode_continue(rv: int, last: tuple[str, str]) -> str:
    """An opaque continue token: the snapshot's resourceVersion and the last (namespace, name) served. Pure."""
    raw = _enc.encode({"rv": rv, "start": list(last)})
    return base64.urlsafe_b64encode(raw).decode("ascii")


def decode_continue(token: str) -> tuple[int, tuple[str, str]]:
    """Inverse of encode_continue; ApiError 400 for anything else. Pure."""
    try:
        data = _dec.decode(base64.urlsafe_b64decode(token.encode("ascii")))
        rv, (ns, name) = data["rv"], data["start"]
        if not (isinstance(rv, int) and isinstance(ns, str) and isinstance(name, str)):
            raise TypeError
    except (ValueError, TypeError, KeyError, msgspec.DecodeError, UnicodeEncodeError):
        raise ApiError(400, "invalid continue token") from None
    return rv, (ns, name)


def _status(code: int, reason: str, message: str, details: JSON | None = None) -> JSON:
    out: JSON = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        out["details"] = details
    return out


_REASONS = {
    400: "BadRequest", 404: "NotFound", 406: "NotAcceptable", 409: "Conflict", 410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout",
}


PARTIAL = "PartialObjectMetadata"
PARTIAL_API_VERSION = "meta.k8s.io/v1"


def metadata_form(accept: str, as_kind: str) -> bool:
    """Whether to answer in the `as_kind` form (PartialObjectMetadata for objects and watches,
    PartialObjectMetadataList for lists) rather than whole objects: the first JSON range of the Accept header the
    fake can serve decides, as content negotiation does. ApiError(406) when none can be served (another `as=`,
    e.g. Table, or no JSON at all)."""
    if not accept.strip():
        return False
    for media in accept.split(","):
        kind, *raw_params = (f.strip() for f in media.split(";"))
        if kind.lower() not in ("application/json", "application/*", "*/*"):
            continue
        params = {k.strip(): v.strip() for k, _, v in (f.partition("=") for f in raw_params)}
        wanted = params.get("as")
        if wanted is None:
            return False
        if wanted == as_kind and params.get("g") == "meta.k8s.io" and params.get("v") == "v1":
            return True
    raise ApiError(406, f"only application/json (whole objects, or as={as_kind};g=meta.k8s.io;v=v1) is served; "
                        f"Accept: {accept[:200]}")


def partial(obj: JSON) -> JSON:
    """An object as PartialObjectMetadata: its metadata alone."""
    return {"kind": PARTIAL, "apiVersion": PARTIAL_API_VERSION, "metadata": obj.get("metadata") or {}}


class ApiError(Exception):
    def __init__(self, code: int, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason or _REASONS.get(code, "Failure")


# --- failure injection and request log --------------------------------------------------------------


@dataclass
class FailureRule:
    method: str | None  # None = any
    path: re.Pattern[str]
    status: int
    times: int  # remaining; < 0 = forever
    hang_s: float = 0.0  # sleep before answering (simulates a stuck server; client timeouts fire)
    watch: bool | None = None  # True: only watch requests, False: only non-watch, None: both
    with_param: str | None = None  # only requests carrying this query parameter (e.g. "continue")
    hits: int = 0


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: Any
    status: int
    unix: float = field(default_factory=time.time)
    user_agent: str = ""


# --- the server ------------------------------------------------------------------------------------


@dataclass
class _Event:
    rv: int
    rkey: RKey
    type: str  # ADDED | MODIFIED | DELETED
    obj: JSON
    old: JSON | None = None  # the version before the change (MODIFIED, DELETED)
    _lines: dict[tuple[str, bool], bytes] = field(default_factory=dict)

    def line(self, etype: str, metadata: bool = False) -> bytes:
        """The encoded watch line, encoded once per type and form (whole object, or metadata only) for all
        watchers."""
        got = self._lines.get((etype, metadata))
        if got is None:
            got = self._lines[(etype, metadata)] = _event_line(etype, self.obj, metadata)
        return got


def _event_line(etype: str, obj: JSON, metadata: bool) -> bytes:
    return _enc.encode({"type": etype, "object": partial(obj) if metadata else obj}) + b"\n"


@dataclass
class _Watcher:
    rkey: RKey
    namespace: str
    label_selector: str | None
    field_selector: str | None
    queue: asyncio.Queue[Any]
    request: web.Request
    metadata: bool = False  # PartialObjectMetadata events


class FakeApiServer:
    """The fake API server. Thread-safe public methods; state lives on the server's event loop."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        history_limit: int = 10000,
        request_log_limit: int = 2000,
    ) -> None:
        self.host = host
        self.port = port
        self._objects: dict[OKey, JSON] = {}
        self._rv = 0
        self._compacted_rv = 0  # watches from a resourceVersion below this get 410
        self._history: collections.deque[_Event] = collections.deque()
        self._history_limit = history_limit
        self._watchers: list[_Watcher] = []
        self._rules: list[FailureRule] = []
        self._requests: collections.deque[RecordedRequest] = collections.deque(maxlen=request_log_limit)
        self.request_count = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._shutdown: asyncio.Event | None = None
        self._lock = threading.RLock()  # guards the failure rules and the request log only

    # -- lifecycle --
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> FakeApiServer:
        self._thread = threading.Thread(target=self._serve, name="fake-kube-api", daemon=True)
        self._thread.start()
        self._started.wait(10)
        if self._start_error is not None:
            raise RuntimeError(f"fake API server failed to start: {self._start_error}")
        if not self._started.is_set():
            raise RuntimeError("fake API server did not start within 10 s")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._shutdown is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._shutdown.set)
        if self._thread is not None:
            self._thread.join(10)
        self._thread = None

    def __enter__(self) -> FakeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._main())
        except BaseException as e:  # surfaced by start()
            self._start_error = e
            self._started.set()
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _main(self) -> None:
        self._shutdown = asyncio.Event()
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        if self._runner.addresses:
            self.port = self._runner.addresses[0][1]
        self._started.set()
        await self._shutdown.wait()
        for w in list(self._watchers):
            w.queue.put_nowait(None)
        await self._runner.cleanup()

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run fn(*args) on the server loop (state is only touched there) and return its result."""
        loop = self._loop
        if loop is None or not loop.is_running():
            return fn(*args)
        if threading.current_thread() is self._thread:
            return fn(*args)

        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), loop).result(10)

    # -- test/demo helpers (thread-safe) --
    def put_object(self, obj: JSON) -> JSON:
        """Create or replace an object directly (no failure injection, status kept). Returns it stored."""
        return self._call(self._put_direct, obj)

    def put_objects(self, objs: Iterable[JSON]) -> list[JSON]:
        return [self.put_object(o) for o in objs]

    def get_object(self, kind: str, name: str, namespace: str | None = None) -> JSON | None:
        rkey = self._rkey(kind)
        obj = self._call(lambda: self._objects.get((rkey, self._ns(rkey, namespace), name)))
        return copy.deepcopy(obj) if obj is not None else None

    def list_objects(self, kind: str, namespace: str | None = None) -> list[JSON]:
        rkey = self._rkey(kind)

        def pick() -> list[JSON]:
            return [copy.deepcopy(o) for (rk, ns, _), o in self._objects.items()
                    if rk == rkey and (namespace is None or ns == namespace)]
        return self._call(pick)

    def patch_object(self, kind: str, name: str, patch: JSON, namespace: str | None = None) -> JSON:
        """Merge-patch an object directly (status included), emitting MODIFIED."""
        rkey = self._rkey(kind)

        def do() -> JSON:
            key = (rkey, self._ns(rkey, namespace), name)
            cur = self._objects.get(key)
            if cur is None:
                raise KeyError(f"{kind} {namespace}/{name} not found")
            return self._store(key, json_merge_patch(cur, patch), "MODIFIED")
        return self._call(do)

    def delete_object(self, kind: str, name: str, namespace: str | None = None) -> bool:
        rkey = self._rkey(kind)
        return self._call(lambda: self._delete((rkey, self._ns(rkey, namespace), name)) is not None)

    def fail(
        self,
        method: str | None,
        path: str,
        status: int = 500,
        times: int = 1,
        *,
        hang_s: float = 0.0,
        watch: bool | None = None,
        with_param: str | None = None,
    ) -> FailureRule:
        """The next ``times`` requests (``times=-1``: all) with this method whose path matches the regex
        ``path`` (full match; plain paths work as-is) get ``status`` (after sleeping ``hang_s``). ``watch``
        narrows to watch (True) or other (False) requests, ``with_param`` to requests carrying that query
        parameter (``"continue"``: only the second and later pages of a paged list)."""
        rule = FailureRule(method.upper() if method else None, re.compile(path), status, times, hang_s, watch,
                           with_param)
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear_failures(self) -> None:
        with self._lock:
            self._rules.clear()

    def cut_watches(self, kind: str | None = None) -> int:
        """Abruptly close open watch connections (all, or of one kind). Returns how many."""
        rkey = self._rkey(kind) if kind else None

        def do() -> int:
            n = 0
            for w in list(self._watchers):
                if rkey is None or w.rkey == rkey:
                    w.queue.put_nowait("CUT")
                    n += 1
            return n
        return self._call(do)

    def expire_watches(self, kind: str | None = None) -> int:
        """Send an ERROR 410 event on open watches and compact history (clients must relist)."""
        rkey = self._rkey(kind) if kind else None

        def do() -> int:
            self._compact()
            n = 0
            for w in list(self._watchers):
                if rkey is None or w.rkey == rkey:
                    w.queue.put_nowait("GONE")
                    n += 1
            return n
        return self._call(do)

    def compact(self) -> None:
        """Forget the event history: watches from any older resourceVersion get 410 Gone."""
        self._call(self._compact)

    def watch_count(self, kind: str | None = None) -> int:
        rkey = self._rkey(kind) if kind else None
        return self._call(lambda: sum(1 for w in self._watchers if rkey is None or w.rkey == rkey))

    def requests(self, method: str | None = None, path: str | None = None) -> list[RecordedRequest]:
        """Recorded requests (most recent ``request_log_limit``), optionally filtered (path: regex)."""
        rx = re.compile(path) if path else None
        with self._lock:
            reqs = list(self._requests)
        return [r for r in reqs if (method is None or r.method == method.upper())
                and (rx is None or rx.fullmatch(r.path))]

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    @property
    def resource_version(self) -> int:
        return self._rv

    # -- state (server loop only) --
    @staticmethod
    def _rkey(kind: str) -> RKey:
        r = resource_for(kind)
        return (r.group, r.version, r.plural)

    @staticmethod
    def _ns(rkey: RKey, namespace: str | None) -> str:
        return "" if rkey in _CLUSTER_SCOPED else (namespace or "")

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def _compact(self) -> None:
        # rv == current stays valid for a watch (nothing newer to replay); anything older is Gone.
        self._history.clear()
        self._compacted_rv = self._rv

    def _store(self, key: OKey, obj: JSON, event: str) -> JSON:
        rv = self._next_rv()
        meta = dict(obj.get("metadata") or {})
        meta["resourceVersion"] = str(rv)
        obj = {**obj, "metadata": meta}
        old = self._objects.get(key)
        self._objects[key] = obj
        self._publish(_Event(rv, key[0], event, obj, old))
        return obj

    def _publish(self, ev: _Event) -> None:
        self._history.append(ev)
        while len(self._history) > self._history_limit:
            self._compacted_rv = max(self._compacted_rv, self._history.popleft().rv)
        for w in self._watchers:
            line = self._line_for(w, ev)
            if line is not None:
                w.queue.put_nowait(line)

    def _line_for(self, w: _Watcher, ev: _Event) -> bytes | None:
        """The watch line this watcher gets for ev, if any. Like the real watch cache, an object that
        moves out of a watcher's selection arrives as DELETED, one that moves in as ADDED."""
        if ev.rkey != w.rkey:
            return None
        now = self._visible(w, ev.obj)
        if ev.type == "MODIFIED" and ev.old is not None:
            before = self._visible(w, ev.old)
            etype = "MODIFIED" if before and now else "DELETED" if before else "ADDED" if now else None
        else:
            etype = ev.type if now else None
        return ev.line(etype, w.metadata) if etype else None

    @staticmethod
    def _visible(w: _Watcher, obj: JSON) -> bool:
        meta = obj.get("metadata") or {}
        if w.namespace and (meta.get("namespace") or "") != w.namespace:
            return False
        return match_label_selector(w.label_selector, meta.get("labels") or {}) and match_field_selector(
            w.field_selector, obj
        )

    def _init_meta(self, rkey: RKey, obj: JSON, namespace: str) -> JSON:
        meta = dict(obj.get("metadata") or {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if rkey in _CLUSTER_SCOPED:
            meta.pop("namespace", None)
        else:
            meta["namespace"] = namespace or meta.get("namespace") or "default"
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", rfc3339(time.time()))
        meta.setdefault("generation", 1)
        out = {**obj, "metadata": meta}
        if rkey in _KINDS:
            out.setdefault("kind", _KINDS[rkey])
            out.setdefault("apiVersion", f"{rkey[0]}/{rkey[1]}" if rkey[0] else rkey[1])
        return out

    def _put_direct(self, obj: JSON) -> JSON:
        kind = obj.get("kind") or ""
        rkey = self._rkey(kind)
        meta = obj.get("metadata") or {}
        ns = self._ns(rkey, meta.get("namespace") or "default")
        key = (rkey, ns, meta.get("name") or "")
        cur = self._objects.get(key)
        obj = copy.deepcopy(obj)
        if cur is not None:
            new_meta = {**cur["metadata"], **meta}
            return self._store(key, {**obj, "metadata": new_meta}, "MODIFIED")
        return self._store(key, self._init_meta(rkey, copy.deepcopy(obj), ns), "ADDED")

    def _delete(self, key: OKey) -> JSON | None:
        obj = self._objects.pop(key, None)
        if obj is None:
            return None
        rv = self._next_rv()
        gone = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(rv)}}
        self._publish(_Event(rv, key[0], "DELETED", gone, obj))
        uid = obj["metadata"].get("uid")
        if uid:  # garbage collection of dependents (background propagation)
            for k, o in list(self._objects.items()):
                refs = (o.get("metadata") or {}).get("ownerReferences") or []
                if any(r.get("uid") == uid for r in refs if isinstance(r, dict)):
                    self._delete(k)
        return gone

    # -- HTTP --
    def _match_rule(self, method: str, path: str, is_watch: bool, query: Any = None) -> FailureRule | None:
        with self._lock:
            for rule in self._rules:
                if rule.times == 0:
                    continue
                if rule.method is not None and rule.method != method:
                    continue
                if rule.watch is not None and rule.watch != is_watch:
                    continue
                if not rule.path.fullmatch(path):
                    continue
                if rule.with_param is not None and rule.with_param not in (query or {}):
                    continue
                if rule.times > 0:
                    rule.times -= 1
                rule.hits += 1
                return rule
        return None

    def _record(self, request: web.Request, body: Any, status: int) -> None:
        with self._lock:
            self._requests.append(RecordedRequest(
                request.method, request.path, dict(request.query), request.content_type, body, status,
                user_agent=request.headers.get("User-Agent", ""),
            ))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.request_count += 1
        raw = await request.read()
        body: Any = None
        if raw:
            try:
                body = _dec.decode(raw)
            except msgspec.DecodeError:
                body = raw.decode("utf-8", "replace")
        is_watch = request.method == "GET" and request.query.get("watch") in ("true", "1")
        rule = self._match_rule(request.method, request.path, is_watch, request.query)
        if rule is not None:
            if rule.hang_s:
                await asyncio.sleep(rule.hang_s)
            self._record(request, body, rule.status)
            return self._json(_status(rule.status, _REASONS.get(rule.status, "Failure"), "injected failure"),
                              rule.status)
        try:
            if is_watch:
                self._record(request, body, 200)
                return await self._watch(request)
            result, code = self._dispatch(request, body)
        except ApiError as e:
            self._record(request, body, e.code)
            return self._json(_status(e.code, e.reason, str(e)), e.code)
        except Exception as e:  # a bug here must not kill the server
            log.exception("fakeapi_error", path=request.path)
            self._record(request, body, 500)
            return self._json(_status(500, "InternalError", repr(e)), 500)
        self._record(request, body, code)
        return self._json(result, code)

    @staticmethod
    def _json(data: Any, status: int = 200) -> web.Response:
        return web.Response(body=_enc.encode(data), status=status, content_type="application/json")

    def _dispatch(self, request: web.Request, body: Any) -> tuple[Any, int]:
        path = request.path
        if path in ("/healthz", "/livez", "/readyz"):
            return "ok", 200
        if path == "/version":
            return {"major": "1", "minor": "31", "gitVersion": "v1.31.0-flexinfer-fake"}, 200
        parsed = parse_path(path)
        if parsed is None:
            raise ApiError(404, f"the server could not find the requested resource ({path})")
        m = request.method
        if m == "GET" and parsed.name is None:
            out = self._list(parsed, request.query)
            if metadata_form(request.headers.get("Accept", ""), PARTIAL + "List"):
                out = {**out, "kind": PARTIAL + "List", "apiVersion": PARTIAL_API_VERSION,
                       "items": [partial(o) for o in out["items"]]}
            return out, 200
        if parsed.name is None:
            if m == "POST":
                return self._create(parsed, body), 201
            raise ApiError(405, f"method {m} not allowed on a collection")
        if parsed.subresource == "binding" and m == "POST" and parsed.rkey == ("", "v1", "pods"):
            return self._bind(parsed, body), 201
        if parsed.subresource not in (None, "status"):
            raise ApiError(404, f"subresource {parsed.subresource!r} is not served by the fake")
        if m == "GET":
            return self._get(parsed), 200
        if m == "PUT":
            return self._replace(parsed, body), 200
        if m == "PATCH":
            return self._patch(parsed, body, request.content_type), 200
        if m == "DELETE":
            return self._delete_req(parsed), 200
        raise ApiError(405, f"method {m} not allowed")

    def _key(self, p: ParsedPath, name: str | None = None) -> OKey:
        return (p.rkey, self._ns(p.rkey, p.namespace), name or p.name or "")

    def _get(self, p: ParsedPath) -> JSON:
        obj = self._objects.get(self._key(p))
        if obj is None:
            raise ApiError(404, f'{p.rkey[2]} "{p.name}" not found')
        return obj

    def _list(self, p: ParsedPath, query: Any) -> JSON:
        ls, fs = query.get("labelSelector"), query.get("fieldSelector")
        limit = _parse_limit(query.get("limit"))
        token = query.get("continue") or None
        if token is None:
            snap_rv, start, source = self._rv, None, self._objects
        else:
            snap_rv, start = decode_continue(token)
            if snap_rv < self._compacted_rv:
                raise ApiError(410, "The provided continue parameter is too old to display a consistent list "
                                    "result. You can start a new list without the continue parameter.", "Expired")
            source = self._snapshot(p.rkey, snap_rv)
        matching = [
            (key, o) for key, o in source.items()
            if key[0] == p.rkey and (not p.namespace or key[1] == p.namespace)
            and match_label_selector(ls, (o.get("metadata") or {}).get("labels") or {})
            and match_field_selector(fs, o)
        ]
        meta: JSON = {"resourceVersion": str(snap_rv)}
        if limit is None and start is None:
            items = [o for _, o in matching]  # unpaged: insertion order, as before paging existed
        else:
            # Paged lists walk the key space in order (like etcd's /registry/<resource>/<ns>/<name>).
            ordered = sorted(((k[1], k[2]), o) for k, o in matching)
            if start is not None:
                ordered = [(k, o) for k, o in ordered if k > start]
            page = ordered if limit is None else ordered[:limit]
            items = [o for _, o in page]
            if len(page) < len(ordered):
                meta["continue"] = encode_continue(snap_rv, page[-1][0])
                if not ls and not fs:  # the real server only counts when no selector filters
                    meta["remainingItemCount"] = len(ordered) - len(page)
        kind = _KINDS.get(p.rkey, p.rkey[2].capitalize())
        return {
            "kind": f"{kind}List",
            "apiVersion": f"{p.rkey[0]}/{p.rkey[1]}" if p.rkey[0] else p.rkey[1],
            "metadata": meta,
            "items": items,
        }

    def _snapshot(self, rkey: RKey, rv: int) -> dict[OKey, JSON]:
        """The objects of one resource as they were at resourceVersion ``rv``: today's objects with the
        retained history after ``rv`` undone (the caller checks ``rv`` is not compacted)."""
        objs = {k: o for k, o in self._objects.items() if k[0] == rkey}
        for ev in reversed(self._history):
            if ev.rv <= rv:
                break
            if ev.rkey != rkey:
                continue
            meta = ev.obj.get("metadata") or {}
            key = (rkey, self._ns(rkey, meta.get("namespace")), meta.get("name") or "")
            if ev.type == "ADDED" or ev.old is None:
                objs.pop(key, None)
            else:  # MODIFIED and DELETED carry the version before the change
                objs[key] = ev.old
        return objs

    def _create(self, p: ParsedPath, body: Any) -> JSON:
        if not isinstance(body, dict):
            raise ApiError(400, "body must be a JSON object")
        meta = body.get("metadata") or {}
        if p.namespace and meta.get("namespace") and meta["namespace"] != p.namespace:
            raise ApiError(400, "the namespace of the object does not match the namespace on the request")
        if not meta.get("name") and not meta.get("generateName"):
            raise ApiError(422, "metadata.name: Required value")
        obj = self._init_meta(p.rkey, copy.deepcopy(body), p.namespace)
        obj["metadata"].pop("resourceVersion", None)
        obj.pop("status", None) if self._has_status(p.rkey) else None
        key = self._key(p, obj["metadata"]["name"])
        if key in self._objects:
            raise ApiError(409, f'{p.rkey[2]} "{key[2]}" already exists', "AlreadyExists")
        return self._store(key, obj, "ADDED")

    @staticmethod
    def _has_status(rkey: RKey) -> bool:
        return rkey[2] not in ("configmaps", "events", "leases", "secrets")

    def _write(self, p: ParsedPath, cur: JSON, new: Any) -> JSON:
        """Apply the status-subresource split and bookkeeping, then store. new: the full desired object."""
        if not isinstance(new, dict):
            raise ApiError(400, "result must be a JSON object")
        cur_meta = cur["metadata"]
        new_meta = dict(new.get("metadata") or {})
        want_rv = new_meta.get("resourceVersion")
        if want_rv and want_rv != cur_meta.get("resourceVersion"):
            raise ApiError(409, f'Operation cannot be fulfilled on {p.rkey[2]} "{cur_meta.get("name")}": '
                                "the object has been modified; please apply your changes to the latest version")
        if p.subresource == "status":
            out = {**cur}
            if "status" in new:
                out["status"] = new["status"]
            else:
                out.pop("status", None)
        else:
            out = dict(new)
            # Identity and server-owned metadata cannot change.
            for k in ("name", "namespace", "uid", "creationTimestamp", "generation"):
                if k in cur_meta:
                    new_meta[k] = cur_meta[k]
                else:
                    new_meta.pop(k, None)
            if out.get("spec") != cur.get("spec"):
                new_meta["generation"] = int(cur_meta.get("generation") or 1) + 1
            out["metadata"] = new_meta
            if self._has_status(p.rkey):
                if "status" in cur:
                    out["status"] = cur["status"]
                else:
                    out.pop("status", None)
            out.setdefault("kind", cur.get("kind"))
            out.setdefault("apiVersion", cur.get("apiVersion"))
        if out == cur:
            return cur  # no-op writes do not bump resourceVersion (like the real server)
        return self._store(self._key(p), out, "MODIFIED")

    def _replace(self, p: ParsedPath, body: Any) -> JSON:
        cur = self._get(p)
        if not isinstance(body, dict):
            raise ApiError(400, "body must be a JSON object")
        if ((body.get("metadata") or {}).get("name") or p.name) != p.name:
            raise ApiError(400, "the name of the object does not match the name on the URL")
        if not (body.get("metadata") or {}).get("resourceVersion"):
            body = {**body, "metadata": {**(body.get("metadata") or {}),
                                         "resourceVersion": cur["metadata"]["resourceVersion"]}}
        return self._write(p, cur, copy.deepcopy(body))

    def _patch(self, p: ParsedPath, body: Any, content_type: str) -> JSON:
        cur = self._get(p)
        if content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            if not isinstance(body, dict):
                raise ApiError(400, "merge patch body must be a JSON object")
            new = json_merge_patch(cur, body)
            # a merge patch carries a resourceVersion precondition only if it sets one
            if not (body.get("metadata") or {}).get("resourceVersion"):
                new["metadata"]["resourceVersion"] = cur["metadata"].get("resourceVersion")
        elif content_type == "application/json-patch+json":
            if not isinstance(body, list):
                raise ApiError(400, "JSON patch body must be a list")
            try:
                new = json_patch(cur, body)
            except (ValueError, KeyError, IndexError, TypeError) as e:
                raise ApiError(422, f"JSON patch failed: {e}") from e
            if isinstance(new, dict):
                new.setdefault("metadata", {})["resourceVersion"] = cur["metadata"].get("resourceVersion")
        else:
            raise ApiError(415, f"unsupported patch content type {content_type!r}")
        return self._write(p, cur, new)

    def _bind(self, p: ParsedPath, body: Any) -> JSON:
        """pods/<name>/binding: what kube-scheduler posts. Sets spec.nodeName once (409 if bound)."""
        target = (body or {}).get("target") or {} if isinstance(body, dict) else {}
        node = target.get("name")
        if not node:
            raise ApiError(400, "binding needs target.name")
        cur = self._get(p)
        if (cur.get("spec") or {}).get("nodeName"):
            raise ApiError(409, f'pod {p.name} is already assigned to node "{cur["spec"]["nodeName"]}"')
        conditions = [c for c in ((cur.get("status") or {}).get("conditions") or [])
                      if c.get("type") != "PodScheduled"]
        conditions.append({"type": "PodScheduled", "status": "True", "lastTransitionTime": rfc3339(time.time())})
        new = {**cur, "spec": {**(cur.get("spec") or {}), "nodeName": node},
               "status": {**(cur.get("status") or {}), "conditions": conditions}}
        self._store(self._key(p), new, "MODIFIED")
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}

    def _delete_req(self, p: ParsedPath) -> JSON:
        gone = self._delete(self._key(p))
        if gone is None:
            raise ApiError(404, f'{p.rkey[2]} "{p.name}" not found')
        return gone

    async def _watch(self, request: web.Request) -> web.StreamResponse:
        parsed = parse_path(request.path)
        if parsed is None or parsed.name is not None:
            return self._json(_status(404, "NotFound", "watch needs a collection path"), 404)
        q = request.query
        try:
            metadata = metadata_form(request.headers.get("Accept", ""), PARTIAL)
        except ApiError as e:
            return self._json(_status(e.code, e.reason, str(e)), e.code)
        w = _Watcher(parsed.rkey, parsed.namespace, q.get("labelSelector"), q.get("fieldSelector"),
                     asyncio.Queue(), request, metadata)
        rv_s = q.get("resourceVersion") or ""
        try:
            timeout_s = float(q.get("timeoutSeconds") or 1800)
        except ValueError:
            timeout_s = 1800.0
        # Synchronously (no await in between) compute the backlog and register for live events.
        backlog: list[bytes] = []
        gone = False
        if rv_s in ("", "0"):
            backlog = [_event_line("ADDED", o, metadata) for (rk, _, _), o in self._objects.items()
                       if rk == w.rkey and self._visible(w, o)]
        else:
            try:
                rv = int(rv_s)
            except ValueError:
                return self._json(_status(400, "BadRequest", f"invalid resourceVersion {rv_s!r}"), 400)
            if rv < self._compacted_rv:
                gone = True
            else:
                backlog = [line for ev in self._history if ev.rv > rv
                           for line in [self._line_for(w, ev)] if line is not None]
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        if gone:
            await self._send_gone(resp, rv_s)
            return resp
        self._watchers.append(w)
        try:
            if backlog:
                await resp.write(b"".join(backlog))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    bookmark = {"kind": _KINDS.get(w.rkey, ""), "metadata": {"resourceVersion": str(self._rv)}}
                    await resp.write(_enc.encode({"type": "BOOKMARK", "object": bookmark}) + b"\n")
                    break
                if not w.queue.empty():
                    item = w.queue.get_nowait()
                else:
                    try:
                        item = await asyncio.wait_for(w.queue.get(), left)
                    except TimeoutError:
                        continue
                if item is None:  # server shutdown
                    break
                if item == "CUT":
                    if request.transport is not None:
                        request.transport.abort()
                    break
                if item == "GONE":
                    await self._send_gone(resp, rv_s)
                    break
                # Batch whatever else is already queued into one write (stop at control items).
                lines = [item]
                control: Any = False
                while not w.queue.empty() and len(lines) < 256:
                    nxt = w.queue.get_nowait()
                    if not isinstance(nxt, bytes):
                        control = nxt
                        break
                    lines.append(nxt)
                await resp.write(b"".join(lines))
                if control is not False:
                    w.queue.put_nowait(control)  # nothing queued after it matters: it ends the stream
        except ConnectionResetError:
            pass
        finally:
            with contextlib.suppress(ValueError):
                self._watchers.remove(w)
        with contextlib.suppress(Exception):
            await resp.write_eof()
        return resp

    @staticmethod
    async def _send_gone(resp: web.StreamResponse, rv_s: str) -> None:
        err = _status(410, "Expired", f"too old resource version: {rv_s}")
        await resp.write(_enc.encode({"type": "ERROR", "object": err}) + b"\n")
