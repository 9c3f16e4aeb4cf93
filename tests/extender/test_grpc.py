"""gRPC SchedulerExtender on a real 127.0.0.1 socket: same verdicts as HTTP for the same inputs."""

from __future__ import annotations

import json
import shutil
import subprocess

import grpc
import httpx
import pytest
from flexinfer.extender.cache import NodeCache
from flexinfer.extender.grpc_server import SERVICE_NAME, serve_grpc
from flexinfer.extender.service import Extender
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flexinfer import keys
from flexinfer.api.v1 import scheduler_extender_pb2 as pb
from flexinfer.api.v1 import scheduler_extender_pb2_grpc as pb_grpc

from .ext_fixtures import fleet_nodes, model_pod, pod_obj, served_extender

pytestmark = pytest.mark.integration

NAMES = ["ada-24g", "maxwell-6g", "two-12g", "ada-full", "rdna3", "cpu-only", "stale-ada", "junk", "ghost"]


@pytest.fixture(scope="module")
def servers():
    with served_extender() as (_, stub, url, channel):
        yield stub, httpx.Client(base_url=url), channel


PODS = [
    ("vllm-20g", model_pod(20480, "vllm", 1)),
    ("llamacpp-5g", model_pod(5000, "llama.cpp", 1)),
    ("mlc-readonly", model_pod(4000, "mlc-llm", 1, extra={keys.POD_JIT_POLICY: "READONLY"})),
    ("two-gpus", model_pod(10000, "vllm", 2)),
    ("amd", model_pod(8000, "llamacpp", 1, resource=keys.RESOURCE_AMD)),
    ("cpu", model_pod(0, "llamacpp", None, vendor="cpu")),
    ("passthrough", pod_obj(annotations={}, gpus=1)),
    ("junk", model_pod(extra={keys.POD_BACKEND: "tensorrt"})),
]


@pytest.mark.parametrize("pod", [p[1] for p in PODS], ids=[p[0] for p in PODS])
def test_filter_and_prioritize_parity(servers, pod) -> None:
    stub, http, _ = servers
    src = pb.PodSource(pod_json=json.dumps(pod).encode())
    g = stub.Filter(pb.FilterRequest(pod=src, node_names=NAMES), timeout=10)
    h = http.post("/filter", json={"Pod": pod, "NodeNames": NAMES}).json()
    assert g.error == "" and h["Error"] == ""
    assert list(g.node_names) == h["NodeNames"]
    assert dict(g.failed_nodes) == h["FailedNodes"]
    assert dict(g.failed_and_unresolvable_nodes) == h["FailedAndUnresolvableNodes"]
    gp = stub.Prioritize(pb.PrioritizeRequest(pod=src, node_names=NAMES), timeout=10)
    hp = http.post("/prioritize", json={"Pod": pod, "NodeNames": NAMES}).json()
    assert [(p.host, p.score) for p in gp.priorities] == [(p["Host"], p["Score"]) for p in hp]


def test_requirements_source_matches_pod_json(servers) -> None:
    stub, _, _ = servers
    pod = model_pod(20480, "vllm", 1)
    req = pb.PodRequirements(namespace="models", name="x", backend="vllm", vendor="NVIDIA", vram_estimate_mib=20480,
                             gpu_count=1)
    a = stub.Filter(pb.FilterRequest(pod=pb.PodSource(requirements=req), node_names=NAMES))
    b = stub.Filter(pb.FilterRequest(pod=pb.PodSource(pod_json=json.dumps(pod).encode()), node_names=NAMES))
    assert list(a.node_names) == list(b.node_names) == ["ada-24g"]
    assert dict(a.failed_and_unresolvable_nodes) == dict(b.failed_and_unresolvable_nodes)


