"""What the proxy knows about the Models of its namespace and where they serve (informer-fed, thread-safe).

Two informers feed it: Models (spec, status) and the EndpointSlices of the Models' Services. A Model
is *serving* when its Service has at least one ready endpoint; the proxy sends traffic straight to
those pod addresses (no extra hop through kube-proxy, and readiness comes from the pod's readiness
probe, not from a status the controller writes a moment later).

Only EndpointSlices written by Kubernetes' EndpointSlice controller
(``endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io``) for a Service named like
the Model (``kubernetes.io/service-name``) count: a slice someone creates by hand with our labels cannot
redirect a Model's traffic.

Informer callbacks run on informer threads; they rebuild the affected :class:`ModelState` and publish a
new immutable snapshot (a dict swapped atomically), so the event loop reads without locks. Listeners
are told which Models changed (the proxy wakes requests waiting for them).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from flexinfer.controller import loading

from flexinfer import keys, logs
from flexinfer.errors import ValidationError
from flexinfer.model import Model, parse_model
from flexinfer.state import parse_rfc3339

log = logs.get("flexinfer.proxy.catalog")

JSON = dict[str, Any]
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
SLICE_MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
SLICE_CONTROLLER = "endpointslice-controller.k8s.io"
SLICE_SELECTOR = keys.LABEL_MODEL  # the controller's Service labels are copied onto its slices
# The Model status fields the controller publishes while a Model loads (flexinfer.controller.loading): the
# substage (PullingImage, LoadingWeights, WarmingUp) and the last time loading visibly progressed.
STATUS_SUBSTAGE, STATUS_PROGRESS_AT = loading.STATUS_SUBSTAGE, loading.STATUS_PROGRESS_AT
PULLING_IMAGE, LOADING_WEIGHTS, WARMING_UP = loading.PULLING_IMAGE, loading.LOADING_WEIGHTS, loading.WARMING_UP


@dataclass(frozen=True, slots=True)
class ModelState:
    """One Model as routing sees it (times are Unix seconds)."""

    name: str
    labels: tuple[str, ...] = ()
    phase: str = "Idle"
    reason: str = ""  # the Ready condition's reason (WaitingForGroup, Unschedulable, Loading, ...)
    message: str = ""
    group: str | None = None
    priority: int = 0
    min_replicas: int = 0
    idle_timeout_s: float = 600.0
    cold_start_timeout_s: float = 300.0
    last_active_unix: float | None = None  # status.lastActiveTime
    activate_unix: float | None = None  # flexinfer.ai/activate annotation
    ready_since_unix: float | None = None
    substage: str = ""  # status.loadingSubstage
    progress_unix: float | None = None  # status.loadingProgressAt
    context_tokens: int | None = None
    endpoints: tuple[str, ...] = ()  # ready upstream base URLs, http://ip:port
    created_unix: int = 0
    generation: int = 0
    model: Model | None = None  # the parsed Model (fit check)


def _ready_condition(status: JSON) -> JSON:
    for c in status.get("conditions") or []:
        if isinstance(c, dict) and c.get("type") == "Ready":
            return c
    return {}


def state_of(obj: JSON, endpoints: tuple[str, ...] = ()) -> ModelState | None:
    """A ModelState from a Model object; None when the Model is invalid (never routed)."""
    try:
        m = parse_model(obj, allow_never_runs=True)
        idle, cold = m.idle_timeout_seconds, m.cold_start_timeout_seconds
    except ValidationError as e:
        log.debug("invalid Model not routed", model=(obj.get("metadata") or {}).get("name"), error=str(e))
        return None
    from .body import context_window_tokens

    st = m.status
    ready = _ready_condition(st)
    phase = str(st.get("phase") or "Idle")
    ready_since = parse_rfc3339(ready.get("lastTransitionTime")) if ready.get("status") == "True" else None
    try:
        context = context_window_tokens(m)
    except Exception as e:  # a registry/recipe surprise must not hide the Model from routing
        log.warning("context window unknown", model=m.name, error=repr(e))
        context = None
    created = parse_rfc3339((obj.get("metadata") or {}).get("creationTimestamp"))
    return ModelState(
        name=m.name, labels=tuple(m.spec.service_labels), phase=phase, reason=str(ready.get("reason") or ""),
        message=str(st.get("message") or ""), group=m.group if m.needs_gpu else None, priority=m.priority,
        min_replicas=m.min_replicas, idle_timeout_s=idle, cold_start_timeout_s=cold,
        last_active_unix=parse_rfc3339(st.get("lastActiveTime")),
        activate_unix=parse_rfc3339(m.annotations.get(keys.MODEL_ACTIVATE)),
        ready_since_unix=ready_since,
        substage=str(st.get(STATUS_SUBSTAGE) or "") if phase == "Loading" else "",
        progress_unix=parse_rfc3339(st.get(STATUS_PROGRESS_AT)),
        context_tokens=context, endpoints=endpoints, created_unix=int(created or 0), generation=m.generation,
        model=m,
    )


def slice_endpoints(obj: JSON) -> tuple[str | None, tuple[str, ...]]:
    """(Model name, ready endpoint URLs) of an EndpointSlice; (None, ()) for a slice that does not count."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    if labels.get(SLICE_MANAGED_BY_LABEL) != SLICE_CONTROLLER:
        return None, ()
    svc = labels.get(SERVICE_NAME_LABEL)
    if not isinstance(svc, str) or not svc:
        return None, ()
    family = obj.get("addressType")
    if family not in ("IPv4", "IPv6"):
        return svc, ()
    ports = [p for p in obj.get("ports") or [] if isinstance(p, dict) and isinstance(p.get("port"), int)]
    port = next((p["port"] for p in ports if p.get("name") == "http"), ports[0]["port"] if ports else None)
    if port is None:
        return svc, ()
    urls = []
    for ep in obj.get("endpoints") or []:
        if not isinstance(ep, dict):
            continue
        cond = ep.get("conditions") or {}
        if cond.get("ready") is False or cond.get("terminating") is True:
            continue  # ready unset means unknown: treated as ready, as the API documents
        for addr in (ep.get("addresses") or [])[:1]:
            if isinstance(addr, str) and addr:
                urls.append(f"http://[{addr}]:{port}" if family == "IPv6" else f"http://{addr}:{port}")
    return svc, tuple(sorted(urls))


