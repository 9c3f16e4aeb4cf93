"""Every manifest under daemonset/ is valid for a pinned Kubernetes version, and the trees hang together.

Built-in kinds (and the CRD itself, as apiextensions.k8s.io/v1) are validated with kubernetes-validate
against the Kubernetes JSON schemas of K8S_VERSION in strict mode (unknown fields are errors). Custom
kinds: Model against the CRD's own openAPIV3Schema; monitoring.coreos.com objects and
KubeSchedulerConfiguration against the minimal schemas in schemas/ (see schemas/README.md).
"""

from __future__ import annotations

import functools
import json
import pathlib
import re
import shutil
import subprocess
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from flexinfer import keys

try:  # tests/ as packages (tests/deploy/__init__.py) or as rootdir-relative modules
    from .deploy_helpers import DAEMONSET, K8S_VERSION, ROOT, crd_verdict, load_docs, load_kustomization, render
except ImportError:
    from deploy_helpers import DAEMONSET, K8S_VERSION, ROOT, crd_verdict, load_docs, load_kustomization, render

SCHEMAS = pathlib.Path(__file__).parent / "schemas"
OVERLAYS = sorted(p for p in (DAEMONSET / "overlays").iterdir() if (p / "kustomization.yaml").exists())
KUSTOMIZATIONS = sorted(p.parent for p in DAEMONSET.rglob("kustomization.yaml"))
RENDER_ROOTS = [*OVERLAYS, DAEMONSET / "base", DAEMONSET / "scheduler" / "second-scheduler"]
CUSTOM_SCHEMAS = {
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.json",
    ("kubescheduler.config.k8s.io/v1", "KubeSchedulerConfiguration"): "kubescheduler-config-v1.json",
    ("cert-manager.io/v1", "Issuer"): "certmanager-issuer.json",
    ("cert-manager.io/v1", "Certificate"): "certmanager-certificate.json",
}
# Metric names the components export (agent, extender, controller helpers' contract).
KNOWN_METRICS = {
    "flexinfer_gpu_memory_total_bytes", "flexinfer_gpu_memory_used_bytes", "flexinfer_gpu_memory_free_bytes",
    "flexinfer_gpu_memory_reserved_bytes", "flexinfer_gpu_power_usage_watts", "flexinfer_gpu_temperature_celsius",
    "flexinfer_gpu_utilization_ratio", "flexinfer_gpu_xid_errors_total", "flexinfer_gpu_healthy",
    "flexinfer_agent_sample_duration_seconds", "flexinfer_agent_node_writes_total",
    "flexinfer_extender_request_duration_seconds", "flexinfer_extender_verdicts_total",
    "flexinfer_extender_cache_age_seconds", "flexinfer_model_phase", "flexinfer_model_swap_duration_seconds",
    "flexinfer_group_preemptions_total", "flexinfer_extender_bad_requests_total",
}


@functools.cache
def custom_validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((SCHEMAS / name).read_text()))


