"""The serving side of a namespace on the fake API server: what kubelets and Kubernetes' EndpointSlice
controller do for the Models' Deployments, so the proxy can be tested against real objects.

``SimServing(api, namespace, servers)``: each ``step()`` (optionally after one controller pass):

- a Deployment asking for >= 1 replica gets one pod (the template's labels and annotations, bound to
  ``node``) that goes through the loading substages as its kubelet reports them: container creating
  (``pull_s``), running but not started (weights loading, ``load_s``), then started and ready;
- a ready pod's Deployment reports ``readyReplicas: 1`` and the Model's Service gets an EndpointSlice
  (``kubernetes.io/service-name``, ``endpointslice.kubernetes.io/managed-by:
  endpointslice-controller.k8s.io``, the Service's labels) whose endpoint is the Model's fake model
  server (``servers[model]``, a :class:`~flexinfer.sim.modelserver.FakeModelServer` on loopback);
- a Model in ``stalled`` never gets past loading its weights (its startup probe never passes);
- a Deployment scaled to 0 loses its pod and its EndpointSlice.

``start(interval_s)`` runs the steps on a thread until ``stop()``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flexinfer import keys, kube, logs
from flexinfer.state import rfc3339

log = logs.get("flexinfer.sim.serving")

JSON = dict[str, Any]
SIM_LABEL = "sim.flexinfer.ai/deployment"


@dataclass
class _Pod:
    name: str
    created: float
    stage: str = "creating"  # creating -> loading -> ready


@dataclass
class SimServing:
    api: Any
    namespace: str
    servers: dict[str, Any] = field(default_factory=dict)  # Model -> FakeModelServer
    pull_s: float = 0.05
    load_s: float | dict[str, float] = 0.3
    stalled: set[str] = field(default_factory=set)
    node: str = "sim-node"
    controller: Any = None  # flexinfer.controller.reconcile.Controller: one pass before each step
    clock: Callable[[], float] = time.time
    pods: dict[str, _Pod] = field(default_factory=dict)  # Deployment -> its pod
    errors: list[str] = field(default_factory=list)
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def load_seconds(self, model: str) -> float:
        return self.load_s.get(model, 0.3) if isinstance(self.load_s, dict) else self.load_s

    # -- one step ---------------------------------------------------------------------------------------
    def step(self) -> None:
        if self.controller is not None:
            self.controller.reconcile_once()
        deps = kube.list_objects(self.api, "deployments", self.namespace)
        for d in deps:
            name = d["metadata"]["name"]
            want = int((d.get("spec") or {}).get("replicas") or 0)
            pod = self.pods.get(name)
            if want >= 1 and pod is None:
                self._create_pod(d)
            elif want >= 1 and pod is not None:
                self._advance(d, pod)
            elif want == 0 and pod is not None:
                self._remove(name, pod)
        names = {d["metadata"]["name"] for d in deps}
        for gone in [n for n in self.pods if n not in names]:
            self._remove(gone, self.pods[gone], deployment_exists=False)

    def _create_pod(self, dep: JSON) -> None:
        name = dep["metadata"]["name"]
        tmpl = (dep.get("spec") or {}).get("template") or {}
        meta = tmpl.get("metadata") or {}
        now = self.clock()
        pod_name = f"{name}-{int(now * 1000) % 100000:05d}"
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": pod_name, "namespace": self.namespace,
                            "labels": {**(meta.get("labels") or {}), SIM_LABEL: name},
                            "annotations": dict(meta.get("annotations") or {})},
               "spec": {**(tmpl.get("spec") or {}), "nodeName": self.node}}
        kube.create_object(self.api, pod)
        self._pod_status(pod_name, now, "creating")
        self._dep_status(name, ready=0)
        self.pods[name] = _Pod(pod_name, now)

    def _advance(self, dep: JSON, pod: _Pod) -> None:
        name = dep["metadata"]["name"]
        now = self.clock()
        if pod.stage == "creating" and now - pod.created >= self.pull_s:
            pod.stage = "loading"
            pod.created = now
            self._pod_status(pod.name, now, "loading")
        elif (pod.stage == "loading" and name not in self.stalled
              and now - pod.created >= self.load_seconds(name)):
            pod.stage = "ready"
            self._pod_status(pod.name, now, "ready")
            self._dep_status(name, ready=1)
            self._publish_slice(name)

    def _remove(self, name: str, pod: _Pod, deployment_exists: bool = True) -> None:
        for kind, obj in (("pods", pod.name), ("endpointslices", f"{name}-sim")):
            try:
                kube.delete_object(self.api, kind, obj, self.namespace)
            except kube.KubeError as e:
                self.errors.append(str(e))
        if deployment_exists:
            self._dep_status(name, ready=0, replicas=0)
        self.pods.pop(name, None)

    # -- status writes --------------------------------------------------------------------------------
    def _pod_status(self, pod: str, now: float, stage: str) -> None:
        t = rfc3339(now)
        conds = [{"type": "PodScheduled", "status": "True", "lastTransitionTime": t}]
        if stage == "creating":
            cs = {"name": "server", "ready": False, "started": False, "restartCount": 0,
                  "state": {"waiting": {"reason": "ContainerCreating"}}}
            phase = "Pending"
        else:
            ready = stage == "ready"
            cs = {"name": "server", "ready": ready, "started": ready, "restartCount": 0,
                  "state": {"running": {"startedAt": t}}}
            phase = "Running"
            conds += [{"type": "Initialized", "status": "True", "lastTransitionTime": t},
                      {"type": "ContainersReady", "status": "True" if ready else "False", "lastTransitionTime": t},
                      {"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": t}]
        kube.merge_patch(self.api, "pods", pod, {"status": {"phase": phase, "conditions": conds,
                                                             "containerStatuses": [cs]}},
                         self.namespace, subresource="status")

    def _dep_status(self, name: str, ready: int, replicas: int = 1) -> None:
        kube.merge_patch(self.api, "deployments", name, {"status": {
            "replicas": replicas, "readyReplicas": ready, "availableReplicas": ready, "updatedReplicas": replicas,
            "observedGeneration": 1}}, self.namespace, subresource="status")

    def _publish_slice(self, model: str) -> None:
        server = self.servers.get(model)
        if server is None:
            self.errors.append(f"no fake model server for {model}: no endpoint published")
            return
        publish_endpoint(self.api, self.namespace, model, server, self.node)

    # -- thread ---------------------------------------------------------------------------------------
    def start(self, interval_s: float = 0.05) -> SimServing:
        def run() -> None:
            while not self._stop.is_set():
                try:
                    self.step()
                except Exception as e:  # keep simulating; tests read .errors
                    self.errors.append(repr(e))
                    log.warning("sim step failed", error=repr(e))
                self._stop.wait(interval_s)

        self._stop.clear()
        self._thread = threading.Thread(target=run, name="sim-serving", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None


def publish_endpoint(api: Any, namespace: str, model: str, server: Any, node: str = "") -> None:
    """What the EndpointSlice controller writes for a Model's Service once its pod is ready, with the fake
    model server's loopback address as the pod's."""
    svc = kube.get_object(api, "services", model, namespace) or {}
    labels = {**((svc.get("metadata") or {}).get("labels") or {}), keys.LABEL_MODEL: model,
              "kubernetes.io/service-name": model,
              "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}
    endpoint: JSON = {"addresses": [server.host], "conditions": {"ready": True, "serving": True}}
    if node:
        endpoint["nodeName"] = node
    kube.apply_object(api, {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{model}-sim", "namespace": namespace, "labels": labels},
        "addressType": "IPv4", "endpoints": [endpoint],
        "ports": [{"name": "http", "port": server.port, "protocol": "TCP"}]})


def publish_ready_endpoints(api: Any, namespace: str, servers: dict[str, Any]) -> list[str]:
    """For every ready pod of a Model in `servers`: its EndpointSlice (idempotent). Returns those Models."""
    done = []
    for pod in kube.list_objects(api, "pods", namespace, label_selector=keys.LABEL_MODEL):
        model = ((pod.get("metadata") or {}).get("labels") or {}).get(keys.LABEL_MODEL)
        ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                    for c in (pod.get("status") or {}).get("conditions") or [])
        if ready and model in servers:
            publish_endpoint(api, namespace, model, servers[model], (pod.get("spec") or {}).get("nodeName") or "")
            done.append(model)
    return done
