"""flexinfer.estimate: the documented formula, published/observed figures, name parsing, junk."""

from __future__ import annotations

import math

import pytest

from flexinfer.errors import ParseError
from flexinfer.estimate import (
    BITS_PER_WEIGHT,
    KV_BYTES,
    MIB,
    RUNTIME_BASE_MIB,
    EstimateInput,
    default_layers,
    estimate,
    guess_quant,
    normalize_kv_dtype,
    normalize_quant,
    parse_params_from_name,
)

QWEN36_PEAK_MIB = 21648  # docs/homelab.md, the single-GPU lane: 21648 MiB peak on a 24 GB card
QWEN36 = dict(params_b=35.0, active_params_b=3.0, quant="Q4_K_M", context_tokens=49152, kv_cache_dtype="q8_0",
              backend="llamacpp", layers=40, attention_layers=10, kv_heads=2, head_dim=256)


def within(value: float, target: float, pct: float) -> bool:
    return abs(value - target) <= target * pct / 100


@pytest.mark.parametrize("weights_bytes", [None, 21 * 10**9], ids=["from-params", "from-21GB-file"])
def test_qwen36_35b_a3b_observed_peak(weights_bytes: int | None) -> None:
    e = estimate(EstimateInput(**QWEN36, weights_bytes=weights_bytes))  # type: ignore[arg-type]
    assert within(e.total_mib, QWEN36_PEAK_MIB, 5), e.breakdown()
    assert e.total_mib < 24 * 1024  # it fits the 24 GB card it ran on
    assert e.per_gpu_mib == e.total_mib
    # hybrid attention: only 10 of 40 layers hold a KV cache, 2 KV heads x 256, q8_0 = 34 bytes per 32 values
    assert e.kv_cache_mib == math.ceil(2 * 10 * 2 * 256 * 49152 * (34 / 32) / MIB) == 510
    if weights_bytes:
        assert "weights from file size" in e.notes
        assert e.weights_mib == math.ceil(weights_bytes / MIB)


def test_moe_defaults_without_hints() -> None:
    e = estimate(EstimateInput(params_b=35.0, active_params_b=3.0, quant="q4_k_m", context_tokens=49152,
                               kv_cache_dtype="q8_0"))
    assert any("48 layers, 4 KV heads" in n for n in e.notes)
    assert e.kv_cache_mib == math.ceil(2 * 48 * 4 * 128 * 49152 * (34 / 32) / MIB)
    assert e.weights_mib == math.ceil(35e9 * 4.85 / 8 / MIB)  # all experts are stored


def test_llama3_8b_bf16_weights() -> None:
    e = estimate(EstimateInput(params_b=8.03, quant="bf16", backend="vllm"))
    assert within(e.weights_mib, 15317, 3)
    assert any("gpu_memory_utilization" in n for n in e.notes)


def test_llama3_70b_q4_k_m_weights() -> None:
    e = estimate(EstimateInput(params_b=70.6, quant="Q4_K_M"))
    assert within(e.weights_mib, 42.5e9 / MIB, 3)


def test_kv_cache_exact_llama3_8b_fp16_8k() -> None:
    # 2 (K,V) x 32 layers x 8 KV heads x 128 dim x 8192 tokens x 2 bytes = 1 GiB
    e = estimate(EstimateInput(params_b=8.0, quant="fp16", context_tokens=8192, kv_cache_dtype="fp16", layers=32,
                               kv_heads=8, head_dim=128))
    assert e.kv_cache_mib == 1024
    inferred = estimate(EstimateInput(params_b=8.0, quant="fp16", context_tokens=8192))  # table: 8B = 32 layers
    assert inferred.kv_cache_mib == 1024


@pytest.mark.parametrize(("kv", "mib"), [("f32", 2048), ("f16", 1024), ("bf16", 1024), ("auto", 1024),
                                         ("fp8", 512), ("q8_0", 544), ("q4_0", 288)])
def test_kv_dtype_scales_cache(kv: str, mib: int) -> None:
    e = estimate(EstimateInput(params_b=8.0, context_tokens=8192, kv_cache_dtype=kv, layers=32))
    assert e.kv_cache_mib == mib


