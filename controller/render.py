"""Model -> Deployment, Service and cache PVC (pure: plain JSON dicts, no I/O).

GPU vendor ``auto``: Kubernetes cannot request "one GPU of either vendor", and requesting no GPU
resource at all would run the pod without device isolation. So ``auto`` resolves to one vendor:
``spec.nodeSelector[flexinfer.ai/gpu.vendor]`` if set, else ``auto_vendor``, which the controller
chooses per Model by where it fits now (``controller.placement.choose_vendor``). The extended resource
then restricts the pod to that vendor's nodes, and the extender chooses among them. No
``flexinfer.ai/gpu.vendor`` pod annotation is written for ``auto`` (the resource decides).

Deployments of GPU models use strategy Recreate (the old pod must free the GPU before the new one
starts) and at most one replica (a model is served by one pod; shared groups time-share a GPU).

Model pods run as operators run them (:class:`RenderOptions` carries the operator's settings): no
service-account token (a model server never talks to the API server), ``/dev/shm`` as a memory-backed
emptyDir sized by the backend registry (PyTorch/NCCL workers share tensors through it; the container
runtime's default is 64 MiB), the vendor's RuntimeClass when one is configured (``nvidia`` where the
NVIDIA container runtime is not the node's default, as on the RTX PRO 4000 node), and the second
scheduler's name when the operator runs one (``--scheduler-name``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flexinfer import backends, keys
from flexinfer.kube import owner_reference
from flexinfer.model import Model
from flexinfer.vram_need import vram_need

from . import cache
from .backends import MODELS_DIR, ImageOverrides, container_for, pvc_of_source

JSON = dict[str, Any]
# Intel: the device plugin advertises gpu.intel.com/i915 for GPUs on the i915 driver (the default for Arc
# A-series) and gpu.intel.com/xe for those on xe; pods request i915 (docs/intel-gpus.md).
VENDOR_RESOURCE = {"nvidia": keys.RESOURCE_NVIDIA, "amd": keys.RESOURCE_AMD, "intel": keys.RESOURCE_INTEL_I915}
DEFAULT_CACHE_SIZE = "50Gi"
PROBE_PERIOD_S = 10
SHM_MOUNT = "/dev/shm"


@dataclass(frozen=True, slots=True)
class RenderOptions:
    """Operator settings applied to every model pod (controller flags)."""

    runtime_class: Mapping[str, str] = field(default_factory=dict)  # vendor -> RuntimeClass name
    image_overrides: ImageOverrides = field(default_factory=dict)  # (backend, vendor|"*") -> image
    scheduler_name: str = ""  # "" = the default scheduler


DEFAULT_OPTIONS = RenderOptions()


def owner_refs(model: Model) -> list[JSON]:
    """The children's ownerReferences: the Model, as controller (deleting it cascades)."""
    return [owner_reference({"apiVersion": keys.MODEL_API_VERSION, "kind": keys.MODEL_KIND,
                             "metadata": {"name": model.name, "uid": model.uid}})]


def pinned_vendor(model: Model) -> tuple[str, str] | None:
    """(vendor, what pins it) when the Model fixes its vendor (spec.gpu.vendor, else a vendor nodeSelector);
    None for ``auto`` without one."""
    v = model.vendor
    if v in backends.IMAGE_VENDORS:
        return v, f"spec.gpu.vendor is {v}"
    sel = str(model.spec.node_selector.get(keys.LABEL_VENDOR, "")).lower()
    if sel in VENDOR_RESOURCE:
        return sel, f"spec.nodeSelector pins {keys.LABEL_VENDOR}={sel}"
    return None


def effective_vendor(model: Model, auto_vendor: str = "nvidia") -> str:
    """nvidia | amd | intel | cpu: the vendor whose GPU resource the pod requests."""
    pinned = pinned_vendor(model)
    if pinned:
        return pinned[0]
    return auto_vendor if auto_vendor in VENDOR_RESOURCE else "nvidia"


def service_label_labels(model: Model) -> dict[str, str]:
    return {keys.SERVICE_LABEL_PREFIX + lab: "true" for lab in model.spec.service_labels}


def common_labels(model: Model) -> dict[str, str]:
    return {keys.LABEL_MODEL: model.name, keys.LABEL_MANAGED_BY: keys.MANAGED_BY, **service_label_labels(model)}


cache_pvc_name = cache.cache_pvc  # the PVC mounted at /models, or None for emptyDir/Memory


