"""NvmlReader against FakeNvml, whose functions raise the REAL pynvml.NVMLError_* classes."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest
from flexinfer.agent.agent import Agent
from flexinfer.agent.readers.base import Backoff
from flexinfer.agent.readers.fake import FakeNvml, FleetReader
from flexinfer.agent.readers.nvml import NvmlReader

from .agent_helpers import ManualClock, node_from, nvidia_gpu


def reader_for(fake: FakeNvml, clock: ManualClock | None = None, events: str = "poll") -> FleetReader:
    backoff = Backoff(1.0, 60.0, clock=clock) if clock else None
    return FleetReader(NvmlReader(fake, events=events, backoff=backoff), [fake])  # type: ignore[arg-type]


def test_error_classes_are_the_real_ones() -> None:
    fake = FakeNvml(node_from([nvidia_gpu(faults=[{"type": "lost"}])]))
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        fake.nvmlDeviceGetName(0)
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        fake.nvmlDeviceGetBAR1MemoryInfo(0)  # not defined by the fake: behaves like an old driver
    assert fake.NVML_TEMPERATURE_GPU == pynvml.NVML_TEMPERATURE_GPU


def test_full_sample_has_every_field() -> None:
    fake = FakeNvml(node_from([nvidia_gpu(powerW=60, powerCapW=150, temperatureC=51, utilizationPct=25,
                                          pcie={"gen": 3, "width": 8, "maxGen": 4, "maxWidth": 16},
                                          faults=[{"type": "throttle", "reasons": ["sw_power_cap"]}])]))
    r = reader_for(fake)
    r.open()
    (s,) = r.sample()
    assert r.status == "ok"
    assert s.uuid.startswith("GPU-") and s.arch == "sm_86" and s.compute_capability == "8.6"
    assert s.product == "NVIDIA A10" and s.pci_bus_id
    assert s.memory_total_bytes == 23028 * 2**20 and s.memory_used_bytes == 1000 * 2**20
    assert s.memory_reserved_bytes == 0  # v2 path
    assert (s.power_usage_watts, s.power_limit_watts, s.temperature_celsius) == (60.0, 150.0, 51.0)
    assert s.utilization_ratio == pytest.approx(0.25)
    assert s.sm_clock_hertz == 1500e6 and s.memory_clock_hertz == 7000e6
    assert (s.pcie_gen_current, s.pcie_width_current, s.pcie_gen_max, s.pcie_width_max) == (3, 8, 4, 16)
    assert s.pcie_replay_total == 0
    assert s.throttle_reasons is not None and s.throttle_reasons["sw_power_cap"] is True
    assert s.throttle_reasons["hw_slowdown"] is False
    assert (s.ecc_correctable_total, s.ecc_uncorrectable_total) == (0, 0)
    assert s.driver_version and s.cuda_version == "13.0"
    assert s.healthy
    # what NVML on an A10 answers NotSupported: no memory sensor, no MIG, rows are remapped rather than retired
    assert s.unsupported == {"memory_temperature", "mig", "retired_pages"}


def test_not_supported_power_is_marked_once_and_never_polled_again() -> None:
    fake = FakeNvml(node_from([nvidia_gpu(faults=[{"type": "not-supported", "metric": "power"}])]))
    r = reader_for(fake)
    r.open()
    for _ in range(6):
        (s,) = r.sample()
    assert s.power_usage_watts is None and s.power_limit_watts is None
    assert {"power", "power_limit"} <= s.unsupported
    assert fake.calls["power"] == 2  # usage once + enforced limit once, over six samples
    assert s.temperature_celsius is not None and s.healthy


@pytest.mark.parametrize("error", [pynvml.NVML_ERROR_FUNCTION_NOT_FOUND, pynvml.NVML_ERROR_NOT_SUPPORTED,
                                   pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH])
def test_memory_v2_falls_back_to_v1(error: int) -> None:
    class OldDriver(FakeNvml):
        v2_calls = 0

        def nvmlDeviceGetMemoryInfo(self, h: int, version: int | None = None) -> Any:
            if version is not None:
                OldDriver.v2_calls += 1
                raise pynvml.NVMLError(error)
            return SimpleNamespace(total=8 * 2**30, used=2**30, free=7 * 2**30)

    fake = OldDriver(node_from([nvidia_gpu()]))
    r = reader_for(fake)
    r.open()
    for _ in range(3):
        (s,) = r.sample()
    assert OldDriver.v2_calls == 1
    assert s.memory_reserved_bytes is None and s.memory_used_bytes == 2**30
    assert "memory_v2" in s.unsupported


def test_v2_reserved_memory_is_not_counted_as_free() -> None:
    class Reserved(FakeNvml):
        def nvmlDeviceGetMemoryInfo(self, h: int, version: int | None = None) -> Any:
            return SimpleNamespace(total=8192 * 2**20, reserved=512 * 2**20, used=1024 * 2**20,
                                   free=6656 * 2**20)

    agent = Agent("n1", reader_for(Reserved(node_from([nvidia_gpu()]))))
    st = agent.step(now=1.0).state
    assert st.gpus[0].free_mib == 8192 - 512 - 1024


def test_temperature_falls_back_to_legacy_call() -> None:
    class Legacy(FakeNvml):
        def nvmlDeviceGetTemperatureV(self, h: int, sensor: int) -> int:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)

        def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
            return 66

    r = reader_for(Legacy(node_from([nvidia_gpu()])))
    r.open()
    assert r.sample()[0].temperature_celsius == 66.0
    assert r.sample()[0].temperature_celsius == 66.0


def test_gpu_is_lost_marks_unhealthy_and_reinitialises_with_backoff(clock: ManualClock) -> None:
    fake = FakeNvml(node_from([nvidia_gpu(), nvidia_gpu(faults=[{"type": "lost", "atSample": 3}])]))
    r = reader_for(fake, clock)
    r.open()
    inner: NvmlReader = r.inner  # type: ignore[assignment]
    assert [s.healthy for s in r.sample()] == [True, True]
    assert [s.healthy for s in r.sample()] == [True, True]
    third = r.sample()  # GpuIsLost: never raised, GPUs kept with reasons, library re-init scheduled
    assert len(third) == 2 and not third[1].healthy and third[1].reason == "GPU is lost"
    assert third[0].healthy  # a device error does not taint the other GPU
    assert "re-initialising" in r.status
    attempts = inner.init_attempts
    r.sample()  # backoff (1 s) not elapsed: no re-init attempt
    assert inner.init_attempts == attempts
    clock.advance(1.5)
    fourth = r.sample()
    assert inner.init_attempts == attempts + 1 and r.status == "ok"
    assert [s.healthy for s in fourth] == [True, False]
    assert fourth[1].reason == "GPU is lost" and fourth[1].memory_total_bytes == 23028 * 2**20
    for _ in range(3):
        assert [s.healthy for s in r.sample()] == [True, False]
    assert inner.init_attempts == attempts + 1  # the lost GPU does not cause a re-init loop


@pytest.mark.parametrize("fault,text", [("library-missing", "Library Not Found"),
                                        ("driver-mismatch", "RM has detected an NVML/RM version mismatch")])
def test_library_problems_leave_no_gpus_and_a_reason(fault: str, text: str) -> None:
    fake = FakeNvml(node_from([nvidia_gpu()], faults=[{"type": fault}]))
    agent = Agent("n1", reader_for(fake))
    st = agent.step(now=5.0).state
    assert st.gpus == ()
    assert text in st.agent_status and "NVML" in st.agent_status


def test_init_failure_backoff_grows_then_recovers(clock: ManualClock) -> None:
    class Flaky(FakeNvml):
        fails = 3

        def nvmlInit(self) -> None:
            if Flaky.fails > 0:
                Flaky.fails -= 1
                raise pynvml.NVMLError(pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH)

    r = reader_for(Flaky(node_from([nvidia_gpu()])), clock)
    inner: NvmlReader = r.inner  # type: ignore[assignment]
    r.open()
    delays = [inner.backoff.delay]
    for _ in range(2):
        clock.advance(inner.backoff.delay + 0.01)
        assert r.sample() == []
        delays.append(inner.backoff.delay)
    assert delays == [1.0, 2.0, 4.0]
    clock.advance(4.01)
    (s,) = r.sample()
    assert s.healthy and r.status == "ok"


def test_unknown_error_while_sampling_makes_gpus_unhealthy_without_raising(clock: ManualClock) -> None:
    class Broken(FakeNvml):
        broken = False

        def nvmlDeviceGetPowerUsage(self, h: int) -> int:
            if Broken.broken:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)
            return 1000

    fake = Broken(node_from([nvidia_gpu(), nvidia_gpu()]))
    r = reader_for(fake, clock)
    r.open()
    assert all(s.healthy for s in r.sample())
    Broken.broken = True
    out = r.sample()
    assert len(out) == 2 and not any(s.healthy for s in out)
    assert "Unknown Error" in r.status


@pytest.mark.parametrize("xid,healthy", [(79, False), (13, True)])
def test_xid_event_counts_and_health(xid: int, healthy: bool) -> None:
    fake = FakeNvml(node_from([nvidia_gpu(faults=[{"type": "xid", "xid": xid, "atSample": 2}])]))
    r = reader_for(fake)
    r.open()
    (s1,) = r.sample()
    assert s1.xid_events == [] and s1.error_events == 0
    (s2,) = r.sample()
    assert [e.xid for e in s2.xid_events] == [xid] and s2.error_events == 1 and s2.last_error_unix > 0
    assert s2.healthy is healthy
    (s3,) = r.sample()
    assert s3.xid_events == [] and s3.error_events == 1 and s3.healthy is healthy


def test_event_thread_uses_wait_v2_with_timeout_and_stops() -> None:
    class Threaded(FakeNvml):
        timeouts: list[int] = []
        fired = threading.Event()

        def nvmlEventSetWait_v2(self, es: object, timeout_ms: int) -> Any:
            Threaded.timeouts.append(timeout_ms)
            if not Threaded.fired.is_set():
                Threaded.fired.set()
                return SimpleNamespace(device=0, eventType=pynvml.nvmlEventTypeXidCriticalError, eventData=48)
            time.sleep(0.02)
            raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT)

    fake = Threaded(node_from([nvidia_gpu()]))
    reader = NvmlReader(fake, events="thread", event_timeout_ms=1000)
    reader.open()
    assert Threaded.fired.wait(2)
    deadline = time.monotonic() + 2
    s = reader.sample()[0]
    while not s.error_events and time.monotonic() < deadline:
        time.sleep(0.01)
        s = reader.sample()[0]
    assert s.error_events == 1 and s.reason == "Xid 48" and not s.healthy
    assert set(Threaded.timeouts) == {1000}
    reader.close()
    assert reader._thread is None


def test_event_registration_not_supported_is_tolerated() -> None:
    fake = FakeNvml(node_from([nvidia_gpu(faults=[{"type": "not-supported", "metric": "events"},
                                                  {"type": "xid", "xid": 79}])]))
    r = reader_for(fake)
    r.open()
    (s,) = r.sample()
    assert s.healthy and "events" in s.unsupported and s.error_events == 0


def test_fatal_event_wait_error_marks_unhealthy_and_reinitialises(clock: ManualClock) -> None:
    class WaitBroken(FakeNvml):
        broken = True

        def nvmlEventSetWait_v2(self, es: object, timeout_ms: int) -> Any:
            if WaitBroken.broken:
                WaitBroken.broken = False
                raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)
            raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT)

    r = reader_for(WaitBroken(node_from([nvidia_gpu()])), clock)
    inner: NvmlReader = r.inner  # type: ignore[assignment]
    r.open()
    (s,) = r.sample()  # the poll hits the Unknown error: GPU unhealthy, re-init requested
    assert not s.healthy and "event wait failed" in s.reason
    (s,) = r.sample()
    assert "re-initialising" in r.status
    clock.advance(1.5)
    (s,) = r.sample()
    assert s.healthy and r.status == "ok" and inner.init_attempts == 2


def test_bindings_missing_from_an_older_nvidia_ml_py_are_unsupported_not_fatal() -> None:
    class OldBindings(FakeNvml):
        # module attributes absent in an older nvidia-ml-py (None: not callable, like a missing name)
        nvmlDeviceGetTemperatureV = None
        nvmlDeviceGetCurrentClocksEventReasons = None

        def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
            return 61

        def nvmlDeviceGetCurrentClocksThrottleReasons(self, h: int) -> int:
            return 0x4

    r = reader_for(OldBindings(node_from([nvidia_gpu()])))
    r.open()
    (s,) = r.sample()
    assert s.healthy and s.temperature_celsius == 61.0
    assert s.throttle_reasons is not None and s.throttle_reasons["sw_power_cap"]


def test_gpu_lost_before_the_agent_started_is_named_in_the_status() -> None:
    fake = FakeNvml(node_from([nvidia_gpu(), nvidia_gpu(faults=[{"type": "lost"}])]))
    r = reader_for(fake)
    r.open()
    out = r.sample()
    assert len(out) == 1 and out[0].healthy
    assert r.status == "NVML: gpu 1: GPU is lost (not enumerable)"
