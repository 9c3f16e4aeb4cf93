"""`flexinfer`: the operator's CLI — demo, preflight, explain, nodes, activate."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click
import yaml

from flexinfer import freshness, logs
from flexinfer.cli.output import OUTPUT_OPTION, console, emit, table
from flexinfer.cli.sources import node_views, source_options
from flexinfer.cliopts import CONTEXT_SETTINGS, LOG_FORMATS, LOG_LEVELS, show_envvars, version, with_exit_codes
from flexinfer.errors import ValidationError
from flexinfer.model import Model, parse_model
from flexinfer.state import GpuState


def load_models(path: str, *, allow_never_runs: bool = False) -> list[Model]:
    """Read one or more Models from a YAML file (multi-document allowed). Exit 1 when the file cannot be read
    or holds no valid Model."""
    try:
        docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    except (OSError, yaml.YAMLError) as e:
        raise click.ClickException(f"{path}: {e}") from None
    models = []
    for d in docs:
        try:
            models.append(parse_model(d, allow_never_runs=allow_never_runs))
        except ValidationError as e:
            raise click.ClickException(f"{path}: {e}") from None
    if not models:
        raise click.ClickException(f"{path}: no Model found")
    return models


EXIT_CODES = {
    "preflight": "  0  PASS: it fits\n  10 WARN: it fits, with something to review\n"
                 "  20 BLOCK: it cannot run (no node fits, incompatible, or a spec that can never run)\n"
                 "  1  the file cannot be read, or is not a valid Model\n  2  usage error",
    "explain": "  0  at least one node would accept the pod\n  20 no node would accept it (each row says why)\n"
               "  1  the target cannot be read or is not a pod/Model, or the extender is unreachable\n"
               "  2  usage error",
    "nodes": "  0  listed\n  1  the node source cannot be read\n  2  usage error",
    "demo": "  0  the story ran\n  1  the fleet or examples cannot be read, or a component failed\n  2  usage error",
    "activate": "  0  activation requested\n  1  the Model is not found or the API server refused\n  2  usage error",
}


@click.group(context_settings=dict(CONTEXT_SETTINGS))
@click.version_option(version(), "--version", prog_name="flexinfer", message="%(prog)s %(version)s")
@click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), default="warning",
              help="Log level for background components.")
@click.option("--log-format", type=click.Choice(LOG_FORMATS), default="console",
              help="Log output of background components.")
def cli(log_level: str, log_format: str) -> None:
    """FlexInfer: GPU-aware placement for LLM serving on heterogeneous Kubernetes clusters."""
    logs.configure(level=log_level, fmt=log_format)


@cli.command()
@click.argument("model_file", type=click.Path(exists=True, dir_okay=False))
@source_options
@click.option("--node", help="Check only this node.")
@click.option("--max-state-age-seconds", default=freshness.MAX_STATE_AGE_SECONDS,
              help="GPU state older than this is stale (the extender's rule).")
@click.option("--json", "as_json", is_flag=True, envvar="FLEXINFER_PREFLIGHT_JSON",  # named after the flag
              help="Machine-readable output.")
def preflight(model_file: str, fleet: str | None, nodes_from: str | None, cluster: bool, kube_server: str | None,
              kubeconfig: str | None, node: str | None, max_state_age_seconds: float, as_json: bool) -> None:
    """Fit check before scaling anything down: will MODEL_FILE run, and where?"""
    from flexinfer import preflight as pf

    now = time.time()
    views = node_views(fleet, nodes_from, cluster, kube_server, kubeconfig, now)
    reports = [pf.run(m, views, now, node=node, max_state_age_seconds=max_state_age_seconds)
               for m in load_models(model_file, allow_never_runs=True)]
    if as_json:
        emit([r.to_dict() for r in reports] if len(reports) > 1 else reports[0].to_dict(), "json")
    else:
        for r in reports:
            click.echo(f"GPU fit preflight: {r.decision.name} {r.model}")
            click.echo(f"backend: {r.backend}" + (f", target: {r.target_node} gpu "
                       + ",".join(map(str, r.target_gpus)) if r.target_node else ""))
            click.echo("checks:")
            for c in r.checks:
                click.echo(f"[{c.level.name}] {c.name}: {c.message}")
            tail = {"PASS": "", "WARN": "; review before scaling the GPU lane",
                    "BLOCK": "; do not scale the GPU lane"}[r.decision.name]
            click.echo(f"decision: {r.decision.name}{tail}")
    sys.exit(max(r.exit_code for r in reports))


@cli.command()
@source_options
@click.option("--max-state-age-seconds", default=freshness.MAX_STATE_AGE_SECONDS,
              help="GPU state older than this is shown as stale (the extender's rule).")
@OUTPUT_OPTION
def nodes(fleet: str | None, nodes_from: str | None, cluster: bool, kube_server: str | None,
          kubeconfig: str | None, max_state_age_seconds: float, output: str) -> None:
    """Nodes x GPUs: arch, free/total VRAM, sharing (MIG instance, time-slicing replicas), pods holding each,
    health, age of the agent's data."""
    now = time.time()
    views = node_views(fleet, nodes_from, cluster, kube_server, kubeconfig, now)
    rows: list[dict] = []
    for v in views:
        if v.error:
            rows.append({"node": v.name, "gpu": "-", "vendor": v.vendor, "arch": "-", "freeMiB": None,
                         "totalMiB": None, "health": "unreadable: " + v.error, "ageSeconds": None})
            continue
        if v.state is None or not v.state.gpus:
            age = round(now - v.state.observed_unix) if v.state else None
            health = "no GPUs" if v.state else "no agent data"
            rows.append({"node": v.name, "gpu": "-", "vendor": v.vendor, "arch": "-", "freeMiB": None,
                         "totalMiB": None, "health": health, "ageSeconds": age})
            continue
        age = round(now - v.state.observed_unix)
        for g in v.state.gpus:
            health = "healthy" if g.healthy else f"unhealthy: {g.reason}"
            if age > max_state_age_seconds:
                health += " (stale)"
            rows.append({"node": v.name, "gpu": g.index, "vendor": g.vendor, "arch": g.arch,
                         "family": g.info.family, "freeMiB": g.free_mib, "totalMiB": g.total_mib,
                         "sharing": _sharing(g), "pods": list(g.pods), "health": health, "ageSeconds": age})
    if output != "table":
        emit(rows, output)
        return
    console().print(table(
        ["NODE", "GPU", "VENDOR", "ARCH", "FREE MiB", "TOTAL MiB", "SHARING", "PODS", "HEALTH", "AGE s"],
        [[r["node"], r["gpu"], r["vendor"], r["arch"], "-" if r["freeMiB"] is None else r["freeMiB"],
          "-" if r["totalMiB"] is None else r["totalMiB"], r.get("sharing") or "-",
          ", ".join(r.get("pods") or []) or "-", r["health"],
          "-" if r["ageSeconds"] is None else r["ageSeconds"]] for r in rows]))


