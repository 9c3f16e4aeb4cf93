"""The verdict cache (extender.memo, over the node cache's class table) answers filter and prioritize exactly as
a memo-free evaluation (policy.evaluate per node, with the same reservations and commitments) would, through any mix
of Node updates (static facts and live state), removals, relists, junk annotations, reservations, pods bound,
re-annotated, finished, deleted and relisted (their commitments), the agent's attribution of pods to GPUs, clock
jumps (staleness, Xid windows), unknown and duplicate node names and several pod shapes, each shape's first filter
(answered from the class columns for the named nodes alone, through the name list's projection) as well as later
ones (from the tables).

The reference computes each node's committed MiB itself from the pods the history bound: per pod, the GPUs the
node's current attribution names, else the GPUs the extender chose (its reservation's when the pod was bound where it
was reserved, which the test checks)."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

from flexinfer.extender.cache import NodeCache
from flexinfer.extender.memo import NodeNames
from flexinfer.extender.pod import requirements_from_dict
from flexinfer.extender.policy import NodeVerdict, PolicyConfig, effective_free, evaluate, lead, static_class
from flexinfer.extender.reservations import Reservations
from flexinfer.extender.service import Extender
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flexinfer import keys

from .ext_fixtures import NOW, Clock, gpu, model_pod, node_obj

ARCHS = [("nvidia", "sm_89", 24576), ("nvidia", "sm_52", 6144), ("amd", "gfx1100", 24560), ("nvidia", "sm_90", 81559)]


def random_node(rng: random.Random, name: str, rv: int, now: float, holders: list[str] | None = None) -> dict:
    """`holders`: "namespace/pod/container" refs the agent may attribute to this node's GPUs."""
    kind = rng.random()
    if kind < 0.05:  # junk GPU state
        return node_obj(name, [], now, extra_annotations={keys.ANN_GPU_STATE: "{junk"},
                        extra_labels={keys.LABEL_VENDOR: "nvidia"}, resource_version=str(rv))
    if kind < 0.08:  # labels only, no agent data
        return node_obj(name, [], now, published=False, extra_labels={keys.LABEL_VENDOR: "nvidia"},
                        resource_version=str(rv))
    gpus = []
    same = rng.random() < 0.5  # homogeneous nodes (most of a fleet), or mixed ones
    first = rng.choice(ARCHS)
    for i in range(rng.choice([0, 1, 1, 2, 4])):
        vendor, arch, total = first if same else rng.choice(ARCHS)
        err = now - rng.choice([10, 5000]) if rng.random() < 0.15 else 0.0
        g = gpu(i, vendor, arch, total, free=rng.randrange(0, total + 1, 512), last_error_unix=err,
                healthy=rng.random() > 0.05)
        sharing = rng.random()
        if sharing < 0.1:  # time-sliced: replicas handed out change what a pod can get
            replicas = rng.choice([2, 4])
            g = replace(g, replicas=replicas, replicas_used=rng.randrange(0, replicas + 1))
        elif sharing < 0.15 and vendor == "nvidia":  # a MIG instance of a physical GPU
            g = replace(g, mig_profile=rng.choice(["1g.10gb", "3g.40gb"]), mig_parent=0)
        if holders and rng.random() < 0.5:  # the agent's kubelet attribution: who holds this GPU
            g = replace(g, pods=tuple(rng.sample(holders, rng.randrange(1, min(3, len(holders)) + 1))))
        gpus.append(g)
    observed = now - rng.choice([0, 0, 0, 100, 170, 400])
    status = "ok" if gpus or rng.random() < 0.5 else "NVML library not found"
    return node_obj(name, gpus, observed, resource_version=str(rv), agent_status=status)


class Bound:
    """The test's own record of bound pods: key -> (node, MiB per GPU, "namespace/pod")."""

    def __init__(self) -> None:
        self.pods: dict[str, tuple[str, int, str]] = {}

    def committed(self, ext: Extender, name: str) -> dict[int, int]:
        """GPU index -> MiB committed on node `name`, computed from the history, not from the node cache's table."""
        view = ext.cache.get(name)
        if view is None or view.state is None or not view.state.gpus:
            return {}
        placements = view.state.placements()
        out: dict[int, int] = {}
        for key, (node, mib, pod) in self.pods.items():
            if node != name:
                continue
            gpus = placements.get(pod)
            if gpus is None:  # no attribution: the extender's own choice
                c = ext.cache.commitment(key)
                assert c is not None and c.node == node and c.mib_per_gpu == mib
                gpus = c.gpus or ()
            for i in gpus:
                out[i] = out.get(i, 0) + mib
        return out


