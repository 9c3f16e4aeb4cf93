"""The agent heartbeat / extender max-state-age contract (flexinfer.freshness)."""

from __future__ import annotations

import pytest

from flexinfer import freshness
from flexinfer.errors import ValidationError


def test_defaults_never_call_a_quiet_node_stale() -> None:
    need = freshness.min_max_state_age_seconds()
    assert need == freshness.HEARTBEAT_SECONDS + freshness.SAMPLE_INTERVAL_SECONDS + freshness.MARGIN_SECONDS
    assert need <= freshness.MAX_STATE_AGE_SECONDS
    freshness.check(freshness.MAX_STATE_AGE_SECONDS)


def test_too_short_a_max_age_is_explained() -> None:
    with pytest.raises(ValidationError) as e:
        freshness.check(180.0, heartbeat_seconds=300.0, interval_seconds=10.0)
    text = str(e.value)
    assert "--max-state-age-seconds" in text and "180 s is too short" in text and "at least 340 s" in text


def test_the_components_use_the_shared_defaults() -> None:
    from flexinfer.agent.publish import DEFAULT_HEARTBEAT_SECONDS
    from flexinfer.extender.policy import PolicyConfig

    assert DEFAULT_HEARTBEAT_SECONDS == freshness.HEARTBEAT_SECONDS
    assert PolicyConfig().max_state_age_seconds == freshness.MAX_STATE_AGE_SECONDS
    # a failing Node watch keeps the extender ready for as long as the cached GPU state can still be fresh
    from flexinfer.extender.cache import NodeCache

    assert NodeCache().stale_after_seconds == freshness.MAX_STATE_AGE_SECONDS
