"""Example Models (they drive `flexinfer demo` and `flexinfer preflight`) parse and pass the CRD."""

from __future__ import annotations

import pathlib

import pytest

from flexinfer.model import parse_model

try:  # tests/ as packages (tests/deploy/__init__.py) or as rootdir-relative modules
    from .deploy_helpers import DAEMONSET, crd_verdict, load_docs
except ImportError:
    from deploy_helpers import DAEMONSET, crd_verdict, load_docs

EXAMPLES = sorted((DAEMONSET / "examples").rglob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(DAEMONSET)))
def test_example_parses_and_passes_crd(path: pathlib.Path) -> None:
    (doc,) = load_docs(path)
    m = parse_model(doc)
    assert m.name == doc["metadata"]["name"]
    ok, why = crd_verdict(doc)
    assert ok, why


def test_demo_set_is_complete() -> None:
    models = {parse_model(load_docs(p)[0]).name: parse_model(load_docs(p)[0])
              for p in (DAEMONSET / "examples").glob("*.yaml")}
    group = sorted((m.priority, m.name) for m in models.values() if m.group == "7900xtx-quality")
    assert [p for p, _ in group] == [70, 80, 100]
    backends = {m.backend for m in models.values()}
    assert {"mlc-llm", "llamacpp", "vllm", "diffusers", "ollama"} <= backends
    assert models["llama-405b"].spec.gpu.vram_estimate_mb > 200_000  # too large for any GPU


def test_preflight_examples_exist() -> None:
    names = {p.stem for p in (DAEMONSET / "examples" / "preflight").glob("*.yaml")}
    assert names == {"pass", "warn", "block"}


@pytest.mark.parametrize(("name", "code"), [("pass", 0), ("warn", 10), ("block", 20)])
def test_preflight_examples_give_their_decision(name: str, code: int) -> None:
    """The shipped preflight examples produce PASS/WARN/BLOCK (exit 0/10/20) on the default homelab fleet."""
    from click.testing import CliRunner

    from flexinfer.cli.main import cli

    result = CliRunner().invoke(cli, ["preflight", str(DAEMONSET / "examples" / "preflight" / f"{name}.yaml")])
    assert result.exit_code == code, result.output
    assert f"decision: {name.upper()}" in result.output