def fresh(ext: Extender, req, names: list[str], bound: Bound | None = None) -> list[NodeVerdict]:
    """What the policy says with no memo at all: policy.evaluate per node, same cache views, reservations and (from
    the test's own record of bound pods) commitments."""
    out = []
    for name in names:
        view = ext.cache.get(name)
        reserved = committed = None
        if view is not None and view.state is not None:
            reserved = ext.reservations.reserved_mib(name, ext.clock(), exclude_pod=req.key)
            committed = bound.committed(ext, name) if bound is not None else None
        out.append(evaluate(req, view, ext.clock(), ext.config, reserved, node=name, committed=committed))
    return out


def fresh_split(ext: Extender, req, names: list[str], bound: Bound | None = None,
                ) -> tuple[list[str], dict[str, str], dict[str, str]]:
    out = Extender._split(fresh(ext, req, names, bound))
    return list(dict.fromkeys(out.passed)), out.failed, out.unresolvable


def check_table(cache: NodeCache, committed=lambda name: {}) -> None:
    """Every cached node sits in exactly one class, the one of its view, with its own live facts in its row (free
    MiB: what the agent sees, capped by `committed(name)`)."""
    table = cache.table
    assert sorted(table.where) == sorted(cache.names())
    assert sum(len(c) for c in table.classes.values()) == len(cache)
    for key, cls in table.classes.items():
        assert cls.key == key and len(cls) > 0 and static_class(cls.rep) == key
        for i, name in enumerate(cls.names):
            view = cache.get(name)
            assert table.where[name] is cls and cls.rows[name] == i and static_class(view) == key
            if cls.free:
                assert cls.observed[i] == view.state.observed_unix
                held = committed(name)
                assert [col[i] for col in cls.free] == [effective_free(g, held) for g in view.state.gpus]
                assert dict(cache.committed_mib(name)) == held


BOUND_SHAPES = [(8000, "llamacpp", 1), (4000, "vllm", 1), (10000, "llamacpp", 2), (16000, "llamacpp", 1),
                (3000, "diffusers", 1), (6000, "vllm", 4)]


