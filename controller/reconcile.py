"""Reconcile Models into Deployments/Services/PVCs, scale per the group decision, write status.

Flow (one pass over a set of keys): snapshot (Models, Deployments, Services, PVCs, pods) -> per model
the observed phase -> per group ``(namespace, spec.gpu.shared)`` the pure decision
(:mod:`flexinfer.controller.groups`; non-group models: serverless) -> render (pure) -> apply only what
differs -> status patch only when it changed. ``reconcile_once()`` lists everything from the API and
runs one pass synchronously (the demo and tests use it); :class:`ControllerLoop` in ``main`` keeps
informer caches, a work queue of keys and a periodic resync (idle timeouts are time-based).

State kept in memory (and why it is safe to lose): the time of the last swap per group (recovered on
start from the members' ``Ready`` conditions with reason ``Preempted``; losing it at worst allows one
early equal-priority swap), and preemption start times for the swap-duration histogram.

Invalid Models never crash the loop: their status gets phase Failed and the validation message, and
their existing objects are left alone.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import kubernetes.client

from flexinfer import keys, kube, logs
from flexinfer.errors import ValidationError
from flexinfer.model import Model, parse_model
from flexinfer.state import parse_rfc3339

from . import groups, ownership, phases, render
from .activation import activate, rfc3339
from .metrics import ControllerMetrics

__all__ = ["Controller", "PassResult", "Snapshot", "activate", "model_key", "rfc3339"]

log = logs.get("flexinfer.controller")
JSON = dict[str, Any]
Key = tuple[str, str]  # (namespace, "group:<name>" | "model:<name>")
# Failed reasons that end by themselves when their cause goes away (not "the model fails to run").
RECOVERABLE_FAILURES = frozenset({ownership.REASON})


def _meta(obj: JSON) -> JSON:
    return obj.get("metadata") or {}


def _nsname(obj: JSON) -> tuple[str, str]:
    m = _meta(obj)
    return str(m.get("namespace") or "default"), str(m.get("name") or "")


@dataclass
class Snapshot:
    models: list[JSON]
    deployments: list[JSON] = field(default_factory=list)
    services: list[JSON] = field(default_factory=list)
    pvcs: list[JSON] = field(default_factory=list)
    pods: list[JSON] = field(default_factory=list)
    nodes: list[JSON] | None = None


def model_key(model_obj: JSON) -> Key:
    ns, name = _nsname(model_obj)
    spec = model_obj.get("spec") or {}
    gpu = spec.get("gpu") if isinstance(spec, dict) else None
    shared = gpu.get("shared") if isinstance(gpu, dict) else None
    if isinstance(shared, str) and shared and str((gpu or {}).get("vendor", "auto")).lower() != "cpu":
        return ns, f"group:{shared}"
    return ns, f"model:{name}"


def auto_vendor_from_nodes(nodes: Iterable[JSON] | None) -> str:
    """The vendor with the most GPU nodes (agent labels); nvidia when unknown or tied."""
    count = {"nvidia": 0, "amd": 0}
    for n in nodes or []:
        v = str((_meta(n).get("labels") or {}).get(keys.LABEL_VENDOR, "")).lower()
        if v in count:
            count[v] += 1
    return "amd" if count["amd"] > count["nvidia"] else "nvidia"


def _subset(want: Any, have: Any) -> bool:
    if isinstance(want, dict):
        return isinstance(have, dict) and all(_subset(v, have.get(k)) for k, v in want.items())
    if isinstance(want, list):
        return (isinstance(have, list) and len(want) == len(have)
                and all(_subset(a, b) for a, b in zip(want, have, strict=True)))
    return want == have or (want in ({}, [], "") and have is None)


def _status_view(status: JSON) -> JSON:
    return {k: status.get(k) for k in ("phase", "endpoint", "message", "observedGeneration", "conditions")}


@dataclass
class PassResult:
    """What one pass did (tests and the demo read it)."""

    decisions: dict[Key, groups.GroupDecision | groups.MemberDecision] = field(default_factory=dict)
    phases: dict[tuple[str, str], str] = field(default_factory=dict)
    writes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class NotLeader(Exception):
    """Leadership ended in the middle of a pass: the pass stops before its next write."""


class Controller:
    """Programmatic controller: ``reconcile_once()`` for a synchronous pass; ``reconcile(snapshot, keys)``
    for the informer-driven loop."""

    def __init__(
        self,
        api: kubernetes.client.ApiClient,
        namespace: str | None = None,
        cooldown_seconds: float = 60.0,
        metrics: ControllerMetrics | None = None,
        clock: Callable[[], float] = time.time,
        auto_vendor: str | None = None,
        options: render.RenderOptions = render.DEFAULT_OPTIONS,
    ) -> None:
        self.api = api
        self.options = options
        self.namespace = namespace or None
        self.cooldown_seconds = float(cooldown_seconds)
        self.metrics = metrics or ControllerMetrics()
        self.clock = clock
        self.auto_vendor = auto_vendor
        self._last_swap: dict[Key, float] = {}
        self._swap_started: dict[tuple[str, str], tuple[float, str]] = {}  # (ns, winner) -> (t, group)
        self._activate_seen: dict[tuple[str, str, str], float] = {}
        self._known: set[tuple[str, str]] = set()
        # Asked before every write (the leader election's is_leader): a replica that lost the lease stops
        # acting mid-pass instead of finishing it.
        self.write_guard: Callable[[], bool] | None = None

    def _may_write(self) -> None:
        if self.write_guard is not None and not self.write_guard():
            raise NotLeader("not the leader (any more); this pass stops before writing")

    # -- snapshot ------------------------------------------------------------------------------
    def list_snapshot(self) -> Snapshot:
        ns = self.namespace
        managed = f"{keys.LABEL_MANAGED_BY}={keys.MANAGED_BY}"
        snap = Snapshot(
            models=kube.list_objects(self.api, keys.MODEL_PLURAL, ns),
            deployments=kube.list_objects(self.api, "deployments", ns, label_selector=managed),
            services=kube.list_objects(self.api, "services", ns, label_selector=managed),
            pvcs=kube.list_objects(self.api, "persistentvolumeclaims", ns, label_selector=managed),
            pods=kube.list_objects(self.api, "pods", ns, label_selector=keys.LABEL_MODEL),
        )
        if self.auto_vendor is None:
            try:
                snap.nodes = kube.list_objects(self.api, "nodes")
            except kube.KubeError as e:  # namespaced RBAC: no node access; fall back to nvidia
                log.debug("nodes not listable", error=str(e))
        return snap

    def reconcile_once(self) -> PassResult:
        """List everything, decide, apply, write status. Synchronous."""
        return self.reconcile(self.list_snapshot(), None)

    # -- one pass ------------------------------------------------------------------------------
    def reconcile(self, snap: Snapshot, only: set[Key] | None) -> PassResult:
        now = self.clock()
        result = PassResult()
        vendor = self.auto_vendor or auto_vendor_from_nodes(snap.nodes)
        deps = {_nsname(d): d for d in snap.deployments}
        svcs = {_nsname(s): s for s in snap.services}
        pvcs = {_nsname(p): p for p in snap.pvcs}
        pods: dict[tuple[str, str], list[JSON]] = defaultdict(list)
        for p in snap.pods:
            ns, _ = _nsname(p)
            owner = (_meta(p).get("labels") or {}).get(keys.LABEL_MODEL)
            if owner:
                pods[(ns, owner)].append(p)
        by_key: dict[Key, list[JSON]] = defaultdict(list)
        for obj in snap.models:
            if self.namespace and _nsname(obj)[0] != self.namespace:
                continue
            by_key[model_key(obj)].append(obj)
        if only is None:
            present = {_nsname(o) for o in snap.models}
            for ns_name in self._known - present:
                self.metrics.forget(*ns_name)
                self._swap_started.pop(ns_name, None)
            self._known = present
        for key in sorted(by_key):
            if only is not None and key not in only:
                continue
            try:
                self._reconcile_key(key, by_key[key], deps, svcs, pvcs, pods, now, vendor, result)
            except NotLeader as e:
                result.errors.append(str(e))
                log.warning("leadership lost during a pass; stopped before the next write")
                break
            except kube.KubeError as e:
                self.metrics.reconcile_errors.labels(kind="api").inc()
                result.errors.append(f"{key[0]}/{key[1]}: {e}")
                log.warning("reconcile failed; will retry", key=f"{key[0]}/{key[1]}", error=str(e))
            except Exception as e:  # a bug or odd input in one group must not stop the others
                self.metrics.reconcile_errors.labels(kind="internal").inc()
                result.errors.append(f"{key[0]}/{key[1]}: internal error: {e!r}")
                log.exception("reconcile crashed for one key", key=f"{key[0]}/{key[1]}")
        return result

    def _reconcile_key(self, key: Key, objs: list[JSON], deps: dict, svcs: dict, pvcs: dict,
                       pods: dict, now: float, vendor: str, result: PassResult) -> None:
        ns = key[0]
        valid: list[tuple[JSON, Model]] = []
        for obj in objs:
            try:
                m = parse_model(obj)
            except ValidationError as e:
                self.metrics.reconcile_errors.labels(kind="invalid").inc()
                self._write_invalid(obj, str(e), now, result)
                continue
            conflict = self._claim(m, deps, svcs, pvcs)
            if conflict:
                self._write_conflict(obj, m, conflict, now, result)
                continue
            valid.append((obj, m))
        if not valid:
            return
        members: list[groups.Member] = []
        observed: dict[str, phases.PhaseResult] = {}
        infos: dict[str, phases.PodInfo] = {}
        for _obj, m in valid:
            dep = deps.get((ns, m.name))
            cur_replicas = int(((dep or {}).get("spec") or {}).get("replicas") or 0) if dep else 0
            info = phases.pod_info(pods.get((ns, m.name), []))
            infos[m.name] = info
            prev_phase = m.status.get("phase")
            obs = phases.derive_phase(cur_replicas, dep, info, self._cache_ready(m),
                                      preempted=prev_phase == phases.PREEMPTED)
            if cur_replicas == 0 and self._known_failed(m, now):
                obs = phases.PhaseResult(phases.FAILED, str(m.status.get("message") or "failed"),
                                         self._ready_reason(m) or "Failed")
            observed[m.name] = obs
            members.append(groups.Member(
                name=m.name, priority=m.priority, phase=obs.phase, running=cur_replicas >= 1,
                min_replicas=m.min_replicas, idle_timeout_seconds=m.idle_timeout_seconds,
                last_active_unix=parse_rfc3339(m.status.get("lastActiveTime")),
                activate_unix=self._activate_time(m, now),
                ready_since_unix=self._ready_since(m, now) if obs.phase == phases.READY else None,
                cold_start_timeout_seconds=m.cold_start_timeout_seconds,
            ))
        decisions: dict[str, groups.MemberDecision]
        if key[1].startswith("group:"):
            gkey = key
            if gkey not in self._last_swap:
                recovered = self._recover_last_swap([m for _, m in valid])
                if recovered is not None:
                    self._last_swap[gkey] = recovered
            gd = groups.decide_group(members, now, self.cooldown_seconds, self._last_swap.get(gkey))
            result.decisions[key] = gd
            decisions = gd.members
            if gd.preempted:
                self._last_swap[gkey] = now
                group = key[1].removeprefix("group:")
                self.metrics.preemptions.labels(model_namespace=ns, group=group).inc(len(gd.preempted))
                if gd.active:
                    self._swap_started[(ns, gd.active)] = (now, group)
                log.info("group swap", namespace=ns, group=group, active=gd.active,
                         preempted=list(gd.preempted), reason=gd.reason)
        else:
            md = groups.decide_single(members[0], now)
            result.decisions[key] = md
            decisions = {md.name: md}
        for obj, m in valid:
            d = decisions[m.name]
            dep = self._apply_model(m, d, deps.get((ns, m.name)), svcs, pvcs, vendor, result)
            waiting = d.replicas == 0 and not d.preempted and d.demand > groups.NONE
            ph = phases.derive_phase(d.replicas, dep, infos[m.name], self._cache_ready(m), d.preempted, d.reason,
                                     waiting)
            if d.replicas == 0 and (observed[m.name].phase == phases.FAILED or self._known_failed(m, now)):
                # scaled down because it fails: keep saying so (until the spec changes or someone activates it)
                ph = phases.PhaseResult(phases.FAILED, observed[m.name].message, observed[m.name].reason)
            result.phases[(ns, m.name)] = ph.phase
            self._write_status(obj, m, ph, infos[m.name], now, result)

    # -- ownership -------------------------------------------------------------------------------
    def _owned(self, m: Model, plural: str, kind: str, name: str, cache: dict) -> str:
        """"" when the object named `name` is absent or ours (then it is put into `cache`); else the
        conflict message. The caches hold only objects with our managed-by label, so an absent entry is
        looked up once: an object someone else made has no such label."""
        key = (m.namespace, name)
        obj = cache.get(key)
        if obj is None:
            obj = kube.get_object(self.api, plural, name, m.namespace)
            if obj is None:
                return ""
        if ownership.owned_by(obj, m):
            cache[key] = obj  # e.g. created by the previous pass, not yet in the informer cache
            return ""
        cache.pop(key, None)
        return ownership.conflict_message(kind, obj)

    def _claim(self, m: Model, deps: dict, svcs: dict, pvcs: dict) -> str:
        """The first object of `m` that exists but is not ours (its conflict message), else ""."""
        checks = [("deployments", "Deployment", m.name, deps), ("services", "Service", m.name, svcs)]
        pvc = render.render_pvc(m)
        if pvc is not None:
            checks.append(("persistentvolumeclaims", "PersistentVolumeClaim", pvc["metadata"]["name"], pvcs))
        for plural, kind, name, cache in checks:
            conflict = self._owned(m, plural, kind, name, cache)
            if conflict:
                return conflict
        return ""

    def _write_conflict(self, obj: JSON, m: Model, message: str, now: float, result: PassResult) -> None:
        ph = phases.PhaseResult(phases.FAILED, message, ownership.REASON)
        result.phases[(m.namespace, m.name)] = ph.phase
        if self._write_status(obj, m, ph, phases.PodInfo(), now, result):
            self._event(m, ownership.REASON, message, warning=True)
        log.warning("ownership conflict: leaving the object alone", namespace=m.namespace, model=m.name,
                    conflict=message)

    # -- inputs ----------------------------------------------------------------------------------
    @staticmethod
    def _cache_ready(m: Model) -> bool | None:
        cache = m.status.get("cache")
        if isinstance(cache, dict) and "ready" in cache:
            return bool(cache["ready"]) if cache.get("ready") is not None else None
        return None

    def _activate_time(self, m: Model, now: float) -> float | None:
        raw = m.annotations.get(keys.MODEL_ACTIVATE)
        if raw is None:
            return None
        t = parse_rfc3339(raw)
        if t is not None:
            return min(t, now)
        # "any value = time": an unparsable value counts from when this controller first saw it
        return self._activate_seen.setdefault((m.namespace, m.name, raw), now)

    @staticmethod
    def _ready_reason(m: Model) -> str:
        for c in m.status.get("conditions") or []:
            if isinstance(c, dict) and c.get("type") == "Ready":
                return str(c.get("reason") or "")
        return ""

    def _known_failed(self, m: Model, now: float) -> bool:
        """Status says Failed for this generation, and nobody asked for a retry since it failed."""
        st = m.status
        if st.get("phase") != phases.FAILED or st.get("observedGeneration") != m.generation:
            return False
        if self._ready_reason(m) in RECOVERABLE_FAILURES:
            return False  # failed because of something outside the model (e.g. a conflicting object): re-check
        failed_at = None
        for c in st.get("conditions") or []:
            if isinstance(c, dict) and c.get("type") == "Ready":
                failed_at = parse_rfc3339(c.get("lastTransitionTime"))
        act = self._activate_time(m, now)
        return not (act is not None and failed_at is not None and act > failed_at)

    @staticmethod
    def _ready_since(m: Model, now: float) -> float:
        for c in m.status.get("conditions") or []:
            if isinstance(c, dict) and c.get("type") == "Ready" and c.get("status") == "True":
                t = parse_rfc3339(c.get("lastTransitionTime"))
                if t is not None:
                    return t
        return now

    @staticmethod
    def _recover_last_swap(models: list[Model]) -> float | None:
        times = []
        for m in models:
            for c in m.status.get("conditions") or []:
                if isinstance(c, dict) and c.get("type") == "Ready" and c.get("reason") == "Preempted":
                    t = parse_rfc3339(c.get("lastTransitionTime"))
                    if t is not None:
                        times.append(t)
        return max(times) if times else None

    # -- writes ----------------------------------------------------------------------------------
    def _apply_model(self, m: Model, d: groups.MemberDecision, dep: JSON | None, svcs: dict, pvcs: dict,
                     vendor: str, result: PassResult) -> JSON | None:
        """Make the owned objects match; returns the Deployment as it now stands."""
        ns = m.namespace
        pvc = render.render_pvc(m)
        if pvc is not None and (ns, pvc["metadata"]["name"]) not in pvcs:
            self._may_write()
            kube.apply_object(self.api, pvc)
            result.writes.append(f"apply PersistentVolumeClaim {ns}/{pvc['metadata']['name']}")
        want = render.render_deployment(m, d.replicas, vendor, self.options)
        if dep is None:
            self._may_write()
            dep = kube.apply_object(self.api, want)
            result.writes.append(f"create Deployment {ns}/{m.name} replicas={d.replicas}")
        else:
            cur_replicas = int((dep.get("spec") or {}).get("replicas") or 0)
            rest = {**want, "spec": {k: v for k, v in want["spec"].items() if k != "replicas"}}
            if not _subset(rest, dep):
                self._may_write()
                dep = kube.apply_object(self.api, want)
                result.writes.append(f"update Deployment {ns}/{m.name} replicas={d.replicas}")
            elif cur_replicas != d.replicas:
                self._may_write()
                dep = kube.scale_deployment(self.api, ns, m.name, d.replicas)
                result.writes.append(f"scale Deployment {ns}/{m.name} {cur_replicas}->{d.replicas}")
                reason = "ScaledUp" if d.replicas else ("Preempted" if d.preempted else "ScaledToZero")
                self._event(m, reason, f"{cur_replicas} -> {d.replicas} replicas: {d.reason}")
        svc = render.render_service(m)
        cur_svc = svcs.get((ns, m.name))
        if cur_svc is None or not _subset(svc, cur_svc):
            self._may_write()
            kube.apply_object(self.api, svc)
            result.writes.append(f"apply Service {ns}/{m.name}")
        return dep

    def _event(self, m: Model, reason: str, message: str, *, warning: bool = False) -> None:
        """A Kubernetes Event on the Model (best effort: never fails the pass)."""
        now = rfc3339(self.clock())
        ev = {"apiVersion": "v1", "kind": "Event",
              "metadata": {"name": f"{m.name}.{uuid.uuid4().hex[:16]}", "namespace": m.namespace},
              "involvedObject": {"apiVersion": keys.MODEL_API_VERSION, "kind": keys.MODEL_KIND, "name": m.name,
                                 "namespace": m.namespace, "uid": m.uid},
              "reason": reason, "message": message[:1024], "type": "Warning" if warning else "Normal", "count": 1,
              "firstTimestamp": now, "lastTimestamp": now,
              "source": {"component": keys.MANAGED_BY}, "reportingComponent": keys.MANAGED_BY}
        self._may_write()
        try:
            kube.create_object(self.api, ev, retry=kube.NO_RETRY)
        except kube.KubeError as e:
            log.debug("event not recorded", error=str(e))

    def _write_status(self, obj: JSON, m: Model, ph: phases.PhaseResult, info: phases.PodInfo, now: float,
                      result: PassResult) -> bool:
        """Patch the status when it changed; True when it was written."""
        prev = m.status
        conds = phases.conditions_for(ph, prev.get("conditions") or [], rfc3339(now), m.generation, info)
        new = {"phase": ph.phase, "endpoint": render.endpoint(m), "message": ph.message,
               "observedGeneration": m.generation, "conditions": conds}
        prev_phase = prev.get("phase")
        self.metrics.set_phase(m.namespace, m.name, ph.phase, prev_phase)
        if ph.phase == phases.READY and (m.namespace, m.name) in self._swap_started:
            t0, group = self._swap_started.pop((m.namespace, m.name))
            self.metrics.swap_duration.labels(model_namespace=m.namespace, group=group).observe(max(0.0, now - t0))
        if _status_view(new) == _status_view(prev):
            return False
        self._may_write()
        kube.patch_model_status(self.api, m.namespace, m.name, new)
        result.writes.append(f"status {m.namespace}/{m.name} {prev_phase}->{ph.phase}")
        log.info("model status", namespace=m.namespace, model=m.name, phase=ph.phase, message=ph.message)
        return True

    def _write_invalid(self, obj: JSON, message: str, now: float, result: PassResult) -> None:
        ns, name = _nsname(obj)
        prev = obj.get("status") if isinstance(obj.get("status"), dict) else {}
        gen = _meta(obj).get("generation")
        gen = gen if isinstance(gen, int) and not isinstance(gen, bool) else 0
        ph = phases.PhaseResult(phases.FAILED, f"invalid Model: {message}", "InvalidSpec")
        conds = phases.conditions_for(ph, prev.get("conditions") or [], rfc3339(now), gen)
        new = {"phase": ph.phase, "message": ph.message, "observedGeneration": gen, "conditions": conds}
        result.phases[(ns, name)] = ph.phase
        if _status_view({**new, "endpoint": prev.get("endpoint")}) == _status_view(prev):
            return
        self._may_write()
        try:
            kube.patch_model_status(self.api, ns, name, new)
            result.writes.append(f"status {ns}/{name} invalid")
        except kube.KubeError as e:
            result.errors.append(f"{ns}/{name}: {e}")
        log.warning("invalid Model", namespace=ns, model=name, error=message)


def dumps(result: PassResult) -> str:  # pragma: no cover - debugging aid
    return json.dumps({"writes": result.writes, "errors": result.errors,
                       "phases": {f"{k[0]}/{k[1]}": v for k, v in result.phases.items()}}, indent=2)
