"""flexinfer.compat: every compatibility rule of issue 2 / docs/backend-compatibility.md, plus a full matrix
invariant."""

from __future__ import annotations

import itertools

import pytest

from flexinfer.arch import ArchInfo, amd_arch, arch_info, nvidia_arch
from flexinfer.compat import ALIASES, BACKENDS, Compat, Verdict, canonical_backend, check
from flexinfer.errors import ParseError

S, D, U = Verdict.SUPPORTED, Verdict.DEGRADED, Verdict.UNSUPPORTED

MAXWELLS = ["sm_50", "sm_52", "sm_53"]


def nv(sm: str) -> ArchInfo:
    return arch_info("nvidia", sm)


@pytest.mark.parametrize("backend", ["vllm", "vllm-omni", "diffusers", "comfyui"])
@pytest.mark.parametrize("sm", MAXWELLS)
def test_gpu_python_backends_rejected_on_maxwell(backend: str, sm: str) -> None:
    c = check(backend, nv(sm))
    assert c.verdict is U and not c.ok
    assert "maxwell" in c.reason.lower()
    assert sm in c.reason


@pytest.mark.parametrize("backend", ["vllm", "vllm-omni", "diffusers"])
def test_readonly_does_not_rescue_pytorch_backends_on_maxwell(backend: str) -> None:
    assert check(backend, nv("sm_52"), jit_policy="READONLY").verdict is U


@pytest.mark.parametrize(("sm", "verdict"), [
    ("sm_10", U), ("sm_30", U), ("sm_37", U), ("sm_52", U), ("sm_61", U), ("sm_70", U), ("sm_72", U),
    ("sm_75", S), ("sm_80", S), ("sm_86", S), ("sm_87", S), ("sm_89", S), ("sm_90", S),
    ("sm_100", S), ("sm_103", S), ("sm_120", S), ("sm_121", S), ("sm_130", S),
])
@pytest.mark.parametrize("backend", ["vllm", "vllm-omni"])
def test_vllm_needs_cc_7_5(backend: str, sm: str, verdict: Verdict) -> None:
    c = check(backend, nv(sm))
    assert c.verdict is verdict, c
    if verdict is U:
        assert c.reason
        if sm not in MAXWELLS:
            assert "7.5" in c.reason
    else:
        assert c.reason == ""


def test_vllm_volta_reason_mentions_cc() -> None:
    c = check("vllm", nv("sm_70"))
    assert "7.5" in c.reason and "volta" in c.reason and "7.0" in c.reason


def test_vllm_on_undefined_family_is_degraded_with_reason() -> None:
    c = check("vllm", nv("sm_110"))  # Jetson Thor: GFD says "undefined"
    assert c.verdict is D and "unknown" in c.reason


@pytest.mark.parametrize(("gfx", "verdict"), [
    ("gfx900", U), ("gfx906", U), ("gfx908", U), ("gfx1030", U), ("gfx1102", U), ("gfx1103", U),
    ("gfx90a", S), ("gfx942", S), ("gfx950", S), ("gfx1100", S), ("gfx1101", S), ("gfx1150", S),
    ("gfx1151", S), ("gfx1200", S), ("gfx1201", S), ("gfx1300", U),
])
@pytest.mark.parametrize("backend", ["vllm", "vllm-omni"])
def test_vllm_needs_listed_gfx(backend: str, gfx: str, verdict: Verdict) -> None:
    c = check(backend, amd_arch(gfx))
    assert c.verdict is verdict, c
    assert bool(c.reason) is (verdict is not S)
    if verdict is U:
        assert gfx in c.reason


def test_vllm_gfx906_reason() -> None:
    c = check("vllm", amd_arch("gfx906"))
    assert c.verdict is U and "gfx906" in c.reason and "vllm" in c.reason


@pytest.mark.parametrize("sm", MAXWELLS)
@pytest.mark.parametrize("alias", ["mlc-llm", "mlc", "MLC", "mlcllm"])
def test_mlc_on_maxwell_needs_readonly(alias: str, sm: str) -> None:
    for policy in ("", "JIT", "ON", "readwrite", "READ-ONLY"):
        c = check(alias, nv(sm), jit_policy=policy)
        assert c.verdict is U, policy
        assert "jitPolicy" in c.reason and "READONLY" in c.reason
    for policy in ("READONLY", "readonly", "ReadOnly"):
        c = check(alias, nv(sm), jit_policy=policy)
        assert c.ok and c.verdict is D
        assert "precompiled" in c.reason


