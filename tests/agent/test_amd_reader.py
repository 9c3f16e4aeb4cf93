"""AmdSmiReader against FakeAmdSmi raising the REAL amdsmi.AmdSmiLibraryException (stub libamd_smi.so)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from flexinfer.agent.agent import Agent
from flexinfer.agent.readers.amd import AmdSmiReader
from flexinfer.agent.readers.base import Backoff
from flexinfer.agent.readers.fake import FakeAmdSmi, FleetReader

from .agent_helpers import ManualClock, amd_gpu, node_from


def reader_for(fake: FakeAmdSmi, clock: ManualClock | None = None, sys_root: str | Path = "/nonexistent") -> Any:
    backoff = Backoff(1.0, 60.0, clock=clock) if clock else None
    return FleetReader(AmdSmiReader(fake, sys_root=sys_root, backoff=backoff), [fake])


def test_fake_raises_the_real_exception(amdsmi_real: Any) -> None:
    fake = FakeAmdSmi(node_from([amd_gpu(faults=[{"type": "not-supported", "metric": "power"}])]), amdsmi_real)
    with pytest.raises(amdsmi_real.AmdSmiLibraryException) as exc:
        fake.amdsmi_get_power_info(0)
    assert exc.value.get_error_code() == 2 and "NOT_SUPPORTED" in exc.value.get_error_info()


def test_import_without_rocm_reports_the_reason_and_keeps_stdout_clean() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("ROCM_PATH", "ROCM_HOME")}
    code = ("from flexinfer.agent.readers.amd import import_amdsmi; m, why = import_amdsmi(); "
            "print('RESULT', m is None, why)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("RESULT True cannot load amdsmi: KeyError"), out.stdout


def test_full_sample(amdsmi_real: Any) -> None:
    fake = FakeAmdSmi(node_from([amd_gpu(powerW=38, powerCapW=327, temperatureC=41, utilizationPct=50,
                                         pcie={"gen": 3, "width": 16, "maxGen": 4, "maxWidth": 16})]), amdsmi_real)
    r = reader_for(fake)
    r.open()
    (s,) = r.sample()
    assert r.status == "ok" and s.healthy
    assert (s.arch, s.product, s.vendor) == ("gfx1100", "AMD Radeon RX 7900 XTX", "amd")
    assert s.memory_total_bytes == 24560 * 2**20 and s.memory_used_bytes == 500 * 2**20
    assert s.power_usage_watts == 38.0 and s.power_limit_watts == pytest.approx(327.0)
    assert s.temperature_celsius == 44.0  # hotspot preferred over edge
    assert s.utilization_ratio == 0.5
    assert s.sm_clock_hertz == 1500e6 and s.memory_clock_hertz == 7000e6
    assert (s.pcie_gen_current, s.pcie_gen_max, s.pcie_width_current, s.pcie_width_max) == (3, 4, 16, 16)
    assert (s.ecc_correctable_total, s.ecc_uncorrectable_total, s.ecc_deferred_total) == (0, 0, 0)
    assert s.rocm_version == "7.0.2" and not s.unified_memory


def test_not_supported_is_marked_once(amdsmi_real: Any) -> None:
    fake = FakeAmdSmi(node_from([amd_gpu(faults=[{"type": "not-supported", "metric": "power"},
                                                 {"type": "not-supported", "metric": "temperature"}])]), amdsmi_real)
    r = reader_for(fake)
    r.open()
    for _ in range(5):
        (s,) = r.sample()
    assert s.power_usage_watts is None and s.power_limit_watts is None and s.temperature_celsius is None
    assert fake.calls["power"] == 2 and fake.calls["temperature"] == 2  # (info+cap), (hotspot+edge)
    assert s.healthy and s.utilization_ratio is not None


def test_missing_function_in_older_library_is_unsupported(amdsmi_real: Any) -> None:
    class Old(FakeAmdSmi):
        amdsmi_get_gpu_activity = None  # symbol absent in this ROCm release

    r = reader_for(Old(node_from([amd_gpu()]), amdsmi_real))
    r.open()
    (s,) = r.sample()
    assert s.utilization_ratio is None and "utilization" in s.unsupported and s.healthy


def test_uncorrectable_ecc_delta_is_an_error_event_and_unhealthy(amdsmi_real: Any) -> None:
    fake = FakeAmdSmi(node_from([amd_gpu(faults=[{"type": "ecc", "uncorrectable": 2, "atSample": 3}])]), amdsmi_real)
    r = reader_for(fake)
    r.open()
    assert r.sample()[0].healthy and r.sample()[0].error_events == 0
    s = r.sample()[0]
    assert not s.healthy and s.error_events == 2 and "uncorrectable ECC" in s.reason and s.last_error_unix > 0
    s = r.sample()[0]
    assert not s.healthy and s.error_events == 2  # counted once


def test_correctable_ecc_is_not_a_health_problem(amdsmi_real: Any) -> None:
    fake = FakeAmdSmi(node_from([amd_gpu(faults=[{"type": "ecc", "correctable": 5, "atSample": 2}])]), amdsmi_real)
    r = reader_for(fake)
    r.open()
    r.sample()
    s = r.sample()[0]
    assert s.healthy and s.ecc_correctable_total == 5 and s.error_events == 0


def test_lost_gpu_reinitialises_with_backoff(amdsmi_real: Any, clock: ManualClock) -> None:
    fake = FakeAmdSmi(node_from([amd_gpu(), amd_gpu(faults=[{"type": "lost", "atSample": 2}])]), amdsmi_real)
    r = reader_for(fake, clock)
    r.open()
    assert [s.healthy for s in r.sample()] == [True, True]
    out = r.sample()  # NOT_FOUND on gpu 1: unhealthy, re-init scheduled, nothing raised
    assert [s.healthy for s in out] == [True, False] and "NOT_FOUND" in out[1].reason
    assert "re-initialising" in r.status
    attempts = r.inner.init_attempts
    r.sample()
    assert r.inner.init_attempts == attempts  # no re-init before the backoff elapsed
    clock.advance(1.1)
    out = r.sample()
    assert r.status == "ok" and [s.healthy for s in out] == [True, False]
    assert "NOT_FOUND" in out[1].reason and r.inner.init_attempts == attempts + 1


def test_driver_not_loaded_gives_reason(amdsmi_real: Any) -> None:
    fake = FakeAmdSmi(node_from([amd_gpu()], faults=[{"type": "driver-mismatch"}]), amdsmi_real)
    st = Agent("n1", reader_for(fake)).step(now=1.0).state
    assert st.gpus == () and "DRIVER_NOT_LOADED" in st.agent_status


def write_kfd(root: Path, nodes: dict[int, str], banks: dict[int, list[str]] | None = None) -> None:
    for n, text in nodes.items():
        d = root / "class/kfd/kfd/topology/nodes" / str(n)
        d.mkdir(parents=True)
        (d / "properties").write_text(text)
        for b, btext in enumerate((banks or {}).get(n, [])):
            (d / "mem_banks" / str(b)).mkdir(parents=True)
            (d / "mem_banks" / str(b) / "properties").write_text(btext)


def test_kfd_wins_over_a_misformatted_library_gfx(amdsmi_real: Any, tmp_path: Path) -> None:
    class Buggy(FakeAmdSmi):
        def amdsmi_get_gpu_asic_info(self, h: int) -> dict[str, Any]:
            return {"market_name": "AMD Instinct MI210", "target_graphics_version": "gfx9010"}  # ROCm 6.3 bug

    write_kfd(tmp_path, {0: "cpu_cores_count 16\ngfx_target_version 0\n",
                         1: "cpu_cores_count 0\nsimd_count 416\ngfx_target_version 90010\n"})
    r = reader_for(Buggy(node_from([amd_gpu(arch="gfx90a")]), amdsmi_real), sys_root=tmp_path)
    r.open()
    assert r.sample()[0].arch == "gfx90a"


def test_strix_halo_is_reported_as_unified_memory(amdsmi_real: Any) -> None:
    fake = FakeAmdSmi(node_from([amd_gpu(arch="gfx1151", product="AMD Radeon 8060S", totalMiB=49152)]), amdsmi_real)
    st = Agent("khelben", reader_for(fake)).step(now=1.0).state
    assert st.gpus[0].unified_memory and st.gpus[0].arch == "gfx1151"


def test_reset_and_vm_fault_events_are_error_events(amdsmi_real: Any) -> None:
    kinds = amdsmi_real.AmdSmiEvtNotificationType
    queue: list[dict[str, Any]] = []
    registered: list[tuple[int, list[Any]]] = []

    class EventReader:
        def __init__(self, handle: int, types: list[Any]) -> None:
            registered.append((handle, list(types)))

        def read(self, timeout_ms: int, num_elem: int = 10) -> list[dict[str, Any]]:
            if not queue:
                raise amdsmi_real.AmdSmiLibraryException(40)  # NO_DATA
            out = list(queue)
            queue.clear()
            return out

        def stop(self) -> None:
            pass

    class WithEvents(FakeAmdSmi):
        AmdSmiEventReader = EventReader
        AmdSmiEvtNotificationType = kinds

    r = reader_for(WithEvents(node_from([amd_gpu(), amd_gpu()]), amdsmi_real))
    r.open()
    assert [h for h, _ in registered] == [0, 1] and kinds.GPU_PRE_RESET in registered[0][1]
    assert [s.error_events for s in r.sample()] == [0, 0]
    queue.extend([{"processor_handle": 1, "event": "GPU_PRE_RESET", "message": "reset"},
                  {"processor_handle": 1, "event": "GPU_POST_RESET", "message": "done"},
                  {"processor_handle": 0, "event": "VMFAULT", "message": "page fault"},
                  {"processor_handle": 0, "event": "THERMAL_THROTTLE", "message": "hot"}])
    out = r.sample()
    assert [s.error_events for s in out] == [1, 1] and all(s.last_error_unix > 0 for s in out)
    assert all(s.healthy for s in out)  # resets/faults are counted; ECC decides health
    assert [s.error_events for s in r.sample()] == [1, 1]
