"""Fake GPUs from a fleet file, served through the REAL readers.

`FakeNvml` and `FakeAmdSmi` are stand-ins for the `pynvml` / `amdsmi` modules built from one
`flexinfer.fleet.FleetNode`; `NvmlReader` / `AmdSmiReader` run unchanged on top of them, so the demo
exercises the same code paths (v2->v1 fallback, NotSupported bookkeeping, Xid events, lost GPUs,
re-init with backoff) as a real node. Faults apply by sample number (1-based; 0 = from the start):

  noise {mib}            used memory jitters by +/-mib, deterministic (seeded per node/gpu/sample)
  xid {xid, atSample}    one Xid event delivered at that sample (NVIDIA)
  ecc {uncorrectable, correctable, atSample}  RAS counters step up at that sample
  lost {atSample}        GpuIsLost (NVIDIA) / NOT_FOUND (AMD) from that sample on
  not-supported {metric} that metric group raises NotSupported forever
  throttle {reasons}     clock-event reasons active (NVIDIA names, e.g. sw_power_cap)
  node library-missing   the vendor library cannot be loaded: no GPUs, agent-status says why
  node driver-mismatch   NVML init fails with LibRmVersionMismatch
The FakeNvml raises the real pynvml.NVMLError_* classes. FakeAmdSmi raises the real
amdsmi.AmdSmiLibraryException when an amdsmi module is passed in, else a look-alike class
(importing amdsmi without ROCm prints to stdout and raises KeyError).
"""

from __future__ import annotations

import inspect
import os
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml

from flexinfer import logs
from flexinfer.errors import ParseError
from flexinfer.fleet import (
    DEFAULT_AMD_DRIVER,
    DEFAULT_CUDA_VERSION,
    DEFAULT_INTEL_DRIVER,
    DEFAULT_NVIDIA_DRIVER,
    DEFAULT_ROCM_VERSION,
    MAX_FLEET_FILE_BYTES,
    Fault,
    FleetGpu,
    FleetNode,
    gpu_uuid,
    load_fleet,
    mig_uuid,
)

from .amd import AmdSmiReader
from .base import Backoff, GpuReader, GpuSample, MultiReader, NullReader
from .intel import IntelSysfsReader
from .nvml import THROTTLE_REASONS, NvmlReader

log = logs.get("flexinfer.agent.fake")

_THROTTLE_BITS = {name: bit for bit, name in THROTTLE_REASONS}
SAMPLE_SECONDS = 10.0  # energy counters advance by power x this per sample


class MigHandle:
    """A MIG device handle of FakeNvml (real NVML hands out opaque handles too)."""

    __slots__ = ("parent", "slot")

    def __init__(self, parent: int, slot: int) -> None:
        self.parent, self.slot = parent, slot

    def __repr__(self) -> str:
        return f"MigHandle({self.parent}, {self.slot})"


class _FleetGpus:
    """Fault bookkeeping shared by both fakes."""

    def __init__(self, node: FleetNode, vendor: str) -> None:
        self.node = node
        self.sample_no = 0
        self.gpus: list[tuple[int, FleetGpu, str]] = [
            (i, g, gpu_uuid(node.name, i, g)) for i, g in enumerate(node.gpus) if g.vendor.lower() == vendor
        ]
        self._faults: list[dict[str, list[Fault]]] = []
        for _, g, _ in self.gpus:
            by_type: dict[str, list[Fault]] = {}
            for f in g.faults:
                by_type.setdefault(f.type, []).append(f)
            self._faults.append(by_type)
        self._unsupported = [{f.metric for f in d.get("not-supported", [])} for d in self._faults]

    def node_fault(self, kind: str) -> Fault | None:
        return next((f for f in self.node.faults if f.type == kind and self.sample_no >= f.at_sample), None)

    def faults(self, h: int, kind: str) -> list[Fault]:
        return self._faults[h].get(kind, [])

    def lost(self, h: int) -> bool:
        g = self.gpus[h][1]
        return not g.healthy or any(self.sample_no >= f.at_sample for f in self.faults(h, "lost"))

    def unsupported(self, h: int, metric: str) -> bool:
        return metric in self._unsupported[h]

    def used_mib(self, h: int) -> int:
        _, g, _ = self.gpus[h]
        used = g.used_mib
        for f in self.faults(h, "noise"):
            rng = random.Random(f"{self.node.name}/{self.gpus[h][0]}/{self.sample_no}")
            used += rng.randint(-f.mib, f.mib)
        return max(0, min(g.total_mib, used))

    def ecc(self, h: int, kind: str = "ecc") -> tuple[int, int]:
        corr = unc = 0
        for f in self.faults(h, kind):
            if self.sample_no >= f.at_sample:
                corr += f.correctable
                unc += f.uncorrectable
        return corr, unc

    def flags(self, h: int, kind: str) -> tuple[bool, bool]:
        """(pending, failed) of the active faults of a kind."""
        active = [f for f in self.faults(h, kind) if self.sample_no >= f.at_sample]
        return any(f.pending for f in active), any(f.failed for f in active)

    def energy_joules(self, h: int) -> float:
        return self.gpus[h][1].power_w * SAMPLE_SECONDS * self.sample_no


