"""kube-scheduler's own node filters that decide whether a GPU pod may go to a node before the extender is
asked (pure; plain Pod spec / Node dicts): the node is Ready and schedulable, matches the pod's nodeSelector,
and every NoSchedule/NoExecute taint is tolerated. Texts follow kube-scheduler's FailedScheduling wording.

Used by the controller's fit checks (``controller.placement``) and by the simulated scheduler of the demo
(``flexinfer.sim.intree``, which adds extended-resource accounting over the pods bound to a node).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def tolerates(tolerations: Sequence[Mapping[str, Any]], taint: Mapping[str, Any]) -> bool:
    """Whether one of `tolerations` tolerates `taint` (operators Exists and Equal, effect match or any)."""
    for t in tolerations:
        if t.get("effect") and t.get("effect") != taint.get("effect"):
            continue
        op = t.get("operator", "Equal")
        if op == "Exists" and (not t.get("key") or t.get("key") == taint.get("key")):
            return True
        if op == "Equal" and t.get("key") == taint.get("key") and t.get("value", "") == taint.get("value", ""):
            return True
    return False


def node_filter_reject(pod_spec: Mapping[str, Any], node: Mapping[str, Any]) -> str | None:
    """Why kube-scheduler would not consider `node` for a pod with `pod_spec` (None = it would)."""
    meta = node.get("metadata") or {}
    labels = meta.get("labels") or {}
    nspec = node.get("spec") or {}
    if nspec.get("unschedulable"):
        return "node is unschedulable"
    ready = [c for c in (node.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"]
    if ready and ready[0].get("status") != "True":
        return "node is not Ready"
    for k, v in (pod_spec.get("nodeSelector") or {}).items():
        if labels.get(k) != v:
            return f"node(s) didn't match Pod's node selector ({k}={v})"
    tolerations = pod_spec.get("tolerations") or []
    for taint in nspec.get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not tolerates(tolerations, taint):
            return f"node(s) had untolerated taint {{{taint.get('key')}: {taint.get('value', '')}}}"
    return None
