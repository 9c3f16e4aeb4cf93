"""Property tests: invariants of the group decision hold for arbitrary groups (hypothesis)."""

from __future__ import annotations

from flexinfer.controller.groups import DEMAND, NONE, Member, decide_group, demand
from hypothesis import given, settings
from hypothesis import strategies as st

NOW = 100_000.0
PHASES = ["Idle", "Pending", "Loading", "Ready", "Preempted", "Failed"]


@st.composite
def members(draw):
    n = draw(st.integers(1, 5))
    out = []
    for i in range(n):
        running = draw(st.booleans())
        phase = draw(st.sampled_from(PHASES if running else ["Idle", "Preempted", "Failed", "Ready"]))
        ago = st.one_of(st.none(), st.floats(0, 5000))
        la, ac, rs = draw(ago), draw(ago), draw(ago)
        out.append(Member(
            name=f"m{i}", priority=draw(st.sampled_from([0, 50, 80, 100])), phase=phase, running=running,
            min_replicas=draw(st.integers(0, 1)), idle_timeout_seconds=draw(st.sampled_from([60.0, 600.0])),
            last_active_unix=None if la is None else NOW - la, activate_unix=None if ac is None else NOW - ac,
            ready_since_unix=None if rs is None else NOW - rs))
    return out


@settings(max_examples=200, deadline=None)
@given(members(), st.one_of(st.none(), st.floats(0, 1000)))
def test_invariants(ms, swap_ago):
    last_swap = None if swap_ago is None else NOW - swap_ago
    d = decide_group(ms, NOW, 300, last_swap)
    on = [n for n, x in d.members.items() if x.replicas == 1]
    loading = [m.name for m in ms if m.phase == "Loading" and m.running]
    by = {m.name: m for m in ms}
    # a loading member is never scaled down
    assert set(loading) <= set(on)
    # one active member, unless several were already loading
    assert len(on) <= max(1, len(loading))
    # never nothing serving when a member could serve
    if any(demand(m, NOW) > NONE for m in ms):
        assert on
    # nobody runs who does not want to, unless it is loading or keeps the GPU during a swap cooldown
    if d.active is not None:
        assert d.active in on
    # a busy holder is only displaced by a strictly higher priority member
    for name in d.preempted:
        holder = by[name]
        winner = by[d.active]
        if demand(holder, NOW) == DEMAND:
            assert winner.priority > holder.priority
        assert holder.phase != "Loading"
    # equal priority swaps respect the cooldown
    if d.preempted and last_swap is not None and NOW - last_swap < 300:
        assert by[d.active].priority > by[d.preempted[0]].priority
    # preempted members are not running
    for x in d.members.values():
        if x.preempted:
            assert x.replicas == 0
