"""Prometheus exposition: names, units, absent unsupported metrics, Xid counters, promtool, HTTP endpoints."""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.request

import pytest
from flexinfer.agent.agent import Agent
from flexinfer.agent.metrics import AgentMetrics
from flexinfer.agent.readers.fake import fleet_reader

from flexinfer.ops_http import OpsServer

from .agent_helpers import amd_gpu, node_from, nvidia_gpu


def scrape(agent: Agent) -> str:
    return agent.metrics.exposition().decode()


def test_gpu_series_with_labels_and_base_units() -> None:
    node = node_from([nvidia_gpu(powerW=60, powerCapW=150, faults=[{"type": "xid", "xid": 79, "atSample": 2},
                                                                   {"type": "throttle", "reasons": ["hw_slowdown"]}])])
    agent = Agent("n1", fleet_reader(node))
    agent.step(now=1.0)
    agent.step(now=2.0)
    text = scrape(agent)
    lines = {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
             if ln and not ln.startswith("#")}
    lab = next(k for k in lines if k.startswith("flexinfer_gpu_memory_total_bytes{")).split("{", 1)[1]
    for want in ('node="n1"', 'gpu="0"', 'uuid="GPU-', 'vendor="nvidia"', 'arch="sm_86"', 'model="NVIDIA A10"'):
        assert want in lab
    base = "{" + lab
    assert lines["flexinfer_gpu_memory_total_bytes" + base] == 23028 * 2**20
    assert lines["flexinfer_gpu_memory_used_bytes" + base] == 1000 * 2**20
    assert lines["flexinfer_gpu_memory_reserved_bytes" + base] == 0
    assert lines["flexinfer_gpu_power_usage_watts" + base] == 60.0
    assert lines["flexinfer_gpu_power_limit_watts" + base] == 150.0
    assert lines["flexinfer_gpu_healthy" + base] == 0.0
    assert lines["flexinfer_gpu_last_xid" + base] == 79.0
    assert lines["flexinfer_gpu_last_xid_timestamp_seconds" + base] > 0
    xid = [k for k in lines if k.startswith("flexinfer_gpu_xid_errors_total{")]
    assert len(xid) == 1 and 'xid="79"' in xid[0] and lines[xid[0]] == 1.0
    assert any('reason="hw_slowdown"' in k and v == 1.0 for k, v in lines.items() if "throttle_reason" in k)
    assert any('clock="sm"' in k and v == 1500e6 for k, v in lines.items() if "clock_hertz" in k)
    assert any('state="max"' in k for k in lines if k.startswith("flexinfer_gpu_pcie_link_width_lanes{"))
    assert any(k.startswith("flexinfer_agent_sample_duration_seconds_bucket") for k in lines)
    assert any(k.startswith("flexinfer_agent_info{") for k in lines)


def test_unsupported_metrics_are_absent() -> None:
    node = node_from([nvidia_gpu(faults=[{"type": "not-supported", "metric": m}
                                         for m in ("power", "temperature", "memory_v2", "ecc")])])
    agent = Agent("n1", fleet_reader(node))
    agent.step(now=1.0)
    text = scrape(agent)
    for name in ("flexinfer_gpu_power_usage_watts{", "flexinfer_gpu_power_limit_watts{",
                 "flexinfer_gpu_temperature_celsius{", "flexinfer_gpu_memory_reserved_bytes{",
                 "flexinfer_gpu_ecc_errors_total{"):
        assert name not in text
    assert "flexinfer_gpu_memory_free_bytes{" in text


def test_amd_ecc_series() -> None:
    agent = Agent("a1", fleet_reader(node_from([amd_gpu(faults=[{"type": "ecc", "uncorrectable": 1,
                                                                  "atSample": 2}])])))
    agent.step(now=1.0)
    agent.step(now=2.0)
    text = scrape(agent)
    assert re.search(r'flexinfer_gpu_ecc_errors_total\{[^}]*type="uncorrectable"[^}]*vendor="amd"[^}]*\} 1\.0', text)
    assert re.search(r'flexinfer_gpu_healthy\{[^}]*\} 0\.0', text)


def test_many_agents_have_separate_registries() -> None:
    a, b = AgentMetrics("x"), AgentMetrics("y")
    a.wrote("success")
    assert b'node="x"' in a.exposition() and b'node="x"' not in b.exposition()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_check_metrics_passes() -> None:
    node = node_from([nvidia_gpu(faults=[{"type": "xid", "xid": 13}]), amd_gpu()])
    agent = Agent("n1", fleet_reader(node))
    agent.step(now=1.0)
    agent.metrics.wrote("success")
    out = subprocess.run(["promtool", "check", "metrics"], input=agent.metrics.exposition(), capture_output=True,
                         timeout=30)
    assert out.returncode == 0, (out.stdout + out.stderr).decode()


@pytest.mark.integration
def test_http_endpoints() -> None:
    agent = Agent("n1", fleet_reader(node_from([nvidia_gpu()])))
    srv = OpsServer("127.0.0.1", 0, metrics=agent.metrics.exposition, healthy=agent.healthy, ready=agent.ready)
    srv.start()
    base = f"http://127.0.0.1:{srv.port}"
    try:
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(base + "/readyz", timeout=5)
        assert exc.value.code == 503
        agent.step(now=1.0)
        with urllib.request.urlopen(base + "/readyz", timeout=5) as r:
            assert r.status == 200
        with urllib.request.urlopen(base + "/healthz", timeout=5) as r:
            assert r.status == 200
        with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
            assert r.headers["Content-Type"].startswith("text/plain") and b"flexinfer_gpu_healthy" in r.read()
    finally:
        srv.stop()


def test_agent_info_carries_driver_and_runtime() -> None:
    agent = Agent("n1", fleet_reader(node_from([nvidia_gpu()])))
    agent.step(now=1.0)
    text = scrape(agent)
    assert re.search(r'flexinfer_agent_info\{[^}]*driver_version="580\.95\.05"[^}]*runtime_version="cuda 13\.0"', text)
