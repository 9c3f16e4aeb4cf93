"""What the extender's edge (issue 14) costs: mutual TLS and replica forwarding on a filter request, and how
/healthz fares while a 1M-name request is processed.

    python -m bench.edge_bench [--quick] [--out bench/results]     # also a section of `python -m bench`

Setup: the fake API server (`bench.fakeapi_proc`) holds N generated Nodes (`flexinfer.fleet.generate_fleet`);
three real `flexinfer-extender` processes watch it (not pinned: a forwarded request crosses two processes, as it
crosses two pods on two nodes in a cluster; the driver is pinned to the last CPU):
`plaintext` (one replica, plain HTTP on loopback: the setup of the extender rows) and two replicas with
`--leader-elect` and mutual TLS (certificates from hack/extender-certs.sh). Requests are kube-scheduler's
(PascalCase ExtenderArgs, NodeNames, a llama.cpp pod), sent over one keep-alive connection per target with
the scheduler's client certificate, interleaved request by request so machine noise hits every target alike:

- `plaintext`: filter, plain HTTP;
- `mtls leader`: filter to the Lease holder over mutual TLS (TLS cost = leader - plaintext);
- `mtls follower`: filter to the other replica, which forwards the body to the holder over its own mutual-TLS
  keep-alive connection and relays the answer (forwarding cost = follower - leader).

`healthz during 100k / 1M names`: a plaintext extender (`--max-nodes-per-request 2000000` for the 1M case) gets a
100,000-name (the default limit, 1.6 MiB) and a 1M-name (16 MiB) filter while /healthz is probed every 10 ms on
another connection; worst and median probe latency.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SVC = "flexinfer-extender.flexinfer-system.svc"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpus() -> tuple[int, int]:
    """(server CPU, client CPU): distinct when the machine has two or more."""
    avail = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    return (avail[0], avail[1]) if len(avail) > 1 else (avail[0], avail[0])


def _pin(cpu: int | None) -> Any:
    return (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None and hasattr(os, "sched_setaffinity") else None


@contextmanager
def _fake_api(cpu: int) -> Any:
    proc = subprocess.Popen([sys.executable, "-m", "bench.fakeapi_proc", "--cpu", str(cpu)], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        yield url
    finally:
        with suppress(Exception):
            proc.stdin.close()
        proc.wait(10)


def _put_nodes(url: str, n: int) -> list[str]:
    from flexinfer.fleet import generate_fleet
    from flexinfer.nodes import fleet_node_objects

    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    names = []
    for obj in fleet_node_objects(generate_fleet(n)):
        conn.request("POST", "/api/v1/nodes", json.dumps({"apiVersion": "v1", "kind": "Node", **obj}),
                     {"Content-Type": "application/json"})
        res = conn.getresponse()
        res.read()
        assert res.status in (200, 201), res.status
        names.append(obj["metadata"]["name"])
    for ns in ("flexinfer-system",):
        conn.request("POST", "/api/v1/namespaces", json.dumps({"apiVersion": "v1", "kind": "Namespace",
                                                               "metadata": {"name": ns}}),
                     {"Content-Type": "application/json"})
        conn.getresponse().read()
    conn.close()
    return names


class _Proc:
    def __init__(self, args: list[str], cpu: int | None, log: Path) -> None:
        self.port = _free_port()
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "flexinfer.extender.main", "--bind-address", "127.0.0.1", "--http-port",
                 str(self.port), "--log-format", "json", "--log-level", "warning", *args],
                stdout=out, stderr=subprocess.STDOUT, preexec_fn=_pin(cpu), cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class _Conn:
    """One keep-alive connection (http.client), HTTP or HTTPS with the scheduler's client certificate."""

    def __init__(self, port: int, ctx: ssl.SSLContext | None) -> None:
        self.conn = (http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=120) if ctx
                     else http.client.HTTPConnection("127.0.0.1", port, timeout=120))

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        for attempt in (0, 1):  # the server closes idle keep-alive connections: reconnect once
            try:
                self.conn.request(method, path, body, {"Content-Type": "application/json"} if body else {})
                res = self.conn.getresponse()
                return res.status, res.read()
            except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
                self.conn.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")


def _wait_ready(conn: _Conn, proc: _Proc, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            status, _ = conn.request("GET", "/readyz")
            if status == 200:
                return
        except (OSError, http.client.HTTPException):
            conn.conn.close()
        if proc.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"extender did not get ready: {proc.log.read_text()[-1500:]}")
        time.sleep(0.2)


