"""The backend registry: every fact about a model-server backend, declared once per backend.

Each :class:`Backend` holds its name and aliases, its compatibility rule (read by
:func:`flexinfer.compat.check`), the runtime overhead the VRAM estimator adds
(:mod:`flexinfer.estimate`), and its container recipe (pinned images per GPU vendor, port, health
path, command/args/env, readiness command, /dev/shm size) used by the controller. The CRD's
``spec.backend`` enum and its Maxwell CEL rules are checked against this registry by
``tests/deploy/test_deploy_crd.py``.

Adding a backend: one ``Backend(...)`` entry below (plus its recipe function in
:mod:`flexinfer.backends.recipes`) and the CRD enum; the tests fail until the CRD agrees.

Images are pinned tags (never ``latest`` or a floating tag such as ``server-cuda``); operators pin
digests or use their own builds with ``flexinfer-controller --backend-image BACKEND[/VENDOR]=IMAGE``
(``IMAGE`` may be ``repo@sha256:...``). A Model's ``spec.image`` overrides the image for that Model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from flexinfer.errors import ParseError, text_of

from . import recipes
from .recipes import ReadyCommand, Recipe
from .rules import (
    GFX906_OLLAMA,
    INTEL_SYCL,
    OLLAMA_AMD,
    VLLM_AMD,
    VLLM_AMD_BUILD,
    AmdRule,
    BackendRule,
    IntelRule,
    NvidiaRule,
    torch_rule,
)

# Vendors a pod can be rendered for (the GPU resource it requests; cpu = none).
IMAGE_VENDORS = ("nvidia", "amd", "intel", "cpu")


@dataclass(frozen=True, slots=True)
class Backend:
    name: str
    aliases: tuple[str, ...]
    compat: BackendRule
    runtime_base_mib: int  # estimator: CUDA/ROCm context + backend code + allocator slack, per GPU
    port: int
    health_path: str
    images: Mapping[str, str]  # vendor (nvidia|amd|cpu) -> pinned image
    shm_mib: int  # /dev/shm (memory-backed emptyDir) for the server's worker processes
    recipe: Recipe = field(repr=False)
    ready_command: ReadyCommand | None = field(default=None, repr=False)
    default_quant: str = "fp16"  # the estimator's guess when the source names no quantization
    preallocates_fraction: float = 0.0  # vLLM reserves this share of each GPU at start, whatever it needs
    # How an HF:// source is prefetched into the cache PVC: "repo" (snapshot of the repo, filtered by
    # spec.config.hfAllowPatterns/hfIgnorePatterns), "gguf" (only spec.config.ggufFile + mmproj), "" (never).
    hf_prefetch: str = "repo"

    def image_for(self, vendor: str) -> str:
        """The vendor's image; without one, the CPU build (never another vendor's GPU build: a CUDA image on an
        Intel GPU would not use it, the CPU build at least runs), else the NVIDIA one as before."""
        return self.images.get(vendor) or (self.images.get("cpu") if vendor == "intel" else None) \
            or self.images["nvidia"]


_VLLM_RULE = BackendRule(
    nvidia=NvidiaRule(
        min_cc=(7, 5), supported_cc=(7, 5),
        explicit_no={"maxwell": "vllm does not run on maxwell {arch}",
                     "pascal": "vllm needs compute capability >= 7.5; pascal {arch} is {cc}",
                     "volta": "vllm needs compute capability >= 7.5; volta {arch} is {cc} (dropped from wheels)"},
    ),
    amd=AmdRule(supported=VLLM_AMD, degraded=frozenset(), explicit_no={
        g: f"vllm does not list {g} for ROCm (it only compiles from source)" for g in VLLM_AMD_BUILD}),
    intel_reason="vllm GPU images target CUDA and ROCm only",
    cpu_ok=False,
)

_VLLM_OMNI_RULE = BackendRule(
    nvidia=NvidiaRule(min_cc=(7, 5), supported_cc=(7, 5), explicit_no={
        "maxwell": "vllm-omni does not run on maxwell {arch}",
        "pascal": "vllm-omni needs compute capability >= 7.5; pascal {arch} is {cc}",
        "volta": "vllm-omni needs compute capability >= 7.5; volta {arch} is {cc}"}),
    amd=AmdRule(supported=VLLM_AMD, explicit_no={g: f"vllm-omni does not list {g} for ROCm" for g in VLLM_AMD_BUILD}),
    intel_reason="vllm-omni targets CUDA and ROCm only",
    cpu_ok=False,
)


def _images(**by_vendor: str) -> Mapping[str, str]:
    return MappingProxyType(dict(by_vendor))


# Declaration order is the order users see in messages ("one of vllm, vllm-omni, ...").
_ENTRIES = (
    Backend(
        name="vllm", aliases=(), compat=_VLLM_RULE, runtime_base_mib=1024, port=8000, health_path="/health",
        images=_images(nvidia="vllm/vllm-openai:v0.8.5", amd="rocm/vllm:rocm6.3.1_vllm_0.8.5_20250521"),
        shm_mib=8192, recipe=recipes.vllm, preallocates_fraction=0.9,
    ),
    Backend(
        name="vllm-omni", aliases=("vllm_omni",), compat=_VLLM_OMNI_RULE, runtime_base_mib=1024, port=8000,
        health_path="/health",
        images=_images(nvidia="vllm/vllm-omni:v0.16.0", amd="vllm/vllm-omni:v0.16.0-rocm"),
        shm_mib=8192, recipe=recipes.vllm, preallocates_fraction=0.9,
    ),
    Backend(
        name="llamacpp", aliases=("llama.cpp", "llama-cpp"),
        compat=BackendRule(
            nvidia=NvidiaRule(min_cc=(5, 0), supported_cc=(5, 0)),
            amd=AmdRule(supported=frozenset(), any_gfx=True),
            intel_reason="llama.cpp runs on Intel through SYCL/Vulkan builds only",
            intel_degraded=True,
            intel=IntelRule(supported=INTEL_SYCL, degraded_reason="llama.cpp's SYCL build does not list this Intel "
                            "GPU; its Vulkan build runs on any Intel GPU (set --backend-image llamacpp/intel=...)"),
        ),
        runtime_base_mib=300, port=8080, health_path="/health",
        images=_images(nvidia="ghcr.io/ggml-org/llama.cpp:server-cuda-b6000",
                       amd="ghcr.io/ggml-org/llama.cpp:server-rocm-b6000",
                       intel="ghcr.io/ggml-org/llama.cpp:server-intel-b6000",  # SYCL (oneAPI) build
                       cpu="ghcr.io/ggml-org/llama.cpp:server-b6000"),
        shm_mib=1024, recipe=recipes.llamacpp, default_quant="q4_k_m", hf_prefetch="gguf",
    ),
    Backend(
        name="ollama", aliases=(),
        compat=BackendRule(
            nvidia=NvidiaRule(min_cc=(5, 0), supported_cc=(7, 0),
                              degraded_reason="compute capability 5.0-6.2 needs NVIDIA driver >= 570",
                              degraded_min_driver=570),
            amd=AmdRule(supported=OLLAMA_AMD, explicit_no={"gfx906": GFX906_OLLAMA},
                        degraded=frozenset({"gfx1031", "gfx1032", "gfx1034", "gfx1035", "gfx1036"}),
                        degraded_reason="needs HSA_OVERRIDE_GFX_VERSION=10.3.0 or the Vulkan backend"),
            intel_reason="ollama runs on Intel GPUs only through its Intel builds (IPEX-LLM's Ollama) or its "
                         "Vulkan backend; the pinned image is the CPU build: set --backend-image ollama/intel=...",
            intel_degraded=True,
        ),
        runtime_base_mib=400, port=11434, health_path="/api/version",
        images=_images(nvidia="ollama/ollama:0.6.8", amd="ollama/ollama:0.6.8-rocm", cpu="ollama/ollama:0.6.8"),
        shm_mib=1024, recipe=recipes.ollama, ready_command=recipes.ollama_ready, default_quant="q4_k_m",
        hf_prefetch="",  # ollama pulls from its own registry (ollama:// sources are prefetched with ollama pull)
    ),
    Backend(
        name="mlc-llm", aliases=("mlc", "mlcllm"),
        compat=BackendRule(
            nvidia=NvidiaRule(min_cc=(5, 0), supported_cc=(7, 5), maxwell_readonly_ok=True,
                              degraded_reason="no prebuilt CUDA wheel below sm_75; runs through Vulkan"),
            amd=AmdRule(supported=frozenset(), any_gfx=True),
            intel_reason="mlc-llm runs on Intel only through Vulkan",
            intel_degraded=True,
        ),
        runtime_base_mib=400, port=8000, health_path="/v1/models",
        images=_images(nvidia="ghcr.io/flexinfer/mlc-llm:0.1.0-cuda", amd="ghcr.io/flexinfer/mlc-llm:0.1.0-rocm",
                       cpu="ghcr.io/flexinfer/mlc-llm:0.1.0-cpu"),
        shm_mib=2048, recipe=recipes.mlc, default_quant="q4f16_1",
    ),
    Backend(
        name="diffusers", aliases=(), compat=torch_rule(), runtime_base_mib=800, port=8000, health_path="/health",
        images=_images(nvidia="ghcr.io/flexinfer/diffusers:0.1.0-cuda", amd="ghcr.io/flexinfer/diffusers:0.1.0-rocm",
                       cpu="ghcr.io/flexinfer/diffusers:0.1.0-cpu"),
        shm_mib=4096, recipe=recipes.diffusers,
    ),
    Backend(
        name="comfyui", aliases=(), compat=torch_rule(), runtime_base_mib=800, port=8188,
        health_path="/system_stats",
        images=_images(nvidia="ghcr.io/flexinfer/comfyui:0.1.0-cuda", amd="ghcr.io/flexinfer/comfyui:0.1.0-rocm",
                       cpu="ghcr.io/flexinfer/comfyui:0.1.0-cpu"),
        shm_mib=4096, recipe=recipes.comfyui,
    ),
)

REGISTRY: Mapping[str, Backend] = MappingProxyType({b.name: b for b in _ENTRIES})
NAMES: tuple[str, ...] = tuple(REGISTRY)
ALIASES: Mapping[str, str] = MappingProxyType({a: b.name for b in _ENTRIES for a in b.aliases})


def _expected() -> str:
    return "one of " + ", ".join(NAMES) + " (aliases: " + ", ".join(ALIASES) + ")"


def canonical(name: object) -> str:
    """The canonical backend name for a name or alias (any letter case, surrounding blanks ignored)."""
    b = text_of(name).strip().lower()
    b = ALIASES.get(b, b)
    if b not in REGISTRY:
        raise ParseError("backend", name, _expected())
    return b


def get(name: object) -> Backend:
    """The registry entry for a name or alias; ParseError for an unknown backend."""
    return REGISTRY[canonical(name)]


# -- image references -------------------------------------------------------------------------------
_DIGEST_RE = re.compile(r"@sha256:[0-9a-f]{64}\Z")
_TAG_RE = re.compile(r":([A-Za-z0-9_][A-Za-z0-9_.-]{0,127})\Z")


def image_pin_problem(ref: str) -> str | None:
    """Why an image reference is not pinned (None when it is): a digest pins; a tag pins when it names a
    version (has a digit) and is not ``latest``. ``server-cuda`` or ``latest-rocm`` move under you."""
    ref = ref.strip()
    if not ref or any(c.isspace() for c in ref):
        return f"{ref!r} is not an image reference"
    if _DIGEST_RE.search(ref):
        return None
    last = ref.rsplit("/", 1)[-1]
    m = _TAG_RE.search(last)
    if m is None:
        return f"{ref} has no tag (that means :latest); pin a version tag or a digest"
    tag = m.group(1)
    if "latest" in tag.lower().split("-") or "latest" in tag.lower().split("_"):
        return f"{ref} uses a moving 'latest' tag; pin a version tag or a digest"
    if not any(c.isdigit() for c in tag):
        return f"{ref}: tag {tag!r} names no version (a moving tag); pin a version tag or a digest"
    return None


__all__ = ["ALIASES", "IMAGE_VENDORS", "NAMES", "REGISTRY", "Backend", "canonical", "get", "image_pin_problem"]
