"""What a Model needs from a GPU: per-GPU MiB (declared or estimated) and the config hints used."""

from __future__ import annotations

from dataclasses import dataclass

from flexinfer.errors import ParseError
from flexinfer.estimate import Estimate, EstimateInput, estimate, guess_quant, parse_params_from_name
from flexinfer.model import Model


@dataclass(frozen=True, slots=True)
class VramNeed:
    per_gpu_mib: int | None  # None: unknown (no declared value and nothing to estimate from)
    source: str  # "spec.gpu.vramEstimateMB" | "estimator" | "unknown"
    estimate: Estimate | None = None
    detail: str = ""


def _int_hint(config: dict, *names: str) -> int | None:
    for n in names:
        v = config.get(n)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
        if isinstance(v, str) and v.isascii() and v.isdigit():
            return int(v)
    return None


def estimate_input(model: Model) -> EstimateInput | None:
    """Estimator inputs from the Model: size from spec.config.paramsB or the source name."""
    cfg = model.spec.config or {}
    params = cfg.get("paramsB")
    active = cfg.get("activeParamsB")
    if not isinstance(params, int | float) or isinstance(params, bool) or params <= 0:
        parsed = parse_params_from_name(str(cfg.get("ggufFile", "")) + " " + model.spec.source)
        if parsed is None:
            return None
        params, active = parsed
    quant = str(cfg.get("quantization") or guess_quant(f"{cfg.get('ggufFile', '')} {model.spec.source}",
                                                       model.backend))
    return EstimateInput(
        params_b=float(params),
        active_params_b=float(active) if isinstance(active, int | float) else None,
        quant=quant,
        context_tokens=_int_hint(cfg, "contextLength", "ctxSize", "maxModelLen", "contextWindowSize") or 4096,
        kv_cache_dtype=str(cfg.get("kvCacheType") or cfg.get("cacheTypeK") or "f16"),
        backend=model.backend,
        parallel=_int_hint(cfg, "parallel", "maxNumSequence") or 1,
        gpu_count=max(1, model.gpu_count),
        layers=_int_hint(cfg, "numLayers"),
        attention_layers=_int_hint(cfg, "attentionLayers"),
        kv_heads=_int_hint(cfg, "numKVHeads", "kvHeads"),
        head_dim=_int_hint(cfg, "headDim"),
        weights_bytes=_int_hint(cfg, "weightsBytes", "modelFileSizeBytes"),
    )


def vram_need(model: Model) -> VramNeed:
    gpu = model.spec.gpu
    declared = gpu.vram_estimate_mb if gpu else None
    est: Estimate | None = None
    try:
        inp = estimate_input(model)
        est = estimate(inp) if inp else None
    except ParseError as e:
        detail = f"estimator: {e}"
    else:
        detail = est.breakdown() if est else "no size in spec.config.paramsB or the source name"
    if declared:
        return VramNeed(declared, "spec.gpu.vramEstimateMB", est, detail)
    if est is not None:
        return VramNeed(est.per_gpu_mib, "estimator", est, detail)
    return VramNeed(None, "unknown", None, detail)
