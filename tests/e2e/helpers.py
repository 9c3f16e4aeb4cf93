"""Helpers for the e2e tier: GPU pods, scheduling events, waiting."""

from __future__ import annotations

import contextlib
import http.server
import json
import ssl
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from flexinfer import keys, kube

JSON = dict[str, Any]
RTX_TOLERATION = {"key": "workload.ai/dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}


def gpu_pod(name: str, namespace: str, *, backend: str, vram_mib: int, vendor: str, count: int = 1,
            node_selector: dict[str, str] | None = None, scheduler_name: str | None = None,
            annotations: dict[str, str] | None = None, tolerate_dedicated: bool = True,
            labels: dict[str, str] | None = None) -> JSON:
    """A model-server pod as the controller renders them: the pod contract annotations and one GPU
    resource (`nvidia.com/gpu` / `amd.com/gpu`)."""
    resource = {"nvidia": keys.RESOURCE_NVIDIA, "amd": keys.RESOURCE_AMD}[vendor]
    spec: JSON = {
        "containers": [{"name": "server", "image": "registry.invalid/flexinfer/model-server:e2e",
                        "resources": {"limits": {resource: str(count)}}}],
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": 0,
    }
    if node_selector:
        spec["nodeSelector"] = node_selector
    if tolerate_dedicated:
        spec["tolerations"] = [RTX_TOLERATION]
    if scheduler_name:
        spec["schedulerName"] = scheduler_name
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name, **(labels or {})},
                     "annotations": {keys.POD_MODEL: name, keys.POD_BACKEND: backend,
                                     keys.POD_VRAM_ESTIMATE_MB: str(vram_mib), **(annotations or {})}},
        "spec": spec,
    }


def create(api: Any, obj: JSON) -> JSON:
    return kube.create_object(api, obj)


def pod(api: Any, namespace: str, name: str) -> JSON | None:
    return kube.get_object(api, "pods", name, namespace)


def node_of(api: Any, namespace: str, name: str) -> str:
    p = pod(api, namespace, name)
    return ((p or {}).get("spec") or {}).get("nodeName") or ""


def events_for(api: Any, namespace: str, name: str, reason: str | None = None) -> list[JSON]:
    evs = kube.request(api, "GET", f"/api/v1/namespaces/{namespace}/events",
                       query={"fieldSelector": f"involvedObject.name={name}"}).get("items") or []
    return [e for e in evs if reason is None or e.get("reason") == reason]


def failed_scheduling_messages(api: Any, namespace: str, name: str) -> list[str]:
    return [str(e.get("message") or e.get("note") or "") for e in events_for(api, namespace, name, "FailedScheduling")]


def pods_in(api: Any, namespace: str, label_selector: str | None = None) -> list[JSON]:
    return kube.list_objects(api, "pods", namespace, label_selector=label_selector)


def delete_namespace_and_wait(api: Any, namespace: str, timeout_s: float = 60.0) -> None:
    """Delete every pod now (grace 0; kwok finalizes them), then the namespace; wait until the pods are gone."""
    with contextlib.suppress(kube.KubeError):
        kube.request(api, "DELETE", f"/api/v1/namespaces/{namespace}/pods", query={"gracePeriodSeconds": "0"})
    kube.delete_object(api, "namespaces", namespace)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not kube.list_objects(api, "pods", namespace):
            return
        time.sleep(0.2)
    raise AssertionError(f"pods of namespace {namespace} still exist after {timeout_s:.0f} s")


def scheduled_condition(api: Any, namespace: str, name: str) -> JSON:
    """The pod's PodScheduled condition (kube-scheduler's latest verdict: reason + message), or {}."""
    p = pod(api, namespace, name) or {}
    for c in (p.get("status") or {}).get("conditions") or []:
        if c.get("type") == "PodScheduled":
            return c
    return {}


def bound_pods(api: Any, namespace: str, label_selector: str | None = None) -> dict[str, str]:
    """pod name -> node for the bound pods of a namespace."""
    return {p["metadata"]["name"]: p["spec"]["nodeName"] for p in pods_in(api, namespace, label_selector)
            if (p.get("spec") or {}).get("nodeName")}


class RecordingProxy:
    """A loopback proxy between kube-scheduler and the extender that records each request's path and body
    (to check the wire form kube-scheduler really sends) and forwards it unchanged. With `tls_dir` (the
    cluster's extender TLS files) it presents the extender's certificate to kube-scheduler and the
    scheduler's client certificate to the extender, so the shipped mutual-TLS configuration still holds."""

    def __init__(self, target: str, tls_dir: Path | None = None) -> None:
        self.target = target.rstrip("/")
        self.requests: list[tuple[str, JSON]] = []
        upstream_ctx = None
        if tls_dir is not None:
            upstream_ctx = ssl.create_default_context(cafile=str(tls_dir / "serving-ca.crt"))
            upstream_ctx.load_cert_chain(str(tls_dir / "scheduler-client.crt"), str(tls_dir / "scheduler-client.key"))
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    proxy.requests.append((self.path, json.loads(body)))
                except ValueError:
                    proxy.requests.append((self.path, {}))
                req = urllib.request.Request(proxy.target + self.path, data=body,
                                             headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(req, timeout=10, context=upstream_ctx) as r:
                        status, data = r.status, r.read()
                except urllib.error.HTTPError as e:
                    status, data = e.code, e.read()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.scheme = "http"
        if tls_dir is not None:
            server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            server_ctx.load_cert_chain(str(tls_dir / "extender.crt"), str(tls_dir / "extender.key"))
            self.server.socket = server_ctx.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
