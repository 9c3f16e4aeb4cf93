"""VRAM estimator: how many MiB one replica needs on each GPU.

    total_MiB = weights_MiB + kv_cache_MiB + overhead_MiB                         (per GPU: / count)

    weights_MiB  = params * bits_per_weight / 8 / 2^20     (or the exact weights file size if known)
    kv_cache_MiB = 2 (K and V) * attention_layers * kv_heads * head_dim * context_tokens
                   * parallel_sequences * bytes_per_kv_element / 2^20
    overhead_MiB = runtime_base_MiB (CUDA/ROCm context, allocator, backend code) +
                   compute_buffer_MiB (activations: 0.5 MiB per 1024 context tokens, at least 256)
                   + 3 % of the weights (allocator fragmentation, embeddings kept in higher precision)

bits_per_weight are the effective sizes of each quantization including block scales (Q4_K_M
~4.85 bpw, q4f16_1 4.5, AWQ/GPTQ 4-bit with group size 128 ~4.25). When the model architecture
(layers, KV heads, head dim, how many layers use full attention) is not given, it is inferred from
the parameter count with a table of common dense GQA models (Llama 3, Qwen 2.5/3): 8 KV heads
of dim 128 and a layer count that grows with size. MoE models ("35B-A3B") store all experts, so
weights use the total parameter count; their KV cache is inferred as 48 layers x 4 KV heads
(Qwen3-30B-A3B-like) unless given.

vLLM preallocates `gpu_memory_utilization` (0.9 by default) of the card whatever the model
needs; the estimate here is the model's real need, which is what must fit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from flexinfer import backends
from flexinfer.errors import ParseError, text_of

MIB = 1024 * 1024

# Effective bits per weight, including scales/zero points.
BITS_PER_WEIGHT: dict[str, float] = {
    "f32": 32.0, "fp32": 32.0, "float32": 32.0,
    "f16": 16.0, "fp16": 16.0, "float16": 16.0, "half": 16.0,
    "bf16": 16.0, "bfloat16": 16.0,
    "fp8": 8.0, "f8": 8.0, "fp8_e4m3": 8.0, "int8": 8.0, "w8a8": 8.0,
    "q8_0": 8.5, "q6_k": 6.56, "q5_k_m": 5.69, "q5_k_s": 5.54, "q5_0": 5.5,
    "q4_k_m": 4.85, "q4_k_s": 4.58, "q4_0": 4.5, "q4_1": 5.0, "iq4_xs": 4.25, "iq4_nl": 4.5,
    "q3_k_m": 3.91, "q3_k_l": 4.27, "q3_k_s": 3.5, "q2_k": 3.35, "iq2_xxs": 2.06, "iq3_xxs": 3.06,
    "awq": 4.25, "gptq": 4.25, "int4": 4.25, "w4a16": 4.25, "nvfp4": 4.5, "mxfp4": 4.25,
    "q4f16_1": 4.5, "q4f32_1": 4.5, "q4f16_0": 4.5, "q3f16_1": 3.5, "q0f16": 16.0, "q0f32": 32.0,
}

# Bytes per K/V element.
KV_BYTES: dict[str, float] = {
    "f32": 4.0, "fp32": 4.0, "f16": 2.0, "fp16": 2.0, "bf16": 2.0, "auto": 2.0,
    "fp8": 1.0, "fp8_e4m3": 1.0, "fp8_e5m2": 1.0, "q8_0": 34 / 32, "q5_0": 22 / 32, "q5_1": 24 / 32,
    "q4_0": 18 / 32, "q4_1": 20 / 32, "iq4_nl": 18 / 32,
}

# Runtime base per backend (CUDA/ROCm context + backend code + allocator slack): declared in the backend
# registry; this is a read-only view of it. An unknown backend is an error, never a silent default.
RUNTIME_BASE_MIB: Mapping[str, int] = MappingProxyType(
    {b.name: b.runtime_base_mib for b in backends.REGISTRY.values()})

# (max params in billions, layers) for dense GQA models with 8 KV heads of dim 128.
_LAYER_TABLE = ((1.0, 16), (2.0, 28), (4.5, 36), (9.0, 32), (15.0, 40), (24.0, 48), (40.0, 64), (80.0, 80),
                (150.0, 88), (1e9, 96))

_PARAMS_RE = re.compile(r"(?<![a-z0-9.])(\d+(?:\.\d+)?)\s*([bm])(?![a-z])", re.IGNORECASE)
_ACTIVE_RE = re.compile(r"a(\d+(?:\.\d+)?)b", re.IGNORECASE)


def normalize_quant(q: str) -> str:
    s = text_of(q).strip().lower().replace("-", "_")
    s = s.removeprefix("ud_")
    if s in BITS_PER_WEIGHT:
        return s
    raise ParseError("quantization", q, "one of " + ", ".join(sorted(BITS_PER_WEIGHT)))


def normalize_kv_dtype(d: str) -> str:
    s = text_of(d).strip().lower().replace("-", "_")
    if s in KV_BYTES:
        return s
    raise ParseError("KV cache dtype", d, "one of " + ", ".join(sorted(KV_BYTES)))


@dataclass(frozen=True, slots=True)
class EstimateInput:
    params_b: float  # total parameters, billions
    active_params_b: float | None = None  # MoE: parameters active per token ("A3B")
    quant: str = "fp16"
    context_tokens: int = 4096
    kv_cache_dtype: str = "f16"
    backend: str = "llamacpp"
    parallel: int = 1  # concurrent sequences holding a KV cache
    gpu_count: int = 1
    layers: int | None = None
    attention_layers: int | None = None  # layers with a full-attention KV cache (hybrid models)
    kv_heads: int | None = None
    head_dim: int | None = None
    weights_bytes: int | None = None  # exact file size when known (GGUF)


@dataclass(frozen=True, slots=True)
class Estimate:
    weights_mib: int
    kv_cache_mib: int
    overhead_mib: int
    total_mib: int
    per_gpu_mib: int
    notes: tuple[str, ...] = field(default_factory=tuple)

    def breakdown(self) -> str:
        return (f"weights {self.weights_mib} MiB + KV cache {self.kv_cache_mib} MiB + overhead "
                f"{self.overhead_mib} MiB = {self.total_mib} MiB")


def default_layers(params_b: float) -> int:
    for limit, layers in _LAYER_TABLE:
        if params_b <= limit:
            return layers
    return _LAYER_TABLE[-1][1]


def estimate(inp: EstimateInput) -> Estimate:
    if not (0 < inp.params_b < 10_000):
        raise ParseError("parameter count", inp.params_b, "0 < billions < 10000")
    if not (1 <= inp.context_tokens <= 10_000_000):
        raise ParseError("context length", inp.context_tokens, "1 to 10,000,000 tokens")
    if not (1 <= inp.gpu_count <= 64) or not (1 <= inp.parallel <= 1024):
        raise ParseError("gpu count / parallel", (inp.gpu_count, inp.parallel), "1-64 GPUs, 1-1024 sequences")
    hints = (inp.layers, inp.attention_layers, inp.kv_heads, inp.head_dim, inp.weights_bytes)
    if any(h is not None and not h >= 0 for h in hints) or (inp.active_params_b is not None
                                                             and not inp.active_params_b >= 0):
        raise ParseError("model architecture hints", hints, "non-negative layers, KV heads, head dim, file size")
    notes: list[str] = []
    bpw = BITS_PER_WEIGHT[normalize_quant(inp.quant)]
    if inp.weights_bytes:
        weights = inp.weights_bytes / MIB
        notes.append("weights from file size")
    else:
        weights = inp.params_b * 1e9 * bpw / 8 / MIB
    moe = inp.active_params_b is not None and inp.active_params_b < inp.params_b
    layers = inp.layers or (48 if moe else default_layers(inp.params_b))
    attn_layers = inp.attention_layers or layers
    kv_heads = inp.kv_heads or (4 if moe else 8)
    head_dim = inp.head_dim or 128
    if inp.layers is None:
        notes.append(f"architecture inferred: {layers} layers, {kv_heads} KV heads x {head_dim}")
    kv_bytes = KV_BYTES[normalize_kv_dtype(inp.kv_cache_dtype)]
    kv = 2 * attn_layers * kv_heads * head_dim * inp.context_tokens * inp.parallel * kv_bytes / MIB
    backend = backends.get(inp.backend)  # ParseError for an unknown backend
    base = backend.runtime_base_mib
    compute = max(256.0, inp.context_tokens / 1024 * 0.5 * inp.parallel)
    overhead = base * inp.gpu_count + compute + 0.03 * weights
    w, k, o = math.ceil(weights), math.ceil(kv), math.ceil(overhead)
    total = w + k + o
    if backend.preallocates_fraction:
        notes.append(f"vLLM preallocates gpu_memory_utilization ({backend.preallocates_fraction}) of each GPU "
                     "at start")
    return Estimate(w, k, o, total, math.ceil(total / inp.gpu_count), tuple(notes))


def parse_params_from_name(text: str) -> tuple[float, float | None] | None:
    """'Qwen3.6-35B-A3B-UD-Q4_K_M' -> (35.0, 3.0); 'llama3:8b' -> (8.0, None); no size -> None."""
    s = text_of(text).replace("_", "-")
    active = _ACTIVE_RE.search(s)
    cleaned = _ACTIVE_RE.sub("", s)
    best: float | None = None
    for m in _PARAMS_RE.finditer(cleaned):
        value = float(m.group(1)) / (1000 if m.group(2).lower() == "m" else 1)
        best = value if best is None else max(best, value)
    if best is None:
        return None
    return best, float(active.group(1)) if active else None


def guess_quant(text: str, backend: str) -> str:
    """Find a quantization tag in a model source/name, else the backend's usual default."""
    s = text_of(text).lower().replace("-", "_")
    for q in sorted(BITS_PER_WEIGHT, key=len, reverse=True):
        if re.search(rf"(?<![a-z0-9]){re.escape(q)}(?![a-z0-9])", s):
            return q
    try:
        return backends.get(backend).default_quant
    except ParseError:
        return "fp16"  # an unknown backend is reported where it is validated, not here
