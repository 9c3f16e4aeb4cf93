"""Informer: list (paged), then watch from the list's resourceVersion, keeping a local cache.

``Informer(api, kind, on_event, namespace=None, label_selector=None, field_selector=None)``:
``.start()`` (daemon thread), ``.stop(timeout_s=5)``, ``.wait_synced(timeout_s) -> bool``, ``.synced``,
``.last_sync_unix``, ``.healthy``, ``.resource_version``, ``.items() -> list[dict]`` (cache snapshot).
``on_event(type, obj)`` is called from the informer thread with type "ADDED" | "MODIFIED" | "DELETED"
(obj = the object) or "SYNC" (obj = ``{"items": [...], "metadata": {"resourceVersion": rv}}`` the complete
current list, sent after every (re)list; consumers rebuild their state from it). No ADDED events are sent
for the listed items themselves. Callback exceptions are logged, never fatal.

``metadata_only=True`` asks the server for each object's metadata alone (PartialObjectMetadata: name,
resourceVersion, labels, annotations, owners...), as client-go's metadata informers do: for a consumer that reads
only ``metadata`` (the extender's view of a Node is its labels and annotations) this saves the server encoding,
the bytes and, here, decoding a kubelet's whole Node (images, conditions: ~10 KiB) on every heartbeat. The Accept
header falls back to whole objects for a server that cannot answer so; they read the same under ``metadata``.

The initial list (and every relist) is read in pages of ``page_size`` items with ``limit``/``continue``,
as client-go's pager does, so a large cluster is never one huge response. All pages of one list are the
same snapshot (the server serves continuations at the first page's resourceVersion). If the snapshot
is compacted away mid-list (410 Expired on a continue token) the list is read again in one request.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import kubernetes.client
import msgspec
import urllib3

from flexinfer import logs

from .client import JSON, decode_body, open_response, request
from .errors import KubeError
from .resources import resource_for, resource_path

log = logs.get("flexinfer.kube")

EventHandler = Callable[[str, JSON], None]
DEFAULT_PAGE_SIZE = 500  # client-go's pager default
# client-go's metadata client asks so (JSON here, not protobuf); the plain range last: whole objects as a fallback
METADATA_LIST_ACCEPT = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
METADATA_WATCH_ACCEPT = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"

_decoder = msgspec.json.Decoder()


def _items_rv(data: JSON) -> tuple[list[Any], str]:
    """A List's items and its resourceVersion."""
    return list(data.get("items") or []), (data.get("metadata") or {}).get("resourceVersion") or ""


def list_pages(get: Callable[[dict[str, Any]], JSON], path: str, query: dict[str, Any], page_size: int, *,
               on_expired: Callable[[int, int], None] | None = None) -> tuple[list[Any], str, int]:
    """Every item of a list, its resourceVersion and the number of requests, `page_size` items a page
    (0: one unpaged request). `get(query)` makes one request. When the snapshot behind a continue token was
    compacted (410), the whole list is read in one request instead, like client-go's pager (FullListIfExpired;
    `on_expired(pages, items)` is told). A server that repeats a continue token is an error, not a loop."""
    if not page_size:
        return (*_items_rv(get(query)), 1)
    items: list[Any] = []
    token: str | None = None
    pages = 0
    while True:
        try:
            data = get({**query, "limit": str(page_size), "continue": token})
        except KubeError as e:
            if not (e.gone and token):
                raise
            if on_expired is not None:
                on_expired(pages, len(items))
            return (*_items_rv(get(query)), pages + 1)
        pages += 1
        items.extend(data.get("items") or [])
        meta = data.get("metadata") or {}
        nxt = meta.get("continue") or None
        if not nxt:
            return items, meta.get("resourceVersion") or "", pages
        if nxt == token:
            raise KubeError(f"list {path}: the server repeated continue token on page {pages}")
        token = nxt


def _obj_key(obj: JSON) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or "", meta.get("name") or ""


