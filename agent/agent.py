"""The agent loop: read GPUs, build NodeGpuState, update metrics, publish with hysteresis.

`Agent` is programmatic (the demo runs one per fleet node in one process, with fake readers, no
ports and an optional publisher); `flexinfer-agent` (main.py) wires it to the real world.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from flexinfer import logs
from flexinfer.interop import cross_check, gfd_replicas, mismatch_status
from flexinfer.state import NodeGpuState

from .attribution import Assignment, Holding, attribute, replicas_by_vendor
from .metrics import AgentMetrics
from .publish import DEFAULT_HEARTBEAT_SECONDS, DEFAULT_THRESHOLD_MIB, Publisher, PublishResult, should_publish
from .readers.base import GpuReader, GpuSample
from .sampler import add_notes, node_state

log = logs.get("flexinfer.agent")


class StateHub:
    """Latest state + a version that bumps on every significant change (for gRPC watchers)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.state: NodeGpuState | None = None
        self.version = 0
        self._last_significant: NodeGpuState | None = None

    def update(self, state: NodeGpuState, threshold_mib: int, heartbeat_seconds: float) -> bool:
        changed, _ = should_publish(self._last_significant, state, state.observed_unix, threshold_mib,
                                    heartbeat_seconds)
        with self.cond:
            self.state = state
            if changed:
                self._last_significant = state
                self.version += 1
                self.cond.notify_all()
        return changed

    def wait(self, after_version: int, timeout: float) -> tuple[int, NodeGpuState | None]:
        with self.cond:
            self.cond.wait_for(lambda: self.version != after_version, timeout=timeout)
            return self.version, self.state


class AssignmentSource(Protocol):
    """Who holds which device (agent.podresources.PodResourcesSource, or a simulated kubelet)."""

    def poll(self) -> tuple[list[Assignment], str]: ...


@dataclass
class StepResult:
    state: NodeGpuState
    samples: list[GpuSample]
    publish: PublishResult | None
    holders: dict[str, Holding] | None = None


def devices_by_vendor(samples: list[GpuSample]) -> dict[str, int]:
    """Schedulable devices per vendor: MIG instances of MIG-enabled GPUs, other GPUs themselves."""
    out: dict[str, int] = {}
    for s in samples:
        out[s.vendor] = out.get(s.vendor, 0) + (len(s.mig_instances) if s.mig_enabled else 1)
    return out


class Agent:
    def __init__(
        self,
        node: str,
        reader: GpuReader,
        publisher: Publisher | None = None,
        *,
        interval_seconds: float = 10.0,
        threshold_mib: int = DEFAULT_THRESHOLD_MIB,
        heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS,
        metrics: AgentMetrics | None = None,
        clock: Callable[[], float] = time.time,
        pod_resources: AssignmentSource | None = None,
    ) -> None:
        self.node = node
        self.reader = reader
        self.publisher = publisher
        self.pod_resources = pod_resources
        self.interval_seconds = interval_seconds
        self.threshold_mib = threshold_mib
        self.heartbeat_seconds = heartbeat_seconds
        self.metrics = metrics or AgentMetrics(node)
        self.clock = clock
        self.hub = StateHub()
        self.last: StepResult | None = None
        self.last_step_monotonic = 0.0
        self._opened = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def state(self) -> NodeGpuState | None:
        return self.hub.state

    def open(self) -> None:
        if not self._opened:
            try:
                self.reader.open()
            except Exception as e:  # readers should not raise; be safe anyway
                log.error("reader_open_error", node=self.node, error=repr(e))
            self._opened = True

    def step(self, now: float | None = None) -> StepResult:
        """One sample -> state -> metrics -> (maybe) publish. Never raises."""
        self.open()
        t0 = time.perf_counter()
        try:
            samples = self.reader.sample()
            status = self.reader.status
        except Exception as e:
            log.error("reader_sample_error", node=self.node, error=repr(e))
            samples, status = [], f"reader error: {type(e).__name__}"
        duration = time.perf_counter() - t0
        now = self.clock() if now is None else now
        holders, extra = self._holders(samples)
        labels: dict[str, str] = {}
        capacity: dict[str, Any] = {}
        if self.publisher is not None:
            self.publisher.know_node(now)
            labels = self.publisher.node_labels or {}
            capacity = self.publisher.node_capacity
        replicas = replicas_by_vendor(capacity, devices_by_vendor(samples), gfd_replicas(labels))
        state = node_state(self.node, samples, status, now, holders=holders, replicas=replicas)
        extra.append(mismatch_status(cross_check(labels, state)))
        if any(extra):
            state = replace(state, agent_status=add_notes(state.agent_status, extra))
        self.metrics.observe(samples, duration, type(self.reader).__name__, state.agent_status, holders)
        self.hub.update(state, self.threshold_mib, self.heartbeat_seconds)
        result: PublishResult | None = None
        if self.publisher is not None:
            result = self.publisher.publish(state, now)
            if result.written:
                self.metrics.wrote("success")
            elif result.error:
                self.metrics.wrote("error")
        self.last = StepResult(state, samples, result, holders)
        self.last_step_monotonic = time.monotonic()
        return self.last

    def _holders(self, samples: list[GpuSample]) -> tuple[dict[str, Holding], list[str]]:
        """Who holds each GPU (kubelet PodResources) and a status note when the kubelet could not be asked."""
        if self.pod_resources is None:
            return {}, []
        try:
            assignments, note = self.pod_resources.poll()
        except Exception as e:  # sources should not raise; never let one stop sampling
            log.error("pod_resources_error", node=self.node, error=repr(e)[:300])
            return {}, [f"kubelet pod-resources: {type(e).__name__}"]
        return attribute(samples, assignments), [note]

    def healthy(self) -> bool:
        if self._thread is None:
            return True
        return time.monotonic() - self.last_step_monotonic < max(60.0, 6 * self.interval_seconds)

    def ready(self) -> bool:
        return self.last is not None

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.step()
            self._stop.wait(max(0.0, self.interval_seconds - (time.monotonic() - started)))

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name=f"agent-{self.node}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        try:
            self.reader.close()
        except Exception as e:
            log.warning("reader_close_error", node=self.node, error=repr(e))
        close = getattr(self.pod_resources, "close", None)
        if callable(close):
            close()
        self._opened = False
