"""The two transports alone: an echo process that answers Filter/Prioritize with the extender's own answer bytes
over gRPC (grpcio, the extender's server options, registered handlers) and over HTTP (uvicorn with the
extender's `uvicorn_config`, a bare ASGI app), with no policy and no parsing. It separates what the transport
costs per call from what the extender does, for the issue-16 gRPC-vs-HTTP target.

    python -m bench.transport serve --dir D --port P --grpc-port G --cpu 0

D holds `grpc-Filter.bin`, `grpc-Prioritize.bin`, `http-filter.bin`, `http-prioritize.bin` (the bytes to answer).
`measure()` runs the client side: interleaved latency (a gRPC call, then the same question over HTTP), then each
transport alone for server CPU per call (the server process's /proc CPU time) and client CPU per call.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.stats import cpu_seconds, summary_ms

SERVICE = "flexinfer.api.v1.SchedulerExtender"
VERBS = ("Filter", "Prioritize")
MAX_MESSAGE_BYTES = 256 * 1024 * 1024


def serve(answers: Path, port: int, grpc_port: int) -> int:
    from concurrent import futures

    import grpc
    import uvicorn
    from flexinfer.extender.grpc_edge import server_options
    from flexinfer.extender.http import uvicorn_config
    from flexinfer.extender.listener import Limits

    grpc_answer = {v: (answers / f"grpc-{v}.bin").read_bytes() for v in VERBS}
    http_answer = {f"/{v.lower()}": (answers / f"http-{v.lower()}.bin").read_bytes() for v in VERBS}

    def handler(verb: str) -> grpc.RpcMethodHandler:
        data = grpc_answer[verb]
        return grpc.unary_unary_rpc_method_handler(lambda request, context: data)

    limits = Limits(max_body_bytes=MAX_MESSAGE_BYTES)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=server_options(limits, 1024))
    server.add_registered_method_handlers(SERVICE, {v: handler(v) for v in VERBS})
    if not server.add_insecure_port(f"127.0.0.1:{grpc_port}"):
        raise OSError(f"cannot bind gRPC port {grpc_port}")
    server.start()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:  # read the whole body, as a server must before answering
            message = await receive()
            more = message.get("more_body", False)
        body = http_answer.get(scope["path"], b"ok")
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    web = uvicorn.Server(uvicorn_config(app, "127.0.0.1", port, limits=limits))

    def stop(*_: object) -> None:
        web.should_exit = True

    signal.signal(signal.SIGTERM, stop)
    web.run()
    server.stop(0)
    return 0


def measure(answers: dict[str, bytes], grpc_requests: dict[str, bytes], http_body: bytes, workdir: Path, *,
            iters: int, cpu_iters: int, server_cpu: int, free_port: Any) -> list[dict[str, Any]]:
    """One echo process answering `answers` (keys as the file names above); rows per verb."""
    import http.client

    import grpc

    for name, data in answers.items():
        (workdir / f"{name}.bin").write_bytes(data)
    port, grpc_port = free_port(), free_port()
    log = open(workdir / "transport-echo.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "bench.transport", "serve", "--dir", str(workdir),
                             "--port", str(port), "--grpc-port", str(grpc_port), "--cpu", str(server_cpu)],
                            cwd=Path(__file__).resolve().parent.parent, stdout=log, stderr=subprocess.STDOUT)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    rows: list[dict[str, Any]] = []
    try:
        _wait_http(port, proc)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}", options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]) as ch:
            grpc.channel_ready_future(ch).result(timeout=30)
            for verb in VERBS:
                # as the generated stub calls it (registered method), bytes in and out
                call = ch.unary_unary(f"/{SERVICE}/{verb}", _registered_method=True)
                req, path = grpc_requests[verb], f"/{verb.lower()}"

                def post(path: str = path) -> bytes:
                    conn.request("POST", path, http_body, {"Content-Type": "application/json"})
                    return conn.getresponse().read()

                def rpc(req: bytes = req, call: Any = call) -> bytes:
                    return call(req, timeout=60)

                if rpc() != answers[f"grpc-{verb}"] or post() != answers[f"http-{verb.lower()}"]:
                    raise RuntimeError(f"echo server answered {verb} with other bytes")
                g: list[float] = []
                h: list[float] = []
                for i in range(iters + max(3, iters // 20)):
                    t0 = time.perf_counter()
                    rpc()
                    t1 = time.perf_counter()
                    post()
                    t2 = time.perf_counter()
                    if i >= max(3, iters // 20):
                        g.append(t1 - t0)
                        h.append(t2 - t1)
                row: dict[str, Any] = {"verb": verb, "grpc": summary_ms(g), "http": summary_ms(h),
                                       "answer_bytes": {"grpc": len(answers[f"grpc-{verb}"]),
                                                        "http": len(answers[f"http-{verb.lower()}"])}}
                for name, fn in (("grpc", rpc), ("http", post)):
                    s0, c0 = cpu_seconds(proc.pid), time.process_time()
                    for _ in range(cpu_iters):
                        fn()
                    s1, c1 = cpu_seconds(proc.pid), time.process_time()
                    row[f"{name}_server_cpu_us"] = round((s1 - s0) / cpu_iters * 1e6, 1)
                    row[f"{name}_client_cpu_us"] = round((c1 - c0) / cpu_iters * 1e6, 1)
                rows.append(row)
    finally:
        conn.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    return rows


def _wait_http(port: int, proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"transport echo server exited ({proc.returncode})")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("transport echo server not ready")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--dir", required=True, type=Path)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--grpc-port", type=int, required=True)
    s.add_argument("--cpu", type=int, default=-1)
    a = p.parse_args(argv)
    if a.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {a.cpu})
    return serve(a.dir, a.port, a.grpc_port)


if __name__ == "__main__":
    raise SystemExit(main())
