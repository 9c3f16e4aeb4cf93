"""The `ai.flexinfer/v1alpha2` Model resource: typed spec, parsing, defaults, validation.

Errors name the field (`spec.gpu.count: must be omitted when vendor is cpu`). The CRD schema in
daemonset/ enforces the same rules in the API server (CEL); tests check that both agree.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

import msgspec

from flexinfer import keys
from flexinfer.arch import arch_info, nvidia_family
from flexinfer.compat import Verdict, canonical_backend, check
from flexinfer.errors import NeverRuns, ParseError, ValidationError, shown, text_of

SOURCE_SCHEMES = ("HF://", "ollama://", "file:///", "pvc://")
MAX_SERVICE_LABELS = 10
_DURATION_RE = re.compile(r"^(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?\Z", re.ASCII)
_SERVICE_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?\Z")
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")


def parse_duration_seconds(value: str | int | float, what: str) -> float:
    """'10m', '1h30m', '300s' or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValidationError(what, f"invalid duration {shown(value)}; use e.g. 300s, 10m, 1h")
    if isinstance(value, int | float):
        if isinstance(value, int) and abs(value) > 10**15:
            raise ValidationError(what, f"invalid duration {shown(value)}; too large")
        if not math.isfinite(value):
            raise ValidationError(what, f"invalid duration {shown(value)}; use e.g. 300s, 10m, 1h")
        if value < 0:
            raise ValidationError(what, "must not be negative")
        return float(value)
    m = _DURATION_RE.match(text_of(value).strip())
    if not m or not any(m.groups()):
        raise ValidationError(what, f"invalid duration {shown(value)}; use e.g. 300s, 10m, 1h")
    try:
        if any(x and len(x) > 15 for x in m.groups()):
            raise ValueError("too many digits")
        h, mi, s = (int(x) if x else 0 for x in m.groups())
    except ValueError:  # more digits than a duration can sensibly have
        raise ValidationError(what, f"invalid duration {shown(value)}; use e.g. 300s, 10m, 1h") from None
    return float(h * 3600 + mi * 60 + s)


class GpuSpec(msgspec.Struct, rename="camel", forbid_unknown_fields=True, omit_defaults=True):
    vendor: Literal["auto", "nvidia", "amd", "intel", "cpu", "AUTO", "NVIDIA", "AMD", "INTEL", "CPU"] = "auto"
    shared: str | None = None
    priority: int = 0
    count: int | None = None
    vram_estimate_mb: int | None = msgspec.field(default=None, name="vramEstimateMB")


class ServerlessSpec(msgspec.Struct, rename="camel", forbid_unknown_fields=True, omit_defaults=True):
    enabled: bool = True
    min_replicas: int = 0
    idle_timeout: str | int = "10m"
    cold_start_timeout: str | int = "5m"


class CacheSpec(msgspec.Struct, rename="camel", forbid_unknown_fields=True, omit_defaults=True):
    strategy: Literal["Memory", "SharedPVC", "None"] = "None"
    pvc_name: str | None = None
    storage_class: str | None = None
    size: str | None = None


class LiteLLMSpec(msgspec.Struct, rename="camel", omit_defaults=True):
    enabled: bool = True
    aliases: list[str] = []
    model_name: str | None = None


class ModelSpec(msgspec.Struct, rename="camel", forbid_unknown_fields=True, omit_defaults=True):
    backend: str
    source: str
    image: str | None = None
    gpu: GpuSpec | None = None
    serverless: ServerlessSpec = msgspec.field(default_factory=ServerlessSpec)
    cache: CacheSpec = msgspec.field(default_factory=CacheSpec)
    config: dict[str, Any] = {}
    resources: dict[str, Any] = {}
    node_selector: dict[str, str] = {}
    tolerations: list[dict[str, Any]] = []
    litellm: LiteLLMSpec | None = None
    service_labels: list[str] = []


