"""Telemetry parity with dcgm-exporter's default counters and AMD's device-metrics-exporter, read through the real
NvmlReader / AmdSmiReader over fakes that answer like the libraries (field values with per-field return codes,
NotSupported where the hardware lacks a feature, MIG handles)."""

from __future__ import annotations

import re
from typing import Any

import pynvml
import pytest
from flexinfer.agent.agent import Agent
from flexinfer.agent.readers.amd import AmdSmiReader
from flexinfer.agent.readers.base import Backoff
from flexinfer.agent.readers.fake import FakeAmdSmi, FakeNvml, FleetReader, fleet_reader
from flexinfer.agent.readers.nvml import NvmlReader, _field_value, mig_profile

from .agent_helpers import ManualClock, amd_gpu, node_from, nvidia_gpu


class CountingNvml(FakeNvml):
    field_calls = 0

    def nvmlDeviceGetFieldValues(self, h: int, field_ids: list[Any]) -> Any:
        CountingNvml.field_calls += 1
        return super().nvmlDeviceGetFieldValues(h, field_ids)


def nvml_reader(fake: FakeNvml) -> FleetReader:
    r = FleetReader(NvmlReader(fake, events="poll"), [fake])  # type: ignore[arg-type]
    r.open()
    return r


def test_nvidia_exporter_counters() -> None:
    fake = FakeNvml(node_from([nvidia_gpu(arch="sm_90", product="NVIDIA H100 80GB HBM3", totalMiB=81559,
                                          powerW=300, memoryTemperatureC=52, memoryUtilizationPct=35,
                                          encoderPct=12, decoderPct=40,
                                          pcie={"txKBps": 2048, "rxKBps": 1024})]))
    r = nvml_reader(fake)
    (s,) = r.sample()
    assert s.energy_joules_total == pytest.approx(300 * 10)  # watts x 10 s per fake sample
    (s,) = r.sample()
    assert s.energy_joules_total == pytest.approx(300 * 20)  # a counter: it only grows
    assert s.memory_temperature_celsius == 52.0
    assert (s.pcie_tx_bytes_per_second, s.pcie_rx_bytes_per_second) == (2048 * 1024.0, 1024 * 1024.0)
    assert s.engine_utilization == {"memory_copy": 0.35, "encoder": 0.12, "decoder": 0.40}
    assert s.remapped_rows == {"correctable": 0, "uncorrectable": 0}
    assert (s.row_remap_pending, s.row_remap_failed) == (False, False)
    assert s.retired_pages is None and "retired_pages" in s.unsupported  # Hopper remaps rows instead
    assert s.healthy


def test_not_supported_is_marked_once_per_metric() -> None:
    """GTX 980 Ti: no energy counter (pre-Volta), no memory sensor, no MIG: each is asked once."""
    CountingNvml.field_calls = 0
    fake = CountingNvml(node_from([nvidia_gpu(arch="sm_52", product="NVIDIA GeForce GTX 980 Ti", totalMiB=6144,
                                              usedMiB=300)]))
    r = nvml_reader(fake)
    for _ in range(5):
        (s,) = r.sample()
    assert {"energy", "memory_temperature", "mig", "row_remap"} <= s.unsupported
    assert s.energy_joules_total is None and s.memory_temperature_celsius is None
    assert CountingNvml.field_calls == 1 and fake.calls["energy"] == 1 and fake.calls["mig"] == 1
    assert s.retired_pages == {"single_bit": 0, "double_bit": 0} and s.retired_pages_pending is False


def test_retired_pages_before_ampere() -> None:
    fault = {"type": "retired-pages", "correctable": 3, "uncorrectable": 1, "pending": True, "atSample": 2}
    fake = FakeNvml(node_from([nvidia_gpu(arch="sm_70", product="Tesla V100-SXM2-16GB", totalMiB=16384,
                                          faults=[fault])]))
    r = nvml_reader(fake)
    (s,) = r.sample()
    assert s.retired_pages == {"single_bit": 0, "double_bit": 0}
    (s,) = r.sample()
    assert s.retired_pages == {"single_bit": 3, "double_bit": 1} and s.retired_pages_pending is True
    assert s.remapped_rows is None


