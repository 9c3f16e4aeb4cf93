"""Preflight: pure checks on hand-built node views, and the CLI's exit codes on the shipped examples."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from flexinfer import keys
from flexinfer.cli.main import cli
from flexinfer.model import parse_model
from flexinfer.preflight import Level, run
from flexinfer.state import GpuState, NodeGpuState, NodeView

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_800_000_000.0


def _view(name, vendor, arch, total, free, *, healthy=True, age=0.0, labels=None):
    gpu = GpuState(0, f"uuid-{name}", vendor, arch, total, free, healthy=healthy)
    return NodeView(name, {keys.LABEL_VENDOR: vendor, **(labels or {})}, vendor,
                    NodeGpuState(name, (gpu,), NOW - age))


def _model(backend="llamacpp", vendor="nvidia", mib=20480, **spec):
    gpu = {"vendor": vendor, "vramEstimateMB": mib} if vendor != "cpu" else {"vendor": "cpu"}
    return parse_model({"metadata": {"name": "m"}, "spec": {"backend": backend, "source": "HF://org/m",
                                                            "gpu": gpu, **spec}})


def _levels(report):
    return {c.name: c.level for c in report.checks}


MAXWELL = _view("gtx980ti", "nvidia", "sm_52", 6144, 5800, labels={keys.LABEL_FAMILY: "maxwell"})
BLACKWELL = _view("rtxpro", "nvidia", "sm_120", 24467, 24057)
BLACKWELL_BUSY = _view("rtxpro", "nvidia", "sm_120", 24467, 2800)
RDNA3 = _view("7900xtx", "amd", "gfx1100", 24560, 24040)


@pytest.mark.parametrize(("model", "views", "decision", "check", "text"), [
    (_model(), [MAXWELL, BLACKWELL], Level.PASS, "vram_fit", "rtxpro: gpu0 24057 MiB free"),
    (_model(), [MAXWELL, BLACKWELL_BUSY], Level.WARN, "vram_fit", "only after what runs there is scaled down"),
    (_model(mib=30000), [MAXWELL, BLACKWELL], Level.BLOCK, "vram_fit", "largest compatible GPU has 24467 MiB"),
    (_model(backend="vllm", mib=4000), [MAXWELL], Level.BLOCK, "known_broken", "vllm does not run on maxwell"),
    (_model(vendor="amd"), [MAXWELL, BLACKWELL], Level.BLOCK, "vendor", "no fallback to another vendor"),
    (_model(backend="ollama", mib=3000), [MAXWELL], Level.WARN, "arch_compat", "driver >= 570"),
    (_model(), [], Level.BLOCK, "inventory", "no node reports GPUs"),
    (_model(), [_view("old", "nvidia", "sm_120", 24467, 24057, age=3600)], Level.BLOCK, "vendor", "no fresh node"),
    (_model(), [_view("sick", "nvidia", "sm_120", 24467, 24057, healthy=False)], Level.BLOCK, "known_broken",
     "unhealthy"),
    (_model(vendor="cpu", backend="llamacpp"), [MAXWELL], Level.PASS, "inventory", "CPU-only"),
    (_model(nodeSelector={keys.LABEL_FAMILY: "maxwell"}, mib=4000), [MAXWELL, BLACKWELL], Level.PASS,
     "node_selector", "1 node(s) match"),
    (_model(nodeSelector={keys.LABEL_FAMILY: "hopper"}), [MAXWELL, BLACKWELL], Level.BLOCK, "node_selector",
     "no node matches"),
])
def test_preflight_rules(model, views, decision, check, text):
    report = run(model, views, NOW)
    assert report.decision is decision, report.checks
    msg = next(c.message for c in report.checks if c.name == check)
    assert text in msg


def test_declared_estimate_far_below_estimator_warns():
    model = parse_model({"metadata": {"name": "m"}, "spec": {"backend": "vllm", "source": "HF://org/llama-8B",
                                                             "gpu": {"vendor": "nvidia", "vramEstimateMB": 4000}}})
    report = run(model, [BLACKWELL], NOW)
    assert _levels(report)["estimate"] is Level.WARN


def test_cache_not_prefetched_blocks():
    doc = {"metadata": {"name": "m"}, "spec": {"backend": "llamacpp", "source": "HF://org/m",
                                               "gpu": {"vendor": "nvidia", "vramEstimateMB": 1000}},
           "status": {"cache": {"ready": False}}}
    report = run(parse_model(doc), [BLACKWELL], NOW)
    assert _levels(report)["cache_prefetch"] is Level.BLOCK
    assert report.exit_code == 20


def test_node_option_restricts_to_one_node():
    report = run(_model(), [MAXWELL, BLACKWELL], NOW, node="gtx980ti")
    assert report.decision is Level.BLOCK
    assert run(_model(), [MAXWELL], NOW, node="nope").checks[0].message == "node nope not found"


@pytest.mark.parametrize(("example", "code"), [("pass", 0), ("warn", 10), ("block", 20)])
def test_shipped_examples_exit_codes(example, code):
    res = CliRunner().invoke(cli, ["preflight", str(ROOT / f"daemonset/examples/preflight/{example}.yaml")])
    assert res.exit_code == code, res.output
    assert f"decision: {example.upper()}" in res.output


def test_json_output_is_machine_readable():
    res = CliRunner().invoke(cli, ["preflight", str(ROOT / "daemonset/examples/preflight/block.yaml"), "--json"])
    data = json.loads(res.output)
    assert data["decision"] == "BLOCK" and data["exitCode"] == 20
    assert {c["level"] for c in data["checks"]} <= {"PASS", "WARN", "BLOCK"}


def test_nodes_from_a_node_list_dump(tmp_path):
    from flexinfer.fleet import default_fleet_path, load_fleet
    from flexinfer.nodes import fleet_node_objects

    dump = {"apiVersion": "v1", "kind": "NodeList",
            "items": fleet_node_objects(load_fleet(default_fleet_path()), time.time())}
    path = tmp_path / "nodes.json"
    path.write_text(json.dumps(dump))
    res = CliRunner().invoke(cli, ["preflight", str(ROOT / "daemonset/examples/preflight/pass.yaml"),
                                   "--nodes-from", str(path)])
    assert res.exit_code == 0, res.output


def test_bad_model_file_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("apiVersion: ai.flexinfer/v1alpha2\nkind: Model\nmetadata: {name: x}\n"
                    "spec: {backend: vllm, source: 'HF://a/b', gpu: {vendor: cpu, count: 1}}\n")
    res = CliRunner().invoke(cli, ["preflight", str(path)])
    assert res.exit_code == 1
    assert "spec.gpu.count: must be omitted when vendor is cpu" in res.output


@pytest.mark.parametrize(("driver", "decision", "feasible"), [
    ("580", Level.PASS, True), ("550", Level.BLOCK, False), (None, Level.WARN, True)])
def test_preflight_and_the_extender_agree_on_the_driver(driver, decision, feasible):
    """Ollama on Maxwell hinges on the NVIDIA driver (>= 570): preflight's answer and the extender's verdict for
    the same node come from one rule (compat.with_driver)."""
    from flexinfer.extender.pod import PodRequirements
    from flexinfer.extender.policy import PolicyConfig, evaluate

    labels = {keys.LABEL_FAMILY: "maxwell", **({keys.LABEL_DRIVER_MAJOR: driver} if driver else {})}
    node = _view("gtx980ti", "nvidia", "sm_52", 6144, 5800, labels=labels)
    report = run(_model(backend="ollama", mib=3000), [node], NOW)
    assert report.decision is decision, report.checks
    pod = PodRequirements(namespace="m", name="p", uid="u", managed=True, backend="ollama", vendor="nvidia",
                          vram_estimate_mib=3000, gpu_count=1)
    verdict = evaluate(pod, node, NOW, PolicyConfig())
    assert verdict.feasible is feasible and bool(verdict.degraded) is (decision is Level.WARN), verdict
