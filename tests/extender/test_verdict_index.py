"""The verdict index (extender.memo) answers filter exactly as a fresh, memo-free evaluation would, through
any mix of Node updates, removals, relists, reservations, clock jumps (staleness, Xid windows), unknown and
duplicate node names and several pod shapes."""

from __future__ import annotations

import random
from collections import Counter

from flexinfer.extender.cache import NodeCache
from flexinfer.extender.memo import NodeNames, VerdictIndex
from flexinfer.extender.pod import requirements_from_dict
from flexinfer.extender.policy import NodeVerdict, PolicyConfig
from flexinfer.extender.reservations import Reservations
from flexinfer.extender.service import Extender
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .ext_fixtures import NOW, gpu, model_pod, node_obj

ARCHS = [("nvidia", "sm_89", 24576), ("nvidia", "sm_52", 6144), ("amd", "gfx1100", 24560), ("nvidia", "sm_90", 81559)]


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def random_node(rng: random.Random, name: str, rv: int, now: float) -> dict:
    gpus = []
    for i in range(rng.choice([0, 1, 1, 2, 4])):
        vendor, arch, total = rng.choice(ARCHS)
        err = now - rng.choice([10, 5000]) if rng.random() < 0.15 else 0.0
        gpus.append(gpu(i, vendor, arch, total, free=rng.randrange(0, total + 1, 512), last_error_unix=err,
                        healthy=rng.random() > 0.05))
    observed = now - rng.choice([0, 0, 0, 100, 170, 400])
    return node_obj(name, gpus, observed, resource_version=str(rv))


def fresh_split(ext: Extender, req, names: list[str]) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """What the policy says with no verdict memo (same cache, same reservations)."""
    verdicts = ext._evaluate(req, names, None, ext.clock())
    out = Extender._split(verdicts)
    passed = list(dict.fromkeys(out.passed))
    return passed, out.failed, out.unresolvable


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_index_matches_fresh_evaluation_through_any_history(seed: int) -> None:
    rng = random.Random(seed)
    clock = Clock(NOW)
    cache = NodeCache(clock=clock)
    names = [f"n{i}" for i in range(12)]
    rv = 1
    objs = {n: random_node(rng, n, rv, clock.t) for n in names[:10]}
    cache.replace_all(list(objs.values()))
    ext = Extender(cache, PolicyConfig(strategy=rng.choice(["binpack", "spread"])), Reservations(), clock=clock)
    shapes = [requirements_from_dict(model_pod(est, backend, count, uid=f"u{k}", name=f"p{k}"))
              for k, (est, backend, count) in enumerate([(5000, "llamacpp", 1), (12000, "vllm", 1),
                                                          (20000, "llamacpp", 2), (3000, "diffusers", 1)])]
    last_asked = None
    for _ in range(40):
        op = rng.random()
        if op < 0.2:
            rv += 1
            name = rng.choice(names)
            objs[name] = random_node(rng, name, rv, clock.t)
            cache.upsert(objs[name])
        elif op < 0.27:
            name = rng.choice(names)
            objs.pop(name, None)
            cache.remove(name)
        elif op < 0.32:  # relist: some nodes unchanged (same resourceVersion), some new, some gone
            rv += 1
            for name in names:
                r = rng.random()
                if r < 0.3:
                    objs[name] = random_node(rng, name, rv, clock.t)
                elif r < 0.4:
                    objs.pop(name, None)
            cache.replace_all(list(objs.values()))
        elif op < 0.42:
            node = rng.choice(names)
            ext.reservations.reserve(f"other-{rng.randrange(5)}", node, (0,), rng.choice([2000, 8000]), clock.t)
        elif op < 0.47:
            ext.reservations.release(f"other-{rng.randrange(5)}")
        elif op < 0.57:
            clock.t += rng.choice([1, 30, 90, 200, 4000])
        else:
            req = rng.choice(shapes)
            if last_asked is not None and rng.random() < 0.4:
                asked = last_asked  # the same list object again, as the HTTP server's NameLists gives it
            else:
                asked = rng.sample([*names, "ghost"], rng.randrange(1, 14))
                if rng.random() < 0.2:
                    asked = asked + asked[:2]  # duplicates
                if rng.random() < 0.6:
                    asked = NodeNames(asked)
                last_asked = asked
            if rng.random() < 0.3:  # prioritize: same scores and best node as a memo-free evaluation
                fresh = ext._evaluate(req, asked, None, ext.clock())
                pout = ext.prioritize_scores(req, asked)
                want_scores = [v.score if v.feasible else 0 for v in fresh]
                assert pout.scores == want_scores
                assert pout.best == (want_scores.index(max(want_scores)) if max(want_scores) > 0 else -1)
                split = Extender._split(fresh)
                want_tally = Counter({(False, r): n for r, n in Counter(split.failed.values()).items()})
                want_tally.update({(True, r): n for r, n in Counter(split.unresolvable.values()).items()})
                assert pout.tally is not None and +pout.tally == want_tally  # the metrics tally
                continue
            want = fresh_split(ext, req, asked)
            got = ext.filter(req, asked)
            assert list(dict.fromkeys(got.passed)) == want[0]
            assert got.failed == want[1]
            assert got.unresolvable == want[2]
            assert got.count == len(asked)
            if got.tally is not None:  # the metrics tally kept by the index matches the answer
                want_tally = Counter({(False, r): n for r, n in Counter(want[1].values()).items()})
                want_tally.update({(True, r): n for r, n in Counter(want[2].values()).items()})
                assert +got.tally == want_tally
            for name in got.passed:
                assert got.verdict(name).feasible and got.verdict(name).node == name
            # Every node is in exactly one of the three answers.
            assert set(got.passed) | set(got.failed) | set(got.unresolvable) == set(asked)
            assert not (set(got.passed) & (set(got.failed) | set(got.unresolvable)))


