"""Placement policy: one pure function per node, no I/O.

`evaluate(req, view, now_unix, config, reserved)` answers whether a pod fits a node and how well.

Reasons are SHORT and node-independent, because kube-scheduler groups the FailedScheduling event
by identical text ("0/40 nodes are available: 12 Insufficient free GPU memory, ..."). Per-node
numbers go to `detail` (logs, metrics, the Explain API, `flexinfer explain`).

What a GPU has to give (`effective_free`, Kubernetes-requests semantics): min(the agent's observed free MiB,
total - MiB *committed* to bound pods on that GPU), minus MiB *reserved* for pods being placed. A model the agent
already sees loaded is counted once (the min); a bound pod whose model is not loaded yet, or loads lazily, is
still counted (the committed term); pods without our annotations are in the observed term
(extender/commitments.py, extender/reservations.py).

Where a rejection goes (kube-scheduler preempts only on FailedNodes):
* FailedNodes (`unresolvable=False`): the GPUs are big enough and compatible but full right now,
  counting commitments and reservations; preemption can help.
* FailedAndUnresolvableNodes (`unresolvable=True`): wrong vendor, no GPU, too few GPUs, backend
  incompatible with the architecture, total VRAM below the estimate, unparseable annotations,
  stale GPU state, the agent reporting a problem, a junk pod annotation. Evicting pods cannot fix
  any of these, and kube-scheduler's default preemption does not re-ask the extender, so putting
  them in FailedNodes would evict pods for nothing.

Check order: static facts first (vendor, count, compatibility, size), then the live state
(staleness, free memory), so a node that can never run the pod says why, even if its agent is down.

Scoring (feasible nodes only, 1..10; 0 = not feasible / passthrough neutral):
  base 0..8: binpack = utilisation of the chosen GPUs after placement (tightest fit first),
             spread = 1 - that (most free first);
  +2 if a chosen GPU's arch is in the pod's preferred archs (compiled cache / ran there before);
  -3 if a chosen GPU had an Xid/RAS error within `error_window_seconds`;
  -2 if the backend is only DEGRADED on that architecture.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from itertools import compress, repeat
from operator import le, lt, not_, sub

import msgspec

from flexinfer import freshness, keys
from flexinfer.arch import AMD, INTEL, NVIDIA, arch_info
from flexinfer.compat import Compat, Verdict, check, driver_major_of, with_driver
from flexinfer.errors import ParseError
from flexinfer.state import GpuState, NodeGpuState, NodeView

from .pod import VENDOR_CPU, PodRequirements

INF = float("inf")
STRATEGIES = ("binpack", "spread")
MAX_SCORE = 10
PREFERRED_BONUS = 2
ERROR_PENALTY = 3
DEGRADED_PENALTY = 2
BASE_MAX = 8

# Short reasons (also metric label values: a closed set plus compat texts / pod errors).
R_NOT_IN_CACHE = "node not in extender cache"
R_PODS_NOT_SYNCED = "extender has not listed bound pods yet"  # their committed VRAM is not known
R_NO_GPU = "node has no GPU"
R_NO_VENDOR_GPU = "node has no {vendor} GPU"
R_TOO_FEW_GPUS = "node has fewer GPUs than requested"
R_TIME_SLICED = "time-sliced GPUs cannot give a pod several distinct GPUs"
R_UNHEALTHY = "not enough healthy GPUs"
R_TOO_SMALL = "GPU memory too small for model"
R_INSUFFICIENT = "Insufficient free GPU memory"
R_STALE = "GPU state is stale"
R_NO_STATE = "no GPU state from flexinfer-agent"
R_AGENT = "flexinfer-agent reports a problem"
R_BAD_NODE = "cannot parse {what} on node"
R_BAD_POD = "invalid pod {key}"
# Static rejections whose detail carries this node's own facts beyond its static class (GPU health reasons,
# replicas in use, MIG profiles, the agent's text, the parse error); every other static rejection reads the
# same for every node of a class.
NODE_DETAIL = frozenset({R_UNHEALTHY, R_TOO_SMALL, R_TIME_SLICED, R_AGENT})


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    strategy: str = "binpack"
    max_state_age_seconds: float = freshness.MAX_STATE_AGE_SECONDS
    error_window_seconds: float = 3600.0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ParseError("strategy", self.strategy, " or ".join(STRATEGIES))
        if self.max_state_age_seconds <= 0:
            raise ParseError("max state age", self.max_state_age_seconds, "a positive number of seconds")


class NodeVerdict(msgspec.Struct, frozen=True, gc=False):
    """One node's answer. A frozen msgspec Struct: built in C and not tracked by the cyclic GC (it holds only
    strings, numbers and a tuple of ints).

    `valid_until`: the verdict holds while the clock is before this (unix seconds), for the same Node view and
    the same reservations: the state turning stale, an Xid penalty window ending. Caches read it from here; no
    other module knows the policy's time-dependent rules."""

    node: str
    feasible: bool
    unresolvable: bool = False
    reason: str = ""  # short, node-independent
    detail: str = ""  # with this node's numbers
    score: int = 0  # 0..10
    gpus: tuple[int, ...] = ()  # chosen GPU indices
    degraded: str = ""  # compat caveat when DEGRADED
    valid_until: float = INF

    @property
    def result(self) -> str:
        if self.feasible:
            return "pass"
        return "unresolvable" if self.unresolvable else "failed"

    @property
    def gpu_text(self) -> str:
        return ",".join(str(i) for i in self.gpus)


