"""Retry policy for API calls: bounded exponential backoff (tenacity), every attempt logged."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tenacity

from flexinfer import logs

from .errors import KubeError, is_retryable

log = logs.get("flexinfer.kube")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    initial_s: float = 0.2
    max_s: float = 5.0


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(attempts=1)


def with_retry(what: str, policy: RetryPolicy, fn: Callable[[], Any], *, retry_conflict: bool = True) -> Any:
    """Call ``fn`` under ``policy``; retryable KubeErrors (see ``is_retryable``; 409 only if
    ``retry_conflict``) are retried with backoff. When the budget is spent, a KubeError naming ``what``
    and the attempt count is raised (status and reason kept)."""

    def retryable(exc: BaseException) -> bool:
        return is_retryable(exc) and (retry_conflict or getattr(exc, "status", None) != 409)

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(max(1, policy.attempts)),
        wait=tenacity.wait_exponential(multiplier=policy.initial_s, min=policy.initial_s, max=policy.max_s),
        retry=tenacity.retry_if_exception(retryable),
        reraise=True,
        before_sleep=lambda rs: log.warning(
            "kube_retry", what=what, attempt=rs.attempt_number, error=str(rs.outcome.exception())
        ),
    )
    try:
        return retrying(fn)
    except KubeError as e:
        if retryable(e) and policy.attempts > 1:
            raise KubeError(
                f"{what}: giving up after {policy.attempts} attempts: {e}", status=e.status, reason=e.reason
            ) from e
        raise
