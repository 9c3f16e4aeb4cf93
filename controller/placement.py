"""Where could a Model's pod go right now? The extender's policy over the controller's node cache (pure).

The controller answers two questions with the code kube-scheduler itself runs through:

* **Can a preemptor be placed** if the group's holder released its GPU? (issue: never tear down what you
  would roll back to.) Before scaling a holder down, the controller renders the preemptor's pod, applies
  kube-scheduler's own node filters (:mod:`flexinfer.nodefilters`: Ready, nodeSelector, taints, the GPU
  extended resource) and then ``extender.policy.evaluate`` (per-GPU VRAM, arch/backend compatibility,
  vendor, health, fresh agent data) to every Node, with the holder's memory given back on the GPU(s) it uses.
* **Which vendor for ``spec.gpu.vendor: auto``**: the vendor of the best node the model fits on now
  (:func:`choose_vendor`).

Free memory is counted as the extender counts it (``policy.effective_free``, Kubernetes-requests semantics):
min(what the agent sees free, total - MiB committed to bound pods), so a bound pod whose model is not loaded yet
(or loads on the first request, like Ollama) still holds its estimate. The commitments come from the same code
as the extender's (``extender.commitments``: ``from_pods`` over the pods the caller lists, ``settle`` for
their GPUs: the agent's attribution, else the policy's pick; there are no reservations outside the extender).
The controller passes its model pods (label ``flexinfer.ai/model``, every namespace it watches), the proxy
those of its namespace: pods of other workloads carrying FlexInfer annotations count only once the agent sees
their memory used.

The release gives back the holder's commitment (its bound pod) on the GPU(s) it holds, and its memory in use
on the GPUs the holder's pod uses: the agent lists the pods holding each GPU (from the kubelet's PodResources
API) in ``flexinfer.ai/gpu-state``; on each of them ``min(in use, the holder's per-GPU estimate)`` MiB become
free. Where the agent cannot tell (no PodResources access), that memory is given back on the ``count`` GPUs of
the holder's vendor with the most memory in use: exact on single-GPU nodes (the homelab lanes), an assumption
on multi-GPU nodes.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from flexinfer.extender.commitments import Commitments, Release, released_view
from flexinfer.extender.pod import PodRequirements, requirements_from_dict
from flexinfer.extender.policy import PolicyConfig, commit_gpus, evaluate

from flexinfer import keys
from flexinfer.nodefilters import node_filter_reject
from flexinfer.nodes import view_of
from flexinfer.state import NodeView

JSON = dict[str, Any]
MAX_REASONS = 3  # distinct rejection reasons named in a summary


@dataclass(frozen=True, slots=True)
class Fit:
    ok: bool
    node: str = ""
    vendor: str = ""  # vendor of the chosen GPUs
    gpus: tuple[int, ...] = ()
    score: int = 0
    detail: str = ""  # the extender's detail for the chosen node
    reason: str = ""  # why not: the most common rejections, with a node each
    feasible_by_vendor: Mapping[str, int] = dataclasses.field(default_factory=dict)


def pod_of(deployment: JSON) -> JSON:
    """The pod a Deployment would create (metadata and spec of its template)."""
    template = (deployment.get("spec") or {}).get("template") or {}
    meta = dict(template.get("metadata") or {})
    meta.setdefault("namespace", (deployment.get("metadata") or {}).get("namespace", ""))
    meta.setdefault("name", (deployment.get("metadata") or {}).get("name", ""))
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template.get("spec") or {}}


def release_of(pods: Iterable[JSON]) -> list[Release]:
    """What the given (running) pods of a holder free when it is scaled to zero."""
    out = []
    for pod in pods:
        node = str((pod.get("spec") or {}).get("nodeName") or "")
        if not node or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        try:
            req = requirements_from_dict(pod)
        except ValueError:
            continue
        if req.needs_gpu and req.vram_estimate_mib:
            meta = pod.get("metadata") or {}
            out.append(Release(node, req.vendor, req.vram_estimate_mib, max(1, req.gpu_count),
                               f"{meta.get('namespace', '')}/{meta.get('name', '')}"))
    return out


def _resource_reject(req: PodRequirements, pod_spec: JSON, node: JSON) -> str | None:
    """The GPU extended resource the pod requests must be allocatable on the node at all."""
    alloc = (node.get("status") or {}).get("allocatable") or {}
    for c in pod_spec.get("containers") or []:
        for res in keys.GPU_RESOURCES:
            want = ((c.get("resources") or {}).get("limits") or {}).get(res)
            if want is None:
                continue
            have = str(alloc.get(res, "0"))
            if not have.isdigit() or int(have) < int(str(want)):
                return f"Insufficient {res}"
    return None


@dataclass(frozen=True, slots=True)
class NodeFit:
    """One node's answer for a pod: `fit` when it takes the pod; else `reason` (kube-scheduler's or the
    extender's short reason) and `detail` (the extender's, with the node's numbers; "" when a node filter
    rejected the node before the extender was asked)."""

    node: str
    fit: Fit | None
    reason: str = ""
    detail: str = ""


def node_fits(pod: JSON, nodes: Iterable[JSON], now_unix: float, *, releases: Iterable[Release] = (),
              config: PolicyConfig | None = None, bound: Commitments | None = None) -> Iterator[NodeFit]:
    """Per node of `nodes`, in order: would it take `pod` (a rendered model pod) now, after `releases`? See
    :func:`place` for `bound`."""
    config = config or PolicyConfig()
    req = requirements_from_dict(pod)
    binpack = config.strategy == "binpack"

    def placer(r: PodRequirements, v: NodeView, committed: Mapping[int, int]) -> tuple[int, ...]:
        return commit_gpus(r, v, committed, binpack)
    spec = pod.get("spec") or {}
    by_node: dict[str, list[Release]] = {}
    for r in releases:
        by_node.setdefault(r.node, []).append(r)
    for node in nodes:
        name = str((node.get("metadata") or {}).get("name") or "")
        why = node_filter_reject(spec, node) or _resource_reject(req, spec, node)
        if why is not None:
            yield NodeFit(name, None, why)
            continue
        view = view_of(node)
        released = by_node.get(name, ())
        committed = None
        if bound is not None and name in bound.by_node:  # GPUs picked on the node as published, then released
            committed = bound.settle(name, view, placer, without={r.pod for r in released if r.pod})
        for r in released:
            view = released_view(view, r)
        verdict = evaluate(req, view, now_unix, config, node=name, committed=committed)
        if not verdict.feasible:
            yield NodeFit(name, None, verdict.reason, verdict.detail)
            continue
        gpu_vendor = next((g.vendor for g in (view.state.gpus if view.state else ()) if g.index in verdict.gpus), "")
        yield NodeFit(name, Fit(True, name, gpu_vendor, verdict.gpus, verdict.score, verdict.detail))


def place(pod: JSON, nodes: Iterable[JSON], now_unix: float, *, releases: Iterable[Release] = (),
          config: PolicyConfig | None = None, bound: Commitments | None = None) -> Fit:
    """Would `pod` (a rendered model pod) be placed on one of `nodes` now, after `releases`? The best node by
    the extender's score (ties: name). `bound`: the VRAM committed to bound pods (``commitments.from_pods``), as the
    extender counts it (``policy.effective_free``); a release gives back its pod's commitment too."""
    rejections: Counter[str] = Counter()
    example: dict[str, str] = {}
    feasible: Counter[str] = Counter()
    best: Fit | None = None
    for nf in node_fits(pod, nodes, now_unix, releases=releases, config=config, bound=bound):
        cand = nf.fit
        if cand is not None:
            feasible[cand.vendor] += 1
            if best is None or (cand.score, best.node) > (best.score, cand.node):
                best = cand
            continue
        example.setdefault(nf.reason, f"{nf.node}: {nf.detail}" if nf.detail else nf.node)
        rejections[nf.reason] += 1
    if best is not None:
        return dataclasses.replace(best, feasible_by_vendor=dict(feasible))
    if not rejections:
        return Fit(False, reason="no nodes known")
    parts = [f"{n}x {why} (e.g. {example[why]})" for why, n in rejections.most_common(MAX_REASONS)]
    more = len(rejections) - MAX_REASONS
    return Fit(False, reason="; ".join(parts) + (f"; and {more} more reasons" if more > 0 else ""))


