"""Proxy benchmark: latency the proxy adds, and its CPU per request, against a direct connection.

Three processes, each pinned: the proxy (``flexinfer.proxy`` exactly as served: aiohttp + uvloop, routing
by service label, metrics, activity bookkeeping, upstream connection pool) alone on CPU 0; the fake model
server (``flexinfer.sim.modelserver.FakeModelServer`` on uvloop) and the load generator (this process,
aiohttp client on uvloop) on CPU 1. The proxy's Model catalog is fed the events its informers would
deliver (one Model with a label, one EndpointSlice pointing at the fake server); status writes go nowhere
(at most one per Model per 10 s in a cluster).

Load (open loop, fixed schedule): ``rate`` short chat completions per second through the proxy (8 tokens,
non-streamed, answered at once), each paired with the same request sent straight to the model server at
the same instant, so both see the same server, client and machine load. Added latency = proxied minus
direct for each pair; its p50/p99 are reported with both distributions. Phase 1 runs that alone; phase 2
adds ``streams`` concurrent streamed completions through the proxy (one token every ``token_ms``,
restarted as they end). CPU = the proxy process's user+system time over the phase (from /proc), per
proxied request (stream chunks included in phase 2). The 1-minute load average before and after each
phase is recorded: other work on the machine shows up in the tails.

    python -m bench.proxy_bench            # the section alone; `python -m bench --only proxy` writes results
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.stats import cpu_seconds, percentile

ROOT = Path(__file__).resolve().parent.parent
BODY = b'{"model": "chat", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _pin(cpu: int) -> None:
    if cpu >= 0 and hasattr(os, "sched_setaffinity") and cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {cpu})


# --- the two server processes -------------------------------------------------------------------------
def serve_model(port: int, cpu: int, token_ms: float) -> None:
    import uvloop

    from flexinfer.sim.modelserver import FakeModelServer

    _pin(cpu)
    server = FakeModelServer("bench-model", port=port, token_delay_s=token_ms / 1000, max_tokens_cap=100_000,
                             delay_unstreamed=False)  # short requests answer at once: only the path is measured
    uvloop.run(_until_sigterm(server.serve))


async def _until_sigterm(serve: Any) -> None:
    import signal

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await serve(stop)


def serve_proxy(port: int, upstream_port: int, cpu: int) -> None:
    import uvloop
    from flexinfer.proxy.activity import ActivityWriter
    from flexinfer.proxy.catalog import Catalog
    from flexinfer.proxy.runner import ProxyServer
    from flexinfer.proxy.server import Proxy, ProxyConfig

    from flexinfer import logs

    _pin(cpu)
    logs.configure("warning", "json")
    catalog = Catalog()
    catalog.on_model_event("SYNC", {"items": [{
        "apiVersion": "ai.flexinfer/v1alpha2", "kind": "Model", "metadata": {"name": "bench-model", "namespace": "b"},
        "spec": {"backend": "vllm", "source": "HF://bench/model", "serviceLabels": ["chat"],
                 "gpu": {"vendor": "nvidia", "vramEstimateMB": 8000}, "config": {"maxModelLen": 8192}},
        "status": {"phase": "Ready"}}]})
    catalog.on_slice_event("SYNC", {"items": [{
        "metadata": {"name": "bench-model-x", "labels": {
            "kubernetes.io/service-name": "bench-model",
            "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": upstream_port}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}]}]})
    activity = ActivityWriter(lambda m, t: None, lambda m, t: None, interval_s=10.0)
    proxy = Proxy(catalog, activity, config=ProxyConfig(max_in_flight=100_000, max_queue_per_model=100_000))
    server = ProxyServer(proxy, "127.0.0.1", port, None, grace_s=1.0)
    uvloop.run(_until_sigterm(server.serve))


# --- load ---------------------------------------------------------------------------------------------
async def _load(proxy_url: str, direct_url: str, rate: float, seconds: float, streams: int,
                stream_tokens: int) -> dict[str, Any]:
    """`rate` pairs per second: each pair sends one request through the proxy and one straight to the model
    server at the same instant, so a pause of the machine hits both (the difference is the proxy's)."""
    import aiohttp

    conn = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
    headers = {"Content-Type": "application/json"}
    out: dict[str, Any] = {"proxied": [], "direct": [], "added": [], "errors": 0, "stream_chunks": 0,
                           "streams_done": 0, "stream_ttfb": []}
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=60)) as s:
        async def one(url: str) -> float | None:
            t0 = time.perf_counter()
            try:
                async with s.post(url + "/v1/chat/completions", data=BODY, headers=headers) as r:
                    await r.read()
                    ok = r.status == 200
            except aiohttp.ClientError:
                ok = False
            if not ok:
                out["errors"] += 1
                return None
            return time.perf_counter() - t0

        async def pair() -> None:
            p, d = await asyncio.gather(one(proxy_url), one(direct_url))
            if p is not None and d is not None:
                out["proxied"].append(p)
                out["direct"].append(d)
                out["added"].append(p - d)

        stop = asyncio.Event()

        async def stream_loop() -> None:
            body = (b'{"model": "chat", "stream": true, "max_tokens": %d, "messages": [{"role": "user", '
                    b'"content": "hello"}]}' % stream_tokens)
            while not stop.is_set():
                t0 = time.perf_counter()
                first = True
                try:
                    async with s.post(proxy_url + "/v1/chat/completions", data=body, headers=headers) as r:
                        async for _chunk in r.content.iter_any():
                            if first:
                                out["stream_ttfb"].append(time.perf_counter() - t0)
                                first = False
                            out["stream_chunks"] += 1
                    out["streams_done"] += 1
                except aiohttp.ClientError:
                    out["errors"] += 1

        streamers = [asyncio.create_task(stream_loop()) for _ in range(streams)]
        if streams:
            await asyncio.sleep(1.0)  # streams running before the measurement starts
        tasks: list[asyncio.Task] = []
        start = time.perf_counter()
        n = 0
        while True:
            now = time.perf_counter() - start
            if now >= seconds:
                break
            due = n / rate
            if due > now:
                await asyncio.sleep(due - now)
            tasks.append(asyncio.create_task(pair()))
            n += 1
        await asyncio.gather(*tasks)
        out["elapsed_s"] = time.perf_counter() - start
        stop.set()
        for t in streamers:
            t.cancel()
        await asyncio.gather(*streamers, return_exceptions=True)
    return out


