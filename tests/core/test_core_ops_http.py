"""flexinfer.ops_http: the /metrics, /healthz, /readyz server the agent and the controller share (real sockets)."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from flexinfer import ops_http


def get(base: str, path: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(base + path, timeout=5) as r:
            return r.status, r.read(), r.headers["Content-Type"]
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers["Content-Type"]


def test_paths_probes_and_metrics() -> None:
    state = {"healthy": True, "ready": False}
    srv = ops_http.OpsServer("127.0.0.1", 0, metrics=lambda: b"m_total 1\n", healthy=lambda: state["healthy"],
                             ready=lambda: state["ready"], not_healthy="loop stalled", not_ready="not synced").start()
    base = f"http://127.0.0.1:{srv.port}"
    try:
        assert get(base, "/healthz")[:2] == (200, b"ok\n")
        assert get(base, "/readyz")[:2] == (503, b"not synced\n")
        state.update(healthy=False, ready=True)
        assert get(base, "/healthz")[:2] == (503, b"loop stalled\n")
        assert get(base, "/readyz?verbose=1")[:2] == (200, b"ok\n")
        code, body, ctype = get(base, "/metrics")
        assert (code, body) == (200, b"m_total 1\n") and ctype == CONTENT_TYPE_LATEST
        assert get(base, "/other")[0] == 404
    finally:
        srv.stop()


def test_a_silent_connection_is_closed_after_the_request_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ops_http, "REQUEST_TIMEOUT_S", 0.3)
    srv = ops_http.OpsServer("127.0.0.1", 0, metrics=lambda: b"", healthy=lambda: True, ready=lambda: True).start()
    try:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as idle:
            t0 = time.monotonic()
            assert idle.recv(1) == b""  # the server hung up without a request
            assert time.monotonic() - t0 < 4
        assert get(f"http://127.0.0.1:{srv.port}", "/healthz")[0] == 200  # and still serves others
    finally:
        srv.stop()


def test_stop_without_start_releases_the_port() -> None:
    srv = ops_http.OpsServer("127.0.0.1", 0, metrics=lambda: b"", healthy=lambda: True, ready=lambda: True)
    port = srv.port
    srv.stop()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
