"""flexinfer.keys + flexinfer.state: node labels (single, multi, mixed, none), label_safe, annotation round trip,
junk annotations, node_view never raising."""

from __future__ import annotations

import json
import re

import pytest

from flexinfer import keys
from flexinfer.errors import ParseError
from flexinfer.state import (
    STATE_VERSION,
    GpuState,
    NodeGpuState,
    NodeView,
    decode_state,
    encode_state,
    is_owned_label,
    label_safe,
    node_annotations,
    node_labels,
    node_view,
    rfc3339,
)

# Kubernetes label value: <= 63 chars, empty or alnum at both ends with [-_.A-Za-z0-9] between.
LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?\Z")
# Label key: optional DNS prefix + "/" + name (<= 63 chars).
LABEL_NAME_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?\Z")


def gpu(i: int = 0, vendor: str = "amd", arch: str = "gfx1100", total: int = 24560, free: int = 24000,
        product: str = "AMD Radeon RX 7900 XTX", **kw: object) -> GpuState:
    return GpuState(index=i, uuid=f"uuid-{i}", vendor=vendor, arch=arch, total_mib=total, free_mib=free,
                    product=product, **kw)  # type: ignore[arg-type]


def assert_valid_labels(labels: dict[str, str]) -> None:
    for k, v in labels.items():
        prefix, _, name = k.rpartition("/")
        assert prefix in ("flexinfer.ai",), k
        assert LABEL_NAME_RE.match(name), k
        assert len(v) <= 63 and LABEL_VALUE_RE.match(v), (k, v)
        assert is_owned_label(k), k


def test_keys_are_namespaced_and_unique() -> None:
    label_keys = list(keys.NODE_LABEL_KEYS)
    ann_keys = list(keys.NODE_ANNOTATION_KEYS)
    assert len(set(label_keys)) == len(label_keys) and len(set(ann_keys)) == len(ann_keys)
    for k in label_keys + ann_keys + [keys.POD_MODEL, keys.POD_BACKEND, keys.POD_VRAM_ESTIMATE_MB,
                                      keys.POD_JIT_POLICY, keys.POD_PREFERRED_ARCHS, keys.POD_GROUP]:
        assert k.startswith(keys.PREFIX)
        assert LABEL_NAME_RE.match(k.removeprefix(keys.PREFIX)), k
    assert keys.GPU_RESOURCES == {"nvidia.com/gpu": "nvidia", "amd.com/gpu": "amd", "gpu.intel.com/i915": "intel",
                                  "gpu.intel.com/xe": "intel"}
    assert keys.MODEL_API_VERSION == "ai.flexinfer/v1alpha2"
    assert keys.ANN_FREE_MEMORY == "flexinfer.ai/gpu-free-memory"  # Go FlexInfer compatible


def test_labels_single_gpu_nvidia() -> None:
    labels = node_labels([gpu(vendor="nvidia", arch="sm_52", total=6144, free=5800,
                              product="NVIDIA GeForce GTX 980 Ti")])
    assert labels == {
        keys.LABEL_VENDOR: "nvidia", keys.LABEL_COUNT: "1", keys.LABEL_VRAM: "6Gi", keys.LABEL_ARCH: "sm_52",
        keys.LABEL_COMPUTE: "5.2", keys.LABEL_FAMILY: "maxwell", keys.LABEL_PRODUCT: "NVIDIA-GeForce-GTX-980-Ti",
        keys.LABEL_MEMORY_MIB: "6144", keys.LABEL_COMPUTE_MAJOR: "5", keys.LABEL_COMPUTE_MINOR: "2",
        keys.LABEL_SHARING: "none", keys.LABEL_REPLICAS: "1",
    }
    assert_valid_labels(labels)


def test_labels_single_gpu_amd_has_no_compute() -> None:
    labels = node_labels([gpu()])
    assert labels[keys.LABEL_ARCH] == "gfx1100" and labels[keys.LABEL_FAMILY] == "rdna3"
    assert labels[keys.LABEL_VENDOR] == "amd" and labels[keys.LABEL_VRAM] == "24Gi"
    assert keys.LABEL_COMPUTE not in labels and keys.LABEL_UNIFIED_MEMORY not in labels
    assert_valid_labels(labels)


def test_labels_multi_same() -> None:
    labels = node_labels([gpu(i, vendor="nvidia", arch="sm_90", total=81559, product="NVIDIA H100 80GB HBM3")
                          for i in range(8)])
    assert labels[keys.LABEL_COUNT] == "8" and labels[keys.LABEL_ARCH] == "sm_90"
    assert labels[keys.LABEL_FAMILY] == "hopper" and labels[keys.LABEL_COMPUTE] == "9.0"
    assert labels[keys.LABEL_PRODUCT] == "NVIDIA-H100-80GB-HBM3"
    assert not any(k.startswith(keys.LABEL_ARCH_COUNT_PREFIX) for k in labels)
    assert_valid_labels(labels)


