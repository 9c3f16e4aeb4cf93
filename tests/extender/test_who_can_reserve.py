"""Issue 14 item 4 over real sockets: only kube-scheduler can reserve.

Rows: "6 forged single-node filter requests ... block every GPU for 30 s" and "default binding: plaintext on
every interface, no authentication". With mutual TLS on the scheduling port only a client certificate from the
extender's CA gets a handshake; the read-only port answers probes, /metrics and /explain and has no
filter/prioritize at all; gRPC likewise. Before the fix anyone who reached the port could reserve.
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from flexinfer.extender.cache import NodeCache
from flexinfer.extender.grpc_server import serve_grpc
from flexinfer.extender.http import ExtenderApp, serve_in_thread
from flexinfer.extender.policy import PolicyConfig
from flexinfer.extender.reservations import Reservations
from flexinfer.extender.service import Extender

from flexinfer.api.v1 import scheduler_extender_pb2 as pb
from flexinfer.api.v1 import scheduler_extender_pb2_grpc as pb_grpc

from .certs import CA, Pair
from .ext_fixtures import gpu, model_pod, node_obj

pytestmark = pytest.mark.integration

NODES = [f"gpu-{i}" for i in range(5)]
FREE_MIB = 20000


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pair]:
    ca = CA(tmp_path_factory.mktemp("pki"))
    rogue = CA(tmp_path_factory.mktemp("rogue"), "someone-else")
    return {"server": ca.issue("flexinfer-extender", server=True, client=True),
            "scheduler": ca.issue("system:kube-scheduler"),
            "rogue": rogue.issue("system:kube-scheduler")}


def fleet() -> list[dict[str, Any]]:
    now = time.time()
    return [node_obj(n, [gpu(0, "nvidia", "sm_89", 24576, FREE_MIB)], now) for n in NODES]


def make_extender() -> Extender:
    cache = NodeCache()
    cache.replace_all(fleet())
    return Extender(cache, PolicyConfig(), Reservations(tentative_ttl_seconds=30))


def client_ctx(pki: dict[str, Pair], who: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki["server"].ca)
    if who is not None:
        ctx.load_cert_chain(pki[who].cert, pki[who].key)
    return ctx


@contextlib.contextmanager
def served_mtls(pki: dict[str, Pair]) -> Iterator[tuple[Extender, Any, Any]]:
    ext = make_extender()
    web = ExtenderApp(ext)
    s = pki["server"]
    with serve_in_thread(web.app, "127.0.0.1", 0, tls_cert=s.cert, tls_key=s.key, client_ca=s.ca) as sched, \
            serve_in_thread(web.read_only_app, "127.0.0.1", 0, listener="read-only") as ro:
        yield ext, sched, ro


def forged(node: str, i: int) -> dict[str, Any]:
    """What the issue's attacker sent: a made-up pod asking for a GPU's whole free memory, one node named."""
    return {"Pod": model_pod(FREE_MIB, uid=f"forged-{i}", name=f"forged-{i}"), "NodeNames": [node]}


def real_pod_fits(url: str, verify: Any) -> list[str]:
    with httpx.Client(verify=verify, timeout=10) as c:
        res = c.post(f"{url}/filter", json={"Pod": model_pod(8192, uid="real", name="real"), "NodeNames": NODES})
        assert res.status_code == 200
        return res.json()["NodeNames"]


def test_forged_filter_requests_cannot_reserve_and_a_real_pod_still_fits_everywhere(pki) -> None:
    with served_mtls(pki) as (ext, sched, ro):
        attempts = [(None, sched.url), ("rogue", sched.url)]
        for i, node in enumerate([*NODES, NODES[0]]):
            for who, url in attempts:
                with pytest.raises(httpx.HTTPError), httpx.Client(verify=client_ctx(pki, who), timeout=5) as c:
                    c.post(f"{url}/filter", json=forged(node, i))
            # the plaintext read-only port has no filter/prioritize at all
            res = httpx.post(f"{ro.url}/filter", json=forged(node, i), timeout=5)
            assert res.status_code == 404
        assert len(ext.reservations) == 0
        assert ext.metrics.registry.get_sample_value("flexinfer_extender_connections_rejected_total",
                                                     {"listener": "scheduling", "reason": "tls_handshake_failed"}) >= 12
        # kube-scheduler (client certificate from the extender's CA) gets every GPU
        assert real_pod_fits(sched.url, client_ctx(pki, "scheduler")) == NODES
        # the read-only surface stays open without a certificate
        assert httpx.get(f"{ro.url}/healthz", timeout=5).status_code == 200
        assert httpx.get(f"{ro.url}/readyz", timeout=5).status_code == 200
        assert "flexinfer_extender_verdicts_total" in httpx.get(f"{ro.url}/metrics", timeout=5).text
        explained = httpx.post(f"{ro.url}/explain", json={"Pod": model_pod(8192)}, timeout=5).json()
        assert {v["Node"] for v in explained["Verdicts"]} == set(NODES)
        assert len(ext.reservations) == 0  # five feasible nodes: prioritize would reserve; explain never does


def test_one_pod_identity_holds_one_reservation_of_exactly_its_ask(pki) -> None:
    """Even an authenticated caller: six single-node filters for one pod (kube-scheduler retrying it) hold one
    reservation, of that pod's size, so the other GPUs stay free."""
    with served_mtls(pki) as (ext, sched, _):
        verify = client_ctx(pki, "scheduler")
        pod = model_pod(FREE_MIB, gpus=1, uid="retried", name="retried")
        with httpx.Client(verify=verify, timeout=10) as c:
            for node in [*NODES, NODES[2]]:
                assert c.post(f"{sched.url}/filter", json={"Pod": pod, "NodeNames": [node]}).json()["NodeNames"] == [
                    node]
        (held,) = ext.reservations.all()
        assert (held.pod, held.node, held.gpus, held.mib_per_gpu) == ("retried", NODES[2], (0,), FREE_MIB)
        assert real_pod_fits(sched.url, verify) == [n for n in NODES if n != NODES[2]]


