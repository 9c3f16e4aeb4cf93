"""The embedded cluster the demo runs: a local fake API server, one agent per fleet node with fake GPU
readers, the real extender over HTTP (and gRPC) on loopback, the controller, and a scheduling loop
that talks to the extender exactly as kube-scheduler does (filter with NodeNames, prioritize when
two or more nodes pass, bind through pods/binding).

The simulated kubelet/ReplicaSet side is deliberately small: a Deployment with replicas >= 1 gets one
pod; a bound pod "loads" its model by adding its VRAM estimate to the fleet GPU(s) the extender chose
(the agents' fake readers see that on their next sample), then reports Ready; a Deployment scaled
to 0 loses its pod and the VRAM is given back.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import msgspec

from flexinfer import keys, kube, logs
from flexinfer.api.v1 import scheduler_extender_pb2 as pb
from flexinfer.api.v1 import scheduler_extender_pb2_grpc as pb_grpc
from flexinfer.fleet import Fleet
from flexinfer.nodes import fleet_node_objects
from flexinfer.sim.fakeapi import FakeApiServer
from flexinfer.sim.intree import intree_reject
from flexinfer.state import rfc3339

log = logs.get("flexinfer.demo")

JSON = dict[str, Any]


@dataclass
class Attempt:
    """One scheduling attempt of one pod, as a person wants to read it."""

    model: str
    pod: str
    backend: str
    need_mib: int | None
    node: str | None = None
    gpus: str = ""
    free_before_mib: int | None = None
    free_after_mib: int | None = None
    score: int | None = None
    rejections: dict[str, str] = field(default_factory=dict)  # node -> why (with numbers)
    message: str = ""


class SimClock:
    """The controller's clock in the demo: real time plus simulated minutes (idle timeouts are 10 m)."""

    def __init__(self) -> None:
        self.offset_seconds = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset_seconds

    def advance(self, seconds: float) -> None:
        self.offset_seconds += seconds


