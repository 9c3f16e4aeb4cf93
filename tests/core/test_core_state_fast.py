"""The fast paths of flexinfer.state / flexinfer.arch give exactly what the plain code gave.

`decode_state` builds GpuState through slot descriptors and memoised `arch_info`; `_reference_decode`
below is the straightforward version it replaced (GpuState(...), parse_mib, uncached arch parsing),
and every generated annotation, valid or junk, must give the same state or the same error text.
"""

from __future__ import annotations

import json
from dataclasses import replace

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flexinfer import keys
from flexinfer.arch import _arch_info, arch_info, normalize_vendor
from flexinfer.errors import ParseError
from flexinfer.state import (
    STATE_VERSION,
    GpuState,
    NodeGpuState,
    _decoder,
    decode_state,
    encode_state,
    node_view,
)
from flexinfer.units import parse_mib


def _reference_decode(node: str, raw: str, vendor_hint: str = "") -> NodeGpuState:
    what = f"annotation {keys.ANN_GPU_STATE}"
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
        try:
            info = _arch_info(w.v or vendor_hint, w.a)
            total = parse_mib(w.t, f"{what} gpu {w.i} total")
            free = parse_mib(w.f, f"{what} gpu {w.i} free")
        except ParseError as e:
            raise ParseError(what, raw, f"valid per-GPU fields ({e})") from None
        if w.i < 0:
            raise ParseError(what, raw, f"a non-negative GPU index (got {w.i})")
        if free > total:
            raise ParseError(what, raw, f"free <= total on gpu {w.i}")
        gpus.append(GpuState(index=w.i, uuid=w.u, vendor=info.vendor, arch=info.arch, total_mib=total,
                             free_mib=free, healthy=bool(w.h), reason=w.r, error_events=max(0, w.e),
                             last_error_unix=w.le, unified_memory=bool(w.m)))
    return NodeGpuState(node=node, gpus=tuple(gpus), observed_unix=wire.t)


def _outcome(fn, *args: object) -> tuple[str, object]:  # type: ignore[no-untyped-def]
    try:
        return "ok", fn(*args)
    except ParseError as e:
        return "error", str(e)


ARCHS = st.sampled_from(["sm_52", "sm_90", "SM_89", "sm_90a", "sm_5", "sm_\u0665\u0662", "gfx1100", "GFX90A",
                         "gfx1", "xe-hpg", "", "none", " sm_86 "])
VENDORS = st.sampled_from(["", "nvidia", "NVIDIA", "amd", "rocm", "intel", "none", "cpu", "bogus", " Nvidia "])
MIB = st.integers(min_value=-5, max_value=(1 << 40) + 5) | st.sampled_from([0, 1, 6144, 24576, 1 << 40, (1 << 40) + 1])
GPU = st.fixed_dictionaries(
    {"i": st.integers(-2, 16), "u": st.text(max_size=8), "a": ARCHS, "t": MIB, "f": MIB},
    optional={"h": st.integers(0, 1), "e": st.integers(-3, 9), "le": st.floats(0, 2e9), "r": st.text(max_size=8),
              "v": VENDORS, "m": st.integers(0, 1)},
)
DOCS = st.fixed_dictionaries({"v": st.sampled_from([1, 1, 1, 2]), "t": st.floats(0, 2e9),
                              "g": st.lists(GPU, max_size=4)})
RAWS = DOCS.map(json.dumps) | st.text(max_size=40) | st.just('{"v":1,"t":0,"g":[{}]}')


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=RAWS, hint=st.sampled_from(["", "nvidia", "amd", "intel"]))
def test_decode_state_matches_the_plain_implementation(raw: str, hint: str) -> None:
    got = _outcome(decode_state, "n1", raw, hint)
    assert got == _outcome(_reference_decode, "n1", raw, hint)
    if got[0] == "error":
        assert keys.ANN_GPU_STATE in str(got[1])  # junk still names the annotation


def test_decode_state_takes_agent_status() -> None:
    raw = encode_state(NodeGpuState("n", (GpuState(0, "GPU-1", "nvidia", "sm_89", 24576, 1000),), 5.0))
    assert decode_state("n", raw).agent_status == "ok"
    assert decode_state("n", raw, agent_status="nvml missing").agent_status == "nvml missing"


def test_node_view_status_matches_replace_on_decoded_state() -> None:
    raw = encode_state(NodeGpuState("n", (GpuState(0, "GPU-1", "amd", "gfx1100", 24560, 9000),), 7.0))
    for status in ("", "ok", "rocm-smi failed"):
        v = node_view("n", {keys.LABEL_VENDOR: "amd"}, {keys.ANN_GPU_STATE: raw, keys.ANN_AGENT_STATUS: status})
        assert v.state == replace(_reference_decode("n", raw, "amd"), agent_status=status or "ok")
        assert v.agent_status == status and v.error == ""


def test_arch_info_memo_returns_equal_results_and_still_raises_on_junk() -> None:
    assert arch_info("nvidia", "sm_89") is arch_info("nvidia", "sm_89")
    assert arch_info("NVIDIA", "SM_90A") == _arch_info("NVIDIA", "SM_90A")
    for _ in range(2):  # junk is never memoised: it raises the same text every time
        with pytest.raises(ParseError, match="NVIDIA arch"):
            arch_info("nvidia", "sm_5x")
    long_junk = "x" * 10_000  # too long to memoise: parsed, same answer
    assert arch_info("intel", long_junk) == _arch_info("intel", long_junk)


def test_normalize_vendor_fast_path_agrees() -> None:
    for v in ("nvidia", "amd", "rocm", "intel", "none", "cpu", "NVIDIA", " Amd ", "Cpu"):
        assert normalize_vendor(v) == normalize_vendor(f" {v.upper()} ")
    with pytest.raises(ParseError, match="GPU vendor"):
        normalize_vendor("bogus")
