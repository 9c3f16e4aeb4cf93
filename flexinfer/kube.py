"""Thin adapters over the official ``kubernetes`` client: raw JSON requests, retries, informers.

Everything here talks to the API server through ``ApiClient.param_serialize`` + ``call_api`` (so auth,
TLS and proxies from the kubeconfig / in-cluster config apply) and decodes responses with msgspec into
plain JSON dicts (camelCase, exactly as the API sends them). The typed models are never used: they are
slow and lossy for custom resources.

API (others code against this):

- ``api_client(server=None, kubeconfig=None) -> ApiClient``: explicit server URL > in-cluster > kubeconfig.
- ``KubeError(message, status=None, reason=None)``: every failure; ``.status`` is the HTTP code (0 when
  the server could not be reached), ``.not_found`` / ``.conflict`` shortcuts.
- ``RetryPolicy(attempts, initial_s, max_s)``; ``DEFAULT_RETRY``. Retryable: 409, 429, 5xx, connection
  errors and timeouts. After ``attempts`` tries a ``KubeError`` naming the operation is raised.
- ``patch_node_metadata(api, node, labels, annotations, *, retry=DEFAULT_RETRY)``: one JSON merge patch
  (``application/merge-patch+json``) touching only the given keys; a ``None`` value deletes the key.
- ``patch_model_status(api, namespace, name, status, *, retry=...) -> dict``: merge patch on the
  ``status`` subresource of ``models.ai.flexinfer/v1alpha2``.
- ``patch_model_annotations(api, namespace, name, annotations, *, retry=...) -> dict``.
- ``merge_patch(api, kind, name, patch, namespace=None, subresource=None, *, retry=...) -> dict``.
- ``scale_deployment(api, namespace, name, replicas, *, retry=...) -> dict``.
- ``apply_object(api, obj, *, retry=...) -> dict``: create; if it exists, fetch and (only when a field
  we set differs) replace it, keeping what the server or others own (see ``prepare_replace``);
  idempotent, conflicts retried. Deployment, Service, PVC, Model or any kind in ``RESOURCES``. Put owner
  references in ``obj`` yourself (``owner_reference(model)``) so deleting the Model cascades.
- ``get_object(api, kind, name, namespace=None) -> dict | None`` (None on 404),
  ``list_objects(api, kind, namespace=None, label_selector=None, field_selector=None) -> list[dict]``,
  ``delete_object(api, kind, name, namespace=None) -> bool`` (False when already gone),
  ``create_object(api, obj) -> dict``, ``replace_object(api, obj) -> dict``.
- ``owner_reference(owner: dict, controller=True) -> dict`` for ``metadata.ownerReferences``.
- ``bind_pod(api, namespace, name, node, *, retry=...)``: POST pods/<name>/binding (kube-scheduler's bind).
- ``request(api, method, path, *, query=None, body=None, content_type=None, timeout_s=...) -> dict``:
  escape hatch for anything else (raises KubeError on non-2xx); ``resource_path(resource_for(kind), ...)``.
- ``Informer(api, kind, on_event, namespace=None, label_selector=None, field_selector=None)``:
  ``.start()`` (daemon thread), ``.stop(timeout_s=5)``, ``.wait_synced(timeout_s) -> bool``, ``.synced``,
  ``.last_sync_unix``, ``.healthy``, ``.resource_version``, ``.items() -> list[dict]`` (cache snapshot).
  ``on_event(type, obj)`` is called from the informer thread with type "ADDED" | "MODIFIED" |
  "DELETED" (obj = the object) or "SYNC" (obj = ``{"items": [...], "metadata": {"resourceVersion": rv}}``
  the complete current list, sent after every (re)list; consumers rebuild their state from it). No
  ADDED events are sent for the listed items themselves. Callback exceptions are logged, never fatal.

``kind`` everywhere accepts a plural ("nodes"), a Kind ("Node") or a singular ("node"); see ``RESOURCES``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import kubernetes.client
import kubernetes.config
import msgspec
import tenacity
import urllib3

from flexinfer import keys, logs

log = logs.get("flexinfer.kube")

JSON = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"

_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


# --- resource table --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resource:
    group: str  # "" for the core API
    version: str
    plural: str
    namespaced: bool
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


RESOURCES: dict[str, Resource] = {
    r.plural: r
    for r in (
        Resource("", "v1", "nodes", False, "Node"),
        Resource("", "v1", "pods", True, "Pod"),
        Resource("", "v1", "services", True, "Service"),
        Resource("", "v1", "persistentvolumeclaims", True, "PersistentVolumeClaim"),
        Resource("", "v1", "configmaps", True, "ConfigMap"),
        Resource("", "v1", "namespaces", False, "Namespace"),
        Resource("", "v1", "events", True, "Event"),
        Resource("apps", "v1", "deployments", True, "Deployment"),
        Resource("coordination.k8s.io", "v1", "leases", True, "Lease"),
        Resource(keys.MODEL_GROUP, keys.MODEL_VERSION, keys.MODEL_PLURAL, True, keys.MODEL_KIND),
    )
}
_ALIASES: dict[str, str] = {}
for _r in RESOURCES.values():
    _ALIASES[_r.plural] = _r.plural
    _ALIASES[_r.kind.lower()] = _r.plural
    _ALIASES[_r.plural.rstrip("s")] = _r.plural
_ALIASES["pvc"] = "persistentvolumeclaims"


def resource_for(kind: str) -> Resource:
    """Resolve "nodes" / "Node" / "node" / "pvc" to its Resource; KubeError for unknown kinds."""
    plural = _ALIASES.get(kind.lower())
    if plural is None:
        raise KubeError(f"unknown resource kind {kind!r}; known: {sorted(RESOURCES)}")
    return RESOURCES[plural]


def resource_path(
    res: Resource, namespace: str | None = None, name: str | None = None, subresource: str | None = None
) -> str:
    """URL path of a collection or object. Pure."""
    base = f"/apis/{res.group}/{res.version}" if res.group else f"/api/{res.version}"
    if res.namespaced and namespace:
        base += f"/namespaces/{quote(namespace, safe='')}"
    base += f"/{res.plural}"
    if name is not None:
        base += f"/{quote(name, safe='')}"
        if subresource:
            base += f"/{subresource}"
    return base


# --- errors and retries ----------------------------------------------------------------------------


class KubeError(Exception):
    """An API call failed. status: HTTP code, 0 = no response (connection error/timeout)."""

    def __init__(self, message: str, status: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def gone(self) -> bool:
        return self.status == 410


def is_retryable(exc: BaseException) -> bool:
    """409 (write conflict), 429, 5xx and no-response errors are worth retrying. Pure."""
    if not isinstance(exc, KubeError) or exc.status is None:
        return False
    return exc.status in (0, 409, 429) or exc.status >= 500


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    initial_s: float = 0.2
    max_s: float = 5.0


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(attempts=1)


def _with_retry(what: str, policy: RetryPolicy, fn: Callable[[], Any], *, retry_conflict: bool = True) -> Any:
    def retryable(exc: BaseException) -> bool:
        return is_retryable(exc) and (retry_conflict or getattr(exc, "status", None) != 409)

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(max(1, policy.attempts)),
        wait=tenacity.wait_exponential(multiplier=policy.initial_s, min=policy.initial_s, max=policy.max_s),
        retry=tenacity.retry_if_exception(retryable),
        reraise=True,
        before_sleep=lambda rs: log.warning(
            "kube_retry", what=what, attempt=rs.attempt_number, error=str(rs.outcome.exception())
        ),
    )
    try:
        return retrying(fn)
    except KubeError as e:
        if retryable(e) and policy.attempts > 1:
            raise KubeError(
                f"{what}: giving up after {policy.attempts} attempts: {e}", status=e.status, reason=e.reason
            ) from e
        raise


# --- client ----------------------------------------------------------------------------------------


def api_client(server: str | None = None, kubeconfig: str | None = None) -> kubernetes.client.ApiClient:
    """Explicit server URL (tests, demo) > in-cluster service account > kubeconfig (file or default)."""
    cfg = kubernetes.client.Configuration()
    if server:
        cfg.host = server.rstrip("/")
    elif kubeconfig is None and _in_cluster():
        try:
            kubernetes.config.load_incluster_config(client_configuration=cfg)
        except Exception as e:
            raise KubeError(f"cannot load the in-cluster service account config: {e}") from e
    else:
        try:
            kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        except Exception as e:  # the loader raises several unrelated types
            raise KubeError(f"cannot load kubeconfig {kubeconfig or '(default)'}: {e}") from e
    # Watches and the controller's workers share one pool; keep enough connections around.
    cfg.connection_pool_maxsize = max(cfg.connection_pool_maxsize or 0, 32)
    # No silent urllib3 retries (its default Retry(3) re-sends a timed-out GET three more times: a hung API
    # server would block a caller for 4x the read timeout). Retrying is decided in one place, with backoff,
    # by the callers' tenacity policies (`retry=`), and every attempt is logged.
    cfg.retries = False
    return kubernetes.client.ApiClient(cfg)


def _in_cluster() -> bool:
    import os

    return "KUBERNETES_SERVICE_HOST" in os.environ and os.path.exists(
        "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )


DEFAULT_TIMEOUT_S: tuple[float, float] = (5.0, 30.0)  # (connect, read)


def _open(
    api: kubernetes.client.ApiClient,
    method: str,
    path: str,
    *,
    query: Mapping[str, Any] | None = None,
    body: Any = None,
    content_type: str | None = None,
    timeout_s: float | tuple[float, float] | None = DEFAULT_TIMEOUT_S,
) -> Any:
    """Send one request; returns the raw urllib3 response (not read). KubeError(status=0) on no response."""
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = content_type or "application/json"
    q = [(k, v) for k, v in (query or {}).items() if v is not None]
    m, url, hdrs, b, post = api.param_serialize(
        method, path, query_params=q or None, header_params=headers, body=body, auth_settings=["BearerToken"]
    )
    # The REST layer json.dumps bodies of any */*+json content type and keeps our Content-Type, except
    # that it rewrites application/json-patch+json to strategic-merge for dict bodies. We always send
    # an explicit application/merge-patch+json for patches, which it leaves alone.
    try:
        resp = api.call_api(m, url, header_params=hdrs, body=b, post_params=post, _request_timeout=timeout_s)
    except (urllib3.exceptions.HTTPError, OSError) as e:
        raise KubeError(f"{method} {path}: no response: {e}", status=0) from e
    except kubernetes.client.ApiException as e:
        raise KubeError(f"{method} {path}: {e.reason}", status=e.status or 0, reason=e.reason) from e
    return resp.response


def request(
    api: kubernetes.client.ApiClient,
    method: str,
    path: str,
    *,
    query: Mapping[str, Any] | None = None,
    body: Any = None,
    content_type: str | None = None,
    timeout_s: float | tuple[float, float] | None = DEFAULT_TIMEOUT_S,
) -> JSON:
    """One API request, JSON in and out. Non-2xx -> KubeError with the server's status and message."""
    raw = _open(api, method, path, query=query, body=body, content_type=content_type, timeout_s=timeout_s)
    try:
        data = raw.data
    except (urllib3.exceptions.HTTPError, OSError) as e:
        raise KubeError(f"{method} {path}: reading response failed: {e}", status=0) from e
    finally:
        raw.release_conn()
    status = raw.status
    try:
        decoded = _decoder.decode(data) if data else {}
    except msgspec.DecodeError:
        decoded = {"message": data[:200].decode("utf-8", "replace")}
    if not 200 <= status < 300:
        reason = decoded.get("reason") if isinstance(decoded, dict) else None
        message = decoded.get("message") if isinstance(decoded, dict) else None
        raise KubeError(
            f"{method} {path}: HTTP {status} {reason or ''}: {message or ''}".strip(),
            status=status,
            reason=reason,
        )
    if not isinstance(decoded, dict):
        raise KubeError(f"{method} {path}: expected a JSON object, got {type(decoded).__name__}", status=status)
    return decoded


