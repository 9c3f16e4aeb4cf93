"""Backend x architecture compatibility: one table of data, one function that reads it.

Sources are in reference.md section 6.3 (vLLM docs and CMake arch lists, llama.cpp CMake,
Ollama docs/gpu.mdx, MLC-LLM install docs, PyTorch wheel arch lists for diffusers/ComfyUI).

Verdicts:
* SUPPORTED: officially listed.
* DEGRADED: runs only through a custom build, an override, Vulkan or an older wheel. The extender
  accepts the node but scores it lower; preflight reports WARN.
* UNSUPPORTED: will not run. The extender puts the node in FailedAndUnresolvableNodes (preemption
  cannot fix an architecture) and preflight reports BLOCK.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from flexinfer.arch import AMD, INTEL, NONE, NVIDIA, ArchInfo
from flexinfer.errors import ParseError, text_of


class Verdict(enum.StrEnum):
    SUPPORTED = "supported"
    DEGRADED = "degraded"
    UNSUPPORTED = "unsupported"


@dataclass(frozen=True, slots=True)
class Compat:
    verdict: Verdict
    reason: str  # human text; empty when SUPPORTED without caveats

    @property
    def ok(self) -> bool:
        return self.verdict is not Verdict.UNSUPPORTED


# Canonical backend names and their aliases (resolved here and nowhere else).
BACKENDS = ("vllm", "vllm-omni", "llamacpp", "ollama", "mlc-llm", "diffusers", "comfyui")
ALIASES = {"llama.cpp": "llamacpp", "llama-cpp": "llamacpp", "mlc": "mlc-llm", "mlcllm": "mlc-llm",
           "vllm_omni": "vllm-omni"}


def canonical_backend(name: str) -> str:
    b = text_of(name).strip().lower()
    b = ALIASES.get(b, b)
    if b not in BACKENDS:
        raise ParseError("backend", name, "one of " + ", ".join(BACKENDS) + " (aliases: mlc, llama.cpp)")
    return b


@dataclass(frozen=True, slots=True)
class NvidiaRule:
    min_cc: tuple[int, int]  # below: UNSUPPORTED
    supported_cc: tuple[int, int]  # below this but >= min_cc: DEGRADED
    degraded_reason: str = ""
    maxwell_readonly_ok: bool = False  # mlc-llm: Maxwell only with a precompiled library
    explicit_no: dict[str, str] = field(default_factory=dict)  # family -> reason


@dataclass(frozen=True, slots=True)
class AmdRule:
    supported: frozenset[str]
    degraded: frozenset[str] = frozenset()
    degraded_reason: str = ""
    any_gfx: bool = False  # compiled per target (llama.cpp HIP/Vulkan, MLC TVM): every known gfx works
    explicit_no: dict[str, str] = field(default_factory=dict)  # gfx -> reason


@dataclass(frozen=True, slots=True)
class BackendRule:
    nvidia: NvidiaRule | None
    amd: AmdRule | None
    intel_reason: str  # why Intel is not SUPPORTED
    intel_degraded: bool = False
    cpu_ok: bool = True  # can run on a CPU-only node (vendor cpu models)


_VLLM_AMD = frozenset({"gfx90a", "gfx942", "gfx950", "gfx1100", "gfx1101", "gfx1150", "gfx1151", "gfx1200",
                       "gfx1201"})
_VLLM_AMD_BUILD = frozenset({"gfx906", "gfx908", "gfx1030", "gfx1102", "gfx1103", "gfx1152", "gfx1153"})
_TORCH_ROCM = frozenset({"gfx900", "gfx906", "gfx908", "gfx90a", "gfx942", "gfx950", "gfx1030", "gfx1100",
                         "gfx1101", "gfx1102", "gfx1200", "gfx1201"})
_TORCH_ROCM_NEWER = frozenset({"gfx1103", "gfx1150", "gfx1151"})
_OLLAMA_AMD = frozenset({"gfx908", "gfx90a", "gfx942", "gfx950", "gfx1010", "gfx1012", "gfx1030", "gfx1100",
                         "gfx1101", "gfx1102", "gfx1103", "gfx1150", "gfx1151", "gfx1200", "gfx1201"})
_GFX906_OLLAMA = ("ollama's ROCm build does not list gfx906 (Radeon VII / MI50); "
                  "use llama.cpp with Vulkan instead")

_VLLM = BackendRule(
    nvidia=NvidiaRule(
        min_cc=(7, 5), supported_cc=(7, 5),
        explicit_no={"maxwell": "vllm does not run on maxwell {arch}",
                     "pascal": "vllm needs compute capability >= 7.5; pascal {arch} is {cc}",
                     "volta": "vllm needs compute capability >= 7.5; volta {arch} is {cc} (dropped from wheels)"},
    ),
    amd=AmdRule(supported=_VLLM_AMD, degraded=frozenset(), explicit_no={
        g: f"vllm does not list {g} for ROCm (it only compiles from source)" for g in _VLLM_AMD_BUILD}),
    intel_reason="vllm GPU images target CUDA and ROCm only",
    cpu_ok=False,
)

_TORCH = dict(
    nvidia=NvidiaRule(
        min_cc=(6, 0), supported_cc=(7, 5),
        degraded_reason="needs a cu126 PyTorch build (cu128+ wheels start at compute capability 7.5)",
        explicit_no={"maxwell": "{backend} does not run on maxwell {arch} (current PyTorch wheels need sm_75+)"},
    ),
    amd=AmdRule(supported=_TORCH_ROCM, degraded=_TORCH_ROCM_NEWER,
                degraded_reason="only in newer PyTorch ROCm wheels"),
    intel_reason="PyTorch XPU builds are not in the backend image",
    cpu_ok=True,
)

RULES: dict[str, BackendRule] = {
    "vllm": _VLLM,
    "vllm-omni": BackendRule(
        nvidia=NvidiaRule(min_cc=(7, 5), supported_cc=(7, 5), explicit_no={
            "maxwell": "vllm-omni does not run on maxwell {arch}",
            "pascal": "vllm-omni needs compute capability >= 7.5; pascal {arch} is {cc}",
            "volta": "vllm-omni needs compute capability >= 7.5; volta {arch} is {cc}"}),
        amd=AmdRule(supported=_VLLM_AMD, explicit_no={
            g: f"vllm-omni does not list {g} for ROCm" for g in _VLLM_AMD_BUILD}),
        intel_reason="vllm-omni targets CUDA and ROCm only",
        cpu_ok=False,
    ),
    "diffusers": BackendRule(**_TORCH),  # type: ignore[arg-type]
    "comfyui": BackendRule(**_TORCH),  # type: ignore[arg-type]
    "llamacpp": BackendRule(
        nvidia=NvidiaRule(min_cc=(5, 0), supported_cc=(5, 0)),
        amd=AmdRule(supported=frozenset(), any_gfx=True),
        intel_reason="llama.cpp runs on Intel through SYCL/Vulkan builds only",
        intel_degraded=True,
    ),
    "ollama": BackendRule(
        nvidia=NvidiaRule(min_cc=(5, 0), supported_cc=(7, 0),
                          degraded_reason="compute capability 5.0-6.2 needs NVIDIA driver >= 570"),
        amd=AmdRule(supported=_OLLAMA_AMD, explicit_no={"gfx906": _GFX906_OLLAMA},
                    degraded=frozenset({"gfx1031", "gfx1032", "gfx1034", "gfx1035", "gfx1036"}),
                    degraded_reason="needs HSA_OVERRIDE_GFX_VERSION=10.3.0 or the Vulkan backend"),
        intel_reason="ollama runs on Intel only through the Vulkan backend",
        intel_degraded=True,
    ),
    "mlc-llm": BackendRule(
        nvidia=NvidiaRule(min_cc=(5, 0), supported_cc=(7, 5), maxwell_readonly_ok=True,
                          degraded_reason="no prebuilt CUDA wheel below sm_75; runs through Vulkan"),
        amd=AmdRule(supported=frozenset(), any_gfx=True),
        intel_reason="mlc-llm runs on Intel only through Vulkan",
        intel_degraded=True,
    ),
}


def check(backend: str, arch: ArchInfo, *, jit_policy: str = "") -> Compat:
    """Can `backend` run on a GPU of architecture `arch`? Pure; every "no" has a reason."""
    b = canonical_backend(backend)
    rule = RULES[b]
    if arch.vendor == NONE:
        if rule.cpu_ok:
            return Compat(Verdict.SUPPORTED, "")
        return Compat(Verdict.UNSUPPORTED, f"{b} needs a GPU")
    if arch.vendor == NVIDIA:
        return _check_nvidia(b, rule.nvidia, arch, jit_policy)
    if arch.vendor == AMD:
        return _check_amd(b, rule.amd, arch)
    if arch.vendor == INTEL:
        if rule.intel_degraded:
            return Compat(Verdict.DEGRADED, rule.intel_reason)
        return Compat(Verdict.UNSUPPORTED, rule.intel_reason)
    return Compat(Verdict.UNSUPPORTED, f"unknown GPU vendor {arch.vendor}")


def _check_nvidia(b: str, rule: NvidiaRule | None, arch: ArchInfo, jit_policy: str) -> Compat:
    where = f"{arch.family} {arch.arch}"
    if rule is None:
        return Compat(Verdict.UNSUPPORTED, f"{b} does not run on NVIDIA GPUs")
    cc = arch.cc or (0, 0)
    if arch.family == "maxwell" and rule.maxwell_readonly_ok:
        if jit_policy.upper() == "READONLY":
            return Compat(Verdict.DEGRADED, f"{b} on {where} runs only a precompiled library (FP32)")
        return Compat(Verdict.UNSUPPORTED,
                      f"{b} on {where} needs a precompiled library (set spec.config.jitPolicy: READONLY)")
    if arch.family in rule.explicit_no:
        text = rule.explicit_no[arch.family].format(backend=b, arch=arch.arch, cc=arch.compute)
        return Compat(Verdict.UNSUPPORTED, text)
    if not arch.known:
        return Compat(Verdict.DEGRADED, f"{b} support for {arch.arch} (family {arch.family}) is unknown")
    if cc < rule.min_cc:
        need = f"{rule.min_cc[0]}.{rule.min_cc[1]}"
        return Compat(Verdict.UNSUPPORTED, f"{b} needs compute capability >= {need}; {where} is {arch.compute}")
    if cc < rule.supported_cc:
        return Compat(Verdict.DEGRADED, f"{b} on {where}: {rule.degraded_reason}")
    return Compat(Verdict.SUPPORTED, "")


def _check_amd(b: str, rule: AmdRule | None, arch: ArchInfo) -> Compat:
    if rule is None:
        return Compat(Verdict.UNSUPPORTED, f"{b} does not run on AMD GPUs")
    g = arch.arch
    if g in rule.explicit_no:
        return Compat(Verdict.UNSUPPORTED, rule.explicit_no[g])
    if g in rule.supported or (rule.any_gfx and arch.known):
        return Compat(Verdict.SUPPORTED, "")
    if g in rule.degraded:
        return Compat(Verdict.DEGRADED, f"{b} on {g}: {rule.degraded_reason}")
    if rule.any_gfx:
        return Compat(Verdict.DEGRADED, f"{b} support for {g} is unknown (not in the architecture table)")
    listed = ", ".join(sorted(rule.supported))
    return Compat(Verdict.UNSUPPORTED, f"{b} does not support {g} (supported: {listed})")
