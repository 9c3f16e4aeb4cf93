from __future__ import annotations

import pytest
from flexinfer.extender import policy as P
from flexinfer.extender.pod import PodRequirements
from flexinfer.extender.policy import PolicyConfig, evaluate

from flexinfer import keys
from flexinfer.errors import ParseError
from flexinfer.nodes import view_of

from .ext_fixtures import NOW, gpu, node_obj

CFG = PolicyConfig()


def req(est: int = 20480, backend: str = "vllm", vendor: str = "nvidia", count: int = 1, **kw) -> PodRequirements:
    return PodRequirements(namespace="m", name="p", uid="u", managed=True, backend=backend, vendor=vendor,
                           vram_estimate_mib=est, gpu_count=count, **kw)


def view(gpus, observed: float = NOW, **kw):
    return view_of(node_obj("n1", gpus, observed, **kw))


# (id, requirements, node gpus, extra node kwargs, result, reason, detail fragment)
CASES = [
    ("fits", req(), [gpu(0, total=24576, free=23000)], {}, "pass", "", "GPU 0 23000 MiB free"),
    ("20GiB-on-two-12GiB", req(), [gpu(0, "nvidia", "sm_86", 12288), gpu(1, "nvidia", "sm_86", 12288)], {},
     "unresolvable", P.R_TOO_SMALL, "needs 20480 MiB on one GPU; largest GPU has 12288 MiB total"),
    ("too-small-6g", req(), [gpu(0, "nvidia", "sm_75", 6144)], {}, "unresolvable", P.R_TOO_SMALL,
     "largest GPU has 6144 MiB total"),
    ("full", req(), [gpu(0, total=24576, free=5800)], {}, "failed", P.R_INSUFFICIENT,
     "needs 20480 MiB on one GPU; best GPU has 5800 MiB free"),
    ("two-gpus-one-full", req(10000, count=2), [gpu(0, free=24000), gpu(1, free=4000)], {}, "failed",
     P.R_INSUFFICIENT, "needs 10000 MiB on each of 2 GPUs; 2nd best GPU has 4000 MiB free"),
    ("two-gpus-fit", req(10000, count=2), [gpu(0, free=24000), gpu(1, free=12000)], {}, "pass", "", "GPU 1"),
    ("too-few-gpus", req(1000, count=2), [gpu(0)], {}, "unresolvable", P.R_TOO_FEW_GPUS, "needs 2 GPUs; node has 1"),
    ("unhealthy-does-not-count", req(1000), [gpu(0, healthy=False, reason="Xid 79: fell off the bus")], {},
     "unresolvable", P.R_UNHEALTHY, "Xid 79"),
    ("unhealthy-skipped-healthy-used", req(1000), [gpu(0, healthy=False), gpu(1, free=3000)], {}, "pass", "", "GPU 1"),
    ("nvidia-pod-on-amd", req(1000), [gpu(0, "amd", "gfx1100", 24560)], {}, "unresolvable",
     "node has no nvidia GPU", "node has amd GPUs"),
    ("amd-pod-on-nvidia", req(1000, vendor="amd"), [gpu(0)], {}, "unresolvable", "node has no amd GPU", ""),
    ("gpu-pod-on-cpu-node", req(1000), [], {}, "unresolvable", P.R_NO_GPU, ""),
    ("gpu-pod-on-unlabelled-node", req(1000), [], {"published": False}, "unresolvable", P.R_NO_GPU, ""),
    ("no-agent-state", req(1000), [], {"published": False, "extra_labels": {keys.LABEL_VENDOR: "nvidia"}},
     "unresolvable", P.R_NO_STATE, keys.ANN_GPU_STATE),
    ("agent-problem", req(1000), [], {"agent_status": "NVML library not found"}, "unresolvable", P.R_AGENT,
     "NVML library not found"),
    ("vllm-on-maxwell", req(4000), [gpu(0, "nvidia", "sm_52", 6144)], {}, "unresolvable",
     "vllm does not run on maxwell sm_52", ""),
    ("incompatible-beats-stale", req(4000), [gpu(0, "nvidia", "sm_52", 6144)], {"observed": NOW - 9999},
     "unresolvable", "vllm does not run on maxwell sm_52", ""),
    ("mlc-maxwell-readonly-degraded", req(4000, "mlc-llm", jit_policy="READONLY"), [gpu(0, "nvidia", "sm_52", 6144)],
     {}, "pass", "", "degraded"),
    ("stale", req(1000), [gpu(0)], {"observed": NOW - 600}, "unresolvable", P.R_STALE,
     "observed 600 s ago (max 300 s)"),
    ("junk-state-annotation", req(1000), [], {"extra_annotations": {keys.ANN_GPU_STATE: "{nope"},
                                               "extra_labels": {keys.LABEL_VENDOR: "nvidia"}},
     "unresolvable", f"cannot parse annotation {keys.ANN_GPU_STATE} on node", keys.ANN_GPU_STATE),
    ("junk-vendor-label", req(1000), [gpu(0)], {"extra_labels": {keys.LABEL_VENDOR: "matrox"}}, "unresolvable",
     f"cannot parse label {keys.LABEL_VENDOR} on node", "matrox"),
    ("mixed-node-uses-compatible-card", req(4000), [gpu(0, "nvidia", "sm_52", 6144), gpu(1, "nvidia", "sm_89", 8192)],
     {}, "pass", "", "GPU 1"),
    ("auto-vendor-any-gpu", req(1000, vendor="auto", backend="llamacpp"), [gpu(0, "amd", "gfx906", 16368)], {},
     "pass", "", ""),
    ("no-backend-skips-compat", req(1000, backend=""), [gpu(0, "nvidia", "sm_52", 6144)], {}, "pass", "", ""),
]


