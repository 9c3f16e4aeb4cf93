"""`flexinfer-proxy`: the OpenAI-compatible front door that routes by Model name or serviceLabel and wakes
Models that are scaled to zero. See the package docstring and README ("The proxy")."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from flexinfer import keys, kube, logs
from flexinfer.cliopts import LOOPBACK, bind_address_option, component_command, logging_options, port_option

from .activity import ActivityWriter, kube_writers
from .catalog import SLICE_SELECTOR, Catalog
from .fit import FitChecker, NoFitCheck, fit_over_informer
from .metrics import ProxyMetrics
from .runner import ProxyServer, new_event_loop
from .server import MIB, Proxy, ProxyConfig

log = logs.get("flexinfer.proxy.main")

MAX_API_KEYS = 1000
MAX_KEYS_FILE_BYTES = 1 * MIB


@dataclass
class Built:
    """A proxy wired to a cluster, before it serves."""

    proxy: Proxy
    informers: list[Any] = field(default_factory=list)

    def stop(self) -> None:
        for inf in self.informers:
            inf.stop()


def build(api: Any, namespace: str, config: ProxyConfig | None = None, *, fit_check: str = "extender",
          activity_interval_s: float = 10.0, metrics: ProxyMetrics | None = None,
          fit: FitChecker | None = None, clock: Callable[[], float] = time.time) -> Built:
    """Catalog + informers (Models, EndpointSlices, and Nodes and bound model pods for the fit check) + activity
    writer + Proxy.
    The informers are started; the caller serves ``built.proxy`` (ProxyServer) and stops them at the end."""
    metrics = metrics or ProxyMetrics()
    catalog = Catalog()
    informers: list[Any] = [
        kube.Informer(api, keys.MODEL_PLURAL, catalog.on_model_event, namespace=namespace).start(),
        kube.Informer(api, "endpointslices", catalog.on_slice_event, namespace=namespace,
                      label_selector=SLICE_SELECTOR).start(),
    ]
    if fit is None:
        if fit_check == "extender":
            fit, fit_informers = fit_over_informer(api, namespace)
            informers.extend(fit_informers)
        else:
            fit = NoFitCheck()
    last_active, activation = kube_writers(api, namespace)

    def stored(name: str) -> float | None:
        st = catalog.get(name)
        return st.last_active_unix if st else None

    activity = ActivityWriter(last_active, activation, interval_s=activity_interval_s, stored_time=stored,
                              metrics=metrics, clock=clock)
    return Built(Proxy(catalog, activity, fit=fit, config=config, metrics=metrics, clock=clock), informers)


def read_api_keys(path: str) -> frozenset[str]:
    """One key per line (blank lines and # comments ignored). click.BadParameter on a bad file."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_KEYS_FILE_BYTES:
            raise click.BadParameter(f"{path}: larger than {MAX_KEYS_FILE_BYTES} bytes", param_hint="--api-keys-file")
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise click.BadParameter(f"{path}: {e}", param_hint="--api-keys-file") from None
    found = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    if not found:
        raise click.BadParameter(f"{path}: no keys in the file", param_hint="--api-keys-file")
    if len(found) > MAX_API_KEYS:
        raise click.BadParameter(f"{path}: more than {MAX_API_KEYS} keys", param_hint="--api-keys-file")
    short = [k for k in found if len(k) < 16]
    if short:
        raise click.BadParameter(f"{path}: {len(short)} key(s) shorter than 16 characters",
                                 param_hint="--api-keys-file")
    return frozenset(found)


@component_command("flexinfer-proxy", exit_codes=(
    "  0  stopped by SIGTERM/SIGINT (requests in progress were given --shutdown-grace-seconds)\n"
    "  1  no usable kubeconfig, or a port that cannot be bound\n"
    "  2  usage error (including an unreadable or unusable --api-keys-file)"))
@bind_address_option()
@click.option("--http-port", type=click.IntRange(1, 65535), default=8080,
              help="Port of the OpenAI-compatible API (/v1/...).")
@port_option("metrics", 9402, "Port of /metrics, /healthz and /readyz")
@click.option("--namespace", default="default",
              help="Namespace whose Models the proxy serves (the manifest passes the pod's own).")
@click.option("--kube-server", help="API server URL (default: in-cluster, then kubeconfig).")
@click.option("--kubeconfig", type=click.Path(dir_okay=False), help="Path to a kubeconfig.")
@click.option("--fit-check", type=click.Choice(["extender", "off"]), default="extender",
              help="Before activating an idle Model, check with the extender's policy over the cluster's Nodes "
                   "and the namespace's bound model pods that it can be placed (needs list/watch on Nodes and on "
                   "pods in --namespace); off: let the controller and scheduler decide.")
@click.option("--activate/--no-activate", default=True,
              help="Activate Models that are scaled to zero when a request arrives for them.")
@click.option("--activity-write-interval-seconds", type=click.FloatRange(1, 3600), default=10.0,
              help="At most one status.lastActiveTime write (and one activation) per Model per this many seconds.")
@click.option("--stall-timeout-seconds", type=click.FloatRange(1, 86400), default=120.0,
              help="Answer 503 when a loading Model has shown no progress (status.loadingProgressAt) for this long.")
@click.option("--retry-after-seconds", type=click.FloatRange(1, 3600), default=30.0,
              help="Retry-After sent with 503/429 when no better estimate is known.")
@click.option("--max-queue-per-model", type=click.IntRange(1, 100000), default=100,
              help="Requests that may wait for one Model to become Ready; more get 429.")
@click.option("--max-in-flight", type=click.IntRange(1, 1000000), default=4096,
              help="Requests in progress (waiting or forwarded) before new ones get 503.")
@click.option("--max-body-bytes", type=click.IntRange(1024, 1024 * MIB), default=16 * MIB,
              help="Request bodies above this get 413.")
@click.option("--head-timeout-seconds", type=click.FloatRange(0.5, 600), default=10.0,
              help="A new connection must send its first request head within this time (else it is closed).")
@click.option("--body-timeout-seconds", type=click.FloatRange(1, 3600), default=30.0,
              help="A request body must arrive within this time (else 408).")
@click.option("--request-timeout-seconds", type=click.FloatRange(1, 86400), default=3600.0,
              help="Longest a request may take in total, waiting included (else 504).")
@click.option("--upstream-read-timeout-seconds", type=click.FloatRange(1, 86400), default=300.0,
              help="A model server that sends nothing for this long is given up on (504).")
@click.option("--clamp/--no-clamp", default=True,
              help="Lower max_tokens at or above the Model's context window to the window minus the margin.")
@click.option("--clamp-margin-tokens", type=click.IntRange(0, 1_000_000), default=512,
              help="Tokens left for the prompt when max_tokens is clamped.")
@click.option("--api-keys-file", type=click.Path(dir_okay=False),
              help="Require 'Authorization: Bearer <key>' with one of the keys in this file (one per line).")
@click.option("--shutdown-grace-seconds", type=click.FloatRange(0, 3600), default=25.0,
              help="On SIGTERM, time given to requests in progress before the listeners close.")
@click.option("--access-log/--no-access-log", default=False, help="Log one line per forwarded request.")
@logging_options
def main(bind_address: str, http_port: int, metrics_port: int, namespace: str, kube_server: str | None,
         kubeconfig: str | None, fit_check: str, activate: bool, activity_write_interval_seconds: float,
         stall_timeout_seconds: float, retry_after_seconds: float, max_queue_per_model: int, max_in_flight: int,
         max_body_bytes: int, head_timeout_seconds: float, body_timeout_seconds: float, request_timeout_seconds: float,
         upstream_read_timeout_seconds: float, clamp: bool, clamp_margin_tokens: int, api_keys_file: str | None,
         shutdown_grace_seconds: float, access_log: bool, log_level: str, log_format: str | None) -> None:
    """OpenAI-compatible proxy for a namespace's Models: routes by name or serviceLabel, wakes idle Models."""
    logs.configure(log_level, log_format)
    keys_set = read_api_keys(api_keys_file) if api_keys_file else frozenset()
    if not keys_set and bind_address != LOOPBACK:
        log.warning("no --api-keys-file: anyone who can reach the proxy can use every Model of the namespace and "
                    "wake Models that are scaled to zero; restrict access with a NetworkPolicy or set API keys",
                    bind_address=bind_address, namespace=namespace)
    config = ProxyConfig(
        max_body_bytes=max_body_bytes, body_timeout_s=body_timeout_seconds, max_queue_per_model=max_queue_per_model,
        max_in_flight=max_in_flight, stall_timeout_s=stall_timeout_seconds, retry_after_s=retry_after_seconds,
        clamp_margin_tokens=clamp_margin_tokens, clamp=clamp, activate=activate,
        upstream_read_timeout_s=upstream_read_timeout_seconds, request_timeout_s=request_timeout_seconds,
        api_keys=keys_set, access_log=access_log)
    try:
        api = kube.api_client(server=kube_server, kubeconfig=kubeconfig)
    except Exception as e:
        log.error("no usable Kubernetes configuration", error=str(e))
        sys.exit(1)
    built = build(api, namespace, config, fit_check=fit_check, activity_interval_s=activity_write_interval_seconds)
    server = ProxyServer(built.proxy, bind_address, http_port, metrics_port or None,
                         grace_s=shutdown_grace_seconds, cleanup=built.informers,
                         head_timeout_s=head_timeout_seconds)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await server.serve(stop)

    loop = new_event_loop()
    try:
        loop.run_until_complete(run())
    except OSError as e:  # a port in use, an address that is not ours
        log.error("cannot listen", error=str(e), bind_address=bind_address)
        built.stop()
        sys.exit(1)
    finally:
        loop.close()


if __name__ == "__main__":  # pragma: no cover
    main()