class FakeNvml(_FleetGpus):
    """A pynvml stand-in. Functions it does not define raise NVMLError_FunctionNotFound."""

    def __init__(self, node: FleetNode) -> None:
        super().__init__(node, "nvidia")
        self.delivered: set[tuple[int, int]] = set()  # (handle, fault number) xids already sent
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        real = getattr(pynvml, name)
        if inspect.isfunction(real):
            def missing(*_a: Any, **_k: Any) -> Any:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
            return missing
        return real  # constants, structs and the real NVMLError classes

    def _dev(self, h: int | MigHandle, metric: str = "") -> FleetGpu:
        self.calls[metric or "device"] = self.calls.get(metric or "device", 0) + 1
        parent = h.parent if isinstance(h, MigHandle) else h
        if self.lost(parent):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        if metric and self.unsupported(parent, metric):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return self.gpus[parent][1]

    def _cc(self, h: int) -> tuple[int, int]:
        digits = self.gpus[h][1].arch.removeprefix("sm_")
        return int(digits[:-1]), int(digits[-1])

    def _mig(self, h: MigHandle) -> Any:
        g = self._dev(h)
        if not 0 <= h.slot < len(g.mig):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return g.mig[h.slot]

    # library
    def nvmlInit(self) -> None:
        if self.node_fault("library-missing"):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
        if self.node_fault("driver-mismatch"):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH)

    def nvmlShutdown(self) -> None:
        pass

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.node.driver_version or DEFAULT_NVIDIA_DRIVER

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        major, _, minor = (self.node.cuda_version or DEFAULT_CUDA_VERSION).partition(".")
        return int(major) * 1000 + int(minor or 0) * 10

    # identity
    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        if not 0 <= i < len(self.gpus):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        self._dev(i)
        return i

    def nvmlDeviceGetUUID(self, h: int | MigHandle) -> str:
        if isinstance(h, MigHandle):
            return mig_uuid(self.node.name, self.gpus[h.parent][0], h.slot, self._mig(h))
        self._dev(h)
        return self.gpus[h][2]

    def nvmlDeviceGetName(self, h: int) -> str:
        return self._dev(h).product

    def nvmlDeviceGetPciInfo_v3(self, h: int) -> Any:
        self._dev(h)
        return SimpleNamespace(busId=f"00000000:{self.gpus[h][0] + 1:02X}:00.0")

    def nvmlDeviceGetCudaComputeCapability(self, h: int) -> tuple[int, int]:
        self._dev(h)
        return self._cc(h)

    # metrics
    def nvmlDeviceGetMemoryInfo(self, h: int | MigHandle, version: int | None = None) -> Any:
        mib = 1024 * 1024
        if isinstance(h, MigHandle):  # a MIG instance's own memory (v1 layout; v2 is answered alike)
            m = self._mig(h)
            total, used = m.total_mi_b * mib, m.used_mi_b * mib
            if version:
                return SimpleNamespace(version=version, total=total, reserved=0, used=used, free=total - used)
            return SimpleNamespace(total=total, used=used, free=total - used)
        g = self._dev(h, "memory_v2" if version else "")
        used = (sum(m.used_mi_b for m in g.mig) if g.mig else self.used_mib(h)) * mib
        total = g.total_mib * mib
        if version:
            return SimpleNamespace(version=version, total=total, reserved=0, used=used, free=total - used)
        return SimpleNamespace(total=total, used=used, free=total - used)

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        return int(self._dev(h, "power").power_w * 1000)

    def nvmlDeviceGetEnforcedPowerLimit(self, h: int) -> int:
        return int(self._dev(h, "power").power_cap_w * 1000)

    def nvmlDeviceGetTemperatureV(self, h: int, sensor: int) -> int:
        return int(self._dev(h, "temperature").temperature_c)

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        g = self._dev(h, "utilization")
        if g.mig:  # not supported on MIG-enabled GPUs
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return SimpleNamespace(gpu=int(g.utilization_pct), memory=int(g.memory_utilization_pct))

    def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> int:
        self._dev(h, "energy")
        if self._cc(h) < (7, 0):  # Volta and newer
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return int(self.energy_joules(h) * 1000)  # millijoules

    def nvmlDeviceGetFieldValues(self, h: int, field_ids: list[Any]) -> Any:
        """The real call's shape: an array of c_nvmlFieldValue_t, each with its own return code."""
        g = self._dev(h)
        values = (pynvml.c_nvmlFieldValue_t * len(field_ids))()
        for i, fid in enumerate(field_ids):
            fid = fid[0] if isinstance(fid, tuple) else fid
            values[i].fieldId = fid
            values[i].nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
            if (fid == pynvml.NVML_FI_DEV_MEMORY_TEMP and g.memory_temperature_c is not None
                    and not self.unsupported(h, "memory_temperature")):
                values[i].nvmlReturn = pynvml.NVML_SUCCESS
                values[i].valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
                values[i].value.uiVal = int(g.memory_temperature_c)
        return values

    def nvmlDeviceGetPcieThroughput(self, h: int, counter: int) -> int:
        p = self._dev(h, "pcie_throughput").pcie
        return p.tx_k_bps if counter == pynvml.NVML_PCIE_UTIL_TX_BYTES else p.rx_k_bps

    def nvmlDeviceGetEncoderUtilization(self, h: int) -> list[int]:
        return [int(self._dev(h, "encoder").encoder_pct), 167000]

    def nvmlDeviceGetDecoderUtilization(self, h: int) -> list[int]:
        return [int(self._dev(h, "decoder").decoder_pct), 167000]

    def nvmlDeviceGetRemappedRows(self, h: int) -> tuple[int, int, int, int]:
        self._dev(h, "row_remap")
        if self._cc(h) < (8, 0):  # row remapping is Ampere's; older GPUs retire pages
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        corr, unc = self.ecc(h, "row-remap")
        pending, failed = self.flags(h, "row-remap")
        return corr, unc, int(pending), int(failed)

    def nvmlDeviceGetRetiredPages(self, h: int, cause: int) -> list[int]:
        self._dev(h, "retired_pages")
        if self._cc(h) >= (8, 0):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        single, double = self.ecc(h, "retired-pages")
        n = double if cause == pynvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR else single
        return [0x1000 * (i + 1) for i in range(n)]  # page addresses

    def nvmlDeviceGetRetiredPagesPendingStatus(self, h: int) -> int:
        self._dev(h, "retired_pages")
        if self._cc(h) >= (8, 0):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return int(self.flags(h, "retired-pages")[0])

    # MIG
    def nvmlDeviceGetMigMode(self, h: int) -> list[int]:
        g = self._dev(h, "mig")
        if not g.mig:  # the fleet describes MIG only for GPUs running it
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return [pynvml.NVML_DEVICE_MIG_ENABLE, pynvml.NVML_DEVICE_MIG_ENABLE]

    def nvmlDeviceGetMaxMigDeviceCount(self, h: int) -> int:
        self._dev(h, "mig")
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h: int, index: int) -> MigHandle:
        mh = MigHandle(h, index)
        self._mig(mh)
        return mh

    def nvmlDeviceGetGpuInstanceId(self, h: MigHandle) -> int:
        self._mig(h)
        return h.slot + 1

    def nvmlDeviceGetComputeInstanceId(self, h: MigHandle) -> int:
        self._mig(h)
        return 0

    def nvmlDeviceGetAttributes(self, h: MigHandle) -> Any:
        m = self._mig(h)
        parts = m.profile.split(".")
        gi = next(int(p[:-1]) for p in parts if p.endswith("g"))
        ci = next((int(p[:-1]) for p in parts if p.endswith("c")), gi)
        return pynvml.c_nvmlDeviceAttributes(multiprocessorCount=14 * gi, gpuInstanceSliceCount=gi,
                                             computeInstanceSliceCount=ci, memorySizeMB=m.total_mi_b)

    def nvmlDeviceGetClockInfo(self, h: int, clock: int) -> int:
        g = self._dev(h, "clocks")
        return g.sm_clock_mhz if clock == pynvml.NVML_CLOCK_SM else g.mem_clock_mhz

    def nvmlDeviceGetCurrPcieLinkGeneration(self, h: int) -> int:
        return self._dev(h, "pcie").pcie.gen

    def nvmlDeviceGetCurrPcieLinkWidth(self, h: int) -> int:
        return self._dev(h, "pcie").pcie.width

    def nvmlDeviceGetMaxPcieLinkGeneration(self, h: int) -> int:
        return self._dev(h, "pcie").pcie.max_gen

    def nvmlDeviceGetMaxPcieLinkWidth(self, h: int) -> int:
        return self._dev(h, "pcie").pcie.max_width

    def nvmlDeviceGetPcieReplayCounter(self, h: int) -> int:
        self._dev(h, "pcie")
        return 0

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: int) -> int:
        self._dev(h, "throttle")
        mask = 0
        for f in self.faults(h, "throttle"):
            if self.sample_no >= f.at_sample:
                for r in f.reasons:
                    mask |= _THROTTLE_BITS.get(r, 0)
        return mask or 0x1  # idle

    def nvmlDeviceGetTotalEccErrors(self, h: int, error_type: int, counter_type: int) -> int:
        self._dev(h, "ecc")
        corr, unc = self.ecc(h)
        return unc if error_type == pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED else corr

    # events
    def nvmlEventSetCreate(self) -> object:
        return object()

    def nvmlEventSetFree(self, es: object) -> None:
        pass

    def nvmlDeviceGetSupportedEventTypes(self, h: int) -> int:
        self._dev(h, "events")
        return pynvml.nvmlEventTypeXidCriticalError | pynvml.nvmlEventTypeDoubleBitEccError

    def nvmlDeviceRegisterEvents(self, h: int, mask: int, es: object) -> None:
        self._dev(h, "events")

    def nvmlEventSetWait_v2(self, es: object, timeout_ms: int) -> Any:
        for h in range(len(self.gpus)):
            if self.unsupported(h, "events"):
                continue
            for n, f in enumerate(self.faults(h, "xid")):
                if self.sample_no >= f.at_sample and (h, n) not in self.delivered:
                    self.delivered.add((h, n))
                    return SimpleNamespace(device=h, eventType=pynvml.nvmlEventTypeXidCriticalError,
                                           eventData=f.xid, gpuInstanceId=0xFFFFFFFF,
                                           computeInstanceId=0xFFFFFFFF)
        raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT)


