"""Table tests for the shared-group / serverless decision (controller.groups)."""

from __future__ import annotations

import dataclasses

import pytest
from flexinfer.controller.groups import (
    BASELINE,
    DEMAND,
    NONE,
    Member,
    decide_group,
    decide_single,
    demand,
)

NOW = 10_000.0
T = 600.0  # idle timeout


def m(name, prio, phase="Idle", running=False, min_r=0, active_ago=None, activate_ago=None, ready_ago=None):
    return Member(
        name=name, priority=prio, phase=phase, running=running, min_replicas=min_r, idle_timeout_seconds=T,
        last_active_unix=None if active_ago is None else NOW - active_ago,
        activate_unix=None if activate_ago is None else NOW - activate_ago,
        ready_since_unix=None if ready_ago is None else NOW - ready_ago,
    )


def short(member):
    """60 s idle timeout, 300 s cold start budget."""
    return dataclasses.replace(member, idle_timeout_seconds=60.0, cold_start_timeout_seconds=300.0)


@pytest.mark.parametrize(
    ("member", "expected"),
    [
        (m("a", 0), NONE),
        (m("a", 0, min_r=1), BASELINE),
        (m("a", 0, active_ago=10), DEMAND),
        (m("a", 0, active_ago=T + 1), NONE),
        (m("a", 0, active_ago=T + 1, min_r=1), BASELINE),
        (m("a", 0, activate_ago=5), DEMAND),
        (m("a", 0, phase="Ready", running=True, ready_ago=5), NONE),  # ready without a request: no demand
        (m("a", 0, phase="Ready", running=True, min_r=1, ready_ago=5), BASELINE),
        # request arrived during a load longer than the idle timeout: idle clock starts at Ready
        (short(m("a", 0, phase="Ready", running=True, activate_ago=200, ready_ago=5)), DEMAND),
        (short(m("a", 0, phase="Ready", running=True, active_ago=200, ready_ago=5)), DEMAND),
        (short(m("a", 0, phase="Ready", running=True, active_ago=200, ready_ago=61)), NONE),
        # ... but not a request older than the cold start budget (300 s) before Ready
        (short(m("a", 0, phase="Ready", running=True, activate_ago=400, ready_ago=5)), NONE),
        (short(m("a", 0, phase="Idle", activate_ago=200, ready_ago=5)), NONE),  # only while Ready
    ],
)
def test_demand(member, expected):
    assert demand(member, NOW) == expected


@pytest.mark.parametrize(
    ("member", "replicas", "reason_part"),
    [
        (m("a", 0, phase="Ready", running=True, active_ago=T + 5), 0, "scaled to zero"),
        (m("a", 0, phase="Ready", running=True, active_ago=5), 1, "recent traffic"),
        (m("a", 0, activate_ago=1), 1, "activation"),
        (m("a", 0, min_r=1, active_ago=T * 3), 1, "minReplicas 1"),
        (m("a", 0, phase="Loading", running=True, activate_ago=T * 5), 1, "loading"),
        (m("a", 0), 0, "no traffic seen"),
    ],
)
def test_serverless_single(member, replicas, reason_part):
    d = decide_single(member, NOW)
    assert d.replicas == replicas
    assert reason_part in d.reason


def R(decision):
    return {n: md.replicas for n, md in decision.members.items()}


def P(decision):
    return {n for n, md in decision.members.items() if md.preempted}