def _reject(node: str, reason: str, detail: str = "", *, unresolvable: bool = True,
            valid_until: float = INF) -> NodeVerdict:
    return NodeVerdict(node, False, unresolvable, reason, detail or reason, valid_until=valid_until)


def _before(t: float) -> float:
    """The float just below `t`: a validity computed as `a + b` must not outlive the exact boundary by rounding."""
    return math.nextafter(t, -INF)


def node_parse_reason(error: str) -> str:
    """Short reason for NodeView.error, naming the annotation or label but not the value."""
    what = error.split(": cannot parse", 1)[0].strip()
    if what.startswith("GPU vendor"):
        what = f"label {keys.LABEL_VENDOR}"
    if not what.startswith(("annotation", "label")):
        what = f"annotation {keys.ANN_GPU_STATE}"
    return R_BAD_NODE.format(what=what)


@lru_cache(maxsize=4096)
def compat_for(backend: str, vendor: str, arch: str, jit_policy: str) -> Compat:
    """Memoised compat.check (pure): thousands of nodes share a few dozen architectures."""
    return check(backend, arch_info(vendor, arch), jit_policy=jit_policy)


def _ordinal(n: int) -> str:
    return {1: "best", 2: "2nd best", 3: "3rd best"}.get(n, f"{n}th best")


# --- static facts: what depends only on the Node object and the pod's shape ---------------------------

class StaticFit(msgspec.Struct, frozen=True):
    """Result of the static checks: the GPUs that could ever hold the pod (healthy, right vendor,
    compatible, big enough), with the DEGRADED caveat per GPU, and where they sit in `state.gpus`.
    Depends only on the pod's `static_key` and the node's `static_class`, so one result serves every node
    of a class (`on(state)` re-targets it at another node's GPUs)."""

    gpus: tuple[tuple[GpuState, str], ...]
    count: int
    positions: tuple[int, ...] = ()

    def on(self, state: NodeGpuState) -> StaticFit:
        """The same fit for another node of the same static class."""
        gpus = state.gpus
        return StaticFit(tuple((gpus[p], d) for p, (_, d) in zip(self.positions, self.gpus, strict=True)),
                         self.count, self.positions)


def _jit(req: PodRequirements) -> str:
    """The pod's JIT policy as compatibility reads it (only READONLY means anything): memo keys stay small
    whatever text the pod carries."""
    return "READONLY" if req.jit_policy.upper() == "READONLY" else ""


def static_key(req: PodRequirements) -> tuple[str, int, str, str, int]:
    return (req.vendor, req.gpu_count, req.backend, _jit(req), req.vram_estimate_mib)


def static_class(view: NodeView) -> tuple:
    """Every fact of a Node that `static_check` reads, as a hashable key: nodes with equal keys get the same
    static verdict (reason and candidate GPU positions) for any pod. A fleet of thousands of nodes has a few
    dozen classes (one per GPU model, count and health pattern)."""
    if view.error:
        return ("error", node_parse_reason(view.error))
    state = view.state
    if state is None or not state.gpus:
        status = view.agent_status
        return ("none", view.vendor in ("none", ""), state is None, bool(status), status != "ok")
    return ("gpus", driver_major_of(view.labels) if any(g.vendor == NVIDIA for g in state.gpus) else None,
            *[(g.vendor, g.arch, g.total_mib, g.healthy, g.replicas > 1) for g in state.gpus])