def bound_pod(k: int, node: str, *, est: int | None = None, phase: str = "Running") -> dict:
    """Bound pod `b<k>` (one of BOUND_SHAPES) as the pod watch delivers it."""
    shape_est, backend, count = BOUND_SHAPES[k % len(BOUND_SHAPES)]
    p = model_pod(est or shape_est, backend, count, uid=f"b{k}", name=f"b{k}", node_name=node)
    return {**p, "status": {"phase": phase}}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_index_matches_fresh_evaluation_through_any_history(seed: int) -> None:
    rng = random.Random(seed)
    clock = Clock(NOW)
    cache = NodeCache(clock=clock)
    names = [f"n{i}" for i in range(12)]
    holders = [f"models/b{k}/server" for k in range(8)]
    rv = 1
    objs = {n: random_node(rng, n, rv, clock.t, holders) for n in names[:10]}
    cache.replace_all(list(objs.values()))
    cfg = PolicyConfig(strategy=rng.choice(["binpack", "spread"]), max_state_age_seconds=rng.choice([300, 300.5, 150]))
    ext = Extender(cache, cfg, Reservations(), clock=clock)
    # remember every list's coverage (as for large lists), so kept maps and the cached-nodes-left-out path run here
    ext.verdicts.cheap_coverage = rng.choice([0, 0, 64])
    bound = Bound()
    shapes = [requirements_from_dict(model_pod(est, backend, count, uid=f"u{k}", name=f"p{k}"))
              for k, (est, backend, count) in enumerate([(5000, "llamacpp", 1), (12000, "vllm", 1),
                                                          (20000, "llamacpp", 2), (3000, "diffusers", 1),
                                                          (4000, "llamacpp", 3), (6000, "vllm", 4),
                                                          # estimates only: one static_usable per class for each
                                                          (9000, "llamacpp", 1), (2000, "vllm", 1)])]
    shapes.append(requirements_from_dict(model_pod(5000, "llamacpp", 1, uid="pref", name="pref",
                                                   extra={keys.POD_PREFERRED_ARCHS: "sm_89,gfx1100"})))
    recent: list[list[str]] = []  # the last lists asked (NodeNames or plain), newest last
    for _ in range(60):
        op = rng.random()
        if op < 0.14:
            rv += 1
            name = rng.choice(names)
            objs[name] = random_node(rng, name, rv, clock.t, holders)
            cache.upsert(objs[name])
        elif op < 0.18:
            name = rng.choice(names)
            objs.pop(name, None)
            cache.remove(name)
        elif op < 0.21:  # relist: some nodes unchanged (same resourceVersion), some new, some gone
            rv += 1
            for name in names:
                r = rng.random()
                if r < 0.3:
                    objs[name] = random_node(rng, name, rv, clock.t, holders)
                elif r < 0.4:
                    objs.pop(name, None)
            cache.replace_all(list(objs.values()))
        elif op < 0.28:
            node = rng.choice(names)
            gpus = rng.choice([(0,), (0,), (0, 1)])
            ext.reservations.reserve(f"other-{rng.randrange(5)}", node, gpus, rng.choice([2000, 8000]), clock.t)
        elif op < 0.31:
            ext.reservations.release(f"other-{rng.randrange(5)}")
        elif op < 0.41:  # a pod is bound: after its own cycle (reserved where the extender chose) or anywhere
            k = rng.randrange(8)
            key = f"b{k}"
            if key in bound.pods:
                continue
            node = rng.choice(names)
            want_gpus = None
            if rng.random() < 0.6:
                req_b = requirements_from_dict(bound_pod(k, ""))
                ext.prioritize_scores(req_b, rng.sample(names, rng.randrange(1, 13)))
                r = ext.reservations.get(key)
                if r is not None and rng.random() < 0.8:
                    node, want_gpus = r.node, r.gpus
            ext.on_pod_event("MODIFIED", bound_pod(k, node))
            assert ext.reservations.get(key) is None  # bound: no reservation left, a commitment instead
            c = cache.commitment(key)
            assert c is not None and c.node == node
            if want_gpus is not None:
                assert c.gpus == want_gpus  # the extender's own choice at bind time
            bound.pods[key] = (node, BOUND_SHAPES[k % len(BOUND_SHAPES)][0], f"models/{key}")
        elif op < 0.45 and bound.pods:  # status updates of a bound pod change nothing (no change logged)
            key = rng.choice(sorted(bound.pods))
            gen = cache.generation
            ext.on_pod_event("MODIFIED", bound_pod(int(key[1:]), bound.pods[key][0], est=bound.pods[key][1]))
            assert cache.generation == gen
        elif op < 0.47 and bound.pods:  # its estimate annotation edited: the new MiB, on the same GPUs
            key = rng.choice(sorted(bound.pods))
            node, _, pod_name = bound.pods[key]
            before = cache.commitment(key).gpus  # type: ignore[union-attr]
            est = rng.choice([2000, 9000, 12000])
            ext.on_pod_event("MODIFIED", bound_pod(int(key[1:]), node, est=est))
            bound.pods[key] = (node, est, pod_name)
            assert cache.commitment(key).gpus == before or before is None  # type: ignore[union-attr]
        elif op < 0.52 and bound.pods:  # finished or deleted
            key = rng.choice(sorted(bound.pods))
            node = bound.pods.pop(key)[0]
            if rng.random() < 0.5:
                ext.on_pod_event("MODIFIED", bound_pod(int(key[1:]), node, phase=rng.choice(["Succeeded", "Failed"])))
            else:
                ext.on_pod_event("DELETED", bound_pod(int(key[1:]), node))
            assert cache.commitment(key) is None
        elif op < 0.54:  # the pod watch relists: pods no longer listed release their memory
            keep = {k: v for k, v in bound.pods.items() if rng.random() < 0.7}
            ext.on_pod_event("SYNC", {"items": [bound_pod(int(k[1:]), v[0], est=v[1]) for k, v in keep.items()]})
            bound.pods = keep
            assert {c.pod for c in cache.all_commitments()} == set(keep)
        elif op < 0.62:
            clock.t += rng.choice([1, 30, 90, 200, 4000, 0.25])
        else:
            req = rng.choice(shapes)
            if recent and rng.random() < 0.4:
                # a list object asked before, as the HTTP server's NameLists gives it; kube-scheduler alternates
                # filter's list (every node) and prioritize's (the passing ones), so not only the last one
                asked = recent[-1] if rng.random() < 0.5 else rng.choice(recent)
            else:
                asked = rng.sample([*names, "ghost"], rng.randrange(1, 14))
                if rng.random() < 0.2:
                    asked = asked + asked[:2]  # duplicates
                if rng.random() < 0.6:
                    asked = NodeNames(asked)
                recent = [*recent[-3:], asked]
            check_table(cache, lambda name: bound.committed(ext, name))
            if rng.random() < 0.3:  # forget every shape: the next filter of each is its first, answered without tables
                ext.verdicts.clear()
            if rng.random() < 0.15:  # explain: every verdict in full (detail, score, GPUs, validity)
                assert ext.explain(req, asked) == fresh(ext, req, asked, bound)
                continue
            if rng.random() < 0.3:  # prioritize: same scores and best node as a memo-free evaluation
                want = fresh(ext, req, asked, bound)
                pout = ext.prioritize_scores(req, asked)
                memo = ext.verdicts.shape(req)
                assert memo is not None and set(memo.scores) <= memo.passed  # scores only of passing nodes
                want_scores = [v.score if v.feasible else 0 for v in want]
                want_best = want_scores.index(max(want_scores)) if max(want_scores) > 0 else -1
                assert pout.best == want_best
                # kube-scheduler gets the reserved (best) node as the only top score (policy.lead)
                assert pout.scores == (lead(want_scores, want_best) if want_best >= 0 else want_scores)
                if want_best >= 0:
                    assert [i for i, s in enumerate(pout.scores) if s == max(pout.scores)] == [want_best]
                split = Extender._split(want)
                want_tally = Counter({(False, r): n for r, n in Counter(split.failed.values()).items()})
                want_tally.update({(True, r): n for r, n in Counter(split.unresolvable.values()).items()})
                assert pout.tally is not None and +pout.tally == want_tally  # the metrics tally
                if pout.best >= 0:  # the verdict the reservation is made from is the policy's, detail and all
                    assert pout.verdict(asked[pout.best]) == want[pout.best]
                continue
            want = fresh_split(ext, req, asked, bound)
            got = ext.filter(req, asked)
            assert got.passed == want[0]  # in request order, no repeats
            assert got.failed == want[1]
            assert got.unresolvable == want[2]
            assert got.count == len(asked)
            if got.tally is not None:  # the metrics tally kept by the index matches the answer
                want_tally = Counter({(False, r): n for r, n in Counter(want[1].values()).items()})
                want_tally.update({(True, r): n for r, n in Counter(want[2].values()).items()})
                assert +got.tally == want_tally
            verdicts = dict(zip(asked, fresh(ext, req, asked, bound), strict=True))
            for name in got.passed:
                assert got.verdict(name) == verdicts[name]
            # Every node is in exactly one of the three answers.
            assert set(got.passed) | set(got.failed) | set(got.unresolvable) == set(asked)
            assert not (set(got.passed) & (set(got.failed) | set(got.unresolvable)))
    # a commitment's GPUs, once chosen, are at most as many as the pod asked for (the node may have changed since)
    for c in cache.all_commitments():
        assert c.gpus is None or len(c.gpus) <= BOUND_SHAPES[int(c.pod[1:]) % len(BOUND_SHAPES)][2]