def validate_object(obj: dict[str, Any]) -> None:
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key == ("ai.flexinfer/v1alpha2", "Model"):
        ok, why = crd_verdict(obj)
        assert ok, why
    elif key in CUSTOM_SCHEMAS:
        validator = custom_validator(CUSTOM_SCHEMAS[key])
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(obj)]
        assert not errors, errors
    else:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def _id(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


@functools.cache
def rendered(root: pathlib.Path) -> tuple[dict[str, Any], ...]:
    return tuple(render(root))


# --- structure -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kdir", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(DAEMONSET)))
def test_kustomization_references_exist(kdir: pathlib.Path) -> None:
    kust = load_kustomization(kdir)
    refs = [*kust.get("resources", []), *kust.get("components", []), *(p["path"] for p in kust.get("patches", []))]
    assert refs, f"{kdir}: empty kustomization"
    for ref in refs:
        path = (kdir / ref).resolve()
        assert path.exists(), f"{kdir}/kustomization.yaml: {ref} does not exist"
        if path.is_dir():
            assert (path / "kustomization.yaml").exists(), f"{ref} is a directory without kustomization.yaml"


def test_every_manifest_is_used_by_some_kustomization() -> None:
    used: set[pathlib.Path] = set()
    for kdir in KUSTOMIZATIONS:
        kust = load_kustomization(kdir)
        for ref in [*kust.get("resources", []), *(p["path"] for p in kust.get("patches", []))]:
            used.add((kdir / ref).resolve())
    optional = {DAEMONSET / "components" / "amd" / "privileged-patch.yaml",  # opt-in, commented out
                DAEMONSET / "scheduler" / "second-scheduler" / "scheduler-config.yaml"}  # embedded in configmap.yaml
    standalone = {DAEMONSET / "examples", DAEMONSET / "scheduler"}  # applied by hand (README)
    for path in DAEMONSET.rglob("*.yaml"):
        if path.name == "kustomization.yaml" or path in optional:
            continue
        if any(s in path.parents for s in standalone) and "second-scheduler" not in path.parts:
            continue
        assert path.resolve() in used, f"{path.relative_to(DAEMONSET)} is not referenced by any kustomization"


@pytest.mark.parametrize("root", RENDER_ROOTS, ids=lambda p: str(p.relative_to(DAEMONSET)))
def test_render_matches_kubectl_kustomize(root: pathlib.Path) -> None:
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl not on PATH: the built-in renderer is used alone")
    out = subprocess.run([kubectl, "kustomize", str(root)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr

    def norm(x: Any) -> Any:  # strategic merge may order merged named lists differently
        if isinstance(x, dict):
            return {k: norm(v) for k, v in x.items()}
        if isinstance(x, list):
            x = [norm(i) for i in x]
            if x and all(isinstance(i, dict) and "name" in i for i in x):
                x = sorted(x, key=lambda i: i["name"])
        return x

    def key(d: dict[str, Any]) -> tuple[str, str, str]:
        return d["kind"], d["metadata"]["name"], d["metadata"].get("namespace", "")

    theirs = {key(d): norm(d) for d in yaml.safe_load_all(out.stdout) if d}
    mine = {key(d): norm(d) for d in rendered(root)}
    assert mine == theirs


# --- schema validation ---------------------------------------------------------------------------
def _all_rendered() -> list[tuple[str, dict[str, Any]]]:
    """Every distinct rendered object once (identical base objects recur in each overlay)."""
    seen: dict[str, tuple[str, dict[str, Any]]] = {}
    for root in RENDER_ROOTS:
        for obj in rendered(root):
            seen.setdefault(json.dumps(obj, sort_keys=True), (f"{root.relative_to(DAEMONSET)}:{_id(obj)}", obj))
    return list(seen.values())


@pytest.mark.parametrize(("label", "obj"), _all_rendered(), ids=lambda v: v if isinstance(v, str) else "")
def test_rendered_object_is_valid(label: str, obj: dict[str, Any]) -> None:
    validate_object(obj)


STANDALONE = sorted(
    [*(DAEMONSET / "scheduler").glob("*.yaml"), DAEMONSET / "scheduler" / "second-scheduler" / "scheduler-config.yaml"]
)


@pytest.mark.parametrize("path", STANDALONE, ids=lambda p: str(p.relative_to(DAEMONSET)))
def test_standalone_file_is_valid(path: pathlib.Path) -> None:
    for obj in load_docs(path):
        validate_object(obj)


def test_validator_rejects_bad_objects() -> None:
    """The validators are real: a typo or a wrong type fails."""
    ds = next(o for o in rendered(OVERLAYS[0]) if o["kind"] == "DaemonSet")
    bad = json.loads(json.dumps(ds))
    bad["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_object(bad)
    rule = next(o for o in rendered(OVERLAYS[0]) if o["kind"] == "PrometheusRule")
    bad = json.loads(json.dumps(rule))
    bad["spec"]["groups"][0]["rules"][0]["annotation"] = {}
    with pytest.raises(AssertionError):
        validate_object(bad)
    (sched,) = load_docs(DAEMONSET / "scheduler" / "kube-scheduler-config.yaml")
    sched["extenders"][0]["nodeCacheCapible"] = True
    with pytest.raises(AssertionError):
        validate_object(sched)


# --- security and wiring -------------------------------------------------------------------------
def _workloads(objs: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] in ("DaemonSet", "Deployment")]


@pytest.mark.parametrize("root", RENDER_ROOTS, ids=lambda p: str(p.relative_to(DAEMONSET)))
def test_containers_are_locked_down(root: pathlib.Path) -> None:
    for w in _workloads(rendered(root)):
        pod = w["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, _id(w)
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, _id(w)
        assert not pod.get("hostNetwork") and not pod.get("hostPID"), _id(w)
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, _id(w)
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), _id(w)
            assert sc["allowPrivilegeEscalation"] is False and not sc.get("privileged"), _id(w)
            assert c["resources"]["requests"] and c["resources"]["limits"]["memory"], _id(w)
            assert c.get("livenessProbe") and c.get("readinessProbe"), _id(w)


def _cluster_role(objs: tuple[dict[str, Any], ...], name: str) -> list[dict[str, Any]]:
    return next(o for o in objs if o["kind"] == "ClusterRole" and o["metadata"]["name"] == name)["rules"]


def test_rbac_is_least_privilege() -> None:
    objs = rendered(DAEMONSET / "base")
    assert _cluster_role(objs, "flexinfer-agent") == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]}
    ]
    ext = _cluster_role(objs, "flexinfer-extender")
    assert {(r, tuple(x["verbs"])) for x in ext for r in x["resources"]} == {
        ("nodes", ("get", "list", "watch")), ("pods", ("get", "list", "watch"))}
    ctl = {r: set(x["verbs"]) for x in _cluster_role(objs, "flexinfer-controller") for r in x["resources"]}
    assert ctl["models"] == {"get", "list", "watch", "patch", "update"}
    assert ctl["models/status"] <= {"get", "patch", "update"}
    assert ctl["deployments"] == {"create", "get", "list", "watch", "update", "patch"}
    assert ctl["pods"] == {"get", "list", "watch"} and ctl["nodes"] == {"list", "watch"}
    assert not any("delete" in v for v in ctl.values()), "children are removed by owner references"
    for o in objs:
        for rule in o.get("rules", []) if o["kind"] in ("ClusterRole", "Role") else []:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], _id(o)
            assert "secrets" not in rule["resources"], _id(o)


