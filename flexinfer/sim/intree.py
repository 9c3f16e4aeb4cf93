"""The part of kube-scheduler the demo must imitate before it calls the extender: the in-tree
filters that matter for GPU pods (node readiness, nodeSelector, taints/tolerations, extended
resource fit) and binding bookkeeping. Pure functions over plain Pod/Node dicts.
"""

from __future__ import annotations

from typing import Any

import msgspec

from flexinfer.errors import ParseError
from flexinfer.extender.pod import PodWire, resource_requests
from flexinfer.nodefilters import node_filter_reject


def _is_int(s: str) -> bool:
    """ASCII digits only: str.isdigit() also accepts '²', which int() rejects."""
    return s.isascii() and s.isdigit()


def pod_gpu_requests(pod: dict[str, Any]) -> dict[str, int]:
    """Extended GPU resources a pod asks for, by resource name, counted as the extender counts them
    (`flexinfer.extender.pod.gpu_requests`: a container's limit, else its request; summed over the containers;
    at least the largest init container's). A pod the API server would have refused (not a Pod, a quantity
    that is not a whole number of devices) asks for nothing here: the extender names its error."""
    try:
        return resource_requests(msgspec.convert(pod, PodWire).spec)
    except (msgspec.ValidationError, ParseError):
        return {}


def intree_reject(pod: dict[str, Any], node: dict[str, Any], bound: list[dict[str, Any]]) -> str | None:
    """Why kube-scheduler's own plugins would reject `node` for `pod` (None = feasible).

    `bound` are the pods already bound to this node (for extended-resource accounting).
    """
    why = node_filter_reject(pod.get("spec") or {}, node)
    if why:
        return why
    want = pod_gpu_requests(pod)
    alloc = (node.get("status") or {}).get("allocatable") or {}
    for res, n in want.items():
        used = sum(pod_gpu_requests(p).get(res, 0) for p in bound)
        have = int(str(alloc.get(res, "0"))) if _is_int(str(alloc.get(res, "0"))) else 0
        if have - used < n:
            return f"Insufficient {res}"
    return None