def test_formula_term_by_term() -> None:
    inp = EstimateInput(params_b=7.0, quant="q4_k_m", context_tokens=32768, kv_cache_dtype="f16", backend="ollama",
                        parallel=2, gpu_count=2, layers=28, kv_heads=4, head_dim=128)
    e = estimate(inp)
    weights = 7e9 * 4.85 / 8 / MIB
    kv = 2 * 28 * 4 * 128 * 32768 * 2 * 2.0 / MIB
    overhead = RUNTIME_BASE_MIB["ollama"] * 2 + max(256, 32768 / 1024 * 0.5 * 2) + 0.03 * weights
    assert (e.weights_mib, e.kv_cache_mib, e.overhead_mib) == (math.ceil(weights), math.ceil(kv),
                                                              math.ceil(overhead))
    assert e.total_mib == e.weights_mib + e.kv_cache_mib + e.overhead_mib
    assert e.per_gpu_mib == math.ceil(e.total_mib / 2)
    assert e.breakdown() == (f"weights {e.weights_mib} MiB + KV cache {e.kv_cache_mib} MiB + overhead "
                             f"{e.overhead_mib} MiB = {e.total_mib} MiB")


def test_long_context_compute_buffer() -> None:
    e = estimate(EstimateInput(params_b=1.0, context_tokens=1_048_576, layers=16, backend="diffusers"))
    assert e.overhead_mib == math.ceil(800 + 1_048_576 / 1024 * 0.5 + 0.03 * 1e9 * 16 / 8 / MIB)


def test_unknown_backend_is_an_error_not_a_default_overhead() -> None:
    """A backend missing from the registry used to get a silent 512 MiB runtime overhead."""
    with pytest.raises(ParseError, match="backend"):
        estimate(EstimateInput(params_b=1.0, backend="unknown-backend"))
    assert estimate(EstimateInput(params_b=1.0, backend="llama.cpp")).overhead_mib == \
        estimate(EstimateInput(params_b=1.0, backend="llamacpp")).overhead_mib  # aliases resolve


@pytest.mark.parametrize("quant", sorted(BITS_PER_WEIGHT))
def test_every_quant_is_monotone_in_bits(quant: str) -> None:
    e = estimate(EstimateInput(params_b=8.0, quant=quant))
    assert e.weights_mib == math.ceil(8e9 * BITS_PER_WEIGHT[quant] / 8 / MIB)
    assert normalize_quant(quant.upper().replace("_", "-")) == quant


def test_more_is_more() -> None:
    base = EstimateInput(params_b=8.0, quant="q4_k_m", context_tokens=8192)
    t = estimate(base).total_mib
    assert estimate(EstimateInput(params_b=8.0, quant="q8_0", context_tokens=8192)).total_mib > t
    assert estimate(EstimateInput(params_b=8.0, quant="q4_k_m", context_tokens=16384)).total_mib > t
    assert estimate(EstimateInput(params_b=14.0, quant="q4_k_m", context_tokens=8192)).total_mib > t
    assert estimate(EstimateInput(params_b=8.0, quant="q4_k_m", context_tokens=8192, parallel=4)).total_mib > t


@pytest.mark.parametrize(("params", "layers"), [(0.5, 16), (1.0, 16), (1.5, 28), (3.0, 36), (8.0, 32), (14.0, 40),
                                                (24.0, 48), (32.0, 64), (70.0, 80), (123.0, 88), (405.0, 96)])
def test_default_layers(params: float, layers: int) -> None:
    assert default_layers(params) == layers


@pytest.mark.parametrize(("name", "expected"), [
    ("Qwen3.6-35B-A3B-UD-Q4_K_M", (35.0, 3.0)),
    ("Qwen3.6-35B-A3B-UD-Q4_K_M.gguf", (35.0, 3.0)),
    ("Qwen3-30B-A3B", (30.0, 3.0)),
    ("qwen3_235b_a22b", (235.0, 22.0)),
    ("llama3:8b", (8.0, None)),
    ("Meta-Llama-3-8B-Instruct", (8.0, None)),
    ("meta-llama/Llama-3.1-70B-Instruct", (70.0, None)),
    ("Qwen2.5-0.5B-Instruct", (0.5, None)),
    ("qwen2.5:0.5b", (0.5, None)),
    ("phi3:3.8b", (3.8, None)),
    ("llama3.2:1b", (1.0, None)),
    ("SmolLM2-135M", (0.135, None)),
    ("gemma-2-2b-it", (2.0, None)),
    ("mistral-7b-v0.1", (7.0, None)),
    ("DeepSeek-V3-671B", (671.0, None)),
    ("HF://org/model-7B-q4f16_1-MLC", (7.0, None)),
    ("ollama://llama3:70b", (70.0, None)),
])
def test_parse_params_from_name(name: str, expected: tuple[float, float | None]) -> None:
    assert parse_params_from_name(name) == expected


