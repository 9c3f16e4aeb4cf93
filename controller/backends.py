"""Backend registry: per backend the image (per GPU vendor), container args, port and health path.

`spec.image` overrides the image. Args are built from `spec.source` and the backend-specific hints in
`spec.config`; unknown config keys are ignored here (they are still visible to the pod as the
FLEXINFER_CONFIG environment variable, JSON). Model files live under /models (the cache volume or the
PVC of a ``pvc://`` source).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flexinfer.model import Model

MODELS_DIR = "/models"


@dataclass(frozen=True, slots=True)
class Backend:
    name: str
    images: dict[str, str]  # vendor (nvidia|amd|cpu) -> image
    port: int
    health_path: str
    build: Callable[[Model, str], tuple[list[str], list[str], dict[str, str]]] = field(repr=False)
    # exec readiness instead of HTTP when the server answers before the model is usable (ollama pulls
    # the model after the server starts)
    ready_command: Callable[[Model], list[str]] | None = field(default=None, repr=False)

    def image_for(self, vendor: str) -> str:
        return self.images.get(vendor) or self.images["nvidia"]


def source_ref(source: str) -> tuple[str, str]:
    """('hf'|'ollama'|'file'|'pvc', model reference as the backend sees it)."""
    if source.startswith("HF://"):
        return "hf", source[len("HF://"):].strip("/")
    if source.startswith("ollama://"):
        return "ollama", source[len("ollama://"):]
    if source.startswith("file://"):
        return "file", "/" + source[len("file://"):].lstrip("/")
    if source.startswith("pvc://"):
        rest = source[len("pvc://"):].strip("/")
        _, _, path = rest.partition("/")
        return "pvc", f"{MODELS_DIR}/{path}".rstrip("/")
    return "other", source


def pvc_of_source(source: str) -> str | None:
    if not source.startswith("pvc://"):
        return None
    return source[len("pvc://"):].strip("/").partition("/")[0] or None


def _cfg(model: Model, *names: str) -> Any:
    for n in names:
        v = model.spec.config.get(n)
        if v is not None and v != "":
            return v
    return None


def _opt(args: list[str], flag: str, value: Any) -> None:
    if value is not None and value is not False:
        args += [flag] if value is True else [flag, str(value)]


def _vllm(model: Model, vendor: str) -> tuple[list[str], list[str], dict[str, str]]:
    _, ref = source_ref(model.spec.source)
    args = [ref, "--host", "0.0.0.0", "--port", "8000", "--served-model-name", model.name]
    _opt(args, "--max-model-len", _cfg(model, "maxModelLen", "contextLength", "ctxSize"))
    _opt(args, "--gpu-memory-utilization", _cfg(model, "gpuMemoryUtilization"))
    _opt(args, "--max-num-seqs", _cfg(model, "maxNumSequence", "maxNumSeqs"))
    _opt(args, "--kv-cache-dtype", _cfg(model, "kvCacheDtype"))
    _opt(args, "--quantization", _cfg(model, "quantization"))
    if model.gpu_count > 1:
        args += ["--tensor-parallel-size", str(model.gpu_count)]
    if model.backend == "vllm-omni":
        args.append("--omni")
    return ["vllm", "serve"], args, {"HF_HOME": f"{MODELS_DIR}/hf"}


def _ollama(model: Model, vendor: str) -> tuple[list[str], list[str], dict[str, str]]:
    _, ref = source_ref(model.spec.source)
    script = (f"ollama serve & pid=$!; until ollama list >/dev/null 2>&1; do sleep 1; done; "
              f"ollama pull {json.dumps(ref)} && wait $pid")
    env = {"OLLAMA_HOST": "0.0.0.0:11434", "OLLAMA_MODELS": f"{MODELS_DIR}/ollama", "OLLAMA_KEEP_ALIVE": "-1"}
    ctx = _cfg(model, "contextLength", "ctxSize", "numCtx")
    if ctx is not None:
        env["OLLAMA_CONTEXT_LENGTH"] = str(ctx)
    kv = _cfg(model, "kvCacheType")
    if kv is not None:
        env["OLLAMA_KV_CACHE_TYPE"] = str(kv)
    return ["/bin/sh", "-c"], [script], env


def _llamacpp(model: Model, vendor: str) -> tuple[list[str], list[str], dict[str, str]]:
    kind, ref = source_ref(model.spec.source)
    gguf = _cfg(model, "ggufFile")
    args = ["--host", "0.0.0.0", "--port", "8080", "--alias", model.name]
    if kind == "hf":
        args += ["--hf-repo", ref]
        _opt(args, "--hf-file", gguf)
    else:
        args += ["-m", f"{ref}/{gguf}" if gguf else ref]
    _opt(args, "--mmproj", _cfg(model, "mmproj"))
    _opt(args, "-c", _cfg(model, "ctxSize", "contextLength"))
    _opt(args, "--parallel", _cfg(model, "parallel", "maxNumSequence"))
    _opt(args, "--cache-type-k", _cfg(model, "cacheTypeK", "kvCacheType"))
    _opt(args, "--cache-type-v", _cfg(model, "cacheTypeV", "kvCacheType"))
    if vendor != "cpu":
        args += ["-ngl", str(_cfg(model, "nGpuLayers") or 999)]
    return [], args, {"LLAMA_CACHE": f"{MODELS_DIR}/llamacpp"}


def _mlc(model: Model, vendor: str) -> tuple[list[str], list[str], dict[str, str]]:
    kind, ref = source_ref(model.spec.source)
    target = f"HF://{ref}" if kind == "hf" else ref
    args = ["serve", target, "--host", "0.0.0.0", "--port", "8000"]
    _opt(args, "--model-lib", _cfg(model, "modelLibPath"))
    _opt(args, "--mode", _cfg(model, "mode"))
    overrides = []
    for key, name in (("contextWindowSize", "context_window_size"), ("maxNumSequence", "max_num_sequence"),
                      ("prefillChunkSize", "prefill_chunk_size")):
        v = _cfg(model, key)
        if v is not None:
            overrides.append(f"{name}={v}")
    if overrides:
        args += ["--overrides", ";".join(overrides)]
    env = {"MLC_LLM_HOME": f"{MODELS_DIR}/mlc"}
    if model.jit_policy:
        env["MLC_JIT_POLICY"] = model.jit_policy
    return ["mlc_llm"], args, env


def _diffusers(model: Model, vendor: str) -> tuple[list[str], list[str], dict[str, str]]:
    _, ref = source_ref(model.spec.source)
    return [], [], {"MODEL_ID": ref, "PORT": "8000", "HF_HOME": f"{MODELS_DIR}/hf"}


def _comfyui(model: Model, vendor: str) -> tuple[list[str], list[str], dict[str, str]]:
    _, ref = source_ref(model.spec.source)
    args = ["--listen", "0.0.0.0", "--port", "8188"]
    if vendor == "cpu":
        args.append("--cpu")
    return [], args, {"MODEL_SOURCE": ref, "COMFYUI_MODELS_DIR": f"{MODELS_DIR}/comfyui"}


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("ollama", {"nvidia": "ollama/ollama:0.6.8", "amd": "ollama/ollama:0.6.8-rocm",
                           "cpu": "ollama/ollama:0.6.8"}, 11434, "/api/version", _ollama,
                lambda m: ["ollama", "show", source_ref(m.spec.source)[1]]),
        Backend("vllm", {"nvidia": "vllm/vllm-openai:v0.8.5", "amd": "rocm/vllm:latest",
                         "cpu": "vllm/vllm-openai:v0.8.5"}, 8000, "/health", _vllm),
        Backend("vllm-omni", {"nvidia": "vllm/vllm-omni:latest", "amd": "vllm/vllm-omni:latest-rocm"},
                8000, "/health", _vllm),
        Backend("llamacpp", {"nvidia": "ghcr.io/ggml-org/llama.cpp:server-cuda",
                             "amd": "ghcr.io/ggml-org/llama.cpp:server-rocm",
                             "cpu": "ghcr.io/ggml-org/llama.cpp:server"}, 8080, "/health", _llamacpp),
        Backend("mlc-llm", {"nvidia": "ghcr.io/flexinfer/mlc-llm:cuda", "amd": "ghcr.io/flexinfer/mlc-llm:rocm",
                            "cpu": "ghcr.io/flexinfer/mlc-llm:cpu"}, 8000, "/v1/models", _mlc),
        Backend("diffusers", {"nvidia": "ghcr.io/flexinfer/diffusers:cuda", "amd": "ghcr.io/flexinfer/diffusers:rocm",
                              "cpu": "ghcr.io/flexinfer/diffusers:cpu"}, 8000, "/health", _diffusers),
        Backend("comfyui", {"nvidia": "ghcr.io/flexinfer/comfyui:cuda", "amd": "ghcr.io/flexinfer/comfyui:rocm",
                            "cpu": "ghcr.io/flexinfer/comfyui:cpu"}, 8188, "/system_stats", _comfyui),
    )
}


@dataclass(frozen=True, slots=True)
class Container:
    image: str
    command: list[str]
    args: list[str]
    env: dict[str, str]
    port: int
    health_path: str
    ready_command: list[str] | None = None


def container_for(model: Model, vendor: str) -> Container:
    """Image/command/args/env/port/health for `model` on `vendor` (nvidia|amd|cpu)."""
    b = BACKENDS[model.backend]
    command, args, env = b.build(model, vendor)
    env = dict(env)
    if model.spec.config:
        env["FLEXINFER_CONFIG"] = json.dumps(model.spec.config, sort_keys=True, separators=(",", ":"))
    ready = b.ready_command(model) if b.ready_command else None
    return Container(model.spec.image or b.image_for(vendor), command, args, env, b.port, b.health_path, ready)
