"""Object verbs: get, list, create, replace, delete, merge patches, scale and bind, each under a retry policy."""

from __future__ import annotations

from collections.abc import Mapping

import kubernetes.client

from flexinfer import keys

from .client import JSON, MERGE_PATCH, request
from .errors import KubeError
from .resources import RESOURCES, identify, resource_for, resource_path
from .retry import DEFAULT_RETRY, RetryPolicy, with_retry


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
        return with_retry(f"get {path}", retry, lambda: request(api, "GET", path))
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
    return with_retry(f"list {path}", retry, lambda: request(api, "GET", path, query=query))


def create_object(api: kubernetes.client.ApiClient, obj: JSON, *, retry: RetryPolicy = DEFAULT_RETRY) -> JSON:
    res, ns, _ = identify(obj)
    path = resource_path(res, ns)
    # 409 on create means "already exists": never retried here.
    return with_retry(f"create {path}", retry, lambda: request(api, "POST", path, body=obj), retry_conflict=False)


def replace_object(api: kubernetes.client.ApiClient, obj: JSON, *, retry: RetryPolicy = DEFAULT_RETRY) -> JSON:
    res, ns, name = identify(obj)
    path = resource_path(res, ns, name)
    return with_retry(f"replace {path}", retry, lambda: request(api, "PUT", path, body=obj))


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
        with_retry(f"delete {path}", retry, lambda: request(api, "DELETE", path, body=body), retry_conflict=False)
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
    return with_retry(
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
    with_retry(f"bind {namespace}/{name} to {node}", retry, lambda: request(api, "POST", path, body=body),
               retry_conflict=False)