class Catalog:
    """Models + their ready endpoints, fed by informer events (see module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objs: dict[str, JSON] = {}
        self._slices: dict[str, tuple[str, tuple[str, ...]]] = {}  # slice name -> (model, urls)
        self._snapshot: Mapping[str, ModelState] = MappingProxyType({})
        self._listeners: list[Callable[[set[str]], None]] = []
        self.models_synced = False
        self.slices_synced = False
        self.version = 0

    # -- reading (any thread, lock-free) -----------------------------------------------------------
    @property
    def states(self) -> Mapping[str, ModelState]:
        return self._snapshot

    def get(self, name: str) -> ModelState | None:
        return self._snapshot.get(name)

    @property
    def synced(self) -> bool:
        return self.models_synced and self.slices_synced

    def add_listener(self, fn: Callable[[set[str]], None]) -> None:
        self._listeners.append(fn)

    # -- informer events ---------------------------------------------------------------------------
    def on_model_event(self, etype: str, obj: JSON) -> None:
        with self._lock:
            if etype == "SYNC":
                old = set(self._objs)
                self._objs = {}
                for item in obj.get("items") or []:
                    name = (item.get("metadata") or {}).get("name")
                    if name:
                        self._objs[name] = item
                changed = old | set(self._objs)
                self.models_synced = True
            else:
                name = (obj.get("metadata") or {}).get("name")
                if not name:
                    return
                if etype == "DELETED":
                    self._objs.pop(name, None)
                else:
                    self._objs[name] = obj
                changed = {name}
            self._rebuild(changed)
        self._notify(changed)

    def on_slice_event(self, etype: str, obj: JSON) -> None:
        with self._lock:
            changed: set[str] = set()
            if etype == "SYNC":
                changed = {m for m, _ in self._slices.values()}
                self._slices = {}
                for item in obj.get("items") or []:
                    self._put_slice(item)
                changed |= {m for m, _ in self._slices.values()}
                self.slices_synced = True
            else:
                name = (obj.get("metadata") or {}).get("name")
                if not name:
                    return
                old = self._slices.pop(name, None)
                if old:
                    changed.add(old[0])
                if etype != "DELETED":
                    model = self._put_slice(obj)
                    if model:
                        changed.add(model)
            self._rebuild(changed, endpoints_only=True)
        self._notify(changed)

    def _put_slice(self, obj: JSON) -> str | None:
        name = (obj.get("metadata") or {}).get("name")
        model, urls = slice_endpoints(obj)
        if not name or model is None:
            return None
        self._slices[name] = (model, urls)
        return model

    def _endpoints(self, model: str) -> tuple[str, ...]:
        urls: set[str] = set()
        for m, u in self._slices.values():
            if m == model:
                urls.update(u)
        return tuple(sorted(urls))

    def _rebuild(self, names: set[str], *, endpoints_only: bool = False) -> None:
        """New states for `names`; `endpoints_only`: their Model objects are unchanged, so a Model already in the
        snapshot keeps its parsed state and only gets its new endpoints (no second parse)."""
        if not names:
            return
        snap = dict(self._snapshot)
        for name in names:
            if endpoints_only and name in snap:
                snap[name] = replace(snap[name], endpoints=self._endpoints(name))
                continue
            obj = self._objs.get(name)
            st = state_of(obj, self._endpoints(name)) if obj is not None else None
            if st is None:
                snap.pop(name, None)
            else:
                snap[name] = st
        self._snapshot = MappingProxyType(snap)
        self.version += 1

    def _notify(self, names: set[str]) -> None:
        if not names:
            return
        for fn in self._listeners:
            try:
                fn(names)
            except Exception:  # a listener's bug must not stop the informer
                log.exception("catalog listener failed")
