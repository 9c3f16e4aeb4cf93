"""Controller benchmark: reconcile 200 Models in 20 shared-GPU groups against the local fake API server
(flexinfer.sim.fakeapi.FakeApiServer in a separate process, real HTTP through the official client).

Passes timed (wall clock, `Controller.reconcile_once()`: list everything, decide, render, apply, status):
1. cold: nothing exists yet; creates every Deployment and Service and writes every Model status;
2. steady: nothing changed (the common periodic resync): reads and compares only;
3. activation: one low-priority member per group gets the activate annotation (20 swaps);
and the pure decision path alone (flexinfer.controller.groups.decide_group for the 20 groups).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from flexinfer import keys

ROOT = Path(__file__).resolve().parent.parent
NS = "bench"
BACKENDS = ("llamacpp", "vllm", "ollama", "mlc-llm", "diffusers")


def models(n_groups: int = 20, per_group: int = 10) -> list[dict[str, Any]]:
    out = []
    for g in range(n_groups):
        vendor = "nvidia" if g % 2 == 0 else "amd"
        for m in range(per_group):
            backend = BACKENDS[(g + m) % len(BACKENDS)]
            if vendor == "amd" and backend == "mlc-llm":
                backend = "llamacpp"
            out.append({
                "apiVersion": keys.MODEL_API_VERSION, "kind": keys.MODEL_KIND,
                "metadata": {"name": f"g{g:02d}-m{m:02d}", "namespace": NS},
                "spec": {"backend": backend, "source": f"HF://bench/model-{g}-{m}-7B",
                         "gpu": {"vendor": vendor, "shared": f"group-{g:02d}", "priority": 100 - m * 5,
                                 "vramEstimateMB": 8000 + 500 * m},
                         "serverless": {"minReplicas": 1 if m == 0 else 0, "idleTimeout": "10m",
                                        "coldStartTimeout": "5m"},
                         "serviceLabels": [f"group-{g:02d}"]},
            })
    return out


def gpu_nodes(n: int = 20, now: float | None = None) -> list[dict[str, Any]]:
    """Nodes as their agents publish them (half NVIDIA sm_89, half AMD gfx1100, one 24 GiB GPU each): the
    controller checks that a group member fits somewhere before it starts or preempts."""
    from flexinfer.nodes import node_object
    from flexinfer.state import GpuState, NodeGpuState, node_annotations, node_labels

    now = time.time() if now is None else now
    out = []
    for i in range(n):
        vendor, arch = ("nvidia", "sm_89") if i % 2 == 0 else ("amd", "gfx1100")
        gpus = [GpuState(0, f"GPU-bench-{i}", vendor, arch, 24576, 24000)]
        res = keys.RESOURCE_NVIDIA if vendor == "nvidia" else keys.RESOURCE_AMD
        obj = node_object(f"gpu-{i:02d}", node_labels(gpus),
                          node_annotations(NodeGpuState(f"gpu-{i:02d}", tuple(gpus), now)), gpu_resources={res: 1})
        out.append({"apiVersion": "v1", "kind": "Node", **obj})
    return out


def _kubelet(kube: Any, api: Any) -> int:
    n = 0
    for d in kube.list_objects(api, "deployments", NS):
        replicas = (d.get("spec") or {}).get("replicas") or 0
        kube.merge_patch(api, "deployments", d["metadata"]["name"],
                         {"status": {"replicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas}},
                         NS, "status")
        n += 1
    return n


def run(progress: Any, *, quick: bool = False) -> dict[str, Any]:
    from flexinfer.controller import groups
    from flexinfer.controller.reconcile import Controller, activate

    from bench.extender_bench import cpus
    from flexinfer import kube

    n_groups = 20
    objs = models(n_groups, 10)
    server_cpu, _client_cpu = cpus()
    proc = subprocess.Popen([sys.executable, "-m", "bench.fakeapi_proc", "--cpu", str(server_cpu)], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out: dict[str, Any] = {"models": len(objs), "groups": n_groups, "api": "flexinfer.sim.fakeapi.FakeApiServer "
                           "(separate process, HTTP via the official kubernetes client)"}
    try:
        url = proc.stdout.readline().strip()  # type: ignore[union-attr]
        if not url.startswith("http"):
            raise RuntimeError(f"fake API server did not start (got {url!r})")
        api = kube.api_client(server=url)
        try:
            progress(f"controller: creating {len(objs)} Models in {n_groups} groups")
            for node in gpu_nodes():
                kube.create_object(api, node)  # the kubelet's part (allocatable GPUs) is the status subresource
                kube.merge_patch(api, "nodes", node["metadata"]["name"], {"status": node["status"]},
                                 subresource="status")
            for o in objs:
                kube.create_object(api, o)
            clock_t = [time.time()]
            # group timing on the bench's clock (it jumps 700 s); the nodes' GPU data is judged on the wall clock
            ctl = Controller(api, namespace=NS, cooldown_seconds=0, clock=lambda: clock_t[0], auto_vendor="nvidia",
                             policy_clock=time.time)
            passes = []
            for label in ("cold", "steady", "steady-2"):
                progress(f"controller: reconcile pass ({label})")
                t0 = time.perf_counter()
                c0 = time.process_time()
                r = ctl.reconcile_once()
                passes.append({"pass": label, "seconds": round(time.perf_counter() - t0, 3),
                               "client_cpu_seconds": round(time.process_time() - c0, 3),
                               "writes": len(r.writes), "errors": len(r.errors), "decisions": len(r.decisions)})
                clock_t[0] += 1
            # play kubelet: every running Deployment becomes Ready, then one more pass marks the models Ready
            _kubelet(kube, api)
            ctl.reconcile_once()
            clock_t[0] += 700  # past the 10 min idle timeout of the holders
            # activation of the lowest-priority member of each group
            for g in range(n_groups):
                activate(api, NS, f"g{g:02d}-m09", now=clock_t[0])
            progress("controller: reconcile pass (activation: 20 swaps)")
            t0 = time.perf_counter()
            c0 = time.process_time()
            r = ctl.reconcile_once()
            passes.append({"pass": "activation", "seconds": round(time.perf_counter() - t0, 3),
                           "client_cpu_seconds": round(time.process_time() - c0, 3), "writes": len(r.writes),
                           "errors": len(r.errors), "decisions": len(r.decisions)})
            running = sum(1 for o in kube.list_objects(api, "deployments", NS)
                          if (o.get("spec") or {}).get("replicas"))
            out["passes"] = passes
            out["deployments_running_after"] = running
            out["activated_members_running"] = sum(
                1 for o in kube.list_objects(api, "deployments", NS)
                if o["metadata"]["name"].endswith("m09") and (o.get("spec") or {}).get("replicas"))
            out["first_errors"] = r.errors[:3]
        finally:
            api.close()
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    # the pure decision path alone
    now = time.time()
    members = [[groups.Member(name=f"g{g}-m{m}", priority=100 - m * 5, min_replicas=1 if m == 0 else 0,
                              running=(m == 0), phase="Ready" if m == 0 else "Idle",
                              last_active_unix=now - 30 if m in (0, 9) else None) for m in range(10)]
               for g in range(n_groups)]
    reps = 200 if quick else 1000
    t0 = time.perf_counter()
    for _ in range(reps):
        for ms in members:
            groups.decide_group(ms, now, 60.0, None)
    out["pure_decision_ms_for_200_models"] = round((time.perf_counter() - t0) / reps * 1000, 3)
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(lambda m: print("..", m, file=sys.stderr), quick=True), indent=1))
