"""Compatibility rule types: how one backend's support is described per GPU vendor (data only).

A backend's entry in the registry (:mod:`flexinfer.backends`) carries one :class:`BackendRule`;
:func:`flexinfer.compat.check` reads it (the sources of the facts are named in :mod:`flexinfer.compat`).

Adding a GPU vendor: add a rule type here (like :class:`AmdRule`), a field for it on
:class:`BackendRule`, a checker in :data:`flexinfer.compat.VENDOR_CHECKS`, and the vendor's image
in each registry entry that runs there (a test checks every backend has a rule and an image per vendor).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class NvidiaRule:
    min_cc: tuple[int, int]  # below: UNSUPPORTED
    supported_cc: tuple[int, int]  # below this but >= min_cc: DEGRADED
    degraded_reason: str = ""
    maxwell_readonly_ok: bool = False  # mlc-llm: Maxwell only with a precompiled library
    explicit_no: dict[str, str] = field(default_factory=dict)  # family -> reason
    # The DEGRADED range runs only with an NVIDIA driver of at least this major version (0: no such
    # requirement). Preflight decides it from the node's flexinfer.ai/gpu.driver-version.major label.
    degraded_min_driver: int = 0


@dataclass(frozen=True, slots=True)
class AmdRule:
    supported: frozenset[str]
    degraded: frozenset[str] = frozenset()
    degraded_reason: str = ""
    any_gfx: bool = False  # compiled per target (llama.cpp HIP/Vulkan, MLC TVM): every known gfx works
    explicit_no: dict[str, str] = field(default_factory=dict)  # gfx -> reason


@dataclass(frozen=True, slots=True)
class IntelRule:
    """Per Intel platform (flexinfer.arch.INTEL_PLATFORMS: dg2, bmg, pvc, mtl, arl, lnl)."""

    supported: frozenset[str]  # platforms the backend's Intel image runs on natively (SYCL / oneAPI)
    degraded_reason: str  # every other Intel GPU: why it only runs another way (Vulkan)


@dataclass(frozen=True, slots=True)
class BackendRule:
    nvidia: NvidiaRule | None
    amd: AmdRule | None
    intel_reason: str  # why Intel is not SUPPORTED (when there is no `intel` rule, for every Intel GPU)
    intel_degraded: bool = False
    cpu_ok: bool = True  # can run on a CPU-only node (vendor cpu models)
    intel: IntelRule | None = None  # per-platform Intel support; None: `intel_reason` / `intel_degraded` decide


# Architecture lists shared by several backends.
VLLM_AMD = frozenset({"gfx90a", "gfx942", "gfx950", "gfx1100", "gfx1101", "gfx1150", "gfx1151", "gfx1200",
                      "gfx1201"})
VLLM_AMD_BUILD = frozenset({"gfx906", "gfx908", "gfx1030", "gfx1102", "gfx1103", "gfx1152", "gfx1153"})
TORCH_ROCM = frozenset({"gfx900", "gfx906", "gfx908", "gfx90a", "gfx942", "gfx950", "gfx1030", "gfx1100",
                        "gfx1101", "gfx1102", "gfx1200", "gfx1201"})
TORCH_ROCM_NEWER = frozenset({"gfx1103", "gfx1150", "gfx1151"})
OLLAMA_AMD = frozenset({"gfx908", "gfx90a", "gfx942", "gfx950", "gfx1010", "gfx1012", "gfx1030", "gfx1100",
                        "gfx1101", "gfx1102", "gfx1103", "gfx1150", "gfx1151", "gfx1200", "gfx1201"})
# Intel platforms llama.cpp's SYCL (oneAPI) build supports: Arc A/B, Data Center Flex and Max, Core Ultra iGPUs.
INTEL_SYCL = frozenset({"dg2", "bmg", "pvc", "mtl", "arl", "lnl"})
GFX906_OLLAMA = ("ollama's ROCm build does not list gfx906 (Radeon VII / MI50); "
                 "use llama.cpp with Vulkan instead")


def torch_rule() -> BackendRule:
    """PyTorch-wheel backends (diffusers, ComfyUI): support follows the PyTorch CUDA/ROCm wheels."""
    return BackendRule(
        nvidia=NvidiaRule(
            min_cc=(6, 0), supported_cc=(7, 5),
            degraded_reason="needs a cu126 PyTorch build (cu128+ wheels start at compute capability 7.5)",
            explicit_no={"maxwell": "{backend} does not run on maxwell {arch} (current PyTorch wheels need sm_75+)"},
        ),
        amd=AmdRule(supported=TORCH_ROCM, degraded=TORCH_ROCM_NEWER,
                    degraded_reason="only in newer PyTorch ROCm wheels"),
        intel_reason="PyTorch XPU builds are not in the backend image",
        cpu_ok=True,
    )
