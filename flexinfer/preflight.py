"""Preflight: will this Model fit and run, before anything serving is scaled down?

Pure: takes a Model and NodeViews, returns checks with PASS/WARN/BLOCK and a decision.
Exit codes (CLI): 0 PASS, 10 WARN, 20 BLOCK — the homelab switch contract (docs/homelab.md).

Checks: inventory (GPU nodes of the right vendor exist and report fresh state), vendor,
architecture compatibility (known-broken backend/arch pairs BLOCK, degraded ones WARN), VRAM fit
(estimate broken down; fits free now = PASS; fits only the card's total, i.e. after the serving
model is scaled down = WARN; larger than every card = BLOCK), estimate sanity (declared estimate far
below the estimator's figure = WARN) and cache readiness when the Model status says.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from flexinfer import freshness, keys
from flexinfer.compat import Compat, Verdict, canonical_backend, check, driver_major_of, min_driver, with_driver
from flexinfer.model import Model, never_runs_reason
from flexinfer.state import GpuState, NodeView
from flexinfer.vram_need import vram_need


class Level(enum.IntEnum):
    PASS = 0
    WARN = 10
    BLOCK = 20


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    level: Level
    message: str


@dataclass(frozen=True, slots=True)
class Report:
    model: str
    backend: str
    checks: tuple[Check, ...]
    target_node: str = ""
    target_gpus: tuple[int, ...] = ()
    per_gpu_mib: int | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def decision(self) -> Level:
        return max((c.level for c in self.checks), default=Level.PASS)

    @property
    def exit_code(self) -> int:
        return int(self.decision)

    def to_dict(self) -> dict:
        return {
            "model": self.model, "backend": self.backend, "decision": self.decision.name,
            "exitCode": self.exit_code, "targetNode": self.target_node, "targetGpus": list(self.target_gpus),
            "perGpuMiB": self.per_gpu_mib,
            "checks": [{"name": c.name, "level": c.level.name, "message": c.message} for c in self.checks],
        }


@dataclass(slots=True)
class _Candidate:
    view: NodeView
    level: Level
    reason: str
    gpus: list[GpuState]


def _vendor_ok(model_vendor: str, gpu: GpuState) -> bool:
    return model_vendor in ("auto", gpu.vendor)


def _with_driver(backend: str, gpu: GpuState, verdict: Compat, view: NodeView) -> Compat:
    """`compat.with_driver` for this node (Ollama on compute capability 5.0-6.2 needs driver >= 570), with
    preflight's wording: the node's full driver version when it is too old, and a note when it is not labelled."""
    decided = with_driver(backend, gpu.vendor, verdict, driver_major_of(view.labels))
    if decided is verdict and verdict.verdict is Verdict.DEGRADED and min_driver(backend, gpu.vendor):
        return Compat(Verdict.DEGRADED, f"{verdict.reason} (node {view.name} does not say its driver version)")
    if decided.verdict is Verdict.UNSUPPORTED and verdict.verdict is Verdict.DEGRADED:
        version = view.labels.get(keys.LABEL_DRIVER_VERSION) or view.labels.get(keys.LABEL_DRIVER_MAJOR, "")
        return Compat(Verdict.UNSUPPORTED, f"{canonical_backend(backend)} on {gpu.info.family} {gpu.arch} needs "
                                           f"NVIDIA driver >= {min_driver(backend, gpu.vendor)}; node has {version}")
    return decided


def run(model: Model, views: list[NodeView], now: float, *, node: str | None = None,
        max_state_age_seconds: float = freshness.MAX_STATE_AGE_SECONDS) -> Report:
    checks: list[Check] = []
    backend = model.backend
    never = never_runs_reason(model)
    if never is not None:  # well-formed, but no cluster can run it: the answer is BLOCK, not a parse error
        field, reason = never
        checks.append(Check("spec", Level.BLOCK, f"{field}: {reason}"))
        return Report(model.name, backend, tuple(checks))
    need = vram_need(model)
    if node:
        views = [v for v in views if v.name == node]
        if not views:
            checks.append(Check("inventory", Level.BLOCK, f"node {node} not found"))
            return Report(model.name, backend, tuple(checks))
    selector = model.spec.node_selector
    if selector:
        matching = [v for v in views if all(v.labels.get(k) == val for k, val in selector.items())]
        sel_text = ", ".join(f"{k}={val}" for k, val in selector.items())
        if not matching:
            checks.append(Check("node_selector", Level.BLOCK, f"no node matches spec.nodeSelector {sel_text}"))
            return Report(model.name, backend, tuple(checks))
        checks.append(Check("node_selector", Level.PASS, f"{len(matching)} node(s) match {sel_text}"))
        views = matching
    if not model.needs_gpu:
        cpu_nodes = [v for v in views if v.error == ""]
        level = Level.PASS if cpu_nodes else Level.BLOCK
        checks.append(Check("inventory", level, f"{len(cpu_nodes)} node(s) can run a CPU-only model"))
        return Report(model.name, backend, tuple(checks))

    gpu_views = [v for v in views if v.state and v.state.gpus]
    broken = [v for v in views if v.error]
    stale = [v for v in gpu_views if now - v.state.observed_unix > max_state_age_seconds]  # type: ignore[union-attr]
    fresh = [v for v in gpu_views if v not in stale]
    n_gpus = sum(len(v.state.gpus) for v in gpu_views)  # type: ignore[union-attr]
    if not gpu_views:
        checks.append(Check("inventory", Level.BLOCK, "no node reports GPUs (is flexinfer-agent running?)"))
        return Report(model.name, backend, tuple(checks), per_gpu_mib=need.per_gpu_mib)
    msg = f"{len(gpu_views)} GPU node(s), {n_gpus} GPU(s)"
    level = Level.PASS
    if stale:
        msg += f"; {len(stale)} with stale state (> {int(max_state_age_seconds)} s): " + ", ".join(
            v.name for v in stale)
        level = Level.WARN
    if broken:
        msg += f"; {len(broken)} with unreadable annotations"
        level = Level.WARN
    checks.append(Check("gpu_inventory", level, msg))

    vendor = model.vendor
    vendor_views = [v for v in fresh if any(_vendor_ok(vendor, g) for g in v.state.gpus)]  # type: ignore[union-attr]
    if not vendor_views:
        checks.append(Check("vendor", Level.BLOCK,
                            f"no fresh node with a {vendor} GPU (no fallback to another vendor)"))
        return Report(model.name, backend, tuple(checks), per_gpu_mib=need.per_gpu_mib)
    checks.append(Check("vendor", Level.PASS, f"{len(vendor_views)} node(s) with a matching GPU ({vendor})"))

    candidates: list[_Candidate] = []
    reasons: dict[str, list[str]] = {}
    for v in vendor_views:
        usable = [g for g in v.state.gpus if g.healthy and _vendor_ok(vendor, g)]  # type: ignore[union-attr]
        for g in v.state.gpus:  # type: ignore[union-attr]
            if not g.healthy and _vendor_ok(vendor, g):
                reasons.setdefault(f"GPU unhealthy ({g.reason or 'reported by the agent'})", []).append(v.name)
        verdicts = {g.arch: _with_driver(backend, g, check(backend, g.info, jit_policy=model.jit_policy), v)
                    for g in usable}
        ok = [g for g in usable if verdicts[g.arch].verdict is not Verdict.UNSUPPORTED]
        if not ok:
            for g in usable:
                reasons.setdefault(verdicts[g.arch].reason, []).append(v.name)
            continue
        degraded = [verdicts[g.arch].reason for g in ok if verdicts[g.arch].verdict is Verdict.DEGRADED]
        lvl = Level.WARN if len(degraded) == len(ok) else Level.PASS
        candidates.append(_Candidate(v, lvl, degraded[0] if degraded else "", ok))
    if not candidates:
        text = "; ".join(f"{r} ({', '.join(ns)})" for r, ns in reasons.items()) or "no healthy GPU"
        checks.append(Check("known_broken", Level.BLOCK, text))
        return Report(model.name, backend, tuple(checks), per_gpu_mib=need.per_gpu_mib)
    best_compat = min(c.level for c in candidates)
    if best_compat is Level.PASS:
        checks.append(Check("arch_compat", Level.PASS, f"{backend} is supported on "
                            + ", ".join(sorted({g.arch for c in candidates for g in c.gpus if c.level is Level.PASS}))))
    else:
        checks.append(Check("arch_compat", Level.WARN, candidates[0].reason))
    if reasons:
        checks.append(Check("known_broken", Level.PASS, "excluded: " + "; ".join(
            f"{r} ({', '.join(ns)})" for r, ns in reasons.items())))

    count = max(1, model.gpu_count)
    if need.per_gpu_mib is None:
        checks.append(Check("vram_fit", Level.WARN, "no vramEstimateMB and nothing to estimate from: " + need.detail))
        c = candidates[0]
        return Report(model.name, backend, tuple(checks), c.view.name, tuple(g.index for g in c.gpus[:count]))
    per = need.per_gpu_mib
    est_text = f"needs {per} MiB per GPU x {count} ({need.source}"
    est_text += f"; {need.detail})" if need.estimate else ")"
    # best placement: prefer compat PASS, then fits-free, then tightest
    fits_free: list[tuple[_Candidate, list[GpuState]]] = []
    fits_total: list[tuple[_Candidate, list[GpuState]]] = []
    for c in candidates:
        free_ok = sorted([g for g in c.gpus if g.free_mib >= per], key=lambda g: g.free_mib)
        total_ok = sorted([g for g in c.gpus if g.total_mib >= per], key=lambda g: g.total_mib)
        if len(free_ok) >= count:
            fits_free.append((c, free_ok[:count]))
        elif len(total_ok) >= count:
            fits_total.append((c, total_ok[:count]))
    if fits_free:
        fits_free.sort(key=lambda cg: (cg[0].level, sum(g.free_mib for g in cg[1])))
        c, gs = fits_free[0]
        free = ", ".join(f"gpu{g.index} {g.free_mib} MiB free" for g in gs)
        checks.append(Check("vram_fit", Level.PASS, f"{est_text}; {c.view.name}: {free}"))
        target = (c, gs)
    elif fits_total:
        fits_total.sort(key=lambda cg: (cg[0].level, -sum(g.free_mib for g in cg[1])))
        c, gs = fits_total[0]
        free = ", ".join(f"gpu{g.index} {g.free_mib}/{g.total_mib} MiB free" for g in gs)
        checks.append(Check("vram_fit", Level.WARN, f"{est_text}; fits {c.view.name} only after what runs there "
                            f"is scaled down ({free})"))
        target = (c, gs)
    else:
        largest = max((g.total_mib for c in candidates for g in c.gpus), default=0)
        checks.append(Check("vram_fit", Level.BLOCK, f"{est_text}; largest compatible GPU has {largest} MiB total"))
        return Report(model.name, backend, tuple(checks), per_gpu_mib=per)
    c, gs = target
    if c.level is Level.WARN and best_compat is Level.PASS:
        checks.append(Check("arch_compat_target", Level.WARN, c.reason))
    if need.estimate and need.source != "estimator" and need.estimate.per_gpu_mib > per * 1.2:
        checks.append(Check("estimate", Level.WARN, f"declared {per} MiB is below the estimator's "
                            f"{need.estimate.per_gpu_mib} MiB ({need.detail})"))
    cache = model.status.get("cache") if isinstance(model.status, dict) else None
    if isinstance(cache, dict) and "ready" in cache:
        if cache.get("ready") is True:
            checks.append(Check("cache_prefetch", Level.PASS, "model cache is ready"))
        else:
            checks.append(Check("cache_prefetch", Level.BLOCK, "model is not prefetched (status.cache.ready=false)"))
    return Report(model.name, backend, tuple(checks), c.view.name, tuple(g.index for g in gs), per)


__all__ = ["Check", "Level", "Report", "run"]
