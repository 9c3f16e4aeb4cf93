"""Writes traffic to Models: ``status.lastActiveTime`` (batched) and activation requests (rate-limited).

``touch(model)`` records traffic: the proxy calls it when a request for a Model arrives and when its
answer completes; while a Model has requests in flight it counts as active at every flush, so a
request longer than the idle timeout (a long stream) keeps its Model from being scaled down under it.
A flush loop writes the newest time per Model with a JSON merge patch on the ``status`` subresource, at
most once per Model per ``interval_s`` (``--activity-write-interval-seconds``), skipping writes that
would not move the stored time forward (another proxy replica may have written a newer one). A
first request after a quiet period is written at once, not after a full interval.

``activate(model)`` sets the ``flexinfer.ai/activate`` annotation exactly as ``flexinfer activate``
does, at most once per Model per ``interval_s``; a waiting request calls it again when its Model is
still not on its way, so a failed write is retried.

The controller owns every other status field and never writes lastActiveTime. Write functions are
synchronous (the official client) and run in worker threads; failures are logged and counted, the
time stays pending and is retried on the next flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Any

from flexinfer import logs

from .metrics import ProxyMetrics

log = logs.get("flexinfer.proxy.activity")

WriteFn = Callable[[str, float], Any]


class ActivityWriter:
    def __init__(self, write_last_active: WriteFn, write_activation: WriteFn, *, interval_s: float = 10.0,
                 stored_time: Callable[[str], float | None] = lambda _n: None,
                 busy: Callable[[], Iterable[str]] = lambda: (), known: Callable[[str], bool] = lambda _n: True,
                 metrics: ProxyMetrics | None = None, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.write_last_active = write_last_active
        self.write_activation = write_activation
        self.interval_s = max(0.05, float(interval_s))
        self.stored_time = stored_time
        self.busy = busy
        self.known = known
        self.metrics = metrics or ProxyMetrics()
        self.clock = clock
        self.monotonic = monotonic
        self.pending: dict[str, float] = {}
        self.last_seen: dict[str, float] = {}  # newest traffic per Model (routing reads it)
        self._written: dict[str, float] = {}  # Model -> monotonic time of the last lastActiveTime write
        self._written_value: dict[str, float] = {}  # Model -> the lastActiveTime it wrote last
        self._activated: dict[str, float] = {}  # Model -> monotonic time of the last activation write
        self._wake = asyncio.Event()
        self.writes = 0  # lastActiveTime writes made (tests, bench)

    # -- called from request handlers ---------------------------------------------------------------
    def touch(self, model: str, t: float | None = None) -> None:
        t = self.clock() if t is None else t
        if t > self.pending.get(model, 0.0) and t > self._written_value.get(model, 0.0):
            self.pending[model] = t
        if t > self.last_seen.get(model, 0.0):
            self.last_seen[model] = t
        if self._due(model, self.monotonic()):
            self._wake.set()

    async def activate(self, model: str) -> bool:
        """Request activation (rate-limited). True when a write was made and succeeded."""
        mono = self.monotonic()
        last = self._activated.get(model)
        if last is not None and mono - last < self.interval_s:
            return False
        self._activated[model] = mono
        try:
            await asyncio.to_thread(self.write_activation, model, self.clock())
        except Exception as e:
            self.metrics.status_writes.labels("activation", "error").inc()
            self._activated.pop(model, None)  # the next waiter retries at once
            log.warning("activation write failed", model=model, error=str(e))
            return False
        self.metrics.status_writes.labels("activation", "ok").inc()
        self.metrics.activations.labels(self.metrics.model_label(model)).inc()
        log.info("activation requested", model=model)
        return True

    # -- the flush loop -----------------------------------------------------------------------------
    def _due(self, model: str, mono: float) -> bool:
        last = self._written.get(model)
        return last is None or mono - last >= self.interval_s

    async def flush(self) -> int:
        """Write every due Model once; returns the number of writes made."""
        now, mono = self.clock(), self.monotonic()
        for model in set(self.busy()):
            if now > self.pending.get(model, 0.0) and now > self._written_value.get(model, 0.0):
                self.pending[model] = now  # requests in flight are traffic
            self.last_seen[model] = max(self.last_seen.get(model, 0.0), now)
        # forget deleted Models (every Model with traffic is in last_seen or pending)
        for model in [m for m in {*self.last_seen, *self.pending} if not self.known(m)]:
            for per_model in (self.pending, self.last_seen, self._written, self._written_value, self._activated):
                per_model.pop(model, None)
        made = 0
        for model, t in sorted(self.pending.items()):
            if not self._due(model, mono):
                continue
            stored = self.stored_time(model)
            if stored is not None and stored >= int(t):  # stored with whole seconds
                self.pending.pop(model, None)
                continue
            try:
                await asyncio.to_thread(self.write_last_active, model, t)
            except Exception as e:
                self.metrics.status_writes.labels("activity", "error").inc()
                log.warning("lastActiveTime write failed; will retry", model=model, error=str(e))
                self._written[model] = mono  # back off for one interval
                continue
            self.metrics.status_writes.labels("activity", "ok").inc()
            self._written[model] = mono
            self._written_value[model] = t
            self.writes += 1
            made += 1
            if self.pending.get(model) == t:
                del self.pending[model]
        return made

    async def run(self, tick_s: float | None = None) -> None:
        tick = tick_s if tick_s is not None else min(1.0, self.interval_s / 4)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=tick)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:  # never let the loop die
                log.exception("activity flush failed")


def kube_writers(api: Any, namespace: str) -> tuple[WriteFn, WriteFn]:
    """(lastActiveTime writer, activation writer) against the API server (no retries here: the writer
    retries on its own schedule; the API client's timeout bounds each call)."""
    from flexinfer.controller.activation import activate

    from flexinfer import kube
    from flexinfer.state import rfc3339

    def last_active(model: str, t: float) -> None:
        kube.patch_model_status(api, namespace, model, {"lastActiveTime": rfc3339(t)}, retry=kube.NO_RETRY)

    def activation(model: str, t: float) -> None:
        activate(api, namespace, model, now=t)

    return last_active, activation
