"""flexinfer-proxy against the real control plane: a cold start from zero through the proxy on real objects.

The proxy runs as its own ServiceAccount with the shipped RBAC (the Role copied into the test namespace, as an
operator deploying it for another namespace would), the real controller scales the Model, kube-scheduler with
the shipped extender configuration places the pod, kwok runs it, and the real EndpointSlice controller
publishes its endpoint. kwok pods run nothing: the in-process scenario maps the endpoint the slice names to a
fake OpenAI server on loopback (everything else is the proxy's real path); the console-script scenario checks
the real wake-up and that the request went to the address the slice names.
"""

from __future__ import annotations

import contextlib
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml
from flexinfer.proxy import catalog as proxy_catalog
from flexinfer.proxy.main import build
from flexinfer.proxy.runner import ProxyServer
from flexinfer.proxy.server import ProxyConfig

from flexinfer import keys, kube
from flexinfer.sim.controlplane import free_port, python_entry_point
from flexinfer.sim.modelserver import FakeModelServer
from flexinfer.sim.realcluster import NAMESPACE

ROOT = Path(__file__).resolve().parents[2]


def proxy_rbac_in(api: Any, ns: str) -> None:
    """The shipped proxy Role, bound to the shipped ServiceAccount, in `ns`."""
    docs = list(yaml.safe_load_all((ROOT / "daemonset" / "base" / "rbac" / "proxy.yaml").read_text()))
    for d in docs:
        if d["kind"] in ("Role", "RoleBinding"):
            d["metadata"]["namespace"] = ns
            kube.request(api, "POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/{d['kind'].lower()}s",
                         body=d)