# --- object helpers --------------------------------------------------------------------------------


def get_object(
    api: kubernetes.client.ApiClient,
    kind: str,
    name: str,
    namespace: str | None = None,
    *,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> JSON | None:
    """The object, or None if it does not exist."""
    path = resource_path(resource_for(kind), namespace, name)
    try:
        return _with_retry(f"get {path}", retry, lambda: request(api, "GET", path))
    except KubeError as e:
        if e.not_found:
            return None
        raise


def list_objects(
    api: kubernetes.client.ApiClient,
    kind: str,
    namespace: str | None = None,
    *,
    label_selector: str | None = None,
    field_selector: str | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> list[JSON]:
    return list_raw(api, kind, namespace, label_selector=label_selector, field_selector=field_selector,
                    retry=retry).get("items") or []


def list_raw(
    api: kubernetes.client.ApiClient,
    kind: str,
    namespace: str | None = None,
    *,
    label_selector: str | None = None,
    field_selector: str | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> JSON:
    """The List object (items + metadata.resourceVersion)."""
    path = resource_path(resource_for(kind), namespace)
    query = {"labelSelector": label_selector, "fieldSelector": field_selector}
    return _with_retry(f"list {path}", retry, lambda: request(api, "GET", path, query=query))


def create_object(api: kubernetes.client.ApiClient, obj: JSON, *, retry: RetryPolicy = DEFAULT_RETRY) -> JSON:
    res, ns, _ = _identify(obj)
    path = resource_path(res, ns)
    # 409 on create means "already exists": never retried here.
    return _with_retry(f"create {path}", retry, lambda: request(api, "POST", path, body=obj), retry_conflict=False)


def replace_object(api: kubernetes.client.ApiClient, obj: JSON, *, retry: RetryPolicy = DEFAULT_RETRY) -> JSON:
    res, ns, name = _identify(obj)
    path = resource_path(res, ns, name)
    return _with_retry(f"replace {path}", retry, lambda: request(api, "PUT", path, body=obj))


def delete_object(
    api: kubernetes.client.ApiClient,
    kind: str,
    name: str,
    namespace: str | None = None,
    *,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> bool:
    """Delete (background propagation). False if it was already gone."""
    path = resource_path(resource_for(kind), namespace, name)
    body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
    try:
        _with_retry(f"delete {path}", retry, lambda: request(api, "DELETE", path, body=body), retry_conflict=False)
    except KubeError as e:
        if e.not_found:
            return False
        raise
    return True


def merge_patch(
    api: kubernetes.client.ApiClient,
    kind: str,
    name: str,
    patch: JSON,
    namespace: str | None = None,
    subresource: str | None = None,
    *,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> JSON:
    """RFC 7386 JSON merge patch (None deletes a key). Retries 409/429/5xx/no-response."""
    path = resource_path(resource_for(kind), namespace, name, subresource)
    return _with_retry(
        f"patch {path}", retry, lambda: request(api, "PATCH", path, body=patch, content_type=MERGE_PATCH)
    )


def node_metadata_patch(labels: Mapping[str, str | None], annotations: Mapping[str, str | None]) -> JSON:
    """The merge-patch body for patch_node_metadata. Pure."""
    meta: JSON = {}
    if labels:
        meta["labels"] = dict(labels)
    if annotations:
        meta["annotations"] = dict(annotations)
    return {"metadata": meta}


def patch_node_metadata(
    api: kubernetes.client.ApiClient,
    node: str,
    labels: Mapping[str, str | None],
    annotations: Mapping[str, str | None],
    *,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> None:
    """One merge patch on the Node touching only the given keys; None deletes a key."""
    if not labels and not annotations:
        return
    merge_patch(api, "nodes", node, node_metadata_patch(labels, annotations), retry=retry)


def patch_model_status(
    api: kubernetes.client.ApiClient,
    namespace: str,
    name: str,
    status: JSON,
    *,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> JSON:
    """Merge patch on models/<name>/status (only the status stanza)."""
    return merge_patch(api, keys.MODEL_PLURAL, name, {"status": status}, namespace, "status", retry=retry)


def patch_model_annotations(
    api: kubernetes.client.ApiClient,
    namespace: str,
    name: str,
    annotations: Mapping[str, str | None],
    *,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> JSON:
    return merge_patch(
        api, keys.MODEL_PLURAL, name, {"metadata": {"annotations": dict(annotations)}}, namespace, retry=retry
    )


def scale_deployment(
    api: kubernetes.client.ApiClient,
    namespace: str,
    name: str,
    replicas: int,
    *,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> JSON:
    """Set spec.replicas with a merge patch on the Deployment (returns the Deployment)."""
    if replicas < 0:
        raise KubeError(f"scale {namespace}/{name}: replicas must be >= 0, got {replicas}")
    return merge_patch(api, "deployments", name, {"spec": {"replicas": int(replicas)}}, namespace, retry=retry)


def bind_pod(
    api: kubernetes.client.ApiClient,
    namespace: str,
    name: str,
    node: str,
    *,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> None:
    """Bind a pod to a node as kube-scheduler does (POST pods/<name>/binding). A 409 (already bound)
    is raised at once, not retried."""
    body = {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": name, "namespace": namespace},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    }
    path = resource_path(RESOURCES["pods"], namespace, name, "binding")
    _with_retry(f"bind {namespace}/{name} to {node}", retry, lambda: request(api, "POST", path, body=body),
                retry_conflict=False)


def owner_reference(owner: JSON, controller: bool = True) -> JSON:
    """An ownerReferences entry pointing at ``owner`` (needs apiVersion, kind, metadata.name/uid). Pure."""
    meta = owner.get("metadata") or {}
    return {
        "apiVersion": owner.get("apiVersion", keys.MODEL_API_VERSION),
        "kind": owner.get("kind", keys.MODEL_KIND),
        "name": meta.get("name", ""),
        "uid": meta.get("uid", ""),
        "controller": controller,
        "blockOwnerDeletion": True,
    }


def _identify(obj: JSON) -> tuple[Resource, str | None, str]:
    kind = obj.get("kind")
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not kind or not name:
        raise KubeError("object needs kind and metadata.name")
    res = resource_for(kind)
    if res.api_version != obj.get("apiVersion", res.api_version):
        raise KubeError(f"{kind}: apiVersion {obj.get('apiVersion')!r} != {res.api_version!r}")
    ns = meta.get("namespace") if res.namespaced else None
    if res.namespaced and not ns:
        raise KubeError(f"{kind} {name}: metadata.namespace is required")
    return res, ns, name


def prepare_replace(desired: JSON, current: JSON) -> JSON:
    """The PUT body that replaces ``current`` with ``desired``. Pure. Kept from ``current``:
    resourceVersion (optimistic concurrency), status, finalizers, annotations we do not set (others'
    bookkeeping such as deployment.kubernetes.io/revision; ours win on clashes), Service clusterIP(s),
    the immutable PVC spec (only a storage request change is applied), and a Deployment's
    spec.replicas when ``desired`` leaves it unset (so scale_deployment and apply do not fight)."""
    out = dict(desired)
    cur_meta = current.get("metadata") or {}
    meta = dict(out.get("metadata") or {})
    meta["resourceVersion"] = cur_meta.get("resourceVersion")
    if cur_meta.get("annotations"):
        meta["annotations"] = {**cur_meta["annotations"], **(meta.get("annotations") or {})}
    if cur_meta.get("finalizers") and "finalizers" not in meta:
        meta["finalizers"] = cur_meta["finalizers"]
    out["metadata"] = meta
    kind = (desired.get("kind") or "").lower()
    cur_spec = current.get("spec") or {}
    spec = dict(out.get("spec") or {})
    if kind == "service":
        for k in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
            if k in cur_spec and k not in spec:
                spec[k] = cur_spec[k]
        out["spec"] = spec
    elif kind == "deployment":
        if "replicas" not in spec and "replicas" in cur_spec:
            spec["replicas"] = cur_spec["replicas"]
        out["spec"] = spec
    elif kind == "persistentvolumeclaim":
        # PVC spec is immutable except resources.requests: keep the current spec, grow storage only.
        pvc_spec = dict(cur_spec)
        want = (spec.get("resources") or {}).get("requests")
        if want:
            pvc_spec["resources"] = {**(cur_spec.get("resources") or {}), "requests": want}
        out["spec"] = pvc_spec
    if "status" in current:
        out["status"] = current["status"]
    else:
        out.pop("status", None)
    return out


def _needs_update(desired: JSON, current: JSON) -> bool:
    """True if some field set in ``desired`` differs in ``current`` (server defaults are ignored). Pure."""
    return not _subset(desired, current)


def _subset(want: Any, have: Any) -> bool:
    if have is None and want in ({}, [], ""):
        return True  # the server drops empty values
    if isinstance(want, dict):
        return isinstance(have, dict) and all(_subset(v, have.get(k)) for k, v in want.items())
    if isinstance(want, list):
        return (isinstance(have, list) and len(want) == len(have)
                and all(_subset(a, b) for a, b in zip(want, have, strict=True)))
    return want == have


def apply_object(api: kubernetes.client.ApiClient, obj: JSON, *, retry: RetryPolicy = DEFAULT_RETRY) -> JSON:
    """Create ``obj``, or if it exists make it match: fetch, and replace if any field we set differs.
    Idempotent (no write when nothing changed). Returns the object as stored."""
    res, ns, name = _identify(obj)
    body = {k: v for k, v in obj.items() if k != "status"}

    def attempt() -> JSON:
        try:
            return request(api, "POST", resource_path(res, ns), body=body)
        except KubeError as e:
            if not e.conflict:
                raise
        current = request(api, "GET", resource_path(res, ns, name))
        if not _needs_update(_comparable(body, res), current):
            return current
        # A 409 here (someone wrote in between) is retried by the policy: fetch again, replace again.
        return request(api, "PUT", resource_path(res, ns, name), body=prepare_replace(body, current))

    return _with_retry(f"apply {res.plural} {ns}/{name}", retry, attempt)


def _comparable(body: JSON, res: Resource) -> JSON:
    out = dict(body)
    if res.plural == "persistentvolumeclaims":
        # The spec is immutable after creation except the storage request.
        requests = ((out.get("spec") or {}).get("resources") or {}).get("requests")
        out["spec"] = {"resources": {"requests": requests}} if requests else {}
    return out


# --- informer --------------------------------------------------------------------------------------


EventHandler = Callable[[str, JSON], None]


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
    ) -> None:
        self.api = api
        self.resource = resource_for(kind)
        self.on_event = on_event
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.watch_timeout_s = watch_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.read_timeout_s = max(read_timeout_s, watch_timeout_s + 5.0)
        self.synced = False
        self.healthy = False
        self.last_sync_unix = 0.0
        self.resource_version = ""
        self.relists = 0
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

    def _list(self) -> None:
        path = resource_path(self.resource, self.namespace)
        query = {"labelSelector": self.label_selector, "fieldSelector": self.field_selector}
        data = request(self.api, "GET", path, query=query, timeout_s=(5.0, self.read_timeout_s))
        items = [i for i in (data.get("items") or []) if isinstance(i, dict)]
        # Lists leave out kind/apiVersion on items; fill them in so consumers see whole objects.
        for item in items:
            item.setdefault("kind", self.resource.kind)
            item.setdefault("apiVersion", self.resource.api_version)
        rv = ((data.get("metadata") or {}).get("resourceVersion")) or ""
        with self._store_lock:
            self._store = {_obj_key(i): i for i in items}
        self.resource_version = rv
        self.relists += 1
        self._emit("SYNC", {"items": items, "metadata": {"resourceVersion": rv}})
        self.synced = True
        self.healthy = True
        self.last_sync_unix = time.time()
        self._synced_event.set()
        self._log.debug("informer_synced", items=len(items), resource_version=rv)

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
        resp = _open(self.api, "GET", path, query=query, timeout_s=(5.0, self.read_timeout_s))
        got = False
        with self._resp_lock:
            self._resp = resp
        try:
            if self._stop.is_set():
                return got
            if resp.status != 200:
                data = resp.data
                try:
                    body = _decoder.decode(data) if data else {}
                except msgspec.DecodeError:
                    body = {}
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
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
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