def test_tables_serve_a_warm_cache_and_follow_changes() -> None:
    clock = Clock(NOW + 1)
    cache = NodeCache(clock=clock)
    cache.replace_all([node_obj("a", [gpu(0, "nvidia", "sm_90", 81559, free=80000)]),
                       node_obj("b", [gpu(0, free=2000)])])
    ext = Extender(cache, clock=clock)
    names = NodeNames(["a", "b"])
    first = ext.filter(requirements_from_dict(model_pod(10000, "llamacpp", 1, uid="u1", name="p1")), names)
    assert first.passed == ["a"] and first.failed == {"b": "Insufficient free GPU memory"}
    shape = next(iter(ext.verdicts._shapes.values()))
    assert shape.generation == -1 and not shape.passed  # a shape's first filter is answered without tables
    second = ext.filter(requirements_from_dict(model_pod(10000, "llamacpp", 1, uid="u2", name="p2")), names)
    assert second.passed == ["a"]
    assert shape.passed == {"a"} and shape.failed == {"b": "Insufficient free GPU memory"}  # its second builds them
    # A third pod of the same shape answers from the tables: nothing rebuilt, the same answer object reused.
    version = shape.version
    third = ext.filter(requirements_from_dict(model_pod(10000, "llamacpp", 1, uid="u3", name="p3")), names)
    assert third.verdicts is None and third.passed == ["a"] and shape.version == version
    assert ext.verdicts.answer(shape, names, names.wanted, clock.t) is ext.verdicts.answer(shape, names, names.wanted,
                                                                                           clock.t)
    # The node changes: the tables follow.
    cache.upsert(node_obj("b", [gpu(0, free=23000)], resource_version="2"))
    fourth = ext.filter(requirements_from_dict(model_pod(10000, "llamacpp", 1, uid="u4", name="p4")), names)
    assert fourth.passed == ["a", "b"] and shape.version == version + 1
    assert shape.generation == cache.generation