def test_failed_row_remap_makes_the_gpu_unhealthy_for_good() -> None:
    fault = {"type": "row-remap", "correctable": 0, "uncorrectable": 2, "failed": True, "atSample": 2}
    node = node_from([nvidia_gpu(arch="sm_80", product="NVIDIA A100-SXM4-40GB", totalMiB=40960, faults=[fault])])
    agent = Agent("n1", fleet_reader(node))
    assert agent.step(now=1.0).state.gpus[0].healthy
    res = agent.step(now=2.0)
    (s,) = res.samples
    assert s.remapped_rows == {"correctable": 0, "uncorrectable": 2} and s.row_remap_failed is True
    g = res.state.gpus[0]
    assert not g.healthy and g.reason == "row remapping failed" and g.error_events == 1
    assert res.state.agent_status == "gpu 0 unhealthy: row remapping failed"
    assert not agent.step(now=3.0).state.gpus[0].healthy


@pytest.mark.parametrize(("g", "c", "mib", "name"), [
    (3, 3, 40192, "3g.40gb"), (1, 1, 9856, "1g.10gb"), (7, 7, 81152, "7g.80gb"), (2, 2, 9728, "2g.10gb"),
    (3, 1, 40192, "1c.3g.40gb"),
])
def test_mig_profile_names(g: int, c: int, mib: int, name: str) -> None:
    attrs = pynvml.c_nvmlDeviceAttributes(gpuInstanceSliceCount=g, computeInstanceSliceCount=c, memorySizeMB=mib)
    assert mig_profile(attrs) == name


def test_field_values_decode_by_value_type() -> None:
    v = pynvml.c_nvmlFieldValue_t()
    for kind, attr, value in ((pynvml.NVML_VALUE_TYPE_DOUBLE, "dVal", 1.5),
                              (pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, "ullVal", 2**40),
                              (pynvml.NVML_VALUE_TYPE_SIGNED_INT, "siVal", -3)):
        v.valueType = kind
        setattr(v.value, attr, value)
        assert _field_value(pynvml, v) == value
    v.valueType = 99
    assert _field_value(pynvml, v) is None


def test_mig_instances_are_read_through_mig_handles() -> None:
    mig = [{"profile": "3g.40gb", "totalMiB": 40192, "usedMiB": 1000},
           {"profile": "2g.20gb", "totalMiB": 19968},
           {"profile": "1g.10gb", "totalMiB": 9856, "usedMiB": 9000}]
    fake = FakeNvml(node_from([nvidia_gpu(arch="sm_90", product="NVIDIA H100 80GB HBM3", totalMiB=81559, mig=mig)]))
    r = nvml_reader(fake)
    (s,) = r.sample()
    assert s.mig_enabled is True and "utilization" in s.unsupported  # not supported on MIG-enabled GPUs
    assert [(m.profile, m.memory_total_bytes >> 20, m.memory_used_bytes >> 20, m.gpu_instance_id)
            for m in s.mig_instances] == [("3g.40gb", 40192, 1000, 1), ("2g.20gb", 19968, 0, 2),
                                          ("1g.10gb", 9856, 9000, 3)]
    assert all(m.uuid.startswith("MIG-") for m in s.mig_instances)
    assert s.memory_used_bytes >> 20 == 10000  # the parent reports the instances' sum


def amd_reader(fake: FakeAmdSmi, clock: ManualClock) -> FleetReader:
    r = FleetReader(AmdSmiReader(fake, sys_root="/nonexistent", clock=clock,
                                 backoff=Backoff(1, 60, clock=clock)), [fake])  # type: ignore[arg-type]
    r.open()
    return r


def test_amd_exporter_counters(amdsmi_real: Any) -> None:
    clock = ManualClock()
    fake = FakeAmdSmi(node_from([amd_gpu(powerW=200, memoryTemperatureC=70, memoryUtilizationPct=20,
                                         decoderPct=30, gttTotalMiB=65536, gttUsedMiB=512,
                                         pcie={"txKBps": 512, "rxKBps": 256})]), amdsmi_real)
    r = amd_reader(fake, clock)
    (s,) = r.sample()
    assert s.energy_joules_total == pytest.approx(200 * 10, rel=1e-3)
    assert s.memory_temperature_celsius == 70.0
    assert s.engine_utilization == {"memory_copy": 0.2, "video": 0.3}
    assert (s.gtt_total_bytes, s.gtt_used_bytes) == (65536 << 20, 512 << 20)
    assert (s.pcie_tx_bytes_per_second, s.pcie_rx_bytes_per_second) == (512 * 1024, 256 * 1024)
    assert s.rocm_version == "7.0.2"  # librocm-core's version, not the amd-smi library's own (25.x)


