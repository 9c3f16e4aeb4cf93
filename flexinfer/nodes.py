"""Node objects and views from the three offline sources: a fleet file, a NodeList dump
(`kubectl get nodes -o json`, JSON or YAML), or live Node dicts from the API server.

`fleet_node_objects` builds the Node JSON the API server would hold once each node's agent has
published (labels + annotations computed by the same functions the agent uses), so offline tools
and the demo see exactly what the extender sees in a cluster.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from flexinfer import keys
from flexinfer.errors import ParseError
from flexinfer.fleet import (
    DEFAULT_AMD_DRIVER,
    DEFAULT_CUDA_VERSION,
    DEFAULT_INTEL_DRIVER,
    DEFAULT_NVIDIA_DRIVER,
    DEFAULT_ROCM_VERSION,
    Fleet,
    FleetNode,
    gpu_uuid,
    mig_uuid,
    parse_fleet,
)
from flexinfer.state import GpuState, NodeGpuState, NodeView, node_annotations, node_view, state_labels


def fleet_gpu_states(node: FleetNode) -> list[GpuState]:
    """The GPU states an agent would report for a fleet node at its first sample (no faults applied
    except a GPU marked unhealthy in the file): MIG instances as their own entries (numbered in physical
    order on a node with MIG), each GPU's time-slicing replicas from `gpuReplicas`, no holders yet."""
    out: list[GpuState] = []
    renumber = any(g.mig for g in node.gpus)
    for i, g in enumerate(node.gpus):
        base = GpuState(
            index=len(out) if renumber else i, uuid=gpu_uuid(node.name, i, g), vendor=g.vendor.lower(),
            arch=g.arch.lower(), total_mib=g.total_mib, free_mib=g.total_mib - g.used_mib, healthy=g.healthy,
            product=g.product, reason="" if g.healthy else "marked unhealthy in fleet file",
            unified_memory=g.unified_memory, replicas=node.gpu_replicas,
        )
        if not g.mig:
            out.append(base)
            continue
        for k, m in enumerate(g.mig):
            out.append(replace(base, index=len(out), uuid=mig_uuid(node.name, i, k, m), total_mib=m.total_mi_b,
                               free_mib=m.total_mi_b - m.used_mi_b, mig_profile=m.profile, mig_parent=i))
    return out


def fleet_versions(node: FleetNode) -> dict[str, str]:
    """The driver / CUDA / ROCm versions the fake libraries report for a fleet node (the agent's labels)."""
    vendors = {g.vendor.lower() for g in node.gpus}
    default_driver = {"nvidia": DEFAULT_NVIDIA_DRIVER, "amd": DEFAULT_AMD_DRIVER, "intel": DEFAULT_INTEL_DRIVER}
    driver = node.driver_version or (default_driver.get(next(iter(vendors)), "") if len(vendors) == 1 else "")
    return {"driver_version": driver,
            "cuda_version": (node.cuda_version or DEFAULT_CUDA_VERSION) if "nvidia" in vendors else "",
            "rocm_version": (node.rocm_version or DEFAULT_ROCM_VERSION) if "amd" in vendors else ""}


def node_object(name: str, labels: dict[str, str], annotations: dict[str, str], *,
                gpu_resources: dict[str, int] | None = None, taints: list[dict[str, str]] | None = None,
                cpu: str = "16", memory: str = "64Gi") -> dict[str, Any]:
    capacity = {"cpu": cpu, "memory": memory, "pods": "110"}
    for res, n in (gpu_resources or {}).items():
        capacity[res] = str(n)
    all_labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", **labels}
    obj: dict[str, Any] = {
        "metadata": {"name": name, "labels": all_labels, "annotations": dict(annotations)},
        "spec": {},
        "status": {
            "capacity": capacity,
            "allocatable": dict(capacity),
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
        },
    }
    if taints:
        obj["spec"]["taints"] = [dict(t) for t in taints]
    return obj


def fleet_node_objects(fleet: Fleet, now: float | None = None, *, published: bool = True) -> list[dict[str, Any]]:
    """Node JSON objects for a fleet; with published=False only the kubelet's view (no FlexInfer keys)."""
    now = time.time() if now is None else now
    objs = []
    for n in fleet.nodes:
        gpus = fleet_gpu_states(n)
        resources: dict[str, int] = {}
        drivers = {i: fg.driver for i, fg in enumerate(n.gpus)}
        for g in gpus:
            res = {"nvidia": keys.RESOURCE_NVIDIA, "amd": keys.RESOURCE_AMD}.get(g.vendor)
            if g.vendor == "intel":  # the Intel device plugin names the resource after the GPU's driver
                xe = drivers.get(g.physical_index, "xe") in ("", "xe")
                res = keys.RESOURCE_INTEL_XE if xe else keys.RESOURCE_INTEL_I915
            if res:
                resources[res] = resources.get(res, 0) + g.replicas
        labels = {**n.labels}
        annotations: dict[str, str] = {}
        if published:
            state = NodeGpuState(node=n.name, gpus=tuple(gpus), observed_unix=now, **fleet_versions(n))
            labels.update(state_labels(state))
            annotations = node_annotations(state)
        objs.append(node_object(n.name, labels, annotations, gpu_resources=resources, taints=n.taints,
                                cpu=n.cpu, memory=n.memory))
    return objs


