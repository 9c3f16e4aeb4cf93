"""Bound pods' VRAM is committed for as long as they are bound (Kubernetes-requests semantics), and the policy fits
against min(observed free, total - committed) - reserved (extender/commitments.py). Both ways the old time-based
release went wrong are pinned here: a model already in the agent's numbers was counted twice (the demo left
sdxl-turbo Pending), and a model loaded lazily was not counted at all once a sample postdated Ready (the e2e burst
bound 7 pods where 6 fit)."""

from __future__ import annotations

from typing import Any

from flexinfer.extender.cache import NodeCache
from flexinfer.extender.memo import NodeNames
from flexinfer.extender.pod import requirements_from_dict
from flexinfer.extender.policy import R_INSUFFICIENT, PolicyConfig, evaluate
from flexinfer.extender.reservations import Reservations
from flexinfer.extender.service import Extender

from flexinfer.state import rfc3339

from .ext_fixtures import Clock, gpu, model_pod, node_obj

T0 = 1_764_000_000.0
TOTAL = 24576


def make(nodes: list[dict[str, Any]], clock: Clock, strategy: str = "binpack") -> Extender:
    cache = NodeCache(clock=clock)
    cache.replace_all(nodes)
    return Extender(cache, PolicyConfig(strategy=strategy, max_state_age_seconds=1e9), Reservations(), clock=clock)


def pod(uid: str, est: int, count: int = 1) -> dict[str, Any]:
    return model_pod(est, "vllm", count, uid=uid, name=uid)


def bound(p: dict[str, Any], node: str, *, ready_at: float | None = None, phase: str = "Running") -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if ready_at is not None:
        status["conditions"] = [{"type": "Ready", "status": "True", "lastTransitionTime": rfc3339(ready_at)}]
    return {**p, "spec": {**p["spec"], "nodeName": node}, "status": status}


def publish(ext: Extender, node: str, free: list[int], observed: float, rv: int) -> None:
    ext.cache.upsert(node_obj(node, [gpu(i, total=TOTAL, free=f) for i, f in enumerate(free)], observed,
                              resource_version=str(rv)))


def detail(ext: Extender, p: dict[str, Any], node: str) -> str:
    return ext.explain(requirements_from_dict(p), [node])[0].detail


def test_a_loaded_model_is_counted_once() -> None:
    """The demo's case: qwen3-8b-fast (16000 MiB) bound and loaded, the agent publishes 24057 -> 8057 MiB free
    within the second of the Ready stamp; sdxl-turbo (7500 MiB) must still fit (was: 0 MiB free, 16000 reserved)."""
    clock = Clock(T0)
    ext = make([node_obj("rtx", [gpu(0, total=TOTAL, free=24057)], T0 - 1)], clock)
    fast = pod("fast", 16000)
    assert ext.filter(requirements_from_dict(fast), ["rtx"]).passed == ["rtx"]  # one feasible node: reserved
    ext.on_pod_event("MODIFIED", bound(fast, "rtx"))
    clock.t = T0 + 0.4
    ext.on_pod_event("MODIFIED", bound(fast, "rtx", ready_at=T0))
    publish(ext, "rtx", [8057], T0 + 0.5, 2)  # the model's memory is in the agent's numbers now
    sdxl = requirements_from_dict(pod("sdxl", 7500))
    out = ext.filter(sdxl, ["rtx"])
    assert out.passed == ["rtx"], out.failed
    assert "GPU 0 8057 MiB free" in out.verdict("rtx").detail
    assert ext.cache.committed_mib("rtx") == {0: 16000} and len(ext.reservations) == 1  # sdxl's own, tentative


