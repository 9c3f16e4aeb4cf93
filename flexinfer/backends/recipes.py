"""Container recipes: command, args and environment of each backend's model server (pure).

A recipe is ``recipe(model, vendor, local) -> (command, args, env)``. ``vendor`` is nvidia | amd | cpu;
``local`` is the directory under /models that holds the model when the controller prefetched an ``HF://``
source into the cache PVC (the server then reads it from there instead of downloading), else None.
Args come from ``spec.source`` and the backend-specific hints in ``spec.config``; unknown config keys
are ignored here (the pod still sees all of ``spec.config`` as the FLEXINFER_CONFIG environment
variable, JSON). Model files live under /models (the cache volume or the PVC of a ``pvc://`` source).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the recipes only read attributes; no import cycle with flexinfer.model at run time
    from flexinfer.model import Model

MODELS_DIR = "/models"
HF_LOCAL_DIR = f"{MODELS_DIR}/hf-local"  # prefetched HF repos: <HF_LOCAL_DIR>/<org>/<repo>
OLLAMA_DIR = f"{MODELS_DIR}/ollama"
# Shell: start the ollama server in the background ($pid) and wait until it answers (the model server and the
# controller's prefetch Job both pull through a running server).
OLLAMA_SERVE = "ollama serve & pid=$!; until ollama list >/dev/null 2>&1; do sleep 1; done; "

Recipe = Callable[["Model", str, "str | None"], tuple[list[str], list[str], dict[str, str]]]
ReadyCommand = Callable[["Model"], list[str]]


def source_ref(source: str) -> tuple[str, str]:
    """('hf'|'ollama'|'file'|'pvc'|'other', model reference as the backend sees it)."""
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


def hf_local_dir(repo: str) -> str:
    """Where a prefetched HF repo lives in the cache volume."""
    return f"{HF_LOCAL_DIR}/{repo.strip('/')}"


def cfg(model: Model, *names: str) -> Any:
    """The first of ``spec.config[name]`` that is set (not None, not empty)."""
    for n in names:
        v = model.spec.config.get(n)
        if v is not None and v != "":
            return v
    return None


def _opt(args: list[str], flag: str, value: Any) -> None:
    if value is not None and value is not False:
        args += [flag] if value is True else [flag, str(value)]


def vllm(model: Model, vendor: str, local: str | None) -> tuple[list[str], list[str], dict[str, str]]:
    _, ref = source_ref(model.spec.source)
    args = [local or ref, "--host", "0.0.0.0", "--port", "8000", "--served-model-name", model.name]
    _opt(args, "--max-model-len", cfg(model, "maxModelLen", "contextLength", "ctxSize"))
    _opt(args, "--gpu-memory-utilization", cfg(model, "gpuMemoryUtilization"))
    _opt(args, "--max-num-seqs", cfg(model, "maxNumSequence", "maxNumSeqs"))
    _opt(args, "--kv-cache-dtype", cfg(model, "kvCacheDtype"))
    _opt(args, "--quantization", cfg(model, "quantization"))
    if model.gpu_count > 1:
        args += ["--tensor-parallel-size", str(model.gpu_count)]
    if model.backend == "vllm-omni":
        args.append("--omni")
    return ["vllm", "serve"], args, {"HF_HOME": f"{MODELS_DIR}/hf"}


def ollama(model: Model, vendor: str, local: str | None) -> tuple[list[str], list[str], dict[str, str]]:
    _, ref = source_ref(model.spec.source)
    script = f"{OLLAMA_SERVE}ollama pull {json.dumps(ref)} && wait $pid"
    env = {"OLLAMA_HOST": "0.0.0.0:11434", "OLLAMA_MODELS": OLLAMA_DIR, "OLLAMA_KEEP_ALIVE": "-1"}
    ctx = cfg(model, "contextLength", "ctxSize", "numCtx")
    if ctx is not None:
        env["OLLAMA_CONTEXT_LENGTH"] = str(ctx)
    kv = cfg(model, "kvCacheType")
    if kv is not None:
        env["OLLAMA_KV_CACHE_TYPE"] = str(kv)
    return ["/bin/sh", "-c"], [script], env


def ollama_ready(model: Model) -> list[str]:
    """Ready once the model is pulled (the server answers before it is)."""
    return ["ollama", "show", source_ref(model.spec.source)[1]]


def llamacpp(model: Model, vendor: str, local: str | None) -> tuple[list[str], list[str], dict[str, str]]:
    kind, ref = source_ref(model.spec.source)
    gguf = cfg(model, "ggufFile")
    args = ["--host", "0.0.0.0", "--port", "8080", "--alias", model.name]
    mmproj = cfg(model, "mmproj")
    if kind == "hf" and local and gguf:
        args += ["-m", f"{local}/{gguf}"]
        if mmproj:
            mmproj = f"{local}/{mmproj}"
    elif kind == "hf":
        args += ["--hf-repo", ref]
        _opt(args, "--hf-file", gguf)
    else:
        args += ["-m", f"{ref}/{gguf}" if gguf else ref]
    _opt(args, "--mmproj", mmproj)
    _opt(args, "-c", cfg(model, "ctxSize", "contextLength"))
    _opt(args, "--parallel", cfg(model, "parallel", "maxNumSequence"))
    _opt(args, "--cache-type-k", cfg(model, "cacheTypeK", "kvCacheType"))
    _opt(args, "--cache-type-v", cfg(model, "cacheTypeV", "kvCacheType"))
    if vendor != "cpu":
        args += ["-ngl", str(cfg(model, "nGpuLayers") or 999)]
    return [], args, {"LLAMA_CACHE": f"{MODELS_DIR}/llamacpp"}


def mlc(model: Model, vendor: str, local: str | None) -> tuple[list[str], list[str], dict[str, str]]:
    kind, ref = source_ref(model.spec.source)
    target = local or (f"HF://{ref}" if kind == "hf" else ref)
    args = ["serve", target, "--host", "0.0.0.0", "--port", "8000"]
    _opt(args, "--model-lib", cfg(model, "modelLibPath"))
    _opt(args, "--mode", cfg(model, "mode"))
    overrides = []
    for key, name in (("contextWindowSize", "context_window_size"), ("maxNumSequence", "max_num_sequence"),
                      ("prefillChunkSize", "prefill_chunk_size")):
        v = cfg(model, key)
        if v is not None:
            overrides.append(f"{name}={v}")
    if overrides:
        args += ["--overrides", ";".join(overrides)]
    env = {"MLC_LLM_HOME": f"{MODELS_DIR}/mlc"}
    if model.jit_policy:
        env["MLC_JIT_POLICY"] = model.jit_policy
    return ["mlc_llm"], args, env


def diffusers(model: Model, vendor: str, local: str | None) -> tuple[list[str], list[str], dict[str, str]]:
    _, ref = source_ref(model.spec.source)
    return [], [], {"MODEL_ID": local or ref, "PORT": "8000", "HF_HOME": f"{MODELS_DIR}/hf"}


def comfyui(model: Model, vendor: str, local: str | None) -> tuple[list[str], list[str], dict[str, str]]:
    _, ref = source_ref(model.spec.source)
    args = ["--listen", "0.0.0.0", "--port", "8188"]
    if vendor == "cpu":
        args.append("--cpu")
    return [], args, {"MODEL_SOURCE": local or ref, "COMFYUI_MODELS_DIR": f"{MODELS_DIR}/comfyui"}