def test_every_rbac_verb_is_commented() -> None:
    """The brief: each verb documented with why. Block-style verb lines must carry a comment."""
    for path in (DAEMONSET / "base" / "rbac").glob("*.yaml"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.match(r"^\s+- (get|list|watch|create|update|patch|delete)\b", line):
                assert "#" in line, f"{path.name}:{n}: verb without a reason"


def test_agent_overlays_device_access() -> None:
    def agents(root: pathlib.Path) -> dict[str, dict[str, Any]]:
        return {o["metadata"]["name"]: o for o in rendered(root) if o["kind"] == "DaemonSet"}

    nv = agents(DAEMONSET / "overlays" / "nvidia-only")["flexinfer-agent"]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in nv["containers"][0]["env"]}
    assert nv["runtimeClassName"] == "nvidia"
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all" and env["NVIDIA_DRIVER_CAPABILITIES"] == "utility"
    assert "NODE_NAME" in env
    # the only host path on an NVIDIA node: the kubelet's PodResources socket directory, read-only
    assert [v["hostPath"]["path"] for v in nv["volumes"] if "hostPath" in v] == ["/var/lib/kubelet/pod-resources"]
    pr = next(m for m in nv["containers"][0]["volumeMounts"] if m["mountPath"] == "/var/lib/kubelet/pod-resources")
    assert pr["readOnly"] is True
    sc = nv["containers"][0]["securityContext"]
    assert sc["runAsUser"] == 0 and sc["capabilities"]["drop"] == ["ALL"] and sc["allowPrivilegeEscalation"] is False

    amd = agents(DAEMONSET / "overlays" / "amd-only")["flexinfer-agent"]["spec"]["template"]["spec"]
    paths = {v["hostPath"]["path"] for v in amd["volumes"] if "hostPath" in v}
    assert paths == {"/dev/kfd", "/dev/dri", "/sys", "/var/lib/kubelet/pod-resources"}
    mounts = {m["mountPath"]: m for m in amd["containers"][0]["volumeMounts"]}
    assert mounts["/sys"]["readOnly"] is True
    assert amd["securityContext"]["supplementalGroups"] and "runtimeClassName" not in amd

    mixed = agents(DAEMONSET / "overlays" / "mixed")
    assert set(mixed) == {"flexinfer-agent", "flexinfer-agent-amd"}
    assert mixed["flexinfer-agent"]["spec"]["template"]["spec"]["runtimeClassName"] == "nvidia"
    assert "runtimeClassName" not in mixed["flexinfer-agent-amd"]["spec"]["template"]["spec"]
    sels = [d["spec"]["selector"]["matchLabels"] for d in mixed.values()]
    assert sels[0] != sels[1], "two DaemonSets with one selector would fight over pods"
    for ds in mixed.values():
        tpl = ds["spec"]["template"]
        assert ds["spec"]["selector"]["matchLabels"].items() <= tpl["metadata"]["labels"].items()
        assert tpl["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]


def test_agent_base_contract() -> None:
    (ds,) = [o for o in rendered(DAEMONSET / "base") if o["kind"] == "DaemonSet"]
    pod = ds["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["command"] == ["flexinfer-agent"]
    assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in c["env"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["metrics"] == 9400 and "grpc" in ports
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz" and c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    tol = {t["key"] for t in pod["tolerations"] if t["operator"] == "Exists" and t["effect"] == "NoSchedule"}
    assert {"nvidia.com/gpu", "amd.com/gpu"} <= tol


def test_extender_and_controller_shape() -> None:
    objs = rendered(DAEMONSET / "base")
    ext = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "flexinfer-extender")
    assert ext["spec"]["replicas"] == 2
    assert ext["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    pdb = next(o for o in objs if o["kind"] == "PodDisruptionBudget")
    assert pdb["spec"]["selector"] == ext["spec"]["selector"]
    svc = next(o for o in objs if o["kind"] == "Service" and o["metadata"]["name"] == "flexinfer-extender")
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"https": 8888, "read-only": 8889, "grpc": 9090}
    ctl = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "flexinfer-controller")
    assert ctl["spec"]["replicas"] == 1 and ctl["spec"]["strategy"] == {"type": "Recreate"}
    for w in _workloads(objs):
        assert w["spec"]["template"]["spec"]["serviceAccountName"] in {
            o["metadata"]["name"] for o in objs if o["kind"] == "ServiceAccount"}
        assert w["metadata"]["namespace"] == keys.SYSTEM_NAMESPACE  # the components' default is what ships


def test_monitors_select_real_ports() -> None:
    objs = rendered(OVERLAYS[0])
    ports: dict[str, set[str]] = {}
    for w in _workloads(objs):
        name = w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
        ports.setdefault(name, set()).update(p["name"] for c in w["spec"]["template"]["spec"]["containers"]
                                             for p in c.get("ports", []))
    for o in objs:
        if o["kind"] == "PodMonitor":
            app = o["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
            assert {e["port"] for e in o["spec"]["podMetricsEndpoints"]} <= ports[app], _id(o)
        if o["kind"] == "ServiceMonitor":
            svc = next(s for s in objs if s["kind"] == "Service"
                       and s["metadata"]["labels"].items() >= o["spec"]["selector"]["matchLabels"].items())
            assert {e["port"] for e in o["spec"]["endpoints"]} <= {p["name"] for p in svc["spec"]["ports"]}


# --- scheduler configuration ---------------------------------------------------------------------
def test_scheduler_configs_point_at_the_extender_service() -> None:
    svc = next(o for o in rendered(DAEMONSET / "base") if o["kind"] == "Service")
    http_port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "https")
    host = f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc:{http_port}"
    files = [*(DAEMONSET / "scheduler").glob("*.yaml"), DAEMONSET / "scheduler/second-scheduler/scheduler-config.yaml"]
    for path in files:
        (cfg,) = load_docs(path)
        (ext,) = cfg["extenders"]
        assert ext["urlPrefix"].split("://", 1)[1] == host, path.name
        assert ext["filterVerb"] == "filter" and ext["prioritizeVerb"] == "prioritize"
        assert ext["nodeCacheCapable"] is True and isinstance(ext["ignorable"], bool)
        assert {r["name"]: r["ignoredByScheduler"] for r in ext["managedResources"]} == {
            "nvidia.com/gpu": False, "amd.com/gpu": False}
        # mutual TLS by default: only kube-scheduler (its client certificate) can reserve GPU memory
        assert ext["enableHTTPS"] is True and ext["urlPrefix"].startswith("https://"), path.name
        tls = ext["tlsConfig"]
        assert tls.get("caFile") or tls.get("caData"), "no CA = kube-scheduler skips verification"
        assert tls["certFile"] and tls["keyFile"] and not tls.get("insecure"), path.name
        assert tls["serverName"] == host.rsplit(":", 1)[0], path.name
    (second,) = load_docs(DAEMONSET / "scheduler/second-scheduler/scheduler-config.yaml")
    assert second["profiles"] == [{"schedulerName": "flexinfer-scheduler", "percentageOfNodesToScore": 100}]


def test_second_scheduler_configmap_embeds_the_config() -> None:
    (cm,) = load_docs(DAEMONSET / "scheduler/second-scheduler/configmap.yaml")
    embedded = yaml.safe_load(cm["data"]["scheduler-config.yaml"])
    assert embedded == load_docs(DAEMONSET / "scheduler/second-scheduler/scheduler-config.yaml")[0]
    dep = load_docs(DAEMONSET / "scheduler/second-scheduler/deployment.yaml")[0]
    args = dep["spec"]["template"]["spec"]["containers"][0]["command"]
    mount = dep["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0]["mountPath"]
    assert f"--config={mount}/scheduler-config.yaml" in args


# --- alerts and dashboard ------------------------------------------------------------------------
def _rule_groups() -> list[dict[str, Any]]:
    (rule,) = load_docs(DAEMONSET / "base/monitoring/prometheusrule.yaml")
    return rule["spec"]["groups"]


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bflexinfer_[a-z_]+?(?=_bucket\b|_count\b|_sum\b|\b)", expr))


def test_alerts_have_runbooks_and_known_metrics() -> None:
    runbooks = (ROOT / "docs" / "runbooks.md").read_text()
    anchors = {h.strip().lower() for h in re.findall(r"^## (.+)$", runbooks, re.M)}
    alerts = [r for g in _rule_groups() for r in g["rules"]]
    required = {"FlexInferAgentAbsent", "FlexInferGPUUnhealthy", "FlexInferGPUXidErrors", "FlexInferGPUVRAMNearlyFull",
                "FlexInferModelSwapSlow", "FlexInferExtenderErrors", "FlexInferExtenderSlow"}
    assert required <= {a["alert"] for a in alerts}
    for a in alerts:
        ann = a["annotations"]
        assert ann["summary"] and ann["description"], a["alert"]
        assert a["labels"]["severity"] in {"info", "warning", "critical"}
        assert ann["runbook_url"].endswith("docs/runbooks.md#" + a["alert"].lower()), a["alert"]
        assert a["alert"].lower() in anchors, f"docs/runbooks.md has no section {a['alert']}"
        assert _metric_names(a["expr"]) <= KNOWN_METRICS, a["expr"]


def test_known_metrics_are_exported_by_the_code() -> None:
    """Alerts and dashboard use KNOWN_METRICS; each must be declared in agent/extender/controller metrics."""
    source = "\n".join((ROOT / d / "metrics.py").read_text() for d in ("agent", "extender", "controller"))
    declared = set(re.findall(r"\"(flexinfer_[a-z_]+)\"", source))
    declared |= {f"flexinfer_gpu_memory_{k}_bytes" for k in ("total", "used", "free", "reserved")
                 if "flexinfer_gpu_memory_{k}_bytes" in source}
    for name in KNOWN_METRICS:
        base = name.removesuffix("_total")
        assert name in declared or base in declared, f"{name} is not exported by any component"


def test_promtool_check_rules(tmp_path: pathlib.Path) -> None:
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool not installed (Debian package 'prometheus'; CI installs it)")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": _rule_groups()}))
    out = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in _rule_groups())} rules found" in out.stdout