def _ms(v: float) -> float:
    return round(v * 1000, 3)


def _summ(xs: list[float]) -> dict[str, Any]:
    if not xs:
        return {"n": 0}
    return {"n": len(xs), "p50_ms": _ms(percentile(xs, 50)), "p90_ms": _ms(percentile(xs, 90)),
            "p99_ms": _ms(percentile(xs, 99)), "p999_ms": _ms(percentile(xs, 99.9)), "max_ms": _ms(max(xs))}


def _scheduling() -> str:
    """The scheduling policy the bench processes run under (inherited by the server processes)."""
    try:
        policy = os.sched_getscheduler(0)
        prio = os.sched_getparam(0).sched_priority
    except (AttributeError, OSError):
        return "unknown"
    names = {getattr(os, n): n for n in ("SCHED_OTHER", "SCHED_FIFO", "SCHED_RR", "SCHED_BATCH", "SCHED_IDLE")
             if hasattr(os, n)}
    name = names.get(policy, str(policy))
    return f"{name} priority {prio}" if prio else f"{name}, nice {os.nice(0)}"


def _wait_port(port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def run(progress: Any, *, quick: bool = False, rate: float = 200.0, streams: int = 50,
        token_ms: float = 40.0, seconds: float | None = None) -> dict[str, Any]:
    import uvloop

    seconds = seconds or (15.0 if quick else 60.0)
    ncpu = os.cpu_count() or 1
    proxy_cpu, side_cpu = (0, 1) if ncpu >= 2 else (-1, -1)
    mport, pport = _free_port(), _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "FLEXINFER_LOG_FORMAT": "json"}
    me = [sys.executable, "-m", "bench.proxy_bench"]
    procs = [subprocess.Popen([*me, "model", "--port", str(mport), "--cpu", str(side_cpu), "--token-ms",
                               str(token_ms)], env=env, cwd=ROOT),
             subprocess.Popen([*me, "proxy", "--port", str(pport), "--upstream-port", str(mport), "--cpu",
                               str(proxy_cpu)], env=env, cwd=ROOT)]
    old_affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        _wait_port(mport)
        _wait_port(pport)
        _pin(side_cpu)
        proxy_pid = procs[1].pid
        purl, durl = f"http://127.0.0.1:{pport}", f"http://127.0.0.1:{mport}"
        uvloop.run(_load(purl, durl, 50, 2.0, 0, 0))  # warm-up: connections, imports, code paths
        phases = []
        for name, n_streams in (("requests only", 0), (f"with {streams} concurrent streams", streams)):
            progress(f"proxy: {rate:g} req/s through the proxy, each paired with one direct, {name}, {seconds:g} s")
            load0 = os.getloadavg()[0]
            cpu0 = cpu_seconds(proxy_pid)
            stream_tokens = max(1, int(4000 / token_ms))  # ~4 s per stream
            res = uvloop.run(_load(purl, durl, rate, seconds, n_streams, stream_tokens))
            cpu = cpu_seconds(proxy_pid) - cpu0
            p, d, added = _summ(res["proxied"]), _summ(res["direct"]), _summ(res["added"])
            phases.append({
                "phase": name, "streams": n_streams, "seconds": round(res["elapsed_s"], 1),
                "proxied": p, "direct": d, "added": added, "errors": res["errors"],
                "proxied_rate_per_s": round(p["n"] / res["elapsed_s"], 1),
                "added_p50_ms": added["p50_ms"], "added_p99_ms": added["p99_ms"],
                "loadavg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)],
                "proxy_cpu_percent": round(100 * cpu / res["elapsed_s"], 1),
                "proxy_cpu_ms_per_request": round(1000 * cpu / max(1, p["n"]), 3),
                "stream_chunks_per_s": round(res["stream_chunks"] / res["elapsed_s"], 1),
                "streams_completed": res["streams_done"],
                "stream_ttfb": _summ(res["stream_ttfb"]),
            })
        return {"rate_per_s": rate, "token_ms": token_ms, "scheduling": _scheduling(),
                "pinning": {"proxy": proxy_cpu, "model_server_and_load": side_cpu},
                "proxy_rss_mib": _rss_mib(proxy_pid), "phases": phases}
    finally:
        if old_affinity is not None:
            os.sched_setaffinity(0, old_affinity)
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.proxy_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd")
    m = sub.add_parser("model", help="(internal) the fake model server process")
    m.add_argument("--port", type=int, required=True)
    m.add_argument("--cpu", type=int, default=-1)
    m.add_argument("--token-ms", type=float, default=40.0)
    x = sub.add_parser("proxy", help="(internal) the proxy process")
    x.add_argument("--port", type=int, required=True)
    x.add_argument("--upstream-port", type=int, required=True)
    x.add_argument("--cpu", type=int, default=-1)
    r = sub.add_parser("run", help="run the benchmark and print the numbers")
    r.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    if a.cmd == "model":
        serve_model(a.port, a.cpu, a.token_ms)
    elif a.cmd == "proxy":
        serve_proxy(a.port, a.upstream_port, a.cpu)
    else:
        import json

        res = run(lambda msg: sys.stderr.write(msg + "\n"), quick=bool(getattr(a, "quick", False)))
        sys.stdout.write(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


# --- report pieces (bench/report.py calls these) ------------------------------------------------------
def targets(res: dict[str, Any]) -> list[tuple[str, float | None, float, str, str]]:
    """(target, measured, limit, unit, detail) rows; lower is better."""
    px = res.get("proxy") or {}
    streams = next((p for p in px.get("phases", []) if p["streams"]), None)
    detail = ""
    if streams:
        detail = (f"proxied p50 {streams['proxied']['p50_ms']} / p99 {streams['proxied']['p99_ms']} ms, direct p50 "
                  f"{streams['direct']['p50_ms']} / p99 {streams['direct']['p99_ms']} ms; added p50 "
                  f"{streams['added_p50_ms']} ms; proxy CPU {streams['proxy_cpu_ms_per_request']} ms per request "
                  f"({streams['proxy_cpu_percent']} % of a core, {streams['stream_chunks_per_s']} stream chunks/s); "
                  f"load average {streams['loadavg_1m']}")
    return [(f"proxy: p99 added latency < 2 ms at {px.get('rate_per_s', 200):g} req/s with 50 concurrent streams "
             "(one core)", streams["added_p99_ms"] if streams else None, 2.0, "ms", detail)]


def markdown_lines(px: dict[str, Any] | None) -> list[str]:
    if not px:
        return []
    lines = ["", f"## Proxy: {px['rate_per_s']:g} requests/s, each paired with a direct request", "",
             f"Proxy pinned to CPU {px['pinning']['proxy']}, model server and load on CPU "
             f"{px['pinning']['model_server_and_load']}; streams send a token every {px['token_ms']:g} ms; proxy RSS "
             f"{px['proxy_rss_mib']} MiB; scheduling: {px.get('scheduling', 'unknown')}.", "",
             "| phase | proxied p50 / p99 ms | direct p50 / p99 ms | added p50 / p99 ms | proxy CPU ms/request "
             "| proxy CPU % | stream chunks/s | stream TTFB p50 / p99 ms | errors | load avg |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for p in px["phases"]:
        ttfb = p["stream_ttfb"]
        lines.append(
            f"| {p['phase']} | {p['proxied']['p50_ms']} / {p['proxied']['p99_ms']} | {p['direct']['p50_ms']} / "
            f"{p['direct']['p99_ms']} | {p['added_p50_ms']} / {p['added_p99_ms']} | {p['proxy_cpu_ms_per_request']} "
            f"| {p['proxy_cpu_percent']} | {p['stream_chunks_per_s']} | "
            f"{(str(ttfb['p50_ms']) + ' / ' + str(ttfb['p99_ms'])) if ttfb.get('n') else '-'} | {p['errors']} "
            f"| {p['loadavg_1m'][0]} -> {p['loadavg_1m'][1]} |")
    return lines
