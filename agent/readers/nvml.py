"""NVIDIA reader on NVML (`nvidia-ml-py`, `import pynvml`).

The pynvml module object is injected (tests and the fake fleet pass a fake module whose functions
raise the real `pynvml.NVMLError_*` classes). Behaviour (docs/gpu-telemetry.md):

* memory: `nvmlDeviceGetMemoryInfo(h, version=nvmlMemory_v2)` (reports `reserved`, and `used`
  excludes it), falling back to v1 for good on FunctionNotFound / NotSupported / ArgumentVersionMismatch.
* temperature: `nvmlDeviceGetTemperatureV`, falling back to the legacy call on FunctionNotFound.
* NotSupported (or NoPermission / FunctionNotFound) on a metric group marks it unsupported for
  that GPU; it is never polled again and simply absent from metrics.
* GpuIsLost / Unknown / LibRmVersionMismatch / DriverNotLoaded / Uninitialized / LibraryNotFound:
  the GPU (or all GPUs) becomes unhealthy with a reason and the library is re-initialised with
  exponential backoff; nothing raises out of `sample()`.
* Xid events: `nvmlEventSetWait_v2` on a daemon thread with a short timeout (Timeout = no event),
  or drained without blocking at each sample (`events="poll"`, deterministic for the fake fleet).
  Application Xids (13, 31, 43, 45, 68, 109) are counted but do not make a GPU unhealthy.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from flexinfer import logs
from flexinfer.arch import NVIDIA, nvidia_arch

from .base import Backoff, GpuSample, MigSample, XidEvent

log = logs.get("flexinfer.agent.nvml")

APPLICATION_XIDS = frozenset({13, 31, 43, 45, 68, 109})
MIB = 1024 * 1024

# bit -> vendor-neutral snake_case name (nvmlClocksEventReason*)
THROTTLE_REASONS: tuple[tuple[int, str], ...] = (
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks_setting"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
)

_UNSUPPORTED_NAMES = ("NVMLError_NotSupported", "NVMLError_NoPermission", "NVMLError_FunctionNotFound")
_DEVICE_FATAL_NAMES = ("NVMLError_GpuIsLost", "NVMLError_ResetRequired", "NVMLError_GpuNotFound")
_LIBRARY_FATAL_NAMES = (
    "NVMLError_Unknown", "NVMLError_LibRmVersionMismatch", "NVMLError_DriverNotLoaded",
    "NVMLError_Uninitialized", "NVMLError_LibraryNotFound",
)


@dataclass
class _Device:
    index: int
    handle: Any
    uuid: str
    name: str = ""
    pci_bus_id: str = ""
    cc: str = ""
    arch: str = ""
    unsupported: set[str] = field(default_factory=set)
    memory_v1: bool = False
    temperature_legacy: bool = False
    healthy: bool = True
    reason: str = ""
    sticky_reason: str = ""
    error_events: int = 0
    last_error_unix: float = 0.0
    pending_xids: list[XidEvent] = field(default_factory=list)
    last: GpuSample | None = None


class NvmlReader:
    vendor = NVIDIA

    def __init__(
        self,
        nvml: Any,
        *,
        events: Literal["thread", "poll", "off"] = "thread",
        event_timeout_ms: int = 2000,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.nv = nvml
        self.events = events
        self.event_timeout_ms = max(1, min(5000, event_timeout_ms))
        self.clock = clock
        self.backoff = backoff or Backoff()
        self._lock = threading.Lock()
        self._devices: dict[str, _Device] = {}  # by UUID: enumeration order is not stable
        self._lost: dict[str, _Device] = {}  # seen before, missing after a re-init
        self._initialised = False
        self._status = "not opened"
        self.driver_version = ""
        self.cuda_version = ""
        self._event_set: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._reinit_requested = False  # set by the event thread on a fatal wait error
        self.init_attempts = 0
        self.init_error: BaseException | None = None

    @property
    def library_missing(self) -> bool:
        """NVML itself (or the kernel driver) is absent: not an NVIDIA node, rather than a broken one."""
        return self.init_error is not None and self._is(
            self.init_error, ("NVMLError_LibraryNotFound", "NVMLError_DriverNotLoaded"))

    # -- error classification (by the real pynvml class hierarchy) -----------------------------
    def _is(self, e: BaseException, names: tuple[str, ...]) -> bool:
        return any(isinstance(e, cls) for n in names if isinstance(cls := getattr(self.nv, n, None), type))

    @property
    def status(self) -> str:
        return self._status

    # -- lifecycle ------------------------------------------------------------------------------
    def open(self) -> None:
        self._try_init()

    def _try_init(self) -> bool:
        self.init_attempts += 1
        nv = self.nv
        self._reinit_requested = False
        try:
            nv.nvmlInit()
            self.init_error = None
        except nv.NVMLError as e:
            self.init_error = e
            delay = self.backoff.failed()
            self._status = f"NVML unavailable: {e} (retry in {delay:.0f}s)"
            log.warning("nvml_init_failed", error=str(e), retry_seconds=delay)
            return False
        try:
            self.driver_version = self._opt(nv.nvmlSystemGetDriverVersion) or ""
            cuda = self._opt(nv.nvmlSystemGetCudaDriverVersion)
            self.cuda_version = f"{cuda // 1000}.{cuda % 1000 // 10}" if isinstance(cuda, int) else ""
            count = nv.nvmlDeviceGetCount()
            found: dict[str, _Device] = {}
            unavailable: list[str] = []
            for i in range(count):
                try:
                    dev = self._discover(i)
                except nv.NVMLError as e:
                    if not self._is(e, _DEVICE_FATAL_NAMES):
                        raise
                    log.warning("nvml_device_unavailable", index=i, error=str(e))
                    unavailable.append(f"gpu {i}: {e}")
                    continue
                found[dev.uuid] = dev
        except nv.NVMLError as e:
            self._shutdown()
            delay = self.backoff.failed()
            self._status = f"NVML enumeration failed: {e} (retry in {delay:.0f}s)"
            log.warning("nvml_enumerate_failed", error=str(e), retry_seconds=delay)
            return False
        with self._lock:
            previous = {**self._lost, **self._devices}
            for uuid, dev in found.items():
                old = previous.get(uuid)
                if old is not None:  # keep counters and learned capabilities across re-inits
                    dev.unsupported = old.unsupported
                    dev.memory_v1, dev.temperature_legacy = old.memory_v1, old.temperature_legacy
                    dev.error_events, dev.last_error_unix = old.error_events, old.last_error_unix
                    dev.sticky_reason = old.sticky_reason
                    if dev.sticky_reason:  # a critical Xid stays until the agent restarts
                        dev.healthy, dev.reason = False, dev.sticky_reason
            self._lost = {u: d for u, d in previous.items() if u not in found}
            for d in self._lost.values():
                d.healthy = False
                d.reason = d.reason or "GPU is lost"
            self._devices = found
        self._initialised = True
        # a GPU that cannot even be enumerated (and was never seen before) is only visible here
        unseen = [u for u in unavailable if not self._lost]
        # the backoff is reset only after a clean sample round, so a GPU that fails right after
        # every re-init does not cause a tight re-init loop
        self._status = "ok" if not unseen else "NVML: " + "; ".join(unseen) + " (not enumerable)"
        log.info("nvml_ready", gpus=len(found), driver=self.driver_version, cuda=self.cuda_version)
        self._start_events()
        return True

    def _discover(self, i: int) -> _Device | None:
        nv = self.nv
        h = nv.nvmlDeviceGetHandleByIndex(i)
        uuid = nv.nvmlDeviceGetUUID(h)
        dev = _Device(index=i, handle=h, uuid=uuid)
        dev.name = self._opt(nv.nvmlDeviceGetName, h) or ""
        pci = self._opt(nv.nvmlDeviceGetPciInfo_v3, h) or self._opt(nv.nvmlDeviceGetPciInfo, h)
        dev.pci_bus_id = str(getattr(pci, "busId", "") or "") if pci is not None else ""
        cc = self._opt(nv.nvmlDeviceGetCudaComputeCapability, h)
        if cc:
            major, minor = int(cc[0]), int(cc[1])
            dev.cc = f"{major}.{minor}"
            try:
                dev.arch = nvidia_arch(major, minor).arch
            except Exception:
                dev.arch = f"sm_{major}{minor}"
        return dev

    def _opt(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A call whose failure is not fatal for enumeration (returns None)."""
        try:
            return fn(*args)
        except self.nv.NVMLError as e:
            if self._is(e, _DEVICE_FATAL_NAMES + _LIBRARY_FATAL_NAMES):
                raise
            return None

    def _shutdown(self) -> None:
        self._stop_events()
        if self._initialised:
            with contextlib.suppress(self.nv.NVMLError):
                self.nv.nvmlShutdown()
        self._initialised = False

    def close(self) -> None:
        self._shutdown()
        self._status = "closed"

    def _library_failed(self, e: BaseException, where: str) -> None:
        """Shut NVML down and schedule a re-init. A device error (GpuIsLost) only affects that GPU;
        a library error (Unknown, version mismatch, driver gone) makes every GPU unhealthy."""
        self._shutdown()
        delay = self.backoff.failed()
        self._status = f"NVML failed ({where}: {e}); re-initialising in {delay:.0f}s"
        log.warning("nvml_reinit_scheduled", where=where, error=str(e), retry_seconds=delay)
        if self._is(e, _DEVICE_FATAL_NAMES):
            return
        with self._lock:
            for d in self._devices.values():
                d.healthy = False
                d.reason = d.reason or f"NVML: {e}"

    # -- sampling -------------------------------------------------------------------------------
    def sample(self) -> list[GpuSample]:
        if not self._initialised and self.backoff.ready():
            self._try_init()
        if self._initialised and self._reinit_requested:
            self._library_failed(RuntimeError("event wait failed"), "events")
        if not self._initialised:
            return self._stale_samples()
        if self.events == "poll":
            self._poll_events()
        out: list[GpuSample] = []
        with self._lock:
            devices = sorted(self._devices.values(), key=lambda d: d.index)
        for dev in devices:
            try:
                out.append(self._sample_device(dev))
            except self.nv.NVMLError as e:  # fatal for the device or the library
                dev.healthy = False
                dev.reason = str(e) or type(e).__name__
                log.warning("nvml_device_failed", uuid=dev.uuid, error=dev.reason)
                self._library_failed(e, f"gpu {dev.index}")
                return self._stale_samples()
            except Exception as e:  # a bug or a surprising return value: never kill the loop
                log.error("nvml_sample_error", uuid=dev.uuid, error=repr(e))
                out.append(self._stale(dev))
        for d in self._lost.values():
            out.append(self._stale(d))
        self.backoff.reset()
        return out

    def _stale(self, dev: _Device) -> GpuSample:
        if dev.last is not None:
            s = replace(dev.last, healthy=dev.healthy, reason=dev.reason,
                        xid_events=self._take_xids(dev), error_events=dev.error_events,
                        last_error_unix=dev.last_error_unix)
            return s
        return GpuSample(index=dev.index, uuid=dev.uuid, vendor=NVIDIA, arch=dev.arch, product=dev.name,
                         healthy=False, reason=dev.reason or "GPU unavailable")

    def _stale_samples(self) -> list[GpuSample]:
        with self._lock:
            devs = sorted({**self._lost, **self._devices}.values(), key=lambda d: d.index)
        return [self._stale(d) for d in devs]

    def _take_xids(self, dev: _Device) -> list[XidEvent]:
        with self._lock:
            xids, dev.pending_xids = dev.pending_xids, []
        return xids

    def _fn(self, *names: str) -> Callable[..., Any] | None:
        """The first binding this nvidia-ml-py version has (older releases lack newer calls)."""
        for name in names:
            fn = getattr(self.nv, name, None)
            if callable(fn):
                return fn
        return None

    def _metric(self, dev: _Device, metric: str, fn: Callable[..., Any] | None, *args: Any, **kw: Any) -> Any:
        """Call one metric getter: unsupported once => never again; fatal errors propagate."""
        if metric in dev.unsupported:
            return None
        if fn is None:  # binding absent in this nvidia-ml-py: same as FunctionNotFound
            dev.unsupported.add(metric)
            log.info("nvml_metric_unsupported", uuid=dev.uuid, metric=metric, error="binding missing")
            return None
        try:
            return fn(*args, **kw)
        except self.nv.NVMLError as e:
            if self._is(e, _DEVICE_FATAL_NAMES + _LIBRARY_FATAL_NAMES):
                raise
            if self._is(e, _UNSUPPORTED_NAMES):
                dev.unsupported.add(metric)
                log.info("nvml_metric_unsupported", uuid=dev.uuid, metric=metric, error=str(e))
            else:
                log.debug("nvml_metric_failed", uuid=dev.uuid, metric=metric, error=str(e))
            return None

    def _memory(self, dev: _Device) -> tuple[int, int, int | None]:
        """(total, used, reserved) bytes; NVML's own `free` is not needed (GpuSample.memory_free_bytes)."""
        nv, h = self.nv, dev.handle
        if not dev.memory_v1 and "memory_v2" not in dev.unsupported:
            try:
                m = nv.nvmlDeviceGetMemoryInfo(h, version=nv.nvmlMemory_v2)
                return int(m.total), int(m.used), int(m.reserved)
            except nv.NVMLError as e:
                if self._is(e, _DEVICE_FATAL_NAMES + _LIBRARY_FATAL_NAMES):
                    raise
                dev.memory_v1 = True
                dev.unsupported.add("memory_v2")
                log.info("nvml_memory_v1_fallback", uuid=dev.uuid, error=str(e))
        m = nv.nvmlDeviceGetMemoryInfo(h)
        return int(m.total), int(m.used), None

    def _temperature(self, dev: _Device) -> float | None:
        nv, h = self.nv, dev.handle
        if "temperature" in dev.unsupported:
            return None
        temp_v = self._fn("nvmlDeviceGetTemperatureV")
        if temp_v is None:
            dev.temperature_legacy = True
        if not dev.temperature_legacy and temp_v is not None:
            try:
                return float(temp_v(h, nv.NVML_TEMPERATURE_GPU))
            except nv.NVMLError as e:
                if not self._is(e, ("NVMLError_FunctionNotFound", "NVMLError_ArgumentVersionMismatch")):
                    if self._is(e, _DEVICE_FATAL_NAMES + _LIBRARY_FATAL_NAMES):
                        raise
                    if self._is(e, _UNSUPPORTED_NAMES):
                        dev.unsupported.add("temperature")
                    return None
                dev.temperature_legacy = True
        t = self._metric(dev, "temperature", self._fn("nvmlDeviceGetTemperature"), h, nv.NVML_TEMPERATURE_GPU)
        return None if t is None else float(t)

    def _sample_device(self, dev: _Device) -> GpuSample:
        nv, h = self.nv, dev.handle
        total, used, reserved = self._memory(dev)
        s = GpuSample(
            index=dev.index, uuid=dev.uuid, vendor=NVIDIA, arch=dev.arch, product=dev.name,
            pci_bus_id=dev.pci_bus_id, compute_capability=dev.cc,
            memory_total_bytes=total, memory_used_bytes=used,
            memory_reserved_bytes=reserved, driver_version=self.driver_version, cuda_version=self.cuda_version,
        )
        mw = self._metric(dev, "power", self._fn("nvmlDeviceGetPowerUsage"), h)
        s.power_usage_watts = None if mw is None else mw / 1000.0
        lim = self._metric(dev, "power_limit", self._fn("nvmlDeviceGetEnforcedPowerLimit"), h)
        s.power_limit_watts = None if lim is None else lim / 1000.0
        s.temperature_celsius = self._temperature(dev)
        util = self._metric(dev, "utilization", self._fn("nvmlDeviceGetUtilizationRates"), h)
        s.utilization_ratio = None if util is None else float(util.gpu) / 100.0
        self._telemetry(dev, s, util)
        sm = self._metric(dev, "clocks", self._fn("nvmlDeviceGetClockInfo"), h, nv.NVML_CLOCK_SM)
        mem = self._metric(dev, "clocks", self._fn("nvmlDeviceGetClockInfo"), h, nv.NVML_CLOCK_MEM)
        s.sm_clock_hertz = None if sm is None else sm * 1e6
        s.memory_clock_hertz = None if mem is None else mem * 1e6
        s.pcie_gen_current = self._metric(dev, "pcie", self._fn("nvmlDeviceGetCurrPcieLinkGeneration"), h)
        s.pcie_width_current = self._metric(dev, "pcie", self._fn("nvmlDeviceGetCurrPcieLinkWidth"), h)
        s.pcie_gen_max = self._metric(dev, "pcie", self._fn("nvmlDeviceGetMaxPcieLinkGeneration"), h)
        s.pcie_width_max = self._metric(dev, "pcie", self._fn("nvmlDeviceGetMaxPcieLinkWidth"), h)
        s.pcie_replay_total = self._metric(dev, "pcie_replay", self._fn("nvmlDeviceGetPcieReplayCounter"), h)
        mask = self._metric(dev, "throttle", self._fn("nvmlDeviceGetCurrentClocksEventReasons",
                                                       "nvmlDeviceGetCurrentClocksThrottleReasons"), h)
        if mask is not None:
            s.throttle_reasons = {name: bool(mask & bit) for bit, name in THROTTLE_REASONS}
        s.ecc_correctable_total = self._metric(
            dev, "ecc", self._fn("nvmlDeviceGetTotalEccErrors"), h, nv.NVML_MEMORY_ERROR_TYPE_CORRECTED,
            nv.NVML_VOLATILE_ECC)
        s.ecc_uncorrectable_total = self._metric(
            dev, "ecc", self._fn("nvmlDeviceGetTotalEccErrors"), h, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
            nv.NVML_VOLATILE_ECC)
        self._memory_health(dev, s)
        self._mig(dev, s)
        s.xid_events = self._take_xids(dev)
        s.error_events, s.last_error_unix = dev.error_events, dev.last_error_unix
        s.healthy, s.reason = dev.healthy, dev.reason
        s.unsupported = frozenset(dev.unsupported)
        dev.last = s
        return s

    def _telemetry(self, dev: _Device, s: GpuSample, util: Any) -> None:
        """What dcgm-exporter exports by default beyond the basics: energy, memory temperature, PCIe throughput,
        memory-copy / encoder / decoder utilisation."""
        nv, h = self.nv, dev.handle
        mj = self._metric(dev, "energy", self._fn("nvmlDeviceGetTotalEnergyConsumption"), h)
        s.energy_joules_total = None if mj is None else mj / 1000.0
        s.memory_temperature_celsius = self._field(dev, "memory_temperature", nv.NVML_FI_DEV_MEMORY_TEMP)
        # NVML measures each direction over a 20 ms window per call (KB/s, KB = 1024 bytes).
        fn = self._fn("nvmlDeviceGetPcieThroughput")
        tx = self._metric(dev, "pcie_throughput", fn, h, nv.NVML_PCIE_UTIL_TX_BYTES)
        rx = self._metric(dev, "pcie_throughput", fn, h, nv.NVML_PCIE_UTIL_RX_BYTES)
        s.pcie_tx_bytes_per_second = None if tx is None else tx * 1024.0
        s.pcie_rx_bytes_per_second = None if rx is None else rx * 1024.0
        engines: dict[str, float] = {}
        if util is not None:
            engines["memory_copy"] = float(util.memory) / 100.0
        for name, getter in (("encoder", "nvmlDeviceGetEncoderUtilization"),
                             ("decoder", "nvmlDeviceGetDecoderUtilization")):
            got = self._metric(dev, name, self._fn(getter), h)
            if got is not None:
                engines[name] = float(got[0]) / 100.0  # [utilisation %, sampling period us]
        s.engine_utilization = engines or None

    def _field(self, dev: _Device, metric: str, field_id: int) -> float | None:
        """One NVML field value (nvmlDeviceGetFieldValues): each field carries its own return code, so a field
        the GPU does not have is NotSupported there, not an exception."""
        got = self._metric(dev, metric, self._fn("nvmlDeviceGetFieldValues"), dev.handle, [field_id])
        if got is None:
            return None
        v = got[0]
        if int(v.nvmlReturn) != self.nv.NVML_SUCCESS:
            if int(v.nvmlReturn) in (self.nv.NVML_ERROR_NOT_SUPPORTED, self.nv.NVML_ERROR_NO_PERMISSION):
                dev.unsupported.add(metric)
                log.info("nvml_metric_unsupported", uuid=dev.uuid, metric=metric, error=f"field {field_id}")
            return None
        return _field_value(self.nv, v)

    def _memory_health(self, dev: _Device, s: GpuSample) -> None:
        """Row remapping (Ampere and newer) and page retirement (older): counters, pending flags, and a failed
        remap, which makes the GPU unhealthy until the agent restarts (it needs a reset or service)."""
        nv, h = self.nv, dev.handle
        rows = self._metric(dev, "row_remap", self._fn("nvmlDeviceGetRemappedRows"), h)
        if rows is not None:
            corr, unc, pending, failed = (int(x) for x in rows)
            s.remapped_rows = {"correctable": corr, "uncorrectable": unc}
            s.row_remap_pending, s.row_remap_failed = bool(pending), bool(failed)
            if failed:
                with self._lock:  # the event thread updates the same fields (Xid, double-bit ECC) under it
                    first = not dev.sticky_reason
                    if first:
                        dev.healthy = False
                        dev.reason = dev.sticky_reason = "row remapping failed"
                        dev.error_events += 1
                        dev.last_error_unix = self.clock()
                if first:
                    log.warning("nvml_row_remap_failed", uuid=dev.uuid)
        fn = self._fn("nvmlDeviceGetRetiredPages")
        single = self._metric(dev, "retired_pages", fn, h, nv.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS)
        double = self._metric(dev, "retired_pages", fn, h, nv.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR)
        if single is not None or double is not None:
            s.retired_pages = {"single_bit": len(single or ()), "double_bit": len(double or ())}
            pending = self._metric(dev, "retired_pages", self._fn("nvmlDeviceGetRetiredPagesPendingStatus"), h)
            s.retired_pages_pending = None if pending is None else bool(pending)

    def _mig(self, dev: _Device, s: GpuSample) -> None:
        """MIG mode and, when enabled, every MIG instance: its UUID (what the device plugin hands out), profile and
        memory (all a pod on it gets). An empty slot answers NotFound."""
        nv, h = self.nv, dev.handle
        mode = self._metric(dev, "mig", self._fn("nvmlDeviceGetMigMode"), h)
        if mode is None:
            return
        s.mig_enabled = int(mode[0]) == nv.NVML_DEVICE_MIG_ENABLE
        if not s.mig_enabled:
            return
        slots = self._metric(dev, "mig", self._fn("nvmlDeviceGetMaxMigDeviceCount"), h) or 0
        for i in range(min(int(slots), 16)):
            try:
                mh = nv.nvmlDeviceGetMigDeviceHandleByIndex(h, i)
            except nv.NVMLError as e:
                if self._is(e, _DEVICE_FATAL_NAMES + _LIBRARY_FATAL_NAMES):
                    raise
                continue  # NotFound: no instance in this slot
            try:
                uuid = nv.nvmlDeviceGetUUID(mh)
                mem = nv.nvmlDeviceGetMemoryInfo(mh)
                gi = int(nv.nvmlDeviceGetGpuInstanceId(mh))
                ci = int(nv.nvmlDeviceGetComputeInstanceId(mh))
                attrs = nv.nvmlDeviceGetAttributes(mh)
            except nv.NVMLError as e:
                if self._is(e, _DEVICE_FATAL_NAMES + _LIBRARY_FATAL_NAMES):
                    raise
                log.debug("nvml_mig_instance_unreadable", uuid=dev.uuid, slot=i, error=str(e))
                continue
            s.mig_instances.append(MigSample(
                uuid=str(uuid), profile=mig_profile(attrs), gpu_instance_id=gi, compute_instance_id=ci,
                memory_total_bytes=int(mem.total), memory_used_bytes=int(mem.used)))

    # -- Xid events -----------------------------------------------------------------------------
    def _start_events(self) -> None:
        if self.events == "off" or self._event_set is not None:
            return
        nv = self.nv
        try:
            es = nv.nvmlEventSetCreate()
        except nv.NVMLError as e:
            log.warning("nvml_events_unavailable", error=str(e))
            return
        wanted = nv.nvmlEventTypeXidCriticalError | nv.nvmlEventTypeDoubleBitEccError
        for dev in list(self._devices.values()):
            if "events" in dev.unsupported:
                continue
            try:
                supported = nv.nvmlDeviceGetSupportedEventTypes(dev.handle)
                nv.nvmlDeviceRegisterEvents(dev.handle, wanted & supported, es)
            except nv.NVMLError as e:
                if self._is(e, _UNSUPPORTED_NAMES):
                    dev.unsupported.add("events")
                    log.info("nvml_events_unsupported", uuid=dev.uuid, error=str(e))
                else:
                    dev.healthy = False
                    dev.reason = f"event registration failed: {e}"
        self._event_set = es
        if self.events == "thread":
            self._stop.clear()
            self._thread = threading.Thread(target=self._event_loop, name="nvml-xid", daemon=True)
            self._thread.start()

    def _stop_events(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.event_timeout_ms / 1000 + 1)
        self._thread = None
        if self._event_set is not None:
            with contextlib.suppress(self.nv.NVMLError):
                self.nv.nvmlEventSetFree(self._event_set)
            self._event_set = None

    def _event_loop(self) -> None:
        while not self._stop.is_set():
            if not self._wait_once(self.event_timeout_ms):
                return

    def _poll_events(self) -> None:
        for _ in range(1000):
            if self._event_set is None or not self._wait_once(0, drain=True):
                return

    def _wait_once(self, timeout_ms: int, drain: bool = False) -> bool:
        """Wait for one event. Returns False when the caller should stop waiting."""
        nv = self.nv
        try:
            data = nv.nvmlEventSetWait_v2(self._event_set, timeout_ms)
        except nv.NVMLError as e:
            if isinstance(e, nv.NVMLError_Timeout):
                return not drain  # no event
            log.warning("nvml_event_wait_failed", error=str(e))
            self._reinit_requested = True
            with self._lock:
                for d in self._devices.values():
                    d.healthy = False
                    d.reason = d.reason or f"event wait failed: {e}"
            return False
        except Exception as e:
            log.error("nvml_event_wait_error", error=repr(e))
            return False
        self._record_event(data)
        return True

    def _record_event(self, data: Any) -> None:
        nv = self.nv
        etype = int(getattr(data, "eventType", 0))
        try:
            uuid = nv.nvmlDeviceGetUUID(data.device)
        except nv.NVMLError:
            uuid = ""
        now = self.clock()
        with self._lock:
            targets = [self._devices[uuid]] if uuid in self._devices else list(self._devices.values())
            for dev in targets:
                if etype & nv.nvmlEventTypeXidCriticalError:
                    xid = int(getattr(data, "eventData", 0))
                    dev.pending_xids.append(XidEvent(dev.uuid, xid, now))
                    dev.error_events += 1
                    dev.last_error_unix = now
                    if xid not in APPLICATION_XIDS:
                        dev.healthy = False
                        dev.reason = dev.sticky_reason = f"Xid {xid}"
                    log.warning("nvml_xid", uuid=dev.uuid, xid=xid)
                elif etype & nv.nvmlEventTypeDoubleBitEccError:
                    dev.error_events += 1
                    dev.last_error_unix = now
                    dev.healthy = False
                    dev.reason = dev.sticky_reason = "double-bit ECC error"


def mig_profile(attrs: Any) -> str:
    """A MIG instance's profile as NVIDIA names them: `<GPU slices>g.<memory GiB, rounded up>gb`, prefixed with
    `<compute slices>c.` when the compute instance has fewer slices than its GPU instance ("1c.3g.40gb")."""
    g = int(attrs.gpuInstanceSliceCount)
    c = int(attrs.computeInstanceSliceCount)
    gb = -(-int(attrs.memorySizeMB) // 1024)
    name = f"{g}g.{gb}gb"
    return f"{c}c.{name}" if 0 < c < g else name


_FIELD_VALUE_ATTRS = ("dVal", "uiVal", "ulVal", "ullVal", "sllVal", "siVal", "usVal")  # by nvmlValueType


def _field_value(nv: Any, v: Any) -> float | None:
    kind = int(v.valueType)
    if not 0 <= kind < len(_FIELD_VALUE_ATTRS):
        return None
    return float(getattr(v.value, _FIELD_VALUE_ATTRS[kind]))