def test_tentative_reservations_are_capped_oldest_first() -> None:
    r = Reservations(max_tentative=3)
    for i in range(5):
        r.reserve(f"p{i}", "n", (0,), 100, 1000.0 + i)
    assert [x.pod for x in r.all()] == ["p2", "p3", "p4"] and r.evicted == 2
    r.release("p2")  # bound: its memory is a commitment in the node cache now, not a reservation
    r.reserve("p5", "n", (0,), 100, 1011.0)
    r.reserve("p6", "n", (0,), 100, 1012.0)
    assert [x.pod for x in r.all()] == ["p4", "p5", "p6"] and len(r) == 3 and r.evicted == 3
    r.reserve("p4", "n", (0,), 100, 1013.0)  # a retry replaces the pod's own reservation, evicting nobody
    assert [x.pod for x in r.all()] == ["p5", "p6", "p4"] and r.evicted == 3


def test_grpc_filter_and_prioritize_need_a_client_certificate_explain_stays_open(pki) -> None:
    ext = make_extender()
    s = pki["server"]
    g = serve_grpc(ext, "127.0.0.1", 0, tls_cert=s.cert, tls_key=s.key, client_ca=s.ca, read_only_port=0)
    pod_json = json.dumps(model_pod(FREE_MIB, uid="forged", name="forged")).encode()
    req = pb.FilterRequest(pod=pb.PodSource(pod_json=pod_json), node_names=[NODES[0]])
    def read(path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    ca = read(s.ca)
    try:
        for who in (None, "rogue"):
            key = read(pki[who].key) if who else None
            cert = read(pki[who].cert) if who else None
            creds = grpc.ssl_channel_credentials(ca, key, cert)
            with grpc.secure_channel(f"127.0.0.1:{g.port}", creds) as ch, pytest.raises(grpc.RpcError) as err:
                pb_grpc.SchedulerExtenderStub(ch).Filter(req, timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # no handshake
        with grpc.insecure_channel(f"127.0.0.1:{g.read_only_port}") as ch:
            stub = pb_grpc.SchedulerExtenderStub(ch)
            for call, message in ((stub.Filter, req), (stub.Prioritize, pb.PrioritizeRequest(pod=req.pod,
                                                                                             node_names=NODES))):
                with pytest.raises(grpc.RpcError) as err:
                    call(message, timeout=5)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and "client certificate" in \
                    err.value.details()
            explained = stub.Explain(pb.ExplainRequest(pod=req.pod), timeout=5)
            assert {v.node for v in explained.verdicts} == set(NODES)
        assert len(ext.reservations) == 0
        sched = pki["scheduler"]
        creds = grpc.ssl_channel_credentials(ca, read(sched.key), read(sched.cert))
        with grpc.secure_channel(f"127.0.0.1:{g.port}", creds) as ch:
            out = pb_grpc.SchedulerExtenderStub(ch).Filter(req, timeout=5)
        assert list(out.node_names) == [NODES[0]] and len(ext.reservations) == 1
    finally:
        g.stop(0)


# --- row: default binding ------------------------------------------------------------------------------------

def run_cli(*args: str, wait_s: float = 20.0) -> tuple[int | None, str]:
    from flexinfer.fleet import default_fleet_path

    proc = subprocess.Popen([sys.executable, "-m", "flexinfer.extender.main", "--nodes-from",
                             str(default_fleet_path()), "--http-port", "0", "--log-format", "json", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    out = ""
    deadline = time.monotonic() + wait_s
    try:
        while time.monotonic() < deadline and proc.poll() is None and "extender_started" not in out:
            line = proc.stdout.readline()
            out += line
    finally:
        code = proc.poll()
        if code is None:
            proc.terminate()
            proc.wait(10)
    return code, out


def test_scheduling_verbs_are_never_served_to_the_network_without_mutual_tls(pki) -> None:
    code, out = run_cli("--bind-address", "0.0.0.0")
    assert code == 1 and "mutual TLS" in out and "--allow-unauthenticated" in out
    code, out = run_cli("--bind-address", "0.0.0.0", "--tls-cert", pki["server"].cert, "--tls-key",
                        pki["server"].key)  # TLS without client certificates is not enough
    assert code == 1
    code, out = run_cli()  # the default: loopback, plaintext
    assert code is None and '"url": "http://127.0.0.1:' in out
    s = pki["server"]
    code, out = run_cli("--bind-address", "0.0.0.0", "--tls-cert", s.cert, "--tls-key", s.key, "--client-ca-file",
                        s.ca)
    assert code is None and '"mutual_tls": true' in out and '"url": "https://0.0.0.0:' in out
    code, out = run_cli("--bind-address", "0.0.0.0", "--allow-unauthenticated")  # an explicit choice
    assert code is None and '"mutual_tls": false' in out


def test_certificates_from_hack_extender_certs_work_end_to_end(tmp_path) -> None:
    """What the manifests mount by default (hack/extender-certs.sh): kube-scheduler's certificate reserves, the
    extender is verified under its Service name, and nothing else gets in."""
    import shutil
    from pathlib import Path

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    script = Path(__file__).resolve().parents[2] / "hack" / "extender-certs.sh"
    subprocess.run(["bash", str(script), "--out", str(tmp_path), "--no-apply"], check=True, capture_output=True)
    d = tmp_path
    ext = make_extender()
    web = ExtenderApp(ext)
    with serve_in_thread(web.app, "127.0.0.1", 0, tls_cert=str(d / "extender.crt"), tls_key=str(d / "extender.key"),
                         client_ca=str(d / "ca.crt")) as h:
        sni = {"sni_hostname": "flexinfer-extender.flexinfer-system.svc"}  # what tlsConfig.serverName checks
        body = {"Pod": model_pod(8192, uid="real", name="real"), "NodeNames": [NODES[0]]}
        ctx = ssl.create_default_context(cafile=str(d / "ca.crt"))
        ctx.load_cert_chain(str(d / "scheduler.crt"), str(d / "scheduler.key"))
        with httpx.Client(verify=ctx, timeout=10) as c:
            assert c.post(f"{h.url}/filter", json=body, extensions=sni).json()["NodeNames"] == [NODES[0]]
        assert len(ext.reservations) == 1
        bare = ssl.create_default_context(cafile=str(d / "ca.crt"))
        with pytest.raises(httpx.HTTPError), httpx.Client(verify=bare, timeout=5) as c:
            c.post(f"{h.url}/filter", json=body, extensions=sni)


def test_a_grpc_read_only_port_without_the_grpc_server_is_a_usage_error() -> None:
    """--grpc-read-only-port is a second port of the --grpc-port server: alone it was silently not served."""
    code, out = run_cli("--grpc-read-only-port", "0")  # 0 = off: fine
    assert code is None and "extender_started" in out
    from flexinfer.fleet import default_fleet_path

    res = subprocess.run([sys.executable, "-m", "flexinfer.extender.main", "--nodes-from", str(default_fleet_path()),
                          "--http-port", "0", "--grpc-read-only-port", "19999"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 2 and "--grpc-read-only-port" in res.stderr and "needs --grpc-port" in res.stderr, res
