"""The backend registry (flexinfer.backends): one entry per backend holds every fact, and the tables other
modules read are views of it (compat rules, estimator overhead, container recipes)."""

from __future__ import annotations

import pytest

from flexinfer import backends, compat, estimate
from flexinfer.arch import arch_info
from flexinfer.errors import ParseError


def test_every_table_is_keyed_by_the_registry() -> None:
    names = set(backends.NAMES)
    assert set(compat.BACKENDS) == names
    assert set(compat.RULES) == names
    assert set(estimate.RUNTIME_BASE_MIB) == names
    assert set(compat.ALIASES.values()) <= names and not set(compat.ALIASES) & names


@pytest.mark.parametrize("name", backends.NAMES)
def test_entry_is_complete(name: str) -> None:
    b = backends.REGISTRY[name]
    assert b.runtime_base_mib > 0 and 0 < b.port < 65536 and b.health_path.startswith("/") and b.shm_mib > 0
    assert callable(b.recipe) and b.hf_prefetch in ("repo", "gguf", "")
    assert estimate.normalize_quant(b.default_quant) == b.default_quant
    # an image for every vendor the compatibility rule lets it run on
    if b.compat.nvidia is not None:
        assert "nvidia" in b.images
    if b.compat.amd is not None:
        assert "amd" in b.images
    if b.compat.cpu_ok:
        assert "cpu" in b.images
    assert set(b.images) <= set(backends.IMAGE_VENDORS)
    for alias in b.aliases:
        assert backends.canonical(alias) == name


@pytest.mark.parametrize("image", sorted({i for b in backends.REGISTRY.values() for i in b.images.values()}))
def test_registry_images_are_pinned(image: str) -> None:
    assert backends.image_pin_problem(image) is None


@pytest.mark.parametrize(("ref", "pinned"), [
    ("vllm/vllm-openai:v0.8.5", True),
    ("rocm/vllm:rocm6.3.1_vllm_0.8.5_20250521", True),
    ("localhost:5000/llama.cpp:server-cuda-b6000", True),
    ("ghcr.io/x/y@sha256:" + "a" * 64, True),
    ("vllm/vllm-openai:latest", False),
    ("vllm/vllm-omni:latest-rocm", False),
    ("ghcr.io/ggml-org/llama.cpp:server-cuda", False),  # a moving tag without a version
    ("ollama/ollama", False),  # no tag means latest
    ("localhost:5000/ollama", False),  # the registry port is not a tag
    ("", False),
    ("a b:1", False),
])
def test_image_pin_problem(ref: str, pinned: bool) -> None:
    assert (backends.image_pin_problem(ref) is None) is pinned


def test_unknown_backend_names_every_choice() -> None:
    with pytest.raises(ParseError) as e:
        backends.get("tgi")
    for name in (*backends.NAMES, *backends.ALIASES):
        assert name in str(e.value)


def test_compat_reads_the_registry_rule() -> None:
    """compat.check is a function of the registry entry: the rule object it reads is the entry's."""
    for name, b in backends.REGISTRY.items():
        assert compat.RULES[name] is b.compat
    assert compat.check("vllm", arch_info("nvidia", "sm_52")).reason == "vllm does not run on maxwell sm_52"