def test_explain_every_node_with_details(servers) -> None:
    stub, _, _ = servers
    pod = model_pod(20480, "vllm", 1)
    out = stub.Explain(pb.ExplainRequest(pod=pb.PodSource(pod_json=json.dumps(pod).encode())))
    assert out.error == ""
    assert out.requirements.vram_estimate_mib == 20480 and out.requirements.backend == "vllm"
    by = {v.node: v for v in out.verdicts}
    assert sorted(by) == sorted(n for n in NAMES if n != "ghost")  # empty names: every cached node
    assert by["ada-24g"].feasible and by["ada-24g"].gpu == "0" and 1 <= by["ada-24g"].score <= 10
    assert by["ada-full"].detail == "needs 20480 MiB on one GPU; best GPU has 2000 MiB free"
    assert not by["ada-full"].unresolvable
    assert by["two-12g"].detail == "needs 20480 MiB on one GPU; largest GPU has 12288 MiB total"
    assert by["maxwell-6g"].reason == "vllm does not run on maxwell sm_52" and by["maxwell-6g"].unresolvable


@pytest.mark.parametrize("src", [pb.PodSource(), pb.PodSource(pod_json=b"not json"),
                                 pb.PodSource(pod_json=b"[1]")])
def test_malformed_requests_get_error_field_and_server_keeps_serving(servers, src) -> None:
    stub, _, _ = servers
    assert stub.Filter(pb.FilterRequest(pod=src, node_names=NAMES)).error
    assert stub.Prioritize(pb.PrioritizeRequest(pod=src)).error
    assert stub.Explain(pb.ExplainRequest(pod=src)).error
    ok = stub.Filter(pb.FilterRequest(pod=pb.PodSource(pod_json=json.dumps(model_pod()).encode()), node_names=NAMES))
    assert list(ok.node_names) == ["ada-24g"]


@pytest.mark.parametrize("verb,response", [("Filter", pb.FilterResponse), ("Prioritize", pb.PrioritizeResponse)])
def test_bytes_that_are_no_request_message_get_the_error_field_and_are_counted(servers, verb, response) -> None:
    stub, http, channel = servers

    def counted() -> float:
        for line in http.get("/metrics").text.splitlines():
            if line.startswith("flexinfer_extender_bad_requests_total{") and f'verb="{verb.lower()}"' in line \
                    and 'status="grpc"' in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = counted()
    raw = channel.unary_unary(f"/{SERVICE_NAME}/{verb}")  # bytes in, bytes out: no protobuf on the client
    for junk in (b"\xff\xff\xff", b"\x0a\x7fshort", b"\x12\x80"):
        out = response.FromString(raw(junk, timeout=5))
        assert "not a FilterRequest protobuf message" in out.error
    assert counted() == before + 3
    ok = stub.Filter(pb.FilterRequest(pod=pb.PodSource(pod_json=json.dumps(model_pod()).encode()), node_names=NAMES))
    assert list(ok.node_names) == ["ada-24g"]


def test_junk_requirements_named(servers) -> None:
    stub, _, _ = servers
    req = pb.PodRequirements(backend="tensorrt", vendor="nvidia", vram_estimate_mib=1, gpu_count=1)
    out = stub.Filter(pb.FilterRequest(pod=pb.PodSource(requirements=req), node_names=["ada-24g"]))
    assert dict(out.failed_and_unresolvable_nodes) == {"ada-24g": f"invalid pod annotation {keys.POD_BACKEND}"}


def test_health_service(servers) -> None:
    _, _, channel = servers
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE_NAME):
        resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_health_not_serving_before_sync() -> None:
    ext = Extender(NodeCache())
    g = serve_grpc(ext, "127.0.0.1", 0)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{g.port}") as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
            assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        g.stop(0)


def test_grpc_tls(tmp_path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is needed to make a test certificate")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=30)
    cache = NodeCache()
    cache.replace_all(fleet_nodes())
    g = serve_grpc(Extender(cache), "127.0.0.1", 0, tls_cert=str(cert), tls_key=str(key))
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(f"localhost:{g.port}", creds) as ch:
            out = pb_grpc.SchedulerExtenderStub(ch).Filter(pb.FilterRequest(
                pod=pb.PodSource(pod_json=json.dumps(model_pod()).encode()), node_names=["ada-24g"]), timeout=10)
            assert list(out.node_names) == ["ada-24g"]
    finally:
        g.stop(0)
