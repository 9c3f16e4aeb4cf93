"""Issue 7 item 5: no secrets in logs, even at debug and while the API server fails.

The agent's publisher, the extender (informers, HTTP and gRPC with TLS) and the controller run in this
process against the local fake API server, authenticating with a service-account-style bearer token from a
kubeconfig; the extender serves TLS with a freshly generated private key. The API server answers 401, 403,
409, 429, 500, 503, hangs past the client timeout, cuts watch streams and expires them (410). Logs are at
debug (structlog JSON) and the standard library's root logger (urllib3, the kubernetes client) is at DEBUG
too. The token and the key must not appear anywhere in the output, while the test proves both were in
use: the fake API server saw `Authorization: Bearer <token>` and a TLS client completed a handshake.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import structlog
from aiohttp import web
from flexinfer.agent.agent import Agent
from flexinfer.agent.publish import Publisher
from flexinfer.agent.readers.fake import fleet_reader
from flexinfer.controller.reconcile import Controller
from flexinfer.extender.grpc_server import serve_grpc
from flexinfer.extender.http import serve_in_thread
from flexinfer.extender.main import build

from flexinfer import keys, kube, logs
from flexinfer.api.v1 import scheduler_extender_pb2 as pb
from flexinfer.api.v1 import scheduler_extender_pb2_grpc as pb_grpc
from flexinfer.fleet import default_fleet_path, load_fleet
from flexinfer.sim.fakeapi import FakeApiServer

pytestmark = pytest.mark.integration

FAST = kube.RetryPolicy(attempts=2, initial_s=0.01, max_s=0.02)
NS = "ai"


class AuthRecordingApi(FakeApiServer):
    """The fake API server, also noting the Authorization header of every request."""

    def __init__(self) -> None:
        super().__init__()
        self.auth_headers: list[str] = []

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.auth_headers.append(request.headers.get("Authorization", ""))
        return await super()._handle(request)


@pytest.fixture
def debug_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """structlog at debug (JSON, as `logs.configure` sets it up: to sys.stderr) and the stdlib root logger at
    DEBUG, both into one file standing in for the process's stderr. Yields the file's path."""
    path = tmp_path / "stderr.log"
    saved = structlog.get_config()
    root = logging.getLogger()
    old_level = root.level
    with path.open("w", encoding="utf-8") as f:
        monkeypatch.setattr(sys, "stderr", f)
        handler = logging.StreamHandler(f)
        root.addHandler(handler)
        root.setLevel(logging.DEBUG)
        logs.configure("debug", "json")
        try:
            yield path
        finally:
            structlog.configure(**saved)
            root.removeHandler(handler)
            root.setLevel(old_level)


def write_kubeconfig(path: Path, server: str, token: str) -> None:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "fake", "user": "sa", "namespace": NS}}],
    }))


def make_key_pair(tmp: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is needed to make a test certificate")
    cert, key = tmp / "tls.crt", tmp / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=30)
    return cert, key


def wait_for(pred: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def model_obj(name: str) -> dict[str, Any]:
    return {"apiVersion": keys.MODEL_API_VERSION, "kind": keys.MODEL_KIND, "metadata": {"name": name, "namespace": NS},
            "spec": {"backend": "vllm", "source": f"HF://Qwen/{name}", "gpu": {"vendor": "nvidia"},
                     "serverless": {"minReplicas": 1}}}


def test_bearer_token_and_tls_key_never_reach_the_logs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, debug_log: Path) -> None:
    token = "sa-" + secrets.token_urlsafe(40)
    cert, key = make_key_pair(tmp_path)
    key_lines = [ln for ln in key.read_text().splitlines() if not ln.startswith("-----")]  # the PEM body
    # A short client timeout so that "the API server hangs" costs a fraction of a second here.
    monkeypatch.setitem(kube.request.__kwdefaults__, "timeout_s", (1.0, 0.3))
    fleet = load_fleet(default_fleet_path())
    node = fleet.nodes[0]
    with AuthRecordingApi() as fake:
        fake.put_object({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node.name}})
        fake.put_object(model_obj("m1"))
        cfg = tmp_path / "kubeconfig"
        write_kubeconfig(cfg, fake.url, token)
        api = kube.api_client(kubeconfig=str(cfg))

        # agent: every kind of failed write, then a good one
        agent = Agent(node.name, fleet_reader(node), Publisher(api, node.name, retry=FAST))
        path = f"/api/v1/nodes/{node.name}"
        for i, status in enumerate((401, 403, 409, 429, 500, 503)):
            fake.fail(None, path, status=status, times=-1)
            assert agent.step(now=1000.0 + i).publish.error  # type: ignore[union-attr]
            fake.clear_failures()
        fake.fail("PATCH", path, status=504, times=-1, hang_s=0.5)  # past the 0.3 s read timeout
        assert "no response" in agent.step(now=1010.0).publish.error  # type: ignore[union-attr]
        fake.clear_failures()
        assert agent.step(now=1011.0).publish.written  # type: ignore[union-attr]

        # extender: informers through failures, cut and expired watches; TLS HTTP and gRPC
        fake.fail("GET", "/api/v1/nodes", status=500, times=1, watch=False)
        running = build(kubeconfig=str(cfg))
        g = serve_grpc(running.extender, "127.0.0.1", 0, tls_cert=str(cert), tls_key=str(key))
        h = serve_in_thread(running.app, "127.0.0.1", 0, tls_cert=str(cert), tls_key=str(key))
        try:
            assert running.informers[0].wait_synced(10)
            wait_for(lambda: fake.watch_count("nodes") == 1)
            fake.fail("GET", "/api/v1/nodes", status=401, times=1, watch=True)
            fake.cut_watches("nodes")
            wait_for(lambda: fake.watch_count("nodes") == 1)
            fake.expire_watches("nodes")
            wait_for(lambda: running.informers[0].relists >= 2)
            with httpx.Client(base_url=h.url, verify=ssl.create_default_context(cafile=str(cert))) as c:
                assert c.post("/filter", content=b"{not json").status_code == 400
                assert c.post("/filter", json={"Pod": {"metadata": {"name": "p"}},
                                               "NodeNames": [node.name]}).status_code == 200
            creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
            with grpc.secure_channel(f"localhost:{g.port}", creds) as ch:
                assert pb_grpc.SchedulerExtenderStub(ch).Filter(pb.FilterRequest(pod=pb.PodSource()), timeout=10).error
        finally:
            h.stop()
            g.stop(0)
            running.stop()

        # controller: a pass where creating and writing status fail
        fake.fail("POST", f"/apis/apps/v1/namespaces/{NS}/deployments", status=403, times=-1)
        fake.fail("PATCH", f"/apis/{keys.MODEL_API_VERSION}/namespaces/{NS}/models/m1/status", status=500, times=-1)
        Controller(api, namespace=NS).reconcile_once()
        api.close()

    sys.stderr.flush()
    text = debug_log.read_text(encoding="utf-8")
    # the secrets were in play ...
    assert fake.auth_headers and set(fake.auth_headers) == {f"Bearer {token}"}
    # ... the failures and debug output were logged ...
    for event in ("node_patch_failed", "kube_retry", "informer_error", "informer_relist", "extender_bad_request",
                  '"level": "debug"'):
        assert event in text, f"{event} not logged"
    assert "HTTP 401" in text and "no response" in text
    # ... and neither secret was.
    assert token not in text and token[3:20] not in text
    leaked = [ln for ln in key_lines if ln in text]
    assert not leaked, "TLS private key material in the logs"