def static_check(req: PodRequirements, view: NodeView) -> NodeVerdict | StaticFit:
    """Vendor, GPU count, health, compatibility and total size: facts that change only when the
    Node object changes (see `static_class`). Returns a rejection, or the candidate GPUs. Pure."""
    usable = static_usable(req, view)
    return usable if isinstance(usable, NodeVerdict) else static_size(req, view, usable)


def usable_key(req: PodRequirements) -> tuple[str, int, str, str]:
    """What `static_usable` reads of a pod: `static_key` without the estimate (shapes that differ only in their
    estimate, as a Model's do when it is re-estimated, share one result per node class)."""
    return (req.vendor, req.gpu_count, req.backend, _jit(req))


def static_usable(req: PodRequirements, view: NodeView) -> NodeVerdict | tuple[tuple[int, str], ...]:
    """`static_check` but the size: a rejection, or the GPUs the pod could use as (position in `state.gpus`,
    DEGRADED caveat). Reads only `usable_key(req)` of the pod. Pure."""
    name = view.name
    if view.error:
        return _reject(name, node_parse_reason(view.error), view.error)
    state = view.state
    if state is None or not state.gpus:
        if view.vendor in ("none", "") and state is None and not view.agent_status:
            return _reject(name, R_NO_GPU, "node has no GPU labels or GPU state annotation")
        if view.agent_status and view.agent_status != "ok":
            return _reject(name, R_AGENT, f"flexinfer-agent: {view.agent_status}")
        if state is None:
            return _reject(name, R_NO_STATE, f"annotation {keys.ANN_GPU_STATE} is missing")
        return _reject(name, R_NO_GPU, "flexinfer-agent reports 0 GPUs")
    gpus = state.gpus

    # Vendor match: nvidia/amd/intel pods never fall back to another vendor.
    if req.vendor in (NVIDIA, AMD, INTEL):
        vendor_pos = [i for i, g in enumerate(gpus) if g.vendor == req.vendor]
        if not vendor_pos:
            have = ",".join(sorted({g.vendor for g in gpus}))
            return _reject(name, R_NO_VENDOR_GPU.format(vendor=req.vendor),
                           f"pod needs {req.vendor}; node has {have} GPUs")
    else:  # auto: any accelerator vendor
        vendor_pos = [i for i, g in enumerate(gpus) if g.vendor in (NVIDIA, AMD)] or list(range(len(gpus)))
    count = max(1, req.gpu_count)
    if len(vendor_pos) < count:
        return _reject(name, R_TOO_FEW_GPUS, f"needs {count} GPUs; node has {len(vendor_pos)}")
    if count > 1 and any(gpus[i].replicas > 1 for i in vendor_pos):
        # The device plugin may hand one container several replicas of the same GPU: "2 GPUs" can be one.
        shared = next(gpus[i] for i in vendor_pos if gpus[i].replicas > 1)
        return _reject(name, R_TIME_SLICED,
                       f"needs {count} GPUs; {shared.describe()}: replicas of one GPU may be handed out together")
    healthy = [i for i in vendor_pos if gpus[i].healthy]
    if len(healthy) < count:
        sick = "; ".join(f"GPU {gpus[i].index}: {gpus[i].reason or 'unhealthy'}"
                         for i in vendor_pos if not gpus[i].healthy)
        return _reject(name, R_UNHEALTHY, f"needs {count} healthy GPUs; node has {len(healthy)} ({sick})")

    # Backend x architecture compatibility, per GPU (mixed nodes keep only the usable cards).
    usable: list[tuple[int, str]] = []  # (position, degraded reason)
    first_no = ""
    if req.backend:
        jit = _jit(req)
        driver = driver_major_of(view.labels)
        for i in healthy:
            g = gpus[i]
            c = with_driver(req.backend, g.vendor, compat_for(req.backend, g.vendor, g.arch, jit), driver)
            if c.verdict is Verdict.UNSUPPORTED:
                first_no = first_no or c.reason
            else:
                usable.append((i, c.reason if c.verdict is Verdict.DEGRADED else ""))
        if len(usable) < count:
            return _reject(name, first_no, f"{first_no} ({len(usable)} of {count} GPUs usable)")
    else:
        usable = [(i, "") for i in healthy]
    return tuple(usable)


