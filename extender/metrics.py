"""Prometheus metrics for the extender, on a registry of its own (one per app instance)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_NODE_BUCKETS = (1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class ExtenderMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.request_duration = Histogram(
            "flexinfer_extender_request_duration_seconds", "Time to answer one extender request, by verb",
            ["verb"], registry=r, buckets=_DURATION_BUCKETS)
        self.nodes_per_request = Histogram(
            "flexinfer_extender_nodes_per_request", "Nodes in one extender request, by verb",
            ["verb"], registry=r, buckets=_NODE_BUCKETS)
        self.verdicts = Counter(
            "flexinfer_extender_verdicts_total", "Per-node verdicts, by verb, result and short reason",
            ["verb", "result", "reason"], registry=r)
        self.bad_requests = Counter(
            "flexinfer_extender_bad_requests_total", "Requests rejected as malformed, by verb and HTTP status",
            ["verb", "status"], registry=r)
        self.cache_nodes = Gauge("flexinfer_extender_cache_nodes", "Nodes in the extender's node cache",
                                 registry=r)
        self.cache_age = Gauge("flexinfer_extender_cache_age_seconds",
                               "Seconds since the node cache last changed or synced", registry=r)
        self.reservations = Gauge("flexinfer_extender_reservations",
                                  "Live VRAM reservations for pods being placed", registry=r)
        # Listener limits (extender.listener; label values: listener in {scheduling, read-only}, reason in
        # extender.listener.REASONS).
        self.connections_rejected = Counter(
            "flexinfer_extender_connections_rejected_total",
            "Connections closed before a request reached a handler (limits, timeouts, TLS), by listener and reason",
            ["listener", "reason"], registry=r)
        self.open_connections = Gauge("flexinfer_extender_open_connections", "Open client connections, by listener",
                                      ["listener"], registry=r)
        self.is_leader = Gauge("flexinfer_extender_is_leader",
                               "1 while this replica holds the extender Lease and answers filter/prioritize itself",
                               registry=r)