@pytest.mark.parametrize(("sm", "verdict"), [("sm_30", U), ("sm_61", D), ("sm_70", D), ("sm_75", S), ("sm_89", S),
                                             ("sm_120", S)])
def test_mlc_on_nvidia_outside_maxwell(sm: str, verdict: Verdict) -> None:
    assert check("mlc-llm", nv(sm)).verdict is verdict


@pytest.mark.parametrize("gfx", ["gfx906", "gfx1100", "gfx1151", "gfx942"])
def test_mlc_compiles_per_target_on_amd(gfx: str) -> None:
    assert check("mlc", amd_arch(gfx)).verdict is S
    unknown = check("mlc", amd_arch("gfx1300"))
    assert unknown.verdict is D and "gfx1300" in unknown.reason


def test_ollama_rejects_gfx906() -> None:
    c = check("ollama", amd_arch("gfx906"))
    assert c.verdict is U
    assert "gfx906" in c.reason and "ollama" in c.reason


@pytest.mark.parametrize(("gfx", "verdict"), [
    ("gfx908", S), ("gfx90a", S), ("gfx942", S), ("gfx950", S), ("gfx1010", S), ("gfx1012", S), ("gfx1030", S),
    ("gfx1100", S), ("gfx1101", S), ("gfx1102", S), ("gfx1103", S), ("gfx1150", S), ("gfx1151", S),
    ("gfx1200", S), ("gfx1201", S), ("gfx1031", D), ("gfx1032", D), ("gfx900", U), ("gfx1300", U),
])
def test_ollama_amd_list(gfx: str, verdict: Verdict) -> None:
    assert check("ollama", amd_arch(gfx)).verdict is verdict


@pytest.mark.parametrize(("sm", "verdict"), [("sm_30", U), ("sm_50", D), ("sm_52", D), ("sm_61", D), ("sm_70", S),
                                             ("sm_89", S), ("sm_120", S)])
def test_ollama_nvidia(sm: str, verdict: Verdict) -> None:
    c = check("ollama", nv(sm))
    assert c.verdict is verdict
    if verdict is D:
        assert "570" in c.reason


@pytest.mark.parametrize("alias", ["llamacpp", "llama.cpp", "llama-cpp", "LLAMA.CPP"])
@pytest.mark.parametrize("arch", [nvidia_arch(5, 2), nvidia_arch(5, 0), amd_arch("gfx906"), amd_arch("gfx1100"),
                                  amd_arch("gfx1151"), nvidia_arch(12, 0)])
def test_llamacpp_runs_on_maxwell_and_gfx906(alias: str, arch: ArchInfo) -> None:
    c = check(alias, arch)
    assert c.verdict is S and c.ok and c.reason == ""


def test_llamacpp_rejects_kepler() -> None:
    c = check("llama.cpp", nv("sm_35"))
    assert c.verdict is U and "5.0" in c.reason


@pytest.mark.parametrize(("sm", "verdict"), [("sm_61", D), ("sm_70", D), ("sm_75", S), ("sm_120", S)])
@pytest.mark.parametrize("backend", ["diffusers", "comfyui"])
def test_pytorch_backends_nvidia(backend: str, sm: str, verdict: Verdict) -> None:
    c = check(backend, nv(sm))
    assert c.verdict is verdict
    if verdict is D:
        assert "cu126" in c.reason


@pytest.mark.parametrize(("gfx", "verdict"), [("gfx906", S), ("gfx1100", S), ("gfx942", S), ("gfx1151", D),
                                              ("gfx1103", D), ("gfx1031", U)])
def test_diffusers_amd(gfx: str, verdict: Verdict) -> None:
    assert check("diffusers", amd_arch(gfx)).verdict is verdict