def test_dashboard_json_and_configmap_agree() -> None:
    raw = (DAEMONSET / "base/monitoring/dashboard.json").read_text()
    dash = json.loads(raw)
    (cm,) = load_docs(DAEMONSET / "base/monitoring/dashboard-configmap.yaml")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(next(iter(cm["data"].values()))) == dash
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 12
    used: set[str] = set()
    for e in exprs:
        used |= _metric_names(e)
    assert used <= KNOWN_METRICS, used - KNOWN_METRICS
    assert {"flexinfer_gpu_memory_free_bytes", "flexinfer_extender_request_duration_seconds"} <= used
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


# --- container image -----------------------------------------------------------------------------
def test_dockerfile_matches_manifests_and_project() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "python:3.11-slim" in text
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert "pip install -e" not in text and "--editable" not in text
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    for src in re.findall(r"^COPY (?!--from)(.+?) \S+$", text, re.M):
        for item in src.split():
            assert (ROOT / item).exists(), f"Dockerfile copies missing {item}"
            assert f"!{item}" in ignore, f".dockerignore excludes {item}"
    import tomllib

    scripts = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])
    commands = {c["command"][0] for root in RENDER_ROOTS[:1] for w in _workloads(rendered(root))
                for c in w["spec"]["template"]["spec"]["containers"]}
    assert commands <= scripts, commands - scripts
    workloads = _workloads(rendered(RENDER_ROOTS[0]))
    users = {w["spec"]["template"]["spec"]["securityContext"]["runAsUser"] for w in workloads}
    assert users == {10001}