def render_pvc(model: Model, access_mode: str = "ReadWriteOnce") -> JSON | None:
    """The auto-created cache PVC (SharedPVC without pvcName), else None. `access_mode`: what its storage
    class can give (controller.cache.access_mode)."""
    c = model.spec.cache
    if pvc_of_source(model.spec.source) or c.strategy != "SharedPVC" or c.pvc_name:
        return None
    size = c.size or DEFAULT_CACHE_SIZE
    spec: JSON = {"accessModes": [access_mode], "resources": {"requests": {"storage": size}}}
    if c.storage_class:
        spec["storageClassName"] = c.storage_class
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": f"{model.name}-cache", "namespace": model.namespace,
                         "labels": {keys.LABEL_MODEL: model.name, keys.LABEL_MANAGED_BY: keys.MANAGED_BY},
                         "ownerReferences": owner_refs(model)},
            "spec": spec}


def _volume(model: Model) -> JSON:
    pvc = cache_pvc_name(model)
    if pvc:
        return {"name": "models", "persistentVolumeClaim": {"claimName": pvc}}
    if model.spec.cache.strategy == "Memory":
        ed: JSON = {"medium": "Memory"}
        if model.spec.cache.size:
            ed["sizeLimit"] = model.spec.cache.size
        return {"name": "models", "emptyDir": ed}
    return {"name": "models", "emptyDir": {}}


def pod_annotations(model: Model, vendor: str) -> dict[str, str]:
    ann = {keys.POD_MODEL: model.name, keys.POD_BACKEND: model.backend}
    if model.needs_gpu:
        need = vram_need(model)
        if need.per_gpu_mib:
            ann[keys.POD_VRAM_ESTIMATE_MB] = str(need.per_gpu_mib)
        if model.vendor in VENDOR_RESOURCE:
            ann[keys.POD_VENDOR] = model.vendor
        if model.group:
            ann[keys.POD_GROUP] = model.group
    else:  # said outright: a pod with a backend annotation and no GPU request would otherwise count as 1 GPU
        ann[keys.POD_VENDOR] = "cpu"
    if model.jit_policy:
        ann[keys.POD_JIT_POLICY] = model.jit_policy
    archs = preferred_archs(model)
    if archs:
        ann[keys.POD_PREFERRED_ARCHS] = ",".join(archs)
    return ann


def preferred_archs(model: Model) -> list[str]:
    """Architectures with a compiled cache (spec.config.compiledArchs: list or comma string), plus a
    gfx/sm target pinned by nodeSelector: the extender gives those nodes a bonus (compile caches are
    architecture-specific, so a model compiled for gfx1100 recompiles for minutes on gfx906)."""
    raw = model.spec.config.get("compiledArchs") if model.spec.config else None
    items = raw.split(",") if isinstance(raw, str) else raw if isinstance(raw, list) else []
    archs = [str(a).strip().lower() for a in items if str(a).strip()]
    pinned = model.spec.node_selector.get(keys.LABEL_ARCH)
    if pinned and pinned.lower() not in archs:
        archs.append(pinned.lower())
    return archs


def _resources(model: Model, vendor: str) -> JSON:
    res = {k: dict(v) for k, v in (model.spec.resources or {}).items() if isinstance(v, dict)}
    if model.needs_gpu and vendor in VENDOR_RESOURCE:
        n = str(model.gpu_count)
        res.setdefault("limits", {})[VENDOR_RESOURCE[vendor]] = n
        res.setdefault("requests", {})[VENDOR_RESOURCE[vendor]] = n
    return res


def gpu_tolerations(model: Model) -> list[JSON]:
    tol = [dict(t) for t in model.spec.tolerations]
    if model.needs_gpu:
        for r in (keys.RESOURCE_NVIDIA, keys.RESOURCE_AMD, keys.RESOURCE_INTEL_I915):
            t = {"key": r, "operator": "Exists", "effect": "NoSchedule"}
            if t not in tol:
                tol.append(t)
    return tol


def mib_quantity(mib: int) -> str:
    """A MiB count as the API server writes the quantity back ("2Gi", "1536Mi"), so comparing the stored
    object with the rendered one does not see a difference that is only notation."""
    return f"{mib // 1024}Gi" if mib % 1024 == 0 else f"{mib}Mi"


def startup_failure_threshold(cold_start_timeout_s: float, period_s: int = PROBE_PERIOD_S) -> int:
    """failureThreshold so that failureThreshold * period >= the cold start timeout."""
    return max(1, math.ceil(cold_start_timeout_s / period_s))