def choose_vendor(fits: Mapping[str, Fit], pinned: str = "") -> tuple[str, str]:
    """(vendor, why) for ``spec.gpu.vendor: auto`` from the fit of the pod rendered for each vendor. The vendor
    whose best node scores highest wins (ties: more nodes that fit, then nvidia); when it fits nowhere, the
    vendor in `pinned` (what the Deployment requests today), else nvidia."""
    ok = {v: f for v, f in fits.items() if f.ok}
    if ok:
        vendor = max(ok, key=lambda v: (ok[v].score, sum(ok[v].feasible_by_vendor.values()), v == "nvidia"))
        f = ok[vendor]
        others = ", ".join(f"{v}: {'fits on ' + fits[v].node if fits[v].ok else 'no node fits'}"
                           for v in sorted(fits) if v != vendor)
        return vendor, (f"fits now on {f.node} (GPU {','.join(map(str, f.gpus))}, score {f.score})"
                        + (f"; {others}" if others else ""))
    fallback = pinned if pinned in fits else ("nvidia" if "nvidia" in fits else next(iter(sorted(fits)), "nvidia"))
    why = "; ".join(f"{v}: {fits[v].reason}" for v in sorted(fits))
    return fallback, f"fits on no node of either vendor now ({why}); requesting {fallback}"