class _AmdSmiException(Exception):
    pass


class _AmdSmiLibraryException(_AmdSmiException):
    """Look-alike of amdsmi.AmdSmiLibraryException (err_code, get_error_code, get_error_info)."""

    def __init__(self, err_code: int) -> None:
        self.err_code = err_code
        self.err_info = {2: "AMDSMI_STATUS_NOT_SUPPORTED - Feature not supported",
                         31: "AMDSMI_STATUS_NOT_FOUND - Device Not found",
                         34: "AMDSMI_STATUS_DRIVER_NOT_LOADED - Driver not loaded"}.get(err_code, "AMDSMI_STATUS")
        super().__init__(f"Error code:\n\t{err_code} | {self.err_info}")

    def get_error_code(self) -> int:
        return self.err_code

    def get_error_info(self) -> str:
        return self.err_info


class FakeAmdSmi(_FleetGpus):
    """An amdsmi stand-in (dict-returning functions, MiB VRAM, microwatt caps)."""

    AmdSmiInitFlags = SimpleNamespace(INIT_AMD_GPUS=2)
    AmdSmiTemperatureType = SimpleNamespace(EDGE=0, HOTSPOT=1, JUNCTION=1, VRAM=2)
    AmdSmiTemperatureMetric = SimpleNamespace(CURRENT=0)
    AmdSmiClkType = SimpleNamespace(GFX=1, MEM=5)
    AmdSmiMemoryType = SimpleNamespace(VRAM=0, VIS_VRAM=1, GTT=2)
    ENERGY_RESOLUTION_UJ = 15.259  # the accumulator's unit on current parts (microjoules per count)

    def __init__(self, node: FleetNode, amdsmi_module: Any = None) -> None:
        super().__init__(node, "amd")
        self.AmdSmiException = getattr(amdsmi_module, "AmdSmiException", _AmdSmiException)
        self.AmdSmiLibraryException = getattr(amdsmi_module, "AmdSmiLibraryException", _AmdSmiLibraryException)
        self.calls: dict[str, int] = {}

    def _dev(self, h: int, metric: str = "") -> FleetGpu:
        self.calls[metric or "device"] = self.calls.get(metric or "device", 0) + 1
        if self.lost(h):
            raise self.AmdSmiLibraryException(31)
        if metric and self.unsupported(h, metric):
            raise self.AmdSmiLibraryException(2)
        return self.gpus[h][1]

    def amdsmi_init(self, flags: int = 2) -> None:
        if self.node_fault("library-missing") or self.node_fault("driver-mismatch"):
            raise self.AmdSmiLibraryException(34)

    def amdsmi_shut_down(self) -> None:
        pass

    def amdsmi_get_processor_handles(self) -> list[int]:
        return [h for h in range(len(self.gpus)) if not self.lost(h)]

    def amdsmi_get_lib_version(self) -> dict[str, int]:
        return {"major": 25, "minor": 5, "release": 1, "build": 0}  # the amd-smi library's own version

    def amdsmi_get_rocm_version(self) -> tuple[bool, str]:
        return True, self.node.rocm_version or DEFAULT_ROCM_VERSION

    def amdsmi_get_gpu_device_uuid(self, h: int) -> str:
        self._dev(h)
        return self.gpus[h][2]

    def amdsmi_get_gpu_device_bdf(self, h: int) -> str:
        self._dev(h)
        return f"0000:{self.gpus[h][0] + 3:02x}:00.0"

    def amdsmi_get_gpu_asic_info(self, h: int) -> dict[str, Any]:
        g = self._dev(h)
        return {"market_name": g.product or "N/A", "vendor_id": "0x1002", "target_graphics_version": g.arch}

    def amdsmi_get_gpu_board_info(self, h: int) -> dict[str, Any]:
        return {"product_name": self._dev(h).product or "N/A"}

    def amdsmi_get_gpu_driver_info(self, h: int) -> dict[str, str]:
        self._dev(h)
        return {"driver_name": "amdgpu", "driver_version": self.node.driver_version or DEFAULT_AMD_DRIVER}

    def amdsmi_get_gpu_vram_usage(self, h: int) -> dict[str, int]:
        g = self._dev(h)
        return {"vram_total": g.total_mib, "vram_used": self.used_mib(h)}

    def amdsmi_get_power_info(self, h: int) -> dict[str, Any]:
        g = self._dev(h, "power")
        return {"socket_power": int(g.power_w), "current_socket_power": "N/A", "average_socket_power": "N/A"}

    def amdsmi_get_power_cap_info(self, h: int) -> dict[str, int]:
        g = self._dev(h, "power")
        return {"power_cap": int(g.power_cap_w * 1e6), "default_power_cap": int(g.power_cap_w * 1e6)}

    def amdsmi_get_temp_metric(self, h: int, sensor: int, metric: int) -> int:
        if sensor == self.AmdSmiTemperatureType.VRAM:
            g = self._dev(h, "memory_temperature")
            if g.memory_temperature_c is None:
                raise self.AmdSmiLibraryException(2)
            return int(g.memory_temperature_c)
        return int(self._dev(h, "temperature").temperature_c) + (3 if sensor == 1 else 0)

    def amdsmi_get_energy_count(self, h: int) -> dict[str, Any]:
        self._dev(h, "energy")
        acc = int(self.energy_joules(h) * 1e6 / self.ENERGY_RESOLUTION_UJ)
        return {"energy_accumulator": acc, "counter_resolution": self.ENERGY_RESOLUTION_UJ,
                "timestamp": self.sample_no * 10_000_000_000}

    def amdsmi_get_gpu_pci_throughput(self, h: int) -> dict[str, int]:
        p = self._dev(h, "pcie_throughput").pcie
        return {"sent": p.tx_k_bps * 1024 // 256, "received": p.rx_k_bps * 1024 // 256, "max_pkt_sz": 256}

    def amdsmi_get_gpu_memory_total(self, h: int, mem_type: int) -> int:
        g = self._dev(h, "gtt" if mem_type == self.AmdSmiMemoryType.GTT else "")
        return (g.gtt_total_mi_b if mem_type == self.AmdSmiMemoryType.GTT else g.total_mib) * 1024 * 1024

    def amdsmi_get_gpu_memory_usage(self, h: int, mem_type: int) -> int:
        g = self._dev(h, "gtt" if mem_type == self.AmdSmiMemoryType.GTT else "")
        return (g.gtt_used_mi_b if mem_type == self.AmdSmiMemoryType.GTT else self.used_mib(h)) * 1024 * 1024

    def amdsmi_get_clock_info(self, h: int, clk_type: int) -> dict[str, Any]:
        g = self._dev(h, "clocks")
        return {"clk": g.sm_clock_mhz if clk_type == 1 else g.mem_clock_mhz, "min_clk": 0, "max_clk": "N/A"}

    def amdsmi_get_gpu_activity(self, h: int) -> dict[str, Any]:
        g = self._dev(h, "utilization")
        return {"gfx_activity": int(g.utilization_pct), "umc_activity": int(g.memory_utilization_pct),
                "mm_activity": int(max(g.encoder_pct, g.decoder_pct))}

    def amdsmi_get_pcie_info(self, h: int) -> dict[str, Any]:
        p = self._dev(h, "pcie").pcie
        speeds = {1: 2500, 2: 5000, 3: 8000, 4: 16000, 5: 32000, 6: 64000}
        return {"pcie_static": {"max_pcie_width": p.max_width, "pcie_interface_version": p.max_gen},
                "pcie_metric": {"pcie_width": p.width, "pcie_speed": speeds.get(p.gen, 0), "pcie_replay_count": 0}}

    def amdsmi_get_gpu_total_ecc_count(self, h: int) -> dict[str, int]:
        self._dev(h, "ecc")
        corr, unc = self.ecc(h)
        return {"correctable_count": corr, "uncorrectable_count": unc, "deferred_count": 0}


INTEL_DEFAULT_DEVICE = {"dg2": 0x56A0, "bmg": 0xE20B, "pvc": 0x0BD5, "mtl": 0x7D55, "arl": 0x7D51, "lnl": 0x64A0}


class FakeIntelSysfs(_FleetGpus):
    """A sysfs tree (and /proc/sys/kernel/osrelease) laid out as the xe and i915 drivers lay theirs out, for the
    fleet's Intel GPUs, in a temporary directory: /sys/class/drm/card<N> links to the PCI device's drm/card<N>,
    whose `device` links back to the PCI device directory (vendor, device, class, link speed and width, a
    `driver` link to /sys/bus/pci/drivers/<xe|i915>, hwmon). `update()` rewrites what changes before a sample:
    the energy counter (power x 10 s per sample), i915's available local memory (xe publishes none), and a lost
    GPU's card link, which disappears. The real IntelSysfsReader reads it unchanged."""

    def __init__(self, node: FleetNode) -> None:
        import tempfile

        super().__init__(node, "intel")
        self._tmp = tempfile.TemporaryDirectory(prefix="flexinfer-intel-sysfs-")
        self.root = Path(self._tmp.name)
        self.sys_root = self.root / "sys"
        self.proc_root = self.root / "proc"
        self._build()

    def _w(self, path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")

    def pci(self, h: int) -> str:
        return f"0000:{0x10 + self.gpus[h][0]:02x}:00.0"

    def card(self, h: int) -> str:
        return f"card{h + 1}"  # card0 is usually the boot display (iGPU or BMC)

    def _dev_dir(self, h: int) -> Path:
        return self.sys_root / "devices" / "pci0000:00" / "0000:00:01.0" / self.pci(h)

    def _build(self) -> None:
        self._w(self.proc_root / "sys" / "kernel" / "osrelease",
                self.node.driver_version or f"{DEFAULT_INTEL_DRIVER}-generic")
        for h, (_, g, _uuid) in enumerate(self.gpus):
            driver = g.driver or "xe"
            (self.sys_root / "bus" / "pci" / "drivers" / driver).mkdir(parents=True, exist_ok=True)
            dev = self._dev_dir(h)
            device_id = int(g.device_id, 16) if g.device_id else INTEL_DEFAULT_DEVICE.get(g.arch.lower(), 0x56A0)
            self._w(dev / "vendor", "0x8086")
            self._w(dev / "device", f"0x{device_id:04x}")
            self._w(dev / "class", "0x030000")
            p = g.pcie
            speeds = {1: "2.5", 2: "5.0", 3: "8.0", 4: "16.0", 5: "32.0", 6: "64.0"}
            self._w(dev / "current_link_speed", f"{speeds.get(p.gen, '16.0')} GT/s PCIe")
            self._w(dev / "max_link_speed", f"{speeds.get(p.max_gen, '16.0')} GT/s PCIe")
            self._w(dev / "current_link_width", str(p.width))
            self._w(dev / "max_link_width", str(p.max_width))
            os.symlink(os.path.relpath(self.sys_root / "bus" / "pci" / "drivers" / driver, dev), dev / "driver")
            card_dir = dev / "drm" / self.card(h)
            card_dir.mkdir(parents=True)
            os.symlink(os.path.relpath(dev, card_dir), card_dir / "device")
            mib = 1024 * 1024
            if driver == "xe":
                self._w(dev / "tile0" / "physical_vram_size_bytes", str(g.total_mib * mib))
                if not self.unsupported(h, "clocks"):
                    self._w(dev / "tile0" / "gt0" / "freq0" / "act_freq", str(g.sm_clock_mhz))
            else:
                self._w(card_dir / "lmem_total_bytes", str(g.total_mib * mib))
                if not self.unsupported(h, "clocks"):
                    self._w(card_dir / "gt_act_freq_mhz", str(g.sm_clock_mhz))
            mon = dev / "hwmon" / "hwmon0"
            self._w(mon / "name", driver)
            if not self.unsupported(h, "power"):
                self._w(mon / "power1_max", str(int(g.power_cap_w * 1e6)))
            if not self.unsupported(h, "temperature"):
                self._w(mon / "temp2_input", str(int(g.temperature_c * 1000)))
                self._w(mon / "temp2_label", "pkg")
            if g.memory_temperature_c is not None:
                self._w(mon / "temp3_input", str(int(g.memory_temperature_c * 1000)))
                self._w(mon / "temp3_label", "vram")
            self._link(h)
        self.update()

    def _link(self, h: int) -> None:
        link = self.sys_root / "class" / "drm" / self.card(h)
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            os.symlink(os.path.relpath(self._dev_dir(h) / "drm" / self.card(h), link.parent), link)

    def update(self) -> None:
        for h, (_, g, _uuid) in enumerate(self.gpus):
            link = self.sys_root / "class" / "drm" / self.card(h)
            if self.lost(h):
                link.unlink(missing_ok=True)
                continue
            self._link(h)
            dev = self._dev_dir(h)
            if not self.unsupported(h, "energy"):
                self._w(dev / "hwmon" / "hwmon0" / "energy1_input", str(int(self.energy_joules(h) * 1e6)))
            if (g.driver or "xe") == "i915":
                avail = (g.total_mib - self.used_mib(h)) * 1024 * 1024
                self._w(dev / "drm" / self.card(h) / "lmem_avail_bytes", str(avail))

    def clock(self) -> float:
        """Simulated seconds, consistent with the energy counter (power x 10 s per sample)."""
        return self.sample_no * SAMPLE_SECONDS


class FleetReader:
    """A real reader over a fake library; advances the fakes' sample counter before each sample."""

    def __init__(self, inner: GpuReader, fakes: list[_FleetGpus]) -> None:
        self.inner = inner
        self.fakes = fakes
        self.vendor = inner.vendor

    def open(self) -> None:
        self.inner.open()

    def sample(self) -> list[GpuSample]:
        for f in self.fakes:
            f.sample_no += 1
            if isinstance(f, FakeIntelSysfs):
                f.update()
        return self.inner.sample()

    def close(self) -> None:
        self.inner.close()

    @property
    def status(self) -> str:
        return self.inner.status


def fleet_reader(node: FleetNode, amdsmi_module: Any = None, backoff: Backoff | None = None,
                 clock: Any = None) -> GpuReader:
    """The reader a fleet node's agent uses: NVML and/or amdsmi readers on fakes (events polled)."""
    vendors = {g.vendor.lower() for g in node.gpus}
    readers: list[GpuReader] = []
    kw: dict[str, Any] = {"clock": clock} if clock is not None else {}
    if "nvidia" in vendors:
        fake = FakeNvml(node)
        readers.append(FleetReader(NvmlReader(fake, events="poll", backoff=backoff, **kw), [fake]))
    if "amd" in vendors:
        if any(f.type == "library-missing" for f in node.faults):
            readers.append(NullReader("cannot load amdsmi: KeyError: 'libamd_smi.so'"))
        else:
            famd = FakeAmdSmi(node, amdsmi_module)
            readers.append(FleetReader(AmdSmiReader(famd, sys_root="/nonexistent", backoff=backoff, **kw), [famd]))
    if "intel" in vendors:
        fintel = FakeIntelSysfs(node)
        reader = IntelSysfsReader(fintel.sys_root, fintel.proc_root, clock=fintel.clock)
        readers.append(FleetReader(reader, [fintel]))
    if not readers:
        if any(f.type == "library-missing" for f in node.faults):
            return NullReader("no GPU library found")
        return NullReader("ok")
    return readers[0] if len(readers) == 1 else MultiReader(readers)




class FollowFleetFile:
    """A fleet node's reader that follows later edits of its fleet file: before each sample, when the
    file changed (mtime, size), each GPU's `usedMiB` and `healthy` are taken from it; everything else stays
    as read at start. This is how a simulator outside the agent (the e2e tier's model loads on kwok nodes)
    changes what the fake GPUs report while a `flexinfer-agent --fake-gpus` process runs. A file that
    is too large, unreadable or invalid is ignored (the previous values stay) and logged once per change."""

    def __init__(self, inner: GpuReader, path: str, node: FleetNode) -> None:
        self.inner = inner
        self.vendor = inner.vendor
        self.path = path
        self.node = node
        self._seen = self._stamp()
        self.reloads = 0

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def refresh(self) -> None:
        stamp = self._stamp()
        if stamp is None or stamp == self._seen:
            return
        self._seen = stamp
        if stamp[1] > MAX_FLEET_FILE_BYTES:
            log.warning("fleet_file_ignored", path=self.path, size_bytes=stamp[1], limit_bytes=MAX_FLEET_FILE_BYTES)
            return
        try:
            fresh = load_fleet(self.path).node(self.node.name)
        except (ParseError, KeyError) as e:
            log.warning("fleet_file_ignored", path=self.path, error=str(e))
            return
        for gpu, new in zip(self.node.gpus, fresh.gpus, strict=False):
            gpu.used_mi_b = new.used_mi_b
            gpu.healthy = new.healthy
        self.reloads += 1

    def open(self) -> None:
        self.inner.open()

    def sample(self) -> list[GpuSample]:
        self.refresh()
        return self.inner.sample()

    def close(self) -> None:
        self.inner.close()

    @property
    def status(self) -> str:
        return self.inner.status
