"""The operations endpoint of the agent and the controller: /metrics, /healthz and /readyz over HTTP.

One small threaded server (standard library, GET only) in a daemon thread:

- ``/metrics``: the Prometheus text exposition from ``metrics()``;
- ``/healthz``: 200 while ``healthy()`` is true, else 503 with ``not_healthy`` as the body (liveness:
  the kubelet restarts a process whose loop stalled);
- ``/readyz``: 200 once ``ready()`` is true, else 503 with ``not_ready`` (readiness);
- anything else: 404.

It binds where the caller says (the CLIs default to loopback, ``--bind-address``), changes no state,
and gives every connection ``REQUEST_TIMEOUT_S`` to send its request, so a client that opens a socket
and says nothing cannot hold a handler thread forever. The extender serves the same three paths from its
own ASGI application.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client.exposition import CONTENT_TYPE_LATEST

REQUEST_TIMEOUT_S = 10.0
TEXT = "text/plain; charset=utf-8"


class OpsServer:
    """/metrics, /healthz, /readyz on ``host:port`` (port 0: any free port, see ``.port``)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        metrics: Callable[[], bytes],
        healthy: Callable[[], bool],
        ready: Callable[[], bool],
        not_healthy: str = "not healthy",
        not_ready: str = "not ready",
        name: str = "ops-http",
    ) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            timeout = REQUEST_TIMEOUT_S

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, outer.metrics(), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._probe(outer.healthy, outer.not_healthy)
                elif path == "/readyz":
                    self._probe(outer.ready, outer.not_ready)
                else:
                    self._send(404, b"not found\n")

            def _probe(self, check: Callable[[], bool], failing: bytes) -> None:
                ok = bool(check())
                self._send(200 if ok else 503, b"ok\n" if ok else failing)

            def _send(self, code: int, body: bytes, ctype: str = TEXT) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:  # quiet: probes arrive every few seconds
                return

        self.metrics = metrics
        self.healthy = healthy
        self.ready = ready
        self.not_healthy = not_healthy.encode() + b"\n"
        self.not_ready = not_ready.encode() + b"\n"
        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port: int = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name=name, daemon=True)

    def start(self) -> OpsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()
