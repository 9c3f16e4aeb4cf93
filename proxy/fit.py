"""Can a Model be placed? Asked with the code kube-scheduler and the extender run (no second implementation).

:class:`PlacementFit` renders the pod the controller would create for the Model
(:func:`flexinfer.controller.render.render_deployment`) and asks :func:`flexinfer.controller.placement.node_fits`
about every Node: kube-scheduler's own node filters (:mod:`flexinfer.nodefilters`: Ready, schedulable,
``nodeSelector``, untolerated taints), the GPU extended resource, then the extender's policy
(``extender.policy.evaluate``: per-GPU VRAM, vendor, backend/architecture compatibility, health, fresh
agent data). :func:`classify` turns the per-node answers into one :class:`~.routing.FitVerdict`:

- FITS: some node takes it now;
- AFTER_RELEASE: no node takes it now, but on some node only free GPU memory is missing (the extender's
  resolvable "Insufficient free GPU memory"): e.g. the GPU its group holder occupies, which routing counts
  as a fit when the Model would displace that holder and the check could not give the holder's GPU back
  (no pod cache);
- NEVER: every node rejects it for a reason freeing memory cannot cure (GPU too small, wrong vendor,
  backend/arch, taints, selector, no GPU resource, stale or missing agent data);
- UNKNOWN: the Node cache has not synced, or the check failed (logged); routing then lets the controller
  and the scheduler decide, as without a fit check.

Free memory is counted as the extender counts it: a bound pod holds its VRAM estimate on its GPU while it is
bound, used yet or not (``extender.commitments``, ``policy.effective_free``), so a model that is bound but loads
lazily (Ollama, or still starting) is not mistaken for a free GPU. ``check(model, releasing)``: the Models
named in `releasing` (the running members of its group it would displace) give back their pods' commitments
and memory first, as in the controller's preemption check (:func:`flexinfer.controller.placement.place`); the
verdict then says so (``released``), and routing never activates a Model that still does not fit: the
controller would refuse the preemption.

Nodes come from a Node informer and bound model pods from a pod informer over the proxy's namespace (label
``flexinfer.ai/model``, bound and unfinished: ``--fit-check extender``; RBAC: list/watch Nodes, list/watch
pods in the namespace). Only what the checks read is kept per Node (labels, FlexInfer's annotations, taints,
schedulability, the Ready condition, GPU allocatable) and per pod (name, uid, FlexInfer annotations, node,
GPU requests, phase), so a large cluster costs little memory. Verdicts are cached per Model generation (and
holders released) for ``ttl_s`` seconds in a bounded LRU (``max_entries``).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, Self

from flexinfer.controller import placement
from flexinfer.controller.render import render_deployment
from flexinfer.extender.commitments import BOUND_PODS_SELECTOR, from_pods
from flexinfer.extender.policy import R_INSUFFICIENT

from flexinfer import keys, kube, logs
from flexinfer.model import Model

from .routing import Fit, FitVerdict

log = logs.get("flexinfer.proxy.fit")
JSON = dict[str, Any]


class FitChecker(Protocol):
    def check(self, model: Model, releasing: Iterable[str] = ()) -> FitVerdict: ...


class NoFitCheck:
    """``--fit-check off``: every Model is UNKNOWN."""

    def check(self, model: Model, releasing: Iterable[str] = ()) -> FitVerdict:
        return FitVerdict(Fit.UNKNOWN, "fit check off")


@dataclass(frozen=True, slots=True)
class NodeAnswer:
    node: str
    feasible: bool
    resolvable: bool  # only free GPU memory is missing
    reason: str  # the extender's short reason
    detail: str = ""  # with the node's numbers (free, committed, reserved MiB)


def classify(answers: Iterable[NodeAnswer]) -> FitVerdict:
    """One verdict from the per-node answers."""
    vs = list(answers)
    if not vs:
        return FitVerdict(Fit.NEVER, "no nodes known")
    passing = [v for v in vs if v.feasible]
    if passing:
        return FitVerdict(Fit.FITS, f"fits on {len(passing)} of {len(vs)} nodes (e.g. {passing[0].node})")
    resolvable = [v for v in vs if v.resolvable]
    if resolvable:
        first = resolvable[0]
        return FitVerdict(Fit.AFTER_RELEASE, f"{first.node}: {first.reason}" + (f" ({first.detail})" if first.detail
                                                                                 else ""))
    tally = Counter(v.reason for v in vs)
    text = ", ".join(f"{n}x {reason}" for reason, n in tally.most_common(3))
    return FitVerdict(Fit.NEVER, f"0/{len(vs)} nodes: {text}")


def trim_node(node: JSON) -> JSON:
    """The parts of a Node the fit check reads."""
    meta = node.get("metadata") or {}
    spec = node.get("spec") or {}
    status = node.get("status") or {}
    ann = {k: v for k, v in (meta.get("annotations") or {}).items() if str(k).startswith(keys.PREFIX)}
    alloc = {k: v for k, v in (status.get("allocatable") or {}).items() if k in keys.GPU_RESOURCES}
    ready = [c for c in status.get("conditions") or [] if isinstance(c, dict) and c.get("type") == "Ready"]
    return {"metadata": {"name": meta.get("name"), "labels": dict(meta.get("labels") or {}), "annotations": ann,
                         "resourceVersion": meta.get("resourceVersion")},
            "spec": {k: spec[k] for k in ("taints", "unschedulable") if k in spec},
            "status": {"allocatable": alloc, "conditions": [{"type": "Ready", "status": c.get("status")}
                                                            for c in ready[:1]]}}


class TrimmedStore:
    """Trimmed objects from informer events (thread-safe). `key`: an object's key, None to leave it out."""

    def __init__(self, trim: Callable[[JSON], JSON], key: Callable[[JSON], Hashable | None]) -> None:
        self._trim, self._key = trim, key
        self._lock = threading.Lock()
        self._items: dict[Hashable, JSON] = {}
        self.synced = False

    def on_event(self, etype: str, obj: JSON) -> None:
        with self._lock:
            if etype == "SYNC":
                items: dict[Hashable, JSON] = {}
                for item in obj.get("items") or []:
                    k = self._key(item)
                    if k is not None:
                        items[k] = self._trim(item)
                self._items = items
                self.synced = True
                return
            key = self._key(obj)
            if key is None:
                return
            if etype == "DELETED":
                self._items.pop(key, None)
            else:
                self._items[key] = self._trim(obj)

    def replace(self, objs: Iterable[JSON]) -> Self:
        self.on_event("SYNC", {"items": list(objs)})
        return self

    def _values(self) -> list[JSON]:
        with self._lock:
            return list(self._items.values())


