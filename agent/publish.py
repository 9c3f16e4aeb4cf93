"""Publishing a node's GPU state to its Node object, with hysteresis.

`should_publish` is the pure policy; `Publisher` is the thin adapter around one JSON merge patch that touches
only our keys (flexinfer.kube). The patch's answer is the whole Node, so every write also refreshes what the
agent knows of it at no extra cost: the labels others wrote (GPU Feature Discovery's, the AMD labeller's, our
own keys someone else set) and the GPU capacity the device plugins advertise (time-slicing replicas). Our label
keys found on the Node that this state does not want (a `gpu.arch.gfx906` written by hand or by an older agent)
are a reason to write: they are removed even when nothing else changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flexinfer import freshness, logs
from flexinfer.state import NodeGpuState, is_owned_label, node_annotations, state_labels

log = logs.get("flexinfer.agent.publish")

DEFAULT_THRESHOLD_MIB = 1024
DEFAULT_HEARTBEAT_SECONDS = freshness.HEARTBEAT_SECONDS  # < the extender's max state age: see flexinfer.freshness
DRIFT_MIN_INTERVAL_SECONDS = 30.0  # a label drift (our keys changed by someone else) is repaired at most this often


def should_publish(
    previous_published: NodeGpuState | None,
    current: NodeGpuState,
    now: float,
    threshold_mib: int = DEFAULT_THRESHOLD_MIB,
    heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS,
) -> tuple[bool, str]:
    """Whether to write `current`, compared with what was last written. Pure.

    Writes when: nothing was written yet; the agent status changed; the set of GPUs (UUIDs)
    changed; any GPU's health, error count or holders (pods, replicas in use) changed; the labels
    would change; any GPU's free
    memory moved by MORE than threshold_mib since the last write (drift accumulates, so a slow
    leak is written once it crosses the threshold); or heartbeat_seconds passed since the last write.
    """
    if previous_published is None:
        return True, "first"
    prev, cur = previous_published, current
    prev_by = {g.uuid: g for g in prev.gpus}
    cur_by = {g.uuid: g for g in cur.gpus}
    if prev_by.keys() != cur_by.keys():
        return True, "gpu-set"
    for uuid, g in cur_by.items():
        p = prev_by[uuid]
        if (p.healthy, p.reason) != (g.healthy, g.reason):
            return True, "health"
        if p.error_events != g.error_events:
            return True, "errors"
        if (p.pods, p.replicas, p.replicas_used) != (g.pods, g.replicas, g.replicas_used):
            return True, "pods"  # the extender moves a bound pod's reservation to the GPU it got
    if prev.agent_status != cur.agent_status:
        return True, "agent-status"
    if state_labels(prev) != state_labels(cur):
        return True, "labels"
    for uuid, g in cur_by.items():
        if abs(g.free_mib - prev_by[uuid].free_mib) > threshold_mib:
            return True, "memory"
    if now - prev.observed_unix >= heartbeat_seconds:
        return True, "heartbeat"
    return False, ""


def desired_metadata(
    state: NodeGpuState, current_labels: Mapping[str, str] | None = None
) -> tuple[dict[str, str | None], dict[str, str | None]]:
    """(labels, annotations) to patch: ours for this state, plus None for our stale label keys."""
    labels: dict[str, str | None] = dict(state_labels(state))
    for key in current_labels or {}:
        if is_owned_label(key) and key not in labels:
            labels[key] = None
    annotations: dict[str, str | None] = dict(node_annotations(state))
    return labels, annotations


def label_drift(state: NodeGpuState, current_labels: Mapping[str, str] | None) -> list[str]:
    """Our label keys on the Node that differ from what this state wants: stale keys (ours, not wanted, whoever
    wrote them) and changed values. Pure; empty when the Node's labels are unknown."""
    if not current_labels:
        return []
    want = state_labels(state)
    out = [k for k in current_labels if is_owned_label(k) and k not in want]
    out += [k for k, v in want.items() if current_labels.get(k) != v]
    return sorted(out)


@dataclass
class PublishResult:
    written: bool
    reason: str
    error: str = ""
    labels: dict[str, str | None] = field(default_factory=dict)
    annotations: dict[str, str | None] = field(default_factory=dict)