def test_a_lazily_loaded_model_is_still_counted() -> None:
    """The e2e burst's case: a bound, Ready pod whose model is loaded on the first request (Ollama) shows nothing in
    the agent's samples, however long after Ready they are taken; its estimate still holds the GPU."""
    clock = Clock(T0)
    ext = make([node_obj("n", [gpu(0, total=TOTAL, free=24000)], T0 - 1)], clock)
    lazy = pod("lazy", 16000)
    ext.filter(requirements_from_dict(lazy), ["n"])
    ext.on_pod_event("MODIFIED", bound(lazy, "n", ready_at=T0))
    for k, t in enumerate([T0 + 0.5, T0 + 1.5, T0 + 2.5, T0 + 3600]):
        clock.t = t + 0.1
        publish(ext, "n", [24000], t, k + 2)  # nothing loaded yet
        ext.refresh_gauges()
        out = ext.filter(requirements_from_dict(pod(f"next-{k}", 16000)), ["n"])
        assert out.failed == {"n": R_INSUFFICIENT}, (t, out.passed)
    assert detail(ext, pod("next", 16000), "n") == (
        "needs 16000 MiB on one GPU; best GPU has 8576 MiB free (16000 MiB committed to bound pods)")
    assert "GPU 0 8576 MiB free" in detail(ext, pod("small", 7500), "n")
    # the model loads: its memory is counted once, by the smaller of the two terms
    publish(ext, "n", [7900], clock.t, 10)
    assert "GPU 0 7900 MiB free" in detail(ext, pod("small", 7500), "n")
    # the pod finishes: nothing committed; what the agent sees still counts until the memory is given back
    ext.on_pod_event("MODIFIED", bound(lazy, "n", phase="Succeeded"))
    assert ext.cache.committed_mib("n") == {} and ext.cache.commitment("lazy") is None
    assert detail(ext, pod("next", 16000), "n") == "needs 16000 MiB on one GPU; best GPU has 7900 MiB free"
    publish(ext, "n", [24000], clock.t + 1, 11)
    assert ext.filter(requirements_from_dict(pod("next", 16000)), ["n"]).passed == ["n"]


def test_reasons_name_committed_and_reserved_mib_apart() -> None:
    clock = Clock(T0)
    ext = make([node_obj("n", [gpu(0, total=TOTAL, free=24000)], T0 - 1)], clock)
    ext.on_pod_event("MODIFIED", bound(pod("a", 14000), "n"))
    ext.filter(requirements_from_dict(pod("c", 4000)), ["n"])  # tentative: reserved, not bound yet
    assert detail(ext, pod("d", 8000), "n") == ("needs 8000 MiB on one GPU; best GPU has 6576 MiB free "
                                                "(14000 MiB committed to bound pods, 4000 MiB reserved for pods "
                                                "being placed)")
    # once a's model is in the agent's numbers (below total - committed), the observed number is what limits
    publish(ext, "n", [9000], T0, 2)
    assert detail(ext, pod("d", 8000), "n") == ("needs 8000 MiB on one GPU; best GPU has 5000 MiB free "
                                                "(4000 MiB reserved for pods being placed)")


def test_pods_listed_before_their_nodes_are_committed_once_the_node_is_known() -> None:
    """An extender restart: the pod watch may list bound pods before the node watch lists their nodes."""
    clock = Clock(T0)
    ext = make([], clock)
    ext.on_pod_event("SYNC", {"items": [bound(pod("one", 10000), "single"), bound(pod("two", 16000), "dual")]})
    assert ext.cache.commitment("one").gpus is None  # type: ignore[union-attr]  # no GPU state yet
    # "dual": the 16000 MiB model is loaded on GPU 1 already; it fits neither GPU now, so the GPU with the least
    # free memory is taken as the one holding it
    ext.cache.replace_all([node_obj("single", [gpu(0, total=TOTAL, free=24000)], T0 - 1),
                           node_obj("dual", [gpu(0, total=TOTAL, free=12000), gpu(1, total=TOTAL, free=8000)],
                                    T0 - 1)])
    assert ext.cache.commitment("one").gpus == (0,) and ext.cache.commitment("two").gpus == (1,)  # type: ignore
    assert ext.cache.committed_mib("single") == {0: 10000} and ext.cache.committed_mib("dual") == {1: 16000}
    out = ext.filter(requirements_from_dict(pod("next", 14600)), ["single", "dual"])
    assert out.passed == [] and set(out.failed) == {"single", "dual"}  # 14576 and 12000 MiB left


