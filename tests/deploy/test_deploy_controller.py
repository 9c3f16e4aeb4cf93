"""Controller conventions in the shipped manifests (issue 15 point 7): metric labels that survive the
Prometheus Operator, alerts and dashboard that tell Models of different namespaces apart, alert text that
matches the shipped scheduler configuration, RBAC for what the controller does."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

try:
    from .deploy_helpers import DAEMONSET, load_docs, render
except ImportError:
    from deploy_helpers import DAEMONSET, load_docs, render

MONITORING = DAEMONSET / "base" / "monitoring"
# Labels the Prometheus Operator (and Prometheus' own target labels) set on every scraped series: a metric
# label with one of these names is overwritten (or renamed exported_*), and Models in different namespaces
# merge into one series.
TARGET_LABELS = {"namespace", "pod", "service", "job", "instance", "container", "endpoint", "node"}


def _rules() -> list[dict[str, Any]]:
    doc = load_docs(MONITORING / "prometheusrule.yaml")[0]
    return [r for g in doc["spec"]["groups"] for r in g["rules"]]


def _controller_metric_labels() -> dict[str, tuple[str, ...]]:
    from flexinfer.controller.metrics import ControllerMetrics

    out = {}
    for collector in ControllerMetrics().registry._collector_to_names:
        names = getattr(collector, "_labelnames", None)
        if names is not None:
            out[collector._name] = tuple(names)
    return out


def test_controller_metrics_use_no_target_label_names() -> None:
    labels = _controller_metric_labels()
    assert "flexinfer_model_phase" in labels and "model_namespace" in labels["flexinfer_model_phase"]
    for name, names in labels.items():
        assert not set(names) & TARGET_LABELS, f"{name} uses {set(names) & TARGET_LABELS}"


def _controller_exprs() -> list[str]:
    controller_metrics = set(_controller_metric_labels())
    exprs = [r["expr"] for r in _rules()]
    dash = json.loads((MONITORING / "dashboard.json").read_text())
    exprs += [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    return [e for e in exprs if any(m in e for m in controller_metrics)]


def test_alerts_and_dashboard_group_models_by_model_namespace() -> None:
    exprs = _controller_exprs()
    assert exprs
    for e in exprs:
        for by in re.findall(r"\bby\s*\(([^)]*)\)", e):
            cols = {c.strip() for c in by.split(",")}
            assert "namespace" not in cols, e
            if "model" in cols or "group" in cols:
                assert "model_namespace" in cols, f"same-named Models/groups of two namespaces merge: {e}"
    failed = next(r for r in _rules() if r["alert"] == "FlexInferModelFailed")
    assert "model_namespace" in failed["annotations"]["summary"]


def test_http_timeout_in_alert_text_is_the_shipped_one() -> None:
    configs = [yaml.safe_load(f.read_text()) for f in (DAEMONSET / "scheduler").glob("kube-scheduler-config*.yaml")]
    assert configs
    shipped = {e["httpTimeout"] for c in configs for e in c["extenders"]}
    assert len(shipped) == 1
    for r in _rules():
        for value in re.findall(r"httpTimeout \(([^)]*)\)", r["annotations"]["description"]):
            assert value == next(iter(shipped)), r["alert"]
    slow = next(r for r in _rules() if r["alert"] == "FlexInferExtenderSlow")
    assert "httpTimeout" in slow["annotations"]["description"]


def _controller_rules() -> dict[str, set[str]]:
    role = next(o for o in render(DAEMONSET / "base")
                if o["kind"] == "ClusterRole" and o["metadata"]["name"] == "flexinfer-controller")
    out: dict[str, set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                out.setdefault(f"{group}/{res}" if group else res, set()).update(rule["verbs"])
    return out


def test_controller_rbac_covers_what_it_does() -> None:
    rules = _controller_rules()
    assert "create" in rules["events"]  # PreemptionBlocked, OwnershipConflict, RolledBack ... Events
    assert {"list", "watch"} <= rules["nodes"]  # fit checks: the extender's policy over the node cache
    assert {"create", "get", "list", "watch"} <= rules["batch/jobs"]  # cache prefetch and check Jobs
    assert {"get", "list"} <= rules["storage.k8s.io/storageclasses"]  # the cache PVC's access mode
    assert not any("delete" in v for v in rules.values())


def test_status_the_controller_writes_passes_the_crd_schema(fake_api, kube_api) -> None:
    """Every Model status the controller writes (conditions as metav1.Condition included) is accepted by the
    CRD's schema: Ready, Idle and Failed (a crash-looping server)."""
    try:
        from .deploy_helpers import crd_verdict
    except ImportError:
        from deploy_helpers import crd_verdict
    from flexinfer.controller.reconcile import Controller

    from flexinfer import keys

    def model(name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": keys.MODEL_API_VERSION, "kind": keys.MODEL_KIND,
                "metadata": {"name": name, "namespace": "ai"}, "spec": spec}

    fake_api.put_object(model("always", {"backend": "llamacpp", "source": "HF://a/b-7b-GGUF",
                                         "gpu": {"vendor": "amd"}, "serverless": {"minReplicas": 1}}))
    fake_api.put_object(model("idle", {"backend": "ollama", "source": "ollama://llama3:8b"}))
    fake_api.put_object(model("broken", {"backend": "vllm", "source": "HF://a/b", "gpu": {"vendor": "nvidia"},
                                         "serverless": {"minReplicas": 1}}))
    fake_api.put_object({"apiVersion": "v1", "kind": "Pod",
                         "metadata": {"name": "broken-1", "namespace": "ai", "labels": {keys.LABEL_MODEL: "broken"}},
                         "status": {"phase": "Running", "conditions": [{"type": "PodScheduled", "status": "True"}],
                                    "containerStatuses": [{"state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}})
    ctl = Controller(kube_api, namespace="ai", clock=lambda: 1_800_000_000.0)
    ctl.reconcile_once()
    fake_api.patch_object("deployments", "always", {"status": {"replicas": 1, "readyReplicas": 1}}, "ai")
    ctl.reconcile_once()
    phases = set()
    for obj in fake_api.list_objects("models", "ai"):
        phases.add(obj["status"]["phase"])
        ok, why = crd_verdict({k: v for k, v in obj.items() if k in ("apiVersion", "kind", "metadata", "spec",
                                                                        "status")})
        assert ok, (obj["metadata"]["name"], why)
    assert phases == {"Ready", "Idle", "Failed"}


def test_nvidia_overlays_give_model_pods_the_nvidia_runtime_class() -> None:
    """The agent needs runtimeClassName nvidia on NVIDIA nodes; so do the model pods (the controller's
    --runtime-class, here through its environment variable), and the value parses as the CLI does."""
    from flexinfer.controller.main import render_options

    for overlay, expected in (("nvidia-only", {"nvidia": "nvidia"}), ("mixed", {"nvidia": "nvidia"}),
                              ("amd-only", {})):
        dep = next(o for o in render(DAEMONSET / "overlays" / overlay)
                   if o["kind"] == "Deployment" and o["metadata"]["name"] == "flexinfer-controller")
        env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0].get("env", [])}
        items = env["FLEXINFER_RUNTIME_CLASS"].split() if "FLEXINFER_RUNTIME_CLASS" in env else []
        assert dict(render_options(items, [], "").runtime_class) == expected, overlay