def static_size(req: PodRequirements, view: NodeView, usable: tuple[tuple[int, str], ...]) -> NodeVerdict | StaticFit:
    """`static_check`'s last step: the usable GPUs (`static_usable`) big enough for the estimate. Pure."""
    name, gpus, count = view.name, view.state.gpus, max(1, req.gpu_count)  # type: ignore[union-attr]
    est = req.vram_estimate_mib
    big = [(i, d) for i, d in usable if gpus[i].total_mib >= est]
    if len(big) < count:
        largest = max(gpus[i].total_mib for i, _ in usable)
        per = "per GPU" if count > 1 else "on one GPU"
        unit = "MIG instance" if any(gpus[i].mig_profile for i, _ in usable) else "GPU"  # all a pod can get
        return _reject(name, R_TOO_SMALL,
                       f"needs {est} MiB {per}; largest {unit} has {largest} MiB total")
    return StaticFit(tuple((gpus[i], d) for i, d in big), count, tuple(i for i, _ in big))


# --- live state: freshness, then picking GPUs, then scoring -------------------------------------------

def stale_after(observed_unix: float, config: PolicyConfig) -> float:
    """Last moment (unix) at which state observed at `observed_unix` still counts as fresh."""
    return _before(observed_unix + config.max_state_age_seconds)


Chosen = tuple[int, GpuState, str]  # (available MiB, gpu, degraded reason)


def effective_free(g: GpuState, committed: Mapping[int, int] | None) -> int:
    """What bound pods leave on a GPU: min(the agent's available MiB, total - MiB committed to bound pods on it),
    never below 0. The one place of this rule: the node cache's free columns hold exactly this number."""
    free = g.available_mib
    if committed:
        held = committed.get(g.index)
        if held:
            free = min(free, g.total_mib - held)
    return free if free > 0 else 0


def pick_gpus(fit: StaticFit, est: int, binpack: bool, reserved: Mapping[int, int] | None = None,
              committed: Mapping[int, int] | None = None) -> tuple[list[Chosen] | None, int]:
    """The GPUs the pod would get: binpack = the tightest that still fit, spread = the most free.
    Returns (chosen, n) with n = the best available MiB (one GPU) or the count-th best (several); chosen is
    None when fewer than `fit.count` GPUs have `est` MiB available: `effective_free` (with `committed`, GPU index
    -> MiB of bound pods) minus `reserved` (GPU index -> MiB of pods being placed)."""
    big = fit.gpus
    count = fit.count
    if count == 1:  # the common case, without sorting
        pick: Chosen | None = None
        top = 0
        for g, d in big:
            f = effective_free(g, committed) if committed else g.available_mib
            if reserved:
                f -= reserved.get(g.index, 0)
            f = max(f, 0)
            top = max(top, f)
            if f >= est and (pick is None or (f < pick[0] if binpack else f > pick[0])):
                pick = (f, g, d)
        return ([pick] if pick is not None else None), top
    avail = sorted(((max(0, effective_free(g, committed) - (reserved.get(g.index, 0) if reserved else 0)), g, d)
                    for g, d in big), key=lambda t: (-t[0], t[1].index))
    fitting = [t for t in avail if t[0] >= est]
    if len(fitting) < count:
        return None, avail[count - 1][0]
    return (sorted(fitting, key=lambda t: (t[0], t[1].index))[:count] if binpack else fitting[:count]), fitting[0][0]


