"""One CLI style (issue: the first hour of a new user): --version everywhere, --log-format and --bind-address on
every component, help text and a FLEXINFER_ environment variable for every option, exit codes documented,
preflight's BLOCK for a Model that can never run, and one freshness contract for every tool."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from flexinfer import freshness
from flexinfer.cli.main import cli
from flexinfer.fleet import default_fleet_path, load_fleet
from flexinfer.nodes import fleet_node_objects

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCRIPTS = PYPROJECT["project"]["scripts"]
VERSION = importlib.metadata.version("flexinfer")
COMPONENTS = [name for name in SCRIPTS if name != "flexinfer"]


def _command(script: str) -> click.Command:
    module, _, attr = SCRIPTS[script].partition(":")
    obj = getattr(importlib.import_module(module), attr)
    return obj if isinstance(obj, click.Command) else cli  # flexinfer's main() wraps the `cli` group


def _all_commands() -> list[tuple[str, click.Command, str]]:
    """(display name, command, env prefix) for every component and every `flexinfer` subcommand."""
    out = [(s, _command(s), "FLEXINFER") for s in SCRIPTS]  # "flexinfer": the group and its own options
    for name, sub in cli.commands.items():
        out.append((f"flexinfer {name}", sub, f"FLEXINFER_{name.upper()}"))
    return out


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_console_script_answers_version(script):
    exe = Path(sys.executable).parent / script
    res = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"{script} {VERSION}"


@pytest.mark.parametrize("name,cmd,prefix", _all_commands(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_option_has_help_and_a_flexinfer_env_var(name, cmd, prefix):
    ctx = click.Context(cmd, info_name=name, auto_envvar_prefix=prefix)
    text = cmd.get_help(ctx)
    for p in cmd.params:
        if not isinstance(p, click.Option) or p.name in ("help", "version"):
            continue
        assert p.help, f"{name} {p.opts[0]} has no help text"
        envvars = p.envvar if isinstance(p.envvar, list) else [p.envvar or f"{prefix}_{p.name.upper()}"]
        assert any(e.startswith("FLEXINFER_") for e in envvars), (name, p.opts)
        flag = next(o for o in p.opts if o.startswith("--"))[2:].replace("-", "_").upper()
        assert f"{prefix}_{flag}" in envvars, f"{name} {p.opts[0]}: env var {envvars} is not named after the flag"
        assert p.show_envvar, f"{name} {p.opts[0]} does not show its environment variable"
        assert envvars[0] in text, f"{name} --help does not show {envvars[0]}"
    assert "Exit codes:" in text, f"{name} --help does not document its exit codes"


@pytest.mark.parametrize("script", COMPONENTS)
def test_components_share_log_format_and_bind_flags(script):
    cmd = _command(script)
    opts = {o for p in cmd.params if isinstance(p, click.Option) for o in p.opts}
    assert {"--log-level", "--log-format", "--bind-address", "--version"} <= opts
    ports = [o for o in opts if o.endswith("-port")]
    assert ports, f"{script} has no --<what>-port option"
    assert not {"--host", "--port", "--listen-address", "--metrics-address"} & opts
    bind = next(p for p in cmd.params if "--bind-address" in p.opts)
    assert bind.default == "127.0.0.1", "listeners must bind to loopback unless told otherwise"


def test_env_var_is_honoured():
    res = CliRunner().invoke(cli, ["nodes"], env={"FLEXINFER_NODES_OUTPUT": "json"})
    assert res.exit_code == 0, res.output
    assert {r["node"] for r in json.loads(res.output)} >= {"cblevins-gtx980ti", "rtxpro4000-worker"}


def test_controller_metrics_port_matches_manifests_and_dockerfile():
    cmd = _command("flexinfer-controller")
    default = next(p for p in cmd.params if "--metrics-port" in p.opts).default
    manifest = (ROOT / "daemonset/base/controller.yaml").read_text()
    assert f"--metrics-port={default}" in manifest and f"containerPort: {default}" in manifest
    expose = re.search(r"^EXPOSE (.+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert expose and str(default) in expose.group(1).split()


def test_readme_documents_every_commands_exit_codes():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Exit codes"):]
    for name in [*COMPONENTS, *(f"flexinfer {n}" for n in cli.commands)]:
        assert f"`{name}`" in section, f"README's exit-code table misses {name}"


# --- preflight and explain exit codes ----------------------------------------------------------------------

NEVER_RUNS = {
    "apiVersion": "ai.flexinfer/v1alpha2", "kind": "Model", "metadata": {"name": "sd", "namespace": "default"},
    "spec": {"backend": "diffusers", "source": "HF://stabilityai/sdxl-turbo",
             "gpu": {"vendor": "nvidia", "vramEstimateMB": 4000},
             "nodeSelector": {"flexinfer.ai/gpu.arch": "sm_52"}},
}


def test_preflight_blocks_a_model_that_can_never_run(tmp_path):
    f = tmp_path / "m.yaml"
    f.write_text(yaml.safe_dump(NEVER_RUNS))
    res = CliRunner().invoke(cli, ["preflight", str(f)])
    assert res.exit_code == 20, res.output
    assert "[BLOCK] spec: spec.backend: diffusers does not run on maxwell sm_52" in res.output
    assert "Error" not in res.output
    doc = json.loads(CliRunner().invoke(cli, ["preflight", str(f), "--json"]).output)
    assert doc["decision"] == "BLOCK" and doc["exitCode"] == 20


def test_preflight_exit_1_for_files_that_are_not_a_model(tmp_path):
    junk = tmp_path / "junk.yaml"
    junk.write_text("kind: Model\nmetadata: {name: Bad_Name}\nspec: {}\n")
    res = CliRunner().invoke(cli, ["preflight", str(junk)])
    assert res.exit_code == 1 and "Error" in res.output
    unreadable = tmp_path / "bad.yaml"
    unreadable.write_text("{not: [yaml")
    assert CliRunner().invoke(cli, ["preflight", str(unreadable)]).exit_code == 1
    assert CliRunner().invoke(cli, ["preflight", str(tmp_path / "missing.yaml")]).exit_code == 2


def test_controller_still_rejects_a_model_that_can_never_run():
    from flexinfer.errors import NeverRuns
    from flexinfer.model import parse_model

    with pytest.raises(NeverRuns, match="maxwell"):
        parse_model(NEVER_RUNS)


def test_explain_exits_20_when_nothing_fits():
    res = CliRunner().invoke(cli, ["explain", str(ROOT / "daemonset/examples/llama-405b.yaml")])
    assert res.exit_code == 20, res.output
    assert "needs 240000 MiB on one GPU" in res.output
    ok = CliRunner().invoke(cli, ["explain", str(ROOT / "daemonset/examples/qwen3-8b-fast.yaml")])
    assert ok.exit_code == 0, ok.output


# --- one freshness contract --------------------------------------------------------------------------------


def test_every_tool_calls_the_same_node_stale(tmp_path):
    """Two nodes whose agents last wrote 200 s and 400 s ago: with one contract (300 s) every tool says the
    first is fresh and the second stale (before: explain 180 s, preflight 600 s, extender 300 s)."""
    assert 200 < freshness.MAX_STATE_AGE_SECONDS < 400
    now = time.time()
    fleet = load_fleet(default_fleet_path())
    objs = {o["metadata"]["name"]: o for o in fleet_node_objects(fleet, now)}
    fresh = objs["rtxpro4000-worker"]
    fresh_ages = fleet_node_objects(fleet, now - 200)
    stale_ages = fleet_node_objects(fleet, now - 400)
    items = [next(o for o in fresh_ages if o["metadata"]["name"] == "rtxpro4000-worker"),
             next(o for o in stale_ages if o["metadata"]["name"] == "cblevins-gtx980ti")]
    assert fresh["metadata"]["name"] == "rtxpro4000-worker"
    nodes_file = tmp_path / "nodes.json"
    nodes_file.write_text(json.dumps({"kind": "NodeList", "items": items}))

    rows = json.loads(CliRunner().invoke(cli, ["nodes", "--nodes-from", str(nodes_file), "-o", "json"]).output)
    health = {r["node"]: r["health"] for r in rows}
    assert "(stale)" not in health["rtxpro4000-worker"] and "(stale)" in health["cblevins-gtx980ti"]

    llama = ROOT / "daemonset/examples/preflight/pass.yaml"
    pod = {"metadata": {"name": "p", "annotations": {"flexinfer.ai/backend": "llamacpp",
                                                     "flexinfer.ai/gpu.vram-estimate-mb": "1000"}},
           "spec": {"containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}
    pod_file = tmp_path / "pod.yaml"
    pod_file.write_text(yaml.safe_dump(pod))
    res = CliRunner().invoke(cli, ["explain", str(pod_file), "--nodes-from", str(nodes_file), "-o", "json"])
    verdicts = {r["node"]: r for r in json.loads(res.output)}
    assert verdicts["rtxpro4000-worker"]["verdict"] == "pass"
    assert verdicts["cblevins-gtx980ti"]["verdict"] != "pass"
    assert "observed 400 s ago (max 300 s)" in verdicts["cblevins-gtx980ti"]["reason"]

    assert llama.exists()
    res = CliRunner().invoke(cli, ["preflight", str(llama), "--nodes-from", str(nodes_file), "--json"])
    report = json.loads(res.output)
    inventory = next(c for c in report["checks"] if c["name"] == "gpu_inventory")
    assert "1 with stale state" in inventory["message"] and "cblevins-gtx980ti" in inventory["message"]
    assert "rtxpro4000-worker" not in inventory["message"].split("stale state")[1]


@pytest.mark.integration
def test_api_requests_carry_our_user_agent(fake_api):
    from flexinfer import kube

    api = kube.api_client(server=fake_api.url)
    kube.list_objects(api, "nodes")
    agents = {r.user_agent for r in fake_api.requests("GET")}
    assert agents == {f"flexinfer/{VERSION}"}


def test_user_agent_names_the_running_component(monkeypatch):
    from flexinfer.kube.client import component_name

    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/flexinfer-agent", "--node", "x"])
    assert component_name() == "flexinfer-agent"
    monkeypatch.setattr(sys, "argv", ["/usr/bin/python -c"])
    assert component_name() == "flexinfer"


def test_agent_info_metric_carries_the_installed_version():
    from flexinfer.agent.metrics import AgentMetrics
    from prometheus_client import generate_latest

    m = AgentMetrics("n1")
    m.observe([], 0.001, "NullReader", "ok")
    text = generate_latest(m.registry).decode()
    assert f'version="{VERSION}"' in text