class Model(msgspec.Struct, omit_defaults=True):
    """A parsed Model: identity plus validated spec and derived values."""

    name: str
    namespace: str
    spec: ModelSpec
    uid: str = ""
    generation: int = 0
    annotations: dict[str, str] = {}
    status: dict[str, Any] = {}

    # -- derived values used by the controller, extender pods and preflight --
    @property
    def backend(self) -> str:
        return canonical_backend(self.spec.backend)

    @property
    def vendor(self) -> str:
        """nvidia | amd | cpu | auto."""
        if self.spec.gpu is None:
            return "cpu"
        return self.spec.gpu.vendor.lower()

    @property
    def needs_gpu(self) -> bool:
        return self.vendor != "cpu"

    @property
    def gpu_count(self) -> int:
        if not self.needs_gpu or self.spec.gpu is None:
            return 0
        return self.spec.gpu.count or 1

    @property
    def group(self) -> str | None:
        return self.spec.gpu.shared if self.spec.gpu else None

    @property
    def priority(self) -> int:
        return self.spec.gpu.priority if self.spec.gpu else 0

    @property
    def jit_policy(self) -> str:
        return text_of(self.spec.config.get("jitPolicy", "")).upper()

    @property
    def idle_timeout_seconds(self) -> float:
        return parse_duration_seconds(self.spec.serverless.idle_timeout, "spec.serverless.idleTimeout")

    @property
    def cold_start_timeout_seconds(self) -> float:
        return parse_duration_seconds(self.spec.serverless.cold_start_timeout, "spec.serverless.coldStartTimeout")

    @property
    def min_replicas(self) -> int:
        return self.spec.serverless.min_replicas if self.spec.serverless.enabled else 1


def _msgspec_error(e: msgspec.ValidationError) -> ValidationError:
    text = str(e)
    path = "spec"
    m = re.search(r" - at `(key` in `)?\$(.*)`$", text)
    if m:
        # `$.gpu.count`, `$.serviceLabels[0]`, `$.nodeSelector[...]` (a map value), `key` in `$.config`
        path = "spec" + m.group(2).replace("[...]", "").replace("[", ".").replace("]", "")
        text = text[: m.start()] + (" (in an object key)" if m.group(1) else "")
    if text.startswith("Object contains unknown field"):
        field = text.split("`")[1]
        return ValidationError(f"{path}.{field}", "unknown field")
    if text.startswith("Object missing required field"):
        field = text.split("`")[1]
        return ValidationError(f"{path}.{field}", "required")
    return ValidationError(path, text[0].lower() + text[1:] if text else "invalid")


def parse_spec(spec: object) -> ModelSpec:
    if not isinstance(spec, dict):
        raise ValidationError("spec", "must be an object")
    try:
        return msgspec.convert(spec, ModelSpec, str_keys=True)
    except msgspec.ValidationError as e:
        raise _msgspec_error(e) from None


def parse_model(obj: object, *, allow_never_runs: bool = False) -> Model:
    """Parse and validate a Model object (dict from YAML/JSON/API). Raises ValidationError.

    A Model that is well-formed but can never run raises NeverRuns (a ValidationError) unless
    `allow_never_runs`: preflight parses with it and reports `never_runs_reason` as a BLOCK instead."""
    if not isinstance(obj, dict):
        raise ValidationError("(root)", "a Model must be a mapping")
    api = obj.get("apiVersion")
    if api is not None and api != keys.MODEL_API_VERSION:
        raise ValidationError("apiVersion", f"must be {keys.MODEL_API_VERSION}, got {shown(api)}")
    kind = obj.get("kind")
    if kind is not None and kind != keys.MODEL_KIND:
        raise ValidationError("kind", f"must be {keys.MODEL_KIND}, got {shown(kind)}")
    meta = obj.get("metadata") or {}
    if not isinstance(meta, dict):
        raise ValidationError("metadata", "must be an object")
    name = meta.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValidationError("metadata.name", "must be a DNS-1123 label (lowercase, digits, '-', <= 63)")
    spec = parse_spec(obj.get("spec"))
    generation = meta.get("generation") or 0
    if isinstance(generation, str) and generation.isascii() and generation.isdigit() and len(generation) < 19:
        generation = int(generation)
    if isinstance(generation, bool) or not isinstance(generation, int):
        raise ValidationError("metadata.generation", f"must be an integer, got {shown(generation)}")
    ann = meta.get("annotations") or {}
    status = obj.get("status") or {}
    model = Model(
        name=name,
        namespace=text_of(meta.get("namespace") or "default"),
        spec=spec,
        uid=text_of(meta.get("uid") or ""),
        generation=generation,
        annotations={text_of(k): text_of(v) for k, v in ann.items()} if isinstance(ann, dict) else {},
        status=status if isinstance(status, dict) else {},
    )
    validate(model, allow_never_runs=allow_never_runs)
    return model