def test_bound_elsewhere_than_reserved_takes_the_policys_pick_there() -> None:
    clock = Clock(T0)
    two = [gpu(0, total=TOTAL, free=20000), gpu(1, total=TOTAL, free=24000)]
    ext = make([node_obj("a", [gpu(0, total=TOTAL, free=24000)], T0 - 1), node_obj("b", two, T0 - 1)], clock)
    p = pod("p", 18000)
    ext.reservations.reserve("p", "a", (0,), 18000, T0, name="models/p")
    ext.on_pod_event("MODIFIED", bound(p, "b"))
    assert ext.reservations.get("p") is None and ext.cache.committed_mib("a") == {}
    assert ext.cache.commitment("p").gpus == (0,)  # type: ignore[union-attr]  # binpack: the tightest that fits


def test_multi_gpu_scores_count_commitments() -> None:
    clock = Clock(T0)
    two = [gpu(0, total=TOTAL, free=24000), gpu(1, total=TOTAL, free=24000)]
    ext = make([node_obj("held", two, T0 - 1), node_obj("empty", two, T0 - 1)], clock)
    ext.on_pod_event("MODIFIED", bound(pod("pair", 10000, 2), "held"))
    assert ext.cache.committed_mib("held") == {0: 10000, 1: 10000}
    req = requirements_from_dict(pod("next", 6000, 2))
    names = NodeNames(["held", "empty"])
    got = ext.prioritize_scores(req, names)
    want = [evaluate(req, ext.cache.get(n), clock.t, ext.config, committed=ext.cache.committed_mib(n), node=n)
            for n in names]
    assert got.scores == [v.score for v in want] and got.scores[0] > got.scores[1]  # binpack: the fuller node
    assert want[0].detail.startswith("fits: needs 6000 MiB on 2 GPUs; GPU 0 14576 MiB free, GPU 1 14576 MiB free")


def test_status_updates_of_a_bound_pod_touch_nothing() -> None:
    clock = Clock(T0)
    ext = make([node_obj("n", [gpu(0, total=TOTAL, free=24000)], T0 - 1)], clock)
    p = pod("p", 8000)
    ext.on_pod_event("MODIFIED", bound(p, "n"))
    names = NodeNames(["n"])
    req = requirements_from_dict(pod("q", 8000))
    shape = ext.verdicts.shape(req)
    assert shape is not None
    ext.verdicts.answer(shape, names, names.wanted, clock.t)  # a shape's first filter keeps no tables
    first = ext.verdicts.answer(shape, names, names.wanted, clock.t)
    generation, version = ext.cache.generation, shape.version
    for k in range(5):  # the kubelet's status writes: Running, Ready, restarts...
        ext.on_pod_event("MODIFIED", bound(p, "n", ready_at=T0 + k))
    assert ext.cache.generation == generation
    assert ext.verdicts.answer(shape, names, names.wanted, clock.t) is first and shape.version == version
    ext.on_pod_event("DELETED", bound(p, "n"))  # a real change is followed
    assert ext.cache.generation == generation + 1 and ext.filter(req, names).passed == ["n"]


def test_explain_of_a_bound_pod_does_not_count_the_pod_against_itself() -> None:
    """`flexinfer explain pod/NAME` for a running pod answers "would it fit where it is, were it not there": its
    own commitment is left out and its memory in use given back; any other pod still sees the commitment."""
    clock = Clock(T0)
    ext = make([node_obj("rtx", [gpu(0, total=TOTAL, free=24057)], T0 - 1)], clock)
    big = pod("big", 16000)
    ext.on_pod_event("MODIFIED", bound(big, "rtx", ready_at=T0))
    assert ext.cache.committed_mib("rtx") == {0: 16000}
    own = ext.explain(requirements_from_dict(big), ["rtx"])[0]
    assert own.feasible, own.detail  # not loaded yet: before, min(24057, 24576 - 16000) < 16000 failed
    other = ext.explain(requirements_from_dict(pod("other", 16000)), ["rtx"])[0]
    assert not other.feasible and "(16000 MiB committed to bound pods)" in other.detail
    publish(ext, "rtx", [8057], T0 + 5, 2)  # loaded: its memory is in the agent's numbers
    own = ext.explain(requirements_from_dict(big), ["rtx"])[0]
    assert own.feasible, own.detail
    other = ext.explain(requirements_from_dict(pod("other", 16000)), ["rtx"])[0]
    assert not other.feasible and "best GPU has 8057 MiB free" in other.detail