@pytest.mark.parametrize(("name", "canonical"), [
    ("vllm", "vllm"), ("VLLM", "vllm"), (" vllm ", "vllm"), ("vllm-omni", "vllm-omni"), ("vllm_omni", "vllm-omni"),
    ("llama.cpp", "llamacpp"), ("llama-cpp", "llamacpp"), ("llamacpp", "llamacpp"), ("ollama", "ollama"),
    ("Ollama", "ollama"), ("mlc", "mlc-llm"), ("mlc-llm", "mlc-llm"), ("mlcllm", "mlc-llm"),
    ("diffusers", "diffusers"), ("comfyui", "comfyui"), ("ComfyUI", "comfyui"),
])
def test_canonical_backend(name: str, canonical: str) -> None:
    assert canonical_backend(name) == canonical


def test_aliases_point_at_backends() -> None:
    assert set(ALIASES.values()) <= set(BACKENDS)
    assert not set(ALIASES) & set(BACKENDS)


@pytest.mark.parametrize("junk", ["", " ", "tgi", "sglang", "llama", "vllm2", "ollama://", "None"])
def test_unknown_backend(junk: str) -> None:
    with pytest.raises(ParseError, match="backend") as e:
        canonical_backend(junk)
    assert "mlc" in str(e.value) and "llama.cpp" in str(e.value)
    with pytest.raises(ParseError):
        check(junk, nv("sm_89"))


@pytest.mark.parametrize(("backend", "verdict"), [
    ("vllm", U), ("vllm-omni", U), ("llamacpp", S), ("ollama", S), ("mlc-llm", S), ("diffusers", S), ("comfyui", S),
])
def test_cpu_node(backend: str, verdict: Verdict) -> None:
    c = check(backend, arch_info("none", ""))
    assert c.verdict is verdict
    if verdict is U:
        assert "needs a GPU" in c.reason


@pytest.mark.parametrize(("backend", "verdict"), [
    ("vllm", U), ("vllm-omni", U), ("llamacpp", D), ("ollama", D), ("mlc-llm", D), ("diffusers", U), ("comfyui", U),
])
def test_intel(backend: str, verdict: Verdict) -> None:
    c = check(backend, arch_info("intel", "xe"))
    assert c.verdict is verdict and c.reason


def test_unknown_vendor_arch_info() -> None:
    c = check("llamacpp", ArchInfo("arm", "mali", "valhall"))
    assert c.verdict is U and "arm" in c.reason


def test_compat_ok_property() -> None:
    assert Compat(S, "").ok and Compat(D, "x").ok and not Compat(U, "x").ok


ALL_ARCHS = (
    [nvidia_arch(m, n) for m, n in [(1, 0), (2, 1), (3, 5), (5, 0), (5, 2), (5, 3), (6, 0), (6, 1), (7, 0), (7, 2),
                                    (7, 5), (8, 0), (8, 6), (8, 7), (8, 9), (9, 0), (10, 0), (10, 3), (11, 0),
                                    (12, 0), (12, 1), (13, 0), (14, 0)]]
    + [amd_arch(g) for g in ["gfx900", "gfx906", "gfx908", "gfx90a", "gfx940", "gfx942", "gfx950", "gfx1010",
                             "gfx1012", "gfx1030", "gfx1031", "gfx1032", "gfx1034", "gfx1100", "gfx1101",
                             "gfx1102", "gfx1103", "gfx1150", "gfx1151", "gfx1152", "gfx1153", "gfx1200",
                             "gfx1201", "gfx1300", "gfx9ff"]]
    + [arch_info("intel", "xe"), arch_info("none", ""), ArchInfo("weird", "x", "y")]
)
POLICIES = ["", "READONLY", "readonly", "JIT"]


@pytest.mark.parametrize("backend", list(BACKENDS) + list(ALIASES))
def test_matrix_every_no_has_a_reason(backend: str) -> None:
    seen = set()
    for arch, policy in itertools.product(ALL_ARCHS, POLICIES):
        c = check(backend, arch, jit_policy=policy)
        assert isinstance(c.verdict, Verdict)
        seen.add(c.verdict)
        if c.verdict is not S:
            assert c.reason.strip(), (backend, arch, policy)
            assert "{" not in c.reason, c.reason  # every template placeholder filled in
        assert c.ok is (c.verdict is not U)
    assert S in seen  # every backend runs somewhere


def test_matrix_is_deterministic() -> None:
    first = [check(b, a, jit_policy=p) for b in BACKENDS for a in ALL_ARCHS for p in POLICIES]
    second = [check(b, a, jit_policy=p) for b in BACKENDS for a in ALL_ARCHS for p in POLICIES]
    assert first == second
