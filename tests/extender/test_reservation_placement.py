"""A bound pod's commitment follows the GPU the device plugin actually gave it (the agent's kubelet attribution in
the state annotation), so the next pod is not put on the GPU the first one really occupies."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from flexinfer.extender.cache import NodeCache
from flexinfer.extender.commitments import Commitment, Commitments
from flexinfer.extender.pod import requirements_from_dict
from flexinfer.extender.policy import PolicyConfig
from flexinfer.extender.reservations import Reservations
from flexinfer.extender.service import Extender

from flexinfer.state import NodeGpuState

from .ext_fixtures import Clock, gpu, model_pod, node_obj

T0 = 1000.0


def _extender(nodes: list[dict[str, Any]], clock: Clock) -> Extender:
    cache = NodeCache(clock=clock)
    cache.replace_all(nodes)
    return Extender(cache, PolicyConfig(max_state_age_seconds=1e9), Reservations(), clock=clock)


def _bound(p: dict[str, Any], node: str) -> dict[str, Any]:
    return {**p, "spec": {**p["spec"], "nodeName": node}, "status": {"phase": "Pending"}}


def test_commitments_follow_the_gpu_the_pod_got() -> None:
    c = Commitments()
    c.put(Commitment("uid-a", "ml/a", "n1", 20000, (0,)))
    assert c.per_gpu("n1", {}) == {0: 20000}
    assert c.per_gpu("n1", {"ml/a": (1,)}) == {1: 20000}  # the agent's attribution wins
    assert c.per_gpu("n1", {"ml/other": (0,)}) == {0: 20000}
    c.put(Commitment("uid-b", "ml/b", "n1", 5000, None))  # GPUs not chosen yet: counted where attributed
    assert c.per_gpu("n1", {"ml/a": (1,)}) == {1: 20000}
    assert c.per_gpu("n1", {"ml/b": (0, 1)}) == {0: 25000, 1: 5000}
    assert c.pop("uid-a") is not None and c.per_gpu("n1", {}) == {} and len(c) == 1


def test_state_placements() -> None:
    g0 = replace(gpu(0), pods=("ml/a/server", "ml/a/sidecar"))
    g1 = replace(gpu(1), pods=("ml/a/server", "web/b/c"))
    assert NodeGpuState("n", (g0, g1, gpu(2)), T0).placements() == {"ml/a": (0, 1), "web/b": (1,)}
    assert NodeGpuState("n", (gpu(0),), T0).placements() == {}


def test_next_pod_avoids_the_gpu_the_first_one_really_got() -> None:
    clock = Clock(T0)
    two = [gpu(0, free=24000), gpu(1, free=24000)]
    ext = _extender([node_obj("n1", two, T0 - 1, resource_version="1")], clock)
    first = model_pod(20000, "vllm", 1, uid="uid-a", name="a")
    req_a = requirements_from_dict(first)
    ext.filter(req_a, ["n1"])  # one feasible node: filter reserves
    reserved = ext.reservations.get("uid-a")
    assert reserved is not None and reserved.name == f"{req_a.namespace}/a"
    chosen = reserved.gpus[0]
    other = 1 - chosen
    ext.on_pod_event("MODIFIED", _bound(first, "n1"))
    assert ext.cache.committed_mib("n1") == {chosen: 20000}  # the extender's choice until the agent says
    # the device plugin gave the pod the other GPU; the model is not loaded yet (free memory unchanged)
    held = [replace(g, pods=(f"{req_a.namespace}/a/server",)) if g.index == other else g for g in two]
    clock.t = T0 + 5
    ext.cache.upsert(node_obj("n1", held, T0 + 4, resource_version="2"))
    second = requirements_from_dict(model_pod(20000, "vllm", 1, uid="uid-b", name="b"))
    verdict = next(v for v in ext.prioritize(second, ["n1"]) if v.node == "n1")
    assert verdict.feasible and verdict.gpus == (chosen,), verdict.detail  # not `other`, where pod a really is
    assert ext.cache.committed_mib("n1") == {other: 20000}


def test_without_attribution_the_reservation_stays_where_it_was_made() -> None:
    clock = Clock(T0)
    two = [gpu(0, free=24000), gpu(1, free=24000)]
    ext = _extender([node_obj("n1", two, T0 - 1)], clock)
    first = model_pod(20000, "vllm", 1, uid="uid-a", name="a")
    ext.filter(requirements_from_dict(first), ["n1"])
    chosen = ext.reservations.get("uid-a").gpus[0]  # type: ignore[union-attr]
    ext.on_pod_event("MODIFIED", _bound(first, "n1"))
    second = requirements_from_dict(model_pod(20000, "vllm", 1, uid="uid-b", name="b"))
    verdict = next(v for v in ext.prioritize(second, ["n1"]) if v.node == "n1")
    assert verdict.gpus == (1 - chosen,)


def test_lead_makes_the_reserved_node_the_only_best_and_changes_nothing_else() -> None:
    """policy.lead, exhaustively over small score lists: the best index alone at the top, every other score as it
    was or (at MAX_SCORE) one less, never a feasible score turned into 0."""
    from itertools import product

    from flexinfer.extender.policy import MAX_SCORE, lead

    for scores in product([0, 1, 5, 9, 10], repeat=4):
        scores = list(scores)
        top = max(scores)
        if top == 0:
            continue
        best = scores.index(top)
        out = lead(scores, best)
        assert [i for i, s in enumerate(out) if s == max(out)] == [best]
        for i, (before, after) in enumerate(zip(scores, out, strict=True)):
            if i == best:
                assert after in (before, before + 1) and after <= MAX_SCORE
            else:
                assert after in (before, before - 1) and (after > 0) == (before > 0)
        if scores.count(top) == 1:
            assert out is scores  # already alone at the top: untouched


def test_two_identical_nodes_kube_scheduler_is_told_the_reserved_one() -> None:
    """The tie kube-scheduler broke at random on the real control plane (the pod went to the node without its
    reservation, and the burst's next pods into its memory): the reserved node now has the only top score."""
    clock = Clock(T0)
    ext = _extender([node_obj("x", [gpu(0, "amd", "gfx1100", 24560, free=24560)], observed=T0),
                     node_obj("y", [gpu(0, "amd", "gfx1100", 24560, free=24560)], observed=T0)], clock)
    for k in range(3):
        req = requirements_from_dict(model_pod(5000, "llamacpp", 1, uid=f"u{k}", name=f"p{k}",
                                               resource="amd.com/gpu"))
        out = ext.prioritize_scores(req, ["x", "y"])
        reserved = ext.reservations.get(req.key)
        assert reserved is not None
        winner = ["x", "y"][out.scores.index(max(out.scores))]
        assert out.scores.count(max(out.scores)) == 1 and winner == reserved.node
