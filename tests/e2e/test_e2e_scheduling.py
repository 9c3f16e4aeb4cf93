"""Placements made by the real kube-scheduler calling the extender with the shipped configuration."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from flexinfer.extender.policy import R_INSUFFICIENT

from flexinfer import keys, kube
from flexinfer.sim.controlplane import python_entry_point

from .helpers import (
    RecordingProxy,
    bound_pods,
    create,
    failed_scheduling_messages,
    gpu_pod,
    node_of,
    scheduled_condition,
)

MAXWELL = "cblevins-gtx980ti"
RTX = "rtxpro4000-worker"
GFX1100 = {keys.LABEL_ARCH: "gfx1100"}


def test_vllm_never_on_maxwell_and_the_event_carries_our_reason(homelab, api, ns, wait_for):
    # Only the Maxwell node is allowed by the selector: nothing is feasible, the pod stays Pending and
    # kube-scheduler's FailedScheduling event carries the extender's reason.
    create(api, gpu_pod("vllm-pinned", ns, backend="vllm", vram_mib=3000, vendor="nvidia",
                        node_selector={"kubernetes.io/hostname": MAXWELL}))
    msgs = wait_for("a FailedScheduling event for vllm-pinned",
                    lambda: [m for m in failed_scheduling_messages(api, ns, "vllm-pinned") if "maxwell" in m])
    assert "1 vllm does not run on maxwell sm_52" in msgs[0], msgs
    assert msgs[0].startswith(f"0/{len(homelab.fleet.nodes)} nodes are available"), msgs
    assert node_of(api, ns, "vllm-pinned") == ""

    # Free to go anywhere: it lands on the only other NVIDIA node, never on the 980 Ti.
    create(api, gpu_pod("vllm-free", ns, backend="vllm", vram_mib=3000, vendor="nvidia"))
    assert wait_for("vllm-free bound", lambda: node_of(api, ns, "vllm-free")) == RTX
    # and the agent publishes the model's memory on that GPU once kwok runs the pod
    before = homelab.load.base.node(RTX).gpus[0]
    homelab.wait_published([RTX], free_mib={RTX: before.total_mi_b - before.used_mi_b - 3000})
    assert node_of(api, ns, "vllm-pinned") == ""


def offline_explain(control_plane, pod: dict[str, Any], tmp_path) -> list[dict[str, Any]]:
    """`flexinfer explain POD.yaml --kubeconfig admin -o json`: the offline policy over the live Nodes."""
    f = tmp_path / f"{pod['metadata']['name']}.yaml"
    f.write_text(yaml.safe_dump(pod))
    res = subprocess.run([*python_entry_point("flexinfer"), "explain", str(f), "--kubeconfig",
                          str(control_plane.admin_kubeconfig), "-o", "json"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode in (0, 20), res.stderr
    return json.loads(res.stdout)


# (name, backend, MiB per GPU, vendor, extra annotations): per-GPU fit, vendor and arch rules
SHAPES = [
    ("llama-amd-12g", "llamacpp", 12000, "amd", {}),
    ("ollama-amd-14g", "ollama", 14000, "amd", {}),  # ollama does not list gfx906 (Radeon VII)
    ("mlc-nvidia-4g", "mlc-llm", 4000, "nvidia", {}),  # Maxwell only with a precompiled library
    ("mlc-readonly-3g", "mlc-llm", 3000, "nvidia", {keys.POD_JIT_POLICY: "READONLY"}),
    ("vllm-amd-20g", "vllm", 20000, "amd", {}),
    ("llama-amd-60g", "llamacpp", 60000, "amd", {}),  # fits nowhere
]


def test_placements_match_flexinfer_explain(homelab, control_plane, api, ns, wait_for, tmp_path):
    placed: dict[str, str] = {}
    for name, backend, mib, vendor, ann in SHAPES:
        homelab.wait_settled()
        pod = gpu_pod(name, ns, backend=backend, vram_mib=mib, vendor=vendor, annotations=ann)
        rows = offline_explain(control_plane, pod, tmp_path)
        passing = {r["node"]: r["score"] for r in rows if r["verdict"] == "pass"}
        create(api, pod)
        if not passing:
            cond = wait_for(f"{name} unschedulable", lambda n=name: (
                c := scheduled_condition(api, ns, n)).get("reason") == "Unschedulable" and c)
            # kube-scheduler's message aggregates the extender's reasons for the nodes it asked about
            amd_nodes = {n.name for n in homelab.fleet.nodes if any(g.vendor == vendor for g in n.gpus)}
            verdicts = homelab.extender_explain(pod, sorted(amd_nodes))["Verdicts"]
            assert verdicts and not any(v["Feasible"] for v in verdicts)
            for v in verdicts:
                assert f"{v['Reason']}" in cond["message"], (v, cond["message"])
            assert all(f"needs {mib} MiB" in r["reason"] for r in rows if r["node"] in amd_nodes), rows
            assert node_of(api, ns, name) == ""
            continue
        node = wait_for(f"{name} bound", lambda n=name: node_of(api, ns, n))
        best = max(passing.values())
        assert passing.get(node) == best, f"{name}: kube-scheduler chose {node}; offline explain: {rows}"
        placed[name] = node
    # the shapes exercise the rules: each of these placements is forced by one of them
    assert placed["mlc-nvidia-4g"] == RTX  # JIT mlc-llm is unresolvable on Maxwell
    assert placed["ollama-amd-14g"] != "cblevins-radeonvii"
    assert placed["vllm-amd-20g"] in ("cblevins-7900xtx", "cblevins-5930k", "khelben")


@pytest.mark.parametrize("node_cache_capable", [True, False], ids=["nodenames", "full-nodes"])
def test_both_extender_wire_forms(homelab, control_plane, api, ns, wait_for, node_cache_capable):
    proxy = RecordingProxy(homelab.extender_url, homelab.tls_dir if homelab.tls else None)
    try:
        homelab.start_scheduler("default", extender_url=proxy.url,
                                extender_overrides={"nodeCacheCapable": node_cache_capable})
        create(api, gpu_pod("vllm-pinned", ns, backend="vllm", vram_mib=3000, vendor="nvidia",
                            node_selector={"kubernetes.io/hostname": MAXWELL}))
        create(api, gpu_pod("vllm-free", ns, backend="vllm", vram_mib=3000, vendor="nvidia"))
        assert wait_for("vllm-free bound", lambda: node_of(api, ns, "vllm-free")) == RTX
        cond = wait_for("vllm-pinned unschedulable",
                        lambda: (c := scheduled_condition(api, ns, "vllm-pinned")).get("reason") == "Unschedulable"
                        and c)
        assert "vllm does not run on maxwell sm_52" in cond["message"]
        filters = [body for path, body in proxy.requests if path == "/filter"]
        assert filters, proxy.requests
        for body in filters:
            if node_cache_capable:
                assert body.get("NodeNames") and not body.get("Nodes"), body.keys()
            else:
                items = (body.get("Nodes") or {}).get("items") or []
                assert items and not body.get("NodeNames"), body.keys()
                assert all(keys.ANN_GPU_STATE in (i["metadata"].get("annotations") or {}) for i in items)
    finally:
        proxy.close()
        homelab.start_scheduler("default")  # back to the shipped configuration


def burst_expectation(homelab, mib: int) -> int:
    """How many `mib` pods fit on the gfx1100 nodes right now (VRAM and the device plugin's 4 slots)."""
    n = 0
    for node in homelab.fleet.nodes:
        if any(g.arch == "gfx1100" for g in node.gpus):
            free = homelab.expected_free_mib()[node.name][0]
            n += min(free // mib, node.gpu_replicas)
    return n


def burst_settled(api: Any, ns: str, prefix: str, n_fit: int, state: dict[str, Any],
                  n_pods: int = 30) -> Callable[[], bool]:
    """For wait_for: exactly `n_fit` of the burst's pods `<prefix>-NN` (label burst=yes) bound, more fails at
    once, and every other one Pending with kube-scheduler's latest verdict naming the VRAM shortage (an extender
    error while it was down is replaced by that reason). `state` keeps what was seen, for the failure message."""

    def settled() -> bool:
        bound = bound_pods(api, ns, "burst=yes")
        assert len(bound) <= n_fit, f"{len(bound)} bound, only {n_fit} fit: {bound}"
        state["bound"] = bound
        if len(bound) < n_fit:
            return False
        for i in range(n_pods):
            name = f"{prefix}-{i:02d}"
            if name in bound:
                continue
            cond = scheduled_condition(api, ns, name)
            state["pending"] = (name, cond.get("message"))
            if R_INSUFFICIENT not in (cond.get("message") or ""):
                return False
        return True

    return settled


def assert_no_gpu_over_memory(homelab) -> None:
    for (_ns, pod_name), placed in homelab.load.loads.items():
        for node, gpu, mib in placed:
            want = int(kube.get_object(homelab.api, "pods", pod_name, _ns)["metadata"]["annotations"]
                       [keys.POD_VRAM_ESTIMATE_MB]) if kube.get_object(homelab.api, "pods", pod_name, _ns) else mib
            assert mib == want, f"{pod_name} on {node} GPU {gpu} got {mib} of {want} MiB: GPU overcommitted"
    for node, free in homelab.expected_free_mib().items():
        assert min(free) >= 0, (node, free)


def run_burst(homelab, control_plane, api, ns, wait_for, *, kill_extender_after: int | None) -> None:
    homelab.wait_settled()
    mib = 7000  # far from every boundary, even with the 7900 XTX's +/-100 MiB noise
    n_fit = burst_expectation(homelab, mib)
    assert n_fit == 6  # homelab: 3 on the 7900 XTX lane (24040 MiB free) + 3 on the 5930k (23950)
    for i in range(30):
        if kill_extender_after is not None and i == kill_extender_after:
            homelab.extender.kill()  # SIGKILL mid-burst: no goodbye, reservations lost
            time.sleep(1.0)
        create(api, gpu_pod(f"burst-{i:02d}", ns, backend="llamacpp", vram_mib=mib, vendor="amd",
                            node_selector=GFX1100, labels={"burst": "yes"}))
    if kill_extender_after is not None:
        # pods wait with the scheduler's extender error while it is down
        wait_for("an extender error on a pending pod", lambda: any(
            "/filter" in (scheduled_condition(api, ns, f"burst-{i:02d}").get("message") or "")
            for i in range(kill_extender_after, 30)))
        homelab.start_extender()

    state: dict[str, Any] = {}
    try:
        wait_for(f"exactly {n_fit} of 30 bound, the rest Pending for VRAM",
                 burst_settled(api, ns, "burst", n_fit, state), timeout_s=120)
    except pytest.fail.Exception:
        pytest.fail(f"the burst did not settle: {state}")
    homelab.wait_settled()
    time.sleep(3)  # nothing else gets bound once the agents published the real load
    bound = bound_pods(api, ns, "burst=yes")
    assert len(bound) == n_fit, bound
    per_node: dict[str, int] = {}
    for node in bound.values():
        per_node[node] = per_node.get(node, 0) + 1
    assert per_node == {"cblevins-7900xtx": 3, "cblevins-5930k": 3}, per_node
    assert_no_gpu_over_memory(homelab)


def test_burst_of_30_only_the_ones_that_fit_are_bound(homelab, control_plane, api, ns, wait_for):
    run_burst(homelab, control_plane, api, ns, wait_for, kill_extender_after=None)


def test_burst_with_the_extender_killed_and_restarted_midway(homelab, control_plane, api, ns, wait_for):
    try:
        run_burst(homelab, control_plane, api, ns, wait_for, kill_extender_after=3)
    finally:
        if not homelab.extender.alive():
            homelab.start_extender()


def test_extender_down_pods_wait_with_its_error_then_are_placed(homelab, control_plane, api, ns, wait_for):
    homelab.extender.stop()
    try:
        create(api, gpu_pod("waits", ns, backend="vllm", vram_mib=3000, vendor="nvidia"))
        cond = wait_for("the extender error on the pod", lambda: (
            c := scheduled_condition(api, ns, "waits")).get("message") and "/filter" in c["message"] and c)
        assert cond["status"] == "False"
        assert "connection refused" in cond["message"], cond
        msgs = failed_scheduling_messages(api, ns, "waits")
        assert any("/filter" in m for m in msgs), msgs
        time.sleep(2)
        assert node_of(api, ns, "waits") == ""  # ignorable: false: never placed blind
    finally:
        homelab.start_extender()
    assert wait_for("placed once the extender is back", lambda: node_of(api, ns, "waits"), timeout_s=60) == RTX


def test_second_scheduler_option(homelab, control_plane, api, ns, wait_for):
    """The second-scheduler roll-out: its own profile and Lease, running as its shipped ServiceAccount."""
    try:
        proc = homelab.start_scheduler("second")
        create(api, gpu_pod("via-second", ns, backend="vllm", vram_mib=3000, vendor="nvidia",
                            scheduler_name="flexinfer-scheduler"))
        create(api, gpu_pod("maxwell-second", ns, backend="vllm", vram_mib=3000, vendor="nvidia",
                            scheduler_name="flexinfer-scheduler", node_selector={"kubernetes.io/hostname": MAXWELL}))
        assert wait_for("via-second bound", lambda: node_of(api, ns, "via-second")) == RTX
        cond = wait_for("maxwell-second unschedulable", lambda: (
            c := scheduled_condition(api, ns, "maxwell-second")).get("reason") == "Unschedulable" and c)
        assert "vllm does not run on maxwell sm_52" in cond["message"]
        lease = kube.get_object(api, "leases", "flexinfer-scheduler", "flexinfer-system")
        assert lease and lease["spec"]["holderIdentity"]
        assert "forbidden" not in proc.log_tail(2000).lower(), "the shipped second-scheduler RBAC is missing a rule"
    finally:
        control_plane.stop_scheduler("flexinfer-scheduler")


def test_the_extenders_node_informer_gets_metadata_only_from_kube_apiserver(homelab, api, wait_for):
    """The extender watches Nodes as client-go's metadata informers do (PartialObjectMetadata): the real API
    server answers the list and the watch with each Node's metadata alone, labels and our annotations intact,
    and no kubelet status."""
    events: list[tuple[str, dict]] = []
    inf = kube.Informer(api, "nodes", lambda kind, obj: events.append((kind, obj)), metadata_only=True, page_size=3)
    inf.start()
    try:
        assert inf.wait_synced(30)
        items = inf.items()
        assert len(items) == len(kube.list_objects(api, "nodes")) and inf.list_pages >= 2
        assert {i["kind"] for i in items} == {"PartialObjectMetadata"}
        assert all("status" not in i and "spec" not in i for i in items)
        maxwell = inf.get("", MAXWELL)
        assert maxwell is not None and maxwell["metadata"]["labels"][keys.LABEL_ARCH] == "sm_52"
        assert keys.ANN_FREE_MEMORY in maxwell["metadata"]["annotations"]
        probe = "e2e.flexinfer.ai/metadata-probe"
        kube.request(api, "PATCH", f"/api/v1/nodes/{MAXWELL}", body={"metadata": {"annotations": {probe: "1"}}},
                     content_type=kube.MERGE_PATCH)
        seen = wait_for("the annotation arrives through the metadata watch", lambda: next(
            (o for k, o in events if k == "MODIFIED" and o["metadata"].get("annotations", {}).get(probe)), None))
        assert seen["kind"] == "PartialObjectMetadata" and "status" not in seen
    finally:
        inf.stop()
        kube.request(api, "PATCH", f"/api/v1/nodes/{MAXWELL}",
                     body={"metadata": {"annotations": {"e2e.flexinfer.ai/metadata-probe": None}}},
                     content_type=kube.MERGE_PATCH)
