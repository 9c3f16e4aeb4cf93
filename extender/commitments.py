"""VRAM committed to bound pods: Kubernetes-requests semantics for the per-GPU estimate.

A pod bound to a node (the pod watch: spec.nodeName set, not Succeeded/Failed, not being deleted) holds its per-GPU
VRAM estimate on the GPUs it got for exactly as long as it stays bound; nothing expires by time. Per GPU,
`committed` = the sum of those estimates, and the policy fits pods against

    min(the agent's observed free MiB, total - committed) - MiB reserved for pods not bound yet

(`policy.effective_free`). A model the agent already sees loaded is counted once (the min); a bound pod whose model
is not loaded yet, or is loaded on the first request (Ollama), is still counted (the committed term); pods without
our annotations are in the observed term. Nothing guesses when a model's memory becomes visible.

Which GPUs a bound pod holds, first match wins:
1. the agent's attribution: the GPUs whose `p` list names the pod (kubelet PodResources; docs/pod-attribution.md),
   read from the node's current state, so it follows the device plugin's real choice;
2. the extender's own choice: the GPUs of the pod's tentative reservation, when it was bound to the node it was
   reserved on;
3. the policy's pick on that node (`policy.commit_gpus`), made once, when the node's GPU state is known (a pod
   bound elsewhere than reserved, or seen first after a restart).

The controller's and the proxy's fit checks use the same table and rules over the pods they list (`from_pods`,
`Commitments.settle`: rules 1 and 3, there are no reservations outside the extender; controller/placement.py).

The node cache (`extender.cache.NodeCache`) keeps this table and folds each node's committed MiB into the free
columns of its class table, through the same change log Node updates use, so a commitment costs one row update when
a pod is bound or goes away, and nothing per request. Not thread-safe by itself: the node cache's lock guards it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from flexinfer.state import NodeView

from .pod import PodRequirements, requirements_from_dict

EMPTY: Mapping[int, int] = {}
# The pods the extender watches (and `flexinfer explain --cluster` lists): bound, unfinished. A pod leaving the
# selection (finished) arrives in the watch as DELETED.
BOUND_PODS_SELECTOR = "spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed"

# Picks the GPUs of a bound pod neither the agent's attribution nor a reservation names: (its requirements, the
# node's view, GPU index -> MiB the other bound pods there hold) -> GPU indexes (`policy.commit_gpus`).
Placer = Callable[[PodRequirements, NodeView, Mapping[int, int]], tuple[int, ...]]


@dataclass(slots=True)
class Commitment:
    pod: str  # pod key (uid)
    name: str  # "namespace/pod": matched with the GPUs the node's agent says the pod holds
    node: str
    mib_per_gpu: int
    gpus: tuple[int, ...] | None  # the extender's choice; None: to be picked once the node's GPU state is known
    req: PodRequirements | None = None  # kept while `gpus` is None, to pick them


class Commitments:
    """Bound pods by pod key and by node."""

    def __init__(self) -> None:
        self.by_pod: dict[str, Commitment] = {}
        self.by_node: dict[str, dict[str, Commitment]] = {}

    def __len__(self) -> int:
        return len(self.by_pod)

    def get(self, pod: str) -> Commitment | None:
        return self.by_pod.get(pod)

    def put(self, c: Commitment) -> Commitment | None:
        """Add or replace the pod's commitment; returns the one it replaced."""
        old = self.pop(c.pod)
        self.by_pod[c.pod] = c
        self.by_node.setdefault(c.node, {})[c.pod] = c
        return old

    def pop(self, pod: str) -> Commitment | None:
        old = self.by_pod.pop(pod, None)
        if old is not None:
            per = self.by_node.get(old.node)
            if per is not None:
                per.pop(pod, None)
                if not per:
                    del self.by_node[old.node]
        return old

    def on(self, node: str) -> Iterable[Commitment]:
        return (self.by_node.get(node) or {}).values()

    def per_gpu(self, node: str, placements: Mapping[str, tuple[int, ...]],
                without: Container[str] = ()) -> dict[int, int]:
        """GPU index -> MiB committed on `node`; `placements` ("namespace/pod" -> GPU indexes) is the agent's
        attribution in the node's current state. Pods whose GPUs are not chosen yet count nowhere; pods named
        ("namespace/pod") in `without` are left out (a what-if: released)."""
        out: dict[int, int] = {}
        for c in self.on(node):
            if without and c.name in without:
                continue
            gpus = placements.get(c.name) if placements else None
            if gpus is None:
                gpus = c.gpus or ()
            for i in gpus:
                out[i] = out.get(i, 0) + c.mib_per_gpu
        return out

    def settle(self, node: str, view: NodeView, placer: Placer, without: Container[str] = ()) -> dict[int, int]:
        """GPU index -> MiB committed on `node` as `view` (its current state) shows it: the agent's attribution,
        else the GPUs already chosen; a commitment without either gets the placer's pick now that the node's GPU
        state is known (once: it keeps them). `without`: pods left out of the sum (`per_gpu`). {} without GPU
        state."""
        state = view.state
        if node not in self.by_node or state is None or not state.gpus:
            return {}
        placements = state.placements()
        for c in self.on(node):
            if c.gpus is None and c.name not in placements and c.req is not None:
                c.gpus = placer(c.req, view, self.per_gpu(node, placements))
                c.req = None
        return self.per_gpu(node, placements, without)