def score(req: PodRequirements, chosen: list[Chosen], now_unix: float, config: PolicyConfig,
          notes: list[str] | None = None) -> tuple[int, str, float]:
    """(score 1..10, degraded caveat, valid until) for a pod on the chosen GPUs; `notes` gets the reasons."""
    est = req.vram_estimate_mib
    binpack = config.strategy == "binpack"
    if len(chosen) == 1:  # the common case (same numbers as the sums below)
        free_after, total = chosen[0][0] - est, chosen[0][1].total_mib
    else:
        total = sum(t[1].total_mib for t in chosen)
        free_after = sum(t[0] - est for t in chosen)
    util_after = 1.0 - (free_after / total if total else 0.0)
    base = BASE_MAX * (util_after if binpack else 1.0 - util_after)
    value = base
    if notes is not None:
        notes.append(f"{config.strategy} base {base:.1f}")
    pref = req.preferred_archs
    if pref and any(t[1].arch in pref for t in chosen):
        value += PREFERRED_BONUS
        if notes is not None:
            notes.append(f"+{PREFERRED_BONUS} preferred arch")
    until = INF
    window = config.error_window_seconds
    recent = [t[1] for t in chosen if t[1].last_error_unix and now_unix - t[1].last_error_unix <= window]
    if recent:
        value -= ERROR_PENALTY
        until = _before(min(g.last_error_unix for g in recent) + window)
        if notes is not None:
            notes.append(f"-{ERROR_PENALTY} recent Xid/RAS error on GPU {recent[0].index}")
    degraded = chosen[0][2] if len(chosen) == 1 else next((t[2] for t in chosen if t[2]), "")
    if degraded:
        value -= DEGRADED_PENALTY
        if notes is not None:
            notes.append(f"-{DEGRADED_PENALTY} degraded: {degraded}")
    return max(1, min(MAX_SCORE, round(value))), degraded, until


def evaluate(
    req: PodRequirements,
    view: NodeView | None,
    now_unix: float,
    config: PolicyConfig = PolicyConfig(),
    reserved: Mapping[int, int] | None = None,
    *,
    node: str = "",
    static: NodeVerdict | StaticFit | None = None,
    committed: Mapping[int, int] | None = None,
) -> NodeVerdict:
    """Verdict for one pod on one node, with how long it holds (`valid_until`). `reserved`: GPU index -> MiB
    reserved for other pods being placed; `committed`: GPU index -> MiB of bound pods (see `effective_free`).
    `static`: a memoised `static_check(req, view)` for this view (optional)."""
    name = view.name if view is not None else node
    if not req.managed:
        return NodeVerdict(name, True)
    if req.error:
        return _reject(name, R_BAD_POD.format(key=_pod_key_text(req)), req.error)
    if view is None:
        return _reject(name, R_NOT_IN_CACHE, unresolvable=False)
    if req.vendor == VENDOR_CPU:
        return NodeVerdict(name, True)
    fit = static if static is not None else static_check(req, view)
    if isinstance(fit, NodeVerdict):
        return fit
    state = view.state
    assert state is not None  # static_check rejected nodes without state
    est = req.vram_estimate_mib
    age = now_unix - state.observed_unix
    if age > config.max_state_age_seconds:  # stays stale until the Node object changes
        return _reject(name, R_STALE,
                       f"GPU state observed {age:.0f} s ago (max {config.max_state_age_seconds:.0f} s)")
    fresh_until = stale_after(state.observed_unix, config)
    chosen, nth = pick_gpus(fit, est, config.strategy == "binpack", reserved, committed)
    if chosen is None:
        return _reject(name, R_INSUFFICIENT, _insufficient(est, fit.count, nth, reserved, fit.gpus, committed),
                       unresolvable=False, valid_until=fresh_until)
    notes: list[str] = []
    final, degraded, until = score(req, chosen, now_unix, config, notes)
    count = fit.count
    gpus = tuple(sorted(t[1].index for t in chosen))
    free_text = ", ".join(f"{t[1].describe()}: {t[0]} MiB free" if t[1].mig_profile or t[1].replicas > 1
                          else f"GPU {t[1].index} {t[0]} MiB free" for t in sorted(chosen, key=lambda t: t[1].index))
    detail = f"fits: needs {est} MiB on {count} GPU{'s' if count > 1 else ''}; {free_text}; " + ", ".join(notes)
    return NodeVerdict(name, True, False, "", detail, final, gpus, degraded, min(until, fresh_until))


def lead(scores: list[int], best: int) -> list[int]:
    """The scores kube-scheduler is given when the pod is reserved on `names[best]`: that node the only one with
    the top score. kube-scheduler adds its own plugins' scores and picks at random among equal totals; the
    reservation holds the pod's memory on one node only, so a tie it breaks the other way puts the pod where
    nothing holds its memory, and the next pods of a burst are placed into it (seen on the real scheduler: 7 pods
    bound where 6 fit). The best node gets one point more, or, at MAX_SCORE, the nodes tied with it one less
    (never 0: that reads as not feasible). With the shipped extender weight one point outweighs every in-tree
    score (daemonset/scheduler). Unchanged (the same list) when the best is already alone at the top."""
    top = scores[best]
    if scores.count(top) == 1:
        return scores
    if top < MAX_SCORE:
        out = list(scores)
        out[best] = top + 1
        return out
    return [s - 1 if s == top and i != best else s for i, s in enumerate(scores)]