def test_labels_mixed_arch_same_vendor() -> None:
    gpus = [gpu(0, vendor="nvidia", arch="sm_52", total=6144, product="GTX 980 Ti"),
            gpu(1, vendor="nvidia", arch="sm_120", total=24467, product="RTX PRO 4000"),
            gpu(2, vendor="nvidia", arch="sm_120", total=24467, product="RTX PRO 4000")]
    labels = node_labels(gpus)
    assert labels[keys.LABEL_VENDOR] == "nvidia"
    assert labels[keys.LABEL_ARCH] == keys.MIXED and labels[keys.LABEL_FAMILY] == keys.MIXED
    assert labels[keys.LABEL_PRODUCT] == keys.MIXED
    assert keys.LABEL_COMPUTE not in labels
    assert labels[keys.LABEL_ARCH_COUNT_PREFIX + "sm_52"] == "1"
    assert labels[keys.LABEL_ARCH_COUNT_PREFIX + "sm_120"] == "2"
    assert labels[keys.LABEL_COUNT] == "3"
    assert labels[keys.LABEL_VRAM] == "6Gi"  # the smallest card: never over-promises
    assert_valid_labels(labels)


def test_labels_mixed_vendor() -> None:
    labels = node_labels([gpu(0, vendor="nvidia", arch="sm_89", total=24564, product="RTX 4090"), gpu(1)])
    assert labels[keys.LABEL_VENDOR] == keys.MIXED and labels[keys.LABEL_ARCH] == keys.MIXED
    assert labels[keys.LABEL_FAMILY] == keys.MIXED
    assert labels[keys.LABEL_ARCH_COUNT_PREFIX + "sm_89"] == "1"
    assert labels[keys.LABEL_ARCH_COUNT_PREFIX + "gfx1100"] == "1"
    assert_valid_labels(labels)


def test_labels_same_family_different_arch() -> None:
    labels = node_labels([gpu(0, arch="gfx1100"), gpu(1, arch="gfx1101", total=16368)])
    assert labels[keys.LABEL_ARCH] == keys.MIXED
    assert labels[keys.LABEL_FAMILY] == "rdna3"  # family agrees, so it keeps a single value
    assert labels[keys.LABEL_VRAM] == "16Gi"


@pytest.mark.parametrize("gpus", [[], ()])
def test_labels_no_gpus(gpus: list[GpuState]) -> None:
    labels = node_labels(gpus)
    assert labels == {keys.LABEL_VENDOR: "none", keys.LABEL_COUNT: "0"}
    assert_valid_labels(labels)


def test_labels_unified_memory_and_no_product() -> None:
    labels = node_labels([gpu(arch="gfx1151", total=49152, product="", unified_memory=True)])
    assert labels[keys.LABEL_UNIFIED_MEMORY] == "true"
    assert keys.LABEL_PRODUCT not in labels
    assert_valid_labels(labels)


def test_labels_product_that_sanitises_to_nothing() -> None:
    assert node_labels([gpu(product="()")])[keys.LABEL_PRODUCT] == "unknown"


def test_labels_reject_bad_arch() -> None:
    with pytest.raises(ParseError):
        node_labels([gpu(vendor="nvidia", arch="gfx1100")])


@pytest.mark.parametrize(("raw", "safe"), [
    ("NVIDIA GeForce GTX 980 Ti", "NVIDIA-GeForce-GTX-980-Ti"),
    ("AMD Radeon RX 7900 XTX", "AMD-Radeon-RX-7900-XTX"),
    ("NVIDIA RTX PRO 4000 Blackwell SFF Edition", "NVIDIA-RTX-PRO-4000-Blackwell-SFF-Edition"),
    ("AMD Instinct MI300X (OAM)", "AMD-Instinct-MI300X-OAM"),
    ("  padded  ", "padded"),
    ("Tesla T4", "Tesla-T4"),
    ("a/b:c@d", "abcd"),
    ("-._lead and trail_.-", "lead-and-trail"),
    ("", ""),
    ("()", ""),
    ("ünïcödé GPU", "ncd-GPU"),
])
def test_label_safe(raw: str, safe: str) -> None:
    assert label_safe(raw) == safe
    assert LABEL_VALUE_RE.match(label_safe(raw))


@pytest.mark.parametrize("n", [62, 63, 64, 100, 500])
def test_label_safe_long_names_hashed_distinct(n: int) -> None:
    a = label_safe("A" * n + " one")
    b = label_safe("A" * n + " two")
    for v in (a, b):
        assert len(v) <= 63 and LABEL_VALUE_RE.match(v)
    assert a != b