class NodeStore(TrimmedStore):
    """Trimmed Nodes from informer events (thread-safe), keyed by name."""

    def __init__(self) -> None:
        super().__init__(trim_node, lambda obj: (obj.get("metadata") or {}).get("name") or None)

    def nodes(self) -> list[JSON]:
        return self._values()


def trim_pod(pod: JSON) -> JSON:
    """The parts of a pod the commitment and release read (never its env, volumes or status details)."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    phase = (pod.get("status") or {}).get("phase")

    def slim(containers: Any) -> list[JSON]:
        return [{"name": c.get("name", ""), "resources": c.get("resources") or {}}
                for c in containers or () if isinstance(c, dict)]

    out_meta = {k: meta[k] for k in ("name", "namespace", "uid", "deletionTimestamp") if meta.get(k)}
    out_meta["labels"] = {k: v for k, v in (meta.get("labels") or {}).items() if k == keys.LABEL_MODEL}
    out_meta["annotations"] = {k: v for k, v in (meta.get("annotations") or {}).items()
                               if str(k).startswith(keys.PREFIX)}
    return {"metadata": out_meta,
            "spec": {"nodeName": spec.get("nodeName"), "containers": slim(spec.get("containers")),
                     "initContainers": slim(spec.get("initContainers"))},
            "status": {"phase": phase} if phase else {}}


def _pod_key(obj: JSON) -> tuple[str, str] | None:
    meta = obj.get("metadata") or {}
    name = str(meta.get("name") or "")
    return (str(meta.get("namespace") or ""), name) if name else None


class PodStore(TrimmedStore):
    """Trimmed bound model pods from informer events (thread-safe), keyed by namespace/name."""

    def __init__(self) -> None:
        super().__init__(trim_pod, _pod_key)

    def pods(self) -> list[JSON]:
        return self._values()


class PlacementFit:
    """See the module docstring. `pods`: the bound model pods (None: commitments and releases not counted, only
    what the agents publish)."""

    def __init__(self, store: NodeStore, *, pods: PodStore | None = None, ttl_s: float = 10.0,
                 max_entries: int = 256, clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], float] = time.time) -> None:
        self.store = store
        self.pods = pods
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self.now = now
        self._cache: OrderedDict[tuple[str, int, str, tuple[str, ...]], tuple[float, FitVerdict]] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, model: Model, releasing: Iterable[str] = ()) -> FitVerdict:
        """The verdict for `model`, after the Models named in `releasing` (its group's running members) give back
        their pods' commitments and memory."""
        holders = tuple(sorted(set(releasing)))
        key = (model.name, model.generation, model.spec.source, holders)
        mono = self.clock()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] > mono:
                self._cache.move_to_end(key)
                return hit[1]
        if not self.store.synced:
            return FitVerdict(Fit.UNKNOWN, "the Node cache has not synced yet")
        if self.pods is not None and not self.pods.synced:
            return FitVerdict(Fit.UNKNOWN, "the pod cache has not synced yet")
        try:
            verdict = self._check(model, holders)
        except Exception as e:  # a policy surprise must not fail the request: the controller still decides
            log.warning("fit check failed", model=model.name, error=repr(e))
            return FitVerdict(Fit.UNKNOWN, f"fit check failed: {e!r}")
        with self._lock:
            self._cache[key] = (mono + self.ttl_s, verdict)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return verdict

    def _check(self, model: Model, holders: tuple[str, ...]) -> FitVerdict:
        vendors = ("nvidia", "amd") if model.vendor == "auto" else (model.vendor if model.needs_gpu else "nvidia",)
        nodes = self.store.nodes()
        now = self.now()
        pods = self.pods.pods() if self.pods is not None else None
        bound = from_pods(pods) if pods is not None else None
        releases: list[placement.Release] = []
        if pods is not None and holders:
            releases = placement.release_of(
                p for p in pods if (p["metadata"].get("namespace") or model.namespace) == model.namespace
                and p["metadata"]["labels"].get(keys.LABEL_MODEL) in holders)
        best: FitVerdict | None = None
        for vendor in vendors:
            pod = placement.pod_of(render_deployment(model, 1, vendor))
            verdict = classify(NodeAnswer(nf.node, nf.fit is not None, R_INSUFFICIENT in nf.reason, nf.reason,
                                          nf.detail)
                               for nf in placement.node_fits(pod, nodes, now, releases=releases, bound=bound))
            if best is None or verdict.fit < best.fit:
                best = verdict
        assert best is not None
        return FitVerdict(best.fit, best.reason, released=pods is not None and bool(holders))


def fit_over_informer(api: Any, namespace: str) -> tuple[PlacementFit, list[Any]]:
    """(PlacementFit, started informers: Nodes, and the bound model pods of `namespace`) for a cluster."""
    store = NodeStore()
    pods = PodStore()
    informers = [kube.Informer(api, "nodes", store.on_event).start(),
                 kube.Informer(api, "pods", pods.on_event, namespace=namespace, label_selector=keys.LABEL_MODEL,
                               field_selector=BOUND_PODS_SELECTOR).start()]
    return PlacementFit(store, pods=pods), informers