def test_amd_pcie_traffic_is_read_at_most_once_a_minute(amdsmi_real: Any) -> None:
    """The driver measures PCIe traffic for a second per read: the agent does not block its loop on it."""
    clock = ManualClock()
    fake = FakeAmdSmi(node_from([amd_gpu(pcie={"txKBps": 4, "rxKBps": 8})]), amdsmi_real)
    r = amd_reader(fake, clock)
    for _ in range(6):
        (s,) = r.sample()
        clock.advance(10)
    assert fake.calls["pcie_throughput"] == 1 and s.pcie_tx_bytes_per_second == 4 * 1024
    clock.advance(10)
    r.sample()
    assert fake.calls["pcie_throughput"] == 2


def test_amd_memory_sensor_missing_is_asked_once(amdsmi_real: Any) -> None:
    clock = ManualClock()
    fake = FakeAmdSmi(node_from([amd_gpu(faults=[{"type": "not-supported", "metric": "energy"}])]), amdsmi_real)
    r = amd_reader(fake, clock)
    for _ in range(4):
        (s,) = r.sample()
    assert s.memory_temperature_celsius is None and s.energy_joules_total is None
    assert {"memory_temperature", "energy"} <= s.unsupported
    assert fake.calls["memory_temperature"] == 1 and fake.calls["energy"] == 1


def _series(agent: Agent) -> list[str]:
    return [ln for ln in agent.metrics.exposition().decode().splitlines() if ln.startswith("flexinfer_gpu_")]


def test_exported_names_units_and_bounded_cardinality() -> None:
    mig = [{"profile": "3g.40gb", "totalMiB": 40192}, {"profile": "3g.40gb", "totalMiB": 40192}]
    node = node_from([nvidia_gpu(arch="sm_90", product="NVIDIA H100 80GB HBM3", totalMiB=81559, mig=mig,
                                 memoryTemperatureC=50, faults=[{"type": "noise", "mib": 500}]),
                      amd_gpu(memoryTemperatureC=60)])
    agent = Agent("n1", fleet_reader(node))
    agent.step(now=1.0)
    first = _series(agent)
    text = "\n".join(first)
    for want in ("flexinfer_gpu_energy_joules_total{", 'flexinfer_gpu_engine_utilization_ratio{', 'engine="video"',
                 'direction="tx"', "flexinfer_gpu_memory_temperature_celsius{", "flexinfer_gpu_gtt_total_bytes{",
                 'flexinfer_gpu_mig_memory_total_bytes{', 'profile="3g.40gb"', "flexinfer_gpu_mig_enabled{",
                 'flexinfer_gpu_remapped_rows_total{', 'type="uncorrectable"'):
        assert want in text, want
    for _ in range(10):
        agent.step()
    keys_after = {re.sub(r" \S+$", "", ln) for ln in _series(agent)}
    assert keys_after == {re.sub(r" \S+$", "", ln) for ln in first}  # same series: values change, labels do not


# Units a metric name may end in (before a counter's _total); the brief: units in every user-visible number's name.
UNITS = ("bytes", "watts", "joules", "celsius", "ratio", "hertz", "seconds", "bytes_per_second", "lanes", "errors",
         "rows", "pages", "replay", "writes")
# Flags (0/1), info series (always 1), identifiers and ordinals: no unit to name.
UNITLESS = {"flexinfer_gpu_pcie_link_generation", "flexinfer_gpu_last_xid", "flexinfer_gpu_throttle_reason",
            "flexinfer_gpu_row_remap_pending", "flexinfer_gpu_row_remap_failed",
            "flexinfer_gpu_retired_pages_pending", "flexinfer_gpu_mig_enabled", "flexinfer_gpu_healthy",
            "flexinfer_gpu_pod_info", "flexinfer_agent_info"}


def test_every_metric_name_carries_its_unit() -> None:
    from flexinfer.agent.metrics import METRIC_NAMES

    missing = [n for n in METRIC_NAMES
               if n not in UNITLESS and not n.removesuffix("_total").endswith(tuple("_" + u for u in UNITS))]
    assert missing == []
    assert "flexinfer_gpu_pcie_link_width_lanes" in METRIC_NAMES  # lanes, not a bare number
