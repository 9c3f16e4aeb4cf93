"""Property-based fuzzing of every domain-core parser (issue 7 item 3).

Contract: on any input a parser either returns a value or raises ParseError/ValidationError with a non-empty
message; no other exception type escapes. node_view never raises at all. Successful parses are checked for
consistency (round trips, ranges).

Examples per test: env FLEXINFER_FUZZ_EXAMPLES (default 300, so CI stays fast; bench/ raises it).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flexinfer import keys
from flexinfer.arch import arch_info, decode_gfx_target_version, encode_gfx_target_version, normalize_vendor
from flexinfer.compat import BACKENDS, Verdict, canonical_backend, check
from flexinfer.errors import ParseError, ValidationError, text_of
from flexinfer.estimate import EstimateInput, estimate, guess_quant, parse_params_from_name
from flexinfer.fleet import parse_fleet
from flexinfer.model import parse_duration_seconds, parse_model
from flexinfer.state import (
    GpuState,
    NodeGpuState,
    NodeView,
    decode_state,
    encode_state,
    label_safe,
    node_labels,
    node_view,
)
from flexinfer.units import parse_mib, parse_quantity_bytes

FUZZ = settings(
    max_examples=int(os.environ.get("FLEXINFER_FUZZ_EXAMPLES", "300")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

CLEAN = (ParseError, ValidationError)


def parse_or_reject(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a parser; a clean rejection returns None, anything else escaping fails the test."""
    try:
        return fn(*args, **kwargs)
    except CLEAN as e:
        assert str(e).strip(), f"{fn.__name__} raised {type(e).__name__} with an empty message"
        return None


# --- strategies ----------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers() | st.integers(-(2**70), 2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30))
json_like = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c,
                                                                                      max_size=4),
                         max_leaves=10)
# Text that looks like the real thing often enough to reach deep code paths.
interesting_text = st.one_of(
    st.text(max_size=40),
    st.from_regex(r"\A(sm_\d{1,3}[af]?|gfx[0-9a-fA-F]{2,6}|\d{1,2}\.\d|\d{1,7})\Z"),
    st.from_regex(r"\A\s?\d{0,6}(\.\d{0,3})?(Ki|Mi|Gi|Ti|K|M|G|T|k|B|gi)?\s?\Z"),
    st.from_regex(r"\A(\d{0,4}h)?(\d{0,4}m)?(\d{0,4}s)?(ms)?\Z"),
    st.sampled_from(["", " ", "None", "nvidia", "NVIDIA", "amd", "cpu", "mixed", "0", "-1", "9" * 5000, "\u00b2",
                     "\u0661\u0662", "\x00", "24Gi\n", "1e400", "NaN", "inf"]),
)
anything = st.one_of(interesting_text, json_like, st.binary(max_size=20),
                     st.sampled_from([10**5000, -(10**5000), 2**64, float("nan"), float("inf"), b"\xff"]))
# Cheap junk for nested positions inside otherwise well-formed documents (keeps generation fast).
junk = scalars | st.lists(st.integers() | st.text(max_size=5), max_size=2) | st.just({"k": "v"})


# --- arch / units / durations ---------------------------------------------------------------

@FUZZ
@given(anything)
def test_fuzz_decode_gfx_target_version(value: object) -> None:
    gfx = parse_or_reject(decode_gfx_target_version, value)
    if gfx is not None:
        assert gfx.startswith("gfx")
        assert decode_gfx_target_version(encode_gfx_target_version(gfx)) == gfx


@FUZZ
@given(st.integers(min_value=-(10**12), max_value=10**12))
def test_fuzz_decode_gfx_integers(value: int) -> None:
    gfx = parse_or_reject(decode_gfx_target_version, value)
    if gfx is not None:
        assert encode_gfx_target_version(gfx) == value
        assert arch_info("amd", gfx).arch == gfx


@FUZZ
@given(anything, anything)
def test_fuzz_arch_info(vendor: object, arch: object) -> None:
    info = parse_or_reject(arch_info, vendor, arch)
    if info is not None:
        assert info.vendor in ("nvidia", "amd", "intel", "none") and info.arch and info.family
        assert info.vendor == normalize_vendor(vendor)  # type: ignore[arg-type]
        for b in BACKENDS:
            c = check(b, info, jit_policy=text_of(arch))
            assert c.verdict is Verdict.SUPPORTED or c.reason