# (id, members, last_swap_ago, active, replicas, preempted-set, swapped-list)
CASES = [
    ("nothing running, start always-on highest priority",
     [m("q14", 100, min_r=1), m("q32", 80), m("r1", 70)], None,
     "q14", {"q14": 1, "q32": 0, "r1": 0}, set(), ()),
    ("nobody wants: nothing starts",
     [m("q14", 100), m("q32", 80)], None, None, {"q14": 0, "q32": 0}, set(), ()),
    ("nothing serving, demand beats baseline when starting",
     [m("q14", 100, min_r=1), m("q32", 80, activate_ago=1)], None,
     "q32", {"q14": 0, "q32": 1}, set(), ()),
    ("nothing serving, highest priority among equal want",
     [m("a", 10, activate_ago=1), m("b", 50, activate_ago=1)], None, "b", {"a": 0, "b": 1}, set(), ()),
    ("14B stays when nobody else wants",
     [m("q14", 100, "Ready", True, 1), m("q32", 80), m("r1", 70)], None,
     "q14", {"q14": 1, "q32": 0, "r1": 0}, set(), ()),
    ("activation of lower priority preempts an idle always-on holder",
     [m("q14", 100, "Ready", True, 1, active_ago=T * 2), m("q32", 80, activate_ago=1), m("r1", 70)], None,
     "q32", {"q14": 0, "q32": 1, "r1": 0}, {"q14"}, ("q14",)),
    ("lower priority cannot preempt a busy higher priority",
     [m("q14", 100, "Ready", True, 1, active_ago=5), m("r1", 70, activate_ago=1)], None,
     "q14", {"q14": 1, "r1": 0}, set(), ()),
    ("higher priority with demand preempts a busy lower one at once (no cooldown)",
     [m("q14", 100, activate_ago=1), m("q32", 80, "Ready", True, active_ago=2)], 1,
     "q14", {"q14": 1, "q32": 0}, {"q32"}, ("q32",)),
    ("always-on higher priority reclaims after the holder idles",
     [m("q14", 100, "Preempted", min_r=1), m("q32", 80, "Ready", True, active_ago=T + 1)], 5,
     "q14", {"q14": 1, "q32": 0}, set(), ("q32",)),
    ("always-on higher priority waits while the lower one is busy",
     [m("q14", 100, "Preempted", min_r=1), m("q32", 80, "Ready", True, active_ago=5)], None,
     "q32", {"q14": 0, "q32": 1}, {"q14"}, ()),
    ("equal priority never preempts a busy member",
     [m("a", 200, "Ready", True, active_ago=5), m("b", 200, activate_ago=1)], None,
     "a", {"a": 1, "b": 0}, set(), ()),
    ("equal priority swaps when holder idle and cooldown passed",
     [m("a", 200, "Ready", True, 1, active_ago=T + 1), m("b", 200, activate_ago=1)], 1000,
     "b", {"a": 0, "b": 1}, {"a"}, ("a",)),
    ("equal priority idle swap waits for cooldown",
     [m("a", 200, "Ready", True, 1, active_ago=T + 1), m("b", 200, activate_ago=1)], 10,
     "a", {"a": 1, "b": 0}, set(), ()),
    ("idle holder with no min replicas waits for cooldown before swap instead of dropping to zero",
     [m("a", 200, "Ready", True, active_ago=T + 1), m("b", 200, activate_ago=1)], 10,
     "a", {"a": 1, "b": 0}, set(), ()),
    ("loading member is never scaled down, even by higher priority",
     [m("q14", 100, activate_ago=1), m("q32", 80, "Loading", True)], None,
     "q32", {"q14": 0, "q32": 1}, set(), ()),
    ("loading member kept even though idle past timeout",
     [m("q32", 80, "Loading", True, activate_ago=T * 10), m("q14", 100, min_r=1)], None,
     "q32", {"q14": 0, "q32": 1}, set(), ()),
    ("preemption proceeds once the loading one is Ready",
     [m("q14", 100, activate_ago=1), m("q32", 80, "Ready", True, activate_ago=100)], None,
     "q14", {"q14": 1, "q32": 0}, {"q32"}, ("q32",)),
    ("failed holder does not block others",
     [m("q14", 100, "Failed", True, 1), m("q32", 80, activate_ago=1)], None,
     "q32", {"q14": 0, "q32": 1}, set(), ()),
    ("failed always-on member does not reclaim from a lower one",
     [m("q14", 100, "Failed", False, 1), m("q32", 80, "Ready", True, 1)], None,
     "q32", {"q14": 0, "q32": 1}, set(), ()),
    ("failed member does not keep an idle holder up; it is retried instead",
     [m("q14", 100, "Failed", False, 1), m("q32", 80, "Ready", True, active_ago=T + 1)], None,
     "q14", {"q14": 1, "q32": 0}, set(), ()),
    ("failed member retried when nothing else serves",
     [m("q14", 100, "Failed", False, 1), m("q32", 80)], None, "q14", {"q14": 1, "q32": 0}, set(), ()),
    ("failed holder alone keeps retrying",
     [m("q14", 100, "Failed", True, 1), m("q32", 80)], None,
     "q14", {"q14": 1, "q32": 0}, set(), ()),
    ("idle holder with nobody waiting scales to zero",
     [m("a", 100, "Ready", True, active_ago=T + 1), m("b", 50)], None, None, {"a": 0, "b": 0}, set(), ()),
    ("preempted member no longer wanting becomes plain idle",
     [m("q14", 100, "Preempted"), m("q32", 80, "Ready", True, active_ago=5)], None,
     "q32", {"q14": 0, "q32": 1}, set(), ()),
    ("two running (after restart): best keeps GPU, other preempted",
     [m("a", 100, "Ready", True, 1), m("b", 50, "Ready", True, 1)], None,
     "a", {"a": 1, "b": 0}, {"b"}, ()),
    ("best of several challengers wins",
     [m("h", 10, "Ready", True, active_ago=T + 1), m("x", 20, activate_ago=1), m("y", 30, activate_ago=1)],
     None, "y", {"h": 0, "x": 0, "y": 1}, set(), ("h",)),  # h no longer wants: Idle, not Preempted
]


