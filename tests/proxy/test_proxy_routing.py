"""Routing rules (pure): serving > on its way > activate the idle Model that can win its group and be placed."""

from __future__ import annotations

import pytest
from flexinfer.proxy.catalog import ModelState
from flexinfer.proxy.routing import (
    Choose,
    Fit,
    FitVerdict,
    Refuse,
    Serve,
    Wait,
    choose,
    group_verdict,
    route,
)

NOW = 1_800_000_000.0
EP = ("http://10.0.0.1:8000",)


def st(name: str, labels: tuple[str, ...] = (), phase: str = "Idle", *, group: str | None = None, priority: int = 0,
       endpoints: tuple[str, ...] = (), last_active: float | None = None, min_replicas: int = 0,
       reason: str = "", idle: float = 600.0, message: str = "") -> ModelState:
    ready_since = NOW - 3600 if phase == "Ready" else None
    return ModelState(name=name, labels=labels, phase=phase, reason=reason, message=message, group=group,
                      priority=priority, min_replicas=min_replicas, idle_timeout_s=idle, last_active_unix=last_active,
                      ready_since_unix=ready_since, endpoints=endpoints)


def states(*ms: ModelState) -> dict[str, ModelState]:
    return {m.name: m for m in ms}


# The homelab's quality lane (docs/homelab.md): 14B always-on (P100), 32B (P80) and R1 (P70) on demand, one shared GPU.
def lane(r1_labels: tuple[str, ...] = ("reasoning",), busy_14b: bool = True) -> dict[str, ModelState]:
    return states(
        st("qwen3-14b-mlc", ("chat", "reasoning"), "Ready", group="q", priority=100, endpoints=EP, min_replicas=1,
           last_active=NOW - 30 if busy_14b else NOW - 7200),
        st("qwen3-32b-quality", ("quality",), "Idle", group="q", priority=80),
        st("deepseek-r1", r1_labels, "Idle", group="q", priority=70),
    )


def test_unknown_name_is_404() -> None:
    r = route("gpt-5", lane(), NOW)
    assert isinstance(r, Refuse) and r.status == 404 and r.code == "model_not_found" and "gpt-5" in r.message


def test_a_model_name_beats_a_label_of_the_same_text() -> None:
    s = states(st("chat", (), "Idle"), st("other", ("chat",), "Ready", endpoints=EP))
    assert route("chat", s, NOW) == Choose("chat", ("chat",), frozenset(), {}, None)


def test_several_ready_models_with_the_label_are_all_candidates_for_balancing() -> None:
    s = states(st("a", ("fast",), "Ready", endpoints=EP), st("b", ("fast",), "Ready", endpoints=EP),
               st("c", ("fast",), "Idle"))
    assert route("fast", s, NOW) == Serve(("a", "b"))


def test_r1_vs_14b_a_ready_model_serves_the_label_so_the_idle_one_is_never_activated() -> None:
    # reasoning is on the busy 14B (Ready) and on R1 (Idle, lower priority): use the 14B, activate nothing
    assert route("reasoning", lane(), NOW) == Serve(("qwen3-14b-mlc",))


def test_r1_vs_14b_only_idle_models_that_cannot_preempt_the_busy_holder_are_refused_at_once() -> None:
    s = lane()
    s = {**s, "qwen3-14b-mlc": st("qwen3-14b-mlc", ("chat",), "Ready", group="q", priority=100, endpoints=EP,
                                  min_replicas=1, last_active=NOW - 30)}
    r = route("deepseek-r1", s, NOW)
    assert isinstance(r, Refuse) and r.status == 503 and r.code == "model_unavailable"
    assert "cannot preempt qwen3-14b-mlc (priority 100, serving traffic)" in r.message
    # Retry-After: when the holder's idle timeout (600 s) runs out after its last request 30 s ago
    assert r.retry_after_s == pytest.approx(570.0)


def test_an_idle_holder_is_preempted_by_a_request_so_the_challenger_is_activated() -> None:
    s = lane(busy_14b=False)  # 14B always-on but idle for 2 h: a request (demand) beats its baseline
    r = route("deepseek-r1", s, NOW)
    assert isinstance(r, Choose) and r.candidates == ("deepseek-r1",) and r.displaces == {"deepseek-r1"}
    assert choose(r, s, {"deepseek-r1": FitVerdict(Fit.AFTER_RELEASE, "GPU full")}) == \
        Wait("deepseek-r1", True, "activating deepseek-r1")


def test_higher_priority_preempts_a_busy_holder() -> None:
    s = states(st("low", ("x",), "Ready", group="g", priority=10, endpoints=EP, last_active=NOW - 1),
               st("high", ("y",), "Idle", group="g", priority=90))
    r = route("y", s, NOW)
    assert isinstance(r, Choose) and r.displaces == {"high"}


