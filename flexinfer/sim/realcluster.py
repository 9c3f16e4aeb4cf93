"""A simulated GPU fleet on the real control plane (:mod:`flexinfer.sim.controlplane`): the e2e tier's,
the real-mode demo's and the scheduler bench's cluster.

- **Nodes**: one kwok-managed Node per fleet node, carrying what its kubelet and device plugin would
  report (capacity `nvidia.com/gpu` / `amd.com/gpu`, cpu, memory, taints, the fleet's labels), built by
  :func:`flexinfer.nodes.fleet_node_objects` with no FlexInfer keys: the agents write those.
- **Agents**: one ``flexinfer-agent --fake-gpus FLEET --node N`` process per node, as the
  ``flexinfer-agent`` ServiceAccount with only its shipped ClusterRole, writing through the real API.
- **GPU load**: :class:`GpuLoad` watches pods; when kwok marks a pod with a VRAM estimate Running on a
  fleet node, the node's fake GPU(s) show the model's memory in use (the demo's simulated load) by
  editing the fleet file the agents follow (:class:`flexinfer.agent.readers.fake.FollowFleetFile`), so
  the agent publishes the drop and the extender sees it. A deleted pod gives the memory back.
- **Extender** and **controller**: ``flexinfer-extender`` / ``flexinfer-controller`` processes, each as
  its own ServiceAccount with only its shipped role; kube-scheduler calls the extender over loopback HTTP.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flexinfer import keys, kube, logs
from flexinfer.fleet import Fleet, dump_fleet
from flexinfer.nodes import fleet_node_objects
from flexinfer.sim.controlplane import (
    KWOK_NODE_ANNOTATION,
    SCHEDULER_CONFIGS,
    ControlPlane,
    ControlPlaneError,
    Process,
    extender_tls_files,
    free_port,
    http_ok,
    make_ca,
    make_cert,
    python_entry_point,
    shipped_scheduler_config,
    wait_until,
)
from flexinfer.sim.intree import pod_gpu_requests
from flexinfer.state import decode_state, rfc3339

log = logs.get("flexinfer.sim.realcluster")

JSON = dict[str, Any]
NAMESPACE = keys.SYSTEM_NAMESPACE


def kwok_node_objects(fleet: Fleet, names: Iterable[str] | None = None, *, published: bool = False,
                      now: float | None = None, ready: bool = False) -> list[JSON]:
    """The Node objects a fleet's kubelets (+ device plugins) would register, annotated for kwok; with
    `published` also the labels and annotations its agent would write at `now` (the bench, which runs no
    agents). Pure."""
    wanted = set(names) if names is not None else None
    out = []
    for obj in fleet_node_objects(fleet, now, published=published):
        if wanted is not None and obj["metadata"]["name"] not in wanted:
            continue
        obj = {"apiVersion": "v1", "kind": "Node", **obj}
        obj["metadata"]["annotations"] = {**obj["metadata"].get("annotations", {}),
                                          KWOK_NODE_ANNOTATION[0]: KWOK_NODE_ANNOTATION[1]}
        obj["metadata"]["labels"].setdefault("type", "kwok")
        if ready:
            # registered Ready, as a kubelet that is up reports itself: kwok's heartbeat stage (phase Running,
            # Ready) keeps it so, and thousands of Nodes need no initialization round
            stamp = rfc3339(time.time() if now is None else now)
            obj["status"]["phase"] = "Running"
            obj["status"]["conditions"] = [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                            "message": "kwok", "lastHeartbeatTime": stamp,
                                            "lastTransitionTime": stamp}]
        else:
            obj["status"]["conditions"] = []  # kwok's node-initialize stage makes it Ready
        out.append(obj)
    return out


def pod_gpu_request(pod: JSON) -> tuple[str, int]:
    """(vendor, count) of the GPU resource a pod requests, counted as the extender counts it
    (`flexinfer.sim.intree.pod_gpu_requests`), ("", 0) for none. Pure."""
    for resource, count in pod_gpu_requests(pod).items():
        return keys.GPU_RESOURCES[resource], count
    return "", 0


class GpuLoad:
    """The GPU side of a kubelet: models of Running pods occupy fake-GPU memory (see the module doc).

    Each Running pod with a `flexinfer.ai/gpu.vram-estimate-mb` annotation and a GPU request on a fleet
    node takes `min(estimate, free)` MiB on each of its `count` healthy GPUs of the requested vendor
    with the most free memory (what a device plugin hands out). The fleet file is rewritten atomically on
    every change."""

    def __init__(self, api: Any, fleet: Fleet, fleet_path: Path) -> None:
        self.api = api
        self.base = fleet
        self.fleet = copy.deepcopy(fleet)
        self.fleet_path = fleet_path
        self.loads: dict[tuple[str, str], list[tuple[str, int, int]]] = {}  # pod key -> [(node, gpu, MiB)]
        self._lock = threading.RLock()
        self.informer: kube.Informer | None = None
        self.writes = 0
        self.write()

    def start(self) -> GpuLoad:
        self.informer = kube.Informer(self.api, "pods", self.on_event, field_selector="spec.nodeName!=")
        self.informer.start()
        if not self.informer.wait_synced(30):
            raise ControlPlaneError("the GPU load simulator's pod informer did not sync within 30 s")
        return self

    def stop(self) -> None:
        if self.informer is not None:
            self.informer.stop()

    def used_mib(self, node: str, gpu: int = 0) -> int:
        with self._lock:
            return self.fleet.node(node).gpus[gpu].used_mi_b

    def on_event(self, etype: str, obj: JSON) -> None:
        with self._lock:
            if etype == "SYNC":
                live = {self._key(p): p for p in obj.get("items") or []}
                changed = False
                for key in list(self.loads):
                    if key not in live or not self._running(live[key]):
                        changed |= self._unload(key)
                for key, pod in live.items():
                    if self._running(pod):
                        changed |= self._load(key, pod)
            elif etype == "DELETED" or not self._running(obj):
                changed = self._unload(self._key(obj))
            else:
                changed = self._load(self._key(obj), obj)
            if changed:
                self.write()

    @staticmethod
    def _key(pod: JSON) -> tuple[str, str]:
        meta = pod.get("metadata") or {}
        return meta.get("namespace") or "default", meta.get("name") or ""

    @staticmethod
    def _running(pod: JSON) -> bool:
        return (pod.get("status") or {}).get("phase") == "Running" and \
            not (pod.get("metadata") or {}).get("deletionTimestamp")

    def _load(self, key: tuple[str, str], pod: JSON) -> bool:
        if key in self.loads:
            return False
        ann = (pod.get("metadata") or {}).get("annotations") or {}
        node_name = (pod.get("spec") or {}).get("nodeName") or ""
        vendor, count = pod_gpu_request(pod)
        try:
            need = int(ann.get(keys.POD_VRAM_ESTIMATE_MB, "0"))
            node = self.fleet.node(node_name)
        except (ValueError, KeyError):
            return False
        if need <= 0 or count <= 0:
            return False
        gpus = sorted((i for i, g in enumerate(node.gpus) if g.vendor.lower() == vendor and g.healthy),
                      key=lambda i: node.gpus[i].used_mi_b - node.gpus[i].total_mi_b)[:count]
        placed = []
        for i in gpus:
            g = node.gpus[i]
            add = max(0, min(need, g.total_mi_b - g.used_mi_b))
            g.used_mi_b += add
            placed.append((node_name, i, add))
        self.loads[key] = placed
        log.info("gpu_load", pod=f"{key[0]}/{key[1]}", node=node_name, gpus=[p[1] for p in placed], mib=need)
        return True

    def _unload(self, key: tuple[str, str]) -> bool:
        placed = self.loads.pop(key, None)
        if not placed:
            return placed is not None
        for node_name, i, mib in placed:
            g = self.fleet.node(node_name).gpus[i]
            g.used_mi_b = max(0, g.used_mi_b - mib)
        log.info("gpu_unload", pod=f"{key[0]}/{key[1]}")
        return True

    def adjust(self, node: str, gpu: int, delta_mib: int) -> None:
        """Memory taken (+) or freed (-) on one GPU outside any pod (a process the cluster does not know)."""
        with self._lock:
            g = self.fleet.node(node).gpus[gpu]
            g.used_mi_b = max(0, min(g.total_mi_b, g.used_mi_b + delta_mib))
            self.write()

    def write(self) -> None:
        with self._lock:
            tmp = self.fleet_path.with_suffix(".tmp")
            tmp.write_text(dump_fleet(self.fleet))
            os.replace(tmp, self.fleet_path)
            self.writes += 1


class RealCluster:
    """A fleet on a running :class:`ControlPlane` (shipped CRD/RBAC installed by `start`)."""

    def __init__(self, cp: ControlPlane, fleet: Fleet, *, agent_interval_seconds: float = 1.0,
                 agent_heartbeat_seconds: float = 5.0, extender_args: Iterable[str] = ()) -> None:
        self.cp = cp
        self.fleet = fleet
        self.agent_interval_seconds = agent_interval_seconds
        # A short heartbeat: the extender keeps a started pod's VRAM reservation until an agent sample taken
        # after the pod became Ready arrives, which for a quiet GPU is the next heartbeat (120 s by default).
        self.agent_heartbeat_seconds = agent_heartbeat_seconds
        self.extender_args = list(extender_args)
        self.fleet_path = cp.workdir / "fleet.yaml"
        self.load: GpuLoad | None = None
        self.extender_port = 0
        self.extender_grpc_port = 0
        self.extender_probe_port = 0
        # The shipped scheduler configurations speak mutual TLS to the extender when they say enableHTTPS;
        # the extender then serves with a certificate for the shipped serverName and requires the scheduler's
        # client certificate (files in tls_dir under the names the configs use).
        self.tls_files = {k: v for variant in SCHEDULER_CONFIGS for k, v in extender_tls_files(variant).items()}
        self.tls = bool(self.tls_files)
        self.tls_dir = cp.workdir / "extender-tls"
        self._tls_made = False
        self.agents: dict[str, Process] = {}
        self.controllers: dict[str, Process] = {}

    @property
    def api(self) -> Any:
        return self.cp.admin_api()

    @property
    def extender_url(self) -> str:
        """What kube-scheduler's urlPrefix points at (https when the shipped config says enableHTTPS)."""
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.extender_port}"

    @property
    def extender_probe_url(self) -> str:
        """The extender's plain-HTTP read-only port: /healthz, /readyz, /metrics, /explain."""
        return f"http://127.0.0.1:{self.extender_probe_port}"

    def make_extender_tls(self) -> None:
        """A serving CA and certificate (SANs: the shipped serverName + 127.0.0.1) for the extender, and a
        client CA + certificate for kube-scheduler, under the file names the shipped tlsConfig uses."""
        if self._tls_made or not self.tls:
            return
        d = self.tls_dir
        server_names = {str(((shipped_scheduler_config(v).get("extenders") or [{}])[0].get("tlsConfig") or {})
                            .get("serverName") or "") for v in SCHEDULER_CONFIGS} - {""}
        make_ca(d, "serving-ca", "flexinfer-extender-ca")
        make_cert(d, "extender", "serving-ca", "flexinfer-extender", server=True, client=True,
                  sans=[*(f"DNS:{n}" for n in sorted(server_names)), "IP:127.0.0.1"])
        make_ca(d, "client-ca", "flexinfer-scheduler-client-ca")
        make_cert(d, "scheduler-client", "client-ca", "kube-scheduler", client=True)
        sources = {"caFile": "serving-ca.crt", "certFile": "scheduler-client.crt", "keyFile": "scheduler-client.key"}
        for variant in SCHEDULER_CONFIGS:
            for field_name, path in extender_tls_files(variant).items():
                (d / Path(path).name).write_bytes((d / sources[field_name]).read_bytes())
        self._tls_made = True

    def start_scheduler(self, variant: str = "default", *, name: str | None = None,
                        extender_url: str | None = None, extender: bool = True, **kwargs: Any) -> Process:
        """kube-scheduler with the shipped `variant` config pointed at this cluster's extender (or
        `extender_url`, e.g. a recording proxy that presents the extender's certificate); `extender=False`
        removes the extender stanza (the bench's baseline)."""
        self.make_extender_tls()
        name = name or ("kube-scheduler" if variant == "default" else "flexinfer-scheduler")
        url = (extender_url or self.extender_url) if extender else None
        return self.cp.start_scheduler(variant, url, name=name, tls_dir=self.tls_dir if self.tls else None,
                                       **kwargs)

    @property
    def extender_grpc(self) -> str:
        return f"127.0.0.1:{self.extender_grpc_port}"

    # -- whole cluster --------------------------------------------------------------------------------
    def start(self, *, nodes: bool = True, agents: bool = True, extender: bool = True) -> RealCluster:
        """Install the shipped CRD/RBAC; register the fleet's Nodes, start the load simulator, the agents and
        the extender (each optional; the bench registers its own Nodes with what agents would publish)."""
        self.cp.install_flexinfer()
        if nodes:
            self.register_nodes()
        self.load = GpuLoad(self.api, self.fleet, self.fleet_path).start()
        if agents:
            self.start_agents()
        if extender:
            self.start_extender()
        return self

    def stop(self) -> None:
        for p in [*self.controllers.values(), *self.agents.values()]:
            p.stop(5)
        ext = self.cp.procs.get("flexinfer-extender")
        if ext is not None:
            ext.stop(5)
        if self.load is not None:
            self.load.stop()

    # -- nodes --------------------------------------------------------------------------------------------
    def register_nodes(self, names: Iterable[str] | None = None, timeout_s: float = 60.0) -> list[str]:
        """Create the kwok Nodes (as their kubelets would) and wait until kwok reports them Ready."""
        objs = kwok_node_objects(self.fleet, names)
        for obj in objs:
            try:
                kube.create_object(self.api, obj)
            except kube.KubeError as e:
                if e.status != 409:
                    raise
        created = [o["metadata"]["name"] for o in objs]
        self.wait_nodes_ready(created, timeout_s)
        return created

    def wait_nodes_ready(self, names: Iterable[str], timeout_s: float = 60.0) -> None:
        names = list(names)

        def ready() -> bool:
            for n in names:
                node = kube.get_object(self.api, "nodes", n)
                status = (node or {}).get("status") or {}
                conds = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
                if conds.get("Ready") != "True":
                    return False
                taints = [t.get("key") for t in ((node or {}).get("spec") or {}).get("taints") or []]
                if any(str(k).startswith("node.kubernetes.io/") for k in taints):
                    return False  # node lifecycle controller has not lifted not-ready yet
            return True

        wait_until(f"kwok nodes Ready: {', '.join(names)}", ready, timeout_s, interval_s=0.2,
                   procs=[self.cp.procs["kwok"]])

    def delete_node(self, name: str) -> None:
        kube.delete_object(self.api, "nodes", name)

    # -- agents ---------------------------------------------------------------------------------------------
    def start_agents(self, names: Iterable[str] | None = None, wait: bool = True) -> None:
        names = list(names) if names is not None else [n.name for n in self.fleet.nodes]
        kc = self.cp.service_account_kubeconfig(NAMESPACE, "flexinfer-agent")
        t0 = time.time()
        for name in names:
            self.agents[name] = self.cp.spawn(f"agent-{name}", [
                *python_entry_point("flexinfer-agent"), "--node", name, "--fake-gpus", str(self.fleet_path),
                "--kubeconfig", str(kc), "--interval-seconds", str(self.agent_interval_seconds),
                "--heartbeat-seconds", str(self.agent_heartbeat_seconds),
                "--metrics-port", "0", "--grpc-port", "0", "--log-format", "json",
            ])
        if wait:
            self.wait_published(names, since_unix=t0 - 1)

    def stop_agent(self, name: str) -> None:
        p = self.agents.pop(name, None)
        if p is not None:
            p.stop(5)

    def published(self, name: str) -> JSON | None:
        """The agent's last published state of a node (from its annotations), or None."""
        node = kube.get_object(self.api, "nodes", name)
        ann = ((node or {}).get("metadata") or {}).get("annotations") or {}
        raw = ann.get(keys.ANN_GPU_STATE)
        if raw is None:
            return None
        state = decode_state(name, raw)
        return {"observed_unix": state.observed_unix,
                "free_mib": [g.free_mib for g in state.gpus], "annotations": ann,
                "labels": (node or {}).get("metadata", {}).get("labels") or {}}

    def wait_published(self, names: Iterable[str], since_unix: float = 0.0, timeout_s: float = 60.0,
                       free_mib: dict[str, int] | None = None) -> None:
        """Until every node's agent published state observed after `since_unix` (and, when given, GPU 0's
        free MiB within 200 MiB of `free_mib[node]`)."""
        names = list(names)

        def done() -> bool:
            for n in names:
                pub = self.published(n)
                if pub is None or pub["observed_unix"] < since_unix:
                    return False
                if free_mib and n in free_mib and (
                        not pub["free_mib"] or abs(pub["free_mib"][0] - free_mib[n]) > 200):
                    return False
            return True

        wait_until(f"agents to publish {', '.join(names)}", done, timeout_s, interval_s=0.2,
                   procs=[self.agents[n] for n in names if n in self.agents])

    def expected_free_mib(self) -> dict[str, list[int]]:
        """What every node's GPUs have free right now according to the load simulator (the truth)."""
        assert self.load is not None
        with self.load._lock:
            return {n.name: [g.total_mi_b - g.used_mi_b for g in n.gpus] for n in self.load.fleet.nodes if n.gpus}

    def unloaded_pods(self) -> list[str]:
        """Running-or-about-to-run GPU pods on fleet nodes whose memory the load simulator has not applied."""
        assert self.load is not None
        out = []
        names = {n.name for n in self.fleet.nodes}
        for p in kube.list_objects(self.api, "pods", field_selector="spec.nodeName!="):
            meta = p.get("metadata") or {}
            if meta.get("deletionTimestamp") or (p.get("spec") or {}).get("nodeName") not in names:
                continue
            if (p.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            if keys.POD_VRAM_ESTIMATE_MB not in (meta.get("annotations") or {}) or not pod_gpu_request(p)[1]:
                continue
            with self.load._lock:
                if (meta.get("namespace") or "default", meta.get("name")) not in self.load.loads:
                    out.append(f"{meta.get('namespace')}/{meta.get('name')}")
        return out

    def extender_gauge(self, metric: str) -> float | None:
        """One unlabelled gauge from the extender's /metrics, None when it does not answer."""
        try:
            with urllib.request.urlopen(f"{self.extender_probe_url}/metrics", timeout=2) as r:
                text = r.read().decode()
        except (OSError, urllib.error.URLError):
            return None
        for line in text.splitlines():
            if line.startswith(metric + " "):
                return float(line.split()[1])
        return None

    def extender_reservations(self) -> float | None:
        """The extender's live VRAM reservations (pods being placed), None when it does not answer."""
        return self.extender_gauge("flexinfer_extender_reservations")

    def bound_gpu_pods(self) -> int:
        """Bound, unfinished pods carrying a VRAM estimate and a GPU request (terminating ones too: their memory is
        in use until they are gone): what the extender should hold commitments for."""
        count = 0
        for p in kube.list_objects(self.api, "pods", field_selector="spec.nodeName!="):
            meta = p.get("metadata") or {}
            if (p.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            if keys.POD_VRAM_ESTIMATE_MB in (meta.get("annotations") or {}) and pod_gpu_request(p)[1]:
                count += 1
        return count

    def wait_settled(self, timeout_s: float = 30.0, tolerance_mib: int = 1200, reservations: bool = True) -> None:
        """Until the simulated GPU load is what everyone sees: every bound GPU pod's memory applied by the
        load simulator, every running agent's published free memory equal to it (within the agent's write
        threshold + noise) and, with `reservations`, the extender holding no reservation any more and a
        commitment for exactly the bound GPU pods the API server lists (its pod watch has caught up)."""
        state: dict[str, Any] = {}

        def settled() -> bool:
            state.clear()
            pending = self.unloaded_pods()
            if pending:
                state["not loaded yet"] = pending
                return False
            want = self.expected_free_mib()
            for name, free in want.items():
                if name not in self.agents:
                    continue
                pub = self.published(name)
                if pub is None or len(pub["free_mib"]) != len(free) or any(
                        abs(a - b) > tolerance_mib for a, b in zip(pub["free_mib"], free, strict=True)):
                    state["not published"] = (name, pub and pub["free_mib"], free)
                    return False
            if reservations and self.cp.procs.get("flexinfer-extender") and self.extender.alive():
                held = self.extender_reservations()
                if held:
                    state["extender reservations"] = held
                    return False
                committed, bound = self.extender_gauge("flexinfer_extender_committed_pods"), self.bound_gpu_pods()
                if committed is not None and committed != bound:  # its pod watch has not caught up yet
                    state["extender commitments vs bound pods"] = (committed, bound)
                    return False
            return True

        try:
            wait_until("the simulated GPU load to be published", settled, timeout_s, interval_s=0.2,
                       procs=list(self.agents.values()))
        except ControlPlaneError as e:
            raise ControlPlaneError(f"{e} ({state})") from None
        time.sleep(0.3)  # the extender's node watch delivers within milliseconds

    # -- extender ----------------------------------------------------------------------------------------------
    def start_extender(self, port: int | None = None, wait: bool = True, profile_to: Path | None = None) -> Process:
        """flexinfer-extender as its ServiceAccount on 127.0.0.1 (same port across restarts); with `profile_to`
        under cProfile (the stats are written when it is stopped with SIGTERM)."""
        self.extender_port = port or self.extender_port or free_port()
        self.extender_grpc_port = self.extender_grpc_port or free_port()
        self.extender_probe_port = self.extender_probe_port or free_port()
        kc = self.cp.service_account_kubeconfig(NAMESPACE, "flexinfer-extender")
        tls: list[str] = []
        if self.tls:
            self.make_extender_tls()
            d = self.tls_dir
            tls = ["--tls-cert", str(d / "extender.crt"), "--tls-key", str(d / "extender.key"),
                   "--client-ca-file", str(d / "client-ca.crt")]
        entry = python_entry_point("flexinfer-extender")
        if profile_to is not None:
            entry = [sys.executable, "-m", "cProfile", "-o", str(profile_to), *entry]
        proc = self.cp.spawn("flexinfer-extender", [
            *entry, "--kubeconfig", str(kc), "--bind-address", "127.0.0.1",
            "--http-port", str(self.extender_port), "--grpc-port", str(self.extender_grpc_port),
            "--read-only-port", str(self.extender_probe_port), *tls, "--log-format", "json", *self.extender_args,
        ])
        if wait:
            self.wait_extender_ready(proc)
        return proc

    def wait_extender_ready(self, proc: Process | None = None, timeout_s: float = 60.0) -> None:
        wait_until("flexinfer-extender /readyz", http_ok(f"{self.extender_probe_url}/readyz"), timeout_s,
                   procs=[proc or self.cp.procs["flexinfer-extender"]])

    def extender_explain(self, pod: JSON, node_names: list[str] | None = None) -> JSON:
        body = json.dumps({"Pod": pod, "Nodes": None, "NodeNames": node_names}).encode()
        req = urllib.request.Request(f"{self.extender_probe_url}/explain", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    @property
    def extender(self) -> Process:
        return self.cp.procs["flexinfer-extender"]

    # -- controller ----------------------------------------------------------------------------------------------
    def start_controller(self, name: str = "flexinfer-controller", *args: str) -> Process:
        """flexinfer-controller as its ServiceAccount (leader election on, /metrics off unless asked)."""
        kc = self.cp.service_account_kubeconfig(NAMESPACE, "flexinfer-controller")
        proc = self.cp.spawn(name, [
            *python_entry_point("flexinfer-controller"), "--kubeconfig", str(kc), "--bind-address", "127.0.0.1",
            "--log-format", "json", *(args or ("--metrics-port", "0")),
        ], env={"POD_NAMESPACE": NAMESPACE, "POD_NAME": name})
        self.controllers[name] = proc
        return proc
