"""Prometheus metrics for the extender, on a registry of its own (one per app instance).

Label values come from closed sets, whatever the requests carry: `verb` and `result` are ours; `reason` is
one of the policy's own reasons or a compatibility verdict for a known backend on a known architecture
(`reason_label`), anything else (an unknown gfx target in a Node, say) is counted as `other`. So a client
sending 50,000 invented architectures adds one series, not 50,000.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from flexinfer import keys
from flexinfer.arch import AMD, AMD_GFX, INTEL, NONE, NVIDIA, ArchInfo, amd_arch, nvidia_arch
from flexinfer.compat import BACKENDS, Verdict, check, with_driver

from . import policy

_DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_NODE_BUCKETS = (1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
OTHER = "other"


def _known_archs() -> list[ArchInfo]:
    nvidia = [nvidia_arch(major, minor) for major in range(1, 14) for minor in range(10)]
    return ([a for a in nvidia if a.known] + [amd_arch(g) for g in AMD_GFX]
            + [ArchInfo(INTEL, "xe", "xe", known=False), ArchInfo(NONE, "none", "none", known=False)])


@lru_cache(maxsize=1)
def known_reasons() -> frozenset[str]:
    """Every reason the policy can give for a known backend on a known architecture (the label's closed set)."""
    p = policy
    out = {p.R_NOT_IN_CACHE, p.R_PODS_NOT_SYNCED, p.R_NO_GPU, p.R_TOO_FEW_GPUS, p.R_TIME_SLICED, p.R_UNHEALTHY,
           p.R_TOO_SMALL, p.R_INSUFFICIENT, p.R_STALE, p.R_NO_STATE, p.R_AGENT,
           *(p.R_NO_VENDOR_GPU.format(vendor=v) for v in (NVIDIA, AMD, INTEL))}
    out.update(p.R_BAD_NODE.format(what=w) for w in (f"annotation {keys.ANN_GPU_STATE}", f"label {keys.LABEL_VENDOR}"))
    out.update(p.R_BAD_POD.format(key=k) for k in (
        "GPU resource request", *(f"annotation {a}" for a in (keys.POD_VRAM_ESTIMATE_MB, keys.POD_BACKEND,
                                                              keys.POD_VENDOR, keys.POD_PREFERRED_ARCHS))))
    for arch in _known_archs():
        for backend in BACKENDS:
            for jit in ("", "READONLY"):
                c = check(backend, arch, jit_policy=jit)
                if c.verdict is not Verdict.SUPPORTED:
                    out.add(c.reason)
                    out.add(with_driver(backend, arch.vendor, c, 0).reason)  # the node's driver too old
    return frozenset(out)


def reason_label(reason: str) -> str:
    """The `reason` label value for a verdict reason: itself when in the closed set, else `other`."""
    return reason if reason in known_reasons() else OTHER


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
            "flexinfer_extender_verdicts_total",
            "Per-node verdicts, by verb, result and short reason (known reasons; anything else is `other`)",
            ["verb", "result", "reason"], registry=r)
        self.bad_requests = Counter(
            "flexinfer_extender_bad_requests_total", "Requests rejected as malformed, by verb and HTTP status",
            ["verb", "status"], registry=r)
        self.cache_nodes = Gauge("flexinfer_extender_cache_nodes", "Nodes in the extender's node cache",
                                 registry=r)
        self.cache_age = Gauge("flexinfer_extender_cache_age_seconds",
                               "Seconds since the node cache last changed or synced", registry=r)
        self.reservations = Gauge("flexinfer_extender_reservations",
                                  "Live VRAM reservations for pods being placed (not bound yet)", registry=r)
        self.committed_pods = Gauge("flexinfer_extender_committed_pods",
                                    "Bound, unfinished pods whose VRAM estimate is committed on their GPUs", registry=r)
        # Listener limits (extender.listener; label values: listener in {scheduling, read-only}, reason in
        # extender.listener.REASONS) and replica leadership (extender.replicas). Owned by extender-edge.
        self.connections_rejected = Counter(
            "flexinfer_extender_connections_rejected_total",
            "Connections closed before a request reached a handler (limits, timeouts, TLS), by listener and reason",
            ["listener", "reason"], registry=r)
        self.open_connections = Gauge("flexinfer_extender_open_connections", "Open client connections, by listener",
                                      ["listener"], registry=r)
        # Children of the per-request series, by label values (closed sets: a few dozen at most), so a request
        # does not look each one up again through prometheus_client's locked label path.
        self._children: dict[tuple[Any, ...], Any] = {}
        self.is_leader = Gauge("flexinfer_extender_is_leader",
                               "1 while this replica holds the extender Lease and answers filter/prioritize itself",
                               registry=r)

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def record(self, verb: str, elapsed_s: float, nodes: int, feasible: int,
               rejected: Iterable[tuple[tuple[bool, str], int]]) -> None:
        """One request's series: duration, node count, and the verdicts (`rejected`: ((unresolvable, reason),
        nodes) pairs; reasons outside the closed set count as `other`)."""
        self._child(self.request_duration, verb).observe(elapsed_s)
        self._child(self.nodes_per_request, verb).observe(nodes)
        if feasible:
            self._child(self.verdicts, verb, "pass", "").inc(feasible)
        for (unresolvable, reason), n in rejected:
            self._child(self.verdicts, verb, "unresolvable" if unresolvable else "failed", reason_label(reason)).inc(n)