@pytest.mark.parametrize("name", ["", "bert-base", "nomic-embed-text-v1.5", "llama3", "gpt-oss", "v1b2",
                                  "ollama://mistral:latest", "sdxl-turbo"])
def test_parse_params_no_size(name: str) -> None:
    assert parse_params_from_name(name) is None


@pytest.mark.parametrize(("text", "backend", "quant"), [
    ("Qwen3.6-35B-A3B-UD-Q4_K_M.gguf", "llamacpp", "q4_k_m"),
    ("TheBloke/Llama-2-7B-GPTQ", "vllm", "gptq"),
    ("Qwen/Qwen2.5-7B-Instruct-AWQ", "vllm", "awq"),
    ("neuralmagic/Llama-3-8B-FP8", "vllm", "fp8"),
    ("model-Q8_0.gguf", "llamacpp", "q8_0"),
    ("model-IQ4_XS.gguf", "llamacpp", "iq4_xs"),
    ("model-Q5_K_M.gguf", "ollama", "q5_k_m"),
    ("mlc-ai/Llama-3-8B-Instruct-q4f16_1-MLC", "mlc-llm", "q4f16_1"),
    ("mlc-ai/Llama-3-8B-Instruct-q4f32_1-MLC", "mlc-llm", "q4f32_1"),
    ("x-bf16", "vllm", "bf16"),
    ("plain-name", "ollama", "q4_k_m"),
    ("plain-name", "llamacpp", "q4_k_m"),
    ("plain-name", "mlc-llm", "q4f16_1"),
    ("plain-name", "vllm", "fp16"),
    ("plain-name", "diffusers", "fp16"),
    ("", "vllm", "fp16"),
    ("notq4_k_mreally", "vllm", "fp16"),  # tags must stand alone
])
def test_guess_quant(text: str, backend: str, quant: str) -> None:
    assert guess_quant(text, backend) == quant


@pytest.mark.parametrize(("raw", "norm"), [("Q4_K_M", "q4_k_m"), ("q4-k-m", "q4_k_m"), ("UD-Q4_K_M", "q4_k_m"),
                                           (" BF16 ", "bf16"), ("AWQ", "awq")])
def test_normalize_quant(raw: str, norm: str) -> None:
    assert normalize_quant(raw) == norm


@pytest.mark.parametrize("kv", sorted(KV_BYTES))
def test_normalize_kv(kv: str) -> None:
    assert normalize_kv_dtype(kv.upper()) == kv


JUNK_INPUTS = [
    (dict(params_b=0), "parameter count"),
    (dict(params_b=-7), "parameter count"),
    (dict(params_b=math.nan), "parameter count"),
    (dict(params_b=math.inf), "parameter count"),
    (dict(params_b=20000), "parameter count"),
    (dict(params_b=8, context_tokens=0), "context length"),
    (dict(params_b=8, context_tokens=-1), "context length"),
    (dict(params_b=8, context_tokens=10**9), "context length"),
    (dict(params_b=8, gpu_count=0), "gpu count"),
    (dict(params_b=8, gpu_count=100), "gpu count"),
    (dict(params_b=8, parallel=0), "parallel"),
    (dict(params_b=8, quant="q4_k_xl"), "quantization"),
    (dict(params_b=8, quant=""), "quantization"),
    (dict(params_b=8, kv_cache_dtype="int3"), "KV cache dtype"),
    (dict(params_b=8, layers=-1), "architecture"),
    (dict(params_b=8, kv_heads=-8), "architecture"),
    (dict(params_b=8, head_dim=-128), "architecture"),
    (dict(params_b=8, attention_layers=-1), "architecture"),
    (dict(params_b=8, weights_bytes=-1), "architecture"),
    (dict(params_b=8, active_params_b=-3), "architecture"),
    (dict(params_b=8, active_params_b=math.nan), "architecture"),
]


@pytest.mark.parametrize(("kwargs", "what"), JUNK_INPUTS)
def test_estimate_junk(kwargs: dict[str, object], what: str) -> None:
    with pytest.raises(ParseError, match=what) as e:
        estimate(EstimateInput(**kwargs))  # type: ignore[arg-type]
    assert "expected" in str(e.value)
