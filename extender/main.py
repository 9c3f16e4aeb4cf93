"""`flexinfer-extender`: the kube-scheduler extender (HTTP) plus the SchedulerExtender gRPC service.

Node sources: `--nodes-from FILE` (static: NodeList/Node JSON or YAML, or a fleet file) or the API
server (`--kube-server URL` > in-cluster > `--kubeconfig`), watched by flexinfer.kube.Informer.
With the API server, bound pods are watched too: their VRAM is committed while they are bound (extender/commitments.py).

In static mode GPU state never refreshes, so staleness is not checked unless
`--max-state-age-seconds` is given explicitly.

Who may call what (extender/README.md "Who can reserve"): filter/prioritize reserve GPU memory, so on any
address other than loopback they are served only with mutual TLS (`--tls-cert/--tls-key` +
`--client-ca-file`), unless `--allow-unauthenticated` says otherwise. `--read-only-port` (plain HTTP) and
`--grpc-read-only-port` serve the read-only surface: probes, /metrics, Explain. `--leader-elect` makes the
replicas agree (extender.replicas). Limits on every input path: extender.listener.Limits.

Programmatic use (demo, bench): `build(...)` returns a `Running` with the Extender and the app;
`flexinfer.extender.http.serve_in_thread(app, host, port)` runs it on a thread.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import sys
import threading
from dataclasses import dataclass, field, replace
from typing import Any

import click

from flexinfer import freshness, keys, logs
from flexinfer.cliopts import bind_address_option, component_command, logging_options, port_option
from flexinfer.errors import ParseError, ValidationError
from flexinfer.nodes import NodeViewMemo

from .cache import NodeCache
from .commitments import BOUND_PODS_SELECTOR
from .http import DEFAULT_LIMITS, ExtenderApp, serve_in_thread, uvicorn_config
from .listener import Limits
from .policy import STRATEGIES, PolicyConfig
from .service import Extender
from .tls import TlsFiles

log = logs.get("flexinfer.extender.main")

DEFAULT_NAMESPACE = keys.SYSTEM_NAMESPACE
REQUEST_GIL_WAIT_SECONDS = 0.0005  # sys.setswitchinterval while watch threads run (CPython's default: 0.005)


@dataclass
class Running:
    extender: Extender
    web: ExtenderApp
    informers: list[Any] = field(default_factory=list)
    api: Any = None  # the API client when watching (leader election uses it)
    pod_watch: Any = None  # the bound-pod Informer when watching (a new Lease holder waits for it to catch up)

    @property
    def app(self) -> Any:
        return self.web.app

    def stop(self) -> None:
        for inf in self.informers:
            inf.stop()


def build(
    *,
    nodes_from: str | None = None,
    kube_server: str | None = None,
    kubeconfig: str | None = None,
    strategy: str = "binpack",
    max_state_age_seconds: float | None = None,
    filter_path: str = "/filter",
    prioritize_path: str = "/prioritize",
    max_body_bytes: int | None = None,
    limits: Limits | None = None,
    cache: NodeCache | None = None,
    watch: bool = True,
) -> Running:
    """Build the extender. With `cache` given (embedders), no source is started."""
    own_cache = cache is None
    if cache is None:
        cache = NodeCache()
        cache.freeze_gc_on_sync = True  # this process owns the cache: see NodeCache
        if nodes_from:
            cache.load_static(nodes_from)
    if max_state_age_seconds is None:
        max_state_age_seconds = float("inf") if cache.static else freshness.MAX_STATE_AGE_SECONDS
    else:
        try:
            freshness.check(max_state_age_seconds)
        except ValidationError as e:  # agents may run shorter heartbeats than the default: warn, don't refuse
            log.warning("extender_max_state_age_short", error=str(e))
    extender = Extender(cache, PolicyConfig(strategy=strategy, max_state_age_seconds=max_state_age_seconds))
    extender.request_views = NodeViewMemo()
    web = ExtenderApp(extender, filter_path=filter_path, prioritize_path=prioritize_path,
                      max_body_bytes=max_body_bytes, limits=limits)
    running = Running(extender, web)
    if watch and own_cache and not cache.static:
        from flexinfer import kube

        api = running.api = kube.api_client(kube_server, kubeconfig)
        # A Node's labels and annotations are all the extender reads: metadata only (not the kubelet's ~10 KiB of
        # status per heartbeat)
        nodes = kube.Informer(api, "nodes", cache.on_event, metadata_only=True)
        cache.source_healthy = lambda: bool(nodes.healthy)
        # Bound, unfinished pods (pods leaving this selection arrive as DELETED): their VRAM is committed.
        cache.commitments_synced = False  # until the pod watch's first list (Extender.on_pod_event)
        pods = kube.Informer(api, "pods", extender.on_pod_event, field_selector=BOUND_PODS_SELECTOR)
        running.informers = [nodes.start(), pods.start()]
        running.pod_watch = pods
        # The watch threads handle bursts of Node updates (an agent fleet's heartbeats) while kube-scheduler waits
        # on filter/prioritize: a request waits for the interpreter lock at most this long, not CPython's 5 ms.
        sys.setswitchinterval(REQUEST_GIL_WAIT_SECONDS)
    return running


def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def check_exposure(bind_address: str, files: TlsFiles, allow_unauthenticated: bool) -> None:
    """Refuse to serve the reserving verbs to the network without client authentication."""
    if is_loopback(bind_address) or files.mutual or allow_unauthenticated:
        return
    raise ParseError("--bind-address", bind_address,
                     "a loopback address, or mutual TLS (--tls-cert, --tls-key and --client-ca-file) so that only "
                     "kube-scheduler can reserve GPU memory; --allow-unauthenticated serves filter/prioritize "
                     "to anyone who reaches the port")


@component_command("flexinfer-extender", exit_codes=(
    "  0  stopped by SIGTERM/SIGINT\n"
    "  1  bad configuration (unreadable --nodes-from, TLS files, kubeconfig; filter/prioritize on a non-loopback "
    "address without mutual TLS)\n"
    "  2  usage error"))
@bind_address_option()
@port_option("http", 8888, "HTTP(S) port: kube-scheduler's urlPrefix (filter, prioritize), /explain, /healthz, "
             "/readyz, /metrics")
@port_option("read-only", 0, "Plain-HTTP port serving only /healthz, /readyz, /metrics and /explain (probes, "
             "Prometheus, flexinfer explain); never filter/prioritize")
@port_option("grpc", 0, "gRPC SchedulerExtender port (TLS and client certificates like --http-port)")
@port_option("grpc-read-only", 0, "Plaintext gRPC port of the --grpc-port server (needs it): Explain and health; "
             "with --client-ca-file, Filter/Prioritize there answer UNAUTHENTICATED")
@click.option("--nodes-from", type=click.Path(exists=True, dir_okay=False),
              help="Static NodeList/fleet file instead of watching the API server.")
@click.option("--kube-server", help="API server URL (default: in-cluster, then kubeconfig).")
@click.option("--kubeconfig", type=click.Path(dir_okay=False), help="Path to a kubeconfig.")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="binpack",
              help="binpack: prefer the fullest GPU that fits; spread: the emptiest.")
@click.option("--max-state-age-seconds", type=float, default=None,
              help=f"Reject nodes whose GPU state is older [default: {freshness.MAX_STATE_AGE_SECONDS:g}; "
                   "off with --nodes-from].")
@click.option("--filter-path", default="/filter", help="Path of the filter verb.")
@click.option("--prioritize-path", default="/prioritize", help="Path of the prioritize verb.")
@click.option("--tls-cert", type=click.Path(dir_okay=False),
              help="Serve HTTPS and gRPC over TLS with this certificate (re-read when the file changes).")
@click.option("--tls-key", type=click.Path(dir_okay=False), help="Private key for --tls-cert.")
@click.option("--client-ca-file", type=click.Path(dir_okay=False),
              help="Require client certificates signed by this CA on --http-port and --grpc-port (mutual TLS): "
                   "kube-scheduler's tlsConfig certFile/keyFile, and the other replicas. Use a CA of its own.")
@click.option("--allow-unauthenticated", is_flag=True,
              help="Serve filter/prioritize without client certificates on a non-loopback --bind-address "
                   "(anyone who reaches the port can then reserve GPU memory).")
@click.option("--max-body-bytes", type=int, default=DEFAULT_LIMITS.max_body_bytes, help="Answer 413 above this.")
@click.option("--max-nodes-per-request", type=click.IntRange(1), default=DEFAULT_LIMITS.max_nodes,
              help="Answer 413 (gRPC: RESOURCE_EXHAUSTED) when a request names more nodes.")
@click.option("--max-connections", type=click.IntRange(8), default=DEFAULT_LIMITS.max_connections,
              help="Open connections per port (also kept below the file-descriptor limit); at the cap the oldest "
                   "connection not inside a request is closed.")
@click.option("--request-timeout-seconds", type=click.FloatRange(0.1), default=DEFAULT_LIMITS.body_timeout_s,
              help="A request's head (and TLS handshake), then its body, must each arrive within this (else 408).")
@click.option("--leader-elect", is_flag=True,
              help="Replicas agree: the holder of the Lease flexinfer-extender answers filter/prioritize, the "
                   "others forward to it (needs the API server).")
@click.option("--leader-election-namespace", default=None,
              help=f"Namespace of the Lease [default: $POD_NAMESPACE or {DEFAULT_NAMESPACE}].")
@click.option("--leader-lease-seconds", type=click.IntRange(2, 60), default=8,
              help="Lease duration: a replica that died without handing over is replaced after this.")
@click.option("--advertise-address", default=None,
              help="Address the other replicas reach this one at (the pod IP) [default: --bind-address].")
@click.option("--peer-server-name", default=None,
              help="TLS name checked on the leader's certificate when forwarding (a SAN of --tls-cert, e.g. "
                   "flexinfer-extender.flexinfer-system.svc).")
@logging_options
def main(bind_address: str, http_port: int, read_only_port: int, grpc_port: int, grpc_read_only_port: int,
         nodes_from: str | None, kube_server: str | None, kubeconfig: str | None, strategy: str,
         max_state_age_seconds: float | None, filter_path: str, prioritize_path: str, tls_cert: str | None,
         tls_key: str | None, client_ca_file: str | None, allow_unauthenticated: bool, max_body_bytes: int,
         max_nodes_per_request: int, max_connections: int, request_timeout_seconds: float, leader_elect: bool,
         leader_election_namespace: str | None, leader_lease_seconds: int, advertise_address: str | None,
         peer_server_name: str | None, log_level: str, log_format: str | None) -> None:
    """Scheduler extender: filter and score pods by per-GPU VRAM and backend/architecture compatibility."""
    logs.configure(log_level, log_format)
    if grpc_read_only_port and not grpc_port:
        raise click.UsageError("--grpc-read-only-port is a second port of the gRPC server: it needs --grpc-port")
    limits = replace(DEFAULT_LIMITS, max_body_bytes=max_body_bytes, max_nodes=max_nodes_per_request,
                     max_connections=max_connections, head_timeout_s=request_timeout_seconds,
                     body_timeout_s=request_timeout_seconds)
    files = TlsFiles(tls_cert, tls_key, client_ca_file)
    listeners = sum(1 for p in (http_port, read_only_port, grpc_port, grpc_read_only_port) if p)
    try:
        files.check()
        check_exposure(bind_address, files, allow_unauthenticated)
        if leader_elect and nodes_from:
            raise ParseError("--leader-elect", nodes_from, "the API server (no --nodes-from): the Lease lives there")
        running = build(nodes_from=nodes_from, kube_server=kube_server, kubeconfig=kubeconfig, strategy=strategy,
                        max_state_age_seconds=max_state_age_seconds, filter_path=filter_path,
                        prioritize_path=prioritize_path, limits=limits)
        config = uvicorn_config(running.app, bind_address, http_port, tls_cert=tls_cert, tls_key=tls_key,
                                client_ca=client_ca_file, listener="scheduling", listeners=listeners,
                                log_level="warning")
        ro_config = uvicorn_config(running.web.read_only_app, bind_address, read_only_port, listener="read-only",
                                   listeners=listeners, log_level="warning") if read_only_port else None
    except (ParseError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    replicas = None
    if leader_elect:
        from .replicas import BoundPodCatchUp, Replicas

        host = advertise_address or bind_address
        scheme = "https" if files.enabled else "http"
        replicas = Replicas(
            running.api, leader_election_namespace or os.environ.get("POD_NAMESPACE") or DEFAULT_NAMESPACE,
            http_url=f"{scheme}://{_host_port(host, http_port)}",
            grpc_target=_host_port(host, grpc_port) if grpc_port else "", tls=files,
            peer_server_name=peer_server_name, lease_duration_s=leader_lease_seconds,
            metrics=running.extender.metrics,
            catch_up=BoundPodCatchUp(running.api, running.pod_watch, running.extender))
        running.web.replicas = replicas
    grpc_server = None
    if grpc_port:
        from .grpc_server import serve_grpc

        grpc_server = serve_grpc(running.extender, bind_address, grpc_port, tls_cert=tls_cert, tls_key=tls_key,
                                 client_ca=client_ca_file, read_only_port=grpc_read_only_port or None, limits=limits,
                                 replicas=replicas, listeners=listeners)
    handle = serve_in_thread(config)
    ro_handle = serve_in_thread(ro_config) if ro_config is not None else None
    if replicas is not None:
        replicas.start()
    log.info("extender_started", url=handle.url, read_only_url=ro_handle.url if ro_handle else None,
             grpc_port=grpc_port or None, mutual_tls=files.mutual, leader_elect=leader_elect, strategy=strategy,
             source=nodes_from or kube_server or "cluster", filter_path=running.web.filter_path,
             prioritize_path=running.web.prioritize_path)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(1.0):
        if not handle.thread.is_alive():
            log.error("extender_http_stopped")
            break
    if replicas is not None:
        replicas.stop()  # hand the Lease over before the listeners go
    handle.stop()
    if ro_handle is not None:
        ro_handle.stop()
    if grpc_server is not None:
        grpc_server.stop(grace=2)
    running.stop()
    sys.exit(0)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


if __name__ == "__main__":
    main()
