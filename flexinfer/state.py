"""Per-GPU state and its two wire forms: Node labels (static facts) and annotations (live state).

Annotation `flexinfer.ai/gpu-state` is compact JSON so a 5000-node cache stays small:

    {"v":1,"t":1764000000.0,"g":[{"i":0,"u":"GPU-..","a":"sm_52","t":6144,"f":5800,"h":1,
                                   "e":0,"le":0}]}

v = format version, t = observation time (unix seconds, UTC), g = GPUs with i = index,
u = uuid, a = arch, t = total MiB, f = free MiB, h = healthy (1/0), e = Xid/RAS error events
since the agent started, le = unix time of the last error (0 = none), r = reason when unhealthy,
p = the containers holding the GPU ("namespace/pod/container", from the kubelet's PodResources API),
s = device-plugin replicas of the GPU (time-slicing; omitted when 1), su = replicas handed out,
mp = the physical GPU index of a MIG instance, mn = its MIG profile ("3g.40gb").

Entries are what a pod can be given: a whole GPU, or one MIG instance of a MIG-enabled GPU (its memory
is all the pod gets). On a node with MIG the entries are numbered in physical order, so `i` is the
entry's number and `mp` the physical GPU; on other nodes `i` is the GPU index.

Mixed-GPU rule for labels: a label carries a single value only when every GPU on the node agrees.
Otherwise vendor/arch/family/product/compute get the value `mixed` (compute is omitted), and one
`flexinfer.ai/gpu.arch.<arch>=<count>` label per architecture tells what is there. `gpu.vram` is
always the smallest card's total, so a nodeSelector on it never over-promises; `gpu.count` counts
all GPUs. Per-GPU truth lives in the annotation, which the extender uses for fit.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec

from flexinfer import keys
from flexinfer.arch import AMD, NVIDIA, ArchInfo, arch_info, normalize_vendor
from flexinfer.errors import ParseError
from flexinfer.units import mib_to_label, parse_mib

STATE_VERSION = 1


@dataclass(frozen=True, slots=True)
class GpuState:
    index: int
    uuid: str
    vendor: str
    arch: str
    total_mib: int
    free_mib: int
    healthy: bool = True
    product: str = ""
    reason: str = ""  # why unhealthy, one line
    error_events: int = 0  # Xid (NVIDIA) / uncorrectable+deferred RAS (AMD) since agent start
    last_error_unix: float = 0.0
    unified_memory: bool = False  # APU: VRAM is carved out of system RAM
    pods: tuple[str, ...] = ()  # "namespace/pod/container" holding it (kubelet PodResources), at most MAX_PODS
    replicas: int = 1  # device-plugin replicas (time-slicing): how many containers may be given this GPU
    replicas_used: int = 0  # replicas handed out to containers (distinct device IDs)
    mig_profile: str = ""  # non-empty: this entry is a MIG instance of that profile ("3g.40gb")
    mig_parent: int = -1  # a MIG instance's physical GPU index

    @property
    def info(self) -> ArchInfo:
        return arch_info(self.vendor, self.arch)

    @property
    def used_mib(self) -> int:
        return max(0, self.total_mib - self.free_mib)

    @property
    def available_mib(self) -> int:
        """What a new pod can get here now: the free MiB, or 0 when every time-slicing replica is taken (the
        device plugin will not hand this GPU out again)."""
        if self.replicas > 1 and self.replicas_used >= self.replicas:
            return 0
        return self.free_mib

    @property
    def physical_index(self) -> int:
        return self.mig_parent if self.mig_profile else self.index

    def describe(self) -> str:
        """'GPU 0', 'MIG 3g.40gb on GPU 1', with ', 4 time-slicing replicas (1 in use)' when shared."""
        text = f"MIG {self.mig_profile} on GPU {self.mig_parent}" if self.mig_profile else f"GPU {self.index}"
        if self.replicas > 1:
            text += f", {self.replicas} time-slicing replicas ({self.replicas_used} in use)"
        return text


MAX_PODS = 64  # containers listed per GPU in the annotation (and as metric label sets); more are counted, not named
MAX_REPLICAS = 1024


@dataclass(frozen=True, slots=True)
class NodeGpuState:
    node: str
    gpus: tuple[GpuState, ...] = ()
    observed_unix: float = 0.0
    agent_status: str = "ok"
    # Node-level software versions (labels only; not in the annotation): the NVIDIA or AMD kernel driver,
    # the CUDA version the NVIDIA driver supports, the ROCm release of the AMD stack.
    driver_version: str = ""
    cuda_version: str = ""
    rocm_version: str = ""

    @property
    def healthy_free_mib(self) -> int:
        return sum(g.free_mib for g in self.gpus if g.healthy)

    def placements(self) -> dict[str, tuple[int, ...]]:
        """"namespace/pod" -> indexes of the GPUs (or MIG instances) its containers hold, from the kubelet's
        attribution the agent published; {} when nobody holds a GPU (or the agent cannot ask the kubelet)."""
        out: dict[str, list[int]] = {}
        for g in self.gpus:
            for ref in g.pods:
                held = out.setdefault(ref.rsplit("/", 1)[0], [])
                if g.index not in held:
                    held.append(g.index)
        return {pod: tuple(ix) for pod, ix in out.items()}


# --- labels ---------------------------------------------------------------------------------

_LABEL_VALUE_BAD = re.compile(r"[^A-Za-z0-9_.-]+")


def label_safe(value: str, limit: int = 63) -> str:
    """Sanitise a free-text value (a product name) into a valid label value of at most 63 chars.

    Like GFD: characters outside [A-Za-z0-9-_. ] go, runs of spaces become '-'. Values that are too
    long are truncated and suffixed with 8 hex chars of a hash so two long names stay distinct.
    """
    s = value.replace("(", "").replace(")", "").strip()
    s = re.sub(r"\s+", "-", s)
    s = _LABEL_VALUE_BAD.sub("", s)
    s = s.strip("-_.")
    if len(s) > limit:
        digest = hashlib.sha256(value.encode()).hexdigest()[:8]
        s = s[: limit - 9].rstrip("-_.") + "-" + digest
    return s


_LEADING_INT = re.compile(r"^(\d{1,9})(?:\.(\d{1,9}))?")


def _version_labels(value: str, full: str, major: str, minor: str | None) -> dict[str, str]:
    """'580.95.05' -> {full: '580.95.05', major: '580', minor: '95'} (integers for Gt/Lt); {} when unparsable."""
    text = label_safe(value) if value else ""
    m = _LEADING_INT.match(text)
    if not m:
        return {}
    out = {full: text, major: str(int(m.group(1)))}
    if minor is not None and m.group(2) is not None:
        out[minor] = str(int(m.group(2)))
    return out


def version_labels(vendors: set[str], driver_version: str = "", cuda_version: str = "",
                   rocm_version: str = "") -> dict[str, str]:
    """Driver / CUDA / ROCm labels. The driver version is one vendor's, so a node with GPUs of two vendors
    gets none (its CUDA and ROCm versions are unambiguous and stay)."""
    out: dict[str, str] = {}
    if len(vendors) == 1:
        out.update(_version_labels(driver_version, keys.LABEL_DRIVER_VERSION, keys.LABEL_DRIVER_MAJOR, None))
    if NVIDIA in vendors:
        out.update(_version_labels(cuda_version, keys.LABEL_CUDA_VERSION, keys.LABEL_CUDA_MAJOR, keys.LABEL_CUDA_MINOR))
    if AMD in vendors:
        out.update(_version_labels(rocm_version, keys.LABEL_ROCM_VERSION, keys.LABEL_ROCM_MAJOR, keys.LABEL_ROCM_MINOR))
    return out


def state_labels(state: NodeGpuState) -> dict[str, str]:
    """The labels the agent owns for one observation: `node_labels` plus the software versions."""
    return node_labels(state.gpus, driver_version=state.driver_version, cuda_version=state.cuda_version,
                       rocm_version=state.rocm_version)


def node_labels(gpus: list[GpuState] | tuple[GpuState, ...], *, driver_version: str = "", cuda_version: str = "",
                rocm_version: str = "") -> dict[str, str]:
    """The labels the agent owns for a node with these GPUs (see module doc for the mixed rule).

    Counts and sizes are of what a pod can be given: on a MIG node `gpu.count` counts MIG instances and
    `gpu.memory-mib` / `gpu.vram` are the smallest instance's, as NVIDIA's feature discovery does with its
    `single` MIG strategy."""
    if not gpus:
        return {keys.LABEL_VENDOR: "none", keys.LABEL_COUNT: "0"}
    infos = [g.info for g in gpus]
    vendors = {i.vendor for i in infos}
    archs = Counter(i.arch for i in infos)
    families = {i.family for i in infos}
    products = {label_safe(g.product) for g in gpus if g.product}
    smallest = min(g.total_mib for g in gpus)
    labels: dict[str, str] = {
        keys.LABEL_VENDOR: next(iter(vendors)) if len(vendors) == 1 else keys.MIXED,
        keys.LABEL_COUNT: str(len(gpus)),
        keys.LABEL_VRAM: mib_to_label(smallest),
        keys.LABEL_MEMORY_MIB: str(smallest),
        keys.LABEL_SHARING: ("mig" if any(g.mig_profile for g in gpus)
                             else "time-slicing" if any(g.replicas > 1 for g in gpus) else "none"),
        keys.LABEL_REPLICAS: str(min(g.replicas for g in gpus)),
    }
    if len(archs) == 1:
        only = infos[0]
        labels[keys.LABEL_ARCH] = only.arch
        if only.compute:
            labels[keys.LABEL_COMPUTE] = only.compute
            major, minor = only.compute.split(".")
            labels[keys.LABEL_COMPUTE_MAJOR] = major
            labels[keys.LABEL_COMPUTE_MINOR] = minor
    else:
        labels[keys.LABEL_ARCH] = keys.MIXED
        for arch, count in archs.items():
            labels[keys.LABEL_ARCH_COUNT_PREFIX + arch] = str(count)
    labels[keys.LABEL_FAMILY] = families.pop() if len(families) == 1 else keys.MIXED
    if len(products) == 1:
        labels[keys.LABEL_PRODUCT] = products.pop() or "unknown"
    elif products:
        labels[keys.LABEL_PRODUCT] = keys.MIXED
    if any(g.unified_memory for g in gpus):
        labels[keys.LABEL_UNIFIED_MEMORY] = "true"
    labels.update(version_labels(vendors, driver_version, cuda_version, rocm_version))
    return labels


def is_owned_label(key: str) -> bool:
    return key in keys.NODE_LABEL_KEYS or key.startswith(keys.LABEL_ARCH_COUNT_PREFIX)


# --- annotations ----------------------------------------------------------------------------

class _WireGpu(msgspec.Struct, omit_defaults=True):
    i: int
    u: str
    a: str
    t: int
    f: int
    h: int = 1
    e: int = 0
    le: float = 0.0
    r: str = ""
    v: str = ""  # vendor; omitted when it equals the node-level vendor hint
    m: int = 0  # unified memory
    p: list[str] = []  # "namespace/pod/container" holding the GPU
    s: int = 1  # device-plugin replicas
    su: int = 0  # replicas handed out
    mp: int = -1  # MIG instance: physical GPU index
    mn: str = ""  # MIG instance: profile


class _WireState(msgspec.Struct):
    v: int
    t: float
    g: list[_WireGpu]


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_WireState)


def rfc3339(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_micro(unix: float) -> str:
    """RFC 3339 with microseconds (Kubernetes' MicroTime format: Lease renewals, activation requests)."""
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_rfc3339(value: object) -> float | None:
    """RFC 3339 (or Unix seconds) -> Unix seconds; None if absent or unparsable. Naive times are UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    s = str(value).strip()
    try:
        return float(s)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def encode_state(state: NodeGpuState) -> str:
    wire = _WireState(
        v=STATE_VERSION,
        t=round(state.observed_unix, 3),
        g=[
            _WireGpu(
                i=g.index, u=g.uuid, a=g.arch, t=g.total_mib, f=g.free_mib, h=int(g.healthy),
                e=g.error_events, le=round(g.last_error_unix, 3), r=g.reason, v=g.vendor,
                m=int(g.unified_memory), p=list(g.pods[:MAX_PODS]), s=g.replicas, su=g.replicas_used,
                mp=g.mig_parent if g.mig_profile else -1, mn=g.mig_profile,
            )
            for g in state.gpus
        ],
    )
    return _encoder.encode(wire).decode()


def node_annotations(state: NodeGpuState) -> dict[str, str]:
    """The annotations the agent owns, computed from one observation."""
    return {
        keys.ANN_FREE_MEMORY: str(state.healthy_free_mib),
        keys.ANN_GPU_STATE: encode_state(state),
        keys.ANN_OBSERVED_AT: rfc3339(state.observed_unix),
        keys.ANN_AGENT_STATUS: state.agent_status or "ok",
    }


_MAX_MIB = 1 << 40  # parse_mib's upper bound; the fast path below must agree with it
_ANN_WHAT = f"annotation {keys.ANN_GPU_STATE}"
def decode_state(node: str, raw: str, vendor_hint: str = "", *, agent_status: str = "ok") -> NodeGpuState:
    """Parse `flexinfer.ai/gpu-state`. Any junk raises ParseError naming the annotation.

    Hot path of the extender's full-Nodes requests (every GPU of every node it has not cached): the
    typed msgspec decoder does the JSON and type checks, `arch_info` is memoised, and the MiB checks
    call `parse_mib` only to word the error for a value outside its range.
    """
    what = _ANN_WHAT
    if not isinstance(raw, str) or len(raw) > 256 * 1024:
        raise ParseError(what, raw, "compact JSON written by flexinfer-agent (at most 256 KiB)")
    try:
        wire = _decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise ParseError(what, raw, f"compact JSON written by flexinfer-agent ({e})") from None
    if wire.v != STATE_VERSION:
        raise ParseError(what, raw, f"format version {STATE_VERSION}")
    gpus = []
    for w in wire.g:
        total, free, i = w.t, w.f, w.i
        try:
            info = arch_info(w.v or vendor_hint, w.a)
            if not 0 <= total <= _MAX_MIB:  # msgspec typed these as int (never bool)
                parse_mib(total, f"{what} gpu {i} total")
            if not 0 <= free <= _MAX_MIB:
                parse_mib(free, f"{what} gpu {i} free")
        except ParseError as e:
            raise ParseError(what, raw, f"valid per-GPU fields ({e})") from None
        if i < 0:
            raise ParseError(what, raw, f"a non-negative GPU index (got {i})")
        if free > total:
            raise ParseError(what, raw, f"free <= total on gpu {i}")
        e = w.e
        pods: tuple[str, ...] = ()
        if w.p or w.s != 1 or w.su or w.mn or w.mp != -1:  # shared-GPU facts: rare, checked off the hot path
            pods = _shared_fields(what, raw, i, w)
        gpus.append(GpuState(index=i, uuid=w.u, vendor=info.vendor, arch=info.arch, total_mib=total, free_mib=free,
                             healthy=bool(w.h), reason=w.r, error_events=e if e > 0 else 0, last_error_unix=w.le,
                             unified_memory=bool(w.m), pods=pods, replicas=w.s, replicas_used=w.su,
                             mig_profile=w.mn, mig_parent=w.mp if w.mn else -1))
    return NodeGpuState(node, tuple(gpus), wire.t, agent_status)


_POD_REF = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/"
                      r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_MIG_PROFILE = re.compile(r"^[0-9]{1,2}(c\.[0-9]{1,2})?g\.[0-9]{1,4}gb(\+[a-z0-9.]{1,16})?$")


def valid_pod_ref(ref: str) -> bool:
    """'namespace/pod/container' with Kubernetes' name rules (what the state annotation accepts)."""
    return isinstance(ref, str) and len(ref) <= 381 and _POD_REF.match(ref) is not None


def _shared_fields(what: str, raw: str, i: int, w: _WireGpu) -> tuple[str, ...]:
    """Validate a GPU's pods / replicas / MIG fields; the pods as a tuple. ParseError on junk."""
    if len(w.p) > MAX_PODS or not all(valid_pod_ref(p) for p in w.p):
        raise ParseError(what, raw, f"at most {MAX_PODS} 'namespace/pod/container' names on gpu {i}")
    if not 1 <= w.s <= MAX_REPLICAS or not 0 <= w.su <= MAX_REPLICAS:
        raise ParseError(what, raw, f"replicas 1..{MAX_REPLICAS} and replicas in use 0..{MAX_REPLICAS} on gpu {i}")
    if w.mn and (not _MIG_PROFILE.match(w.mn) or w.mp < 0):
        raise ParseError(what, raw, f"a MIG profile like 3g.40gb with its physical GPU index on gpu {i}")
    return tuple(w.p)


@dataclass(frozen=True, slots=True)
class NodeView:
    """What the extender knows about one Node, parsed once when the Node object changes."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)
    vendor: str = "none"
    state: NodeGpuState | None = None
    error: str = ""  # non-empty: annotations were unparseable; the node is rejected with this text
    agent_status: str = ""

    @property
    def has_agent_data(self) -> bool:
        return self.state is not None


def node_view(name: str, labels: dict[str, str] | None, annotations: dict[str, str] | None) -> NodeView:
    """Build a NodeView from a Node's labels and annotations, never raising."""
    if not isinstance(labels, dict | None) or not isinstance(annotations, dict | None):
        return NodeView(name, {}, "none", None, error="node labels and annotations must be mappings")
    labels = dict(labels) if labels else {}
    annotations = annotations or {}
    raw_vendor = labels.get(keys.LABEL_VENDOR, "none")
    try:
        vendor = keys.MIXED if raw_vendor == keys.MIXED else normalize_vendor(raw_vendor)
    except ParseError as e:
        return NodeView(name, labels, "none", None, error=str(e))
    raw_state = annotations.get(keys.ANN_GPU_STATE)
    status = annotations.get(keys.ANN_AGENT_STATUS, "")
    if raw_state is None:
        return NodeView(name, labels, vendor, None, agent_status=status)
    hint = vendor if vendor not in (keys.MIXED, "none") else ""
    try:
        state = decode_state(name, raw_state, hint, agent_status=status or "ok")
    except ParseError as e:
        return NodeView(name, labels, vendor, None, error=str(e), agent_status=status)
    return NodeView(name, labels, vendor, state, "", status)
