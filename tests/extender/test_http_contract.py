"""Contract tests: kube-scheduler-shaped JSON in, exact extender/v1 JSON out (docs/extender-protocol.md)."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from flexinfer.extender.cache import NodeCache
from flexinfer.extender.http import build_app, serve_in_thread
from flexinfer.extender.policy import PolicyConfig
from flexinfer.extender.service import Extender

from flexinfer import keys

from .ext_fixtures import fleet_nodes, model_pod, pod_obj

pytestmark = pytest.mark.integration

FILTER_KEYS = {"Nodes", "NodeNames", "FailedNodes", "FailedAndUnresolvableNodes", "Error"}
NAMES = ["ada-24g", "maxwell-6g", "two-12g", "ada-full", "rdna3", "cpu-only", "stale-ada", "junk"]


@pytest.fixture(scope="module")
def nodes():
    return fleet_nodes(time.time())


@pytest.fixture(scope="module")
def server(nodes):
    cache = NodeCache()
    cache.replace_all(nodes)
    ext = Extender(cache, PolicyConfig(max_state_age_seconds=180))
    with serve_in_thread(build_app(ext), "127.0.0.1", 0) as handle:
        handle.extender = ext
        yield handle


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


EXPECTED = {
    "ada-24g": None,
    "maxwell-6g": ("U", "vllm does not run on maxwell sm_52"),
    "two-12g": ("U", "GPU memory too small for model"),
    "ada-full": ("F", "Insufficient free GPU memory"),
    "rdna3": ("U", "node has no nvidia GPU"),
    "cpu-only": ("U", "node has no GPU"),
    "stale-ada": ("U", "GPU state is stale"),
    "junk": ("U", f"cannot parse annotation {keys.ANN_GPU_STATE} on node"),
    "ghost": ("F", "node not in extender cache"),
}


def check_filter_verdicts(body: dict) -> None:
    for name, want in EXPECTED.items():
        if want is None:
            continue
        bucket = body["FailedAndUnresolvableNodes"] if want[0] == "U" else body["FailedNodes"]
        assert bucket.get(name) == want[1], (name, body)


def test_filter_nodenames_mode_exact_shape(client) -> None:
    pod = model_pod(20480, "vllm", 1)
    r = client.post("/filter", json={"Pod": pod, "Nodes": None, "NodeNames": [*NAMES, "ghost"]})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == FILTER_KEYS
    assert body["Nodes"] is None
    assert body["NodeNames"] == ["ada-24g"]
    assert body["Error"] == ""
    check_filter_verdicts(body)
    every = set(body["NodeNames"]) | set(body["FailedNodes"]) | set(body["FailedAndUnresolvableNodes"])
    assert every == {*NAMES, "ghost"}


def test_filter_nodes_mode_echoes_node_objects(client, nodes) -> None:
    pod = model_pod(20480, "vllm", 1)
    r = client.post("/filter", json={"Pod": pod, "Nodes": {"metadata": {}, "items": nodes}, "NodeNames": None})
    body = r.json()
    assert r.status_code == 200 and set(body) == FILTER_KEYS
    assert body["NodeNames"] is None
    assert body["Nodes"]["metadata"] == {}
    assert body["Nodes"]["items"] == [n for n in nodes if n["metadata"]["name"] == "ada-24g"]
    assert body["Error"] == ""
    check_filter_verdicts({**body, "FailedNodes": {**body["FailedNodes"], "ghost": "node not in extender cache"}})


def test_nodes_mode_uses_request_objects_not_only_cache(client, nodes) -> None:
    """A node unknown to the cache is judged from the object kube-scheduler sent."""
    extra = json.loads(json.dumps(nodes[0]))
    extra["metadata"]["name"] = "fresh-node"
    r = client.post("/filter", json={"Pod": model_pod(20480), "Nodes": {"items": [extra]}})
    assert [i["metadata"]["name"] for i in r.json()["Nodes"]["items"]] == ["fresh-node"]


@pytest.mark.parametrize("form", ["names", "nodes"])
def test_legacy_lowercase_keys_accepted_pascal_emitted(client, nodes, form) -> None:
    pod = model_pod(20480, "vllm", 1)
    payload = {"pod": pod, "nodenames": NAMES} if form == "names" else {"pod": pod, "nodes": {"items": nodes}}
    body = client.post("/filter", json=payload).json()
    assert set(body) == FILTER_KEYS
    got = body["NodeNames"] if form == "names" else [i["metadata"]["name"] for i in body["Nodes"]["items"]]
    assert got == ["ada-24g"]
    prio = client.post("/prioritize", json=payload).json()
    assert isinstance(prio, list) and all(set(p) == {"Host", "Score"} for p in prio)


def test_empty_names_give_empty_lists_not_null(client) -> None:
    body = client.post("/filter", json={"Pod": model_pod(), "NodeNames": []}).json()
    assert body == {"Nodes": None, "NodeNames": [], "FailedNodes": {}, "FailedAndUnresolvableNodes": {}, "Error": ""}
    assert client.post("/prioritize", json={"Pod": model_pod(), "NodeNames": []}).json() == []


def test_prioritize_bare_array_mirrors_input(client) -> None:
    names = ["ada-24g", "two-12g", "ada-full", "ghost"]
    r = client.post("/prioritize", json={"Pod": model_pod(8000, "vllm", 1), "NodeNames": names, "Nodes": None})
    assert r.status_code == 200
    body = r.json()
    assert isinstance(body, list)
    assert [p["Host"] for p in body] == names
    assert all(set(p) == {"Host", "Score"} and isinstance(p["Score"], int) and 0 <= p["Score"] <= 10 for p in body)
    scores = {p["Host"]: p["Score"] for p in body}
    assert scores["ada-24g"] >= 1 and scores["two-12g"] >= 1 and scores["ghost"] == 0


def test_passthrough_pod(client) -> None:
    pod = pod_obj(annotations={}, gpus=None)
    body = client.post("/filter", json={"Pod": pod, "NodeNames": [*NAMES, "ghost"]}).json()
    assert body["NodeNames"] == [*NAMES, "ghost"] and body["FailedNodes"] == {}
    assert body["FailedAndUnresolvableNodes"] == {}
    prio = client.post("/prioritize", json={"Pod": pod, "NodeNames": NAMES}).json()
    assert {p["Score"] for p in prio} == {0}


def test_junk_pod_annotation_rejects_every_node_naming_it(client) -> None:
    pod = model_pod(extra={keys.POD_VRAM_ESTIMATE_MB: "twenty gigs"})
    r = client.post("/filter", json={"Pod": pod, "NodeNames": NAMES})
    body = r.json()
    assert r.status_code == 200 and body["Error"] == "" and body["NodeNames"] == []
    assert set(body["FailedAndUnresolvableNodes"]) == set(NAMES)
    assert set(body["FailedAndUnresolvableNodes"].values()) == {f"invalid pod annotation {keys.POD_VRAM_ESTIMATE_MB}"}


MALFORMED = [
    ("not-json", b"{this is not json", 400, "not valid JSON"),
    ("empty", b"", 400, "empty request body"),
    ("array", b"[1, 2, 3]", 400, "malformed ExtenderArgs"),
    ("pod-wrong-type", json.dumps({"Pod": 5, "NodeNames": ["a"]}).encode(), 400, "malformed ExtenderArgs"),
    ("names-wrong-type", json.dumps({"Pod": {}, "NodeNames": "ada-24g"}).encode(), 400, "$.NodeNames"),
    ("annotation-wrong-type", json.dumps({"Pod": {"metadata": {"annotations": {"a": 5}}}, "NodeNames": []}).encode(),
     400, "annotations"),
    ("missing-pod", json.dumps({"NodeNames": ["ada-24g"]}).encode(), 400, "no Pod"),
    ("no-nodes", json.dumps({"Pod": {}, "Nodes": None, "NodeNames": None}).encode(), 400, "neither"),
    ("item-without-name", json.dumps({"Pod": {}, "Nodes": {"items": [{"metadata": {}}]}}).encode(), 400,
     "metadata.name"),
    ("item-wrong-type", json.dumps({"Pod": {}, "Nodes": {"items": [7]}}).encode(), 400, "items[0]"),
]


@pytest.mark.parametrize(("body", "status", "text"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
@pytest.mark.parametrize("verb", ["/filter", "/prioritize"])
def test_malformed_bodies_get_clear_4xx_and_server_keeps_serving(client, verb, body, status, text) -> None:
    r = client.post(verb, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status
    assert text in r.json()["Error"]
    ok = client.post("/filter", json={"Pod": model_pod(), "NodeNames": ["ada-24g"]})
    assert ok.status_code == 200 and ok.json()["NodeNames"] == ["ada-24g"]


def test_50mb_body_is_rejected_413_and_server_keeps_serving(client) -> None:
    big = b'{"Pod": {}, "NodeNames": ["' + b"x" * (50 * 1024 * 1024) + b'"]}'
    r = client.post("/filter", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["Error"]

    def chunks():  # no Content-Length: chunked transfer, counted while streaming
        yield b'{"Pod": {}, "NodeNames": ["'
        for _ in range(50):
            yield b"x" * (1024 * 1024)
        yield b'"]}'

    with httpx.Client(base_url=str(client.base_url), timeout=30) as c2:
        r2 = c2.post("/filter", content=chunks(), headers={"content-type": "application/json"})
    assert r2.status_code == 413
    ok = client.post("/filter", json={"Pod": model_pod(), "NodeNames": ["ada-24g"]})
    assert ok.status_code == 200


def test_health_ready_metrics(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["ready"] is True and "8 nodes" in r.json()["reason"]
    client.post("/filter", json={"Pod": model_pod(), "NodeNames": NAMES})
    text = client.get("/metrics").text
    for metric in ("flexinfer_extender_request_duration_seconds_bucket{le=", "flexinfer_extender_nodes_per_request",
                   "flexinfer_extender_verdicts_total{reason=", "flexinfer_extender_cache_nodes 8.0",
                   "flexinfer_extender_cache_age_seconds", "flexinfer_extender_reservations"):
        assert metric.split("{")[0] in text
    assert 'result="unresolvable",verb="filter"' in text
    assert 'reason="GPU state is stale"' in text


def test_configurable_paths_and_unready_before_sync() -> None:
    cache = NodeCache()
    ext = Extender(cache)
    with serve_in_thread(build_app(ext, filter_path="scheduler/filter", prioritize_path="/scheduler/prioritize"),
                         "127.0.0.1", 0) as h, httpx.Client(base_url=h.url) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and "not synced" in r.json()["reason"]
        assert c.post("/filter", json={"Pod": {}, "NodeNames": []}).status_code == 404
        body = c.post("/scheduler/filter", json={"Pod": model_pod(), "NodeNames": ["a"]}).json()
        assert body["FailedNodes"] == {"a": "node not in extender cache"}
        cache.replace_all(fleet_nodes())
        assert c.get("/readyz").status_code == 200
        assert c.post("/scheduler/prioritize", json={"Pod": model_pod(), "NodeNames": ["ada-24g"]}).json() == [
            {"Host": "ada-24g", "Score": c.post("/scheduler/prioritize", json={
                "Pod": model_pod(), "NodeNames": ["ada-24g"]}).json()[0]["Score"]}]


def _self_signed(tmp: Path) -> tuple[str, str]:
    if shutil.which("openssl") is None:
        pytest.skip("neither cryptography nor the openssl CLI is available to make a test certificate")
    cert, key = tmp / "tls.crt", tmp / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=30)
    return str(cert), str(key)


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory):
    return _self_signed(tmp_path_factory.mktemp("tls"))


def test_tls(nodes, tls_pair) -> None:
    cert, key = tls_pair
    cache = NodeCache()
    cache.replace_all(nodes)
    with serve_in_thread(build_app(Extender(cache)), "127.0.0.1", 0, tls_cert=cert, tls_key=key) as h:
        assert h.url.startswith("https://")
        with httpx.Client(base_url=h.url, verify=ssl.create_default_context(cafile=cert)) as c:
            body = c.post("/filter", json={"Pod": model_pod(), "NodeNames": NAMES}).json()
            assert body["NodeNames"] == ["ada-24g"]
        with pytest.raises(httpx.TransportError), httpx.Client(base_url=h.url.replace("https", "http")) as plain:
            plain.get("/healthz")


def test_explain_over_http(client) -> None:
    body = client.post("/explain", json={"Pod": model_pod(20480)}).json()
    assert body["Requirements"]["VramEstimateMiB"] == 20480 and body["Requirements"]["Backend"] == "vllm"
    by = {v["Node"]: v for v in body["Verdicts"]}
    assert sorted(by) == sorted(NAMES)
    assert by["ada-full"]["Detail"] == "needs 20480 MiB on one GPU; best GPU has 2000 MiB free"
    assert by["ada-24g"]["Feasible"] and by["ada-24g"]["Gpus"] == [0]
    some = client.post("/explain", json={"Pod": model_pod(20480), "NodeNames": ["two-12g"]}).json()
    assert [v["Reason"] for v in some["Verdicts"]] == ["GPU memory too small for model"]
    assert client.post("/explain", content=b"nope").status_code == 400


@pytest.mark.integration
def test_cli_serves_and_stops_cleanly(tmp_path) -> None:
    import signal
    import socket
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fleet = Path(__file__).resolve().parents[2] / "hack" / "fleets" / "homelab.yaml"
    proc = subprocess.Popen([sys.executable, "-m", "flexinfer.extender.main", "--bind-address", "127.0.0.1",
                             "--http-port", str(port), "--nodes-from", str(fleet), "--log-format", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 20
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()
                time.sleep(0.1)
        assert r.status_code == 200
        body = httpx.post(f"http://127.0.0.1:{port}/filter", json={
            "Pod": model_pod(4000, "vllm", 1), "NodeNames": ["cblevins-gtx980ti", "rtxpro4000-worker"]}).json()
        assert body["NodeNames"] == ["rtxpro4000-worker"]
        assert body["FailedAndUnresolvableNodes"] == {"cblevins-gtx980ti": "vllm does not run on maxwell sm_52"}
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
