"""The one small interface every GPU reader implements, and the sample it returns.

A reader never raises out of `sample()`: library failures become `status` (a one-line reason the
agent publishes as `flexinfer.ai/agent-status`) and per-GPU `healthy=False` + `reason`.
Every measurement is optional: `None` means unsupported or unknown, and is simply not exported.
Units are in the field names (bytes, watts, celsius, hertz, ratio 0..1).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(slots=True)
class XidEvent:
    uuid: str
    xid: int
    unix: float


@dataclass(slots=True)
class MigSample:
    """One MIG instance of a MIG-enabled NVIDIA GPU: the device a pod is given (its memory is all it gets)."""

    uuid: str  # "MIG-..."
    profile: str  # "3g.40gb": GPU slices and memory, named as NVIDIA names profiles
    gpu_instance_id: int
    compute_instance_id: int
    memory_total_bytes: int
    memory_used_bytes: int

    @property
    def memory_free_bytes(self) -> int:
        total = self.memory_total_bytes
        return max(0, min(total, total - self.memory_used_bytes))


@dataclass(slots=True)
class GpuSample:
    index: int
    uuid: str
    vendor: str
    arch: str = ""
    product: str = ""
    pci_bus_id: str = ""
    compute_capability: str = ""  # "5.2" (NVIDIA)
    memory_total_bytes: int = 0
    memory_used_bytes: int = 0  # in use by processes; excludes `reserved` when the v2 API is used
    memory_reserved_bytes: int | None = None  # driver/firmware reserved (NVML v2); None if unknown
    memory_used_known: bool = True  # False: the driver does not publish usage (Intel xe); used reads 0
    power_usage_watts: float | None = None
    power_limit_watts: float | None = None
    temperature_celsius: float | None = None
    utilization_ratio: float | None = None
    sm_clock_hertz: float | None = None
    memory_clock_hertz: float | None = None
    pcie_gen_current: int | None = None
    pcie_gen_max: int | None = None
    pcie_width_current: int | None = None
    pcie_width_max: int | None = None
    pcie_replay_total: int | None = None
    throttle_reasons: dict[str, bool] | None = None  # every supported reason -> active?
    ecc_correctable_total: int | None = None
    ecc_uncorrectable_total: int | None = None
    ecc_deferred_total: int | None = None
    xid_events: list[XidEvent] = field(default_factory=list)  # new since the previous sample
    error_events: int = 0  # Xid / uncorrectable+deferred RAS events since the reader opened
    last_error_unix: float = 0.0
    healthy: bool = True
    reason: str = ""
    unified_memory: bool = False
    driver_version: str = ""
    cuda_version: str = ""
    rocm_version: str = ""
    unsupported: frozenset[str] = frozenset()  # metric groups marked unsupported (never polled again)
    # Telemetry the vendors' exporters publish by default (dcgm-exporter, AMD device-metrics-exporter)
    energy_joules_total: float | None = None  # since the driver loaded (NVML) / the counter started (amdsmi, hwmon)
    memory_temperature_celsius: float | None = None
    pcie_tx_bytes_per_second: float | None = None
    pcie_rx_bytes_per_second: float | None = None
    engine_utilization: dict[str, float] | None = None  # ratio 0..1 per engine: memory_copy, encoder, decoder, video
    remapped_rows: dict[str, int] | None = None  # NVIDIA (Ampere+): correctable / uncorrectable rows remapped
    row_remap_pending: bool | None = None
    row_remap_failed: bool | None = None
    retired_pages: dict[str, int] | None = None  # NVIDIA (pre-Ampere): single_bit / double_bit retired pages
    retired_pages_pending: bool | None = None
    gtt_total_bytes: int | None = None  # AMD: system memory the GPU maps (GTT; what an APU's models spill into)
    gtt_used_bytes: int | None = None
    # Sharing
    mig_enabled: bool | None = None  # NVIDIA MIG mode (None: not MIG-capable or unknown)
    mig_instances: list[MigSample] = field(default_factory=list)
    drm_card: str = ""  # "card0": how the Intel device plugin names the GPU

    @property
    def memory_free_bytes(self) -> int:
        """Free memory as the scheduler counts it (the one place this is computed): total - used - reserved,
        within [0, total]. NVML's v2 API reports driver/firmware `reserved` apart from `used`; NVML v1,
        amdsmi and KFD include it in `used` (reserved unknown). Either way reserved memory is never free."""
        total = self.memory_total_bytes
        return max(0, min(total, total - self.memory_used_bytes - (self.memory_reserved_bytes or 0)))


class GpuReader(Protocol):
    vendor: str

    def open(self) -> None: ...

    def sample(self) -> list[GpuSample]: ...

    def close(self) -> None: ...

    @property
    def status(self) -> str:
        """'ok' or a one-line reason (library missing, driver mismatch, re-initialising...)."""
        ...


class Backoff:
    """Exponential backoff for library re-initialisation (clock injectable for tests)."""

    def __init__(self, initial_seconds: float = 1.0, max_seconds: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.initial = initial_seconds
        self.max = max_seconds
        self.clock = clock
        self.delay = 0.0
        self.next_at = 0.0
        self.attempts = 0

    def ready(self) -> bool:
        return self.clock() >= self.next_at

    def failed(self) -> float:
        self.attempts += 1
        self.delay = self.initial if self.delay == 0 else min(self.max, self.delay * 2)
        self.next_at = self.clock() + self.delay
        return self.delay

    def reset(self) -> None:
        self.delay = 0.0
        self.next_at = 0.0
        self.attempts = 0


class NullReader:
    """No GPUs (CPU-only node, or no vendor library found); carries the reason."""

    vendor = "none"

    def __init__(self, reason: str = "ok") -> None:
        self._status = reason

    def open(self) -> None:
        pass

    def sample(self) -> list[GpuSample]:
        return []

    def close(self) -> None:
        pass

    @property
    def status(self) -> str:
        return self._status


class MultiReader:
    """Several readers as one (a node with NVIDIA and AMD GPUs); indexes are renumbered."""

    vendor = "mixed"

    def __init__(self, readers: list[GpuReader]) -> None:
        self.readers = readers

    def open(self) -> None:
        for r in self.readers:
            r.open()

    def sample(self) -> list[GpuSample]:
        out: list[GpuSample] = []
        for r in self.readers:
            for s in r.sample():
                s.index = len(out)
                out.append(s)
        return out

    def close(self) -> None:
        for r in self.readers:
            r.close()

    @property
    def status(self) -> str:
        bad = [r.status for r in self.readers if r.status != "ok"]
        return "; ".join(bad) if bad else "ok"