def _sharing(g: GpuState) -> str:
    """What a pod gets of this GPU: 'MIG 3g.40gb of GPU 0', '4 replicas, 1 in use (no replica left)', ''."""
    if g.mig_profile:
        return f"MIG {g.mig_profile} of GPU {g.mig_parent}"
    if g.replicas > 1:
        full = " (no replica left)" if g.replicas_used >= g.replicas else ""
        return f"{g.replicas} replicas, {g.replicas_used} in use{full}"
    return ""


@cli.command()
@click.option("--fleet", type=click.Path(exists=True, dir_okay=False),
              help="Fleet file (default: the embedded homelab fleet).")
@click.option("--examples", type=click.Path(exists=True, file_okay=False),
              help="Directory of example Models (default: daemonset/examples).")
@click.option("--control-plane", "control_plane", type=click.Choice(["embedded", "real"]), default="embedded",
              show_default=True, help="embedded: the in-process simulation (seconds); real: etcd, kube-apiserver, "
              "kube-scheduler, kube-controller-manager and kwok built from hack/k8s (minutes the first time).")
def demo(fleet: str | None, examples: str | None, control_plane: str) -> None:
    """Run the whole system on a simulated fleet and explain where each example Model lands."""
    from rich.console import Console

    from flexinfer.demo.run import EXAMPLES, run_demo
    from flexinfer.errors import ParseError
    from flexinfer.fleet import default_fleet_path, load_fleet

    try:
        fl = load_fleet(fleet or default_fleet_path())
    except ParseError as e:
        raise click.ClickException(str(e)) from None
    err = Console(stderr=True, highlight=False, width=200)
    try:
        if control_plane == "real":
            from flexinfer.demo.realrun import run_real_demo

            sys.exit(run_real_demo(fl, console(), err, Path(examples) if examples else EXAMPLES))
        sys.exit(run_demo(fl, console(), err, Path(examples) if examples else EXAMPLES))
    except FileNotFoundError as e:
        raise click.ClickException(str(e)) from None


from flexinfer.cli.explain import activate, explain  # noqa: E402

cli.add_command(explain)
cli.add_command(activate)
for _name, _cmd in cli.commands.items():
    _cmd.help = with_exit_codes(_cmd.help, EXIT_CODES[_name])
cli.help = with_exit_codes(cli.help, "  each command's --help lists its own\n"
                                     "  0  --help, --version\n  2  usage error (no command, or an unknown one)")
show_envvars(cli)


def main() -> None:
    cli(prog_name="flexinfer")


if __name__ == "__main__":
    main()
