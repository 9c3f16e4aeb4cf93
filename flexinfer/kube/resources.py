"""The resources FlexInfer touches (group, version, plural, scope, Kind; also what the real-control-plane harness
applies from daemonset/) and their URL paths. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from flexinfer import keys

from .errors import KubeError

JSON = dict[str, Any]


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
        Resource("batch", "v1", "jobs", True, "Job"),
        Resource("storage.k8s.io", "v1", "storageclasses", False, "StorageClass"),
        Resource("discovery.k8s.io", "v1", "endpointslices", True, "EndpointSlice"),
        Resource("", "v1", "serviceaccounts", True, "ServiceAccount"),
        Resource("apps", "v1", "daemonsets", True, "DaemonSet"),
        Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", False, "CustomResourceDefinition"),
        Resource("rbac.authorization.k8s.io", "v1", "clusterroles", False, "ClusterRole"),
        Resource("rbac.authorization.k8s.io", "v1", "clusterrolebindings", False, "ClusterRoleBinding"),
        Resource("rbac.authorization.k8s.io", "v1", "roles", True, "Role"),
        Resource("rbac.authorization.k8s.io", "v1", "rolebindings", True, "RoleBinding"),
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


def identify(obj: JSON) -> tuple[Resource, str | None, str]:
    """(resource, namespace or None, name) of a whole object; KubeError if kind, name, apiVersion or
    (for namespaced kinds) namespace are missing or wrong. Pure."""
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