def test_proxy_traffic_newer_than_the_status_counts_for_the_holder() -> None:
    s = lane(busy_14b=False)
    s = {**s, "qwen3-14b-mlc": st("qwen3-14b-mlc", ("chat",), "Ready", group="q", priority=100, endpoints=EP,
                                  min_replicas=1, last_active=NOW - 7200)}
    assert isinstance(route("deepseek-r1", s, NOW), Choose)  # status alone: the 14B looks idle
    r = route("deepseek-r1", s, NOW, {"qwen3-14b-mlc": NOW - 5})  # but this proxy served it 5 s ago
    assert isinstance(r, Refuse) and r.retry_after_s == pytest.approx(595.0)


def test_best_candidate_by_fit_then_priority() -> None:
    s = lane(busy_14b=False)
    plan = route("x", {**s, "qwen3-32b-quality": st("qwen3-32b-quality", ("x",), group="q", priority=80),
                       "deepseek-r1": st("deepseek-r1", ("x",), group="q", priority=70)}, NOW)
    assert isinstance(plan, Choose) and set(plan.candidates) == {"qwen3-32b-quality", "deepseek-r1"}
    fits = {"qwen3-32b-quality": FitVerdict(Fit.AFTER_RELEASE), "deepseek-r1": FitVerdict(Fit.AFTER_RELEASE)}
    assert choose(plan, s, fits).model == "qwen3-32b-quality"  # both free the holder's GPU: priority decides
    fits["qwen3-32b-quality"] = FitVerdict(Fit.NEVER, "0/7 nodes: 7 GPU memory too small for model")
    assert choose(plan, s, fits).model == "deepseek-r1"
    fits["deepseek-r1"] = FitVerdict(Fit.NEVER, "0/7 nodes: 7 GPU memory too small for model")
    r = choose(plan, s, fits)
    assert isinstance(r, Refuse) and r.status == 503 and r.message.count("fits on no node") == 2


def test_outside_a_group_fits_now_beats_unknown_beats_after_release() -> None:
    s = states(st("a", ("x",), priority=90), st("b", ("x",), priority=10), st("c", ("x",), priority=50))
    plan = route("x", s, NOW)
    assert isinstance(plan, Choose) and not plan.displaces
    got = choose(plan, s, {"a": FitVerdict(Fit.AFTER_RELEASE), "b": FitVerdict(Fit.FITS),
                           "c": FitVerdict(Fit.UNKNOWN)})
    assert got == Wait("b", True, "activating b")
    assert choose(plan, s, {"a": FitVerdict(Fit.AFTER_RELEASE), "b": FitVerdict(Fit.NEVER)}).model == "c"


@pytest.mark.parametrize(("phase", "reason", "endpoints", "expect"), [
    ("Loading", "Loading", (), Wait("m", False, "m is loading")),
    ("Pending", "Creating", (), Wait("m", False, "m is pending")),
    ("Pending", "Unschedulable", (), Wait("m", False, "m is pending")),
    ("Ready", "Ready", (), Wait("m", False, "m is ready")),  # ready, endpoint not published yet
    ("Ready", "Ready", EP, Serve(("m",))),
])
def test_a_model_on_its_way_is_waited_for(phase: str, reason: str, endpoints: tuple[str, ...], expect: object) -> None:
    s = states(st("m", ("x",), phase, reason=reason, endpoints=endpoints), st("idle", ("x",), priority=99))
    assert route("x", s, NOW) == expect


def test_waiting_for_group_is_not_on_its_way() -> None:
    s = states(st("m", ("x",), "Pending", reason="WaitingForGroup", group="g"),
               st("h", (), "Ready", group="g", priority=100, endpoints=EP, last_active=NOW))
    r = route("x", s, NOW)
    assert isinstance(r, Refuse) and "cannot preempt h" in r.message


def test_failed_models_are_not_restarted_by_traffic() -> None:
    s = states(st("m", ("x",), "Failed", message="the image cannot be pulled (ErrImagePull)"))
    r = route("x", s, NOW)
    assert isinstance(r, Refuse) and r.status == 503
    assert "ErrImagePull" in r.message and "flexinfer activate m" in r.message


def test_a_loading_holder_is_judged_as_it_will_be_once_ready() -> None:
    s = states(st("h", (), "Loading", group="g", priority=10, last_active=NOW - 5),
               st("c", ("x",), group="g", priority=90))
    gv = group_verdict(s["c"], s, NOW, {})
    assert gv.wins and gv.displaces
    s2 = states(st("h", (), "Loading", group="g", priority=90, last_active=NOW - 5),
                st("c", ("x",), group="g", priority=10))
    assert not group_verdict(s2["c"], s2, NOW, {}).wins


def test_equal_priority_does_not_preempt_a_busy_member_but_takes_an_idle_one() -> None:
    busy = states(st("a", (), "Ready", group="g", priority=200, endpoints=EP, last_active=NOW - 10),
                  st("b", ("x",), group="g", priority=200))
    assert isinstance(route("x", busy, NOW), Refuse)
    idle = states(st("a", (), "Ready", group="g", priority=200, endpoints=EP, last_active=NOW - 4000),
                  st("b", ("x",), group="g", priority=200))
    assert isinstance(route("x", idle, NOW), Choose)
