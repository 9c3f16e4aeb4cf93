"""`flexinfer-extender`: the kube-scheduler extender (HTTP) plus the SchedulerExtender gRPC service.

Node sources: `--nodes-from FILE` (static: NodeList/Node JSON or YAML, or a fleet file) or the API
server (`--kube-server URL` > in-cluster > `--kubeconfig`), watched by flexinfer.kube.Informer.
With the API server, pods are watched too, to confirm and release VRAM reservations.

In static mode GPU state never refreshes, so staleness is not checked unless
`--max-state-age-seconds` is given explicitly.

Programmatic use (demo, bench): `build(...)` returns a `Running` with the Extender and the app;
`flexinfer.extender.http.serve_in_thread(app, host, port)` runs it on a thread.
"""

from __future__ import annotations

import signal
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

import click

from flexinfer import freshness, logs
from flexinfer.cliopts import bind_address_option, component_command, logging_options, port_option
from flexinfer.errors import ParseError, ValidationError
from flexinfer.nodes import NodeViewMemo

from .cache import NodeCache
from .http import DEFAULT_MAX_BODY_BYTES, ExtenderApp, serve_in_thread, uvicorn_config
from .policy import STRATEGIES, PolicyConfig
from .service import Extender

log = logs.get("flexinfer.extender.main")


@dataclass
class Running:
    extender: Extender
    web: ExtenderApp
    informers: list[Any] = field(default_factory=list)

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
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
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
                      max_body_bytes=max_body_bytes)
    running = Running(extender, web)
    if watch and own_cache and not cache.static:
        from flexinfer import kube

        api = kube.api_client(kube_server, kubeconfig)
        nodes = kube.Informer(api, "nodes", cache.on_event)
        cache.source_healthy = lambda: bool(nodes.healthy)
        # Bound, unfinished pods (pods leaving this selection arrive as DELETED).
        pods = kube.Informer(api, "pods", extender.on_pod_event,
                             field_selector="spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed")
        running.informers = [nodes.start(), pods.start()]
    return running


@component_command("flexinfer-extender", exit_codes=(
    "  0  stopped by SIGTERM/SIGINT\n"
    "  1  bad configuration (unreadable --nodes-from, TLS files, kubeconfig)\n"
    "  2  usage error"))
@bind_address_option()
@port_option("http", 8888, "HTTP port: kube-scheduler's urlPrefix, /metrics, /healthz, /readyz, /explain")
@port_option("grpc", 0, "gRPC SchedulerExtender port")
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
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), help="Serve HTTPS with this certificate.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="Private key for --tls-cert.")
@click.option("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, help="Answer 413 above this.")
@logging_options
def main(bind_address: str, http_port: int, grpc_port: int, nodes_from: str | None, kube_server: str | None,
         kubeconfig: str | None, strategy: str, max_state_age_seconds: float | None, filter_path: str,
         prioritize_path: str, tls_cert: str | None, tls_key: str | None, max_body_bytes: int,
         log_level: str, log_format: str | None) -> None:
    """Scheduler extender: filter and score pods by per-GPU VRAM and backend/architecture compatibility."""
    logs.configure(log_level, log_format)
    try:
        running = build(nodes_from=nodes_from, kube_server=kube_server, kubeconfig=kubeconfig, strategy=strategy,
                        max_state_age_seconds=max_state_age_seconds, filter_path=filter_path,
                        prioritize_path=prioritize_path, max_body_bytes=max_body_bytes)
        config = uvicorn_config(running.app, bind_address, http_port, tls_cert=tls_cert, tls_key=tls_key,
                                log_level="warning")
    except (ParseError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    grpc_server = None
    if grpc_port:
        from .grpc_server import serve_grpc

        grpc_server = serve_grpc(running.extender, bind_address, grpc_port, tls_cert=tls_cert, tls_key=tls_key)
    handle = serve_in_thread(config)
    log.info("extender_started", url=handle.url, grpc_port=grpc_port or None, strategy=strategy,
             source=nodes_from or kube_server or "cluster", filter_path=running.web.filter_path,
             prioritize_path=running.web.prioritize_path)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(1.0):
        if not handle.thread.is_alive():
            log.error("extender_http_stopped")
            break
    handle.stop()
    if grpc_server is not None:
        grpc_server.stop(grace=2)
    running.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