@pytest.mark.integration
def test_project_builds_as_a_wheel_with_the_entry_points(tmp_path: pathlib.Path) -> None:
    """What the Dockerfile's build stage does (`pip wheel --no-deps .`), on a copy of the context."""
    import sys
    import zipfile

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    for item in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / item, ctx / item)
    for item in ("flexinfer", "agent", "extender", "controller", "proxy"):
        shutil.copytree(ROOT / item, ctx / item, symlinks=False,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "--wheel-dir", str(tmp_path / "w"), str(ctx)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    (whl,) = (tmp_path / "w").glob("flexinfer-*.whl")
    with zipfile.ZipFile(whl) as z:
        names = z.namelist()
        eps = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    for script in ("flexinfer", "flexinfer-agent", "flexinfer-extender", "flexinfer-controller", "flexinfer-proxy"):
        assert re.search(rf"^{script} = ", eps, re.M), script
    assert any(n.startswith("flexinfer/agent/") for n in names)
    assert any(n.startswith("flexinfer/data/") and n.endswith(".yaml") for n in names)


def _extender(objs: Any) -> dict[str, Any]:
    return next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "flexinfer-extender")


def test_extender_serves_the_scheduling_verbs_over_mutual_tls_by_default(tmp_path: pathlib.Path) -> None:
    """Every overlay: the extender requires client certificates from the CA in its Secret, probes and scrapes use
    the plaintext read-only port, the replicas elect a leader (with a Role for their Lease), and the CLI accepts
    the args and passes its own exposure check with the mounted files."""
    from flexinfer.extender.main import check_exposure
    from flexinfer.extender.main import main as extender_main
    from flexinfer.extender.tls import TlsFiles

    for root in OVERLAYS:
        objs = rendered(root)
        pod = _extender(objs)["spec"]["template"]["spec"]
        c = pod["containers"][0]
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        secret = next(v["secret"]["secretName"] for v in pod["volumes"] if v["name"] == "tls")
        assert secret == "flexinfer-extender-tls" and pod["securityContext"]["fsGroup"] == 10001
        args = dict(a.split("=", 1) if "=" in a else (a, "") for a in c["args"])
        for flag, key in (("--tls-cert", "tls.crt"), ("--tls-key", "tls.key"), ("--client-ca-file", "ca.crt")):
            assert args[flag] == f"{mounts['tls']}/{key}", flag
        assert "--leader-elect" in args and args["--advertise-address"] == "$(POD_IP)"
        assert args["--peer-server-name"] == "flexinfer-extender.flexinfer-system.svc"
        assert c["livenessProbe"]["httpGet"]["port"] == c["readinessProbe"]["httpGet"]["port"] == "read-only"
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["read-only"] == int(args["--read-only-port"]) and ports["https"] == int(args["--http-port"])
        sm = next(o for o in objs if o["kind"] == "ServiceMonitor" and o["metadata"]["name"] == "flexinfer-extender")
        assert [e["port"] for e in sm["spec"]["endpoints"]] == ["read-only"]
        role = next(o for o in objs
                    if o["kind"] == "Role" and o["metadata"]["name"] == "flexinfer-extender-leader-election")
        assert {n for r in role["rules"] for n in r.get("resourceNames", [])} == {"flexinfer-extender"}
    for key in ("tls.crt", "tls.key", "ca.crt"):
        (tmp_path / key).write_text("x")
    real = [a.replace(f"{mounts['tls']}/", f"{tmp_path}/") for a in c["args"]]
    p = extender_main.make_context("flexinfer-extender", real).params
    files = TlsFiles(p["tls_cert"], p["tls_key"], p["client_ca_file"]).check()
    check_exposure(p["bind_address"], files, p["allow_unauthenticated"])  # raises without mutual TLS