class DemoCluster:
    def __init__(self, fleet: Fleet, namespace: str = "flexinfer-demo",
                 progress: Callable[[str], None] | None = None) -> None:
        self.fleet = fleet
        self.namespace = namespace
        self.progress = progress or (lambda _msg: None)
        self.fake: FakeApiServer | None = None
        self.api: Any = None
        self.agents: dict[str, Any] = {}
        self.running: Any = None
        self.http: Any = None
        self.grpc_server: Any = None
        self.channel: grpc.Channel | None = None
        self.stub: pb_grpc.SchedulerExtenderStub | None = None
        self.client: httpx.Client | None = None
        self.controller: Any = None
        self.loaded: dict[str, list[tuple[str, int, int]]] = {}  # pod -> [(node, gpu index, MiB)]
        self.attempts: list[Attempt] = []
        self.clock = SimClock()

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> DemoCluster:
        from flexinfer.agent.agent import Agent
        from flexinfer.agent.publish import Publisher
        from flexinfer.agent.readers.fake import fleet_reader
        from flexinfer.controller.reconcile import Controller
        from flexinfer.extender.grpc_server import serve_grpc
        from flexinfer.extender.http import serve_in_thread, uvicorn_config
        from flexinfer.extender.main import build

        self.progress("starting the local fake Kubernetes API server")
        self.fake = FakeApiServer().start()
        self.api = kube.api_client(server=self.fake.url)
        self.progress(f"registering {len(self.fleet.nodes)} nodes (kubelet view: GPU capacity, taints)")
        for obj in fleet_node_objects(self.fleet, published=False):
            self.fake.put_object({"apiVersion": "v1", "kind": "Node", **obj})
        self.fake.put_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace}})
        self.progress("starting one flexinfer-agent per node (fake NVML/amdsmi readers from the fleet file)")
        for node in self.fleet.nodes:
            agent = Agent(node.name, fleet_reader(node), Publisher(self.api, node.name))
            agent.step()
            self.agents[node.name] = agent
        self.progress("starting flexinfer-extender (HTTP + gRPC on 127.0.0.1, watching Nodes and Pods)")
        self.running = build(kube_server=self.fake.url)  # the one freshness contract (flexinfer.freshness)
        for inf in self.running.informers:
            inf.wait_synced(10)
        self.http = serve_in_thread(uvicorn_config(self.running.app, "127.0.0.1", 0))
        self.grpc_server = serve_grpc(self.running.extender, "127.0.0.1", 0)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_server.port}")
        self.stub = pb_grpc.SchedulerExtenderStub(self.channel)
        self.client = httpx.Client(base_url=self.http.url, timeout=5.0)
        self.wait_for_extender_cache()
        self.progress("starting flexinfer-controller")
        # group timing on the simulated clock; the agents' data (and so its freshness) is on the wall clock
        self.controller = Controller(self.api, namespace=self.namespace, cooldown_seconds=60.0, clock=self.clock,
                                     policy_clock=time.time)
        return self

    def stop(self) -> None:
        for closer in (
            lambda: self.client and self.client.close(),
            lambda: self.channel and self.channel.close(),
            lambda: self.grpc_server and self.grpc_server.stop(0),
            lambda: self.http and self.http.stop(),
            lambda: self.running and self.running.stop(),
            lambda: self.fake and self.fake.stop(),
        ):
            try:
                closer()
            except Exception as e:  # shutting down: report, keep closing the rest
                log.warning("demo_stop_error", error=repr(e))

    def __enter__(self) -> DemoCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- agents and the extender's view ----------------------------------------------------------
    def sample_all(self) -> None:
        for agent in self.agents.values():
            agent.step()

    def wait_for_extender_cache(self, timeout_s: float = 10.0) -> None:
        """Block until the extender's Node cache shows every agent's last published observation."""
        deadline = time.monotonic() + timeout_s
        cache = self.running.extender.cache
        while time.monotonic() < deadline:
            behind = []
            for name, agent in self.agents.items():
                published = agent.publisher.last_published if agent.publisher else None
                view = cache.get(name)
                if published is not None and (view is None or view.state is None
                                              or view.state.observed_unix < published.observed_unix - 1e-3):
                    behind.append(name)
            if not behind:
                return
            time.sleep(0.02)
        log.warning("extender_cache_behind", nodes=behind)

    def best_free_mib(self, node: str) -> int | None:
        view = self.running.extender.cache.get(node)
        if view is None or view.state is None or not view.state.gpus:
            return None
        return max((g.free_mib for g in view.state.gpus if g.healthy), default=None)

    # -- models ------------------------------------------------------------------------------------
    def apply_models(self, docs: list[JSON]) -> None:
        for d in docs:
            obj = {**d, "metadata": {**d.get("metadata", {}), "namespace": self.namespace}}
            kube.apply_object(self.api, obj)

    def activate(self, name: str) -> None:
        from flexinfer.controller.activation import activate

        activate(self.api, self.namespace, name, now=self.clock())

    def reconcile(self) -> Any:
        return self.controller.reconcile_once()

    def model_status(self) -> dict[str, JSON]:
        return {m["metadata"]["name"]: m.get("status") or {}
                for m in kube.list_objects(self.api, keys.MODEL_PLURAL, self.namespace)}

    # -- the ReplicaSet + kubelet side -------------------------------------------------------------
    def sync_pods(self) -> bool:
        """One pod per Deployment with replicas >= 1; pods of Deployments at 0 are deleted; Jobs (the
        controller's cache prefetch and check) run to completion at once. True when a Job completed."""
        deps = kube.list_objects(self.api, "deployments", self.namespace)
        pods = kube.list_objects(self.api, "pods", self.namespace)
        by_owner: dict[str, list[JSON]] = {}
        for p in pods:
            by_owner.setdefault((p["metadata"].get("labels") or {}).get("demo.flexinfer.ai/deployment", ""),
                                []).append(p)
        for d in deps:
            name = d["metadata"]["name"]
            want = int((d.get("spec") or {}).get("replicas") or 0)
            have = by_owner.get(name, [])
            if want >= 1 and not have:
                self._create_pod(d)
            elif want == 0 and have:
                for p in have:
                    self._delete_pod(p)
                kube.merge_patch(self.api, "deployments", name,
                                 {"status": {"replicas": 0, "readyReplicas": 0, "availableReplicas": 0}},
                                 self.namespace, subresource="status")
        completed = False
        for job in kube.list_objects(self.api, "jobs", self.namespace):
            if not (job.get("status") or {}).get("conditions"):
                now = rfc3339(self.clock())
                kube.merge_patch(self.api, "jobs", job["metadata"]["name"], {"status": {
                    "succeeded": 1, "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": now}]}},
                    self.namespace, subresource="status")
                completed = True
        return completed

    def _create_pod(self, dep: JSON) -> None:
        tmpl = (dep.get("spec") or {}).get("template") or {}
        meta = dict(tmpl.get("metadata") or {})
        dname = dep["metadata"]["name"]
        suffix = hashlib.sha256(f"{dname}{time.time_ns()}".encode()).hexdigest()[:5]
        labels = {**(meta.get("labels") or {}), "demo.flexinfer.ai/deployment": dname}
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{dname}-{suffix}", "namespace": self.namespace, "labels": labels,
                         "annotations": dict(meta.get("annotations") or {})},
            "spec": msgspec.json.decode(msgspec.json.encode(tmpl.get("spec") or {})),
            "status": {"phase": "Pending"},
        }
        kube.create_object(self.api, pod)

    def _delete_pod(self, pod: JSON) -> None:
        name = pod["metadata"]["name"]
        for node, idx, mib in self.loaded.pop(name, []):
            gpu = self.fleet.node(node).gpus[idx]
            gpu.used_mi_b = max(0, gpu.used_mi_b - mib)
        kube.delete_object(self.api, "pods", name, self.namespace)

    def run_kubelets(self) -> None:
        """Bound pods load their model (VRAM on the chosen GPUs) and become Ready."""
        for p in kube.list_objects(self.api, "pods", self.namespace):
            name = p["metadata"]["name"]
            node = (p.get("spec") or {}).get("nodeName")
            if not node or name in self.loaded:
                continue
            ann = p["metadata"].get("annotations") or {}
            need = int(ann.get(keys.POD_VRAM_ESTIMATE_MB, "0") or 0)
            gpus = [int(i) for i in ann.get("demo.flexinfer.ai/gpus", "").split(",") if i.isascii() and i.isdigit()]
            placed = []
            for idx in gpus:
                gpu = self.fleet.node(node).gpus[idx]
                add = min(need, gpu.total_mi_b - gpu.used_mi_b)
                gpu.used_mi_b += add
                placed.append((node, idx, add))
            self.loaded[name] = placed
            now = rfc3339(self.clock())
            kube.merge_patch(self.api, "pods", name, {"status": {
                "phase": "Running", "startTime": now,
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}]}},
                self.namespace, subresource="status")
            dep = (p["metadata"].get("labels") or {}).get("demo.flexinfer.ai/deployment")
            if dep:
                kube.merge_patch(self.api, "deployments", dep, {"status": {
                    "replicas": 1, "readyReplicas": 1, "availableReplicas": 1, "updatedReplicas": 1,
                    "observedGeneration": 1,
                    "conditions": [{"type": "Available", "status": "True", "lastTransitionTime": now}]}},
                    self.namespace, subresource="status")

    # -- the scheduler ---------------------------------------------------------------------------
    def pending_pods(self) -> list[JSON]:
        return [p for p in kube.list_objects(self.api, "pods", self.namespace)
                if not (p.get("spec") or {}).get("nodeName")]

    def schedule(self, pod: JSON) -> Attempt:
        """kube-scheduler's cycle for one pod: in-tree filters, extender filter, prioritize, bind."""
        assert self.client is not None and self.stub is not None
        meta = pod["metadata"]
        ann = meta.get("annotations") or {}
        need = ann.get(keys.POD_VRAM_ESTIMATE_MB)
        attempt = Attempt(model=ann.get(keys.POD_MODEL, meta["name"]), pod=meta["name"],
                          backend=ann.get(keys.POD_BACKEND, "-"),
                          need_mib=int(need) if need and need.isascii() and need.isdigit() else None)
        nodes = kube.list_objects(self.api, "nodes")
        all_pods = kube.list_objects(self.api, "pods")
        feasible: list[str] = []
        for n in nodes:
            name = n["metadata"]["name"]
            bound = [p for p in all_pods if (p.get("spec") or {}).get("nodeName") == name]
            why = intree_reject(pod, n, bound)
            if why:
                attempt.rejections[name] = f"kube-scheduler: {why}"
            else:
                feasible.append(name)
        # Explain (gRPC) gives the per-node numbers behind each extender verdict.
        explain = self.stub.Explain(pb.ExplainRequest(
            pod=pb.PodSource(pod_json=msgspec.json.encode(pod)), node_names=feasible), timeout=5)
        details = {v.node: v for v in explain.verdicts}
        passed: list[str] = []
        if feasible:
            body = {"Pod": pod, "Nodes": None, "NodeNames": feasible}
            r = self.client.post("/filter", content=msgspec.json.encode(body),
                                 headers={"Content-Type": "application/json"})
            r.raise_for_status()
            res = r.json()
            if res.get("Error"):
                attempt.message = f"extender error: {res['Error']}"
            passed = list(res.get("NodeNames") or [])
            for name, reason in {**(res.get("FailedNodes") or {}),
                                 **(res.get("FailedAndUnresolvableNodes") or {})}.items():
                v = details.get(name)
                attempt.rejections[name] = (v.detail or v.reason) if v and (v.detail or v.reason) else reason
        if not passed:
            attempt.message = attempt.message or f"0/{len(nodes)} nodes are available"
            return attempt
        scores = {name: 0 for name in passed}
        if len(passed) >= 2:
            body = {"Pod": pod, "Nodes": None, "NodeNames": passed}
            r = self.client.post("/prioritize", content=msgspec.json.encode(body),
                                 headers={"Content-Type": "application/json"})
            if r.status_code == 200:  # prioritize errors are ignored, as kube-scheduler does
                scores.update({h["Host"]: int(h["Score"]) for h in r.json()})
        best = sorted(passed, key=lambda n: (-scores[n], n))[0]
        def policy_score(name: str) -> int:  # the policy's own score (Explain), before the extender's tie-break
            v = details.get(name)
            return v.score if v is not None else scores[name]

        for other in passed:
            if other == best:
                continue
            if scores[other] == scores[best]:
                attempt.rejections[other] = f"feasible; same score {scores[best]}, tie broken by name"
            elif policy_score(other) == policy_score(best):
                # the extender made the node it reserved the pod's memory on the only best one (policy.lead)
                attempt.rejections[other] = (f"feasible; same score {policy_score(best)}, tie broken toward "
                                             f"{best} (the pod's GPU memory is reserved there)")
            else:
                attempt.rejections[other] = f"feasible, lower score {scores[other]} vs {scores[best]}"
        chosen = details.get(best)
        attempt.node = best
        # prioritize runs only with >= 2 nodes; the policy's score (kube-scheduler may have been told one more)
        attempt.score = policy_score(best) if len(passed) >= 2 else None
        attempt.gpus = chosen.gpu if chosen else ""
        attempt.free_before_mib = self.best_free_mib(best)
        if attempt.gpus:
            kube.merge_patch(self.api, "pods", meta["name"],
                             {"metadata": {"annotations": {"demo.flexinfer.ai/gpus": attempt.gpus}}}, self.namespace)
        kube.bind_pod(self.api, self.namespace, meta["name"], best)
        return attempt

    def settle(self) -> list[Attempt]:
        """Reconcile, create/delete pods, schedule what is pending, load models, publish; repeat
        until nothing changes (bounded)."""
        done: list[Attempt] = []
        for _ in range(6):
            self.reconcile()
            jobs_done = self.sync_pods()
            self.sample_all()
            self.wait_for_extender_cache()
            pending = self.pending_pods()
            new = []
            for pod in pending:
                if any(a.pod == pod["metadata"]["name"] for a in done):
                    continue
                attempt = self.schedule(pod)
                new.append(attempt)
                if attempt.node:
                    self.run_kubelets()
                    self.sample_all()
                    self.wait_for_extender_cache()
                    attempt.free_after_mib = self.best_free_mib(attempt.node)
            done.extend(new)
            if not new and not pending and not jobs_done:
                self.reconcile()
                break
        self.attempts.extend(done)
        return done