def test_tables_expire_at_the_staleness_boundary() -> None:
    clock = Clock(NOW + 1)
    cache = NodeCache(clock=clock)
    cache.replace_all([node_obj("a", [gpu(0, free=20000)], observed=NOW)])
    ext = Extender(cache, PolicyConfig(max_state_age_seconds=60), clock=clock)
    req = requirements_from_dict(model_pod(10000, "llamacpp", 1, uid="u1", name="p1"))
    assert ext.filter(req, ["a"]).passed == ["a"]
    clock.t = NOW + 60  # exactly the limit: still fresh
    assert ext.filter(req, ["a"]).passed == ["a"]
    clock.t = NOW + 60.001
    out = ext.filter(req, ["a"])
    assert out.passed == [] and out.unresolvable == {"a": "GPU state is stale"}


def test_one_static_check_per_class_not_per_node() -> None:
    clock = Clock(NOW + 1)
    cache = NodeCache(clock=clock)
    cache.replace_all([node_obj(f"n{i}", [gpu(0, free=480 * i)]) for i in range(50)]
                      + [node_obj(f"m{i}", [gpu(0, "amd", "gfx1100", 24560)]) for i in range(50)])
    assert len(cache.table.classes) == 2
    ext = Extender(cache, clock=clock)
    out = ext.filter(requirements_from_dict(model_pod(10000, "llamacpp", 1, uid="u1", name="p1")),
                     NodeNames([f"n{i}" for i in range(50)] + [f"m{i}" for i in range(50)]))
    assert out.passed == [f"n{i}" for i in range(21, 50)]  # free 480 * i >= 10000
    assert len(out.failed) == 21 and set(out.unresolvable.values()) == {"node has no nvidia GPU"}
    shape = next(iter(ext.verdicts._shapes.values()))
    assert len(shape.static) == 2


def test_shape_memos_are_bounded_lru() -> None:
    clock = Clock(NOW + 1)
    cache = NodeCache(clock=clock)
    cache.replace_all([node_obj("a", [gpu(0, free=20000)])])
    ext = Extender(cache, clock=clock)
    ext.verdicts.shape_limit = 3
    keep = requirements_from_dict(model_pod(1000, "llamacpp", 1, uid="keep", name="keep"))
    for est in range(2000, 2010):
        ext.filter(keep, ["a"])  # used all along: never evicted
        ext.filter(requirements_from_dict(model_pod(est, "llamacpp", 1, uid=f"u{est}", name="p")), ["a"])
        assert len(ext.verdicts) <= 3
    assert any(k[0][4] == 1000 for k in ext.verdicts._shapes)


def test_change_log_too_old_drops_every_score() -> None:
    clock = Clock(NOW + 1)
    cache = NodeCache(clock=clock)
    cache.replace_all([node_obj("a", [gpu(0)]), node_obj("b", [gpu(0)])])
    ext = Extender(cache, clock=clock)
    req = requirements_from_dict(model_pod(1000, "llamacpp", 1, uid="u1", name="p1"))
    names = NodeNames(["a", "b"])
    before = ext.prioritize_scores(req, names).scores
    gen = cache.generation
    for i in range(5000):  # more changes than the log keeps
        cache.upsert(node_obj("a", [gpu(0, free=1000 + i)], resource_version=str(i + 10)))
    assert cache.changes_since(gen)[1] is None
    after = ext.prioritize_scores(requirements_from_dict(model_pod(1000, "llamacpp", 1, uid="u2", name="p2")), names)
    assert after.scores[1] == before[1] and after.scores == [v.score for v in fresh(ext, req, list(names))]
    assert cache.changes_since(cache.generation) == (cache.generation, [])


def test_relist_logs_only_changed_nodes() -> None:
    cache = NodeCache()
    a, b = node_obj("a", [gpu(0)], resource_version="1"), node_obj("b", [gpu(0)], resource_version="1")
    cache.replace_all([a, b])
    gen = cache.generation
    cache.replace_all([a, node_obj("b", [gpu(0, free=1)], resource_version="2"), node_obj("c", [gpu(0)])])
    assert sorted(cache.changes_since(gen)[1] or []) == ["b", "c"]
    gen = cache.generation
    cache.replace_all([a])
    assert sorted(cache.changes_since(gen)[1] or []) == ["b", "c"]


