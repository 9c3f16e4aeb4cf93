from __future__ import annotations

import json

import pytest
from flexinfer.extender.pod import requirements_from_dict, requirements_from_json

from flexinfer import keys
from flexinfer.errors import ParseError

from .ext_fixtures import model_pod, pod_obj


def test_unannotated_pod_is_passthrough() -> None:
    r = requirements_from_dict(pod_obj(annotations={"prometheus.io/scrape": "true"}, gpus=1))
    assert not r.managed and not r.needs_gpu and r.error == ""
    assert (r.namespace, r.name) == ("models", "llama-7b-5d8f9c7b4-x2x9z")


def test_full_contract_parsed() -> None:
    pod = model_pod(20480, "llama.cpp", 2, vendor="NVIDIA",
                    extra={keys.POD_JIT_POLICY: "READONLY", keys.POD_PREFERRED_ARCHS: "sm_89, SM_86,"})
    r = requirements_from_dict(pod)
    assert r.managed and r.error == ""
    assert (r.backend, r.vendor, r.vram_estimate_mib, r.gpu_count) == ("llamacpp", "nvidia", 20480, 2)
    assert r.jit_policy == "READONLY" and r.preferred_archs == ("sm_89", "sm_86")
    assert r.model == "llama-7b" and r.key == "uid-llama-7b-5d8f9c7b4-x2x9z"
    assert requirements_from_json(json.dumps(pod).encode()) == r


@pytest.mark.parametrize(
    ("gpus", "init_gpus", "resource", "vendor_ann", "want_vendor", "want_count"),
    [
        (1, 0, keys.RESOURCE_NVIDIA, None, "nvidia", 1),
        (2, 0, keys.RESOURCE_AMD, None, "amd", 2),
        (1, 3, keys.RESOURCE_AMD, "amd", "amd", 3),  # init container asks for more: max(sum, max init)
        (None, 0, keys.RESOURCE_NVIDIA, None, "auto", 1),  # hand-annotated, no GPU request: one GPU
        (None, 0, keys.RESOURCE_NVIDIA, "cpu", "cpu", 0),
        (1, 0, keys.RESOURCE_NVIDIA, "auto", "nvidia", 1),
        (1, 0, keys.RESOURCE_AMD, "Amd", "amd", 1),  # vendor case-insensitive
    ],
)
def test_gpu_count_and_vendor(gpus, init_gpus, resource, vendor_ann, want_vendor, want_count) -> None:
    r = requirements_from_dict(model_pod(1000, gpus=gpus, init_gpus=init_gpus, resource=resource, vendor=vendor_ann))
    assert r.error == ""
    assert (r.vendor, r.gpu_count) == (want_vendor, want_count)


@pytest.mark.parametrize(
    ("extra", "gpus", "resource", "key"),
    [
        ({keys.POD_VRAM_ESTIMATE_MB: "20Gi"}, 1, keys.RESOURCE_NVIDIA, keys.POD_VRAM_ESTIMATE_MB),
        ({keys.POD_VRAM_ESTIMATE_MB: "-5"}, 1, keys.RESOURCE_NVIDIA, keys.POD_VRAM_ESTIMATE_MB),
        ({keys.POD_BACKEND: "tensorrt"}, 1, keys.RESOURCE_NVIDIA, keys.POD_BACKEND),
        ({keys.POD_VENDOR: "intel-arc"}, 1, keys.RESOURCE_NVIDIA, keys.POD_VENDOR),
        ({keys.POD_VENDOR: "amd"}, 1, keys.RESOURCE_NVIDIA, keys.POD_VENDOR),  # contradicts nvidia.com/gpu
        ({}, "two", keys.RESOURCE_NVIDIA, "resources"),
    ],
)
def test_junk_is_an_error_naming_the_key(extra, gpus, resource, key) -> None:
    pod = model_pod(1000, gpus=1, resource=resource, extra=extra)
    if gpus == "two":
        pod["spec"]["containers"][0]["resources"]["limits"][resource] = "two"
    r = requirements_from_dict(pod)
    assert r.managed and r.error and r.error_key == key
    assert not r.needs_gpu
    if key != "resources":
        assert key in r.error


def test_both_vendors_requested_is_an_error() -> None:
    pod = model_pod(1000, gpus=1)
    pod["spec"]["containers"][1]["resources"] = {"limits": {keys.RESOURCE_AMD: "1"}}
    r = requirements_from_dict(pod)
    assert r.error and "one vendor" in r.error


@pytest.mark.parametrize("bad", [b"not json", b"[1,2]", b'{"metadata": 5}'])
def test_malformed_pod_json_raises_parse_error(bad: bytes) -> None:
    with pytest.raises(ParseError):
        requirements_from_json(bad)


def test_typed_fields_validated_directly_like_annotations() -> None:
    """gRPC sends typed fields: pod.validate checks them with the annotation rules, no Pod is built."""
    from flexinfer.extender.pod import PodFields, validate

    ok = validate(PodFields("m", "p", "u", True, vram_estimate=20480, backend="llama.cpp", vendor="rocm", gpu_count=4))
    assert (ok.error, ok.vendor, ok.gpu_count, ok.backend, ok.vram_estimate_mib) == ("", "amd", 4, "llamacpp", 20480)
    assert validate(PodFields(managed=True, vendor="auto", gpu_count=0)).gpu_count == 1  # a model needs a GPU
    assert validate(PodFields(managed=True, vendor="cpu", gpu_count=3)).gpu_count == 0
    too_many = validate(PodFields(managed=True, vendor="nvidia", gpu_count=5000))
    assert too_many.error_key == "resources" and "between 0 and 1024" in too_many.error
    bad = validate(PodFields(managed=True, vendor="nvidia", backend="tensorrt", gpu_count=1))
    assert bad.error_key == keys.POD_BACKEND
    negative = validate(PodFields(managed=True, vram_estimate=-5, vendor="nvidia"))
    assert negative.error_key == keys.POD_VRAM_ESTIMATE_MB