def test_label_safe_long_name_keeps_prefix_and_is_stable() -> None:
    name = "NVIDIA " + "Super Long Product Name " * 5
    v = label_safe(name)
    assert len(v) == 63 and v.startswith("NVIDIA-Super-Long") and re.search(r"-[0-9a-f]{8}$", v)
    assert label_safe(name) == v
    assert label_safe("x" * 63) == "x" * 63  # exactly at the limit: untouched


@pytest.mark.parametrize("key", [keys.LABEL_VENDOR, keys.LABEL_ARCH, keys.LABEL_ARCH_COUNT_PREFIX + "sm_52"])
def test_is_owned_label(key: str) -> None:
    assert is_owned_label(key)


@pytest.mark.parametrize("key", ["nvidia.com/gpu.family", "flexinfer.ai/lane", "kubernetes.io/hostname",
                                 keys.ANN_GPU_STATE])
def test_is_not_owned_label(key: str) -> None:
    assert not is_owned_label(key)


def sample_state() -> NodeGpuState:
    return NodeGpuState(
        node="n1",
        gpus=(
            gpu(0, vendor="nvidia", arch="sm_52", total=6144, free=5800, product="GTX 980 Ti"),
            gpu(1, vendor="nvidia", arch="sm_120", total=24467, free=0, healthy=False, reason="Xid 79: fell off bus",
                error_events=3, last_error_unix=1764000000.5),
            gpu(2, vendor="amd", arch="gfx1151", total=49152, free=47104, unified_memory=True),
        ),
        observed_unix=1764000123.25,
        agent_status="ok",
    )


def test_state_round_trip() -> None:
    state = sample_state()
    raw = encode_state(state)
    assert len(raw) < 600 and "\n" not in raw
    back = decode_state("n1", raw)
    assert back.node == "n1" and back.observed_unix == state.observed_unix
    for a, b in zip(state.gpus, back.gpus, strict=True):
        # product is a label fact, not carried in the annotation
        assert b == GpuState(**{**{f: getattr(a, f) for f in a.__slots__}, "product": ""})
    assert back.healthy_free_mib == 5800 + 47104
    assert encode_state(back) == raw


def test_state_round_trip_empty() -> None:
    state = NodeGpuState(node="cpu", gpus=(), observed_unix=0.0)
    assert decode_state("cpu", encode_state(state)).gpus == ()


def test_decode_state_vendor_hint() -> None:
    raw = json.dumps({"v": 1, "t": 1.0, "g": [{"i": 0, "u": "x", "a": "gfx906", "t": 16368, "f": 100}]})
    state = decode_state("n", raw, vendor_hint="amd")
    assert state.gpus[0].vendor == "amd" and state.gpus[0].healthy and state.gpus[0].used_mib == 16268
    with pytest.raises(ParseError, match="GPU vendor"):
        decode_state("n", raw)  # no per-GPU vendor and no hint


def test_node_annotations() -> None:
    ann = node_annotations(sample_state())
    assert set(ann) == set(keys.NODE_ANNOTATION_KEYS)
    assert ann[keys.ANN_FREE_MEMORY] == str(5800 + 47104)
    assert ann[keys.ANN_OBSERVED_AT] == "2025-11-24T16:02:03Z" == rfc3339(1764000123.25)
    assert ann[keys.ANN_AGENT_STATUS] == "ok"
    assert decode_state("n1", ann[keys.ANN_GPU_STATE]).gpus[1].reason == "Xid 79: fell off bus"


def wire(**gpu_fields: object) -> str:
    g = {"i": 0, "u": "u", "a": "sm_52", "t": 6144, "f": 100, "v": "nvidia"} | gpu_fields
    return json.dumps({"v": STATE_VERSION, "t": 1.0, "g": [g]})


BAD_STATES = {
    "not json": "not json",
    "empty": "",
    "json list": "[]",
    "json null": "null",
    "json string": '"x"',
    "truncated": wire()[:-3],
    "wrong version": json.dumps({"v": 2, "t": 1.0, "g": []}),
    "version as string": json.dumps({"v": "1", "t": 1.0, "g": []}),
    "missing g": json.dumps({"v": 1, "t": 1.0}),
    "g not list": json.dumps({"v": 1, "t": 1.0, "g": {}}),
    "free > total": wire(t=100, f=200),
    "bad arch": wire(a="gfx1100"),
    "junk arch": wire(a="x" * 40),
    "bad vendor": wire(v="ati"),
    "negative free": wire(f=-1),
    "negative total": wire(t=-5, f=0),
    "negative index": wire(i=-1),
    "huge total": wire(t=1 << 50, f=0),
    "float total": wire(t=1.5),
    "string total": wire(t="6144"),
    "bool healthy string": wire(h="yes"),
    "missing uuid": json.dumps({"v": 1, "t": 1.0, "g": [{"i": 0, "a": "sm_52", "t": 1, "f": 1, "v": "nvidia"}]}),
    "huge string": json.dumps({"v": 1, "t": 1.0, "g": [], "pad": "x" * (300 * 1024)}),
    "binary": "\x00\xff\xfe",
}


