"""Declarative writes: ``apply_object`` (create, or replace only when a field we set differs), the pure
``prepare_replace`` that decides what a replace keeps from the stored object, and ``owner_reference``,
the one builder of ``metadata.ownerReferences`` entries (the controller renders its children with it)."""

from __future__ import annotations

from typing import Any

import kubernetes.client

from flexinfer import keys

from .client import JSON, request
from .errors import KubeError
from .resources import Resource, identify, resource_path
from .retry import DEFAULT_RETRY, RetryPolicy, with_retry


def owner_reference(owner: JSON, controller: bool = True) -> JSON:
    """An ownerReferences entry pointing at ``owner`` (needs apiVersion, kind, metadata.name/uid; apiVersion
    and kind default to the Model's). Pure."""
    meta = owner.get("metadata") or {}
    return {
        "apiVersion": owner.get("apiVersion", keys.MODEL_API_VERSION),
        "kind": owner.get("kind", keys.MODEL_KIND),
        "name": meta.get("name", ""),
        "uid": meta.get("uid", ""),
        "controller": controller,
        "blockOwnerDeletion": True,
    }


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


def needs_update(desired: JSON, current: JSON) -> bool:
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
    res, ns, name = identify(obj)
    body = {k: v for k, v in obj.items() if k != "status"}

    def attempt() -> JSON:
        try:
            return request(api, "POST", resource_path(res, ns), body=body)
        except KubeError as e:
            if not e.conflict:
                raise
        current = request(api, "GET", resource_path(res, ns, name))
        if not needs_update(_comparable(body, res), current):
            return current
        # A 409 here (someone wrote in between) is retried by the policy: fetch again, replace again.
        return request(api, "PUT", resource_path(res, ns, name), body=prepare_replace(body, current))

    return with_retry(f"apply {res.plural} {ns}/{name}", retry, attempt)


def _comparable(body: JSON, res: Resource) -> JSON:
    out = dict(body)
    if res.plural == "persistentvolumeclaims":
        # The spec is immutable after creation except the storage request.
        requests = ((out.get("spec") or {}).get("resources") or {}).get("requests")
        out["spec"] = {"resources": {"requests": requests}} if requests else {}
    return out
