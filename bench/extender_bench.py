"""Extender benchmarks over real loopback HTTP (and gRPC): latency p50/p99 per verb and request form,
the do-nothing floor on the same stack, and throughput from a separate load process.

Layout on a 2-core machine: every server process is pinned to CPU 0 (one core, the target's
budget); this driver and the load process run on CPU 1, so client cost never steals server time.

Servers (one each, started once per run):
* `warm`: the extender in static mode with every generated node in its cache (as after an informer
  sync); nodenames requests name the first N nodes; full-nodes requests carry node objects whose
  resourceVersion matches the cache (the extender reuses its parsed view).
* `cold`: the extender with an EMPTY cache (no watch), measured twice in full-nodes mode:
  `extender-cold-cache` alternates two resourceVersions per node, so every node's labels and annotations
  are parsed from every request (first sight, the worst case); `extender-request-memo` repeats one body,
  as kube-scheduler re-sends unchanged Nodes, so the request memo (flexinfer.nodes.NodeViewMemo) hits.
* `floor`: bench.floor — same uvicorn config, same msgspec decoding of ExtenderArgs, no policy.
"""

from __future__ import annotations

import contextlib
import gc
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from bench import transport, workload
from bench.stats import cpu_seconds, summary_ms

ROOT = Path(__file__).resolve().parent.parent
SERVE = [sys.executable, "-m", "bench.serve"]  # how a bench server process starts (a before/after run may swap it)


