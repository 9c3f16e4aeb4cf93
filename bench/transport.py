"""The two transports alone: an echo process that answers Filter/Prioritize with the extender's own answer bytes
over gRPC (grpcio, the extender's server options, registered handlers) and over HTTP (uvicorn with the
extender's `uvicorn_config`, a bare ASGI app), with no policy and no parsing. It separates what the transport
costs per call from what the extender does, for the issue-16 gRPC-vs-HTTP target.

The process is a bench server like the others (`extender_bench.start_server(..., "echo", answers=D)`, that is
`python -m bench.serve --app echo --answers D ...`); D holds `grpc-Filter.bin`, `grpc-Prioritize.bin`,
`http-filter.bin`, `http-prioritize.bin` (the bytes to answer; `write_answers`). `measure()` is the client side:
interleaved latency (a gRPC call, then the same question over HTTP), then each transport alone for server CPU per
call (the server process's /proc CPU time) and client CPU per call.
"""

from __future__ import annotations

import http.client
import time
from pathlib import Path
from typing import Any

from bench.stats import summary_ms

SERVICE = "flexinfer.api.v1.SchedulerExtender"
VERBS = ("Filter", "Prioritize")
MAX_MESSAGE_BYTES = 256 * 1024 * 1024


def write_answers(answers: dict[str, bytes], directory: Path) -> None:
    """The echo server's answers (keys as the file names above) into `directory`."""
    for name, data in answers.items():
        (directory / f"{name}.bin").write_bytes(data)


def echo_apps(answers: Path, grpc_port: int = 0) -> tuple[Any, Any]:
    """(ASGI app, started grpc.Server or None) answering the bytes in `answers`; `bench.serve --app echo`."""
    grpc_answer = {v: (answers / f"grpc-{v}.bin").read_bytes() for v in VERBS}
    http_answer = {f"/{v.lower()}": (answers / f"http-{v.lower()}.bin").read_bytes() for v in VERBS}

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

    if not grpc_port:
        return app, None
    from concurrent import futures

    import grpc
    from flexinfer.extender.grpc_edge import server_options
    from flexinfer.extender.listener import Limits

    def handler(verb: str) -> grpc.RpcMethodHandler:
        data = grpc_answer[verb]
        return grpc.unary_unary_rpc_method_handler(lambda request, context: data)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                         options=server_options(Limits(max_body_bytes=MAX_MESSAGE_BYTES), 1024))
    server.add_registered_method_handlers(SERVICE, {v: handler(v) for v in VERBS})
    if not server.add_insecure_port(f"127.0.0.1:{grpc_port}"):
        raise OSError(f"cannot bind gRPC port {grpc_port}")
    server.start()
    return app, server


def measure(echo: Any, answers: dict[str, bytes], grpc_requests: dict[str, bytes], http_body: bytes, *,
            iters: int, cpu_iters: int) -> list[dict[str, Any]]:
    """Rows per verb against `echo`, a started `extender_bench.Server` answering `answers` (`write_answers`)."""
    import grpc

    port, grpc_port = echo.port, echo.grpc_port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    rows: list[dict[str, Any]] = []
    try:
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
                    s0, c0 = echo.cpu_seconds(), time.process_time()
                    for _ in range(cpu_iters):
                        fn()
                    s1, c1 = echo.cpu_seconds(), time.process_time()
                    row[f"{name}_server_cpu_us"] = round((s1 - s0) / cpu_iters * 1e6, 1)
                    row[f"{name}_client_cpu_us"] = round((c1 - c0) / cpu_iters * 1e6, 1)
                rows.append(row)
    finally:
        conn.close()
    return rows
