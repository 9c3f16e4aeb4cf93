"""The one exception every Kubernetes call raises, and which failures are worth retrying."""

from __future__ import annotations


class KubeError(Exception):
    """An API call failed. status: HTTP code, 0 = no response (connection error/timeout)."""

    def __init__(self, message: str, status: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def gone(self) -> bool:
        return self.status == 410


def is_retryable(exc: BaseException) -> bool:
    """409 (write conflict), 429, 5xx and no-response errors are worth retrying. Pure."""
    if not isinstance(exc, KubeError) or exc.status is None:
        return False
    return exc.status in (0, 409, 429) or exc.status >= 500