def finished(pod: Mapping[str, Any]) -> bool:
    """Succeeded, Failed or being deleted: the pod holds nothing (the extender's pod watch uncommits it)."""
    meta = pod.get("metadata")
    status = pod.get("status")
    return ((isinstance(status, dict) and status.get("phase") in ("Succeeded", "Failed"))
            or (isinstance(meta, dict) and bool(meta.get("deletionTimestamp"))))


def commitment_of(pod: Mapping[str, Any], req: PodRequirements) -> Commitment | None:
    """The commitment the pod object holds, GPUs not chosen yet (`req` kept to pick them); None when it holds
    none: not one of ours, not bound, finished or being deleted, no GPU or no estimate."""
    spec = pod.get("spec")
    node = str(spec.get("nodeName") or "") if isinstance(spec, dict) else ""
    if not node or not req.needs_gpu or req.vram_estimate_mib <= 0 or finished(pod):
        return None
    return Commitment(req.key, f"{req.namespace}/{req.name}", node, req.vram_estimate_mib, None, req)


def commitments_in(pods: Iterable[object]) -> Iterator[Commitment]:
    """The commitment each pod object holds (`commitment_of`), GPUs not chosen yet; objects that are not
    Pod-shaped, and pods holding none, are skipped."""
    for pod in pods:
        if not isinstance(pod, dict):
            continue
        try:
            req = requirements_from_dict(pod)
        except ValueError:
            continue
        c = commitment_of(pod, req)
        if c is not None:
            yield c


def from_pods(pods: Iterable[object]) -> Commitments:
    """The commitments a list of pod objects holds, as the extender's pod watch would keep them, for fit checks
    outside the extender (the controller's preemption and vendor checks, the proxy's): the GPUs come from the
    agents' attribution or the placer's pick (`settle`); there are no reservations to take them from. Pods that
    are not Pod-shaped are skipped."""
    out = Commitments()
    for c in commitments_in(pods):
        out.put(c)
    return out


@dataclass(frozen=True, slots=True)
class Release:
    """GPU memory a running pod gives back when it is scaled down."""

    node: str
    vendor: str  # nvidia | amd | auto
    per_gpu_mib: int
    gpu_count: int
    pod: str = ""  # "namespace/name" of the pod


def released_view(view: NodeView, release: Release) -> NodeView:
    """`view` with a running pod's memory given back on the GPUs it holds: the agent's attribution, else (the
    agent does not say) the pod's vendor's busiest cards; at most its per-GPU estimate, at most what is in use.
    Used for what-ifs: the controller's preemption check (the holder scaled down) and `explain` of a bound pod
    (would it fit where it is, were it not there)."""
    state = view.state
    if state is None:
        return view
    prefix = release.pod + "/"
    holding = [g for g in state.gpus if release.pod and any(p.startswith(prefix) for p in g.pods)]
    if not holding:  # the agent does not say which GPU: the holder's vendor's busiest cards
        candidates = [g for g in state.gpus if g.healthy and (release.vendor not in ("nvidia", "amd", "intel")
                                                              or g.vendor == release.vendor)]
        holding = sorted(candidates, key=lambda g: (-g.used_mib, g.index))[:release.gpu_count]
    freed = {g.index: min(g.used_mib, release.per_gpu_mib) for g in holding}
    gpus = tuple(dataclasses.replace(g, free_mib=min(g.total_mib, g.free_mib + freed.get(g.index, 0)))
                 for g in state.gpus)
    return dataclasses.replace(view, state=dataclasses.replace(state, gpus=gpus))