def test_repeated_name_list_sees_every_change() -> None:
    clock = Clock(NOW + 1)
    cache = NodeCache(clock=clock)
    cache.replace_all([node_obj(n, [gpu(0, "nvidia", "sm_90", 81559, free=80000)]) for n in "abc"])
    ext = Extender(cache, clock=clock)
    names = NodeNames(["a", "b", "c", "ghost"])
    shape = [requirements_from_dict(model_pod(10000, "llamacpp", 1, uid=f"u{i}", name=f"p{i}")) for i in range(4)]
    assert ext.filter(shape[0], names).passed == ["a", "b", "c"]
    cache.remove("b")  # the repeat must not trust the answer it kept
    out = ext.filter(shape[1], names)
    gone = "node not in extender cache"
    assert out.passed == ["a", "c"] and out.failed == {"b": gone, "ghost": gone}
    cache.upsert(node_obj("b", [gpu(0, "nvidia", "sm_90", 81559, free=80000)], resource_version="9"))
    assert ext.filter(shape[2], names).passed == ["a", "b", "c"]


def test_filter_metrics_tally_matches_the_answer_with_reservations() -> None:
    clock = Clock(NOW + 1)
    cache = NodeCache(clock=clock)
    cache.replace_all([node_obj("a", [gpu(0, free=12000)]), node_obj("b", [gpu(0, free=3000)]),
                       node_obj("c", [gpu(0, "amd", "gfx1100", 24560)])])
    ext = Extender(cache, clock=clock)
    names = NodeNames(["a", "b", "c"])
    first = ext.filter(requirements_from_dict(model_pod(10000, "llamacpp", 1, uid="u1", name="p1")), names)
    assert first.passed == ["a"]  # single feasible node: reserved for p1
    second = ext.filter(requirements_from_dict(model_pod(10000, "llamacpp", 1, uid="u2", name="p2")), names)
    assert second.passed == [] and second.failed == {"a": "Insufficient free GPU memory",
                                                     "b": "Insufficient free GPU memory"}
    assert second.tally == {(False, "Insufficient free GPU memory"): 2,
                            (True, "node has no nvidia GPU"): 1}
    sample = ext.metrics.registry.get_sample_value
    labels = {"verb": "filter", "result": "failed", "reason": "Insufficient free GPU memory"}
    assert sample("flexinfer_extender_verdicts_total", labels) == 3  # 1 (b) in the first request + 2
    assert sample("flexinfer_extender_verdicts_total", {**labels, "result": "unresolvable",
                                                        "reason": "node has no nvidia GPU"}) == 2


def test_an_answer_handed_out_is_never_changed_by_later_updates() -> None:
    """Answers share the verdict cache's tables (no copy per request); a later patch copies before changing."""
    clock = Clock(NOW + 1)
    cache = NodeCache(clock=clock)
    cache.replace_all([node_obj("a", [gpu(0, free=20000)]), node_obj("b", [gpu(0, free=2000)]),
                       node_obj("c", [gpu(0, "amd", "gfx1100", 24560)])])
    ext = Extender(cache, clock=clock)
    names = NodeNames(["a", "b", "c"])  # exactly the cached nodes
    first = ext.filter(requirements_from_dict(model_pod(10000, "llamacpp", 1, uid="u1", name="p1")), names)
    kept = (list(first.passed), dict(first.failed), dict(first.unresolvable), Counter(first.tally))
    cache.upsert(node_obj("b", [gpu(0, free=23000)], resource_version="2"))
    cache.upsert(node_obj("c", [gpu(0, free=23000)], resource_version="2"))
    second = ext.filter(requirements_from_dict(model_pod(10000, "llamacpp", 1, uid="u2", name="p2")), names)
    assert second.passed == ["a", "b", "c"] and not second.failed and not second.unresolvable
    assert (first.passed, first.failed, first.unresolvable, Counter(first.tally)) == kept
    assert kept[1] == {"b": "Insufficient free GPU memory"} and kept[2] == {"c": "node has no nvidia GPU"}