@FUZZ
@given(anything)
def test_fuzz_normalize_vendor_and_backend(value: object) -> None:
    parse_or_reject(normalize_vendor, value)
    parse_or_reject(canonical_backend, value)


@FUZZ
@given(anything)
def test_fuzz_parse_quantity_bytes(value: object) -> None:
    n = parse_or_reject(parse_quantity_bytes, value)
    if n is not None:
        assert isinstance(n, int) and n >= 0


@FUZZ
@given(anything)
def test_fuzz_parse_mib(value: object) -> None:
    n = parse_or_reject(parse_mib, value, "fuzz field")
    if n is not None:
        assert isinstance(n, int) and 0 <= n <= 1 << 40


@FUZZ
@given(anything)
def test_fuzz_parse_duration_seconds(value: object) -> None:
    s = parse_or_reject(parse_duration_seconds, value, "spec.fuzz")
    if s is not None:
        assert isinstance(s, float) and s >= 0 and s == s


@FUZZ
@given(st.text(max_size=60), st.sampled_from([*BACKENDS, "unknown"]))
def test_fuzz_name_helpers(text: str, backend: str) -> None:
    parsed = parse_params_from_name(text)
    if parsed is not None:
        total, active = parsed
        assert total >= 0 and (active is None or active >= 0)
        parse_or_reject(estimate, EstimateInput(params_b=total, active_params_b=active,
                                                quant=guess_quant(text, backend)))
    assert guess_quant(text, backend)


@FUZZ
@given(st.builds(
    EstimateInput,
    params_b=st.floats(allow_nan=True, allow_infinity=True) | st.integers(-5, 10**6),
    active_params_b=st.none() | st.floats(-1, 1000),
    quant=st.sampled_from(["fp16", "Q4_K_M", "awq", "q4f16_1", "bogus", ""]),
    context_tokens=st.integers(-10, 2 * 10**7),
    kv_cache_dtype=st.sampled_from(["f16", "q8_0", "fp8", "int3"]),
    backend=st.sampled_from([*BACKENDS, "x"]),
    parallel=st.integers(-1, 2000),
    gpu_count=st.integers(-1, 100),
    layers=st.none() | st.integers(-5, 200),
    attention_layers=st.none() | st.integers(-5, 200),
    kv_heads=st.none() | st.integers(-5, 128),
    head_dim=st.none() | st.integers(-5, 512),
    weights_bytes=st.none() | st.integers(-(10**12), 10**13),
))
def test_fuzz_estimate(inp: EstimateInput) -> None:
    e = parse_or_reject(estimate, inp)
    if e is not None:
        assert e.weights_mib >= 0 and e.kv_cache_mib >= 0 and e.overhead_mib > 0
        assert e.total_mib == e.weights_mib + e.kv_cache_mib + e.overhead_mib
        assert e.per_gpu_mib * inp.gpu_count >= e.total_mib


LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?\Z")


@FUZZ
@given(st.text(max_size=120), st.text(max_size=120))
def test_fuzz_label_safe(a: str, b: str) -> None:
    sa, sb = label_safe(a), label_safe(b)
    assert len(sa) <= 63 and LABEL_VALUE_RE.match(sa), sa
    if len(sa) == 63 and len(sb) == 63 and a != b and sa[:54] == sb[:54]:
        assert sa != sb  # long names that collide after truncation are told apart by the hash


# --- annotations / node views --------------------------------------------------------------

wire_gpu = st.fixed_dictionaries(
    {"i": st.integers(-2, 64), "u": st.text(max_size=8), "a": interesting_text,
     "t": st.integers(-10, 2**41) | junk, "f": st.integers(-10, 2**41) | junk},
    optional={"h": st.integers(0, 1) | junk, "e": st.integers(-5, 10), "le": st.floats(),
              "r": st.text(max_size=10),
              "v": st.sampled_from(["nvidia", "amd", "intel", "none", "", "AMD", "ati"]) | junk,
              "m": st.integers(0, 1)},
)
wire_state = st.fixed_dictionaries({"v": st.sampled_from([1, 1, 1, 2, "1", None]), "t": st.floats() | junk,
                                    "g": st.lists(wire_gpu, max_size=4) | junk})