class Informer:
    """List, then watch from the list's resourceVersion; relist on 410 Gone; bounded exponential
    backoff on errors. Runs in a daemon thread; see the module docstring for the event contract.
    Single use: after stop(), make a new Informer. A clean watch end (server timeout) re-watches from
    the last resourceVersion; a broken stream backs off, then re-watches (relisting only on 410)."""

    def __init__(
        self,
        api: kubernetes.client.ApiClient,
        kind: str,
        on_event: EventHandler,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        *,
        watch_timeout_s: int = 300,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 10.0,
        read_timeout_s: float = 60.0,
        page_size: int = DEFAULT_PAGE_SIZE,
        metadata_only: bool = False,
    ) -> None:
        self.api = api
        self.metadata_only = metadata_only
        self.resource = resource_for(kind)
        self.on_event = on_event
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.watch_timeout_s = watch_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.list_timeout_s = read_timeout_s  # a list (page) answers at once: a hung server is given up on after this
        self.read_timeout_s = max(read_timeout_s, watch_timeout_s + 5.0)  # a watch stays open up to watch_timeout_s
        self.page_size = max(0, int(page_size))  # 0 = one unpaged list
        self.synced = False
        self.healthy = False
        self.last_sync_unix = 0.0
        self.resource_version = ""
        self.relists = 0
        self.list_pages = 0  # pages read by the last (re)list
        self._store: dict[tuple[str, str], JSON] = {}
        self._store_lock = threading.Lock()
        self._stop = threading.Event()
        self._synced_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._resp_lock = threading.Lock()
        self._resp: Any = None
        self._log = log.bind(kind=self.resource.plural, namespace=namespace, selector=label_selector)

    # -- public --
    def start(self) -> Informer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"informer-{self.resource.plural}", daemon=True
            )
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        with self._resp_lock:
            resp = self._resp
        if resp is not None:
            with contextlib.suppress(Exception):
                resp.shutdown()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def wait_synced(self, timeout_s: float | None = None) -> bool:
        return self._synced_event.wait(timeout_s)

    def items(self) -> list[JSON]:
        with self._store_lock:
            return list(self._store.values())

    def get(self, namespace: str, name: str) -> JSON | None:
        """The cached object `namespace`/`name` ("" for cluster-scoped kinds), one dict lookup."""
        with self._store_lock:
            return self._store.get((namespace, name))

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- loop --
    def _run(self) -> None:
        backoff = self.backoff_initial_s
        need_list = True
        while not self._stop.is_set():
            try:
                if need_list:
                    self._list()
                    need_list = False
                    backoff = self.backoff_initial_s
                progressed = self._watch()
                if progressed:
                    backoff = self.backoff_initial_s
            except KubeError as e:
                if self._stop.is_set():
                    break
                if e.gone:
                    self._log.info("informer_relist", reason="410 Gone", resource_version=self.resource_version)
                    need_list = True
                    continue
                self.healthy = False
                self._log.warning("informer_error", error=str(e), backoff_s=round(backoff, 2))
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.backoff_max_s)
            except Exception as e:  # never let the thread die on junk
                if self._stop.is_set():
                    break
                self.healthy = False
                self._log.error("informer_unexpected", error=repr(e), backoff_s=round(backoff, 2))
                need_list = True
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.backoff_max_s)
        self.healthy = False

    def _emit(self, kind: str, obj: JSON) -> None:
        try:
            self.on_event(kind, obj)
        except Exception as e:
            self._log.error("informer_handler_failed", event_type=kind, error=repr(e))

    def _get_list(self, path: str, query: dict[str, Any]) -> JSON:
        return request(self.api, "GET", path, query=query, timeout_s=(5.0, self.list_timeout_s),
                       accept=METADATA_LIST_ACCEPT if self.metadata_only else None)

    def _read_list(self) -> tuple[list[Any], str]:
        """All items of the collection and the list's resourceVersion, page by page."""
        path = resource_path(self.resource, self.namespace)
        base = {"labelSelector": self.label_selector, "fieldSelector": self.field_selector}

        def expired(pages: int, items: int) -> None:
            self._log.info("informer_list_expired", pages=pages, items=items)

        items, rv, self.list_pages = list_pages(lambda query: self._get_list(path, query), path, base,
                                                self.page_size, on_expired=expired)
        return items, rv

    def _list(self) -> None:
        raw_items, rv = self._read_list()
        items = [i for i in raw_items if isinstance(i, dict)]
        # Lists leave out kind/apiVersion on items; fill them in so consumers see whole objects.
        for item in items:
            item.setdefault("kind", self.resource.kind)
            item.setdefault("apiVersion", self.resource.api_version)
        with self._store_lock:
            self._store = {_obj_key(i): i for i in items}
        self.resource_version = rv
        self.relists += 1
        self._emit("SYNC", {"items": items, "metadata": {"resourceVersion": rv}})
        self.synced = True
        self.healthy = True
        self.last_sync_unix = time.time()
        self._synced_event.set()
        self._log.debug("informer_synced", items=len(items), pages=self.list_pages, resource_version=rv)

    def _watch(self) -> bool:
        """One watch request. Returns True if at least one event arrived. Raises KubeError (410 etc.)."""
        path = resource_path(self.resource, self.namespace)
        query = {
            "watch": "true",
            "resourceVersion": self.resource_version or None,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(int(self.watch_timeout_s)),
            "labelSelector": self.label_selector,
            "fieldSelector": self.field_selector,
        }
        resp = open_response(self.api, "GET", path, query=query, timeout_s=(5.0, self.read_timeout_s),
                             accept=METADATA_WATCH_ACCEPT if self.metadata_only else None)
        got = False
        with self._resp_lock:
            self._resp = resp
        try:
            if self._stop.is_set():
                return got
            if resp.status != 200:
                body = decode_body(resp.data)
                raise KubeError(
                    f"watch {path}: HTTP {resp.status}: {body.get('message', '') if isinstance(body, dict) else ''}",
                    status=resp.status,
                )
            self.healthy = True
            buf = b""
            for chunk in resp.stream(65536, decode_content=True):
                if self._stop.is_set():
                    return got
                buf += chunk
                if b"\n" not in chunk:
                    continue
                *lines, buf = buf.split(b"\n")  # one pass per chunk (not one copy of the rest per line)
                for line in lines:
                    if line.strip():
                        self._handle_line(line, path)
                        got = True
            if buf.strip() and not self._stop.is_set():
                self._handle_line(buf, path)
                got = True
        except (urllib3.exceptions.HTTPError, OSError) as e:
            if self._stop.is_set():
                return got
            raise KubeError(f"watch {path}: stream broken: {e}", status=0) from e
        finally:
            with self._resp_lock:
                self._resp = None
            with contextlib.suppress(Exception):
                resp.release_conn()
        return got

    def _handle_line(self, line: bytes, path: str) -> None:
        try:
            event = _decoder.decode(line)
        except msgspec.DecodeError:
            self._log.warning("informer_bad_line", line=line[:200].decode("utf-8", "replace"))
            return
        if not isinstance(event, dict):
            return
        etype = event.get("type")
        obj = event.get("object")
        if not isinstance(obj, dict):
            return
        if etype == "ERROR":
            code = obj.get("code") or 500
            raise KubeError(f"watch {path}: {obj.get('message', 'error event')}", status=int(code),
                            reason=obj.get("reason"))
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if etype == "BOOKMARK":
            if rv:
                self.resource_version = rv
            return
        if etype not in ("ADDED", "MODIFIED", "DELETED"):
            return
        key = _obj_key(obj)
        with self._store_lock:
            if etype == "DELETED":
                self._store.pop(key, None)
            else:
                self._store[key] = obj
        if rv:
            self.resource_version = rv
        self._emit(etype, obj)