def render_deployment(model: Model, replicas: int, auto_vendor: str = "nvidia",
                      options: RenderOptions = DEFAULT_OPTIONS) -> JSON:
    """The Deployment. When the controller prefetches the model into the cache PVC (controller.cache), the
    server reads the prefetched directory instead of downloading."""
    vendor = effective_vendor(model, auto_vendor)
    plan = cache.plan(model)
    local = plan.local if plan is not None and plan.prefetch == "hf" else None
    c = container_for(model, vendor, options.image_overrides, local)
    http = {"httpGet": {"path": c.health_path, "port": "http"}, "periodSeconds": PROBE_PERIOD_S}
    probe = {"exec": {"command": c.ready_command}, "periodSeconds": PROBE_PERIOD_S} if c.ready_command else http
    mounts = [{"name": "models", "mountPath": MODELS_DIR}]
    volumes = [_volume(model)]
    if c.shm_mib:
        mounts.append({"name": "dshm", "mountPath": SHM_MOUNT})
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": mib_quantity(c.shm_mib)}})
    container: JSON = {
        "name": "server",
        "image": c.image,
        "ports": [{"name": "http", "containerPort": c.port, "protocol": "TCP"}],
        "env": [{"name": k, "value": v} for k, v in sorted(c.env.items())],
        "volumeMounts": mounts,
        "startupProbe": {**probe, "timeoutSeconds": 5,
                         "failureThreshold": startup_failure_threshold(model.cold_start_timeout_seconds)},
        "readinessProbe": {**probe, "timeoutSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {**http, "timeoutSeconds": 5, "failureThreshold": 6},
    }
    if c.command:
        container["command"] = c.command
    if c.args:
        container["args"] = c.args
    res = _resources(model, vendor)
    if res:
        container["resources"] = res
    pod_spec: JSON = {"containers": [container], "volumes": volumes,
                      "automountServiceAccountToken": False, "enableServiceLinks": False}
    runtime_class = options.runtime_class.get(vendor) if model.needs_gpu else None
    if runtime_class:
        pod_spec["runtimeClassName"] = runtime_class
    if options.scheduler_name:
        pod_spec["schedulerName"] = options.scheduler_name
    if model.spec.node_selector:
        pod_spec["nodeSelector"] = dict(model.spec.node_selector)
    tol = gpu_tolerations(model)
    if tol:
        pod_spec["tolerations"] = tol
    labels = common_labels(model)
    spec: JSON = {
        "replicas": max(0, min(1, int(replicas))),
        "selector": {"matchLabels": {keys.LABEL_MODEL: model.name}},
        "template": {"metadata": {"labels": labels, "annotations": pod_annotations(model, vendor)},
                     "spec": pod_spec},
    }
    if model.needs_gpu:
        spec["strategy"] = {"type": "Recreate"}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": model.name, "namespace": model.namespace, "labels": labels,
                         "ownerReferences": owner_refs(model)},
            "spec": spec}


def service_port(model: Model) -> int:
    return backends.REGISTRY[model.backend].port


def endpoint(model: Model) -> str:
    return f"http://{model.name}.{model.namespace}.svc:{service_port(model)}"


def service_annotations(model: Model) -> dict[str, str]:
    ann: dict[str, str] = {}
    ll = model.spec.litellm
    if ll is not None and ll.enabled:
        p = keys.LITELLM_PREFIX
        ann[p + "enabled"] = "true"
        ann[p + "model-name"] = ll.model_name or model.name
        if ll.aliases:
            ann[p + "aliases"] = ",".join(ll.aliases)
        ann[p + "api-base"] = endpoint(model) + "/v1"
    return ann


def render_service(model: Model) -> JSON:
    port = service_port(model)
    meta: JSON = {"name": model.name, "namespace": model.namespace, "labels": common_labels(model),
                  "ownerReferences": owner_refs(model)}
    ann = service_annotations(model)
    if ann:
        meta["annotations"] = ann
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta,
            "spec": {"selector": {keys.LABEL_MODEL: model.name},
                     "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}]}}


def render_all(model: Model, replicas: int, auto_vendor: str = "nvidia",
               options: RenderOptions = DEFAULT_OPTIONS) -> list[JSON]:
    """Everything the controller owns for `model`: [PVC?], Deployment, Service."""
    out = [o for o in (render_pvc(model),) if o is not None]
    return [*out, render_deployment(model, replicas, auto_vendor, options), render_service(model)]
