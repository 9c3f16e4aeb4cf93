"""The proxy's manifests: least-privilege RBAC, the listener the manifest opens, the shutdown budget."""

from __future__ import annotations

from click.testing import CliRunner
from flexinfer.proxy.main import main

from ..deploy.deploy_helpers import DAEMONSET
from ..deploy.test_deploy_manifests import rendered


def _objs() -> tuple[dict, ...]:
    return rendered(DAEMONSET / "base")


def _rules(kind: str, name: str) -> set[tuple[str, str, str]]:
    obj = next(o for o in _objs() if o["kind"] == kind and o["metadata"]["name"] == name)
    return {(g, r, v) for rule in obj["rules"] for g in rule["apiGroups"] for r in rule["resources"]
            for v in rule["verbs"]}


def test_proxy_rbac_is_least_privilege() -> None:
    assert _rules("Role", "flexinfer-proxy") == {
        ("ai.flexinfer", "models", "list"), ("ai.flexinfer", "models", "watch"), ("ai.flexinfer", "models", "patch"),
        ("ai.flexinfer", "models/status", "patch"),
        ("discovery.k8s.io", "endpointslices", "list"), ("discovery.k8s.io", "endpointslices", "watch"),
        ("", "pods", "list"), ("", "pods", "watch")}  # the fit check's bound model pods, this namespace only
    assert _rules("ClusterRole", "flexinfer-proxy-nodes") == {("", "nodes", "list"), ("", "nodes", "watch")}
    assert not any(o["kind"] == "ClusterRole" and o["metadata"]["name"] == "flexinfer-proxy" for o in _objs())
    binding = next(o for o in _objs() if o["kind"] == "RoleBinding" and o["metadata"]["name"] == "flexinfer-proxy")
    assert binding["metadata"]["namespace"] == "flexinfer-system"


def test_proxy_deployment_listens_where_the_service_and_probes_look() -> None:
    objs = _objs()
    dep = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "flexinfer-proxy")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    ctx = main.make_context("flexinfer-proxy", [a.replace("$(POD_NAMESPACE)", "ns") for a in c["args"]])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ctx.params["bind_address"] == "0.0.0.0" and ctx.params["namespace"] == "ns"
    assert ports == {"http": ctx.params["http_port"], "metrics": ctx.params["metrics_port"]}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert pod["terminationGracePeriodSeconds"] > ctx.params["shutdown_grace_seconds"]
    svc = next(o for o in objs if o["kind"] == "Service" and o["metadata"]["name"] == "flexinfer-proxy")
    assert [p["targetPort"] for p in svc["spec"]["ports"]] == ["http"]  # the API only; metrics per pod
    assert dep["spec"]["replicas"] >= 2
    assert any(o["kind"] == "PodMonitor" and o["metadata"]["name"] == "flexinfer-proxy"
               for o in rendered(DAEMONSET / "overlays" / "mixed"))


def test_cli_defaults_are_safe() -> None:
    ctx = main.make_context("flexinfer-proxy", [])
    assert ctx.params["bind_address"] == "127.0.0.1"  # loopback unless the manifest says otherwise
    assert ctx.params["max_body_bytes"] == 16 * 1024 * 1024 and ctx.params["max_queue_per_model"] == 100
    assert ctx.params["stall_timeout_seconds"] == 120 and ctx.params["clamp_margin_tokens"] == 512


def test_api_keys_file_is_validated(tmp_path) -> None:
    short = tmp_path / "keys"
    short.write_text("# comment\nabc\n")
    r = CliRunner().invoke(main, ["--api-keys-file", str(short), "--kube-server", "http://127.0.0.1:9"])
    assert r.exit_code == 2 and "shorter than 16 characters" in r.output
    r = CliRunner().invoke(main, ["--api-keys-file", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "missing" in r.output