class Publisher:
    """Writes labels+annotations to one Node. Never raises: errors are logged and retried next cycle."""

    def __init__(self, api: Any, node: str, threshold_mib: int = DEFAULT_THRESHOLD_MIB,
                 heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS, retry: Any = None) -> None:
        self.api = api
        self.retry = retry  # flexinfer.kube.RetryPolicy; None = the kube module's default
        self.node = node
        self.threshold_mib = threshold_mib
        self.heartbeat_seconds = heartbeat_seconds
        self.last_published: NodeGpuState | None = None
        self.node_labels: dict[str, str] | None = None  # current labels on the Node (ours and others)
        self.node_capacity: dict[str, str] = {}  # status.capacity of the Node (device-plugin GPU counts)
        self._read_attempt: float | None = None  # `now` of the agent step that last tried to read the Node
        self.writes_ok = 0
        self.writes_failed = 0

    def _write(self, labels: dict[str, str | None], annotations: dict[str, str | None]) -> Any:
        """One merge patch; returns the Node the API server answered with (or None)."""
        from flexinfer.kube import merge_patch, node_metadata_patch

        if not labels and not annotations:
            return None
        patch = node_metadata_patch(labels, annotations)
        if self.retry is not None:
            return merge_patch(self.api, "nodes", self.node, patch, retry=self.retry)
        return merge_patch(self.api, "nodes", self.node, patch)

    def _learn(self, node: Any) -> None:
        """Take labels and GPU capacity from a Node object the API server returned."""
        if not isinstance(node, dict):
            return
        labels = (node.get("metadata") or {}).get("labels")
        if isinstance(labels, dict):
            self.node_labels = {str(k): str(v) for k, v in labels.items()}
        capacity = (node.get("status") or {}).get("capacity")
        if isinstance(capacity, dict):
            self.node_capacity = {str(k): str(v) for k, v in capacity.items()}

    def _fetch_labels(self) -> None:
        if self.api is None:
            self.node_labels = {}
            return
        # Raw JSON GET through the official client's ApiClient (flexinfer.kube), not CoreV1Api.read_node:
        # importing CoreV1Api loads ~20 MiB of typed model classes the agent never needs. One attempt,
        # as before: the read is an optimisation, the patch is written either way.
        from flexinfer.kube import NO_RETRY, get_object

        try:
            node = get_object(self.api, "nodes", self.node, retry=NO_RETRY)
        except Exception as e:  # network, 5xx, ...: publish anyway, learn stale keys next time
            log.warning("node_read_failed", node=self.node, error=(str(e).splitlines() or [""])[0][:300])
            return
        if node is None:
            log.warning("node_read_failed", node=self.node, error="node not found (404)")
            return
        self._learn(node)
        if self.node_labels is None:
            self.node_labels = {}

    def know_node(self, now: float | None = None) -> None:
        """Read the Node if its labels are unknown (the agent's first step; later writes keep it current). A read
        that fails is not repeated by `publish` at the same `now` (one client timeout per step at most)."""
        if self.node_labels is None:
            self._read_attempt = now
            self._fetch_labels()

    def publish(self, state: NodeGpuState, now: float, force: bool = False) -> PublishResult:
        due, reason = should_publish(self.last_published, state, now, self.threshold_mib, self.heartbeat_seconds)
        if not (due or force):
            last = self.last_published.observed_unix if self.last_published is not None else 0.0
            drift = label_drift(state, self.node_labels) if now - last >= DRIFT_MIN_INTERVAL_SECONDS else []
            if not drift:
                return PublishResult(False, "")
            due, reason = True, "labels-drift"
            log.info("node_label_drift", node=self.node, keys=drift[:10])
        reason = reason or "forced"
        if self.node_labels is None and (now is None or self._read_attempt != now):
            self._fetch_labels()
        labels, annotations = desired_metadata(state, self.node_labels)
        from flexinfer.kube import KubeError

        try:
            answer = self._write(labels, annotations)
        except KubeError as e:
            self.writes_failed += 1
            log.warning("node_patch_failed", node=self.node, reason=reason,
                        error=(str(e).splitlines() or [""])[0][:300])
            return PublishResult(False, reason, error=str(e), labels=labels, annotations=annotations)
        except Exception as e:  # never crash the sampling loop
            self.writes_failed += 1
            log.error("node_patch_error", node=self.node, reason=reason, error=repr(e)[:300])
            return PublishResult(False, reason, error=repr(e), labels=labels, annotations=annotations)
        self.writes_ok += 1
        if isinstance(answer, dict):
            self._learn(answer)
        elif self.node_labels is not None:  # unknown until a read succeeds: stale keys are learned then
            merged = dict(self.node_labels)
            for k, v in labels.items():
                if v is None:
                    merged.pop(k, None)
                else:
                    merged[k] = v
            self.node_labels = merged
        self.last_published = state
        log.info("node_published", node=self.node, reason=reason, free_mib=state.healthy_free_mib,
                 gpus=len(state.gpus), status=state.agent_status)
        return PublishResult(True, reason, labels=labels, annotations=annotations)


class DryRunPublisher(Publisher):
    """Same policy, but each write is handed to `emit(node, labels, annotations)` instead of the API."""

    def __init__(self, node: str, emit: Any, threshold_mib: int = DEFAULT_THRESHOLD_MIB,
                 heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS) -> None:
        super().__init__(None, node, threshold_mib, heartbeat_seconds)
        self.emit = emit

    def _write(self, labels: dict[str, str | None], annotations: dict[str, str | None]) -> None:
        self.emit(self.node, labels, annotations)
        return None
