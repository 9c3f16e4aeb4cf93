"""What the extender needs from a v1.Pod: the pod contract annotations and the GPU requests.

A pod is *managed* when it carries at least one of `flexinfer.ai/gpu.vram-estimate-mb`,
`flexinfer.ai/backend` or `flexinfer.ai/gpu.vendor`. Other pods pass through (every node passes,
neutral score). A managed pod with a junk annotation value does not raise: `PodRequirements.error`
names the annotation, and the policy rejects every node as FailedAndUnresolvable with that text,
so the user sees it in the pod's FailedScheduling event (an `Error` in the response would only
show up as a generic SchedulerError and be retried forever).

GPU count: for each extended resource in `flexinfer.keys.GPU_RESOURCES`, the effective pod
request as kube-scheduler computes it: max(sum over containers, max over init containers), where a
container's value is its limit if set, else its request (extended resources require them equal).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from flexinfer import keys
from flexinfer.compat import canonical_backend
from flexinfer.errors import ParseError
from flexinfer.units import parse_mib

VENDOR_CPU = "cpu"
VENDOR_AUTO = "auto"
_POD_VENDORS = {"nvidia": "nvidia", "amd": "amd", "rocm": "amd", "intel": "intel", "cpu": VENDOR_CPU,
                "none": VENDOR_CPU, "auto": VENDOR_AUTO, "": VENDOR_AUTO}
MANAGED_KEYS = (keys.POD_VRAM_ESTIMATE_MB, keys.POD_BACKEND, keys.POD_VENDOR)


# --- wire structs (decode only what we read; msgspec skips the rest of the Pod quickly) ----------

class _Resources(msgspec.Struct):
    requests: dict[str, str | int | float] | None = None
    limits: dict[str, str | int | float] | None = None


class _Container(msgspec.Struct):
    name: str = ""
    resources: _Resources | None = None


class _PodSpec(msgspec.Struct, rename="camel"):
    containers: list[_Container] | None = None
    init_containers: list[_Container] | None = None
    node_name: str | None = None


class _Meta(msgspec.Struct, rename="camel"):
    name: str = ""
    namespace: str = ""
    uid: str = ""
    annotations: dict[str, str] | None = None
    labels: dict[str, str] | None = None


class PodWire(msgspec.Struct):
    metadata: _Meta | None = None
    spec: _PodSpec | None = None


_pod_decoder = msgspec.json.Decoder(PodWire)


@dataclass(frozen=True, slots=True)
class PodRequirements:
    namespace: str = ""
    name: str = ""
    uid: str = ""
    managed: bool = False  # carries our annotations; False = passthrough
    model: str = ""
    backend: str = ""  # canonical backend, "" = not given (no compatibility check)
    vendor: str = VENDOR_AUTO  # nvidia | amd | intel | cpu | auto
    vram_estimate_mib: int = 0  # needed on EACH GPU
    gpu_count: int = 0
    jit_policy: str = ""
    preferred_archs: tuple[str, ...] = ()
    error: str = ""  # non-empty: a pod annotation/request could not be parsed (names it)
    error_key: str = ""  # the annotation or resource that was junk

    @property
    def key(self) -> str:
        """Identity for reservations: the UID, else namespace/name."""
        return self.uid or f"{self.namespace}/{self.name}"

    @property
    def needs_gpu(self) -> bool:
        return self.managed and not self.error and self.vendor != VENDOR_CPU and self.gpu_count > 0


def _quantity_int(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise ParseError(what, value, "a whole number of devices")
    if isinstance(value, int):
        n = value
    elif isinstance(value, float) and value.is_integer():
        n = int(value)
    else:
        s = str(value).strip()
        if not (s.isascii() and s.isdigit()):
            raise ParseError(what, value, "a whole number of devices, e.g. \"1\"")
        n = int(s)
    if n < 0 or n > 1024:
        raise ParseError(what, value, "a whole number of devices between 0 and 1024")
    return n


def _container_gpus(c: _Container, resource: str) -> int:
    r = c.resources
    if r is None:
        return 0
    what = f"container {c.name!r} resource {resource}"
    if r.limits and resource in r.limits:
        return _quantity_int(r.limits[resource], what)
    if r.requests and resource in r.requests:
        return _quantity_int(r.requests[resource], what)
    return 0


def resource_requests(spec: _PodSpec | None) -> dict[str, int]:
    """Effective requests per GPU resource ({"nvidia.com/gpu": 2}): a container's limit, else its request, summed
    over the containers, at least the largest init container's. Raises ParseError naming the resource."""
    out: dict[str, int] = {}
    if spec is None:
        return out
    for resource in keys.GPU_RESOURCES:
        regular = sum(_container_gpus(c, resource) for c in spec.containers or ())
        init = max((_container_gpus(c, resource) for c in spec.init_containers or ()), default=0)
        n = max(regular, init)
        if n:
            out[resource] = n
    return out


def gpu_requests(spec: _PodSpec | None) -> dict[str, int]:
    """Effective GPU requests per vendor ({"nvidia": 2}; Intel's two resources, i915 and xe, are one vendor);
    raises ParseError naming the resource."""
    out: dict[str, int] = {}
    for resource, n in resource_requests(spec).items():
        vendor = keys.GPU_RESOURCES[resource]
        out[vendor] = out.get(vendor, 0) + n
    return out