def test_filters_list_keeps_its_answer_and_coverage_while_prioritize_lists_come_and_go() -> None:
    """kube-scheduler alternates filter with every node and prioritize with the passing ones (a new list whenever
    a node moved), shape after shape: each shape keeps its answer for the filter list, and the list's coverage
    stays remembered (prioritize lists used to push both out, and every such filter walked all the names again:
    the churn bench's p99)."""
    clock = Clock(NOW + 1)
    cache = NodeCache(clock=clock)
    cache.replace_all([node_obj(f"n{i}", [gpu(0, total=100000, free=10 * i)]) for i in range(200)])  # none fit
    ext = Extender(cache, clock=clock)
    shapes = [requirements_from_dict(model_pod(3000 + s, "llamacpp", 1, uid=f"u{s}", name=f"p{s}"))
              for s in range(10)]
    every = NodeNames([f"n{i}" for i in range(200)])
    for req in shapes:
        ext.filter(req, every)  # first sight: answered without tables
    for k in range(6):
        cache.upsert(node_obj(f"n{k}", [gpu(0, total=100000, free=90000 + k)], resource_version=f"v{k}"))  # fits now
        for _ in range(2):  # the second round's filters are answered as they were (the kept answer)
            for req in shapes:
                out = ext.filter(req, every)
                assert out.passed == [f"n{i}" for i in range(k + 1)]
                ext.prioritize_scores(req, NodeNames(list(out.passed)))  # a new list each time
        for req in shapes:
            shape = ext.verdicts.shape(req)
            assert shape is not None and id(every) in shape._answers  # still kept
        assert ext.verdicts._known_coverage(every) == (True, frozenset(), frozenset())  # still remembered


def test_a_list_leaving_out_a_few_nodes_keeps_its_unchanged_map_under_heartbeats() -> None:
    """kube-scheduler names only the nodes its own filters pass (a cordoned node is left out). A heartbeat that
    moves free memory changes FailedNodes only: the answer's FailedAndUnresolvableNodes stays the same object (its
    encoding is kept) and neither map names a node the list left out."""
    clock = Clock(NOW + 1)
    cache = NodeCache(clock=clock)
    nvidia = [node_obj(f"g{i}", [gpu(0, free=1000 * (i % 20))]) for i in range(100)]
    amd = [node_obj(f"a{i}", [gpu(0, "amd", "gfx1100", 24560)]) for i in range(100)]
    cache.replace_all(nvidia + amd)
    ext = Extender(cache, clock=clock)
    req = requirements_from_dict(model_pod(12000, "llamacpp", 1, uid="u1", name="p1",
                                           extra={keys.POD_VENDOR: "nvidia"}))
    left_out = {"g3", "a7", "g19"}
    asked = NodeNames([n["metadata"]["name"] for n in nvidia + amd if n["metadata"]["name"] not in left_out])
    ext.filter(req, asked)  # first sight
    first = ext.filter(req, asked)
    cache.upsert(node_obj("g5", [gpu(0, free=20000)], resource_version="2"))  # now fits
    second = ext.filter(req, asked)
    assert "g5" in second.passed and "g5" in first.failed and "g5" not in second.failed
    assert second.unresolvable is first.unresolvable and len(second.unresolvable) == 99
    for out in (first, second):
        assert not left_out & (set(out.failed) | set(out.unresolvable) | set(out.passed))
        assert set(out.passed) | set(out.failed) | set(out.unresolvable) == set(asked)


def test_rejudged_puts_nodes_back_in_request_order() -> None:
    """`rejudged` (a passed list updated by the nodes judged again) equals filtering the whole list afresh."""
    from flexinfer.extender.memo import rejudged

    rng = random.Random(5)
    for _ in range(2000):
        pool = [f"n{i}" for i in range(rng.randrange(1, 30))]
        names = NodeNames([rng.choice(pool) for _ in range(rng.randrange(1, 40))])  # repeats, as clients send
        before = {n for n in pool if rng.random() < 0.5}
        changed = {n for n in pool if rng.random() < 0.3} | {"ghost"}  # judged again (ghost: not in the list)
        after = (before - changed) | {n for n in changed if rng.random() < 0.5} | {"ghost"}
        unique = list(dict.fromkeys(names))
        got = rejudged([n for n in unique if n in before], names, changed, after)
        assert got == [n for n in unique if n in after]


