"""`flexinfer explain` and `flexinfer activate`."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click
import msgspec
import yaml

from flexinfer import freshness, keys
from flexinfer.cli.output import OUTPUT_OPTION, console, emit, table
from flexinfer.cli.sources import node_objects, source_options
from flexinfer.errors import ParseError, ValidationError
from flexinfer.model import parse_model
from flexinfer.preflight import Level

EXIT_NOTHING_FITS = int(Level.BLOCK)  # the same number as preflight's BLOCK


def pod_from_model_doc(doc: dict[str, Any]) -> dict[str, Any]:
    """The pod the controller would create for a Model (its Deployment's template)."""
    from flexinfer.controller.render import render_deployment

    model = parse_model(doc, allow_never_runs=True)
    dep = render_deployment(model, 1)
    tmpl = dep["spec"]["template"]
    return {"metadata": {"name": f"{model.name}-explain", "namespace": model.namespace, **tmpl["metadata"]},
            "spec": tmpl["spec"]}


def load_pod(target: str, kube_server: str | None, kubeconfig: str | None, namespace: str) -> dict[str, Any]:
    """A Pod or Model from a file (YAML/JSON), or `pod/NAME` / `model/NAME` from the cluster."""
    path = Path(target)
    if path.exists():
        try:
            doc = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise click.ClickException(f"{target}: {e}") from None
        if not isinstance(doc, dict):
            raise click.ClickException(f"{target}: expected a Pod or a Model")
        if doc.get("kind") == keys.MODEL_KIND:
            try:
                return pod_from_model_doc(doc)
            except ValidationError as e:
                raise click.ClickException(f"{target}: {e}") from None
        return doc
    kind, _, name = target.partition("/")
    if not name or kind not in ("pod", "pods", "model", "models", "mdl"):
        raise click.ClickException(f"{target}: not a file; use pod/NAME or model/NAME for a cluster object")
    from flexinfer import kube

    api = kube.api_client(server=kube_server, kubeconfig=kubeconfig)
    obj = kube.get_object(api, "pods" if kind.startswith("pod") else keys.MODEL_PLURAL, name, namespace)
    if obj is None:
        raise click.ClickException(f"{kind} {namespace}/{name} not found")
    return pod_from_model_doc(obj) if not kind.startswith("pod") else obj


def bound_pods(kube_server: str | None, kubeconfig: str | None) -> list[dict[str, Any]]:
    """The cluster's bound, unfinished pods, as the extender watches them; [] (with a note) when they cannot be
    listed: then only the agents' numbers count."""
    from flexinfer import kube
    from flexinfer.extender.commitments import BOUND_PODS_SELECTOR

    try:
        api = kube.api_client(server=kube_server, kubeconfig=kubeconfig)
        return kube.list_objects(api, "pods", field_selector=BOUND_PODS_SELECTOR)
    except kube.KubeError as e:
        click.echo(f"note: cannot list pods ({e}); VRAM committed to bound pods is not counted", err=True)
        return []


@click.command()
@click.argument("target")
@source_options
@click.option("-n", "--namespace", default="default", help="Namespace of pod/NAME or model/NAME.")
@click.option("--extender-grpc", metavar="HOST:PORT", help="Ask a running extender over gRPC instead.")
@click.option("--strategy", type=click.Choice(["binpack", "spread"]), default="binpack",
              help="Scoring strategy (the extender's --strategy).")
@click.option("--max-state-age-seconds", default=freshness.MAX_STATE_AGE_SECONDS,
              help="GPU state older than this is stale (the extender's rule).")
@OUTPUT_OPTION
def explain(target: str, fleet: str | None, nodes_from: str | None, cluster: bool, kube_server: str | None,
            kubeconfig: str | None, namespace: str, extender_grpc: str | None, strategy: str,
            max_state_age_seconds: float, output: str) -> None:
    """Every node's verdict and reason for a POD or MODEL (file, pod/NAME or model/NAME)."""
    pod = load_pod(target, kube_server, kubeconfig, namespace)
    rows: list[dict[str, Any]] = []
    if extender_grpc:
        import grpc

        from flexinfer.api.v1 import scheduler_extender_pb2 as pb
        from flexinfer.api.v1 import scheduler_extender_pb2_grpc as pb_grpc

        with grpc.insecure_channel(extender_grpc) as ch:
            try:
                res = pb_grpc.SchedulerExtenderStub(ch).Explain(
                    pb.ExplainRequest(pod=pb.PodSource(pod_json=msgspec.json.encode(pod))), timeout=10)
            except grpc.RpcError as e:
                raise click.ClickException(f"extender {extender_grpc}: {e.code().name}: {e.details()}") from None
        if res.error:
            raise click.ClickException(res.error)
        rows = [{"node": v.node, "verdict": "pass" if v.feasible else ("unresolvable" if v.unresolvable else "failed"),
                 "score": v.score if v.feasible else None, "gpus": v.gpu, "reason": v.detail or v.reason}
                for v in res.verdicts]
    else:
        from flexinfer.extender.cache import NodeCache
        from flexinfer.extender.pod import requirements_from_dict
        from flexinfer.extender.policy import PolicyConfig
        from flexinfer.extender.service import Extender

        now = time.time()
        cache = NodeCache()
        cache.replace_all(node_objects(fleet, nodes_from, cluster, kube_server, kubeconfig, now))
        ext = Extender(cache, PolicyConfig(strategy=strategy, max_state_age_seconds=max_state_age_seconds))
        if not nodes_from and (cluster or kube_server or kubeconfig):
            # the VRAM the extender commits to bound pods (extender/commitments.py), from the same cluster
            ext.on_pod_event("SYNC", {"items": bound_pods(kube_server, kubeconfig)})
        try:
            req = requirements_from_dict(pod)
        except (ParseError, ValueError) as e:
            raise click.ClickException(str(e)) from None
        rows = [{"node": v.node, "verdict": v.result, "score": v.score if v.feasible else None,
                 "gpus": v.gpu_text, "reason": v.detail or v.reason or v.degraded}
                for v in ext.explain(req)]
    if output != "table":
        emit(rows, output)
    else:
        console().print(table(["NODE", "VERDICT", "SCORE", "GPU", "REASON"],
                              [[r["node"], r["verdict"], "-" if r["score"] is None else r["score"],
                                r["gpus"] or "-", r["reason"] or ""] for r in rows]))
    if not any(r["verdict"] == "pass" for r in rows):
        sys.exit(EXIT_NOTHING_FITS)


@click.command()
@click.argument("model")
@click.option("-n", "--namespace", default="default", help="Namespace of the Model.")
@click.option("--kube-server", metavar="URL", help="API server URL (default: in-cluster, then kubeconfig).")
@click.option("--kubeconfig", type=click.Path(dir_okay=False), help="Path to a kubeconfig.")
def activate(model: str, namespace: str, kube_server: str | None, kubeconfig: str | None) -> None:
    """Request activation of MODEL (scales it up, preempting per its shared group's rules)."""
    from flexinfer import kube
    from flexinfer.controller.activation import activate as do_activate

    try:
        api = kube.api_client(server=kube_server, kubeconfig=kubeconfig)
        do_activate(api, namespace, model)
    except kube.KubeError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"model.{keys.MODEL_GROUP}/{model} activation requested")