@dataclass(frozen=True, slots=True)
class PodFields:
    """What a pod says about itself, extracted but not yet validated: the pod contract's values as written
    (annotation text, or typed values from the gRPC `PodRequirements` message) and its GPU requests.
    `validate` turns it into PodRequirements. `gpu_requests`: per vendor from the containers' resources
    (the ParseError of a junk quantity, raised in its turn by `validate`); `gpu_count`: a count given as a
    typed field instead (gRPC), None for pods."""

    namespace: str = ""
    name: str = ""
    uid: str = ""
    managed: bool = False
    model: str = ""
    vram_estimate: str | int = "0"
    backend: str = ""
    vendor: str = ""
    jit_policy: str = ""
    preferred_archs: tuple[str, ...] = ()
    gpu_requests: dict[str, int] | ParseError = field(default_factory=dict)
    gpu_count: int | None = None


def extract(pod: PodWire) -> PodFields:
    """The pod contract's fields from a decoded pod (no validation)."""
    meta = pod.metadata or _Meta()
    ann = meta.annotations or {}
    managed = any(k in ann for k in MANAGED_KEYS)
    if not managed:
        return PodFields(meta.namespace, meta.name, meta.uid)
    try:
        requests: dict[str, int] | ParseError = gpu_requests(pod.spec)
    except ParseError as e:
        requests = e
    return PodFields(
        meta.namespace, meta.name, meta.uid, True, model=ann.get(keys.POD_MODEL, ""),
        vram_estimate=ann.get(keys.POD_VRAM_ESTIMATE_MB, "0"), backend=ann.get(keys.POD_BACKEND, ""),
        vendor=ann.get(keys.POD_VENDOR, ""), jit_policy=ann.get(keys.POD_JIT_POLICY, ""),
        preferred_archs=tuple(ann.get(keys.POD_PREFERRED_ARCHS, "").split(",")), gpu_requests=requests)


def validate(f: PodFields) -> PodRequirements:
    """PodRequirements from extracted fields. Never raises: junk goes to `.error`, naming the annotation
    (the pod contract's key, also for typed gRPC fields) or `resources`."""
    base = dict(namespace=f.namespace, name=f.name, uid=f.uid)
    if not f.managed:
        return PodRequirements(**base)
    key = ""
    try:
        key = keys.POD_VRAM_ESTIMATE_MB
        est = parse_mib(f.vram_estimate, f"pod annotation {key}")
        key = keys.POD_BACKEND
        backend = canonical_backend(f.backend) if f.backend.strip() else ""
        key = keys.POD_VENDOR
        vendor = _POD_VENDORS.get(f.vendor.strip().lower())
        if vendor is None:
            raise ParseError(f"pod annotation {key}", f.vendor, "one of nvidia, amd, intel, cpu, auto")
        key = "resources"
        if f.gpu_count is not None:  # a typed count (gRPC): for the pod's vendor, whichever it is
            count = _quantity_int(f.gpu_count, "GPU count")
            req_vendor = ""
        else:
            if isinstance(f.gpu_requests, ParseError):
                raise f.gpu_requests
            requests = f.gpu_requests
            if len(requests) > 1:
                raise ParseError("GPU requests", requests,
                                 "GPUs of one vendor only (nvidia.com/gpu, amd.com/gpu or gpu.intel.com/*)")
            req_vendor, count = next(iter(requests.items())) if requests else ("", 0)
        if req_vendor and vendor not in (VENDOR_AUTO, req_vendor):
            key = keys.POD_VENDOR
            raise ParseError(f"pod annotation {key}", f.vendor,
                             f"a vendor matching the pod's GPU request ({req_vendor})")
        if vendor == VENDOR_AUTO and req_vendor:
            vendor = req_vendor
        if vendor == VENDOR_CPU:
            count = 0
        elif count == 0:
            # Hand-annotated pod without a GPU request (e.g. the extender is not restricted by
            # managedResources): it still needs one GPU to hold the model.
            count = 1
        key = keys.POD_PREFERRED_ARCHS
        archs = tuple(a.strip().lower() for a in f.preferred_archs if a.strip())
        jit = f.jit_policy.strip()
    except ParseError as e:
        msg = str(e)
        if key != "resources" and key not in msg:
            msg = f"pod annotation {key}: {msg}"
        return PodRequirements(**base, managed=True, error=msg, error_key=key)
    return PodRequirements(
        **base, managed=True, model=f.model, backend=backend, vendor=vendor,
        vram_estimate_mib=est, gpu_count=count, jit_policy=jit, preferred_archs=archs,
    )


def requirements_from_wire(pod: PodWire) -> PodRequirements:
    """PodRequirements from a decoded pod. Never raises: junk goes to `.error`."""
    return validate(extract(pod))


def requirements_from_dict(pod: object) -> PodRequirements:
    """PodRequirements from a v1.Pod as a JSON dict. Raises ParseError when it is not a Pod shape."""
    try:
        wire = msgspec.convert(pod, PodWire)
    except msgspec.ValidationError as e:
        raise ParseError("pod", str(e), "a v1.Pod object") from None
    return requirements_from_wire(wire)


def requirements_from_json(raw: bytes | str) -> PodRequirements:
    """PodRequirements from v1.Pod JSON bytes. Raises ParseError on malformed JSON or shape."""
    try:
        wire = _pod_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise ParseError("pod", str(e), "a v1.Pod object as JSON") from None
    return requirements_from_wire(wire)