def test_extender_cert_manager_component(tmp_path: pathlib.Path) -> None:
    """components/extender-cert-manager on top of an overlay: valid objects; the Secrets it makes are the ones the
    extender mounts and the scheduler configs expect, for the Service name kube-scheduler verifies."""
    import os

    overlay = tmp_path / "cm"
    overlay.mkdir()
    rel = os.path.relpath(DAEMONSET, overlay)
    (overlay / "kustomization.yaml").write_text(
        f"resources: [{rel}/overlays/nvidia-only]\ncomponents: [{rel}/components/extender-cert-manager]\n")
    objs = render(overlay)
    for obj in objs:
        validate_object(obj)
    certs = {o["metadata"]["name"]: o["spec"] for o in objs if o["kind"] == "Certificate"}
    assert all(o["metadata"]["namespace"] == "flexinfer-system" for o in objs if o["kind"] in ("Certificate", "Issuer"))
    server, client = certs["flexinfer-extender-tls"], certs["flexinfer-scheduler-client"]
    mounted = next(v["secret"]["secretName"] for v in _extender(objs)["spec"]["template"]["spec"]["volumes"]
                   if v["name"] == "tls")
    assert server["secretName"] == mounted
    assert {"server auth", "client auth"} <= set(server["usages"]) and "server auth" not in client["usages"]
    assert "flexinfer-extender.flexinfer-system.svc" in server["dnsNames"]
    assert server["issuerRef"]["name"] == client["issuerRef"]["name"] == "flexinfer-extender-ca"
    assert certs["flexinfer-extender-ca"]["isCA"] is True
    (dep,) = load_docs(DAEMONSET / "scheduler/second-scheduler/deployment.yaml")
    secrets = {v["secret"]["secretName"] for v in dep["spec"]["template"]["spec"]["volumes"] if "secret" in v}
    assert secrets == {client["secretName"]}
    if shutil.which("kubectl"):
        out = subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "kind: Certificate" in out.stdout


