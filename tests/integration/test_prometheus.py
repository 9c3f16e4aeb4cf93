"""Prometheus for real: Debian's `prometheus` scrapes a running agent and extender on loopback.

What it proves to a Prometheus user:
* both /metrics endpoints are scrapeable by a real Prometheus (`up == 1`);
* the agent's `flexinfer_gpu_memory_free_bytes` for the GTX 980 Ti of the homelab fleet equals the
  fleet's free memory (totalMiB - usedMiB) in bytes, as stored by Prometheus and read back via the
  HTTP API (/api/v1/query);
* the extender's latency histogram `flexinfer_extender_request_duration_seconds` has observations
  for the filter requests we sent;
* `promtool check metrics` (the upstream linter) passes on both endpoints' exposition text.

`hack/test.sh` installs the Debian package when it is missing and the script runs as root; otherwise
the test is skipped with the reason. The agent (fake GPUs through the real NVML reader, sampling
every 0.5 s) and the extender (static `--nodes-from` homelab fleet) run as threads in this process;
Prometheus is a subprocess. Everything is stopped by fixture finalizers.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flexinfer.fleet import default_fleet_path, load_fleet

pytestmark = pytest.mark.integration

NODE = "cblevins-gtx980ti"
MIB = 1024 * 1024
DEADLINE_S = 30.0


def _binaries() -> tuple[str, str]:
    prom, tool = shutil.which("prometheus"), shutil.which("promtool")
    if not prom or not tool:
        pytest.skip("Debian package `prometheus` (prometheus + promtool) is not installed; "
                    "`bash hack/test.sh` installs it when run as root")
    return prom, tool


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 2.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


@pytest.fixture
def agent_url() -> Iterator[str]:
    from flexinfer.agent.agent import Agent
    from flexinfer.agent.readers.fake import fleet_reader

    from flexinfer.ops_http import OpsServer

    node = load_fleet(default_fleet_path()).node(NODE)
    agent = Agent(NODE, fleet_reader(node), None, interval_seconds=0.5)
    agent.step()  # the first sample is there before anyone scrapes
    http = OpsServer("127.0.0.1", 0, metrics=agent.metrics.exposition, healthy=agent.healthy,
                     ready=agent.ready).start()
    agent.start()
    try:
        yield f"http://127.0.0.1:{http.port}"
    finally:
        agent.stop()
        http.stop()


@pytest.fixture
def extender_url() -> Iterator[str]:
    from flexinfer.extender.http import serve_in_thread
    from flexinfer.extender.main import build

    running = build(nodes_from=str(default_fleet_path()))
    handle = serve_in_thread(running.app, "127.0.0.1", 0)
    try:
        yield handle.url
    finally:
        handle.stop()
        running.stop()


def _filter_requests(url: str, n: int = 5) -> None:
    from flexinfer import keys

    pod = {"metadata": {"name": "qwen3-14b-0", "namespace": "llm", "uid": "u-1",
                        "annotations": {keys.POD_VRAM_ESTIMATE_MB: "10240", keys.POD_BACKEND: "llamacpp"}},
           "spec": {"containers": [{"name": "server", "resources": {"limits": {"amd.com/gpu": "1"}}}]}}
    names = [n.name for n in load_fleet(default_fleet_path()).nodes]
    body = json.dumps({"Pod": pod, "Nodes": None, "NodeNames": names}).encode()
    for _ in range(n):
        req = urllib.request.Request(url + "/filter", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200
            assert "NodeNames" in json.loads(r.read())


@pytest.fixture
def prometheus(tmp_path: Path, agent_url: str, extender_url: str) -> Iterator[str]:
    prom, _ = _binaries()
    port = _free_port()
    agent_host = urllib.parse.urlsplit(agent_url).netloc
    ext_host = urllib.parse.urlsplit(extender_url).netloc
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        f"  - job_name: flexinfer-agent\n    static_configs: [{{targets: ['{agent_host}']}}]\n"
        f"  - job_name: flexinfer-extender\n    static_configs: [{{targets: ['{ext_host}']}}]\n"
    )
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [prom, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + DEADLINE_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited with {proc.returncode}: "
                            + (tmp_path / "prometheus.log").read_text()[-2000:])
            try:
                if _get(url + "/-/ready").strip():
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("prometheus did not become ready within 30 s")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def _query(prom_url: str, expr: str) -> list[dict[str, Any]]:
    data = json.loads(_get(f"{prom_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})))
    assert data["status"] == "success", data
    return data["data"]["result"]


def _wait_for(prom_url: str, expr: str, deadline: float) -> list[dict[str, Any]]:
    while True:
        result = _query(prom_url, expr)
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"no samples for {expr!r} within {DEADLINE_S:.0f} s")
        time.sleep(0.25)


def test_prometheus_scrapes_agent_and_extender(prometheus: str, agent_url: str, extender_url: str) -> None:
    _filter_requests(extender_url)
    deadline = time.monotonic() + DEADLINE_S

    up = _wait_for(prometheus, 'sum(up{job=~"flexinfer-.*"}) == 2', deadline)
    assert float(up[0]["value"][1]) == 2.0

    gpu = load_fleet(default_fleet_path()).node(NODE).gpus[0]
    want_bytes = (gpu.total_mib - gpu.used_mib) * MIB
    free = _wait_for(prometheus, f'flexinfer_gpu_memory_free_bytes{{node="{NODE}"}}', deadline)
    assert len(free) == 1, free
    assert free[0]["metric"]["vendor"] == "nvidia"
    assert free[0]["metric"]["arch"] == "sm_52"
    assert float(free[0]["value"][1]) == want_bytes

    count = _wait_for(prometheus, 'flexinfer_extender_request_duration_seconds_count{verb="filter"}', deadline)
    assert float(count[0]["value"][1]) >= 5
    buckets = _query(prometheus, 'flexinfer_extender_request_duration_seconds_bucket{verb="filter",le="+Inf"}')
    assert buckets and float(buckets[0]["value"][1]) >= 5


@pytest.mark.parametrize("which", ["agent", "extender"])
def test_promtool_check_metrics_passes(which: str, agent_url: str, extender_url: str) -> None:
    _, promtool = _binaries()
    if which == "extender":
        _filter_requests(extender_url, 2)  # latency histogram and verdict counters have series
    text = _get((agent_url if which == "agent" else extender_url) + "/metrics")
    assert b"flexinfer_" in text
    out = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=30, check=False)
    report = (out.stdout + out.stderr).decode()
    assert out.returncode == 0, f"promtool check metrics on the {which}'s /metrics:\n{report}"
    assert "error" not in report.lower(), report
