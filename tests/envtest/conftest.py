"""The envtest tier: a real etcd + kube-apiserver from KUBEBUILDER_ASSETS (as controller-runtime's
envtest lays them out: `setup-envtest use -p path`). Skipped with the reason when they are absent.

The API server runs with a static bearer token and AlwaysAllow authorization on loopback; the
adapters reach it through a generated kubeconfig, exactly as they would reach a cluster.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

ASSETS = os.environ.get("KUBEBUILDER_ASSETS", "")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _missing() -> str:
    if not ASSETS:
        return "KUBEBUILDER_ASSETS is not set (needs etcd and kube-apiserver binaries)"
    for b in ("etcd", "kube-apiserver"):
        if not (Path(ASSETS) / b).is_file():
            return f"KUBEBUILDER_ASSETS={ASSETS} has no {b} binary"
    if not shutil.which("openssl"):
        return "openssl is needed to make the service-account key"
    return ""


def pytest_collection_modifyitems(config, items):
    reason = _missing()
    if not reason:
        return
    skip = pytest.mark.skip(reason=f"envtest: {reason}")
    for item in items:
        if "envtest" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def envtest_kubeconfig(tmp_path_factory):
    d = tmp_path_factory.mktemp("envtest")
    etcd_port, peer_port, api_port = _free_port(), _free_port(), _free_port()
    token = "flexinfer-envtest-token"
    (d / "tokens.csv").write_text(f'{token},admin,admin,"system:masters"\n')
    subprocess.run(["openssl", "genrsa", "-out", str(d / "sa.key"), "2048"], check=True, capture_output=True)
    procs = [subprocess.Popen([
        str(Path(ASSETS) / "etcd"), "--data-dir", str(d / "etcd"),
        "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
        "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
        "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
    ], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    procs.append(subprocess.Popen([
        str(Path(ASSETS) / "kube-apiserver"), "--etcd-servers", f"http://127.0.0.1:{etcd_port}",
        "--bind-address", "127.0.0.1", "--secure-port", str(api_port), "--cert-dir", str(d / "certs"),
        "--token-auth-file", str(d / "tokens.csv"), "--authorization-mode", "AlwaysAllow",
        "--service-account-issuer", "https://127.0.0.1", "--service-account-key-file", str(d / "sa.key"),
        "--service-account-signing-key-file", str(d / "sa.key"), "--service-cluster-ip-range", "10.0.0.0/24",
        "--disable-admission-plugins", "ServiceAccount",
    ], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    kubeconfig = d / "kubeconfig"
    kubeconfig.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: envtest, cluster: {{server: "https://127.0.0.1:{api_port}", insecure-skip-tls-verify: true}}}}]
users: [{{name: admin, user: {{token: {token}}}}}]
contexts: [{{name: envtest, context: {{cluster: envtest, user: admin}}}}]
current-context: envtest
""")
    from flexinfer import kube

    deadline = time.monotonic() + 60
    while True:
        try:
            kube.list_objects(kube.api_client(kubeconfig=str(kubeconfig)), "namespaces")
            break
        except kube.KubeError:
            if time.monotonic() > deadline:
                for p in procs:
                    p.kill()
                pytest.fail("envtest: kube-apiserver did not become ready within 60 s")
            time.sleep(0.5)
    yield str(kubeconfig)
    for p in reversed(procs):
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
