"""Agent benchmarks: CPU time per sample (8 GPUs), RSS of a real agent process, Node writes per hour.

* CPU per sample: `Agent.step()` (the real NVML / amdsmi readers over the fleet fakes, NodeGpuState,
  metrics update, hysteresis check) for a node with 8 GPUs, `time.process_time()` around N samples.
  The fakes stand in for libnvidia-ml / libamd_smi, whose own cost on real hardware is not included.
* RSS: a fresh `python -m flexinfer.agent.main` process (fake 8-GPU node, metrics + gRPC servers,
  publishing to a local fake API server), VmRSS/VmHWM from /proc after it has sampled and been scraped.
* Node writes per hour: the real Publisher (hysteresis + JSON merge patch over HTTP to
  flexinfer.sim.fakeapi.FakeApiServer) for 3600 samples at a 1 s interval on a fake clock, every GPU's
  used memory jittering by +/-100 MiB each sample (the fleet `noise` fault).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.stats import cpu_seconds
from flexinfer.fleet import Fault, Fleet, FleetGpu, FleetNode, dump_fleet

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_800_000_000.0


class FakeClock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def eight_gpu_node(vendor: str = "nvidia", noise_mib: int = 100, name: str = "") -> FleetNode:
    if vendor == "nvidia":
        arch, product, total, cap = "sm_90", "NVIDIA H100 80GB HBM3", 81559, 700.0
    else:
        arch, product, total, cap = "gfx942", "AMD Instinct MI300X OAM", 196592, 750.0
    noise = [Fault(type="noise", mib=noise_mib)] if noise_mib else []
    gpus = [FleetGpu(vendor=vendor, arch=arch, product=product, total_mi_b=total, used_mi_b=20000 + 1000 * i,
                     power_cap_w=cap, power_w=cap * 0.2, faults=list(noise)) for i in range(8)]
    return FleetNode(name=name or f"bench-8x-{arch}", gpus=gpus)


def cpu_per_sample(vendor: str, samples: int) -> dict[str, Any]:
    from flexinfer.agent.agent import Agent
    from flexinfer.agent.readers.fake import fleet_reader

    node = eight_gpu_node(vendor)
    clock = FakeClock()
    agent = Agent(node.name, fleet_reader(node, clock=clock), None, interval_seconds=1.0, clock=clock)
    for _ in range(20):
        clock.t += 1
        agent.step()
    t0, w0 = time.process_time(), time.perf_counter()
    for _ in range(samples):
        clock.t += 1
        agent.step()
    cpu = time.process_time() - t0
    wall = time.perf_counter() - w0
    gpus = len(agent.state.gpus) if agent.state else 0
    t1 = time.process_time()
    scrapes = 50
    for _ in range(scrapes):
        body = agent.metrics.exposition()
    scrape_ms = (time.process_time() - t1) / scrapes * 1000
    agent.stop()
    return {"vendor": vendor, "gpus": gpus, "samples": samples, "cpu_ms_per_sample": round(cpu / samples * 1000, 3),
            "wall_ms_per_sample": round(wall / samples * 1000, 3), "metrics_scrape_cpu_ms": round(scrape_ms, 3),
            "metrics_bytes": len(body)}


def node_writes_per_hour(samples: int = 3600, interval_s: float = 1.0, noise_mib: int = 100) -> dict[str, Any]:
    from flexinfer.agent.agent import Agent
    from flexinfer.agent.publish import DEFAULT_HEARTBEAT_SECONDS, DEFAULT_THRESHOLD_MIB, Publisher
    from flexinfer.agent.readers.fake import fleet_reader

    from flexinfer import kube
    from flexinfer.sim.fakeapi import FakeApiServer

    node = eight_gpu_node("nvidia", noise_mib)
    clock = FakeClock()
    with FakeApiServer() as fake:
        fake.put_object({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node.name, "labels": {}}})
        api = kube.api_client(server=fake.url)
        try:
            pub = Publisher(api, node.name)
            agent = Agent(node.name, fleet_reader(node, clock=clock), pub, interval_seconds=interval_s, clock=clock)
            before = fake.request_count
            free_seen: list[int] = []
            for _ in range(samples):
                clock.t += interval_s
                r = agent.step()
                free_seen.append(sum(g.free_mib for g in r.state.gpus))
            requests = fake.request_count - before
            ann = (fake.get_object("nodes", node.name) or {}).get("metadata", {}).get("annotations", {})
            agent.stop()
        finally:
            api.close()
    hours = samples * interval_s / 3600.0
    return {
        "samples": samples, "interval_seconds": interval_s, "noise_mib": noise_mib,
        "threshold_mib": DEFAULT_THRESHOLD_MIB, "heartbeat_seconds": DEFAULT_HEARTBEAT_SECONDS,
        "writes": pub.writes_ok, "failed_writes": pub.writes_failed,
        "writes_per_hour": round(pub.writes_ok / hours, 1), "writes_per_minute": round(pub.writes_ok / hours / 60, 3),
        "api_requests": requests, "node_free_mib_spread": max(free_seen) - min(free_seen),
        "annotations_written": sorted(ann),
    }


def _status_kib(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
                out[k] = int(v.split()[0])
    return out


def _sample_count(metrics: str) -> float:
    for line in metrics.splitlines():
        if line.startswith("flexinfer_agent_sample_duration_seconds_count"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def agent_process_rss(workdir: Path, seconds: float = 6.0, interval_s: float = 0.25,
                      env: dict[str, str] | None = None) -> dict[str, Any]:
    from bench.extender_bench import free_port
    from flexinfer.sim.fakeapi import FakeApiServer

    node = eight_gpu_node("nvidia")
    fleet_file = workdir / "agent-fleet.yaml"
    fleet_file.write_text(dump_fleet(Fleet(nodes=[node])))
    mport, gport = free_port(), free_port()
    with FakeApiServer() as fake:
        fake.put_object({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node.name}})
        cmd = [sys.executable, "-m", "flexinfer.agent.main", "--node", node.name, "--fake-gpus", str(fleet_file),
               "--kube-server", fake.url, "--metrics-port", str(mport), "--grpc-port", str(gport),
               "--bind-address", "127.0.0.1", "--interval-seconds", str(interval_s), "--log-level", "warning"]
        log = open(workdir / "agent.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        try:
            url = f"http://127.0.0.1:{mport}"
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"agent exited {proc.returncode}: {(workdir / 'agent.log').read_text()[-1500:]}")
                try:
                    with urllib.request.urlopen(url + "/readyz", timeout=1) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("agent not ready within 30 s")
                time.sleep(0.1)
            time.sleep(1.0)
            with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
                n0 = _sample_count(r.read().decode())
            c0 = cpu_seconds(proc.pid)
            time.sleep(seconds)
            with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
                text = r.read().decode()
            n1 = _sample_count(text)
            c1 = cpu_seconds(proc.pid)
            mem = _status_kib(proc.pid)
            node_obj = fake.get_object("nodes", node.name) or {}
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            log.close()
    samples = max(1.0, n1 - n0)
    return {
        "rss_mib": round(mem.get("VmRSS", 0) / 1024, 1), "peak_rss_mib": round(mem.get("VmHWM", 0) / 1024, 1),
        "rss_anon_mib": round(mem.get("RssAnon", 0) / 1024, 1), "rss_file_mib": round(mem.get("RssFile", 0) / 1024, 1),
        "threads": mem.get("Threads", 0),
        "interval_seconds": interval_s, "samples_in_window": int(samples),
        "process_cpu_ms_per_sample": round((c1 - c0) / samples * 1000, 3),
        "published": bool((node_obj.get("metadata") or {}).get("annotations")),
        "command": " ".join(["flexinfer-agent", *cmd[3:]]), "env": env or {},
        "modules_note": _heavy_modules(),
    }


def _heavy_modules() -> dict[str, float]:
    """RSS (MiB) of a bare interpreter, of the agent's imports without and with the kubernetes package."""
    code = ("import re,sys\n"
            "def rss():\n return int(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read()).group(1))/1024\n"
            "a=rss()\n"
            "import flexinfer.agent.main, flexinfer.agent.grpc_server, flexinfer.agent.metrics\n"
            "import flexinfer.agent.readers.fake, pynvml, urllib3\n"
            "b=rss()\nimport kubernetes.client\nc=rss()\n"
            "print(round(a,1), round(b,1), round(c,1))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         check=False)
    try:
        a, b, c = (float(x) for x in out.stdout.split())
    except ValueError:
        return {}
    return {"interpreter_mib": a, "agent_imports_without_kubernetes_mib": b, "plus_kubernetes_client_mib": c}


def run(workdir: Path, progress: Any, *, quick: bool = False) -> dict[str, Any]:
    n = 300 if quick else 2000
    out: dict[str, Any] = {"cpu": [], "notes": []}
    for vendor in ("nvidia", "amd"):
        progress(f"agent: CPU per sample, 8 {vendor} GPUs, {n} samples")
        out["cpu"].append(cpu_per_sample(vendor, n))
    progress("agent: RSS of a fresh agent process (fake 8-GPU node, metrics + gRPC + publishing)")
    try:
        out["process"] = agent_process_rss(workdir, seconds=3.0 if quick else 6.0)
        progress("agent: the same with MALLOC_ARENA_MAX=2 (glibc arenas per thread)")
        out["process_arena2"] = agent_process_rss(workdir, seconds=3.0, env={"MALLOC_ARENA_MAX": "2"})
    except Exception as e:
        out["notes"].append(f"agent process RSS not measured: {type(e).__name__}: {e}")
    samples = 900 if quick else 3600
    progress(f"agent: Node writes under +/-100 MiB noise, {samples} samples at 1 s (fake clock)")
    out["writes"] = node_writes_per_hour(samples)
    return out


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        print(json.dumps(run(Path(d), lambda m: print("..", m, file=sys.stderr), quick=True), indent=1))
