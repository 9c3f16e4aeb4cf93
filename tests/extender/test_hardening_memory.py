"""Issue 14 items 2 and 3 over real sockets: memory and metric series stay bounded whatever clients send.

* 12 filter requests, each naming 100k different nodes the extender does not know: the server process's RSS
  does not grow with every request (before the verdict cache was bounded, each request memoised 100k
  unknown names per pod shape: +30 MiB a request, kept).
* Nodes items carrying 50k distinct (made-up) gfx targets: the verdict metric's `reason` label stays in its
  closed set (before: one series per invented architecture, 50k series and a 20 MiB /metrics).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from flexinfer.extender.cache import NodeCache
from flexinfer.extender.http import build_app, serve_in_thread
from flexinfer.extender.service import Extender

from flexinfer import keys
from flexinfer.state import GpuState, NodeGpuState, node_annotations, node_labels

from .ext_fixtures import fleet_nodes, model_pod, node_obj

pytestmark = pytest.mark.integration


# The extender as a service runs it (own process, cache synced from a file, GC frozen after the sync).
SERVER = """
import sys
from flexinfer import logs
from flexinfer.extender.cache import NodeCache
from flexinfer.extender.http import build_app, serve_in_thread
from flexinfer.extender.service import Extender
logs.configure("warning", "json")
cache = NodeCache()
cache.freeze_gc_on_sync = True
cache.load_static(sys.argv[1])
handle = serve_in_thread(build_app(Extender(cache), max_body_bytes=64 << 20), "127.0.0.1", int(sys.argv[2]))
sys.stdin.read()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_unknown_node_names_do_not_grow_memory(tmp_path: Path) -> None:
    nodes = tmp_path / "nodes.json"
    nodes.write_text(json.dumps({"kind": "NodeList", "items": fleet_nodes(time.time())}))
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(nodes), str(port)], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if c.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "extender did not start"
                time.sleep(0.1)
            pod = model_pod(8000, "llamacpp", 1)
            rss = []
            for r in range(12):
                names = [f"ghost-{r}-{i}" for i in range(100_000)]
                resp = c.post("/filter", content=json.dumps({"Pod": pod, "NodeNames": names}))
                assert resp.status_code in (200, 400, 413), resp.text[:200]  # a names limit may refuse it
                if resp.status_code == 200:
                    body = resp.json()
                    assert len(body["FailedNodes"]) == 100_000
                rss.append(_rss_mib(proc.pid))
            ok = c.post("/filter", content=json.dumps({"Pod": pod, "NodeNames": ["ada-24g", "ghost"]}))
            assert ok.status_code == 200 and ok.json()["NodeNames"] == ["ada-24g"]
    finally:
        proc.terminate()
        proc.wait(10)
        assert proc.stdin is not None
        proc.stdin.close()
    # after the first few requests (allocator warm-up), ten more requests of 100k new names each add little
    assert rss[-1] - rss[2] < 40, rss


def _gfx_node(i: int, now: float) -> dict:
    g = GpuState(0, f"GPU-h-{i}", "amd", f"gfx{0x10000 + i:05x}", 24560, 24000)
    name = f"hostile-{i}"
    return {"metadata": {"name": name, "resourceVersion": "1", "labels": node_labels([g]),
                         "annotations": node_annotations(NodeGpuState(name, (g,), now))}}


def test_invented_gfx_targets_do_not_add_metric_series() -> None:
    ext = Extender(NodeCache())
    handle = serve_in_thread(build_app(ext, max_body_bytes=64 << 20), "127.0.0.1", 0)
    pod = model_pod(8000, "vllm", 1, resource=keys.RESOURCE_AMD)
    now = time.time()
    try:
        with httpx.Client(base_url=handle.url, timeout=60) as c:
            for start in range(0, 50_000, 5000):
                items = [_gfx_node(i, now) for i in range(start, start + 5000)]
                out = c.post("/filter", content=json.dumps({"Pod": pod, "Nodes": {"items": items}})).json()
                # answers keep the exact reasons; only the metric label is folded
                assert out["FailedAndUnresolvableNodes"][f"hostile-{start}"].startswith(
                    f"vllm does not support gfx{0x10000 + start:05x}")
            known = c.post("/filter", content=json.dumps({"Pod": pod, "Nodes": {"items": [
                node_obj("mi50", [GpuState(0, "u", "amd", "gfx906", 16368, 16000)])]}})).json()
            text = c.get("/metrics").text
    finally:
        handle.stop()
    series = [ln for ln in text.splitlines() if ln.startswith("flexinfer_extender_verdicts_total{")]
    assert len(series) < 20, len(series)
    assert any('reason="other"' in ln for ln in series)
    reason = known["FailedAndUnresolvableNodes"]["mi50"]  # a known architecture keeps its own label
    assert any(f'reason="{reason}"' in ln for ln in series), reason
    assert len(text) < 64 * 1024
