"""`flexinfer-agent`: the per-node DaemonSet process (and a dry-run/debug CLI)."""

from __future__ import annotations

import json
import signal
import sys
import threading
from typing import Any

import click

from flexinfer import freshness, logs
from flexinfer.cliopts import bind_address_option, component_command, logging_options, port_option
from flexinfer.errors import ParseError, ValidationError

from .agent import Agent
from .podresources import DEFAULT_SOCKET, PodResourcesSource
from .publish import DEFAULT_HEARTBEAT_SECONDS, DEFAULT_THRESHOLD_MIB, DryRunPublisher, Publisher
from .readers.base import GpuReader, MultiReader, NullReader

log = logs.get("flexinfer.agent.main")


def build_real_reader(vendor: str = "auto", sys_root: str = "/sys") -> GpuReader:
    """NVML, amdsmi and Intel sysfs readers for this host; a vendor whose library is missing is dropped with a
    reason (Intel needs no library: its reader joins when sysfs shows an Intel GPU on xe or i915)."""
    readers: list[GpuReader] = []
    reasons: list[str] = []
    if vendor in ("auto", "nvidia"):
        import pynvml

        from .readers.nvml import NvmlReader

        nv = NvmlReader(pynvml)
        nv.open()
        if vendor == "nvidia" or not nv.library_missing:
            readers.append(nv)
        else:
            reasons.append(nv.status.split(" (retry")[0])
    if vendor in ("auto", "amd"):
        from .readers.amd import AmdSmiReader, import_amdsmi
        from .readers.kfd import KfdReader, read_kfd_nodes

        mod, why = import_amdsmi()
        if mod is not None:
            amd = AmdSmiReader(mod, sys_root=sys_root)
            amd.open()
            readers.append(amd)
        elif read_kfd_nodes(sys_root):
            readers.append(KfdReader(sys_root, reason=why))
        elif vendor == "amd":
            readers.append(NullReader(why))
        else:
            reasons.append(why)
    if vendor in ("auto", "intel"):
        from .readers.intel import IntelSysfsReader, find_cards

        if vendor == "intel" or find_cards(sys_root):
            intel = IntelSysfsReader(sys_root)
            intel.open()
            readers.append(intel)
    if not readers:
        return NullReader("no GPU library usable: " + "; ".join(reasons) if reasons else "ok")
    return readers[0] if len(readers) == 1 else MultiReader(readers)


def build_fake_reader(path: str, node: str) -> GpuReader:
    from flexinfer.fleet import load_fleet

    from .readers.fake import FollowFleetFile, fleet_reader

    fleet_node = load_fleet(path).node(node)
    return FollowFleetFile(fleet_reader(fleet_node), path, fleet_node)


@component_command("flexinfer-agent", exit_codes=(
    "  0  stopped by SIGTERM/SIGINT, or --once finished\n"
    "  1  --once could not publish (the API server refused or was unreachable), or a fleet file error\n"
    "  2  usage error (bad option, no --node)"))
@click.option("--node", envvar=["FLEXINFER_NODE", "NODE_NAME"], default=None,
              help="Node name (the manifests set NODE_NAME through the downward API).")