@pytest.mark.parametrize("raw", list(BAD_STATES.values()), ids=list(BAD_STATES))
def test_decode_state_junk_names_the_annotation(raw: str) -> None:
    with pytest.raises(ParseError) as e:
        decode_state("n", raw)
    assert keys.ANN_GPU_STATE in str(e.value)
    assert e.value.expected


@pytest.mark.parametrize("raw", [None, 5, b"{}", {"v": 1}])
def test_decode_state_non_string(raw: object) -> None:
    with pytest.raises(ParseError, match=keys.ANN_GPU_STATE):
        decode_state("n", raw)  # type: ignore[arg-type]


def test_node_view_good() -> None:
    state = sample_state()
    labels = node_labels(list(state.gpus))
    view = node_view("n1", labels, node_annotations(state))
    assert isinstance(view, NodeView) and view.error == "" and view.has_agent_data
    assert view.vendor == keys.MIXED and view.state is not None
    assert len(view.state.gpus) == 3 and view.state.agent_status == "ok"


def test_node_view_vendor_hint_from_label() -> None:
    raw = json.dumps({"v": 1, "t": 1.0, "g": [{"i": 0, "u": "x", "a": "gfx906", "t": 16368, "f": 100}]})
    view = node_view("n", {keys.LABEL_VENDOR: "AMD"}, {keys.ANN_GPU_STATE: raw, keys.ANN_AGENT_STATUS: "ok"})
    assert view.error == "" and view.vendor == "amd" and view.state and view.state.gpus[0].arch == "gfx906"


def test_node_view_without_agent() -> None:
    view = node_view("plain", None, None)
    assert view.vendor == "none" and view.state is None and view.error == "" and not view.has_agent_data
    view = node_view("plain", {"kubernetes.io/hostname": "plain"}, {keys.ANN_AGENT_STATUS: "nvml library missing"})
    assert view.agent_status == "nvml library missing" and view.state is None
    view = node_view("null", {keys.LABEL_VENDOR: "nvidia"}, {keys.ANN_GPU_STATE: None})  # JSON null = absent
    assert view.error == "" and view.state is None and view.vendor == "nvidia"


JUNK_VIEWS = [
    ({keys.LABEL_VENDOR: "ati"}, {}, "GPU vendor"),
    ({keys.LABEL_VENDOR: ""}, {}, "GPU vendor"),
    ({keys.LABEL_VENDOR: 5}, {}, "GPU vendor"),
    ({keys.LABEL_VENDOR: "nvidia"}, {keys.ANN_GPU_STATE: "garbage"}, keys.ANN_GPU_STATE),
    ({keys.LABEL_VENDOR: "nvidia"}, {keys.ANN_GPU_STATE: wire(t=1, f=2)}, "free <= total"),
    ({keys.LABEL_VENDOR: "nvidia"}, {keys.ANN_GPU_STATE: 123}, keys.ANN_GPU_STATE),
    ({keys.LABEL_VENDOR: "mixed"}, {keys.ANN_GPU_STATE: wire(v="")}, keys.ANN_GPU_STATE),
    (["not", "a", "dict"], {}, "mappings"),
    ({}, "annotations as a string", "mappings"),
    (42, [1, 2], "mappings"),
]


@pytest.mark.parametrize(("labels", "annotations", "needle"), JUNK_VIEWS)
def test_node_view_never_raises(labels: object, annotations: object, needle: str) -> None:
    view = node_view("bad", labels, annotations)  # type: ignore[arg-type]
    assert view.name == "bad"
    assert view.error and needle in view.error
    assert view.state is None and not view.has_agent_data


def test_parse_rfc3339_one_parser_for_every_component() -> None:
    from flexinfer.state import parse_rfc3339, rfc3339

    assert parse_rfc3339("2026-11-23T10:00:00Z") == 1795428000.0
    assert parse_rfc3339(rfc3339(1795428000.0)) == 1795428000.0
    assert parse_rfc3339("2026-11-23T10:00:00.250000Z") == 1795428000.25  # MicroTime (Leases)
    assert parse_rfc3339("2026-11-23T10:00:00") == 1795428000.0  # naive: UTC
    assert parse_rfc3339(1795428000) == 1795428000.0 and parse_rfc3339("1795428000.5") == 1795428000.5
    for junk in (None, "", "yesterday", "2026-13-45T00:00:00Z"):
        assert parse_rfc3339(junk) is None