@pytest.mark.parametrize(("members", "swap_ago", "active", "replicas", "preempted", "swapped"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_group_decision(members, swap_ago, active, replicas, preempted, swapped):
    d = decide_group(members, NOW, cooldown_seconds=60, last_swap_unix=None if swap_ago is None else NOW - swap_ago)
    assert d.active == active, d.reason
    assert R(d) == replicas, d.reason
    assert P(d) == preempted, {n: x.reason for n, x in d.members.items()}
    assert d.preempted == swapped
    assert sum(R(d).values()) <= 1 or any(x.phase == "Loading" for x in members)


def test_reasons_are_readable():
    d = decide_group([m("q14", 100, "Ready", True, 1, active_ago=T * 2), m("q32", 80, activate_ago=1)], NOW, 60)
    assert "q32 (priority 80) preempts q14 (priority 100)" in d.reason
    assert "idle for" in d.reason
    assert d.members["q14"].reason.startswith("preempted by q32")
    w = decide_group([m("q14", 100, "Ready", True, 1, active_ago=1), m("r1", 70, activate_ago=1)], NOW, 60)
    assert w.members["r1"].reason == "waiting for the GPU held by q14 (priority 100)"


def test_empty_group():
    assert decide_group([], NOW, 60).active is None


def test_preemption_reason_reads_as_a_sentence():
    """The idle holder is described as idle, never "<name> is no traffic seen"."""
    holder = m("qwen3-14b-mlc", 100, phase="Ready", running=True, min_r=1)
    challenger = m("qwen3-32b-quality", 80, activate_ago=5)
    d = decide_group([holder, challenger], NOW, last_swap_unix=None, cooldown_seconds=0)
    assert d.active == "qwen3-32b-quality"
    assert "qwen3-14b-mlc is idle (no traffic seen)" in d.reason
    assert "is no traffic" not in d.reason


# --- rule 8: members that cannot be placed -------------------------------------------------------------------

def test_a_member_that_cannot_be_placed_never_preempts():
    holder = m("14b", 100, "Ready", running=True, min_r=1, ready_ago=5000)
    big = m("32b", 80, activate_ago=10)
    d = decide_group([holder, big], NOW, 0.0, unplaceable={"32b": "fits on no node"})
    assert d.active == "14b" and d.preempted == () and d.replicas("14b") == 1
    assert d.members["32b"].blocked and d.members["32b"].replicas == 0
    assert "fits on no node" in d.members["32b"].reason and "stays with 14b" in d.members["32b"].reason
    assert decide_group([holder, big], NOW, 0.0).preempted == ("14b",)  # without the check it would


def test_nothing_serving_starts_the_best_member_that_can_be_placed():
    d = decide_group([m("14b", 100, min_r=1), m("32b", 80, activate_ago=10)], NOW, 0.0,
                     unplaceable={"32b": "too big"})
    assert d.active == "14b" and d.members["32b"].blocked


def test_a_failed_member_is_not_retried_while_a_healthy_one_waits_for_room():
    """After a rollback the failed preemptor must not take the GPU back just because the member it gave the GPU
    back to cannot be placed yet (its memory is not published free yet)."""
    failed = m("32b", 80, "Failed", activate_ago=10)
    back = m("14b", 100, "Preempted", min_r=1)
    d = decide_group([failed, back], NOW, 0.0, unplaceable={"14b": "not yet"})
    assert d.active is None and d.replicas("32b") == 0 and d.replicas("14b") == 0
    only_failed = decide_group([failed, m("14b", 100)], NOW, 0.0)
    assert only_failed.active == "32b"  # nobody else wants the GPU: retry it