def validate(model: Model, *, allow_never_runs: bool = False) -> None:
    """Semantic rules beyond types. Raises the first ValidationError found (NeverRuns for a well-formed Model
    that can never run, unless `allow_never_runs`)."""
    spec = model.spec
    try:
        canonical_backend(spec.backend)
    except ParseError as e:
        raise ValidationError("spec.backend", f"unknown backend {shown(spec.backend)}; {e.expected}") from None
    scheme = next((s for s in SOURCE_SCHEMES if spec.source.startswith(s)), None)
    if scheme is None or not spec.source[len(scheme):].strip("/"):
        raise ValidationError("spec.source", "must start with HF://, ollama://, file:/// or pvc:// and name a model")
    gpu = spec.gpu
    if gpu is not None:
        vendor = gpu.vendor.lower()
        if vendor == "cpu":
            if gpu.count is not None:
                raise ValidationError("spec.gpu.count", "must be omitted when vendor is cpu")
            if gpu.vram_estimate_mb is not None:
                raise ValidationError("spec.gpu.vramEstimateMB", "must be omitted when vendor is cpu")
            if gpu.shared is not None:
                raise ValidationError("spec.gpu.shared", "must be omitted when vendor is cpu")
        if gpu.count is not None and not 1 <= gpu.count <= 16:
            raise ValidationError("spec.gpu.count", "must be between 1 and 16")
        if gpu.vram_estimate_mb is not None and not 1 <= gpu.vram_estimate_mb <= 4 * 1024 * 1024:
            raise ValidationError("spec.gpu.vramEstimateMB", "must be a positive number of MiB")
        if gpu.shared is not None and not _NAME_RE.match(gpu.shared):
            raise ValidationError("spec.gpu.shared", "must be a DNS-1123 label")
        if not -1000 <= gpu.priority <= 1000:
            raise ValidationError("spec.gpu.priority", "must be between -1000 and 1000")
    sl = spec.serverless
    if sl.min_replicas < 0 or sl.min_replicas > 1:
        raise ValidationError("spec.serverless.minReplicas", "must be 0 or 1 (one replica serves a model)")
    parse_duration_seconds(sl.idle_timeout, "spec.serverless.idleTimeout")
    parse_duration_seconds(sl.cold_start_timeout, "spec.serverless.coldStartTimeout")
    if spec.cache.strategy != "SharedPVC" and (spec.cache.pvc_name or spec.cache.storage_class):
        raise ValidationError("spec.cache.pvcName", "only valid with strategy SharedPVC")
    if len(spec.service_labels) > MAX_SERVICE_LABELS:
        raise ValidationError("spec.serviceLabels", f"at most {MAX_SERVICE_LABELS} labels")
    for i, label in enumerate(spec.service_labels):
        if not _SERVICE_LABEL_RE.match(label):
            raise ValidationError(f"spec.serviceLabels[{i}]", f"{shown(label)} is not a valid label value")
    if len(set(spec.service_labels)) != len(spec.service_labels):
        raise ValidationError("spec.serviceLabels", "labels must be unique")
    if not allow_never_runs:
        reason = never_runs_reason(model)
        if reason is not None:
            raise NeverRuns(*reason)


def never_runs_reason(model: Model) -> tuple[str, str] | None:
    """(field, reason) when a well-formed Model can never run, else None. Raises ValidationError when the
    node selector's architecture cannot be parsed at all."""
    return _maxwell_pin_reason(model)


def _maxwell_pin_reason(model: Model) -> tuple[str, str] | None:
    """Maxwell rules: a model pinned to Maxwell must use a backend that runs there."""
    sel = model.spec.node_selector
    family = sel.get(keys.LABEL_FAMILY)
    arch = sel.get(keys.LABEL_ARCH, "")
    if family != "maxwell" and not arch.startswith("sm_5"):
        return None
    try:
        info = arch_info("nvidia", arch) if arch.startswith("sm_5") else arch_info("nvidia", "sm_52")
    except ParseError as e:
        raise ValidationError(f"spec.nodeSelector.{keys.LABEL_ARCH}", str(e)) from None
    if nvidia_family(*(info.cc or (5, 2))) != "maxwell":  # e.g. sm_520: not a Maxwell pin
        return None
    verdict = check(model.backend, info, jit_policy=model.jit_policy)
    if verdict.verdict is Verdict.UNSUPPORTED:
        return "spec.backend", f"{verdict.reason} (spec.nodeSelector pins maxwell)"
    return None
