"""A bench server process: the real extender (static node cache via `flexinfer.extender.main.build`,
HTTP and optionally gRPC via `serve_grpc`) or the do-nothing floor, both on the same uvicorn
configuration (`flexinfer.extender.http.uvicorn_config`: uvloop + httptools). Pinned to one CPU with
os.sched_setaffinity when --cpu is given.

    python -m bench.serve --app extender --nodes nodes.json --port 18080 [--grpc-port 18081] --cpu 0
    python -m bench.serve --app floor --port 18082 --cpu 0
    python -m bench.serve --app echo --answers DIR --port 18084 --grpc-port 18085 --cpu 0  (bench.transport)
    python -m bench.serve --app extender --kube-server http://127.0.0.1:8001 --port 18083 --cpu 0
"""

from __future__ import annotations

import argparse
import os
import signal


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--app", choices=("extender", "floor", "echo"), required=True)
    p.add_argument("--answers", help="echo: the directory of answer bytes (bench.transport.write_answers)")
    p.add_argument("--nodes", help="NodeList/fleet file for the extender's static cache")
    p.add_argument("--kube-server", help="watch Nodes and Pods on this API server instead (informer mode)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--grpc-port", type=int, default=0)
    p.add_argument("--cpu", type=int, default=-1)
    p.add_argument("--max-state-age-seconds", type=float, default=3600.0,
                   help="checked like in a cluster (the default in static mode turns the check off)")
    p.add_argument("--log-level", default="info", help="extender log level (info = one JSON line per request)")
    a = p.parse_args(argv)
    if a.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {a.cpu})

    import uvicorn
    from flexinfer.extender.http import uvicorn_config

    from flexinfer import logs

    logs.configure(a.log_level, "json")
    grpc_server = None
    if a.app == "echo":
        from pathlib import Path

        from bench.transport import echo_apps

        app, grpc_server = echo_apps(Path(a.answers), a.grpc_port)
    elif a.app == "floor":
        from bench.floor import create_app, serve_grpc_floor

        app = create_app()
        if a.grpc_port:
            grpc_server = serve_grpc_floor(a.grpc_port)
    else:
        from flexinfer.extender.main import build

        running = build(nodes_from=None if a.kube_server else a.nodes, kube_server=a.kube_server,
                        max_state_age_seconds=a.max_state_age_seconds, max_body_bytes=256 * 1024 * 1024)
        app = running.app
        if a.grpc_port:
            from flexinfer.extender.grpc_server import serve_grpc

            grpc_server = serve_grpc(running.extender, "127.0.0.1", a.grpc_port)
    server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", a.port))

    def stop(*_: object) -> None:
        server.should_exit = True

    signal.signal(signal.SIGTERM, stop)
    server.run()
    if grpc_server is not None:
        grpc_server.stop(0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
