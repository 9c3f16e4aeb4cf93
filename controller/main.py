"""`flexinfer-controller`: informers + work queue + periodic resync around :class:`Controller`.

Informers (list, then watch with relist on 410) keep caches of Models, owned Deployments, Services,
PVCs and Jobs, the models' pods and Nodes (the node cache of the fit checks: preemption, vendor ``auto``,
loading progress). Every event enqueues the key of the affected group ``(namespace, group)`` or lone
model; a worker drains the queue (debounced), builds a snapshot from the caches and reconciles just those
keys. Node events do not enqueue anything (agents republish every node every couple of minutes): the
periodic resync, which enqueues everything, reads them; idle timeouts are time-based too. Only the Lease
holder reconciles (see ``leader``).
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import threading
import time
from typing import Any

import click
import kubernetes.client
from prometheus_client import generate_latest

from flexinfer import backends, keys, kube, logs
from flexinfer.cliopts import bind_address_option, component_command, logging_options, port_option
from flexinfer.errors import ParseError
from flexinfer.ops_http import OpsServer

from . import cache
from .backends import parse_image_overrides
from .leader import LeaseLock, LeaseTimings
from .metrics import ControllerMetrics
from .reconcile import Controller, Key, Snapshot, model_key
from .render import VENDOR_RESOURCE, RenderOptions

log = logs.get("flexinfer.controller.main")
ALL = ("*", "*")


class ControllerLoop:
    """Threaded run loop. ``start()`` returns at once; ``stop()`` ends it."""

    def __init__(
        self,
        controller: Controller,
        resync_seconds: float = 10.0,
        debounce_seconds: float = 0.1,
        lease: LeaseLock | None = None,
        watch_nodes: bool = True,
    ) -> None:
        self.ctl = controller
        self.resync_seconds = resync_seconds
        self.debounce_seconds = debounce_seconds
        self.lease = lease
        if lease is not None:  # every write of a pass first asks whether this replica still leads
            controller.write_guard = lambda: lease.is_leader
        self.queue: queue.Queue[Key] = queue.Queue()
        self._stop = threading.Event()
        self.passes = 0
        self.last_pass_unix = 0.0
        api, ns = controller.api, controller.namespace
        managed = f"{keys.LABEL_MANAGED_BY}={keys.MANAGED_BY}"
        mk = kube.Informer
        self.informers: dict[str, kube.Informer] = {
            "models": mk(api, keys.MODEL_PLURAL, self._handler("models"), namespace=ns),
            "deployments": mk(api, "deployments", self._handler("deployments"), ns, managed),
            "services": mk(api, "services", self._handler("services"), ns, managed),
            "persistentvolumeclaims": mk(api, "persistentvolumeclaims", self._handler("pvcs"), ns, managed),
            "jobs": mk(api, "jobs", self._handler("jobs"), ns, managed),
            "pods": mk(api, "pods", self._handler("pods"), ns, keys.LABEL_MODEL),
        }
        if watch_nodes and nodes_readable(api):
            self.informers["nodes"] = mk(api, "nodes", self._handler("nodes"))
        self._threads: list[threading.Thread] = []

    # -- events ----------------------------------------------------------------------------------
    def _handler(self, kind: str):
        def on_event(etype: str, obj: dict[str, Any]) -> None:
            if etype == "SYNC":
                self.queue.put(ALL)
                return
            if kind == "nodes":
                return  # read by the next resync (see the module docstring)
            if kind == "models":
                self.queue.put(model_key(obj))
                return
            meta = obj.get("metadata") or {}
            owner = (meta.get("labels") or {}).get(keys.LABEL_MODEL)
            if not owner:
                return
            m = self.informers["models"].get(meta.get("namespace") or "", owner)  # one lookup, not a scan
            if m is not None:
                self.queue.put(model_key(m))
        return on_event

    def snapshot(self) -> Snapshot:
        inf = self.informers
        return Snapshot(models=inf["models"].items(), deployments=inf["deployments"].items(),
                        services=inf["services"].items(), pvcs=inf["persistentvolumeclaims"].items(),
                        pods=inf["pods"].items(), nodes=inf["nodes"].items() if "nodes" in inf else None,
                        jobs=inf["jobs"].items())

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, sync_timeout_s: float = 30.0) -> ControllerLoop:
        for inf in self.informers.values():
            inf.start()
        for name, inf in self.informers.items():
            if not inf.wait_synced(sync_timeout_s):
                log.warning("informer not synced yet; continuing", kind=name)
        if self.lease is not None:
            t = threading.Thread(target=self._lease_loop, name="controller-lease", daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._work_loop, name="controller-worker", daemon=True)
        t.start()
        self._threads.append(t)
        self.queue.put(ALL)
        return self

    def stop(self) -> None:
        self._stop.set()
        self.queue.put(ALL)
        for t in self._threads:
            t.join(5)
        for inf in self.informers.values():
            inf.stop()
        if self.lease is not None:
            self.lease.release()
            self.ctl.metrics.is_leader.set(0)

    def wait(self) -> None:
        while not self._stop.wait(1.0):
            pass

    def synced(self) -> bool:
        return all(inf.synced for inf in self.informers.values())

    def healthy(self) -> bool:
        """The worker thread is alive and (when leader) passes keep happening."""
        worker = self._threads[-1] if self._threads else None
        if worker is None or not worker.is_alive():
            return False
        return not self.is_leader or self.last_pass_unix == 0.0 or \
            time.time() - self.last_pass_unix < max(60.0, 6 * self.resync_seconds)

    @property
    def is_leader(self) -> bool:
        return self.lease is None or self.lease.is_leader

    def _lease_loop(self) -> None:
        """Try to acquire (follower) or renew (leader) every retry period, as client-go does. Leadership
        itself expires on its own (LeaseLock.is_leader), so a renewal stuck in a hung call cannot extend it."""
        assert self.lease is not None
        period = self.lease.timings.retry_period_s
        was = False
        while not self._stop.is_set():
            now_leader = self.lease.try_acquire_or_renew()
            self.ctl.metrics.is_leader.set(1 if now_leader else 0)
            if now_leader and not was:
                self.queue.put(ALL)
            was = now_leader
            self._stop.wait(period)

    def _work_loop(self) -> None:
        while not self._stop.is_set():
            try:
                first = self.queue.get(timeout=self.resync_seconds)
            except queue.Empty:
                first = ALL
            keys_: set[Key] = {first}
            deadline = time.monotonic() + self.debounce_seconds
            while (left := deadline - time.monotonic()) > 0:
                try:
                    keys_.add(self.queue.get(timeout=left))
                except queue.Empty:
                    break
            if self._stop.is_set():
                return
            if not self.is_leader:
                continue
            try:
                self.ctl.reconcile(self.snapshot(), None if ALL in keys_ else keys_)
            except Exception as e:  # never let one bad pass kill the worker
                self.ctl.metrics.reconcile_errors.labels(kind="internal").inc()
                log.exception("reconcile pass failed", error=str(e))
            self.passes += 1
            self.last_pass_unix = time.time()


def nodes_readable(api: kubernetes.client.ApiClient) -> bool:
    """Whether this service account may list Nodes (needed only to resolve GPU vendor ``auto``)."""
    try:
        kube.list_raw(api, "nodes", retry=kube.NO_RETRY)
        return True
    except kube.KubeError as e:
        log.warning("cannot list nodes: no fit checks before preemption, GPU vendor auto resolves to "
                    "--auto-vendor (grant nodes list/watch)", error=str(e))
        return False


def serve_http(address: str, port: int, registry: Any, loop: ControllerLoop | None) -> OpsServer:
    """/metrics, /healthz (worker alive), /readyz (caches synced) in a daemon thread (flexinfer.ops_http)."""
    return OpsServer(address, port, metrics=lambda: generate_latest(registry),
                     healthy=lambda: loop is None or loop.healthy(), ready=lambda: loop is None or loop.synced(),
                     not_healthy="worker stalled", not_ready="caches not synced", name="controller-http").start()


_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?\Z")


def render_options(runtime_classes: tuple[str, ...] | list[str], backend_images: tuple[str, ...] | list[str],
                   scheduler_name: str) -> RenderOptions:
    """The model-pod options from the CLI; click.BadParameter naming the bad value."""
    classes: dict[str, str] = {}
    for item in runtime_classes:
        vendor, sep, name = item.partition("=")
        vendor = vendor.strip().lower()
        if not sep or vendor not in VENDOR_RESOURCE or not _DNS_SUBDOMAIN.match(name.strip()):
            raise click.BadParameter(f"{item!r}: expected VENDOR=NAME with VENDOR nvidia or amd and a RuntimeClass "
                                     "name", param_hint="--runtime-class")
        classes[vendor] = name.strip()
    try:
        images = parse_image_overrides(backend_images)
    except ParseError as e:
        raise click.BadParameter(str(e), param_hint="--backend-image") from None
    if scheduler_name and not _DNS_SUBDOMAIN.match(scheduler_name):
        raise click.BadParameter(f"{scheduler_name!r} is not a valid scheduler name", param_hint="--scheduler-name")
    return RenderOptions(runtime_class=classes, image_overrides=images, scheduler_name=scheduler_name)


def default_lease_namespace(namespace: str | None) -> str:
    return os.environ.get("POD_NAMESPACE") or namespace or keys.SYSTEM_NAMESPACE


@component_command("flexinfer-controller", exit_codes=(
    "  0  stopped by SIGTERM/SIGINT, or --once wrote everything it meant to\n"
    "  1  --once hit API errors, or the Kubernetes client could not be configured\n"
    "  2  usage error"))
@click.option("--kube-server", default=None, help="API server URL (tests/demo); default in-cluster or kubeconfig.")
@click.option("--kubeconfig", default=None, type=click.Path(dir_okay=False), help="Path to a kubeconfig.")
@click.option("--namespace", default="", help="Only this namespace (empty: all namespaces).")
@click.option("--cooldown-seconds", default=60.0, type=click.FloatRange(min=0),
              help="Minimum time between two swaps in a shared group (equal/lower priority).")
@click.option("--resync-seconds", default=10.0, type=click.FloatRange(min=0.5),
              help="Full reconcile period (idle timeouts are time-based).")
@bind_address_option()
@port_option("metrics", 8080, "/metrics, /healthz, /readyz port")
@click.option("--leader-elect/--no-leader-elect", default=True,
              help="Take a coordination.k8s.io Lease before reconciling (safe with >1 replica).")
@click.option("--lease-duration-seconds", default=15.0, type=click.FloatRange(min=2),
              help="How long followers wait after the last renewal they observed before taking over.")
@click.option("--renew-deadline-seconds", default=10.0, type=click.FloatRange(min=1),
              help="The leader stops acting when no renewal succeeded for this long (< lease duration).")
@click.option("--retry-period-seconds", default=2.0, type=click.FloatRange(min=0.1),
              help="Time between two acquire/renew attempts (x1.2 < renew deadline).")
@click.option("--lease-namespace", default=None, help="Namespace of the Lease (default: $POD_NAMESPACE, "
              "--namespace, or flexinfer-system).")
@click.option("--auto-vendor", type=click.Choice(["", "nvidia", "amd"]), default="",
              help="spec.gpu.vendor auto picks the vendor whose nodes fit the model now; this vendor is used when "
                   "Nodes cannot be read or it fits nowhere yet (default: nvidia).")
@click.option("--prefetch-image", default=cache.HF_PREFETCH_IMAGE, metavar="IMAGE",
              help="Image of the Hugging Face prefetch Job (pinned; installs huggingface_hub from PyPI unless the "
                   "image already has it).")
@click.option("--runtime-class", multiple=True, metavar="VENDOR=NAME",
              help="RuntimeClass for model pods of a GPU vendor, e.g. nvidia=nvidia where the NVIDIA container "
                   "runtime is not the node default (repeatable; env: space-separated).")
@click.option("--backend-image", multiple=True, metavar="BACKEND[/VENDOR]=IMAGE",
              help="Replace the registry's image for a backend (and vendor), e.g. to pin a digest: "
                   "vllm/amd=rocm/vllm@sha256:... Must be a version tag or digest (repeatable).")
@click.option("--scheduler-name", default="", metavar="NAME",
              help="spec.schedulerName of model pods: the second scheduler (daemonset/scheduler/second-scheduler, "
                   "flexinfer-scheduler); empty = the default scheduler.")
@click.option("--once", is_flag=True, help="Run one reconcile pass and exit.")
@logging_options
def main(kube_server: str | None, kubeconfig: str | None, namespace: str, cooldown_seconds: float,
         resync_seconds: float, bind_address: str, metrics_port: int, leader_elect: bool,
         lease_duration_seconds: float, renew_deadline_seconds: float, retry_period_seconds: float,
         lease_namespace: str | None, auto_vendor: str, runtime_class: tuple[str, ...],
         backend_image: tuple[str, ...], scheduler_name: str, prefetch_image: str, once: bool, log_level: str,
         log_format: str | None) -> None:
    """Reconcile ai.flexinfer/v1alpha2 Models into Deployments and Services; shared GPU groups."""
    logs.configure(log_level, log_format)
    options = render_options(runtime_class, backend_image, scheduler_name)
    problem = backends.image_pin_problem(prefetch_image)
    if problem:
        raise click.BadParameter(problem, param_hint="--prefetch-image")
    try:
        api: kubernetes.client.ApiClient = kube.api_client(server=kube_server, kubeconfig=kubeconfig)
    except kube.KubeError as e:
        raise click.ClickException(str(e)) from None
    metrics = ControllerMetrics()
    ctl = Controller(api, namespace=namespace or None, cooldown_seconds=cooldown_seconds, metrics=metrics,
                     auto_vendor=auto_vendor or None, options=options, hf_prefetch_image=prefetch_image)
    if once:
        try:
            result = ctl.reconcile_once()
        except kube.KubeError as e:  # the documented exit 1, as a one-line error rather than a traceback
            raise click.ClickException(f"cannot read the cluster: {e}") from None
        for w in result.writes:
            log.info("write", what=w)
        for e in result.errors:
            log.error("error", what=e)
        raise SystemExit(1 if result.errors else 0)
    lease = None
    if leader_elect:
        try:
            timings = LeaseTimings(lease_duration_seconds, renew_deadline_seconds, retry_period_seconds,
                                   api_timeout_s=min(4.0, renew_deadline_seconds / 2))
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--renew-deadline-seconds") from None
        lease = LeaseLock(api, lease_namespace or default_lease_namespace(namespace or None), timings=timings)
    loop = ControllerLoop(ctl, resync_seconds=resync_seconds, lease=lease)
    server = None
    if metrics_port:
        server = serve_http(bind_address, metrics_port, metrics.registry, loop)
    loop.start()
    log.info("controller running", namespace=namespace or "(all)", cooldown_seconds=cooldown_seconds,
             leader_elect=leader_elect)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError):
            signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    loop.stop()
    if server is not None:
        server.stop()
