"""A namespace with Models on the fake API server, the real controller, a simulated kubelet/EndpointSlice
controller, one fake model server per Model, and the proxy in front (informers, activity writes and all)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from flexinfer.controller.reconcile import Controller
from flexinfer.proxy.main import build
from flexinfer.proxy.runner import ProxyServer
from flexinfer.proxy.server import ProxyConfig

from flexinfer import keys, kube
from flexinfer.fleet import default_fleet_path, load_fleet
from flexinfer.nodes import fleet_node_objects
from flexinfer.sim.fakeapi import FakeApiServer
from flexinfer.sim.modelserver import FakeModelServer
from flexinfer.sim.serving import SimServing

NS = "ml"
EXAMPLES = Path(__file__).resolve().parents[2] / "daemonset" / "examples"


def model_doc(name: str, labels: list[str] | None = None, *, group: str | None = None, priority: int = 0,
              min_replicas: int = 0, idle: str = "10m", cold: str = "5m", config: dict | None = None) -> dict:
    gpu: dict[str, Any] = {"vendor": "nvidia", "vramEstimateMB": 8000, "priority": priority}
    if group:
        gpu["shared"] = group
    return {"apiVersion": keys.MODEL_API_VERSION, "kind": keys.MODEL_KIND, "metadata": {"name": name},
            "spec": {"backend": "vllm", "source": f"HF://org/{name}", "gpu": gpu,
                     "serverless": {"minReplicas": min_replicas, "idleTimeout": idle, "coldStartTimeout": cold},
                     "serviceLabels": labels or [], "config": config if config is not None else {"maxModelLen": 4096}}}


def example(name: str, **spec: Any) -> dict:
    doc = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    doc["spec"].update(spec)
    return doc


def wait_for(cond: Callable[[], Any], timeout_s: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@dataclass
class Lab:
    fake: FakeApiServer
    api: Any
    sim: SimServing
    proxy: ProxyServer
    servers: dict[str, FakeModelServer]
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.proxy.url, timeout=30)

    @property
    def metrics(self) -> Any:
        return self.proxy.proxy.metrics

    def status(self, name: str) -> dict:
        return (kube.get_object(self.api, keys.MODEL_PLURAL, name, NS) or {}).get("status") or {}

    def annotations(self, name: str) -> dict:
        return ((kube.get_object(self.api, keys.MODEL_PLURAL, name, NS) or {}).get("metadata") or {}).get(
            "annotations") or {}

    def replicas(self, name: str) -> int:
        dep = kube.get_object(self.api, "deployments", name, NS) or {}
        return int((dep.get("spec") or {}).get("replicas") or 0)

    def serving(self, name: str) -> bool:
        st = self.proxy.proxy.catalog.get(name)
        return bool(st and st.endpoints)

    def chat(self, model: str, **body: Any) -> httpx.Response:
        return self.client.post("/v1/chat/completions",
                                json={"model": model, "messages": [{"role": "user", "content": "hi"}], **body})


@contextlib.contextmanager
def lab(docs: list[dict], *, config: ProxyConfig | None = None, load_s: float | dict[str, float] = 0.2,
        stalled: set[str] | None = None, fit: Any = None, activity_interval_s: float = 1.0,
        server_opts: dict[str, dict] | None = None, fit_check: str = "off",
        pods: list[dict] | None = None) -> Iterator[Lab]:
    """`fit_check="extender"`: the proxy's own fit check over informers (Nodes, the namespace's bound model pods);
    `pods`: pod objects put into the namespace first (e.g. bound elsewhere than the simulated kubelet's node)."""
    servers = {d["metadata"]["name"]: FakeModelServer(d["metadata"]["name"], **(server_opts or {}).get(
        d["metadata"]["name"], {})) for d in docs}
    with FakeApiServer() as fake, contextlib.ExitStack() as stack:
        for s in servers.values():
            stack.enter_context(s)
        api = kube.api_client(server=fake.url)
        fake.put_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        for node in fleet_node_objects(load_fleet(default_fleet_path())):  # the homelab, as its agents publish it
            fake.put_object({"apiVersion": "v1", "kind": "Node", **node})
        for d in docs:
            kube.apply_object(api, {**d, "metadata": {**d["metadata"], "namespace": NS}})
        for pod in pods or ():
            fake.put_object({"apiVersion": "v1", "kind": "Pod", **pod,
                             "metadata": {**pod["metadata"], "namespace": NS}})
        sim = SimServing(api, NS, servers, load_s=load_s, stalled=stalled or set(),
                         controller=Controller(api, namespace=NS, cooldown_seconds=0.0))
        sim.start(0.05)
        stack.callback(sim.stop)
        built = build(api, NS, config or ProxyConfig(), fit_check=fit_check, fit=fit,
                      activity_interval_s=activity_interval_s)
        px = ProxyServer(built.proxy, flush_tick_s=0.05, cleanup=built.informers, grace_s=2.0).start()
        stack.callback(px.stop)
        wait_for(lambda: built.proxy.catalog.synced, what="proxy caches")
        lb = Lab(fake, api, sim, px, servers)
        stack.callback(lb.client.close)
        yield lb


def homelab_fit() -> Any:
    """The fit check over the homelab fleet's Nodes (what --fit-check extender gives in a cluster)."""
    from flexinfer.proxy.fit import NodeStore, PlacementFit

    return PlacementFit(NodeStore().replace(fleet_node_objects(load_fleet(default_fleet_path()))))
