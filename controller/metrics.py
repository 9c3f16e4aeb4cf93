"""Controller Prometheus metrics (own registry, so tests and the demo can run several controllers).

The Model's namespace is the label ``model_namespace``, never ``namespace``: the Prometheus Operator
sets ``namespace`` (and ``pod``, ``service``, ``job``, ``instance``, ``container``, ``endpoint``) to the
scrape target's own, which would overwrite ours and merge same-named Models of different namespaces.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .phases import PHASES

SWAP_BUCKETS_S = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200)


class ControllerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.model_phase = Gauge("flexinfer_model_phase", "1 for the Model's current phase, 0 for the others",
                                 ["model", "model_namespace", "phase"], registry=self.registry)
        self.transitions = Counter("flexinfer_model_transitions_total", "Model phase transitions",
                                   ["model", "model_namespace", "from_phase", "to_phase"], registry=self.registry)
        self.swap_duration = Histogram("flexinfer_model_swap_duration_seconds",
                                       "Time from a group preemption to the new holder being Ready",
                                       ["model_namespace", "group"], buckets=SWAP_BUCKETS_S, registry=self.registry)
        self.preemptions = Counter("flexinfer_group_preemptions_total", "Shared-group preemptions/swaps",
                                   ["model_namespace", "group"], registry=self.registry)
        self.reconcile_errors = Counter("flexinfer_controller_reconcile_errors_total",
                                        "Reconcile failures (API errors, invalid Models)", ["kind"],
                                        registry=self.registry)
        self.is_leader = Gauge("flexinfer_controller_leader", "1 while this replica holds the lease",
                               registry=self.registry)

    def set_phase(self, namespace: str, model: str, phase: str, previous: str | None) -> None:
        for p in PHASES:
            self.model_phase.labels(model=model, model_namespace=namespace, phase=p).set(1 if p == phase else 0)
        if previous and previous != phase:
            self.transitions.labels(model=model, model_namespace=namespace, from_phase=previous, to_phase=phase).inc()

    def forget(self, namespace: str, model: str) -> None:
        for p in PHASES:
            with contextlib.suppress(KeyError):
                self.model_phase.remove(model, namespace, p)