def test_heartbeats_keep_the_static_rejections_object_and_update_the_passed_list_in_place() -> None:
    """Free memory moving nodes across a pod's estimate (a heartbeat fleet) changes the passed list and
    FailedNodes only: FailedAndUnresolvableNodes stays the object the transports keep the encoding of, the passed
    list is updated from the nodes that moved (not rebuilt), and a list whose nodes did not move is reused."""
    clock = Clock(NOW + 1)
    cache = NodeCache(clock=clock)
    names_list = [f"g{i}" for i in range(40)] + [f"amd{i}" for i in range(10)]
    cache.replace_all([node_obj(f"g{i}", [gpu(0, free=20000 if i % 2 else 2000)]) for i in range(40)]
                      + [node_obj(f"amd{i}", [gpu(0, "amd", "gfx1100", 24560)]) for i in range(10)])
    ext = Extender(cache, clock=clock)
    names = NodeNames(names_list)
    req = requirements_from_dict(model_pod(10000, "llamacpp", 1, uid="u1", name="p1"))
    ext.filter(req, names)  # the first filter (no tables), then the tables
    base = ext.filter(req, names)
    rng = random.Random(3)
    rv = 10
    for _ in range(40):
        for i in rng.sample(range(40), 3):
            rv += 1
            cache.upsert(node_obj(f"g{i}", [gpu(0, free=rng.choice([2000, 20000]))], resource_version=str(rv)))
        out = ext.filter(req, names)
        assert out.unresolvable is base.unresolvable  # the same object: nothing static changed
        want = [n for n in names_list if n.startswith("g") and cache.get(n).state.gpus[0].free_mib >= 10000]
        assert out.passed == want
        assert out.failed == {n: "Insufficient free GPU memory" for n in names_list
                              if n.startswith("g") and n not in want}
    again = ext.filter(req, names)
    assert again.passed is out.passed  # nothing moved since: the same list (and its encoding)


def test_estimate_free_static_results_and_held_verdicts_are_bounded(monkeypatch) -> None:
    """The static results shared across shapes and each shape's verdicts of nodes holding reservations are kept
    up to a bound (then dropped), and answers stay those of a memo-free evaluation."""
    from flexinfer.extender import memo as memo_mod

    monkeypatch.setattr(memo_mod, "MAX_USABLE", 3)
    monkeypatch.setattr(memo_mod, "MAX_HELD_VERDICTS", 2)
    clock = Clock(NOW + 1)
    cache = NodeCache(clock=clock)
    cache.replace_all([node_obj(f"n{i}", [gpu(0, *ARCHS[i % 4], free=ARCHS[i % 4][2] - 1000)]) for i in range(8)])
    ext = Extender(cache, clock=clock)
    names = NodeNames([f"n{i}" for i in range(8)])
    kept_any = False
    for i in range(8):
        ext.reservations.reserve(f"other-{i}", f"n{i}", (0,), 1000 + 500 * i, clock.t)
    for k, backend in enumerate(["llamacpp", "vllm", "diffusers", "llamacpp", "vllm"]):
        req = requirements_from_dict(model_pod(3000 + k, backend, 1, uid=f"u{k}", name=f"p{k}"))
        for _ in range(2):
            got = ext.filter(req, names)
            want = [v for v in (evaluate(req, cache.get(n), clock.t, ext.config, ext.reservations.reserved_mib(
                n, clock.t, exclude_pod=req.key), committed=cache.committed_for(n, cache.get(n))) for n in names)]
            assert got.passed == [v.node for v in want if v.feasible]
            assert len(ext.verdicts._usable) <= 3
            shape = ext.verdicts.shape(req)
            assert shape is not None and len(shape.held) <= 2
            kept_any = kept_any or bool(shape.held and ext.verdicts._usable)
    assert kept_any  # the memos were used, not merely empty


def test_a_node_specific_rejection_detail_follows_the_node_while_its_class_stays() -> None:
    """A GPU's health reason is part of the rejection's detail but not of the node's static class: when it
    changes, explain (and the verdict a reservation is made from) shows the new one, not the memo's copy made
    from the same node before."""
    clock = Clock(NOW + 1)
    cache = NodeCache(clock=clock)
    cache.replace_all([node_obj("a", [gpu(0, healthy=False, reason="Xid 79: fell off the bus")]),
                       node_obj("b", [gpu(0, healthy=False, reason="ECC errors")])])
    ext = Extender(cache, clock=clock)
    req = requirements_from_dict(model_pod(4000, "llamacpp", 1, uid="u1", name="p1"))
    first = {v.node: v.detail for v in ext.explain(req, ["a", "b"])}
    assert "Xid 79" in first["a"] and "ECC" in first["b"]
    cache.upsert(node_obj("a", [gpu(0, healthy=False, reason="thermal shutdown")], resource_version="2"))
    again = {v.node: v for v in ext.explain(req, ["a", "b"])}
    assert "thermal shutdown" in again["a"].detail and "Xid 79" not in again["a"].detail
    assert again["a"] == evaluate(req, cache.get("a"), clock.t, ext.config)
