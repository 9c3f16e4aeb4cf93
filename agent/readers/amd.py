"""AMD reader on the `amdsmi` Python package (docs/gpu-telemetry.md, docs/gpu-architectures.md).

`import amdsmi` raises KeyError (not ImportError) without libamd_smi.so, so `import_amdsmi()`
guards it with `except Exception` and returns the reason. The module object is injected into
`AmdSmiReader` (tests pass a fake whose functions raise the real `AmdSmiLibraryException`).

* VRAM from `amdsmi_get_gpu_vram_usage` (MiB) -> bytes; power from `amdsmi_get_power_info`
  (socket/current/average, "N/A" skipped), cap from `amdsmi_get_power_cap_info` (microwatts);
  temperature hotspot (junction) then edge; `gfx_activity`; PCIe; total ECC counts.
* Health: AMD has no Xid. Uncorrectable and deferred ECC deltas are error events; an
  uncorrectable delta makes the GPU unhealthy.
* gfx target from `asic_info["target_graphics_version"]`, cross-checked with KFD sysfs (KFD wins
  when they disagree: early ROCm builds formatted the value wrongly).
* NOT_SUPPORTED / NOT_YET_IMPLEMENTED / AttributeError (older library) mark a metric unsupported
  once. NOT_FOUND / IO / DRIVER_NOT_LOADED / NOT_INIT / FILE_ERROR => unhealthy + re-init with backoff.
* Unified memory: APUs (gfx1151 Strix Halo, gfx1150/1152/1103/1035/1036/90c) carve VRAM from
  system RAM; reported as unified_memory=True so the labels say so.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from flexinfer import logs
from flexinfer.arch import AMD

from .base import Backoff, GpuSample
from .kfd import APU_TARGETS, KfdNode, read_kfd_nodes

log = logs.get("flexinfer.agent.amd")

MIB = 1024 * 1024
STATUS_NOT_SUPPORTED, STATUS_NOT_YET_IMPLEMENTED = 2, 3
UNSUPPORTED_CODES = {STATUS_NOT_SUPPORTED, STATUS_NOT_YET_IMPLEMENTED, 10}  # 10 = NO_PERM
FATAL_CODES = {12, 14, 31, 32, 34}  # IO, FILE_ERROR, NOT_FOUND, NOT_INIT, DRIVER_NOT_LOADED
LIBRARY_FATAL_CODES = {32, 34}  # NOT_INIT, DRIVER_NOT_LOADED: every GPU is affected


def import_amdsmi() -> tuple[Any | None, str]:
    """(module, "") or (None, reason). Never raises (KeyError without ROCm, AttributeError on a mismatch)."""
    import contextlib
    import io

    chatter = io.StringIO()  # the wrapper prints its search failures to stdout; keep stdout clean
    try:
        with contextlib.redirect_stdout(chatter):
            import amdsmi
    except Exception as e:  # KeyError: 'libamd_smi.so', OSError, AttributeError (version mismatch)
        said = chatter.getvalue().strip().splitlines()
        hint = f" ({said[-1][:160]})" if said else ""
        return None, f"cannot load amdsmi: {type(e).__name__}: {e}{hint}"
    return amdsmi, ""


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, int | float):
        return None if v in (0xFFFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF) else float(v)
    try:
        return float(str(v).split()[0])
    except (ValueError, IndexError):
        return None  # "N/A"


@dataclass
class _Dev:
    index: int
    handle: Any
    uuid: str
    bdf: str = ""
    product: str = ""
    arch: str = ""
    unified: bool = False
    unsupported: set[str] = field(default_factory=set)
    healthy: bool = True
    reason: str = ""
    sticky_reason: str = ""
    error_events: int = 0
    last_error_unix: float = 0.0
    last_ecc: tuple[int, int] | None = None  # (uncorrectable, deferred) baseline
    last: GpuSample | None = None
    pcie_rate: tuple[float | None, float | None] | None = None  # (tx, rx) bytes/s, last read
    pcie_rate_at: float = 0.0


class AmdSmiReader:
    vendor = AMD

    def __init__(self, amdsmi: Any, *, sys_root: str | Path = "/sys", backoff: Backoff | None = None,
                 clock: Callable[[], float] = time.time, events: bool = True,
                 pcie_throughput_interval_seconds: float = 60.0) -> None:
        self.smi = amdsmi
        self.pcie_throughput_interval_seconds = pcie_throughput_interval_seconds
        self.sys_root = sys_root
        self.backoff = backoff or Backoff()
        self.clock = clock
        self._devs: dict[str, _Dev] = {}
        self._initialised = False
        self._status = "not opened"
        self.driver_version = ""
        self.rocm_version = ""
        self.init_attempts = 0
        self.events = events
        self._event_reader: Any = None  # one AmdSmiEventReader; amdsmi_get_gpu_event_notification is global

    @property
    def status(self) -> str:
        return self._status

    def _code(self, e: BaseException) -> int:
        get = getattr(e, "get_error_code", None)
        try:
            return int(get()) if callable(get) else int(getattr(e, "err_code", -1))
        except Exception:
            return -1

    def _lib_exc(self) -> type[BaseException]:
        return getattr(self.smi, "AmdSmiLibraryException", None) or getattr(self.smi, "AmdSmiException", Exception)

    def _exc(self) -> tuple[type[BaseException], ...]:
        base = getattr(self.smi, "AmdSmiException", None)
        return (base,) if isinstance(base, type) else (Exception,)

    # -- lifecycle ------------------------------------------------------------------------------
    def open(self) -> None:
        self._try_init()

    def _try_init(self) -> bool:
        self.init_attempts += 1
        smi = self.smi
        try:
            flags = getattr(getattr(smi, "AmdSmiInitFlags", None), "INIT_AMD_GPUS", None)
            smi.amdsmi_init(flags) if flags is not None else smi.amdsmi_init()
            handles = list(smi.amdsmi_get_processor_handles())
        except Exception as e:
            delay = self.backoff.failed()
            self._status = f"amdsmi unavailable: {self._describe(e)} (retry in {delay:.0f}s)"
            log.warning("amdsmi_init_failed", error=self._describe(e), retry_seconds=delay)
            return False
        kfd = read_kfd_nodes(self.sys_root)
        self.rocm_version = self._rocm_version()
        found: dict[str, _Dev] = {}
        for i, h in enumerate(handles):
            try:
                dev = self._discover(i, h, kfd)
            except Exception as e:
                log.warning("amdsmi_device_unavailable", index=i, error=self._describe(e))
                continue
            old = self._devs.get(dev.uuid)
            if old is not None:
                dev.unsupported, dev.error_events = old.unsupported, old.error_events
                dev.last_error_unix, dev.last_ecc = old.last_error_unix, old.last_ecc
                dev.sticky_reason = old.sticky_reason
                if dev.sticky_reason:
                    dev.healthy, dev.reason = False, dev.sticky_reason
            found[dev.uuid] = dev
        for uuid, old in self._devs.items():  # vanished since the last init: keep reporting it, unhealthy
            if uuid not in found:
                old.healthy, old.reason, old.handle = False, old.reason or "GPU is lost", None
                found[uuid] = old
        self._devs = found
        self._initialised = True
        self._start_events()
        self._status = "ok"
        log.info("amdsmi_ready", gpus=len(found), rocm=self.rocm_version)
        return True

    def _rocm_version(self) -> str:
        """The ROCm release (librocm-core through amdsmi_get_rocm_version, ROCm 6.2+); the amd-smi library's own
        version is a different number line, used only when nothing else says."""
        smi = self.smi
        got = self._opt(smi.amdsmi_get_rocm_version) if hasattr(smi, "amdsmi_get_rocm_version") else None
        if isinstance(got, tuple) and len(got) == 2 and got[0] and isinstance(got[1], str):
            return got[1].strip()[:32]
        lib = self._opt(smi.amdsmi_get_lib_version) if hasattr(smi, "amdsmi_get_lib_version") else None
        if isinstance(lib, dict):
            return ".".join(str(lib.get(k, "")) for k in ("major", "minor", "release") if k in lib)
        return ""

    def _describe(self, e: BaseException) -> str:
        info = getattr(e, "get_error_info", None)
        try:
            return str(info()) if callable(info) else (str(e).strip().replace("\n", " ") or type(e).__name__)
        except Exception:
            return type(e).__name__

    def _opt(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception:
            return None

    def _discover(self, i: int, h: Any, kfd: list[KfdNode]) -> _Dev:
        smi = self.smi
        uuid = str(smi.amdsmi_get_gpu_device_uuid(h))
        dev = _Dev(index=i, handle=h, uuid=uuid)
        dev.bdf = str(self._opt(smi.amdsmi_get_gpu_device_bdf, h) or "")
        asic = self._opt(smi.amdsmi_get_gpu_asic_info, h) or {}
        board = self._opt(smi.amdsmi_get_gpu_board_info, h) or {}
        product = board.get("product_name") or asic.get("market_name") or ""
        dev.product = "" if product == "N/A" else str(product)
        lib_gfx = str(asic.get("target_graphics_version", "") or "")
        lib_gfx = lib_gfx if lib_gfx.startswith("gfx") and lib_gfx != "gfx" else ""
        k = self._match_kfd(dev, kfd, h)
        kfd_gfx = k.gfx if k is not None else ""
        if lib_gfx and kfd_gfx and lib_gfx != kfd_gfx:
            log.warning("amd_gfx_mismatch", uuid=uuid, amdsmi=lib_gfx, kfd=kfd_gfx, using=kfd_gfx)
        dev.arch = kfd_gfx or lib_gfx
        drv = self._opt(smi.amdsmi_get_gpu_driver_info, h) if hasattr(smi, "amdsmi_get_gpu_driver_info") else None
        if isinstance(drv, dict) and not self.driver_version:
            self.driver_version = str(drv.get("driver_version", ""))
        dev.unified = dev.arch in APU_TARGETS or (k is not None and k.cpu_cores_count > 0)
        if not dev.arch:
            dev.healthy, dev.reason = False, "gfx target unknown (amdsmi and KFD)"
        return dev

    def _match_kfd(self, dev: _Dev, kfd: list[KfdNode], h: Any) -> KfdNode | None:
        if not kfd:
            return None
        info = self._opt(self.smi.amdsmi_get_gpu_kfd_info, h) if hasattr(self.smi, "amdsmi_get_gpu_kfd_info") else None
        if isinstance(info, dict):
            for n in kfd:
                if n.node_id == info.get("node_id"):
                    return n
        for n in kfd:
            if dev.bdf and n.pci_bus_id.lower() == dev.bdf.lower():
                return n
        return kfd[dev.index] if dev.index < len(kfd) else None

    # -- reset / VM-fault events (AMD's nearest thing to Xid) -------------------------------------
    def _start_events(self) -> None:
        cls = getattr(self.smi, "AmdSmiEventReader", None)
        kinds = getattr(self.smi, "AmdSmiEvtNotificationType", None)
        if not self.events or cls is None or kinds is None or self._event_reader is not None:
            return
        wanted = [getattr(kinds, n) for n in ("GPU_PRE_RESET", "GPU_POST_RESET", "VMFAULT") if hasattr(kinds, n)]
        for dev in self._devs.values():
            if dev.handle is None or "events" in dev.unsupported:
                continue
            try:
                reader = cls(dev.handle, wanted)
            except Exception as e:
                dev.unsupported.add("events")
                log.info("amdsmi_events_unsupported", uuid=dev.uuid, error=self._describe(e))
                continue
            if self._event_reader is None:
                self._event_reader = reader

    def _poll_events(self) -> None:
        if self._event_reader is None:
            return
        try:
            events = self._event_reader.read(0)
        except Exception as e:  # TIMEOUT / NO_DATA: nothing queued
            if self._code(e) not in (8, 40):
                log.debug("amdsmi_event_read_failed", error=self._describe(e))
            return
        by_handle = {_handle_key(d.handle): d for d in self._devs.values() if d.handle is not None}
        now = self.clock()
        for ev in events or []:
            dev = by_handle.get(_handle_key(ev.get("processor_handle")))
            kind = str(ev.get("event", ""))
            if dev is None or kind not in ("GPU_PRE_RESET", "VMFAULT"):
                continue  # POST_RESET closes a reset already counted
            dev.error_events += 1
            dev.last_error_unix = now
            log.warning("amd_gpu_event", uuid=dev.uuid, kind=kind, message=str(ev.get("message", ""))[:200])

    def _stop_events(self) -> None:
        if self._event_reader is not None:
            with contextlib.suppress(Exception):
                self._event_reader.stop()
            self._event_reader = None

    def _shutdown(self) -> None:
        self._stop_events()
        if self._initialised:
            with contextlib.suppress(Exception):
                self.smi.amdsmi_shut_down()
        self._initialised = False

    def close(self) -> None:
        self._shutdown()
        self._status = "closed"

    # -- sampling -------------------------------------------------------------------------------
    def _metric(self, dev: _Dev, metric: str, name: str, *args: Any) -> Any:
        if metric in dev.unsupported:
            return None
        fn = getattr(self.smi, name, None)
        if fn is None:
            dev.unsupported.add(metric)
            log.info("amdsmi_metric_unsupported", uuid=dev.uuid, metric=metric, error=f"{name} missing")
            return None
        try:
            return fn(dev.handle, *args)
        except self._exc() as e:
            code = self._code(e)
            if code in FATAL_CODES:
                raise
            if code in UNSUPPORTED_CODES or not isinstance(e, self._lib_exc()):
                dev.unsupported.add(metric)
                log.info("amdsmi_metric_unsupported", uuid=dev.uuid, metric=metric, error=self._describe(e))
            return None
        except AttributeError as e:  # symbol missing in an older libamd_smi
            dev.unsupported.add(metric)
            log.info("amdsmi_metric_unsupported", uuid=dev.uuid, metric=metric, error=str(e))
            return None

    def sample(self) -> list[GpuSample]:
        if not self._initialised and self.backoff.ready():
            self._try_init()
        if not self._initialised:
            return [self._stale(d) for d in self._devs.values()]
        self._poll_events()
        out = []
        for dev in sorted(self._devs.values(), key=lambda d: d.index):
            if dev.handle is None:
                out.append(self._stale(dev))
                continue
            try:
                out.append(self._sample_device(dev))
            except Exception as e:
                dev.healthy, dev.reason = False, f"amdsmi: {self._describe(e)}"
                if self._code(e) in LIBRARY_FATAL_CODES or not isinstance(e, self._exc()):
                    for d in self._devs.values():  # the library, not one GPU, is broken
                        d.healthy, d.reason = False, d.reason or f"amdsmi: {self._describe(e)}"
                self._shutdown()
                delay = self.backoff.failed()
                self._status = f"amdsmi failed (gpu {dev.index}: {self._describe(e)}); re-initialising in {delay:.0f}s"
                log.warning("amdsmi_reinit_scheduled", uuid=dev.uuid, error=self._describe(e), retry_seconds=delay)
                return [self._stale(d) for d in self._devs.values()]
        self.backoff.reset()
        return out

    def _stale(self, dev: _Dev) -> GpuSample:
        if dev.last is not None:
            return replace(dev.last, healthy=dev.healthy, reason=dev.reason,
                           error_events=dev.error_events, last_error_unix=dev.last_error_unix)
        return GpuSample(index=dev.index, uuid=dev.uuid, vendor=AMD, arch=dev.arch, product=dev.product,
                         healthy=False, reason=dev.reason or "GPU unavailable", unified_memory=dev.unified)

    def _sample_device(self, dev: _Dev) -> GpuSample:
        smi = self.smi
        vram = smi.amdsmi_get_gpu_vram_usage(dev.handle)  # fatal if this fails: no memory, no fit
        total = int(_num(vram.get("vram_total")) or 0) * MIB
        used = int(_num(vram.get("vram_used")) or 0) * MIB
        s = GpuSample(
            index=dev.index, uuid=dev.uuid, vendor=AMD, arch=dev.arch, product=dev.product, pci_bus_id=dev.bdf,
            memory_total_bytes=total, memory_used_bytes=used,
            unified_memory=dev.unified, driver_version=self.driver_version, rocm_version=self.rocm_version,
        )
        p = self._metric(dev, "power", "amdsmi_get_power_info")
        if isinstance(p, dict):
            for k in ("socket_power", "current_socket_power", "average_socket_power"):
                if (w := _num(p.get(k))) is not None:
                    s.power_usage_watts = w
                    break
        cap = self._metric(dev, "power_limit", "amdsmi_get_power_cap_info")
        if isinstance(cap, dict) and (uw := _num(cap.get("power_cap"))) is not None:
            s.power_limit_watts = uw / 1e6
        temp_type = getattr(smi, "AmdSmiTemperatureType", None)
        temp_metric = getattr(getattr(smi, "AmdSmiTemperatureMetric", None), "CURRENT", 0)
        if temp_type is not None:
            for sensor in ("HOTSPOT", "EDGE"):
                if (sid := getattr(temp_type, sensor, None)) is None:
                    continue
                t = self._metric(dev, f"temperature_{sensor.lower()}", "amdsmi_get_temp_metric", sid, temp_metric)
                if (c := _num(t)) is not None:
                    s.temperature_celsius = c
                    break
        act = self._metric(dev, "utilization", "amdsmi_get_gpu_activity")
        if isinstance(act, dict):
            if (a := _num(act.get("gfx_activity"))) is not None:
                s.utilization_ratio = a / 100.0
            engines = {name: v / 100.0 for name, key in (("memory_copy", "umc_activity"), ("video", "mm_activity"))
                       if (v := _num(act.get(key))) is not None}
            s.engine_utilization = engines or None
        self._telemetry(dev, s)
        clk_type = getattr(smi, "AmdSmiClkType", None)
        if clk_type is not None:  # GFX clock is the SM-clock equivalent; MHz
            for attr, kind in (("sm_clock_hertz", "GFX"), ("memory_clock_hertz", "MEM")):
                if (ct := getattr(clk_type, kind, None)) is None:
                    continue
                info = self._metric(dev, "clocks", "amdsmi_get_clock_info", ct)
                if isinstance(info, dict) and (mhz := _num(info.get("clk"))) is not None:
                    setattr(s, attr, mhz * 1e6)
        pcie = self._metric(dev, "pcie", "amdsmi_get_pcie_info")
        if isinstance(pcie, dict):
            st, mt = pcie.get("pcie_static", {}) or {}, pcie.get("pcie_metric", {}) or {}
            s.pcie_gen_max = _int(st.get("pcie_interface_version"))
            s.pcie_width_max = _int(st.get("max_pcie_width"))
            s.pcie_width_current = _int(mt.get("pcie_width"))
            s.pcie_gen_current = _gen_from_speed(mt.get("pcie_speed"))
            s.pcie_replay_total = _int(mt.get("pcie_replay_count"))
        ecc = self._metric(dev, "ecc", "amdsmi_get_gpu_total_ecc_count")
        if isinstance(ecc, dict):
            s.ecc_correctable_total = _int(ecc.get("correctable_count"))
            s.ecc_uncorrectable_total = _int(ecc.get("uncorrectable_count"))
            s.ecc_deferred_total = _int(ecc.get("deferred_count"))
            self._ecc_health(dev, s.ecc_uncorrectable_total or 0, s.ecc_deferred_total or 0)
        s.error_events, s.last_error_unix = dev.error_events, dev.last_error_unix
        s.healthy, s.reason = dev.healthy, dev.reason
        s.unsupported = frozenset(dev.unsupported)
        dev.last = s
        return s

    def _telemetry(self, dev: _Dev, s: GpuSample) -> None:
        """Energy, memory temperature, PCIe traffic and GTT, as AMD's device-metrics-exporter reports them."""
        smi = self.smi
        energy = self._metric(dev, "energy", "amdsmi_get_energy_count")
        if isinstance(energy, dict):
            acc, res = _num(energy.get("energy_accumulator")), _num(energy.get("counter_resolution"))
            if acc is not None and res is not None:
                s.energy_joules_total = acc * res / 1e6  # counts x microjoules per count
        temp_type = getattr(smi, "AmdSmiTemperatureType", None)
        temp_metric = getattr(getattr(smi, "AmdSmiTemperatureMetric", None), "CURRENT", 0)
        for sensor, metric in (("VRAM", "memory_temperature"), ("HBM_0", "memory_temperature_hbm")):
            sid = getattr(temp_type, sensor, None)
            if sid is None:
                continue
            if (c := _num(self._metric(dev, metric, "amdsmi_get_temp_metric", sid, temp_metric))) is not None:
                s.memory_temperature_celsius = c
                break
        self._pcie_throughput(dev, s)
        mem_type = getattr(getattr(smi, "AmdSmiMemoryType", None), "GTT", None)
        if mem_type is not None:
            total = self._metric(dev, "gtt", "amdsmi_get_gpu_memory_total", mem_type)
            used = self._metric(dev, "gtt", "amdsmi_get_gpu_memory_usage", mem_type)
            s.gtt_total_bytes, s.gtt_used_bytes = _int(total), _int(used)

    def _pcie_throughput(self, dev: _Dev, s: GpuSample) -> None:
        """PCIe traffic (messages per second x the largest message). The driver measures it over a second per
        read, so it is read at most every `pcie_throughput_interval_seconds` and the value reused in between."""
        now = self.clock()
        if dev.pcie_rate is None or now - dev.pcie_rate_at >= self.pcie_throughput_interval_seconds:
            got = self._metric(dev, "pcie_throughput", "amdsmi_get_gpu_pci_throughput")
            if isinstance(got, dict) and (size := _num(got.get("max_pkt_sz"))) is not None:
                sent, received = _num(got.get("sent")), _num(got.get("received"))
                dev.pcie_rate = (None if sent is None else sent * size, None if received is None else received * size)
                dev.pcie_rate_at = now
        if dev.pcie_rate is not None:
            s.pcie_tx_bytes_per_second, s.pcie_rx_bytes_per_second = dev.pcie_rate

    def _ecc_health(self, dev: _Dev, unc: int, deferred: int) -> None:
        if dev.last_ecc is None:  # baseline at start: history before the agent is not an event
            dev.last_ecc = (unc, deferred)
            return
        d_unc, d_def = max(0, unc - dev.last_ecc[0]), max(0, deferred - dev.last_ecc[1])
        dev.last_ecc = (unc, deferred)
        if d_unc or d_def:
            dev.error_events += d_unc + d_def
            dev.last_error_unix = self.clock()
            log.warning("amd_ras_errors", uuid=dev.uuid, uncorrectable=d_unc, deferred=d_def)
        if d_unc:
            dev.healthy = False
            dev.reason = dev.sticky_reason = f"uncorrectable ECC errors (+{d_unc})"


def _handle_key(h: Any) -> Any:
    """amdsmi handles are ctypes pointers: compare their address, fakes compare as-is."""
    return getattr(h, "value", h)


def _int(v: Any) -> int | None:
    n = _num(v)
    return None if n is None else int(n)


_SPEED_TO_GEN = {2500: 1, 5000: 2, 8000: 3, 16000: 4, 32000: 5, 64000: 6}


def _gen_from_speed(v: Any) -> int | None:
    """amdsmi reports the current link speed in MT/s (some builds: GT/s x10)."""
    n = _int(v)
    if n is None:
        return None
    if n in _SPEED_TO_GEN:
        return _SPEED_TO_GEN[n]
    if n * 100 in _SPEED_TO_GEN:
        return _SPEED_TO_GEN[n * 100]
    return None