def cpus() -> tuple[int, int]:
    """(server cpu, client cpu), or (-1, -1) when pinning is impossible (one core / no affinity API)."""
    try:
        avail = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return -1, -1
    if len(avail) < 2:
        return -1, -1
    return avail[0], avail[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    grpc_port: int = 0
    log_path: str = ""

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        """User+system CPU of the server process so far (from /proc)."""
        try:
            return cpu_seconds(self.proc.pid)
        except (OSError, IndexError, ValueError):
            return float("nan")

    def rss_mib(self) -> float:
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_server(name: str, app: str, workdir: Path, *, nodes_file: Path | None = None, grpc: bool = False,
                 cpu: int = -1, timeout_s: float = 90.0, log_level: str = "info", kube_server: str = "",
                 answers: Path | None = None) -> Server:
    port = free_port()
    grpc_port = free_port() if grpc else 0
    cmd = [*SERVE, "--app", app, "--port", str(port), "--cpu", str(cpu),
           "--log-level", log_level]
    if nodes_file is not None:
        cmd += ["--nodes", str(nodes_file)]
    if kube_server:
        cmd += ["--kube-server", kube_server]
    if answers is not None:
        cmd += ["--answers", str(answers)]
    if grpc_port:
        cmd += ["--grpc-port", str(grpc_port)]
    log_path = workdir / f"{name}.log"
    logf = open(log_path, "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT)
    srv = Server(name, proc, port, grpc_port, str(log_path))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bench server {name} exited ({proc.returncode}); log: {log_path}\n"
                               + Path(log_path).read_text()[-2000:])
        try:
            with urllib.request.urlopen(srv.base + "/readyz", timeout=1) as r:
                if r.status == 200:
                    return srv
        except OSError:
            pass
        time.sleep(0.1)
    srv.stop()
    raise RuntimeError(f"bench server {name} not ready after {timeout_s:.0f} s; log: {log_path}")


class Client:
    """One keep-alive HTTP/1.1 connection (stdlib http.client: the cheapest Python client)."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        self.conn.request("POST", path, body, {"Content-Type": "application/json"})
        r = self.conn.getresponse()
        return r.status, r.read()

    def close(self) -> None:
        self.conn.close()


def measure_interleaved(ports: list[int], path: str, body: bytes | list[bytes], n: int, warmup: int, *,
                        budget_s: float = 1e9, min_n: int = 20) -> list[tuple[list[float], bytes]]:
    """Like `measure` for several servers at once: request i goes to every server in turn (one keep-alive
    connection each, one request in flight), so a noisy moment hits all of them alike. With a list of bodies,
    request i sends bodies[i % len] to every server (warm-up requests use them too)."""
    bodies = body if isinstance(body, list) else [body]
    seq = iter(bodies * (1 + (warmup + n) // len(bodies)))
    clients = [Client(p) for p in ports]
    try:
        last = [b""] * len(ports)
        for _ in range(warmup):
            body = next(seq)
            for k, c in enumerate(clients):
                status, last[k] = c.post(path, body)
                if status != 200:
                    raise RuntimeError(f"POST {path} -> {status}: {last[k][:300]!r}")
        out: list[list[float]] = [[] for _ in ports]
        stop_at = time.perf_counter() + budget_s
        for _ in range(n):
            body = next(seq)
            for k, c in enumerate(clients):
                t0 = time.perf_counter()
                status, last[k] = c.post(path, body)
                out[k].append(time.perf_counter() - t0)
                if status != 200:
                    raise RuntimeError(f"POST {path} -> {status}: {last[k][:300]!r}")
            if time.perf_counter() > stop_at and len(out[0]) >= min_n:
                break
        return list(zip(out, last, strict=True))
    finally:
        for c in clients:
            c.close()


def measure(port: int, path: str, body: bytes | list[bytes], n: int, warmup: int, *, budget_s: float = 1e9,
            min_n: int = 20) -> tuple[list[float], bytes]:
    """n sequential requests (after `warmup`), or fewer once `budget_s` is spent and `min_n` are done.
    With a list of bodies, request i sends bodies[i % len] (warm-up requests use them too)."""
    bodies = body if isinstance(body, list) else [body]
    seq = iter(bodies * (1 + (warmup + n) // len(bodies)))
    c = Client(port)
    try:
        last = b""
        for _ in range(warmup):
            status, last = c.post(path, next(seq))
            if status != 200:
                raise RuntimeError(f"POST {path} -> {status}: {last[:300]!r}")
        out: list[float] = []
        stop_at = time.perf_counter() + budget_s
        for _ in range(n):
            b = next(seq)
            t0 = time.perf_counter()
            status, last = c.post(path, b)
            out.append(time.perf_counter() - t0)
            if t0 > stop_at and len(out) >= min_n:
                break
            if status != 200:
                raise RuntimeError(f"POST {path} -> {status}: {last[:300]!r}")
        return out, last
    finally:
        c.close()


def check_filter(resp: bytes, n: int, mode: str) -> dict[str, int]:
    """Shape check of a filter answer; returns the verdict counts."""
    d = json.loads(resp)
    failed, unres = d.get("FailedNodes") or {}, d.get("FailedAndUnresolvableNodes") or {}
    passed = len(d["NodeNames"]) if mode == "names" else len(d["Nodes"]["items"])
    if passed + len(failed) + len(unres) != n:
        raise RuntimeError(f"filter answered {passed}+{len(failed)}+{len(unres)} nodes for {n}")
    return {"passed": passed, "failed": len(failed), "unresolvable": len(unres)}


def run_load(port: int, path: str, body: bytes, *, concurrency: int, seconds: float, cpu: int,
             workdir: Path, max_requests: int = 200_000) -> dict[str, Any]:
    """Throughput from a SEPARATE process (bench.load, aiohttp)."""
    body_file = workdir / f"load-{port}-{path.strip('/')}.json"
    body_file.write_bytes(body)
    cmd = [sys.executable, "-m", "bench.load", "--url", f"http://127.0.0.1:{port}{path}", "--body", str(body_file),
           "--concurrency", str(concurrency), "--seconds", str(seconds), "--max-requests", str(max_requests),
           "--cpu", str(cpu)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=seconds + 60, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"load process failed: {out.stderr.decode()[-2000:]}")
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


# --- gRPC -------------------------------------------------------------------------------------

def grpc_latency(port: int, pod_json: bytes, names: list[str], n: int, warmup: int,
                 verb: str = "Filter", budget_s: float = 1e9,
                 http: tuple[int, str, bytes] | None = None) -> tuple[list[float], Any, list[float], bytes, bytes]:
    """Like the HTTP client (a body encoded once, the answer's bytes read, not parsed): the request is serialised
    once and each call returns the response bytes; the last answer is parsed once afterwards for the checks.
    With `http` = (port, path, body), every gRPC call is followed by the same question over HTTP (one keep-alive
    connection), so both see the same machine noise; their latencies come back third, the last HTTP answer
    fourth (asked right after the last gRPC call: the two must agree), the last gRPC answer's bytes fifth. The
    method is called as the generated stub calls it (a registered method)."""
    import grpc

    from flexinfer.api.v1 import scheduler_extender_pb2 as pb

    client = Client(http[0]) if http else None
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=[
                ("grpc.max_receive_message_length", 256 * 1024 * 1024),
                ("grpc.max_send_message_length", 256 * 1024 * 1024)]) as ch:
            grpc.channel_ready_future(ch).result(timeout=30)
            call = ch.unary_unary(f"/flexinfer.api.v1.SchedulerExtender/{verb}",  # bytes in, bytes out
                                  _registered_method=True)
            src = pb.PodSource(pod_json=pod_json)
            message: Any = pb.FilterRequest if verb == "Filter" else pb.PrioritizeRequest
            req = message(pod=src, node_names=names).SerializeToString()
            resp = b""
            for _ in range(warmup):
                resp = call(req, timeout=60)
                if client is not None and http is not None:
                    client.post(http[1], http[2])
            out: list[float] = []
            other: list[float] = []
            body = b""
            stop_at = time.perf_counter() + budget_s
            for _ in range(n):
                t0 = time.perf_counter()
                resp = call(req, timeout=60)
                out.append(time.perf_counter() - t0)
                if client is not None and http is not None:
                    t1 = time.perf_counter()
                    status, body = client.post(http[1], http[2])
                    other.append(time.perf_counter() - t1)
                    if status != 200:
                        raise RuntimeError(f"POST {http[1]} -> {status}: {body[:300]!r}")
                if t0 > stop_at and len(out) >= 20:
                    break
            answer: Any = pb.FilterResponse if verb == "Filter" else pb.PrioritizeResponse
            return out, answer.FromString(resp), other, body, resp
    finally:
        if client is not None:
            client.close()


# --- the whole extender section ----------------------------------------------------------------

@dataclass
class Plan:
    sizes: tuple[int, ...] = (100, 1000, 5000)
    names_iters: dict[int, int] = field(default_factory=lambda: {100: 1000, 1000: 500, 5000: 300})
    nodes_iters: dict[int, int] = field(default_factory=lambda: {100: 200, 1000: 60, 5000: 12})
    budget_s: float = 10.0  # per (size, form, verb, server): stop early once spent (min 20 samples, 5 at 5000 nodes)
    grpc_iters: dict[int, int] = field(default_factory=lambda: {100: 500, 1000: 300, 5000: 100})
    new_shape_min_iters: int = 1000  # new-pod-shape rows (issue 16 target 1: a p99)
    load_seconds: float = 5.0
    load_concurrency: int = 8
    log_level: str = "info"
    churn_rate: float = 5.0  # percent of the Nodes patched per second
    churn_seconds: float = 20.0
    hostile_scale: float = 1.0  # 12 x 100k unknown names (HTTP), 2 x 1M (gRPC), 50k gfx targets
    transport_iters: int = 1000  # per size and verb: the transports alone (bench.transport); 0 = skip

    @classmethod
    def quick(cls) -> Plan:
        return cls(sizes=(100, 1000), names_iters={100: 200, 1000: 100}, nodes_iters={100: 50, 1000: 15},
                   grpc_iters={100: 100, 1000: 50}, load_seconds=2.0, budget_s=4.0, churn_seconds=6.0,
                   hostile_scale=0.2, new_shape_min_iters=100, transport_iters=200)


@contextlib.contextmanager
def servers(plan: Plan, workdir: Path, progress: Any) -> Iterator[dict[str, Any]]:
    server_cpu, client_cpu = cpus()
    if client_cpu >= 0:
        os.sched_setaffinity(0, {client_cpu})
    biggest = max(plan.sizes)
    now = time.time()
    progress(f"generating {biggest} kubelet-sized Node objects")
    items = workload.node_objects(biggest, now, realistic=True)
    nodes_file = workdir / "nodes.json"
    nodes_file.write_bytes(msgspec.json.encode(workload.node_list(items)))
    empty_file = workdir / "empty.json"
    empty_file.write_bytes(msgspec.json.encode(workload.node_list([])))
    gc.collect()
    gc.freeze()  # the client's own 5000 Node dicts: no collector passes over them between timed requests
    started: list[Server] = []
    try:
        progress("starting extender (warm cache), extender (empty cache) and floor servers")
        warm = start_server("extender-warm", "extender", workdir, nodes_file=nodes_file, grpc=True, cpu=server_cpu,
                            log_level=plan.log_level)
        started.append(warm)
        cold = start_server("extender-cold", "extender", workdir, nodes_file=empty_file, cpu=server_cpu,
                            log_level=plan.log_level)
        started.append(cold)
        floor = start_server("floor", "floor", workdir, cpu=server_cpu, log_level=plan.log_level, grpc=True)
        started.append(floor)
        yield {"warm": warm, "cold": cold, "floor": floor, "items": items, "server_cpu": server_cpu,
               "client_cpu": client_cpu}
    finally:
        for s in started:
            s.stop()


def run(plan: Plan, workdir: Path, progress: Any) -> dict[str, Any]:
    res: dict[str, Any] = {"latency": [], "throughput": [], "grpc": [], "transport": [], "notes": [],
                           "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None}
    pod = workload.managed_pod()
    pod_json = msgspec.json.encode(pod)
    shape_seq = 0  # every new-shape request a vram estimate never sent before
    with servers(plan, workdir, progress) as s:
        warm, cold, floor, items = s["warm"], s["cold"], s["floor"], s["items"]
        res["pinning"] = {"server_cpu": s["server_cpu"], "client_cpu": s["client_cpu"]}
        res["node_json_bytes_avg"] = round(sum(len(msgspec.json.encode(i)) for i in items[:200]) / min(200, len(items)))
        for n in plan.sizes:
            sub = items[:n]
            names = [i["metadata"]["name"] for i in sub]
            bodies = {"names": workload.args_nodenames(pod, names), "nodes": workload.args_nodes(pod, sub)}
            # First sight for the empty-cache server: its request memo keeps one (name, resourceVersion) per
            # node, so alternating two resourceVersions per node makes every request parse every node.
            first_sight = [workload.args_nodes(pod, workload.with_rv_suffix(sub, k)) for k in ("a", "b")]
            for mode in ("names", "nodes"):
                iters = (plan.names_iters if mode == "names" else plan.nodes_iters)[n]
                warmup = 2 if mode == "nodes" and n >= 5000 else max(3, iters // 20)
                body = bodies[mode]
                targets = [("extender", warm), ("floor", floor)]
                if mode == "nodes":
                    targets.insert(1, ("extender-cold-cache", cold))
                    targets.insert(2, ("extender-request-memo", cold))
                for verb in ("filter", "prioritize"):
                    row: dict[str, Any] = {"nodes": n, "mode": mode, "verb": verb, "body_bytes": len(body)}
                    # The extender and its floor interleaved request by request, so both see the same
                    # machine noise and their ratio compares like with like.
                    progress(f"HTTP {verb} {mode} {n} nodes -> extender and floor, interleaved ({iters} each)")
                    pair = measure_interleaved([warm.port, floor.port], "/" + verb, body, iters, warmup,
                                               budget_s=2 * plan.budget_s,
                                               min_n=5 if (mode == "nodes" and n >= 5000) else 20)
                    for label, (lat, last) in zip(("extender", "floor"), pair, strict=True):
                        row[label] = summary_ms(lat)
                        if verb == "filter" and label != "floor":
                            row[label]["verdicts"] = check_filter(last, n, mode)
                    for label, srv in targets[1:-1]:  # the cold-cache variants, on their own
                        progress(f"HTTP {verb} {mode} {n} nodes -> {label} ({iters} requests)")
                        sent = first_sight if label == "extender-cold-cache" else body
                        lat, last = measure(srv.port, "/" + verb, sent, iters, warmup, budget_s=plan.budget_s,
                                            min_n=5 if (mode == "nodes" and n >= 5000) else 20)
                        row[label] = summary_ms(lat)
                        if verb == "filter" and label != "floor":
                            row[label]["verdicts"] = check_filter(last, n, mode)
                    if mode == "names":
                        # every request a pod shape the extender has not seen (no memo hits), interleaved with the
                        # floor fed the same bodies (issue 16 target: p99 <= 2x the floor's)
                        progress(f"HTTP {verb} {mode} {n} nodes -> extender and floor, new pod shape per request")
                        # at least 1000 requests: the target is a p99 (the 10th worst of 1000, not the 3rd of 300)
                        shape_iters = max(iters, plan.new_shape_min_iters)
                        fresh = [workload.args_nodenames(
                            workload.managed_pod("bench-new-shape-x", vram_mib=9000 + 7 * i), names)
                            for i in range(shape_seq, shape_seq + warmup + shape_iters)]
                        shape_seq += warmup + shape_iters
                        pair = measure_interleaved([warm.port, floor.port], "/" + verb, fresh, shape_iters, warmup,
                                                   budget_s=2 * plan.budget_s)
                        row["extender-new-shape"] = summary_ms(pair[0][0])
                        row["floor-new-shape"] = summary_ms(pair[1][0])
                        if verb == "filter":
                            row["extender-new-shape"]["verdicts"] = check_filter(pair[0][1], n, mode)
                    row["ratio_p50"] = round(row["extender"]["p50_ms"] / row["floor"]["p50_ms"], 2)
                    row["ratio_p99"] = round(row["extender"]["p99_ms"] / row["floor"]["p99_ms"], 2)
                    res["latency"].append(row)
            # gRPC Filter (same policy, same node cache) on the warm server
            if warm.grpc_port:
                echo_answers: dict[str, bytes] = {}
                try:
                    for verb in ("Filter", "Prioritize"):
                        iters = plan.grpc_iters[n]
                        progress(f"gRPC {verb} {n} nodes ({iters} requests)")
                        # the same question over HTTP after every gRPC call: the gRPC-vs-HTTP target compares these
                        lat, resp, hlat, hlast, raw = grpc_latency(
                            warm.grpc_port, pod_json, names, iters, max(3, iters // 20), verb, plan.budget_s,
                            http=(warm.port, "/" + verb.lower(), bodies["names"]))
                        row = {"nodes": n, "verb": verb, **summary_ms(lat), "http": summary_ms(hlat)}
                        if floor.grpc_port:  # grpcio's own cost for the same messages (do-nothing servicer)
                            flat, *_ = grpc_latency(floor.grpc_port, pod_json, names, iters,
                                                    max(3, iters // 20), verb, plan.budget_s)
                            row["floor"] = summary_ms(flat)
                        if verb == "Filter":
                            row["verdicts"] = {"passed": len(resp.node_names), "failed": len(resp.failed_nodes),
                                               "unresolvable": len(resp.failed_and_unresolvable_nodes)}
                            row["http_verdicts"] = check_filter(hlast, n, "names")  # asked right after
                        res["grpc"].append(row)
                        echo_answers[f"grpc-{verb}"], echo_answers[f"http-{verb.lower()}"] = raw, hlast
                    if plan.transport_iters:  # the same answers from an echo process: the transports alone
                        from flexinfer.api.v1 import scheduler_extender_pb2 as pb

                        progress(f"gRPC and HTTP transports alone, {n} nodes (echo of the extender's answers)")
                        src = pb.PodSource(pod_json=pod_json)
                        requests = {"Filter": pb.FilterRequest(pod=src, node_names=names).SerializeToString(),
                                    "Prioritize": pb.PrioritizeRequest(pod=src, node_names=names).SerializeToString()}
                        echo_dir = workdir / f"transport-{n}"
                        echo_dir.mkdir(exist_ok=True)
                        transport.write_answers(echo_answers, echo_dir)
                        echo = start_server(f"transport-echo-{n}", "echo", workdir, grpc=True, cpu=s["server_cpu"],
                                            log_level=plan.log_level, answers=echo_dir)
                        try:
                            for r in transport.measure(echo, echo_answers, requests, bodies["names"],
                                                       iters=plan.transport_iters, cpu_iters=plan.transport_iters):
                                res["transport"].append({"nodes": n, **r})
                        finally:
                            echo.stop()
                except Exception as e:  # the gRPC server is someone else's code: report, don't abort
                    res["notes"].append(f"gRPC bench failed at {n} nodes: {type(e).__name__}: {e}")
                    break
            else:
                res["notes"].append("gRPC: no server factory found in flexinfer.extender; gRPC not measured")
        # throughput at 100 nodes from a separate process
        n = 100 if 100 in plan.sizes else min(plan.sizes)
        sub = items[:n]
        names = [i["metadata"]["name"] for i in sub]
        for mode, body in (("names", workload.args_nodenames(pod, names)), ("nodes", workload.args_nodes(pod, sub))):
            for label, srv in (("extender", warm), ("floor", floor)):
                progress(f"throughput: filter {mode} {n} nodes -> {label}, {plan.load_concurrency} connections, "
                         f"{plan.load_seconds:.0f} s")
                cpu0 = srv.cpu_seconds()
                out = run_load(srv.port, "/filter", body, concurrency=plan.load_concurrency,
                               seconds=plan.load_seconds, cpu=s["client_cpu"], workdir=workdir)
                out["server_cpu_seconds"] = round(srv.cpu_seconds() - cpu0, 2)
                res["throughput"].append({"nodes": n, "mode": mode, "verb": "filter", "server": label, **out})
        res["server_rss_mib"] = {"extender-warm": round(warm.rss_mib(), 1), "extender-cold": round(cold.rss_mib(), 1),
                                 "floor": round(floor.rss_mib(), 1)}
        biggest = max(plan.sizes)
        res["rss_shapes"] = rss_with_shapes(warm, items[:biggest], 100, progress)
        res["hostile"] = hostile_run(warm, cold, progress, scale=plan.hostile_scale)
        res["server_rss_mib"]["extender-warm-after-hostile"] = res["hostile"]["rss_after_mib"]
    res["churn"] = churn(plan, workdir, progress=progress, client_cpu=s["client_cpu"], server_cpu=s["server_cpu"])
    # the same with a bound model pod on 60 % of the GPU nodes: their VRAM is committed (no per-request work)
    res["churn_bound"] = churn(plan, workdir, progress=progress, client_cpu=s["client_cpu"],
                               server_cpu=s["server_cpu"], bound_percent=60.0)
    res["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    return res


# --- RSS with many pod shapes, a hostile run, churn -------------------------------------------------

def rss_with_shapes(srv: Server, items: list[dict[str, Any]], shapes: int, progress: Any) -> dict[str, Any]:
    """Filter then prioritize `shapes` distinct pod shapes over every cached node; the server's RSS after."""
    names = [i["metadata"]["name"] for i in items]
    progress(f"RSS: {shapes} pod shapes x {len(names)} nodes (filter + prioritize each)")
    before = srv.rss_mib()
    c = Client(srv.port)
    try:
        for k in range(shapes):
            pod = workload.managed_pod(f"rss-shape-{k}", vram_mib=3000 + 97 * k, backend=("llamacpp", "vllm")[k % 2],
                                       gpus=1 + k % 3 // 2)
            status, body = c.post("/filter", workload.args_nodenames(pod, names))
            if status != 200:
                raise RuntimeError(f"filter -> {status}")
            passed = json.loads(body)["NodeNames"]
            status, _ = c.post("/prioritize", workload.args_nodenames(pod, passed))
            if status != 200:
                raise RuntimeError(f"prioritize -> {status}")
    finally:
        c.close()
    return {"nodes": len(names), "shapes": shapes, "rss_before_mib": round(before, 1),
            "rss_after_mib": round(srv.rss_mib(), 1)}


def _gfx_nodes(start: int, count: int, now: float) -> list[dict[str, Any]]:
    """Nodes each claiming a GPU of a different (well-formed, unknown) gfx target."""
    from flexinfer.nodes import node_object
    from flexinfer.state import GpuState, NodeGpuState, node_annotations, node_labels

    out = []
    for i in range(start, start + count):
        g = GpuState(0, f"GPU-h-{i}", "amd", f"gfx{0x10000 + i:05x}", 24560, 24000)
        name = f"hostile-{i}"
        out.append(node_object(name, node_labels([g]), node_annotations(NodeGpuState(name, (g,), now))))
    return out


def hostile_run(warm: Server, cold: Server, progress: Any, *, scale: float = 1.0) -> dict[str, Any]:
    """Issue 14 rows the verdict cache and metrics answer for: requests naming 12 x 100k different unknown nodes
    (HTTP) and 2 x 1M (gRPC) on the warm server, then Nodes items with 50k distinct gfx targets on the cold
    one. Reports RSS after and the metric series count; any 4xx (a request limit) is counted, not an error."""
    rows: dict[str, Any] = {"rss_before_mib": round(warm.rss_mib(), 1)}
    pod = workload.managed_pod("hostile-pod", vram_mib=8000)
    per, rounds = int(100_000 * scale), 12
    progress(f"hostile: {rounds} filter requests x {per} unknown node names")
    statuses: dict[str, int] = {}
    c = Client(warm.port)
    try:
        for r in range(rounds):
            status, _ = c.post("/filter", workload.args_nodenames(pod, [f"ghost-{r}-{i}" for i in range(per)]))
            statuses[str(status)] = statuses.get(str(status), 0) + 1
    finally:
        c.close()
    rows["http_unknown_names"] = {"requests": rounds, "names_each": per, "statuses": statuses,
                                  "rss_mib": round(warm.rss_mib(), 1)}
    if warm.grpc_port:
        import grpc

        from flexinfer.api.v1 import scheduler_extender_pb2 as pb
        from flexinfer.api.v1 import scheduler_extender_pb2_grpc as pbg

        big = int(1_000_000 * scale)
        progress(f"hostile: 2 gRPC Filter requests x {big} unknown node names")
        codes: dict[str, int] = {}
        with grpc.insecure_channel(f"127.0.0.1:{warm.grpc_port}", options=[
                ("grpc.max_send_message_length", 256 * 1024 * 1024),
                ("grpc.max_receive_message_length", 256 * 1024 * 1024)]) as ch:
            stub = pbg.SchedulerExtenderStub(ch)
            src = pb.PodSource(pod_json=msgspec.json.encode(pod))
            for r in range(2):
                try:
                    stub.Filter(pb.FilterRequest(pod=src, node_names=[f"g{r}-{i}" for i in range(big)]), timeout=120)
                    codes["OK"] = codes.get("OK", 0) + 1
                except grpc.RpcError as e:
                    codes[e.code().name] = codes.get(e.code().name, 0) + 1
        rows["grpc_unknown_names"] = {"requests": 2, "names_each": big, "codes": codes,
                                      "rss_mib": round(warm.rss_mib(), 1)}
    rows["rss_after_mib"] = round(warm.rss_mib(), 1)
    gfx, batch = int(50_000 * scale), 5000
    progress(f"hostile: Nodes items with {gfx} distinct gfx targets (full-nodes filter, vllm pod)")
    vllm = workload.managed_pod("hostile-vllm", vram_mib=8000, backend="vllm")
    for c in vllm["spec"]["containers"]:  # an AMD pod: the gfx targets are judged by the compatibility rules
        for part in ("requests", "limits"):
            c["resources"][part]["amd.com/gpu"] = c["resources"][part].pop("nvidia.com/gpu")
    c = Client(cold.port)
    now = time.time()
    try:
        for start in range(0, gfx, batch):
            status, _ = c.post("/filter", workload.args_nodes(vllm, _gfx_nodes(start, min(batch, gfx - start), now)))
            if status != 200:
                raise RuntimeError(f"filter with gfx nodes -> {status}")
        c.conn.request("GET", "/metrics")
        r = c.conn.getresponse()
        text = r.read().decode()
    finally:
        c.close()
    series = [ln for ln in text.splitlines() if ln.startswith("flexinfer_extender_verdicts_total{")]
    rows["gfx_targets"] = {"distinct_gfx": gfx, "verdict_series": len(series), "metrics_bytes": len(text),
                           "rss_mib": round(cold.rss_mib(), 1)}
    return rows


def server_side_ms(log_path: str) -> dict[str, list[float]]:
    """The extender's own time per request (the `ms` of its one log line per request), by verb: what the
    service spent, without the HTTP stack or the machine's scheduling of the client."""
    out: dict[str, list[float]] = {"filter": [], "prioritize": []}
    with contextlib.suppress(OSError):
        for line in Path(log_path).read_text(errors="replace").splitlines():
            if '"extender_filter"' in line or '"extender_prioritize"' in line:
                with contextlib.suppress(ValueError, KeyError):
                    rec = json.loads(line)
                    out[rec["event"].removeprefix("extender_")].append(float(rec["ms"]))
    return out


def churn_shapes() -> list[dict[str, Any]]:
    """Ten pod shapes in rotation (ten Models), one pending pod each, retried as nodes change."""
    specs = [(4000, "llamacpp", 1), (8000, "llamacpp", 1), (12000, "llamacpp", 1), (16000, "vllm", 1),
             (20000, "vllm", 1), (24000, "llamacpp", 1), (40000, "vllm", 1), (10000, "vllm", 2),
             (30000, "llamacpp", 2), (6000, "llamacpp", 1)]
    return [workload.managed_pod(f"churn-model-{k}-abc", vram_mib=v, backend=b, gpus=g)
            for k, (v, b, g) in enumerate(specs)]


def _held(srv: Server) -> float:
    """Bound pods the extender holds VRAM for (its committed-pods gauge; reservations on extenders before it)."""
    try:
        with urllib.request.urlopen(srv.base + "/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    found = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
             if line.startswith(("flexinfer_extender_committed_pods ", "flexinfer_extender_reservations "))}
    return found.get("flexinfer_extender_committed_pods", found.get("flexinfer_extender_reservations", 0.0))


def churn(plan: Plan, workdir: Path, *, progress: Any, client_cpu: int, server_cpu: int,
          bound_percent: float = 0.0) -> dict[str, Any]:
    """Issue 16 target 2: an agent heartbeat fleet (`plan.churn_rate` % of the Nodes get new GPU annotations every
    second, through the extender's watch on a fake API server), 10 pod shapes in rotation, prioritize (with the
    nodes filter passed) after each filter as kube-scheduler does; extender and floor interleaved. `bound_percent`:
    that share of the GPU nodes runs a bound model pod (committed VRAM), waited for before measuring."""
    n = max(plan.sizes)
    progress(f"churn: fake API server with {n} Nodes, {plan.churn_rate:g} % patched per second"
             + (f", a bound model pod on {bound_percent:g} % of the GPU nodes" if bound_percent else ""))
    api = subprocess.Popen([sys.executable, "-m", "bench.churn_proc", "--nodes", str(n), "--rate",
                            str(plan.churn_rate), "--cpu", str(client_cpu), "--bound-percent", str(bound_percent)],
                           cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    started: list[Server] = []
    try:
        assert api.stdout is not None and api.stdin is not None
        url = json.loads(api.stdout.readline())["url"]
        ext = start_server("extender-churn", "extender", workdir, kube_server=url, cpu=server_cpu,
                           log_level=plan.log_level)
        started.append(ext)
        floor = start_server("floor-churn", "floor", workdir, cpu=server_cpu, log_level=plan.log_level)
        started.append(floor)
        held = 0.0
        if bound_percent:
            deadline = time.monotonic() + 60
            while (held := _held(ext)) < 1 and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(1.0)  # the rest of the pod list
            held = _held(ext)
        names = [f"node-{i:05d}" for i in range(n)]
        pods = churn_shapes()
        bodies = [workload.args_nodenames(pod, names) for pod in pods]
        clients = {"ext": Client(ext.port), "floor": Client(floor.port)}
        lat: dict[str, list[float]] = {"filter": [], "floor-filter": [], "prioritize": [], "floor-prioritize": []}
        progress(f"churn: filter + prioritize, 10 shapes in rotation, {plan.churn_seconds:g} s")
        cpu0 = ext.cpu_seconds()
        stop_at = time.monotonic() + plan.churn_seconds
        i = 0
        try:
            while time.monotonic() < stop_at or i < 20:
                pod, body = pods[i % len(pods)], bodies[i % len(bodies)]
                answers = {}
                for label, key in (("filter", "ext"), ("floor-filter", "floor")):
                    t0 = time.perf_counter()
                    status, answers[key] = clients[key].post("/filter", body)
                    if i >= 3:
                        lat[label].append(time.perf_counter() - t0)
                    if status != 200:
                        raise RuntimeError(f"churn filter -> {status}")
                passed = json.loads(answers["ext"])["NodeNames"]
                pbody = workload.args_nodenames(pod, passed)
                for label, key in (("prioritize", "ext"), ("floor-prioritize", "floor")):
                    t0 = time.perf_counter()
                    status, _ = clients[key].post("/prioritize", pbody)
                    if i >= 3:
                        lat[label].append(time.perf_counter() - t0)
                    if status != 200:
                        raise RuntimeError(f"churn prioritize -> {status}")
                i += 1
        finally:
            for c in clients.values():
                c.close()
        cpu = ext.cpu_seconds() - cpu0
        api.stdin.close()
        done = json.loads(api.stdout.readline() or "{}")
        inside = server_side_ms(ext.log_path)
        return {"nodes": n, "rate_percent_per_s": plan.churn_rate, "seconds": plan.churn_seconds, "pods": i,
                "bound_percent": bound_percent, "bound_pods_held": held,
                "patches": done.get("patches"), "patch_seconds": done.get("seconds"),
                "extender_cpu_seconds": round(cpu, 2), "rss_mib": round(ext.rss_mib(), 1),
                **{k: summary_ms(v) for k, v in lat.items()},
                **{f"server-{k}": summary_ms([x / 1000 for x in v]) for k, v in inside.items() if v}}
    finally:
        for srv in started:
            srv.stop()
        if api.poll() is None:
            api.kill()
            api.wait(5)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        print(json.dumps(run(Plan.quick(), Path(d), lambda m: print("..", m, file=sys.stderr)), indent=1))
