"""Proxy Prometheus metrics (own registry, so tests and the demo can run several proxies).

Label sets are bounded: ``model`` is the name of a Model that exists in the proxy's namespace (a
request for an unknown name is counted as ``model="unknown"``, never by the text the client sent), at
most :data:`MAX_MODEL_LABELS` distinct values (beyond that ``"other"``); ``api`` is one of
:data:`APIS`; ``code`` is the HTTP status; ``reason`` comes from closed sets.
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

APIS = ("chat", "completions", "embeddings", "models", "other")
MAX_MODEL_LABELS = 500
UNKNOWN, OTHER = "unknown", "other"
# 503/429 reasons
UNAVAILABLE_REASONS = ("queue_full", "stalled", "cold_start_timeout", "cannot_start", "failed", "deleted",
                       "overloaded", "activation_disabled")

_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_WAIT_BUCKETS_S = (0.1, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200)


class ProxyMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self._models: set[str] = set()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._lock = threading.Lock()
        self.requests = Counter("flexinfer_proxy_requests_total",
                                "Requests answered, by Model, API and HTTP status", ["model", "api", "code"],
                                registry=r)
        self.latency = Histogram("flexinfer_proxy_request_duration_seconds",
                                 "Time from request arrival to the last byte of the answer (queue wait included)",
                                 ["model", "api"], buckets=_LATENCY_BUCKETS_S, registry=r)
        self.ttfb = Histogram("flexinfer_proxy_time_to_first_byte_seconds",
                              "Time from request arrival to the first byte of the upstream answer sent to the "
                              "client (queue wait included)", ["model", "api"], buckets=_LATENCY_BUCKETS_S,
                              registry=r)
        self.in_flight = Gauge("flexinfer_proxy_requests_in_flight", "Requests being forwarded, by Model",
                               ["model"], registry=r)
        self.queue_depth = Gauge("flexinfer_proxy_queue_depth", "Requests waiting for a Model to become Ready",
                                 ["model"], registry=r)
        self.queue_wait = Histogram("flexinfer_proxy_queue_wait_seconds",
                                    "Time a request waited for its Model, by how the wait ended",
                                    ["model", "outcome"], buckets=_WAIT_BUCKETS_S, registry=r)
        self.activations = Counter("flexinfer_proxy_activations_total",
                                   "Activations requested for a Model because traffic arrived (annotation writes)",
                                   ["model"], registry=r)
        self.unavailable = Counter("flexinfer_proxy_unavailable_total",
                                   "503 and 429 answers, by Model and reason", ["model", "reason"], registry=r)
        self.clamped = Counter("flexinfer_proxy_max_tokens_clamped_total",
                               "Requests whose max_tokens was lowered to the context window minus the margin",
                               ["model"], registry=r)
        self.upstream_errors = Counter("flexinfer_proxy_upstream_errors_total",
                                       "Failures talking to a model server, by Model and kind",
                                       ["model", "kind"], registry=r)
        self.status_writes = Counter("flexinfer_proxy_status_writes_total",
                                     "Writes to Models: lastActiveTime (activity) and activation, by result",
                                     ["kind", "result"], registry=r)
        self.slow_heads = Counter("flexinfer_proxy_slow_request_heads_total",
                                  "Connections closed because their first request head did not arrive in time",
                                  registry=self.registry)
        self.client_disconnects = Counter("flexinfer_proxy_client_disconnects_total",
                                          "Clients that went away before the answer was complete", ["model"],
                                          registry=r)
        self.models = Gauge("flexinfer_proxy_models", "Models the proxy routes to, by phase", ["phase"],
                            registry=r)

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, memoised (the hot path asks for the same few children per request; the
        label sets are bounded, see the module docstring)."""
        key = (id(metric), labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c

    def model_label(self, name: str | None) -> str:
        """A bounded label value for a Model name that exists (callers pass None for unknown ones)."""
        if not name:
            return UNKNOWN
        if name in self._models:
            return name
        with self._lock:
            if len(self._models) >= MAX_MODEL_LABELS:
                return OTHER
            self._models.add(name)
        return name
