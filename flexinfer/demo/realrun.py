"""`flexinfer demo --control-plane real`: the demo's story on a real control plane.

Everything the embedded demo simulates in-process runs here as the real thing (flexinfer.sim.controlplane):
etcd, kube-apiserver, kube-controller-manager (Deployment -> ReplicaSet -> Pod, PV binding), kube-scheduler
with the shipped configuration calling the extender, kwok running the pods on the fleet's Nodes, one
`flexinfer-agent --fake-gpus` process per node and `flexinfer-controller`, each as its own ServiceAccount.
Placements are kube-scheduler's bindings; a Pending model's reason is kube-scheduler's own message; the
per-node verdicts come from the running extender's /explain, asked just before the model is activated.

Differences from the embedded demo, said in the output: models are activated one at a time (so each
placement can be explained against the state it met), the controller's group cooldown is 0 s, and "N
minutes later" is not simulated by a clock: the request that made the challenger run is back-dated past its
idle timeout (the `flexinfer.ai/activate` time), which is what the controller reads as "no traffic since".
A static provisioner creates a PersistentVolume for each cache claim (a storage class would in a cluster).
Needs the pinned Kubernetes binaries (`bash hack/k8s/build.sh`, about 7 minutes once).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from flexinfer import keys, kube, logs
from flexinfer.controller.activation import activate
from flexinfer.demo.run import (
    EXAMPLES,
    GroupStory,
    group_story,
    load_example_docs,
    placement_table,
    print_reasons,
    print_story,
    reclaim_heading,
    status_table,
    swap_heading,
)
from flexinfer.fleet import Fleet
from flexinfer.sim.cluster import Attempt
from flexinfer.sim.controlplane import ControlPlane, ControlPlaneError
from flexinfer.sim.realcluster import RealCluster

log = logs.get("flexinfer.demo.real")

JSON = dict[str, Any]
NAMESPACE = "flexinfer-demo"
SETTLE_TIMEOUT_S = 60.0


class StaticProvisioner:
    """A PersistentVolume for every Pending claim in the namespace, and the claims the models' pods name but
    nobody created (an administrator's pre-made cache volume), so kube-controller-manager binds them and
    kube-scheduler's volume checks pass. Runs on a thread until stopped."""

    def __init__(self, api: Any, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-provisioner", daemon=True)
        self.created: list[str] = []

    def start(self) -> StaticProvisioner:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.step()
            except kube.KubeError as e:  # the API server restarting, a race with the controller: next round
                log.debug("provisioner_retry", error=str(e))

    def step(self) -> None:
        ns = self.namespace
        claims = {p["metadata"]["name"]: p for p in kube.list_objects(self.api, "persistentvolumeclaims", ns)}
        for dep in kube.list_objects(self.api, "deployments", ns):
            for vol in ((dep.get("spec") or {}).get("template") or {}).get("spec", {}).get("volumes") or []:
                name = (vol.get("persistentVolumeClaim") or {}).get("claimName")
                if name and name not in claims:
                    claims[name] = kube.create_object(self.api, {
                        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                        "metadata": {"name": name, "namespace": ns},
                        "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "",
                                 "resources": {"requests": {"storage": "500Gi"}}}})
                    self.created.append(f"pvc/{name}")
        for name, pvc in claims.items():
            if (pvc.get("status") or {}).get("phase") == "Bound" or (pvc.get("spec") or {}).get("volumeName"):
                continue
            pv = f"demo-{ns}-{name}"[:63]
            spec = pvc.get("spec") or {}
            try:
                kube.request(self.api, "POST", "/api/v1/persistentvolumes", body={
                    "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
                    "spec": {"capacity": {"storage": ((spec.get("resources") or {}).get("requests") or {})
                                          .get("storage", "100Gi")},
                             "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                             "storageClassName": spec.get("storageClassName") or "",
                             "persistentVolumeReclaimPolicy": "Retain",
                             "hostPath": {"path": f"/var/lib/flexinfer-demo/{name}"},
                             "claimRef": {"namespace": ns, "name": name}}})
                self.created.append(f"pv/{pv}")
            except kube.KubeError as e:
                if e.status != 409:
                    raise


def model_pod(api: Any, ns: str, name: str) -> JSON | None:
    """The model's newest live pod (by creation), or None."""
    pods = [p for p in kube.list_objects(api, "pods", ns, label_selector=f"{keys.LABEL_MODEL}={name}")
            if not (p.get("metadata") or {}).get("deletionTimestamp")]
    return max(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "", default=None)


def scheduled_condition(pod: JSON) -> JSON:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "PodScheduled":
            return c
    return {}


def model_template_pod(api: Any, ns: str, doc: JSON) -> JSON:
    """The pod kube-scheduler will see for a Model: its Deployment's template (the controller's rendering)."""
    name = doc["metadata"]["name"]
    dep = kube.get_object(api, "deployments", name, ns)
    if dep is None:
        from flexinfer.cli.explain import pod_from_model_doc

        return pod_from_model_doc({**doc, "metadata": {**doc["metadata"], "namespace": ns}})
    tmpl = (dep.get("spec") or {}).get("template") or {}
    return {"metadata": {"name": f"{name}-next", "namespace": ns, **(tmpl.get("metadata") or {})},
            "spec": tmpl.get("spec") or {}}


class RealDemo:
    def __init__(self, cluster: RealCluster, namespace: str = NAMESPACE) -> None:
        self.cluster = cluster
        self.api = cluster.api
        self.ns = namespace
        self.verdicts: dict[str, dict[str, JSON]] = {}  # model -> the extender's verdicts just before its request

    def model_status(self) -> dict[str, JSON]:
        return {m["metadata"]["name"]: m.get("status") or {}
                for m in kube.list_objects(self.api, keys.MODEL_PLURAL, self.ns)}

    def free_mib(self, node: str, gpus: list[int]) -> int | None:
        pub = self.cluster.published(node)
        if not pub or not pub["free_mib"]:
            return None
        idx = gpus[0] if gpus and gpus[0] < len(pub["free_mib"]) else 0
        return int(pub["free_mib"][idx])

    def explain(self, pod: JSON) -> dict[str, JSON]:
        names = [n.name for n in self.cluster.fleet.nodes]
        return {v["Node"]: v for v in self.cluster.extender_explain(pod, names)["Verdicts"]}

    def wait_outcome(self, name: str, since_pods: set[str], timeout_s: float = SETTLE_TIMEOUT_S) -> JSON | None:
        """A new pod of the model bound (and its memory published) or judged unschedulable, or None."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pod = model_pod(self.api, self.ns, name)
            if pod is not None and pod["metadata"]["name"] not in since_pods:
                if (pod.get("spec") or {}).get("nodeName"):
                    self.cluster.wait_settled(timeout_s=max(5.0, deadline - time.monotonic()))
                    return pod
                if scheduled_condition(pod).get("reason") in ("Unschedulable", "SchedulerError"):
                    return pod
            time.sleep(0.2)
        return model_pod(self.api, self.ns, name)

    def attempt(self, doc: JSON, verdicts: dict[str, JSON], pod: JSON | None) -> Attempt:
        meta = doc["metadata"]
        spec = doc.get("spec") or {}
        need = ((spec.get("gpu") or {}).get("vramEstimateMB"))
        if pod is not None:
            ann = (pod.get("metadata") or {}).get("annotations") or {}
            raw = ann.get(keys.POD_VRAM_ESTIMATE_MB)
            need = int(raw) if raw and str(raw).isdigit() else need
        a = Attempt(model=meta["name"], pod=(pod or {}).get("metadata", {}).get("name", "-"),
                    backend=str(spec.get("backend", "-")), need_mib=need)
        node = ((pod or {}).get("spec") or {}).get("nodeName")
        feasible = {n: v for n, v in verdicts.items() if v.get("Feasible")}
        for n, v in sorted(verdicts.items()):
            if n == node:
                continue
            if v.get("Feasible"):
                a.rejections[n] = f"feasible for the extender (score {v.get('Score')}); kube-scheduler chose {node}" \
                    if node else f"feasible for the extender (score {v.get('Score')})"
            else:
                a.rejections[n] = f"extender: {v.get('Detail') or v.get('Reason')}"
        if pod is None:
            a.message = "no pod was created (see the Model's status)"
            return a
        if not node:
            a.message = scheduled_condition(pod).get("message") or "not scheduled"
            return a
        chosen = verdicts.get(node) or {}
        a.node = node
        a.gpus = ",".join(str(g) for g in chosen.get("Gpus") or [])
        a.score = int(chosen["Score"]) if len(feasible) >= 2 and chosen.get("Score") is not None else None
        return a

    def run_model(self, doc: JSON, how: str = "activate") -> Attempt:
        """Explain against the current state, then `activate` the Model (or `apply` a new always-on one),
        wait for kube-scheduler's verdict on its pod and report it."""
        name = doc["metadata"]["name"]
        before = {p["metadata"]["name"] for p in kube.list_objects(
            self.api, "pods", self.ns, label_selector=f"{keys.LABEL_MODEL}={name}")}
        self.cluster.wait_settled()  # explain against the state kube-scheduler will meet (watches caught up)
        verdicts = self.explain(model_template_pod(self.api, self.ns, doc))
        self.verdicts[name] = verdicts
        if how == "apply":
            kube.apply_object(self.api, {**doc, "metadata": {**doc["metadata"], "namespace": self.ns}})
        else:
            activate(self.api, self.ns, name)
        pod = self.wait_outcome(name, before)
        a = self.attempt(doc, verdicts, pod)
        if a.node:
            gpus = [int(g) for g in a.gpus.split(",") if g.isdigit()]
            fb = (verdicts.get(a.node) or {}).get("Detail") or ""
            a.free_before_mib = _free_in_detail(fb)
            a.free_after_mib = self.free_mib(a.node, gpus)
        return a

    def fresh_attempts(self, docs: dict[str, JSON], before: dict[str, str]) -> list[Attempt]:
        """Pods that appeared since `before` (model -> pod name), as attempts (no explain: the controller
        started them itself)."""
        out = []
        for name, doc in docs.items():
            pod = model_pod(self.api, self.ns, name)
            if pod is not None and pod["metadata"]["name"] != before.get(name):
                if (pod.get("spec") or {}).get("nodeName"):
                    self.cluster.wait_settled()
                out.append(self.attempt(doc, {}, pod))
                a = out[-1]
                if a.node:
                    a.free_after_mib = self.free_mib(a.node, [])
        return out

    def current_pods(self, names: list[str]) -> dict[str, str]:
        out = {}
        for n in names:
            p = model_pod(self.api, self.ns, n)
            if p is not None:
                out[n] = p["metadata"]["name"]
        return out

    def wait_deployments(self, names: list[str], timeout_s: float = SETTLE_TIMEOUT_S) -> None:
        """Until the controller rendered every Model's Deployment and gave every Model a phase (and one
        more resync, so GPU vendor `auto` is resolved from the Nodes the agents labelled)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            deps = {d["metadata"]["name"] for d in kube.list_objects(self.api, "deployments", self.ns)}
            st = self.model_status()
            if all(n in deps and st.get(n, {}).get("phase") for n in names):
                break
            time.sleep(0.3)
        time.sleep(2.5)

    def outcome_of(self, doc: JSON) -> Attempt:
        """An always-on model the controller started by itself: kube-scheduler's verdict on its pod."""
        pod = self.wait_outcome(doc["metadata"]["name"], set())
        a = self.attempt(doc, {}, pod)
        if a.node:
            a.free_after_mib = self.free_mib(a.node, [])
        return a

    def wait_phases(self, want: dict[str, tuple[str, ...]], timeout_s: float = SETTLE_TIMEOUT_S) -> bool:
        """Until every named Model is in one of its phases; False (and a warning naming the laggards) when the
        time runs out: the tables that follow then show the phases as they are."""
        deadline = time.monotonic() + timeout_s
        while True:
            st = self.model_status()
            late = {n: st.get(n, {}).get("phase") for n, phases in want.items()
                    if st.get(n, {}).get("phase") not in phases}
            if not late:
                return True
            if time.monotonic() >= deadline:
                log.warning("demo_phase_wait_timed_out", timeout_seconds=timeout_s, phases=late,
                            wanted={n: list(want[n]) for n in late})
                return False
            time.sleep(0.3)


def _min_replicas(doc: JSON) -> int:
    try:
        return int(((doc.get("spec") or {}).get("serverless") or {}).get("minReplicas") or 0)
    except (TypeError, ValueError):
        return 0


def _group(doc: JSON) -> str:
    return str(((doc.get("spec") or {}).get("gpu") or {}).get("shared") or "")


def _free_in_detail(detail: str) -> int | None:
    import re

    m = re.search(r"(\d+) MiB free", detail)
    return int(m.group(1)) if m else None


@dataclass
class StoryResult:
    placements: list[Attempt]  # always-on models as applied, then one request per on-demand model
    phase1_status: dict[str, JSON]
    acts: list[tuple[str, list[Attempt], dict[str, JSON]]] = field(default_factory=list)
    story: GroupStory | None = None
    verdicts: dict[str, dict[str, JSON]] = field(default_factory=dict)  # model -> node -> extender verdict


def play_story(cluster: RealCluster, docs: list[JSON], namespace: str = NAMESPACE,
               progress: Callable[[str], None] = lambda _m: None, examples: Path = EXAMPLES) -> StoryResult:
    """The demo's story on a running RealCluster with kube-scheduler (namespace created here): a controller
    for `namespace` as its ServiceAccount, the Models applied and requested one at a time, then the shared
    group's preemption and reclaim. The controller and the provisioner are stopped before returning."""
    cp = cluster.cp
    story = group_story(docs)
    by_name = {d["metadata"]["name"]: d for d in docs}
    cp.create_namespace(namespace)
    provisioner = StaticProvisioner(cluster.api, namespace).start()
    controller = cluster.start_controller(f"flexinfer-controller-{namespace}", "--namespace", namespace,
                                          "--resync-seconds", "2", "--cooldown-seconds", "0", "--metrics-port", "0")
    try:
        demo = RealDemo(cluster, namespace)
        always_on = [n for n, d in by_name.items() if _min_replicas(d) >= 1]
        started = []
        for n in always_on:
            progress(f"applying {n} (always on: minReplicas 1): the controller starts it at once")
            started.append(demo.run_model(by_name[n], how="apply"))
        progress(f"applying the other {len(docs) - len(always_on)} example Models from {examples}")
        for d in docs:
            if d["metadata"]["name"] not in always_on:
                kube.apply_object(cluster.api, {**d, "metadata": {**d["metadata"], "namespace": namespace}})
        demo.wait_deployments(list(by_name))
        first: list[Attempt] = []
        group_names = {d["metadata"]["name"] for d in docs if _group(d)}
        for d in docs:
            name = d["metadata"]["name"]
            if name in group_names or name in always_on:
                continue
            progress(f"a request for {name}: the controller scales it up, kube-scheduler asks the extender")
            first.append(demo.run_model(d))
        demo.wait_phases({a.model: ("Ready",) for a in [*started, *first] if a.node}, timeout_s=30)
        result = StoryResult([*started, *first], demo.model_status(), story=story, verdicts=demo.verdicts)
        if story is not None:
            names = [n for n, _, _ in story.members]
            before = demo.current_pods(names)
            progress(f"a request for {story.challenger} arrives")
            activate(cluster.api, namespace, story.challenger)
            demo.wait_phases({story.challenger: ("Ready", "Failed"), story.holder: ("Preempted", "Ready")})
            second = demo.fresh_attempts({n: by_name[n] for n in names}, before)
            swap_status = demo.model_status()
            result.acts.append((swap_heading(story, swap_status, None), second, swap_status))
            idle_min = int(story.challenger_idle_seconds // 60) + 1
            progress(f"that request is now {idle_min} minutes old (back-dated): {story.challenger} is idle")
            before = demo.current_pods(names)
            activate(cluster.api, namespace, story.challenger, now=time.time() - story.challenger_idle_seconds - 60)
            demo.wait_phases({story.holder: ("Ready",), story.challenger: ("Idle", "Preempted")})
            third = demo.fresh_attempts({n: by_name[n] for n in names}, before)
            final_status = demo.model_status()
            result.acts.append((reclaim_heading(story, final_status, swap_status), third, final_status))
        return result
    finally:
        controller.stop(5)
        provisioner.stop()


def run_real_demo(fleet: Fleet, console: Console, err: Console, examples: Path = EXAMPLES) -> int:
    t0 = time.monotonic()
    docs = load_example_docs(examples)
    with err.status("starting") as status:
        def progress(msg: str) -> None:
            status.update(msg)
            err.print(f"[dim]- {msg}[/dim]")

        progress("building or reusing the pinned Kubernetes binaries (hack/k8s/build.sh)")
        try:
            cp = ControlPlane()
            progress("starting etcd, kube-apiserver, kube-controller-manager and kwok on 127.0.0.1")
            cp.start()
        except ControlPlaneError as e:
            err.print(f"[red]cannot start the real control plane:[/red] {e}")
            return 1
        cluster: RealCluster | None = None
        try:
            cluster = RealCluster(cp, fleet)
            progress(f"installing the shipped CRD and RBAC; registering {len(fleet.nodes)} kwok Nodes; one "
                     "flexinfer-agent per node; flexinfer-extender (each as its own ServiceAccount)")
            cluster.start()
            progress("starting kube-scheduler with daemonset/scheduler/kube-scheduler-config.yaml")
            cluster.start_scheduler("default")
            result = play_story(cluster, docs, NAMESPACE, progress, examples)
            progress("done; stopping every process")
        finally:
            if cluster is not None:  # our processes and in-process watches first, then the control plane they use
                cluster.stop()
            cp.stop()
    started_first, phase1_status, acts, story = result.placements, result.phase1_status, result.acts, result.story
    console.print()
    console.print(placement_table(started_first,
                                  f"Placements by the real kube-scheduler on fleet '{fleet.description or 'fleet'}' "
                                  f"({len(fleet.nodes)} kwok nodes): the always-on models as applied, then one "
                                  "request per on-demand model, in order"))
    console.print()
    console.print("[bold]Why (kube-scheduler's message when Pending; the extender's verdict for every other "
                  "node, asked just before):[/bold]")
    print_reasons(console, started_first)
    console.print()
    console.print(status_table(phase1_status))
    console.print()
    print_story(console, story, acts)
    console.print()
    console.print("Real control plane: models activated one at a time, group cooldown 0 s, the idle timeout "
                  "reached by back-dating the request (no simulated clock).")
    console.print(f"demo finished in {time.monotonic() - t0:.1f} s")
    return 0