def split_class(fit: StaticFit, est: int, names: list[str], observed: list[float], available: list[int],
                now_unix: float, config: PolicyConfig) -> tuple[list[str], list[str], list[str], float]:
    """`evaluate` for every node of one static class at once, without reservations, in C-level passes
    (no Python call per node): `fit` is the class's StaticFit; per node (parallel columns) its observation
    time and the `fit.count`-th largest free MiB among `fit.positions` (`effective_free`: commitments included).
    Returns (passing names, names failing for free memory, stale names, valid until). Feasibility only: scores
    come from `score`."""
    limit = config.max_state_age_seconds
    if not observed:
        return [], [], [], INF
    oldest = min(observed)
    if now_unix - oldest > limit:  # rare: some nodes' state is stale (the oldest is, at least)
        stale_mask = list(map(lt, repeat(limit), map(sub, repeat(now_unix), observed)))
        fresh_mask = list(map(not_, stale_mask))
        stale = list(compress(names, stale_mask))
        names = list(compress(names, fresh_mask))
        available = list(compress(available, fresh_mask))
        observed = list(compress(observed, fresh_mask))
        oldest = min(observed) if observed else INF
    else:
        stale = []
    fits = list(map(le, repeat(est), available))
    passed = list(compress(names, fits))
    failed = list(compress(names, map(not_, fits))) if len(passed) < len(names) else []
    return passed, failed, stale, (stale_after(oldest, config) if observed else INF)


def _insufficient(est: int, count: int, nth_free: int, reserved: Mapping[int, int] | None,
                  big: tuple[tuple[GpuState, str], ...], committed: Mapping[int, int] | None = None) -> str:
    # commitments are named where they are what limits a GPU (below what the agent sees free); reservations always
    bound = sum(committed.get(g.index, 0) for g, _ in big
                if g.total_mib - committed.get(g.index, 0) < g.available_mib) if committed else 0
    held = sum(reserved.get(g.index, 0) for g, _ in big) if reserved else 0
    notes = ([f"{bound} MiB committed to bound pods"] if bound else []) + (
        [f"{held} MiB reserved for pods being placed"] if held else [])
    held_text = f" ({', '.join(notes)})" if notes else ""
    taken = [g for g, _ in big if g.replicas > 1 and g.replicas_used >= g.replicas]
    if taken:  # time-slicing: free memory, but the device plugin has no replica left to hand out
        held_text += "; " + ", ".join(f"GPU {g.index}: all {g.replicas} time-slicing replicas in use" for g in taken)
    if count == 1:
        return f"needs {est} MiB on one GPU; best GPU has {nth_free} MiB free{held_text}"
    return f"needs {est} MiB on each of {count} GPUs; {_ordinal(count)} GPU has {nth_free} MiB free{held_text}"


def commit_gpus(req: PodRequirements, view: NodeView, committed: Mapping[int, int] | None,
                binpack: bool) -> tuple[int, ...]:
    """The GPUs a bound pod holds when neither the agent's attribution nor the pod's reservation says: what the
    policy would pick for it next to the other bound pods (`committed`); when it does not fit what they leave
    (most likely its model is already in the agent's numbers), the candidate GPUs with the least free memory, where
    its memory most likely is. () without GPU state. Pure."""
    state = view.state
    if state is None or not state.gpus:
        return ()
    fit = static_check(req, view)
    if isinstance(fit, StaticFit):
        chosen, _ = pick_gpus(fit, req.vram_estimate_mib, binpack, committed=committed)
        if chosen is not None:
            return tuple(sorted(t[1].index for t in chosen))
        candidates = [g for g, _ in fit.gpus]
    else:  # bound where the policy would not have put it (nodeName set by hand, a GPU turned unhealthy): count it
        candidates = [g for g in state.gpus if g.vendor == req.vendor] or list(state.gpus)
    least = sorted(candidates, key=lambda g: (effective_free(g, committed), g.index))[:max(1, req.gpu_count)]
    return tuple(sorted(g.index for g in least))


def _pod_key_text(req: PodRequirements) -> str:
    k = req.error_key
    if k == "resources":
        return "GPU resource request"
    return f"annotation {k}"
