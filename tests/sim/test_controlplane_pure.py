"""The pure parts of the real-control-plane harness (flexinfer.sim.controlplane / realcluster) and of the
scheduler bench: what is applied from daemonset/, how the shipped scheduler configs are rewritten, the GPU
load simulator's bookkeeping. The processes themselves are exercised by tests/e2e."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bench import scheduler_bench
from flexinfer import keys
from flexinfer.fleet import default_fleet_path, load_fleet
from flexinfer.sim import controlplane as cpmod
from flexinfer.sim.realcluster import GpuLoad, kwok_node_objects, pod_gpu_request


def test_install_objects_are_the_shipped_crd_rbac_and_namespace() -> None:
    objs = cpmod.shipped_install_objects()
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objs}
    assert ("CustomResourceDefinition", "models.ai.flexinfer") in kinds
    for sa in ("flexinfer-agent", "flexinfer-extender", "flexinfer-controller", "flexinfer-scheduler"):
        assert ("ServiceAccount", sa) in kinds
    assert all(o["kind"] in cpmod.INSTALL_KINDS for o in objs)
    # kustomize's namespace transformer: namespaced objects and ServiceAccount subjects in flexinfer-system
    for o in objs:
        if o["kind"] in ("ServiceAccount", "Role", "RoleBinding") and o["metadata"]["name"].startswith("flexinfer"):
            assert o["metadata"]["namespace"] in ("flexinfer-system", "kube-system"), o["metadata"]
        for s in o.get("subjects") or []:
            if s.get("kind") == "ServiceAccount":
                assert s["namespace"] == "flexinfer-system"


def test_render_kustomization_refuses_what_it_cannot_render(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({"resources": [], "patches": [{"path": "x"}]}))
    with pytest.raises(cpmod.ControlPlaneError, match="patches"):
        cpmod.render_kustomization(tmp_path)


@pytest.mark.parametrize("variant", sorted(cpmod.SCHEDULER_CONFIGS))
def test_scheduler_config_changes_only_where_it_runs(variant: str, tmp_path: Path) -> None:
    shipped = cpmod.shipped_scheduler_config(variant)
    cfg = cpmod.scheduler_config(variant, "https://127.0.0.1:1234", tmp_path / "k.kubeconfig", tls_dir=tmp_path)
    assert cfg["clientConnection"]["kubeconfig"] == str(tmp_path / "k.kubeconfig")
    (ext,), (ship,) = cfg["extenders"], shipped["extenders"]
    assert ext["urlPrefix"] == "https://127.0.0.1:1234"
    changed = {k for k in ship if ship[k] != ext.get(k)}
    assert changed <= {"urlPrefix", "tlsConfig"}, changed
    for k, v in (ship.get("tlsConfig") or {}).items():
        if k in ("caFile", "certFile", "keyFile"):
            assert ext["tlsConfig"][k] == str(tmp_path / Path(v).name)
        else:
            assert ext["tlsConfig"][k] == v  # serverName, insecure: as shipped
    assert {k: v for k, v in cfg.items() if k not in ("extenders", "clientConnection")} == \
        {k: v for k, v in shipped.items() if k not in ("extenders", "clientConnection")}
    baseline = cpmod.scheduler_config(variant, None, tmp_path / "k.kubeconfig")
    assert "extenders" not in baseline and baseline["profiles"] == shipped["profiles"]


def test_object_path() -> None:
    sa = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "a", "namespace": "ns"}}
    assert cpmod.object_path(sa) == "/api/v1/namespaces/ns/serviceaccounts/a"
    assert cpmod.object_path({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                              "metadata": {"name": "r"}}) == "/apis/rbac.authorization.k8s.io/v1/clusterroles/r"
    with pytest.raises(cpmod.ControlPlaneError, match="Secret"):
        cpmod.object_path({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}})


def test_kwok_nodes_carry_the_fleet_capacity_and_no_flexinfer_keys() -> None:
    fleet = load_fleet(default_fleet_path())
    nodes = {n["metadata"]["name"]: n for n in kwok_node_objects(fleet)}
    assert set(nodes) == {n.name for n in fleet.nodes}
    for fn in fleet.nodes:
        obj = nodes[fn.name]
        assert obj["metadata"]["annotations"][cpmod.KWOK_NODE_ANNOTATION[0]] == cpmod.KWOK_NODE_ANNOTATION[1]
        assert not any(k.startswith(keys.PREFIX) for k in obj["metadata"]["annotations"])
        assert obj["status"]["conditions"] == []
        if fn.taints:
            assert obj["spec"]["taints"] == fn.taints
    gtx = nodes["cblevins-gtx980ti"]["status"]["capacity"]
    assert gtx[keys.RESOURCE_NVIDIA] == str(fleet.node("cblevins-gtx980ti").gpu_replicas)


def test_gpu_load_takes_and_gives_back_memory(tmp_path: Path) -> None:
    fleet = load_fleet(default_fleet_path())
    load = GpuLoad(None, fleet, tmp_path / "fleet.yaml")
    gpu = fleet.node("cblevins-radeonvii").gpus[0]
    pod = {"metadata": {"name": "m", "namespace": "ns", "annotations": {keys.POD_VRAM_ESTIMATE_MB: "12000"}},
           "spec": {"nodeName": "cblevins-radeonvii",
                    "containers": [{"resources": {"limits": {keys.RESOURCE_AMD: "1"}}}]},
           "status": {"phase": "Running"}}
    assert pod_gpu_request(pod) == ("amd", 1)
    load.on_event("ADDED", pod)
    assert load.used_mib("cblevins-radeonvii") == gpu.used_mi_b + 12000
    written = load_fleet(tmp_path / "fleet.yaml").node("cblevins-radeonvii").gpus[0].used_mi_b
    assert written == gpu.used_mi_b + 12000  # what the agent's FollowFleetFile reads
    load.on_event("ADDED", pod)  # the same pod again: counted once
    assert load.used_mib("cblevins-radeonvii") == gpu.used_mi_b + 12000
    load.on_event("DELETED", pod)
    assert load.used_mib("cblevins-radeonvii") == gpu.used_mi_b
    # a pending pod takes nothing; memory never exceeds the card
    load.on_event("ADDED", {**pod, "status": {"phase": "Pending"}})
    assert load.used_mib("cblevins-radeonvii") == gpu.used_mi_b
    big = {**pod, "metadata": {**pod["metadata"], "annotations": {keys.POD_VRAM_ESTIMATE_MB: "99999"}}}
    load.on_event("ADDED", big)
    assert load.used_mib("cblevins-radeonvii") == gpu.total_mi_b


def test_scheduler_bench_summary_and_target() -> None:
    runs = []
    for mode, pps in (("extender", 80.0), ("none", 100.0)):
        for rep in range(2):
            runs.append({"nodes": 1000, "variant": "qps-1000", "mode": mode, "rep": rep, "pods_per_s": pps + rep,
                         "wait_p99_ms": 100.0, "extender_ms_per_pod": 2.0 if mode == "extender" else 0.0,
                         "scheduler_ms_per_attempt": 5.0})
    (row,) = scheduler_bench.summarize(runs)
    assert row["pods_per_s_extender"] == 80.5 and row["pods_per_s_none"] == 100.5
    assert row["extender_cost"] == round(1 - 80.5 / 100.5, 3)
    ((name, measured, limit, unit, _detail),) = scheduler_bench.targets({"scheduler": {"summary": [row]}})
    assert "1000 nodes" in name and unit == "%" and limit == 20.0 and measured == round(100 * row["extender_cost"], 1)
    assert scheduler_bench.percentile([1.0, 2.0, 3.0, 4.0], 99) == 4.0


def test_http_ok_is_a_readiness_check() -> None:
    import http.server
    import threading
    import urllib.error

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/readyz" else 503)
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        assert cpmod.http_ok(f"{url}/readyz")() is True
        assert cpmod.http_ok(f"{url}/livez")() is False  # an error status: not ready yet
        port = cpmod.free_port()
        with pytest.raises(urllib.error.URLError):  # nobody listening: wait_until keeps the error for its message
            cpmod.http_ok(f"http://127.0.0.1:{port}/readyz", 1)()
    finally:
        server.shutdown()
        server.server_close()


def test_pod_gpu_request_counts_as_the_extender_does() -> None:
    def pod(*containers: dict, init: tuple[dict, ...] = ()) -> dict:
        return {"spec": {"containers": [{"name": f"c{i}", "resources": r} for i, r in enumerate(containers)],
                         "initContainers": [{"name": "init", "resources": r} for r in init]}}

    nv = keys.RESOURCE_NVIDIA
    assert pod_gpu_request(pod({"limits": {nv: "1"}, "requests": {nv: "1"}}, {"requests": {nv: 2}})) == ("nvidia", 3)
    assert pod_gpu_request(pod({"limits": {nv: "1"}}, init=({"limits": {nv: "4"}},))) == ("nvidia", 4)
    assert pod_gpu_request(pod({"limits": {nv: "half"}})) == ("", 0)  # the extender names that pod's error
    assert pod_gpu_request(pod({"requests": {"cpu": "1"}})) == ("", 0)


def test_object_path_uses_the_one_resource_table() -> None:
    from flexinfer import kube

    for res in kube.RESOURCES.values():  # every kind the adapters know can be applied, at its own path
        obj = {"apiVersion": res.api_version, "kind": res.kind, "metadata": {"name": "x", "namespace": "ns"}}
        assert cpmod.object_path(obj) == kube.resource_path(res, "ns", "x")
    with pytest.raises(cpmod.ControlPlaneError, match="extensions/v1beta1 Deployment"):
        cpmod.object_path({"apiVersion": "extensions/v1beta1", "kind": "Deployment", "metadata": {"name": "d"}})


def test_log_tail_reads_back_as_far_as_the_lines_asked_for(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    proc = cpmod.Process("x", ["true"], log)
    assert proc.log_tail() == ""  # no log yet
    lines = [f"line {i} " + "x" * 100 for i in range(5000)]  # ~550 KiB: several read blocks
    lines[3] = "E0101 lease.go: leases is forbidden"
    log.write_text("\n".join(lines) + "\n")
    assert proc.log_tail(2).splitlines() == lines[-2:]
    assert proc.log_tail(3000).splitlines() == lines[-3000:]
    whole = proc.log_tail(200000)
    assert whole.splitlines() == lines and "forbidden" in whole