def _lease_holder(url: str, reps: list[_Proc], timeout_s: float = 30) -> int:
    """Index of the replica holding the Lease (its URL is in holderIdentity)."""
    host, port = url.removeprefix("http://").split(":")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", "/apis/coordination.k8s.io/v1/namespaces/flexinfer-system/leases/flexinfer-extender")
        res = conn.getresponse()
        body = res.read()
        conn.close()
        if res.status == 200:
            identity = (json.loads(body).get("spec") or {}).get("holderIdentity") or ""
            for i, r in enumerate(reps):
                if f":{r.port} " in identity:
                    return i
        time.sleep(0.2)
    raise RuntimeError("no replica took the Lease")


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, max(0, round(p / 100 * len(xs)) - 1))] * 1000, 3)


def _pod() -> dict[str, Any]:
    return {"metadata": {"name": "bench-llamacpp", "namespace": "models", "uid": "bench-uid",
                         "annotations": {"flexinfer.ai/gpu.vram-estimate-mb": "12000", "flexinfer.ai/backend":
                                         "llamacpp", "flexinfer.ai/model": "llama-3.1-8b"}},
            "spec": {"containers": [{"name": "server", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}


def latency(sizes: list[int], n: int, workdir: Path, progress: Any) -> dict[str, Any]:
    server_cpu, client_cpu = _cpus()
    if shutil.which("openssl") is None:
        return {"skipped": "openssl not installed (hack/extender-certs.sh makes the certificates)"}
    certs = workdir / "certs"
    subprocess.run(["bash", str(ROOT / "hack/extender-certs.sh"), "--out", str(certs), "--no-apply"], check=True,
                   capture_output=True)
    ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    ctx.check_hostname = False  # the bench connects to 127.0.0.1; the certificate names the Service
    ctx.load_cert_chain(str(certs / "scheduler.crt"), str(certs / "scheduler.key"))
    tls = ["--tls-cert", str(certs / "extender.crt"), "--tls-key", str(certs / "extender.key"),
           "--client-ca-file", str(certs / "ca.crt")]
    out: dict[str, Any] = {"rows": [], "server_cpu": server_cpu, "client_cpu": client_cpu}
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {client_cpu})
    with _fake_api(server_cpu) as url:
        names = _put_nodes(url, max(sizes))
        with ExitStack() as stack:
            plain = _Proc(["--kube-server", url], None, workdir / "plain.log")
            stack.callback(plain.stop)
            reps = []
            for i in range(2):
                r = _Proc(["--kube-server", url, *tls, "--leader-elect", "--leader-election-namespace",
                           "flexinfer-system", "--advertise-address", "127.0.0.1", "--peer-server-name", SVC],
                          None, workdir / f"replica-{i}.log")
                stack.callback(r.stop)
                reps.append(r)
            conns = {"plaintext": _Conn(plain.port, None)}
            _wait_ready(conns["plaintext"], plain)
            rconns = [_Conn(r.port, ctx) for r in reps]
            for c, r in zip(rconns, reps, strict=True):
                _wait_ready(c, r)
            leader = _lease_holder(url, reps)
            conns["mtls leader"] = rconns[leader]
            conns["mtls follower"] = rconns[1 - leader]
            for size in sizes:
                body = json.dumps({"Pod": _pod(), "NodeNames": names[:size]}).encode()
                samples: dict[str, list[float]] = {k: [] for k in conns}
                for i in range(n + n // 10):
                    for name, c in conns.items():
                        t0 = time.perf_counter()
                        status, payload = c.request("POST", "/filter", body)
                        dt = time.perf_counter() - t0
                        if status != 200:
                            raise RuntimeError(f"{name}: HTTP {status} {payload[:200]!r}")
                        if i >= n // 10:
                            samples[name].append(dt)
                row = {"nodes": size, "requests": n}
                for name, xs in samples.items():
                    row[name] = {"p50_ms": _pct(xs, 50), "p99_ms": _pct(xs, 99)}
                row["tls_added_p50_ms"] = round(row["mtls leader"]["p50_ms"] - row["plaintext"]["p50_ms"], 3)
                row["forward_added_p50_ms"] = round(row["mtls follower"]["p50_ms"] - row["mtls leader"]["p50_ms"], 3)
                row["forward_added_p99_ms"] = round(row["mtls follower"]["p99_ms"] - row["mtls leader"]["p99_ms"], 3)
                out["rows"].append(row)
                progress(f"edge: {size} nodes: plaintext p50 {row['plaintext']['p50_ms']} ms, leader "
                         f"{row['mtls leader']['p50_ms']} ms, follower {row['mtls follower']['p50_ms']} ms")
    return out


def healthz_during_big_request(n_names: int, reps: int, workdir: Path, progress: Any) -> dict[str, Any]:
    from flexinfer.fleet import default_fleet_path

    server_cpu, _ = _cpus()
    body = json.dumps({"Pod": _pod(), "NodeNames": [f"ghost-{i:07d}" for i in range(n_names)]}).encode()
    proc = _Proc(["--nodes-from", str(default_fleet_path()), "--max-nodes-per-request", str(2 * n_names),
                  "--request-timeout-seconds", "120"], server_cpu, workdir / "big.log")
    runs = []
    try:
        probe = _Conn(proc.port, None)
        _wait_ready(probe, proc)
        for _ in range(reps):
            done = threading.Event()
            took: dict[str, float] = {}

            def big(done: threading.Event = done, took: dict[str, float] = took) -> None:
                c = _Conn(proc.port, None)
                t0 = time.perf_counter()
                status, _ = c.request("POST", "/filter", body)
                took["s"] = time.perf_counter() - t0
                took["status"] = status
                done.set()

            t = threading.Thread(target=big)
            lat = []
            t.start()
            while not done.is_set():
                t0 = time.perf_counter()
                probe.request("GET", "/healthz")
                lat.append(time.perf_counter() - t0)
                time.sleep(0.01)
            t.join()
            runs.append({"request_s": round(took["s"], 2), "status": took["status"], "probes": len(lat),
                         "healthz_worst_ms": _pct(lat, 100), "healthz_p50_ms": _pct(lat, 50)})
            progress(f"edge: {n_names} names in {took['s']:.2f} s; /healthz worst {runs[-1]['healthz_worst_ms']} ms")
    finally:
        proc.stop()
    return {"names": n_names, "body_mib": round(len(body) / 2**20, 1), "runs": runs,
            "healthz_worst_ms": max(r["healthz_worst_ms"] for r in runs)}


def run(progress: Any, *, quick: bool = False, workdir: Path | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="flexinfer-edge-") as d:
        work = workdir or Path(d)
        res = {"latency": latency([100] if quick else [100, 1000], 200 if quick else 1000, work, progress),
               "healthz_during_100k_names": healthz_during_big_request(100_000, 2 if quick else 5, work, progress),
               "healthz_during_1m_names": healthz_during_big_request(1_000_000, 2 if quick else 5, work, progress)}
    return res


def notes(res: dict[str, Any]) -> list[str]:
    out = []
    for row in res.get("latency", {}).get("rows", []):
        out.append(f"edge, filter at {row['nodes']} nodes: mutual TLS adds {row['tls_added_p50_ms']} ms p50 "
                   f"(plaintext {row['plaintext']['p50_ms']} -> leader {row['mtls leader']['p50_ms']} ms); a follower "
                   f"forwarding to the Lease holder adds {row['forward_added_p50_ms']} ms p50 / "
                   f"{row['forward_added_p99_ms']} ms p99")
    for key, what in (("healthz_during_100k_names", "100k-name (the default limit)"),
                      ("healthz_during_1m_names", "1M-name")):
        h = res.get(key)
        if h:
            out.append(f"edge: /healthz worst {h['healthz_worst_ms']} ms while a {what} filter ({h['body_mib']} MiB) "
                       f"was processed ({', '.join(str(r['request_s']) for r in h['runs'])} s)")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.edge_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    a = p.parse_args(argv)
    from datetime import UTC, datetime

    from bench.machine import machine
    from flexinfer import logs

    logs.configure("warning")
    started = time.monotonic()

    def progress(msg: str) -> None:
        sys.stderr.write(f"[{time.monotonic() - started:6.1f}s] {msg}\n")

    res = {"date": datetime.now(UTC).strftime("%Y-%m-%d"), "machine": machine(), **run(progress, quick=a.quick)}
    outdir = Path(a.out)
    outdir.mkdir(parents=True, exist_ok=True)
    stem = f"{res['date']}-{socket.gethostname()}-edge{'-quick' if a.quick else ''}"
    (outdir / f"{stem}.json").write_text(json.dumps(res, indent=2))
    lines = [f"# Extender edge costs ({res['date']})", "", f"Machine: {json.dumps(res['machine'])}", ""]
    lines += ["| nodes | plaintext p50/p99 ms | mTLS leader p50/p99 ms | mTLS follower (forwarded) p50/p99 ms |",
              "|---|---|---|---|"]
    for row in res["latency"].get("rows", []):
        lines.append(f"| {row['nodes']} | " + " | ".join(
            f"{row[k]['p50_ms']} / {row[k]['p99_ms']}" for k in ("plaintext", "mtls leader", "mtls follower")) + " |")
    lines += ["", *[f"- {n}" for n in notes(res)], ""]
    (outdir / f"{stem}.md").write_text("\n".join(lines))
    sys.stdout.write("\n".join(notes(res)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
