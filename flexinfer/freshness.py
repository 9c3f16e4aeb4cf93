"""How fresh the agent's GPU state must be: the one contract between the agent's heartbeat and the
extender's staleness check.

The agent republishes a node whose numbers did not move at least every `HEARTBEAT_SECONDS`; the extender
rejects (`GPU state is stale`) a node whose `observed` time is older than `MAX_STATE_AGE_SECONDS`. The age
of a healthy, quiet node's state saw-tooths between 0 and one heartbeat plus one sampling interval plus
the write's latency, so the maximum age must exceed that with margin, or quiet nodes flap to "stale"
between heartbeats. `check()` enforces it; the CLIs call it on their flags.
"""

from __future__ import annotations

from flexinfer.errors import ValidationError

HEARTBEAT_SECONDS = 120.0  # agent: republish a quiet node at least this often
SAMPLE_INTERVAL_SECONDS = 10.0  # agent: default sampling interval
MAX_STATE_AGE_SECONDS = 300.0  # extender: older GPU state is rejected (2.5 heartbeats)
MARGIN_SECONDS = 30.0  # API-server latency, informer delay, clock skew between nodes


def min_max_state_age_seconds(heartbeat_seconds: float = HEARTBEAT_SECONDS,
                              interval_seconds: float = SAMPLE_INTERVAL_SECONDS) -> float:
    """The smallest max state age that never calls a healthy, quiet node stale."""
    return heartbeat_seconds + interval_seconds + MARGIN_SECONDS


def check(max_state_age_seconds: float, heartbeat_seconds: float = HEARTBEAT_SECONDS,
          interval_seconds: float = SAMPLE_INTERVAL_SECONDS) -> None:
    """Raise ValidationError when the max state age is too short for the agents' heartbeat."""
    need = min_max_state_age_seconds(heartbeat_seconds, interval_seconds)
    if max_state_age_seconds < need:
        raise ValidationError(
            "--max-state-age-seconds",
            f"{max_state_age_seconds:g} s is too short; it must be at least {need:g} s: "
            f"the agent heartbeat ({heartbeat_seconds:g} s) + a sampling interval "
            f"({interval_seconds:g} s) + {MARGIN_SECONDS:g} s margin, or quiet healthy nodes turn stale "
            "between heartbeats")