def test_hack_extender_certs_script_makes_the_secrets_layout(tmp_path: pathlib.Path) -> None:
    """hack/extender-certs.sh (no cert-manager): the files chain to the CA, with the usages and SAN the
    manifests rely on (tests/extender/test_who_can_reserve.py serves real mutual TLS with them)."""
    if not shutil.which("openssl"):
        pytest.skip("openssl not installed")
    out = subprocess.run(["bash", str(ROOT / "hack/extender-certs.sh"), "--out", str(tmp_path), "--no-apply"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ext = x509.load_pem_x509_certificate((tmp_path / "extender.crt").read_bytes())
    sched = x509.load_pem_x509_certificate((tmp_path / "scheduler.crt").read_bytes())
    usages = set(ext.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= usages
    sans = ext.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert "flexinfer-extender.flexinfer-system.svc" in sans
    assert set(sched.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == {
        ExtendedKeyUsageOID.CLIENT_AUTH}
    assert oct((tmp_path / "ca.key").stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("root", OVERLAYS, ids=lambda p: str(p.relative_to(DAEMONSET)))
def test_container_args_are_accepted_by_the_real_clis(root: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every flag and FLEXINFER_* env var in the manifests parses with the entry point's click command."""
    import importlib
    import tomllib

    import click

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for w in _workloads(rendered(root)):
        for c in w["spec"]["template"]["spec"]["containers"]:
            if c["command"][0] not in scripts:
                continue  # e.g. kube-scheduler
            module, func = scripts[c["command"][0]].split(":")
            cmd: click.Command = getattr(importlib.import_module(module), func)
            with monkeypatch.context() as m:
                for e in c.get("env", []):
                    if "value" in e:
                        m.setenv(e["name"], e["value"])
                    elif e["name"] == "NODE_NAME":
                        m.setenv("NODE_NAME", "node-a")
                ctx = cmd.make_context(c["command"][0], list(c.get("args", [])))
            ports = {p["containerPort"] for p in c["ports"]}
            for opt in ("metrics_port", "grpc_port", "port", "http_port", "read_only_port"):
                if ctx.params.get(opt):
                    assert ctx.params[opt] in ports, f"{_id(w)}: --{opt} {ctx.params[opt]} not a container port"
            if "vendor" in ctx.params and c["command"][0] == "flexinfer-agent" and root.name != "mixed":
                assert ctx.params["vendor"] == root.name.split("-")[0]
