"""flexinfer.model: parsing the documented examples (docs/homelab.md), defaults, and every validation error naming
its field."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest

from flexinfer import keys
from flexinfer.errors import ValidationError
from flexinfer.model import MAX_SERVICE_LABELS, Model, parse_duration_seconds, parse_model, parse_spec

# The minimal Model of docs/homelab.md ("The Model API").
MINIMAL = {
    "apiVersion": "ai.flexinfer/v1alpha2",
    "kind": "Model",
    "metadata": {"name": "llama3-8b"},
    "spec": {"backend": "ollama", "source": "ollama://llama3:8b"},
}

SHARED = {
    "apiVersion": "ai.flexinfer/v1alpha2",
    "kind": "Model",
    "metadata": {"name": "qwen36-35b-gguf-fast", "namespace": "ai", "uid": "u-1", "generation": 3,
                 "annotations": {keys.MODEL_ACTIVATE: "2026-01-01T00:00:00Z"}},
    "spec": {
        "backend": "llama.cpp",
        "source": "HF://unsloth/Qwen3.6-35B-A3B-GGUF",
        "gpu": {"vendor": "nvidia", "shared": "nvidia-lane", "priority": 10, "vramEstimateMB": 21648},
        "serverless": {"enabled": True, "idleTimeout": "30m", "coldStartTimeout": "1h30m", "minReplicas": 0},
        "cache": {"strategy": "SharedPVC", "pvcName": "models", "size": "200Gi"},
        "config": {"ggufFile": "Qwen3.6-35B-A3B-UD-Q4_K_M.gguf", "ctxSize": 49152},
        "litellm": {"aliases": ["fast"], "modelName": "qwen"},
        "serviceLabels": ["textgen", "code", "fast"],
        "nodeSelector": {keys.LABEL_ARCH: "sm_120"},
        "tolerations": [{"key": "workload.ai/dedicated", "operator": "Exists", "effect": "NoSchedule"}],
    },
    "status": {"phase": "Idle"},
}

CPU = {
    "apiVersion": "ai.flexinfer/v1alpha2",
    "kind": "Model",
    "metadata": {"name": "embed"},
    "spec": {"backend": "llamacpp", "source": "file:///models/embed.gguf", "gpu": {"vendor": "cpu"}},
}

MLC_MAXWELL = {
    "metadata": {"name": "mlc-maxwell"},
    "spec": {"backend": "mlc-llm", "source": "HF://mlc-ai/Llama-3-8B-Instruct-q4f32_1-MLC",
             "gpu": {"vendor": "nvidia"}, "config": {"jitPolicy": "READONLY"},
             "nodeSelector": {keys.LABEL_FAMILY: "maxwell"}},
}


def with_spec(base: dict[str, Any] = MINIMAL, **changes: Any) -> dict[str, Any]:
    obj = copy.deepcopy(base)
    obj["spec"].update(changes)
    return obj


def test_minimal_example_and_defaults() -> None:
    m = parse_model(MINIMAL)
    assert isinstance(m, Model)
    assert (m.name, m.namespace, m.uid, m.generation) == ("llama3-8b", "default", "", 0)
    assert m.backend == "ollama"
    assert m.vendor == "cpu" and not m.needs_gpu and m.gpu_count == 0  # no spec.gpu: CPU-only
    assert m.group is None and m.priority == 0 and m.jit_policy == ""
    assert m.spec.serverless.enabled is True
    assert m.idle_timeout_seconds == 600.0  # idleTimeout 10m
    assert m.cold_start_timeout_seconds == 300.0
    assert m.min_replicas == 0
    assert m.spec.cache.strategy == "None"
    assert m.spec.service_labels == [] and m.spec.node_selector == {}


def test_shared_group_example() -> None:
    m = parse_model(SHARED)
    assert m.backend == "llamacpp" and m.vendor == "nvidia" and m.needs_gpu and m.gpu_count == 1
    assert m.group == "nvidia-lane" and m.priority == 10
    assert m.spec.gpu is not None and m.spec.gpu.vram_estimate_mb == 21648
    assert m.idle_timeout_seconds == 1800.0 and m.cold_start_timeout_seconds == 5400.0
    assert (m.namespace, m.uid, m.generation) == ("ai", "u-1", 3)
    assert m.annotations == {keys.MODEL_ACTIVATE: "2026-01-01T00:00:00Z"}
    assert m.status == {"phase": "Idle"}
    assert m.spec.litellm is not None and m.spec.litellm.aliases == ["fast"]


def test_cpu_vendor() -> None:
    m = parse_model(CPU)
    assert m.vendor == "cpu" and not m.needs_gpu and m.gpu_count == 0


def test_mlc_maxwell_with_readonly_parses() -> None:
    m = parse_model(MLC_MAXWELL)
    assert m.backend == "mlc-llm" and m.jit_policy == "READONLY"
    lower = copy.deepcopy(MLC_MAXWELL)
    lower["spec"]["config"]["jitPolicy"] = "readonly"
    assert parse_model(lower).jit_policy == "READONLY"


@pytest.mark.parametrize(("gpu", "vendor", "count"), [
    ({}, "auto", 1), ({"vendor": "AMD"}, "amd", 1), ({"vendor": "NVIDIA", "count": 2}, "nvidia", 2),
    ({"vendor": "CPU"}, "cpu", 0), ({"count": 16}, "auto", 16),
])
def test_gpu_vendor_and_count(gpu: dict[str, Any], vendor: str, count: int) -> None:
    m = parse_model(with_spec(gpu=gpu))
    assert m.vendor == vendor and m.gpu_count == count


def test_serverless_disabled_keeps_one_replica() -> None:
    m = parse_model(with_spec(serverless={"enabled": False}))
    assert m.min_replicas == 1


@pytest.mark.parametrize("source", ["HF://org/model", "ollama://llama3:8b", "file:///models/x.gguf",
                                    "pvc://models/path"])
def test_source_schemes(source: str) -> None:
    assert parse_model(with_spec(source=source)).spec.source == source


def test_service_labels_at_the_limit() -> None:
    labels = [f"l{i}" for i in range(MAX_SERVICE_LABELS)]
    assert parse_model(with_spec(serviceLabels=labels)).spec.service_labels == labels


BAD: list[tuple[str, dict[str, Any], str, str]] = [
    # (id, object, field, message fragment)
    ("cpu with count", with_spec(gpu={"vendor": "cpu", "count": 1}), "spec.gpu.count",
     "must be omitted when vendor is cpu"),
    ("CPU with count", with_spec(gpu={"vendor": "CPU", "count": 2}), "spec.gpu.count", "omitted"),
    ("cpu with vram", with_spec(gpu={"vendor": "cpu", "vramEstimateMB": 100}), "spec.gpu.vramEstimateMB", "omitted"),
    ("cpu with shared", with_spec(gpu={"vendor": "cpu", "shared": "g"}), "spec.gpu.shared", "omitted"),
    ("count 0", with_spec(gpu={"count": 0}), "spec.gpu.count", "between 1 and 16"),
    ("count 17", with_spec(gpu={"count": 17}), "spec.gpu.count", "between 1 and 16"),
    ("count string", with_spec(gpu={"count": "2"}), "spec.gpu.count", "expected `int"),
    ("count float", with_spec(gpu={"count": 1.5}), "spec.gpu.count", "expected"),
    ("vram 0", with_spec(gpu={"vramEstimateMB": 0}), "spec.gpu.vramEstimateMB", "positive"),
    ("vram huge", with_spec(gpu={"vramEstimateMB": 10**10}), "spec.gpu.vramEstimateMB", "positive"),
    ("bad shared", with_spec(gpu={"shared": "Not_A_Label"}), "spec.gpu.shared", "DNS-1123"),
    ("priority", with_spec(gpu={"priority": 5000}), "spec.gpu.priority", "between"),
    ("vendor ati", with_spec(gpu={"vendor": "ati"}), "spec.gpu.vendor", "invalid enum"),
    ("vendor mixed case", with_spec(gpu={"vendor": "Nvidia"}), "spec.gpu.vendor", "invalid"),
    ("gpu unknown field", with_spec(gpu={"vendr": "amd"}), "spec.gpu.vendr", "unknown field"),
    ("gpu not object", with_spec(gpu="nvidia"), "spec.gpu", "expected"),
    ("too many labels", with_spec(serviceLabels=[f"l{i}" for i in range(MAX_SERVICE_LABELS + 1)]),
     "spec.serviceLabels", "at most 10"),
    ("duplicate labels", with_spec(serviceLabels=["a", "a"]), "spec.serviceLabels", "unique"),
    ("bad label", with_spec(serviceLabels=["ok", "Not OK"]), "spec.serviceLabels[1]", "not a valid label"),
    ("label newline", with_spec(serviceLabels=["fast\n"]), "spec.serviceLabels[0]", "not a valid label"),
    ("labels not list", with_spec(serviceLabels="fast"), "spec.serviceLabels", "expected `array`"),
    ("label not string", with_spec(serviceLabels=[1]), "spec.serviceLabels.0", "expected `str`"),
    ("bad scheme", with_spec(source="s3://bucket/model"), "spec.source", "must start with"),
    ("lowercase hf", with_spec(source="hf://org/model"), "spec.source", "must start with"),
    ("scheme only", with_spec(source="HF://"), "spec.source", "name a model"),
    ("scheme slashes", with_spec(source="file:////"), "spec.source", "name a model"),
    ("source int", with_spec(source=5), "spec.source", "expected `str`"),
    ("missing source", {"metadata": {"name": "m"}, "spec": {"backend": "ollama"}}, "spec.source", "required"),
    ("missing backend", {"metadata": {"name": "m"}, "spec": {"source": "ollama://x"}}, "spec.backend", "required"),
    ("unknown backend", with_spec(backend="tgi"), "spec.backend", "unknown backend"),
    ("unknown field", with_spec(replicas=2), "spec.replicas", "unknown field"),
    ("unknown serverless field", with_spec(serverless={"idle": "1m"}), "spec.serverless.idle", "unknown field"),
    ("enabled string", with_spec(serverless={"enabled": "yes"}), "spec.serverless.enabled", "expected `bool`"),
    ("minReplicas 2", with_spec(serverless={"minReplicas": 2}), "spec.serverless.minReplicas", "0 or 1"),
    ("minReplicas -1", with_spec(serverless={"minReplicas": -1}), "spec.serverless.minReplicas", "0 or 1"),
    ("bad idle", with_spec(serverless={"idleTimeout": "10 minutes"}), "spec.serverless.idleTimeout",
     "invalid duration"),
    ("empty idle", with_spec(serverless={"idleTimeout": ""}), "spec.serverless.idleTimeout", "invalid duration"),
    ("negative idle", with_spec(serverless={"idleTimeout": -5}), "spec.serverless.idleTimeout", "negative"),
    ("float idle", with_spec(serverless={"idleTimeout": 1.5}), "spec.serverless.idleTimeout", "expected"),
    ("bad cold start", with_spec(serverless={"coldStartTimeout": "5ms"}), "spec.serverless.coldStartTimeout",
     "invalid duration"),
    ("cache strategy", with_spec(cache={"strategy": "Disk"}), "spec.cache.strategy", "invalid enum"),
    ("pvc without SharedPVC", with_spec(cache={"strategy": "Memory", "pvcName": "x"}), "spec.cache.pvcName",
     "SharedPVC"),
    ("nodeSelector value int", with_spec(nodeSelector={"a": 1}), "spec.nodeSelector", "expected `str`"),
    ("config not object", with_spec(config=[1]), "spec.config", "expected `object`"),
    ("toleration not object", with_spec(tolerations=[1]), "spec.tolerations.0", "expected `object`"),
    ("maxwell family + vllm", with_spec(backend="vllm", gpu={"vendor": "nvidia"},
                                        nodeSelector={keys.LABEL_FAMILY: "maxwell"}), "spec.backend", "maxwell"),
    ("maxwell arch + vllm-omni", with_spec(backend="vllm-omni", nodeSelector={keys.LABEL_ARCH: "sm_52"}),
     "spec.backend", "maxwell"),
    ("maxwell + diffusers", with_spec(backend="diffusers", nodeSelector={keys.LABEL_ARCH: "sm_50"}),
     "spec.backend", "maxwell"),
    ("mlc maxwell without READONLY", with_spec(MLC_MAXWELL, config={}), "spec.backend", "jitPolicy"),
    ("mlc maxwell JIT", with_spec(MLC_MAXWELL, config={"jitPolicy": "JIT"}), "spec.backend", "jitPolicy"),
    ("maxwell junk arch", with_spec(backend="vllm", nodeSelector={keys.LABEL_ARCH: "sm_5x"}),
     f"spec.nodeSelector.{keys.LABEL_ARCH}", "NVIDIA arch"),
    ("name missing", {"spec": MINIMAL["spec"]}, "metadata.name", "DNS-1123"),
    ("name uppercase", {"metadata": {"name": "Llama"}, "spec": MINIMAL["spec"]}, "metadata.name", "DNS-1123"),
    ("name newline", {"metadata": {"name": "llama\n"}, "spec": MINIMAL["spec"]}, "metadata.name", "DNS-1123"),
    ("name too long", {"metadata": {"name": "a" * 64}, "spec": MINIMAL["spec"]}, "metadata.name", "DNS-1123"),
    ("metadata list", {"metadata": [], "spec": MINIMAL["spec"]}, "metadata.name", "DNS-1123"),
    ("metadata string", {"metadata": "x", "spec": MINIMAL["spec"]}, "metadata", "object"),
    ("generation junk", {"metadata": {"name": "m", "generation": "abc"}, "spec": MINIMAL["spec"]},
     "metadata.generation", "integer"),
    ("generation list", {"metadata": {"name": "m", "generation": [1]}, "spec": MINIMAL["spec"]},
     "metadata.generation", "integer"),
    ("spec missing", {"metadata": {"name": "m"}}, "spec", "must be an object"),
    ("spec list", {"metadata": {"name": "m"}, "spec": []}, "spec", "must be an object"),
    ("wrong apiVersion", {**MINIMAL, "apiVersion": "ai.flexinfer/v1alpha1"}, "apiVersion", "v1alpha2"),
    ("wrong kind", {**MINIMAL, "kind": "Deployment"}, "kind", "Model"),
]


@pytest.mark.parametrize(("obj", "field", "fragment"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_validation_errors_name_the_field(obj: dict[str, Any], field: str, fragment: str) -> None:
    with pytest.raises(ValidationError) as e:
        parse_model(obj)
    assert e.value.field == field, str(e.value)
    assert fragment in e.value.message, str(e.value)
    assert str(e.value).startswith(field + ": ")


@pytest.mark.parametrize("junk", [None, [], "model", 5])
def test_root_not_a_mapping(junk: object) -> None:
    with pytest.raises(ValidationError) as e:
        parse_model(junk)
    assert e.value.field == "(root)"


def test_generation_numeric_string_accepted() -> None:
    obj = copy.deepcopy(MINIMAL)
    obj["metadata"]["generation"] = "7"
    assert parse_model(obj).generation == 7


@pytest.mark.parametrize(("selector", "backend"), [
    ({keys.LABEL_ARCH: "sm_520"}, "vllm"),  # not a Maxwell pin: sm_52 + 0 would be CC 52.0
    ({keys.LABEL_ARCH: "sm_89"}, "vllm"),
    ({keys.LABEL_FAMILY: "rdna3"}, "vllm"),
    ({keys.LABEL_FAMILY: "maxwell"}, "llamacpp"),
    ({keys.LABEL_ARCH: "sm_52"}, "ollama"),
])
def test_non_blocking_node_selectors(selector: dict[str, str], backend: str) -> None:
    assert parse_model(with_spec(backend=backend, nodeSelector=selector)).backend


def test_parse_spec_alone() -> None:
    spec = parse_spec({"backend": "mlc", "source": "HF://x/y"})
    assert spec.backend == "mlc"
    with pytest.raises(ValidationError, match="spec: must be an object"):
        parse_spec(None)


@pytest.mark.parametrize(("value", "seconds"), [
    ("10m", 600.0), ("5m", 300.0), ("300s", 300.0), ("1h", 3600.0), ("1h30m", 5400.0), ("1h30m15s", 5415.0),
    ("2m30s", 150.0), ("0s", 0.0), (" 10m ", 600.0), (0, 0.0), (90, 90.0), (1.5, 1.5), ("24h", 86400.0),
])
def test_parse_duration_seconds(value: str | int | float, seconds: float) -> None:
    assert parse_duration_seconds(value, "f") == seconds


@pytest.mark.parametrize("junk", ["", " ", "10", "10x", "1d", "5ms", "m", "h1", "10m10h", "1.5h", "-1m",
                                  "10m\n5s", "\u0661\u0660m", "9" * 5000 + "s", True, False, -1, -0.5, math.nan,
                                  math.inf, None, [], "10 m"])
def test_parse_duration_junk_names_field(junk: object) -> None:
    with pytest.raises(ValidationError) as e:
        parse_duration_seconds(junk, "spec.x")  # type: ignore[arg-type]
    assert e.value.field == "spec.x" and e.value.message


@pytest.mark.parametrize("junk", [10**5000, -(10**5000), 10**16, "9" * 400 + "s", "9" * 16 + "m"],
                         ids=["huge", "-huge", "1e16", "400-digit-s", "16-digit-m"])
def test_parse_duration_too_large(junk: object) -> None:
    with pytest.raises(ValidationError) as e:
        parse_duration_seconds(junk, "spec.x")  # type: ignore[arg-type]
    assert e.value.field == "spec.x" and len(str(e.value)) < 200


def test_huge_ints_in_model_metadata_do_not_crash() -> None:
    obj = copy.deepcopy(MINIMAL)
    obj["metadata"]["annotations"] = {"a": 10**5000}
    obj["metadata"]["uid"] = 10**5000
    m = parse_model(obj)
    assert "too large" in m.annotations["a"] and "too large" in m.uid
    for key in ("apiVersion", "kind"):
        bad = {**MINIMAL, key: 10**5000}
        with pytest.raises(ValidationError, match="too large to show"):
            parse_model(bad)
