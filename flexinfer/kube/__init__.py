"""Thin adapters over the official ``kubernetes`` client: raw JSON requests, retries, object verbs,
declarative apply, informers. Import the package and use its names (``from flexinfer import kube;
kube.request(...)``); the modules are an implementation detail:

- ``errors``: ``KubeError``, ``is_retryable``;
- ``retry``: ``RetryPolicy``, ``DEFAULT_RETRY``, ``NO_RETRY``, ``with_retry``;
- ``resources``: the resource table (``RESOURCES``, ``resource_for``, ``resource_path``, ``identify``);
- ``client``: ``api_client``, ``request`` (JSON in and out), ``open_response`` (raw, for streams);
- ``objects``: get/list/create/replace/delete, merge patches, scale, bind;
- ``apply``: ``apply_object``, ``prepare_replace``, ``owner_reference``;
- ``informer``: ``Informer`` (paged list, then watch).

API (others code against this):

- ``api_client(server=None, kubeconfig=None) -> ApiClient``: explicit server URL > in-cluster > kubeconfig.
- ``KubeError(message, status=None, reason=None)``: every failure; ``.status`` is the HTTP code (0 when
  the server could not be reached), ``.not_found`` / ``.conflict`` / ``.gone`` shortcuts.
- ``RetryPolicy(attempts, initial_s, max_s)``; ``DEFAULT_RETRY``, ``NO_RETRY``. Retryable: 409, 429, 5xx,
  connection errors and timeouts. After ``attempts`` tries a ``KubeError`` naming the operation is raised.
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
  ``list_raw(...) -> dict`` (the List object), ``delete_object(api, kind, name, namespace=None) -> bool``
  (False when already gone), ``create_object(api, obj) -> dict``, ``replace_object(api, obj) -> dict``.
- ``owner_reference(owner: dict, controller=True) -> dict`` for ``metadata.ownerReferences``.
- ``bind_pod(api, namespace, name, node, *, retry=...)``: POST pods/<name>/binding (kube-scheduler's bind).
- ``request(api, method, path, *, query=None, body=None, content_type=None, timeout_s=..., accept=None) -> dict``:
  escape hatch for anything else (raises KubeError on non-2xx); ``resource_path(resource_for(kind), ...)``.
- ``Informer(api, kind, on_event, namespace=None, label_selector=None, field_selector=None, *,
  page_size=500, metadata_only=False)``: see ``flexinfer.kube.informer`` for the event contract.
- ``list_pages(get, path, query, page_size, *, on_expired=None) -> (items, resourceVersion, requests)``: the
  informer's pager (continue tokens; a compacted snapshot read whole; a repeated token is an error).

``kind`` everywhere accepts a plural ("nodes"), a Kind ("Node") or a singular ("node"); see ``RESOURCES``.
"""

from __future__ import annotations

from .apply import apply_object, needs_update, owner_reference, prepare_replace
from .client import DEFAULT_TIMEOUT_S, JSON, MERGE_PATCH, api_client, open_response, request
from .errors import KubeError, is_retryable
from .informer import DEFAULT_PAGE_SIZE, EventHandler, Informer, list_pages
from .objects import (
    bind_pod,
    create_object,
    delete_object,
    get_object,
    list_objects,
    list_raw,
    merge_patch,
    node_metadata_patch,
    patch_model_annotations,
    patch_model_status,
    patch_node_metadata,
    replace_object,
    scale_deployment,
)
from .resources import RESOURCES, Resource, identify, resource_for, resource_path
from .retry import DEFAULT_RETRY, NO_RETRY, RetryPolicy, with_retry

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_RETRY",
    "DEFAULT_TIMEOUT_S",
    "JSON",
    "MERGE_PATCH",
    "NO_RETRY",
    "RESOURCES",
    "EventHandler",
    "Informer",
    "KubeError",
    "Resource",
    "RetryPolicy",
    "api_client",
    "apply_object",
    "bind_pod",
    "create_object",
    "delete_object",
    "get_object",
    "identify",
    "is_retryable",
    "list_objects",
    "list_pages",
    "list_raw",
    "merge_patch",
    "needs_update",
    "node_metadata_patch",
    "open_response",
    "owner_reference",
    "patch_model_annotations",
    "patch_model_status",
    "patch_node_metadata",
    "prepare_replace",
    "replace_object",
    "request",
    "resource_for",
    "resource_path",
    "scale_deployment",
    "with_retry",
]
