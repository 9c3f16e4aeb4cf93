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

The node cache (`extender.cache.NodeCache`) keeps this table and folds each node's committed MiB into the free
columns of its class table, through the same change log Node updates use, so a commitment costs one row update when
a pod is bound or goes away, and nothing per request. Not thread-safe by itself: the node cache's lock guards it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .pod import PodRequirements

EMPTY: Mapping[int, int] = {}
# The pods the extender watches (and `flexinfer explain --cluster` lists): bound, unfinished. A pod leaving the
# selection (finished) arrives in the watch as DELETED.
BOUND_PODS_SELECTOR = "spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed"


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

    def per_gpu(self, node: str, placements: Mapping[str, tuple[int, ...]]) -> dict[int, int]:
        """GPU index -> MiB committed on `node`; `placements` ("namespace/pod" -> GPU indexes) is the agent's
        attribution in the node's current state. Pods whose GPUs are not chosen yet count nowhere."""
        out: dict[int, int] = {}
        for c in self.on(node):
            gpus = placements.get(c.name) if placements else None
            if gpus is None:
                gpus = c.gpus or ()
            for i in gpus:
                out[i] = out.get(i, 0) + c.mib_per_gpu
        return out