def fast_model(ns: str, name: str = "fast-8b", *, tolerate: bool = True) -> dict[str, Any]:
    """vLLM on NVIDIA: in the homelab only the RTX PRO 4000 node runs it, and that node is tainted for GPU work
    (workload.ai/dedicated=gpu:NoSchedule), so the Model must tolerate the taint."""
    spec: dict[str, Any] = {
        "backend": "vllm", "source": "HF://Qwen/Qwen3-8B", "gpu": {"vendor": "nvidia", "vramEstimateMB": 8000},
        "config": {"maxModelLen": 8192}, "serviceLabels": ["fast"] if tolerate else ["fast-untolerated"],
        "serverless": {"minReplicas": 0, "idleTimeout": "10m", "coldStartTimeout": "3m"}}
    if tolerate:
        spec["tolerations"] = [{"key": "workload.ai/dedicated", "operator": "Equal", "value": "gpu",
                                "effect": "NoSchedule"}]
    return {"apiVersion": keys.MODEL_API_VERSION, "kind": keys.MODEL_KIND,
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


@contextlib.contextmanager
def controller(homelab: Any, ns: str) -> Iterator[Any]:
    proc = homelab.start_controller("flexinfer-controller-proxy-e2e", "--metrics-port", "0", "--namespace", ns,
                                    "--resync-seconds", "1", "--cooldown-seconds", "0")
    try:
        yield proc
    finally:
        proc.stop(10)


def test_cold_start_from_zero_through_the_proxy(homelab, control_plane, api, ns, wait_for, monkeypatch):
    proxy_rbac_in(api, ns)
    kube.create_object(api, fast_model(ns))
    kube.create_object(api, fast_model(ns, "no-toleration", tolerate=False))
    seen_slices: list[dict[str, Any]] = []
    server = FakeModelServer("fast-8b", max_model_len=8192).start()
    real = proxy_catalog.slice_endpoints

    def kwok_to_loopback(obj: dict[str, Any]) -> tuple[str | None, tuple[str, ...]]:
        model, urls = real(obj)  # the real rules first (managed-by, service name, ready, port)
        if urls:
            seen_slices.append(obj)
            return model, (server.url,)  # kwok's pod address is not routable; the fake server stands in
        return model, urls

    monkeypatch.setattr(proxy_catalog, "slice_endpoints", kwok_to_loopback)
    sa = control_plane.service_account_kubeconfig(NAMESPACE, "flexinfer-proxy")
    built = build(kube.api_client(kubeconfig=str(sa)), ns, ProxyConfig(), fit_check="extender",
                  activity_interval_s=1.0)
    px = ProxyServer(built.proxy, cleanup=built.informers, grace_s=2.0)
    try:
        with controller(homelab, ns):
            px.start()
            wait_for("the proxy's caches (as its ServiceAccount)", lambda: built.proxy.catalog.synced, 30)
            wait_for("fast-8b Idle", lambda: (kube.get_object(api, keys.MODEL_PLURAL, "fast-8b", ns) or {})
                     .get("status", {}).get("phase") == "Idle", 60)
            # kube-scheduler would never place a pod that does not tolerate the taint: refused at once, not woken
            r = httpx.post(px.url + "/v1/chat/completions", timeout=30, json={"model": "fast-untolerated"})
            assert r.status_code == 503 and "untolerated taint" in r.json()["error"]["message"], r.text
            assert keys.MODEL_ACTIVATE not in (kube.get_object(api, keys.MODEL_PLURAL, "no-toleration", ns)
                                               ["metadata"].get("annotations") or {})
            t0 = time.monotonic()
            r = httpx.post(px.url + "/v1/chat/completions", timeout=200,
                           json={"model": "fast", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8192})
            assert r.status_code == 200, r.text
            assert r.headers["x-flexinfer-model"] == "fast-8b" and time.monotonic() - t0 < 180
            assert server.stats.bodies[-1][1]["max_tokens"] == 8192 - 512
            m = kube.get_object(api, keys.MODEL_PLURAL, "fast-8b", ns)
            assert keys.MODEL_ACTIVATE in m["metadata"]["annotations"]
            wait_for("lastActiveTime written by the proxy's ServiceAccount", lambda: (kube.get_object(
                api, keys.MODEL_PLURAL, "fast-8b", ns) or {}).get("status", {}).get("lastActiveTime"), 10)
            pods = kube.list_objects(api, "pods", ns, label_selector=f"{keys.LABEL_MODEL}=fast-8b")
            assert pods and pods[0]["spec"].get("nodeName")  # placed by kube-scheduler with the extender
            labels = seen_slices[-1]["metadata"]["labels"]  # the real EndpointSlice controller's slice
            assert labels["endpointslice.kubernetes.io/managed-by"] == "endpointslice-controller.k8s.io"
            assert labels[keys.LABEL_MODEL] == "fast-8b"  # Service labels are copied: our informer selector works
    finally:
        px.stop()
        server.stop()


def test_the_console_script_wakes_a_model_as_its_service_account(homelab, control_plane, api, ns, wait_for):
    proxy_rbac_in(api, ns)
    kube.create_object(api, fast_model(ns))
    sa = control_plane.service_account_kubeconfig(NAMESPACE, "flexinfer-proxy")
    port, ops = free_port(), free_port()
    proc = control_plane.spawn("flexinfer-proxy-e2e", [
        *python_entry_point("flexinfer-proxy"), "--kubeconfig", str(sa), "--namespace", ns, "--http-port", str(port),
        "--metrics-port", str(ops), "--upstream-read-timeout-seconds", "5", "--log-format", "json"])
    try:
        with controller(homelab, ns):
            wait_for("/readyz (informers synced with the shipped RBAC)", lambda: _get(ops, "/readyz") == 200, 60)
            listing = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).json()
            assert {e["id"] for e in listing["data"]} == {"fast-8b", "fast"}
            r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=200,
                           json={"model": "fast", "messages": [{"role": "user", "content": "hi"}]})
            # woken, scheduled, Ready, forwarded to the pod address the EndpointSlice names: kwok pods run nothing,
            # so either nothing answers there (the proxy says so, naming the Model) or whatever listens at that
            # address answers (the proxy passes it on, marked with the Model it routed to)
            if r.status_code in (502, 504):
                assert "fast-8b" in r.json()["error"]["message"], r.text
            else:
                assert r.headers.get("x-flexinfer-model") == "fast-8b", (r.status_code, r.text[:200])
            m = kube.get_object(api, keys.MODEL_PLURAL, "fast-8b", ns)
            assert keys.MODEL_ACTIVATE in m["metadata"]["annotations"]
            wait_for("fast-8b Ready (the controller follows the pod the proxy already saw ready)", lambda: (
                kube.get_object(api, keys.MODEL_PLURAL, "fast-8b", ns) or {}).get("status", {}).get("phase") == "Ready",
                30)
            wait_for("lastActiveTime", lambda: (kube.get_object(api, keys.MODEL_PLURAL, "fast-8b", ns) or {})
                     .get("status", {}).get("lastActiveTime"), 20)
            metrics = httpx.get(f"http://127.0.0.1:{ops}/metrics", timeout=10).text
            assert 'flexinfer_proxy_activations_total{model="fast-8b"} 1.0' in metrics
    finally:
        proc.stop(10)


def _get(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return int(r.status)
    except OSError:
        return 0
