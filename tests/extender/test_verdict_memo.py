"""The verdict cache (tables and scores) gives exactly what a fresh policy evaluation gives: it is
updated when the Node object changes, a reservation lands on the node, the state turns stale, or an
Xid penalty window ends."""

from __future__ import annotations

from flexinfer.extender.cache import NodeCache
from flexinfer.extender.memo import NodeNames
from flexinfer.extender.pod import requirements_from_dict
from flexinfer.extender.policy import R_INSUFFICIENT, R_STALE, PolicyConfig, evaluate
from flexinfer.extender.reservations import Reservations
from flexinfer.extender.service import Extender

from .ext_fixtures import NOW, Clock, gpu, model_pod, node_obj


def make(nodes, clock, **cfg):
    cache = NodeCache(clock=clock)
    cache.replace_all(nodes)
    return Extender(cache, PolicyConfig(**cfg), Reservations(), clock=clock)


def req(i=0, est=10000):
    return requirements_from_dict(model_pod(est, "llamacpp", 1, uid=f"u{i}", name=f"p{i}"))


def fresh(ext, r, name):
    """What the policy says without any memo."""
    return evaluate(r, ext.cache.get(name), ext.clock(), ext.config, node=name)


def memoised(ext, r, names):
    """What the verdict cache says (tables and scores, no reservations), as (result, reason, score) per name."""
    shape, names = ext.verdicts.shape(r), NodeNames(names)
    answer = ext.verdicts.answer(shape, names, names.wanted, ext.clock())
    scores = ext.verdicts.scores(shape, names, names.wanted, ext.clock())
    out = []
    for name, value in zip(names, scores, strict=True):
        if name in answer.passed:
            out.append(("pass", "", value))
        elif name in answer.failed:
            out.append(("failed", answer.failed[name], value))
        else:
            out.append(("unresolvable", answer.unresolvable[name], value))
    return out


def same(ext, r, names):
    want = [fresh(ext, r, n) for n in names]
    assert memoised(ext, r, names) == [(v.result, v.reason, v.score) for v in want]
    return want


def test_memo_hit_equals_fresh_evaluation():
    clock = Clock(NOW + 1)
    ext = make([node_obj("a", [gpu(0, free=20000)]), node_obj("b", [gpu(0, free=5000)])], clock)
    first = same(ext, req(), ["a", "b"])
    again = same(ext, req(1), ["a", "b"])
    assert first == again and first[0].feasible


def test_new_node_object_invalidates():
    clock = Clock(NOW + 1)
    ext = make([node_obj("a", [gpu(0, free=20000)])], clock)
    assert same(ext, req(), ["a"])[0].feasible
    ext.cache.upsert(node_obj("a", [gpu(0, free=2000)], resource_version="2"))
    v = same(ext, req(), ["a"])[0]
    assert not v.feasible and v.reason == R_INSUFFICIENT


def test_reservation_on_the_node_bypasses_the_memo():
    clock = Clock(NOW + 1)
    ext = make([node_obj("a", [gpu(0, free=15000)])], clock)
    assert ext.filter(req(0), ["a"]).passed == ["a"]  # one feasible node: reserved for p0
    out = ext.filter(req(1), ["a"])
    assert out.passed == [] and out.failed == {"a": R_INSUFFICIENT}


def test_state_turning_stale_is_noticed():
    clock = Clock(NOW + 1)
    ext = make([node_obj("a", [gpu(0, free=20000)])], clock, max_state_age_seconds=60)
    assert same(ext, req(), ["a"])[0].feasible
    clock.t = NOW + 61
    v = same(ext, req(), ["a"])[0]
    assert not v.feasible and v.reason == R_STALE


def test_xid_penalty_ends_with_its_window():
    clock = Clock(NOW + 1)
    ext = make([node_obj("a", [gpu(0, free=20000, last_error_unix=NOW)])], clock,
               error_window_seconds=100, max_state_age_seconds=1e9)
    penalised = same(ext, req(), ["a"])[0]
    assert penalised.valid_until < NOW + 100  # the policy says when its verdict ends
    clock.t = NOW + 100
    assert same(ext, req(), ["a"])[0].score == penalised.score  # the window includes its last second
    clock.t = NOW + 101
    later = same(ext, req(), ["a"])[0]
    assert later.score > penalised.score and later.valid_until > NOW + 1e8