@click.option("--fake-gpus", "fake_gpus", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Simulate the GPUs of --node from this fleet file instead of NVML/amdsmi.")
@click.option("--once", is_flag=True, help="Take one sample (publish it unless --dry-run) and exit.")
@click.option("--dry-run", is_flag=True, help="Print the labels and annotations that would be written, as JSON.")
@click.option("--interval-seconds", type=click.FloatRange(min=0.1), default=freshness.SAMPLE_INTERVAL_SECONDS,
              help="Time between two GPU samples.")
@click.option("--threshold-mib", type=click.IntRange(min=0), default=DEFAULT_THRESHOLD_MIB,
              help="Write when a GPU's free memory moved by more than this.")
@click.option("--heartbeat-seconds", type=click.FloatRange(min=1), default=DEFAULT_HEARTBEAT_SECONDS,
              help="Write at least this often (keep it well under the extender's "
              "--max-state-age-seconds: see flexinfer.freshness).")
@bind_address_option()
@port_option("metrics", 9400, "/metrics, /healthz, /readyz port")
@port_option("grpc", 9401, "gRPC NodeAgent + health port")
@click.option("--kube-server", default=None, help="API server URL (tests/demo); default in-cluster or kubeconfig.")
@click.option("--kubeconfig", default=None, type=click.Path(dir_okay=False), help="Path to a kubeconfig.")
@click.option("--vendor", type=click.Choice(["auto", "nvidia", "amd", "intel"]), default="auto",
              help="Which GPU libraries to open (auto: every one that loads).")
@click.option("--sys-root", default="/sys", help="sysfs root (KFD topology, Intel xe/i915 GPUs).")
@click.option("--pod-resources-socket", default=DEFAULT_SOCKET, show_default=True,
              help="The kubelet's PodResources socket: which container holds which GPU (empty: do not ask).")
@logging_options
def main(node: str | None, fake_gpus: str | None, once: bool, dry_run: bool, interval_seconds: float,
         threshold_mib: int, heartbeat_seconds: float, bind_address: str, metrics_port: int, grpc_port: int,
         kube_server: str | None, kubeconfig: str | None, vendor: str, sys_root: str, pod_resources_socket: str,
         log_level: str, log_format: str | None) -> None:
    """Read this node's GPUs and publish labels, annotations, metrics and gRPC state."""
    logs.configure(log_level, log_format)
    if not node:
        raise click.UsageError("--node is required (or set NODE_NAME via the downward API)")
    try:
        freshness.check(freshness.MAX_STATE_AGE_SECONDS, heartbeat_seconds, interval_seconds)
    except ValidationError as e:  # the extender may run a longer max age than its default: warn, don't refuse
        log.warning("agent_heartbeat_long", error=str(e),
                    hint="the extender's default max state age would call this node stale between heartbeats")
    try:
        reader = build_fake_reader(fake_gpus, node) if fake_gpus else build_real_reader(vendor, sys_root)
    except (ParseError, KeyError) as e:
        raise click.ClickException(str(e).strip('"')) from None
    pod_resources = PodResourcesSource(socket_path=pod_resources_socket) if pod_resources_socket else None

    if dry_run:
        # --once: one pretty JSON document; otherwise one JSON line per write the agent would make
        def emit(name: str, labels: dict[str, str | None], annotations: dict[str, str | None]) -> None:
            doc = {"node": name, "labels": labels, "annotations": annotations}
            click.echo(json.dumps(doc, indent=2 if once else None, sort_keys=True))

        agent = Agent(node, reader, DryRunPublisher(node, emit, threshold_mib, heartbeat_seconds),
                      interval_seconds=interval_seconds, threshold_mib=threshold_mib,
                      heartbeat_seconds=heartbeat_seconds, pod_resources=pod_resources)
        if once:
            agent.step()
            agent.stop()
            return
        _run_forever(agent, None, None)
        return

    from flexinfer.kube import api_client

    try:
        api = api_client(server=kube_server, kubeconfig=kubeconfig)
    except Exception as e:
        raise click.ClickException(f"cannot configure the Kubernetes client: {e}") from None
    publisher = Publisher(api, node, threshold_mib=threshold_mib, heartbeat_seconds=heartbeat_seconds)
    agent = Agent(node, reader, publisher, interval_seconds=interval_seconds, threshold_mib=threshold_mib,
                  heartbeat_seconds=heartbeat_seconds, pod_resources=pod_resources)
    if once:
        result = agent.step()
        agent.stop()
        pub = result.publish
        if pub is None or not pub.written:
            raise click.ClickException(f"node {node} not updated: {pub.error if pub else 'no publisher'}")
        return

    host = bind_address
    http = grpc_srv = None
    if metrics_port:
        from flexinfer.ops_http import OpsServer

        http = OpsServer(host, metrics_port, metrics=agent.metrics.exposition, healthy=agent.healthy,
                         ready=agent.ready, not_healthy="sampling loop stalled", not_ready="no sample yet",
                         name="agent-http").start()
    if grpc_port:
        from .grpc_server import GrpcServer

        grpc_srv = GrpcServer(agent, host, grpc_port)
        grpc_srv.start()
    log.info("agent_started", node=node, reader=type(reader).__name__, metrics_port=metrics_port,
             grpc_port=grpc_port, interval_seconds=interval_seconds, threshold_mib=threshold_mib)
    _run_forever(agent, http, grpc_srv)


def _run_forever(agent: Agent, http: Any, grpc_srv: Any) -> None:
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("agent_stopping", signal=signum)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    agent.start()
    stop.wait()
    agent.stop()
    if grpc_srv is not None:
        grpc_srv.stop()
    if http is not None:
        http.stop()
    sys.exit(0)


if __name__ == "__main__":  # pragma: no cover
    main()
