"""Issue 14 item 1 over real sockets: every malformed or oversized input gets a 4xx (gRPC: the `error` field or
RESOURCE_EXHAUSTED) with a reason, is counted, and never blocks other requests.

One test per row of the issue's table (docs/hardening.md lists them); each failed before the fix:
deep JSON was a 500 / gRPC UNKNOWN, 1M names stalled /healthz for seconds, header lines were buffered without
bound, slow clients were held forever, and connections were only limited by the file-descriptor limit.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import grpc
import httpx
import pytest
from flexinfer.extender.cache import NodeCache
from flexinfer.extender.grpc_server import serve_grpc
from flexinfer.extender.http import ExtenderApp, serve_in_thread
from flexinfer.extender.listener import Limits
from flexinfer.extender.policy import PolicyConfig
from flexinfer.extender.reservations import Reservations
from flexinfer.extender.service import Extender

from flexinfer.api.v1 import scheduler_extender_pb2 as pb
from flexinfer.api.v1 import scheduler_extender_pb2_grpc as pb_grpc

from .ext_fixtures import fleet_nodes, model_pod

pytestmark = pytest.mark.integration

GOOD_POD = model_pod(20480)
NAMES = ["ada-24g", "maxwell-6g", "two-12g", "ada-full", "rdna3", "cpu-only", "stale-ada", "junk"]
# Short enough for tests, far above what loopback needs.
FAST = replace(Limits(), head_timeout_s=0.5, body_timeout_s=0.5, idle_timeout_s=5.0)


def bad_requests(ext: Extender, verb: str, status: str) -> float:
    return ext.metrics.registry.get_sample_value("flexinfer_extender_bad_requests_total",
                                                 {"verb": verb, "status": status}) or 0.0


def rejected(ext: Extender, listener: str, reason: str) -> float:
    return ext.metrics.registry.get_sample_value("flexinfer_extender_connections_rejected_total",
                                                 {"listener": listener, "reason": reason}) or 0.0


@contextlib.contextmanager
def served(limits: Limits = FAST) -> Iterator[tuple[Extender, Any, ExtenderApp]]:
    cache = NodeCache()
    cache.replace_all(fleet_nodes(time.time()))
    ext = Extender(cache, PolicyConfig(), Reservations(tentative_ttl_seconds=0))
    web = ExtenderApp(ext, limits=limits)
    with serve_in_thread(web.app, "127.0.0.1", 0) as handle:
        yield ext, handle, web


def still_serving(url: str) -> None:
    with httpx.Client(base_url=url, timeout=10) as c:
        res = c.post("/filter", json={"Pod": GOOD_POD, "NodeNames": NAMES})
        assert res.status_code == 200 and res.json()["NodeNames"] == ["ada-24g"]


def read_all(sock: socket.socket, timeout_s: float = 5.0) -> bytes:
    sock.settimeout(timeout_s)
    out: list[bytes] = []
    with contextlib.suppress(ConnectionResetError, TimeoutError):
        while chunk := sock.recv(1 << 20):
            out.append(chunk)
    return b"".join(out)


def deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


# --- row: JSON nested ~1000 levels deep ---------------------------------------------------------------------
# The limit is the JSON decoder's recursion guard (msgspec stops at the interpreter's recursion limit: 1000 in the
# extender process). In this test process another library (celpy, for the CRD tests) raises that limit to 2500,
# so the in-process tests nest 50,000 deep; the issue's exact 2 KB body goes to a real extender process.
DEEP = 50_000


@pytest.mark.parametrize("verb", ["filter", "prioritize", "explain"])
def test_deeply_nested_json_is_a_reasoned_400_and_counted(verb: str) -> None:
    body = b'{"Pod":{"metadata":{"x":' + deep(DEEP) + b'}},"NodeNames":["ada-24g"]}'
    with served() as (ext, h, _):
        before = bad_requests(ext, verb, "400")
        res = httpx.post(f"{h.url}/{verb}", content=body, headers={"content-type": "application/json"}, timeout=10)
        assert res.status_code == 400, res.text[:200]
        assert "nested too deeply" in res.json()["Error"]
        assert bad_requests(ext, verb, "400") == before + 1
        # deep inside NodeNames and inside a Nodes item too
        for other in (b'{"Pod":{},"NodeNames":' + deep(DEEP) + b"}",
                      b'{"Pod":{},"Nodes":{"items":[{"metadata":{"name":"a","x":' + deep(DEEP) + b"}}]}}"):
            res = httpx.post(f"{h.url}/{verb}", content=other, timeout=10)
            assert res.status_code == 400 and "nested too deeply" in res.json()["Error"]
        still_serving(h.url)


def test_the_issues_2kb_1000_deep_body_is_a_400_from_the_real_extender(tmp_path) -> None:
    body = b'{"Pod":{"metadata":{"x":' + deep(1000) + b'}},"NodeNames":["ada-24g"]}'
    assert len(body) < 2100
    with extender_process(tmp_path) as (url, _):
        for verb in ("filter", "prioritize", "explain"):
            res = httpx.post(f"{url}/{verb}", content=body, timeout=10)
            assert res.status_code == 400 and "nested too deeply" in res.json()["Error"], (verb, res.text[:200])
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        assert 'flexinfer_extender_bad_requests_total{status="400",verb="filter"} 1.0' in metrics


def test_grpc_pod_json_nested_deeply_sets_the_error_field_not_unknown() -> None:
    cache = NodeCache()
    cache.replace_all(fleet_nodes(time.time()))
    ext = Extender(cache, PolicyConfig(), Reservations(tentative_ttl_seconds=0))
    g = serve_grpc(ext, "127.0.0.1", 0)
    channel = grpc.insecure_channel(f"127.0.0.1:{g.port}")
    try:
        stub = pb_grpc.SchedulerExtenderStub(channel)
        src = pb.PodSource(pod_json=b'{"metadata":{"x":' + deep(DEEP) + b"}}")
        for verb, call, req in (("filter", stub.Filter, pb.FilterRequest(pod=src, node_names=NAMES)),
                                ("prioritize", stub.Prioritize, pb.PrioritizeRequest(pod=src, node_names=NAMES)),
                                ("explain", stub.Explain, pb.ExplainRequest(pod=src, node_names=NAMES))):
            before = bad_requests(ext, verb, "grpc")
            out = call(req, timeout=10)
            assert "nested too deeply" in out.error
            assert bad_requests(ext, verb, "grpc") == before + 1
        good = stub.Filter(pb.FilterRequest(pod=pb.PodSource(pod_json=json.dumps(GOOD_POD).encode()),
                                            node_names=NAMES), timeout=10)
        assert list(good.node_names) == ["ada-24g"]
    finally:
        channel.close()
        g.stop(0)


# --- row: 1M NodeNames -----------------------------------------------------------------------------------------

def test_more_names_than_the_limit_is_a_413_over_http_and_resource_exhausted_over_grpc() -> None:
    limit = Limits().max_nodes
    names = [f"ghost-{i}" for i in range(limit + 1)]
    with served(Limits()) as (ext, h, _):
        res = httpx.post(f"{h.url}/filter", json={"Pod": GOOD_POD, "NodeNames": names}, timeout=30)
        assert res.status_code == 413
        assert f"the limit is {limit}" in res.json()["Error"] and res.headers["connection"] == "close"
        assert bad_requests(ext, "filter", "413") == 1
        still_serving(h.url)
    cache = NodeCache()
    ext = Extender(cache)
    g = serve_grpc(ext, "127.0.0.1", 0, limits=replace(Limits(), max_nodes=1000))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{g.port}") as ch:
            stub = pb_grpc.SchedulerExtenderStub(ch)
            with pytest.raises(grpc.RpcError) as err:
                stub.Filter(pb.FilterRequest(pod=pb.PodSource(pod_json=json.dumps(GOOD_POD).encode()),
                                             node_names=names[:1001]), timeout=10)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "the limit is 1000" in err.value.details()
            assert bad_requests(ext, "filter", "RESOURCE_EXHAUSTED") == 1
    finally:
        g.stop(0)


@contextlib.contextmanager
def extender_process(tmp_path: Any, *args: str, nofile: int | None = None) -> Iterator[tuple[str, Any]]:
    """A real `flexinfer-extender` process on the homelab fleet (the client stays out of its GIL); yields
    (base URL, log path)."""
    from flexinfer.fleet import default_fleet_path

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def limit_files() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    log = tmp_path / "extender.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flexinfer.extender.main", "--bind-address", "127.0.0.1", "--http-port",
             str(port), "--nodes-from", str(default_fleet_path()), "--log-format", "json", *args],
            stdout=out, stderr=subprocess.STDOUT, preexec_fn=limit_files,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.1)
        yield url, log
        assert proc.poll() is None, log.read_text()[-2000:]
    finally:
        proc.terminate()
        proc.wait(10)


def test_healthz_keeps_answering_while_a_1m_name_request_is_processed(tmp_path) -> None:
    n = 1_000_000
    body = json.dumps({"Pod": GOOD_POD, "NodeNames": [f"ghost-{i:07d}" for i in range(n)]}).encode()
    assert 15 * 2**20 < len(body) < 32 * 2**20
    with extender_process(tmp_path, "--max-nodes-per-request", str(2 * n), "--request-timeout-seconds", "60",
                          "--log-level", "warning") as (url, _):
        host, port = url.removeprefix("http://").split(":")
        result: dict[str, Any] = {}

        def big() -> None:
            t0 = time.monotonic()
            s = socket.create_connection((host, int(port)))
            s.sendall(b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
            result["answer"] = read_all(s, 120)
            result["seconds"] = time.monotonic() - t0

        t = threading.Thread(target=big)
        latencies = []
        with httpx.Client(base_url=url, timeout=10) as c:
            t.start()
            while t.is_alive():
                t0 = time.monotonic()
                assert c.get("/healthz").status_code == 200
                latencies.append(time.monotonic() - t0)
                time.sleep(0.01)
        t.join()
    head, _, payload = result["answer"].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert len(json.loads(payload)["FailedNodes"]) == n
    assert len(latencies) >= 5, result["seconds"]  # /healthz was probed while the big request was processed
    # Before the fix the event loop decoded and evaluated the request itself: a probe waited for all of it (4 s
    # in the issue; the kubelet and kube-scheduler give up at 2 s). Now a probe waits at most for one C call on
    # the worker thread (hashing 1M fresh names into a set, ~0.2 s on an idle machine; bench/ measures it).
    # Relative to the request's own time, so a loaded CI machine slows both alike.
    worst = max(latencies)
    assert worst < min(2.0, 0.5 * result["seconds"]), (
        f"/healthz took {worst * 1000:.0f} ms while the 1M-name request took {result['seconds']:.1f} s")


# --- row: 64 MiB header lines, never finishing ------------------------------------------------------------------

def test_oversized_header_lines_are_cut_off_with_431() -> None:
    line = b"a" * 2**20
    with served() as (ext, h, _):
        sent = []

        def attack() -> bytes:
            s = socket.create_connection((h.host, h.port))
            n = 0
            try:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Junk: ")
                for _ in range(64):  # up to 64 MiB, as in the issue
                    s.sendall(line)
                    n += len(line)
            except OSError:
                pass  # the server closed the connection: what we want
            sent.append(n)
            answer = read_all(s)
            s.close()
            return answer

        answers: list[bytes] = []
        threads = []
        for _ in range(10):
            t = threading.Thread(target=lambda: answers.append(attack()))
            t.start()
            threads.append(t)
        for t in threads:
            t.join(60)
        assert len(answers) == 10
        # each connection was cut long before 64 MiB (what is left is kernel socket buffers)
        assert max(sent) < 32 * 2**20, sent
        assert sum(b"431" in a for a in answers) >= 1
        assert all(a == b"" or a.startswith(b"HTTP/1.1 431") for a in answers), [a[:80] for a in answers]
        assert rejected(ext, "scheduling", "header_too_large") == 10
        still_serving(h.url)


def test_too_many_headers_is_a_431() -> None:
    with served() as (ext, h, _):
        s = socket.create_connection((h.host, h.port))
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(200)) + b"\r\n")
        answer = read_all(s)
        assert answer.startswith(b"HTTP/1.1 431") and b"more than 100 request headers" in answer
        assert rejected(ext, "scheduling", "too_many_headers") == 1
        still_serving(h.url)


# --- row: slow clients, partial bodies, idle connections, the fd limit -------------------------------------------

def test_slow_head_partial_body_and_silent_connections_get_408_or_are_closed() -> None:
    with served() as (ext, h, _):
        head = socket.create_connection((h.host, h.port))
        head.sendall(b"POST /filter HTTP/1.1\r\nHost: x\r\n")  # never finishes the head
        body = socket.create_connection((h.host, h.port))
        body.sendall(b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"Pod\":")  # 7 of 1000 bytes
        silent = [socket.create_connection((h.host, h.port)) for _ in range(20)]
        t0 = time.monotonic()
        a = read_all(head)
        b = read_all(body)
        assert a.startswith(b"HTTP/1.1 408") and b"request head not received within 0.5 s" in a
        assert b.startswith(b"HTTP/1.1 408") and b"request body not received within 0.5 s" in b
        assert all(read_all(s, 2.0).startswith(b"HTTP/1.1 408") for s in silent)  # answered and closed, not held
        assert time.monotonic() - t0 < 5.0
        assert rejected(ext, "scheduling", "header_timeout") >= 21  # the slow head and the silent ones
        assert bad_requests(ext, "filter", "408") == 1
        for s in (head, body, *silent):
            s.close()
        still_serving(h.url)


def test_connection_cap_evicts_idle_connections_and_healthz_keeps_answering() -> None:
    with served(replace(FAST, head_timeout_s=30, max_connections=50)) as (ext, h, _):
        socks = [socket.create_connection((h.host, h.port)) for _ in range(300)]
        try:
            deadline = time.monotonic() + 5
            while len(h.listener.conns) > 50 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(h.listener.conns) <= 50
            t0 = time.monotonic()
            with httpx.Client(timeout=5) as c:
                assert c.get(f"{h.url}/healthz").status_code == 200
            assert time.monotonic() - t0 < 2.0
            assert rejected(ext, "scheduling", "evicted") >= 250
            assert ext.metrics.registry.get_sample_value("flexinfer_extender_open_connections",
                                                         {"listener": "scheduling"}) <= 50
        finally:
            for s in socks:
                s.close()
        still_serving(h.url)


def test_at_a_low_fd_limit_healthz_keeps_answering_and_the_log_stays_quiet(tmp_path) -> None:
    """A real extender process with RLIMIT_NOFILE 256 and 600 idle connections against it."""
    with extender_process(tmp_path, nofile=256) as (url, log):
        host, port = url.removeprefix("http://").split(":")
        socks: list[socket.socket] = []
        try:
            for _ in range(600):
                with contextlib.suppress(OSError):
                    socks.append(socket.create_connection((host, int(port)), timeout=2))
            for _ in range(5):
                t0 = time.monotonic()
                assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
                assert time.monotonic() - t0 < 2.0
        finally:
            for s in socks:
                s.close()
    text = log.read_text()
    assert "Traceback" not in text and "Too many open files" not in text, text[-3000:]
    assert len(text.splitlines()) < 50, f"{len(text.splitlines())} log lines"
    assert '"reason": "evicted"' in text  # said once (rate-limited), with the count of the suppressed ones