@pytest.mark.parametrize(("r", "gpus", "kw", "result", "reason", "detail"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_rules(r, gpus, kw, result, reason, detail) -> None:
    observed = kw.pop("observed", NOW)
    v = evaluate(r, view(gpus, observed, **kw), NOW, CFG)
    assert v.result == result, v
    assert v.reason == reason
    assert detail in v.detail
    if result == "pass":
        assert 1 <= v.score <= 10 and v.gpus
    else:
        assert v.score == 0 and not v.gpus
    assert v.node == "n1"


def test_reasons_are_node_independent() -> None:
    """The FailedScheduling event groups by text: two differently-sized full nodes give one reason."""
    a = evaluate(req(), view([gpu(0, free=5800)]), NOW, CFG)
    b = evaluate(req(), view([gpu(0, total=49152, free=100)]), NOW, CFG)
    assert a.reason == b.reason == P.R_INSUFFICIENT and a.detail != b.detail


def test_passthrough_and_cpu_and_pod_error() -> None:
    v = view([gpu(0, free=0)])
    assert evaluate(PodRequirements(), v, NOW, CFG) == P.NodeVerdict("n1", True)
    assert evaluate(req(vendor="cpu", count=0), v, NOW, CFG).feasible
    bad = PodRequirements(managed=True, error="pod annotation x: cannot parse", error_key=keys.POD_VRAM_ESTIMATE_MB)
    out = evaluate(bad, v, NOW, CFG)
    assert out.unresolvable and out.reason == f"invalid pod annotation {keys.POD_VRAM_ESTIMATE_MB}"
    missing = evaluate(req(), None, NOW, CFG, node="ghost")
    assert (missing.node, missing.result, missing.reason) == ("ghost", "failed", P.R_NOT_IN_CACHE)


def test_reservations_count_against_free() -> None:
    v = view([gpu(0, total=24576, free=24000)])
    assert evaluate(req(10000), v, NOW, CFG, {0: 10000}).feasible
    out = evaluate(req(10000), v, NOW, CFG, {0: 20000})
    assert out.result == "failed" and "reserved" in out.detail


def test_binpack_prefers_tightest_spread_prefers_most_free() -> None:
    tight = view([gpu(0, total=24576, free=11000)])
    roomy = view([gpu(0, total=24576, free=24000)])
    r = req(10000)
    bp = PolicyConfig(strategy="binpack")
    sp = PolicyConfig(strategy="spread")
    assert evaluate(r, tight, NOW, bp).score > evaluate(r, roomy, NOW, bp).score
    assert evaluate(r, tight, NOW, sp).score < evaluate(r, roomy, NOW, sp).score
    # binpack picks the tightest GPU on a node, spread the emptiest
    two = view([gpu(0, free=24000), gpu(1, free=11000)])
    assert evaluate(r, two, NOW, bp).gpus == (1,)
    assert evaluate(r, two, NOW, sp).gpus == (0,)


def test_bonus_and_penalties() -> None:
    base = evaluate(req(10000), view([gpu(0, free=24000)]), NOW, PolicyConfig(strategy="spread")).score
    pref = evaluate(req(10000, preferred_archs=("sm_89",)), view([gpu(0, free=24000)]), NOW,
                    PolicyConfig(strategy="spread"))
    assert pref.score == min(10, base + P.PREFERRED_BONUS) and "preferred" in pref.detail
    recent = evaluate(req(10000), view([gpu(0, free=24000, last_error_unix=NOW - 60)]), NOW,
                      PolicyConfig(strategy="spread"))
    assert recent.score == max(1, base - P.ERROR_PENALTY) and "Xid" in recent.detail
    old = evaluate(req(10000), view([gpu(0, free=24000, last_error_unix=NOW - 86400)]), NOW,
                   PolicyConfig(strategy="spread"))
    assert old.score == base
    good = evaluate(req(4000, "mlc-llm", jit_policy="READONLY"), view([gpu(0, "nvidia", "sm_89", 8192)]), NOW, CFG)
    degraded = evaluate(req(4000, "mlc-llm", jit_policy="READONLY"), view([gpu(0, "nvidia", "sm_52", 8192)]), NOW, CFG)
    assert degraded.degraded and degraded.score == max(1, good.score - P.DEGRADED_PENALTY)


def test_scores_stay_in_range() -> None:
    for free in range(0, 24577, 1024):
        for strategy in P.STRATEGIES:
            v = evaluate(req(0, preferred_archs=("sm_89",)), view([gpu(0, free=free)]), NOW,
                         PolicyConfig(strategy=strategy))
            assert 1 <= v.score <= P.MAX_SCORE


@pytest.mark.parametrize("kw", [{"strategy": "random"}, {"max_state_age_seconds": 0}])
def test_bad_config(kw) -> None:
    with pytest.raises(ParseError):
        PolicyConfig(**kw)


def test_ollama_on_maxwell_is_decided_by_the_node_driver_like_preflight() -> None:
    """Ollama on compute capability 5.x needs NVIDIA driver >= 570 (the registry's degraded_min_driver): the
    extender decides it from the node's driver label with the same rule as preflight (compat.with_driver)."""
    from flexinfer.extender.metrics import reason_label

    from flexinfer.compat import Verdict, with_driver

    maxwell = [gpu(0, "nvidia", "sm_52", 6144, free=6000)]
    r = req(3000, "ollama")
    unlabelled = evaluate(r, view(maxwell, extra_labels={keys.LABEL_DRIVER_MAJOR: ""}), NOW, CFG)
    new = evaluate(r, view(maxwell, extra_labels={keys.LABEL_DRIVER_MAJOR: "580"}), NOW, CFG)
    old = evaluate(r, view(maxwell, extra_labels={keys.LABEL_DRIVER_MAJOR: "550"}), NOW, CFG)
    assert unlabelled.feasible and "570" in unlabelled.degraded  # unknown: placed, scored lower
    assert new.feasible and not new.degraded and new.score == unlabelled.score + P.DEGRADED_PENALTY
    assert not old.feasible and old.unresolvable and "570" in old.reason and "older" in old.reason
    assert reason_label(old.reason) == old.reason  # in the metric's closed set
    # the node's driver is a static fact: nodes differing only in it fall in different classes
    assert P.static_class(view(maxwell, extra_labels={keys.LABEL_DRIVER_MAJOR: "550"})) != \
        P.static_class(view(maxwell, extra_labels={keys.LABEL_DRIVER_MAJOR: "580"}))
    for driver, verdict in ((580, Verdict.SUPPORTED), (570, Verdict.SUPPORTED), (569, Verdict.UNSUPPORTED),
                            (None, Verdict.DEGRADED)):
        assert with_driver("ollama", "nvidia", P.compat_for("ollama", "nvidia", "sm_52", ""), driver).verdict is verdict
    # a caveat that does not hinge on the driver stays as it is
    mlc = P.compat_for("mlc-llm", "nvidia", "sm_52", "READONLY")
    assert mlc.verdict is Verdict.DEGRADED and with_driver("mlc-llm", "nvidia", mlc, 100) is mlc