def test_index_is_used_on_a_warm_cache_and_dropped_on_change() -> None:
    clock = Clock(NOW + 1)
    cache = NodeCache(clock=clock)
    cache.replace_all([node_obj("a", [gpu(0, "nvidia", "sm_90", 81559, free=80000)]),
                       node_obj("b", [gpu(0, free=2000)])])
    ext = Extender(cache, clock=clock)
    req = requirements_from_dict(model_pod(10000, "llamacpp", 1, uid="u1", name="p1"))
    first = ext.filter(req, ["a", "b"])
    assert first.passed == ["a"]
    idx = next(iter(ext._indexes.values()))
    assert set(idx.entries) == {"a", "b"} and idx.passed == {"a"}
    # A second pod of the same shape answers from the index (no new entries, same verdict objects).
    before = dict(idx.entries)
    second = ext.filter(requirements_from_dict(model_pod(10000, "llamacpp", 1, uid="u2", name="p2")), ["a", "b"])
    assert second.verdicts is None and second.passed == ["a"]
    assert idx.entries == before
    # The node changes: its entry goes, the next request re-evaluates it.
    cache.upsert(node_obj("b", [gpu(0, free=23000)], resource_version="2"))
    third = ext.filter(requirements_from_dict(model_pod(10000, "llamacpp", 1, uid="u3", name="p3")), ["a", "b"])
    assert third.passed == ["a", "b"]
    assert idx.generation == cache.generation


def test_index_expires_at_the_staleness_boundary() -> None:
    clock = Clock(NOW + 1)
    cache = NodeCache(clock=clock)
    cache.replace_all([node_obj("a", [gpu(0, free=20000)], observed=NOW)])
    ext = Extender(cache, PolicyConfig(max_state_age_seconds=60), clock=clock)
    req = requirements_from_dict(model_pod(10000, "llamacpp", 1, uid="u1", name="p1"))
    assert ext.filter(req, ["a"]).passed == ["a"]
    clock.t = NOW + 61
    out = ext.filter(req, ["a"])
    assert out.passed == [] and out.unresolvable == {"a": "GPU state is stale"}


def test_shape_memos_are_bounded_lru() -> None:
    clock = Clock(NOW + 1)
    cache = NodeCache(clock=clock)
    cache.replace_all([node_obj("a", [gpu(0, free=20000)])])
    ext = Extender(cache, clock=clock)
    ext.memo_shape_limit = 3
    keep = requirements_from_dict(model_pod(1000, "llamacpp", 1, uid="keep", name="keep"))
    for est in range(2000, 2010):
        ext.filter(keep, ["a"])  # used all along: never evicted
        ext.filter(requirements_from_dict(model_pod(est, "llamacpp", 1, uid=f"u{est}", name="p")), ["a"])
        assert len(ext._indexes) <= 3 and len(ext._static) <= 3
    assert any(k[0][4] == 1000 for k in ext._indexes)


def test_change_log_too_old_clears_the_index() -> None:
    cache = NodeCache()
    cache.replace_all([node_obj("a", [gpu(0)])])
    gen = cache.generation
    for i in range(5000):  # more changes than the log keeps
        cache.upsert(node_obj("a", [gpu(0, free=i)], resource_version=str(i + 10)))
    assert cache.changes_since(gen)[1] is None
    idx = VerdictIndex(gen)
    idx.put("a", cache.get("a"), NodeVerdict("a", True), float("inf"))
    idx.sync(cache.changes_since(gen))
    assert len(idx) == 0 and idx.generation == cache.generation
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


def test_repeated_name_list_skips_the_set_difference_but_sees_every_change() -> None:
    clock = Clock(NOW + 1)
    cache = NodeCache(clock=clock)
    cache.replace_all([node_obj(n, [gpu(0, "nvidia", "sm_90", 81559, free=80000)]) for n in "abc"])
    ext = Extender(cache, clock=clock)
    names = NodeNames(["a", "b", "c", "ghost"])
    shape = [requirements_from_dict(model_pod(10000, "llamacpp", 1, uid=f"u{i}", name=f"p{i}")) for i in range(4)]
    assert ext.filter(shape[0], names).passed == ["a", "b", "c"]
    idx = next(iter(ext._indexes.values()))
    assert idx._last_names is names and "ghost" in idx.entries
    cache.remove("b")  # dropped from the index: the repeat must not trust its remembered state
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


def test_a_large_verdict_batch_settles_the_gc_only_in_services() -> None:
    import gc

    from flexinfer.extender.service import SETTLE_GC_AFTER_NODES

    nodes = [node_obj(f"n{i}", [gpu(0)]) for i in range(SETTLE_GC_AFTER_NODES)]
    req = requirements_from_dict(model_pod(1000, "llamacpp", 1, uid="u1", name="p1"))
    try:
        for service in (False, True):
            gc.unfreeze()
            cache = NodeCache(clock=Clock(NOW + 1))
            cache.replace_all(nodes)
            cache.freeze_gc_on_sync = service
            ext = Extender(cache, clock=cache.clock)
            ext.filter(req, NodeNames([f"n{i}" for i in range(SETTLE_GC_AFTER_NODES)]))
            idx = next(iter(ext._indexes.values()))
            assert len(idx) == SETTLE_GC_AFTER_NODES
            # the memo's entries are in the permanent generation only when this process owns the cache
            assert (gc.get_freeze_count() > 0) is service
            assert any(e is next(iter(idx.entries.values())) for e in gc.get_objects()) is not service
    finally:
        gc.unfreeze()
