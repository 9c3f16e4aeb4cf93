"""A bound pod's VRAM reservation outlives observations taken within the second of its Ready stamp.

The API stores conditions' lastTransitionTime with whole seconds, so a pod stamped Ready at 12:00:00 may
have become Ready at 12:00:00.9; an agent sample at 12:00:00.5 predates the model's memory. Dropping the
reservation on it overcommitted a GPU in the e2e tier (burst with the extender restarted midway)."""

from __future__ import annotations

from flexinfer.extender.reservations import Reservations
from flexinfer.extender.service import _ready_unix

from flexinfer.state import parse_rfc3339

STAMP = "2026-11-30T12:00:00Z"


def ready_pod() -> dict:
    return {"status": {"phase": "Running",
                       "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": STAMP}]}}


def test_ready_time_is_the_end_of_the_stamped_second() -> None:
    assert _ready_unix(ready_pod()) == parse_rfc3339(STAMP) + 1.0
    assert _ready_unix({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}) == 0.0


def test_reservation_survives_an_observation_inside_the_stamped_second() -> None:
    t0 = parse_rfc3339(STAMP)
    res = Reservations()
    res.reserve("ns/p", "n1", (0,), 7000, t0 - 1)
    res.confirm("ns/p", "n1", t0, ready_unix=_ready_unix(ready_pod()))
    assert res.reserved_mib("n1", t0 + 0.5, observed_unix=t0 + 0.5) == {0: 7000}
    assert res.reserved_mib("n1", t0 + 1.5, observed_unix=t0 + 1.5) == {}