def view_of(obj: dict[str, Any]) -> NodeView:
    meta = obj.get("metadata") or {}
    return node_view(str(meta.get("name", "")), meta.get("labels") or {}, meta.get("annotations") or {})


DEFAULT_MEMO_NODES = 5000  # Kubernetes' largest supported cluster size
MAX_MEMO_VIEW_BYTES = 64 * 1024  # a real Node's labels + our state: a few KiB; larger views are parsed each time
DEFAULT_MEMO_BYTES = 64 * 1024 * 1024  # all views together (5000 nodes at ~13 KiB each)


def view_bytes(view: NodeView) -> int:
    """Roughly what a NodeView keeps in memory: its texts (the labels it copied, the agent status, the parse error)
    plus a fixed cost per label and per GPU. What the memo bounds; exact object sizes do not matter."""
    labels = view.labels
    n = 256 + len(view.name) + len(view.error) + len(view.agent_status) + 64 * len(labels)
    n += sum(map(len, labels)) + sum(map(len, labels.values()))  # in C: the full-Nodes request path calls this
    if view.state is not None:
        for g in view.state.gpus:
            n += 256 + len(g.uuid) + len(g.arch) + len(g.product) + len(g.reason) + sum(64 + len(p) for p in g.pods)
    return n


class NodeViewMemo:
    """Bounded memo of NodeViews parsed from full-`Nodes` extender requests, keyed by (name, resourceVersion).

    In full-Nodes mode without an informer, kube-scheduler re-sends the same Node objects every cycle;
    the API server gives every change of a Node a new resourceVersion, so a view parsed from
    (name, rv) is valid for any later request carrying the same pair. One entry per node name (a new
    rv replaces the old entry), at most `max_nodes` names and `max_bytes` of views (`view_bytes`), least recently
    used dropped first. A view over `max_view_bytes` (huge labels or annotation texts: a request can carry
    anything) is never memoised, nor is an empty resourceVersion (nothing proves two such objects are equal).

    Separate from the informer's NodeCache on purpose: `NodeCache.get_if_current` answers only for
    what the watch delivered; this memo only for what requests carried.
    """

    def __init__(self, max_nodes: int = DEFAULT_MEMO_NODES, *, max_bytes: int = DEFAULT_MEMO_BYTES,
                 max_view_bytes: int = MAX_MEMO_VIEW_BYTES) -> None:
        if max_nodes < 1:
            raise ValueError(f"max_nodes must be >= 1, got {max_nodes}")
        self.max_nodes = max_nodes
        self.max_bytes = max_bytes
        self.max_view_bytes = min(max_view_bytes, max_bytes)
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[str, NodeView, int]] = OrderedDict()
        self.bytes = 0  # view_bytes of the entries
        self.hits = 0
        self.misses = 0
        self.oversized = 0  # views not memoised for their size

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str, resource_version: str) -> NodeView | None:
        """The memoised view when it was parsed from this exact (name, resourceVersion), else None."""
        if not resource_version:
            return None
        with self._lock:
            entry = self._entries.get(name)
            if entry is None or entry[0] != resource_version:
                self.misses += 1
                return None
            self._entries.move_to_end(name)
            self.hits += 1
            return entry[1]

    def put(self, name: str, resource_version: str, view: NodeView) -> None:
        if not resource_version:
            return
        size = view_bytes(view)
        with self._lock:
            old = self._entries.pop(name, None)
            if old is not None:
                self.bytes -= old[2]
            if size > self.max_view_bytes:
                self.oversized += 1
                return
            self._entries[name] = (resource_version, view, size)
            self.bytes += size
            while len(self._entries) > self.max_nodes or self.bytes > self.max_bytes:
                self.bytes -= self._entries.popitem(last=False)[1][2]


def load_node_objects(path: str | Path, now: float | None = None) -> list[dict[str, Any]]:
    """Read a NodeList (JSON/YAML, `kubectl get nodes -o json`), a single Node, or a fleet file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ParseError("nodes file", str(p), f"a readable file ({e.strerror})") from None
    try:
        data = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ParseError(f"nodes file {p}", text[:60], f"JSON or YAML ({e})") from None
    if not isinstance(data, dict):
        raise ParseError(f"nodes file {p}", data, "a NodeList, a Node or a Fleet document")
    kind = data.get("kind")
    if kind == "Fleet" or ("nodes" in data and "items" not in data):
        return fleet_node_objects(parse_fleet(data, f"fleet file {p}"), now)
    if kind == "Node":
        return [data]
    items = data.get("items")
    if isinstance(items, list) and all(isinstance(i, dict) for i in items):
        return items
    raise ParseError(f"nodes file {p}", kind, "kind NodeList (items), Node, or Fleet")
