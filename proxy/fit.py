"""Can a Model be placed? Asked with the code kube-scheduler and the extender run (no second implementation).

:class:`PlacementFit` renders the pod the controller would create for the Model
(:func:`flexinfer.controller.render.render_deployment`) and asks :func:`flexinfer.controller.placement.place`
about every Node: kube-scheduler's own node filters (:mod:`flexinfer.nodefilters`: Ready, schedulable,
``nodeSelector``, untolerated taints), the GPU extended resource, then the extender's policy
(``extender.policy.evaluate``: per-GPU VRAM, vendor, backend/architecture compatibility, health, fresh
agent data). :func:`classify` turns the per-node answers into one :class:`~.routing.FitVerdict`:

- FITS: some node takes it now;
- AFTER_RELEASE: no node takes it now, but on some node only free GPU memory is missing (the extender's
  resolvable "Insufficient free GPU memory"): e.g. the GPU its group holder occupies, which routing counts
  as a fit when the Model would displace that holder;
- NEVER: every node rejects it for a reason freeing memory cannot cure (GPU too small, wrong vendor,
  backend/arch, taints, selector, no GPU resource, stale or missing agent data);
- UNKNOWN: the Node cache has not synced, or the check failed (logged); routing then lets the controller
  and the scheduler decide, as without a fit check.

Nodes come from a Node informer (``--fit-check extender``; RBAC: list/watch Nodes). Only what the checks
read is kept per Node (labels, FlexInfer's annotations, taints, schedulability, the Ready condition, GPU
allocatable), so a large cluster costs little memory. Verdicts are cached per Model generation for
``ttl_s`` seconds in a bounded LRU (``max_entries``).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from flexinfer.controller import placement
from flexinfer.controller.render import render_deployment
from flexinfer.extender.policy import R_INSUFFICIENT

from flexinfer import keys, kube, logs
from flexinfer.model import Model

from .routing import Fit, FitVerdict

log = logs.get("flexinfer.proxy.fit")
JSON = dict[str, Any]


class FitChecker(Protocol):
    def check(self, model: Model) -> FitVerdict: ...


class NoFitCheck:
    """``--fit-check off``: every Model is UNKNOWN."""

    def check(self, model: Model) -> FitVerdict:
        return FitVerdict(Fit.UNKNOWN, "fit check off")


@dataclass(frozen=True, slots=True)
class NodeAnswer:
    node: str
    feasible: bool
    resolvable: bool  # only free GPU memory is missing
    reason: str


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
        return FitVerdict(Fit.AFTER_RELEASE, f"{resolvable[0].node}: {resolvable[0].reason}")
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


class NodeStore:
    """Trimmed Nodes from informer events (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nodes: dict[str, JSON] = {}
        self.synced = False

    def on_event(self, etype: str, obj: JSON) -> None:
        with self._lock:
            if etype == "SYNC":
                self._nodes = {n["metadata"]["name"]: n for n in map(trim_node, obj.get("items") or [])
                               if n["metadata"]["name"]}
                self.synced = True
                return
            name = (obj.get("metadata") or {}).get("name")
            if not name:
                return
            if etype == "DELETED":
                self._nodes.pop(name, None)
            else:
                self._nodes[name] = trim_node(obj)

    def replace(self, nodes: Iterable[JSON]) -> NodeStore:
        self.on_event("SYNC", {"items": list(nodes)})
        return self

    def nodes(self) -> list[JSON]:
        with self._lock:
            return list(self._nodes.values())


class PlacementFit:
    """See the module docstring."""

    def __init__(self, store: NodeStore, *, ttl_s: float = 10.0, max_entries: int = 256,
                 clock: Callable[[], float] = time.monotonic, now: Callable[[], float] = time.time) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self.now = now
        self._cache: OrderedDict[tuple[str, int, str], tuple[float, FitVerdict]] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, model: Model) -> FitVerdict:
        key = (model.name, model.generation, model.spec.source)
        mono = self.clock()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] > mono:
                self._cache.move_to_end(key)
                return hit[1]
        if not self.store.synced:
            return FitVerdict(Fit.UNKNOWN, "the Node cache has not synced yet")
        try:
            verdict = self._check(model)
        except Exception as e:  # a policy surprise must not fail the request: the controller still decides
            log.warning("fit check failed", model=model.name, error=repr(e))
            return FitVerdict(Fit.UNKNOWN, f"fit check failed: {e!r}")
        with self._lock:
            self._cache[key] = (mono + self.ttl_s, verdict)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return verdict

    def _check(self, model: Model) -> FitVerdict:
        vendors = ("nvidia", "amd") if model.vendor == "auto" else (model.vendor if model.needs_gpu else "nvidia",)
        nodes = self.store.nodes()
        now = self.now()
        best: FitVerdict | None = None
        for vendor in vendors:
            pod = placement.pod_of(render_deployment(model, 1, vendor))
            answers = []
            for node in nodes:
                f = placement.place(pod, [node], now)
                answers.append(NodeAnswer(str(node["metadata"]["name"]), f.ok, R_INSUFFICIENT in f.reason,
                                          f.reason.split(" (e.g.")[0].removeprefix("1x ")))
            verdict = classify(answers)
            if best is None or verdict.fit < best.fit:
                best = verdict
        assert best is not None
        return best


def fit_over_informer(api: Any) -> tuple[PlacementFit, Any]:
    """(PlacementFit, started Node informer) for a cluster."""
    store = NodeStore()
    informer = kube.Informer(api, "nodes", store.on_event)
    return PlacementFit(store), informer.start()