state_text = st.one_of(
    wire_state.map(lambda d: json.dumps(d, allow_nan=True)),
    st.text(max_size=100),
    json_like.map(lambda d: json.dumps(d, allow_nan=True)),
    wire_state.map(lambda d: json.dumps(d)[: len(json.dumps(d)) // 2]),  # truncated
)


@FUZZ
@given(state_text, st.sampled_from(["", "nvidia", "amd", "mixed", "bogus"]))
def test_fuzz_decode_state(raw: str, hint: str) -> None:
    try:
        state = decode_state("n", raw, hint)
    except ParseError as e:
        assert keys.ANN_GPU_STATE in str(e)  # every rejection names the annotation
        return
    assert isinstance(state, NodeGpuState)
    for g in state.gpus:
        assert 0 <= g.free_mib <= g.total_mib and g.index >= 0
        assert g.info.arch == g.arch
    again = decode_state("n", encode_state(state))
    assert again.gpus == state.gpus


labels_like = st.one_of(
    st.dictionaries(st.sampled_from([keys.LABEL_VENDOR, keys.LABEL_ARCH, "x"]) | st.text(max_size=10),
                    st.sampled_from(["nvidia", "amd", "mixed", "none", "NVIDIA"]) | junk, max_size=4),
    json_like,
)
annotations_like = st.one_of(
    st.dictionaries(st.sampled_from([keys.ANN_GPU_STATE, keys.ANN_AGENT_STATUS]) | st.text(max_size=10),
                    state_text | junk, max_size=3),
    json_like,
)


@FUZZ
@given(st.text(max_size=20), labels_like, annotations_like)
def test_fuzz_node_view_never_raises(name: str, labels: Any, annotations: Any) -> None:
    view = node_view(name, labels, annotations)
    assert isinstance(view, NodeView) and view.name == name
    if view.error:
        assert view.state is None
    if view.state is not None:
        assert view.error == ""


gpu_states = st.builds(
    GpuState,
    index=st.integers(0, 16), uuid=st.text(max_size=12),
    vendor=st.sampled_from(["nvidia", "amd"]),
    arch=st.just(""), total_mib=st.integers(1, 1 << 20), free_mib=st.just(0), healthy=st.booleans(),
    product=st.text(max_size=70), reason=st.text(max_size=12), error_events=st.integers(0, 1000),
    last_error_unix=st.floats(0, 2e9), unified_memory=st.booleans(),
)


@st.composite
def valid_gpus(draw: st.DrawFn) -> list[GpuState]:
    out = []
    for g in draw(st.lists(gpu_states, max_size=4)):
        arch = draw(st.sampled_from(["sm_52", "sm_89", "sm_120", "sm_110"]) if g.vendor == "nvidia"
                    else st.sampled_from(["gfx906", "gfx1100", "gfx1151", "gfx1300"]))
        free = draw(st.integers(0, g.total_mib))
        out.append(GpuState(**{**{f: getattr(g, f) for f in g.__slots__}, "arch": arch, "free_mib": free}))
    return out


@FUZZ
@given(valid_gpus(), st.floats(0, 4e9))
def test_fuzz_state_round_trip_and_labels(gpus: list[GpuState], t: float) -> None:
    state = NodeGpuState(node="n", gpus=tuple(gpus), observed_unix=t)
    back = decode_state("n", encode_state(state))
    assert [(g.index, g.uuid, g.arch, g.total_mib, g.free_mib, g.healthy, g.reason, g.unified_memory)
            for g in back.gpus] == [(g.index, g.uuid, g.arch, g.total_mib, g.free_mib, g.healthy, g.reason,
                                     g.unified_memory) for g in gpus]
    labels = node_labels(gpus)
    assert labels[keys.LABEL_COUNT] == str(len(gpus))
    for v in labels.values():
        assert len(v) <= 63


# --- Model specs and fleet documents --------------------------------------------------------

# Python-only junk (YAML and the API client can hand us ints too long to print).
pyjunk = junk | st.sampled_from([10**5000, [10**5000], {"k": 10**5000}])

spec_like = st.fixed_dictionaries(
    {},
    optional={
        "backend": st.sampled_from(["ollama", "vllm", "mlc", "llama.cpp", "diffusers", "tgi"]) | pyjunk,
        "source": st.sampled_from(["ollama://llama3:8b", "HF://a/b", "s3://x", "HF://"]) | pyjunk,
        "gpu": st.fixed_dictionaries({}, optional={
            "vendor": st.sampled_from(["cpu", "nvidia", "AMD", "auto", "intel"]) | pyjunk,
            "count": st.integers(-1, 20) | pyjunk, "shared": st.sampled_from(["g", "Bad_"]) | pyjunk,
            "priority": st.integers(-2000, 2000) | pyjunk,
            "vramEstimateMB": st.integers(-1, 10**8) | pyjunk}) | pyjunk,
        "serverless": st.fixed_dictionaries({}, optional={
            "enabled": st.booleans() | pyjunk, "minReplicas": st.integers(-1, 3) | pyjunk,
            "idleTimeout": interesting_text | pyjunk, "coldStartTimeout": interesting_text | pyjunk}),
        "config": st.dictionaries(st.sampled_from(["jitPolicy", "x"]), pyjunk, max_size=2) | pyjunk,
        "nodeSelector": st.dictionaries(st.sampled_from([keys.LABEL_FAMILY, keys.LABEL_ARCH, "y"]),
                                        st.sampled_from(["maxwell", "sm_52", "sm_5", "sm_520", "sm_5x"])
                                        | interesting_text, max_size=2) | pyjunk,
        "serviceLabels": st.lists(st.sampled_from(["a", "b", "Bad label"]) | pyjunk, max_size=12) | pyjunk,
        "cache": pyjunk, "tolerations": pyjunk, "litellm": pyjunk, "resources": pyjunk,
        "bogus": pyjunk,
    },
)
model_like = st.one_of(
    st.fixed_dictionaries({"metadata": st.fixed_dictionaries(
        {"name": st.sampled_from(["m", "llama3-8b", "Bad", ""]) | pyjunk},
        optional={"generation": pyjunk, "annotations": pyjunk, "namespace": pyjunk}) | pyjunk,
        "spec": spec_like | pyjunk},
        optional={"apiVersion": st.sampled_from([keys.MODEL_API_VERSION, "v1"]) | pyjunk,
                  "kind": st.sampled_from(["Model", "Pod"]) | pyjunk, "status": pyjunk}),
    json_like,
)


@FUZZ
@given(model_like)
def test_fuzz_parse_model(obj: Any) -> None:
    try:
        m = parse_model(obj)
    except ValidationError as e:  # names a field, says what is wrong
        assert e.field and e.message.strip() and str(e).startswith(e.field + ": ")
        return
    except ParseError as e:
        assert str(e).strip()
        return
    if m is not None:
        # derived values used by the controller and extender must not blow up on an accepted model
        assert m.backend in BACKENDS
        assert m.idle_timeout_seconds >= 0 and m.cold_start_timeout_seconds >= 0
        assert m.gpu_count >= 0 and m.min_replicas in (0, 1)
        assert isinstance(m.jit_policy, str) and m.vendor in ("auto", "nvidia", "amd", "cpu")


fleet_gpu = st.fixed_dictionaries(
    {"vendor": st.sampled_from(["nvidia", "amd", "intel", "ati"]) | pyjunk,
     "arch": st.sampled_from(["sm_52", "gfx1100", "gfx", "xe"]) | pyjunk},
    optional={"totalMiB": st.integers(-5, 2**70) | pyjunk, "usedMiB": st.integers(-5, 10**6) | pyjunk,
              "healthy": pyjunk, "faults": st.lists(st.fixed_dictionaries(
                  {"type": st.sampled_from(["noise", "xid", "meteor"]) | pyjunk},
                  optional={"atSample": pyjunk, "mib": pyjunk}), max_size=2) | pyjunk,
              "pcie": pyjunk, "unifiedMemory": pyjunk, "product": pyjunk},
)
fleet_like = st.one_of(
    st.fixed_dictionaries({"nodes": st.lists(st.fixed_dictionaries(
        {"name": st.sampled_from(["a", "b", ""]) | pyjunk},
        optional={"gpus": st.lists(fleet_gpu, max_size=3) | pyjunk, "labels": pyjunk, "taints": pyjunk,
                  "faults": pyjunk}), max_size=4) | pyjunk},
        optional={"apiVersion": pyjunk, "kind": pyjunk, "extra": pyjunk}),
    json_like,
)


@FUZZ
@given(fleet_like)
def test_fuzz_parse_fleet(data: Any) -> None:
    try:
        fleet = parse_fleet(data, "fuzz-fleet")
    except ParseError as e:
        assert str(e).startswith("fuzz-fleet") and e.expected  # names the source and the path
        return
    if fleet is not None:
        assert len({n.name for n in fleet.nodes}) == len(fleet.nodes)
        for n in fleet.nodes:
            for g in n.gpus:
                arch_info(g.vendor, g.arch)
                assert 0 <= g.used_mib <= g.total_mib
