"""Can a Model be placed? The extender's own policy, asked in process (no second implementation of fit).

:class:`ExtenderFit` holds a :class:`flexinfer.extender.service.Extender` over a node cache fed by a Node
informer (the same classes ``flexinfer-extender`` runs), renders the pod the controller would create for
the Model (:func:`flexinfer.controller.render.render_deployment`), keeps the nodes whose labels match the
pod's ``nodeSelector`` (kube-scheduler's own filter, which the extender does not repeat) and asks
``Extender.explain`` for every verdict. :func:`classify` turns them into one :class:`~.routing.FitVerdict`:

- FITS: some node passes now;
- AFTER_RELEASE: none passes, but some rejection is one that freeing GPU memory cures (the extender's
  ``FailedNodes``, "Insufficient free GPU memory"), e.g. the GPU its group holder occupies;
- NEVER: every node is ``FailedAndUnresolvable`` (too small, wrong vendor, backend/arch, stale or no agent
  data) or no node matches the selector;
- UNKNOWN: the node cache has not synced, or the check failed (logged); routing then lets the controller
  and the scheduler decide, as without a fit check.

Why in process rather than the extender's gRPC ``Explain``: the node selector needs node labels, which
the Explain answer does not carry, and the proxy then needs no network path (or mTLS client
certificate) to the extender. Verdicts are cached per Model generation for ``ttl_s`` seconds in a bounded
LRU (``max_entries``).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from flexinfer.controller.render import render_deployment
from flexinfer.extender.cache import NodeCache
from flexinfer.extender.pod import requirements_from_dict
from flexinfer.extender.policy import PolicyConfig
from flexinfer.extender.service import Extender

from flexinfer import kube, logs
from flexinfer.model import Model

from .routing import Fit, FitVerdict

log = logs.get("flexinfer.proxy.fit")


class FitChecker(Protocol):
    def check(self, model: Model) -> FitVerdict: ...


class NoFitCheck:
    """``--fit-check off``: every Model is UNKNOWN."""

    def check(self, model: Model) -> FitVerdict:
        return FitVerdict(Fit.UNKNOWN, "fit check off")


def classify(verdicts: Iterable[Any]) -> FitVerdict:
    """One verdict from the extender's per-node verdicts (objects with feasible/unresolvable/reason/node/detail)."""
    vs = list(verdicts)
    if not vs:
        return FitVerdict(Fit.NEVER, "no node to place it on")
    passing = [v for v in vs if v.feasible]
    if passing:
        return FitVerdict(Fit.FITS, f"fits on {len(passing)} of {len(vs)} nodes (e.g. {passing[0].node})")
    resolvable = [v for v in vs if not v.unresolvable]
    if resolvable:
        return FitVerdict(Fit.AFTER_RELEASE, f"{resolvable[0].node}: {resolvable[0].detail or resolvable[0].reason}")
    tally = Counter(v.reason for v in vs)
    text = ", ".join(f"{n} {reason}" for reason, n in tally.most_common(3))
    return FitVerdict(Fit.NEVER, f"0/{len(vs)} nodes: {text}")


def _matches(labels: dict[str, str], selector: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


class ExtenderFit:
    """The extender's policy over a node cache (see module docstring)."""

    def __init__(self, extender: Any, *, ttl_s: float = 10.0, max_entries: int = 256,
                 clock: Callable[[], float] = time.monotonic, synced: Callable[[], bool] | None = None) -> None:
        self.extender = extender
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self.synced = synced or (lambda: True)
        self._cache: OrderedDict[tuple[str, int, str], tuple[float, FitVerdict]] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, model: Model) -> FitVerdict:
        key = (model.name, model.generation, model.spec.source)
        now = self.clock()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] > now:
                self._cache.move_to_end(key)
                return hit[1]
        if not self.synced():
            return FitVerdict(Fit.UNKNOWN, "the node cache has not synced yet")
        try:
            verdict = self._check(model)
        except Exception as e:  # a policy surprise must not fail the request: the controller still decides
            log.warning("fit check failed", model=model.name, error=repr(e))
            return FitVerdict(Fit.UNKNOWN, f"fit check failed: {e!r}")
        with self._lock:
            self._cache[key] = (now + self.ttl_s, verdict)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return verdict

    def _check(self, model: Model) -> FitVerdict:
        vendors = ("nvidia", "amd") if model.vendor == "auto" else (model.vendor if model.needs_gpu else "nvidia",)
        best: FitVerdict | None = None
        for vendor in vendors:
            tmpl = render_deployment(model, 1, vendor)["spec"]["template"]
            pod = {"metadata": {"name": f"{model.name}-fit", "namespace": model.namespace, **tmpl["metadata"]},
                   "spec": tmpl["spec"]}
            selector = tmpl["spec"].get("nodeSelector") or {}
            names = [v.name for v in self.extender.cache.views() if _matches(v.labels, selector)]
            if not names:
                verdict = FitVerdict(Fit.NEVER, f"no node matches spec.nodeSelector {selector}" if selector
                                     else "no nodes in the cluster")
            else:
                verdict = classify(self.extender.explain(requirements_from_dict(pod), names))
            if best is None or verdict.fit < best.fit:
                best = verdict
        assert best is not None
        return best


def extender_over_informer(api: Any) -> tuple[Any, Any]:
    """(ExtenderFit, started Node informer) for a cluster: the extender's NodeCache fed by a Node watch."""
    cache = NodeCache()
    informer = kube.Informer(api, "nodes", cache.on_event)
    fit = ExtenderFit(Extender(cache, PolicyConfig()), synced=lambda: bool(informer.synced))
    return fit, informer.start()
