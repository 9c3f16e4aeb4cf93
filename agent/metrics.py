"""Prometheus metrics for the agent: vendor-neutral names, base units, per-process registry.

GPU series are rebuilt from the latest samples at scrape time (a custom collector), so a metric a
device does not support is simply absent and a vanished GPU's series disappear. Labels on every
GPU series: node, gpu (index), uuid, vendor, arch, model (product name), and pod, namespace, container
as dcgm-exporter and AMD's exporter name them: the container holding the GPU (kubelet PodResources),
empty when none or several do (time-slicing); `flexinfer_gpu_pod_info` lists every holder then.

Cardinality is bounded: one series set per GPU; label values from closed sets (clock, state, reason,
type, engine, direction, cause) or from the hardware (at most 7 MIG instances per GPU); holders at
most flexinfer.state.MAX_PODS per GPU. The metric table in the README is checked against METRIC_NAMES.
"""

from __future__ import annotations

import threading
from collections import Counter as _Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from flexinfer import buildinfo

from .attribution import Holding
from .readers.base import GpuSample

GPU_LABELS = ("node", "gpu", "uuid", "vendor", "arch", "model", "pod", "namespace", "container")
HOLDER_LABELS = ("pod", "namespace", "container")
ENGINES = ("memory_copy", "encoder", "decoder", "video")

# Every metric family the agent exports (the README's metric table is checked against this).
METRIC_NAMES = (
    "flexinfer_gpu_memory_total_bytes", "flexinfer_gpu_memory_used_bytes", "flexinfer_gpu_memory_free_bytes",
    "flexinfer_gpu_memory_reserved_bytes", "flexinfer_gpu_power_usage_watts", "flexinfer_gpu_power_limit_watts",
    "flexinfer_gpu_energy_joules_total", "flexinfer_gpu_temperature_celsius",
    "flexinfer_gpu_memory_temperature_celsius", "flexinfer_gpu_utilization_ratio",
    "flexinfer_gpu_engine_utilization_ratio", "flexinfer_gpu_clock_hertz", "flexinfer_gpu_pcie_link_generation",
    "flexinfer_gpu_pcie_link_width_lanes", "flexinfer_gpu_pcie_throughput_bytes_per_second",
    "flexinfer_gpu_pcie_replay_total", "flexinfer_gpu_xid_errors_total", "flexinfer_gpu_last_xid",
    "flexinfer_gpu_last_xid_timestamp_seconds", "flexinfer_gpu_throttle_reason", "flexinfer_gpu_ecc_errors_total",
    "flexinfer_gpu_remapped_rows_total", "flexinfer_gpu_row_remap_pending", "flexinfer_gpu_row_remap_failed",
    "flexinfer_gpu_retired_pages_total", "flexinfer_gpu_retired_pages_pending", "flexinfer_gpu_gtt_total_bytes",
    "flexinfer_gpu_gtt_used_bytes", "flexinfer_gpu_mig_enabled", "flexinfer_gpu_mig_memory_total_bytes",
    "flexinfer_gpu_mig_memory_used_bytes", "flexinfer_gpu_healthy", "flexinfer_gpu_pod_info",
    "flexinfer_agent_sample_duration_seconds", "flexinfer_agent_node_writes_total", "flexinfer_agent_info",
)


def holders_of(s: GpuSample, holders: dict[str, Holding]) -> tuple[str, ...]:
    """Containers holding a physical GPU: its own holders and its MIG instances'."""
    found = set(holders[s.uuid].pods) if s.uuid in holders else set()
    for m in s.mig_instances:
        if m.uuid in holders:
            found.update(holders[m.uuid].pods)
    return tuple(sorted(found))


def _holder_labels(pods: tuple[str, ...]) -> list[str]:
    """pod, namespace, container of the one holder; empty when none or several hold the GPU."""
    if len(pods) != 1:
        return ["", "", ""]
    namespace, pod, container = pods[0].split("/", 2)
    return [pod, namespace, container]


class _GpuCollector(Collector):
    def __init__(self, metrics: AgentMetrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Any]:
        m = self.m
        with m.lock:
            samples = list(m.samples)
            xids = dict(m.xid_counts)
            last_xid = dict(m.last_xid)
            holders = dict(m.holders)

        def g(name: str, doc: str, extra: tuple[str, ...] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=(*GPU_LABELS, *extra))

        def c(name: str, doc: str, extra: tuple[str, ...] = ()) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, labels=(*GPU_LABELS, *extra))

        mem = {k: g(f"flexinfer_gpu_memory_{k}_bytes", f"GPU memory {k} in bytes")
               for k in ("total", "used", "free", "reserved")}
        power = g("flexinfer_gpu_power_usage_watts", "GPU power draw in watts")
        limit = g("flexinfer_gpu_power_limit_watts", "Enforced GPU power limit in watts")
        energy = c("flexinfer_gpu_energy_joules", "Energy the GPU consumed in joules (since the driver loaded)")
        temp = g("flexinfer_gpu_temperature_celsius", "GPU temperature (NVIDIA core, AMD hotspot/edge) in celsius")
        mem_temp = g("flexinfer_gpu_memory_temperature_celsius", "GPU memory (HBM/VRAM) temperature in celsius")
        util = g("flexinfer_gpu_utilization_ratio", "GPU busy ratio 0..1")
        engine = g("flexinfer_gpu_engine_utilization_ratio",
                   "Busy ratio 0..1 of one engine: memory_copy (NVIDIA memory, AMD UMC), encoder, decoder, "
                   "video (AMD VCN: encode and decode)", ("engine",))
        clock = g("flexinfer_gpu_clock_hertz", "Current GPU clock in hertz", ("clock",))
        gen = g("flexinfer_gpu_pcie_link_generation", "PCIe link generation", ("state",))
        width = g("flexinfer_gpu_pcie_link_width_lanes", "PCIe link width in lanes", ("state",))
        pcie_rate = g("flexinfer_gpu_pcie_throughput_bytes_per_second", "PCIe throughput in bytes per second",
                      ("direction",))
        replay = c("flexinfer_gpu_pcie_replay", "PCIe replay counter")
        xid = c("flexinfer_gpu_xid_errors", "Xid events seen since the agent started", ("xid",))
        lxid = g("flexinfer_gpu_last_xid", "Most recent Xid number")
        lxid_t = g("flexinfer_gpu_last_xid_timestamp_seconds", "Unix time of the most recent Xid")
        throttle = g("flexinfer_gpu_throttle_reason", "Clock throttle / event reason active (1) or not (0)",
                     ("reason",))
        ecc = c("flexinfer_gpu_ecc_errors", "ECC error count (volatile on NVIDIA, total on AMD)", ("type",))
        remapped = c("flexinfer_gpu_remapped_rows", "Memory rows remapped for ECC errors (NVIDIA Ampere+)",
                     ("type",))
        remap_pending = g("flexinfer_gpu_row_remap_pending", "1 when a row remap waits for a GPU reset")
        remap_failed = g("flexinfer_gpu_row_remap_failed", "1 when a row remap failed (the GPU needs service)")
        retired = c("flexinfer_gpu_retired_pages", "Memory pages retired (NVIDIA before Ampere)", ("cause",))
        retired_pending = g("flexinfer_gpu_retired_pages_pending", "1 when a page retirement waits for a reboot")
        gtt = {k: g(f"flexinfer_gpu_gtt_{k}_bytes", f"AMD GTT (system memory mapped by the GPU) {k} in bytes")
               for k in ("total", "used")}
        mig = g("flexinfer_gpu_mig_enabled", "1 when MIG mode is enabled on the GPU")
        mig_mem = {k: g(f"flexinfer_gpu_mig_memory_{k}_bytes", f"MIG instance memory {k} in bytes",
                        ("gpu_instance", "profile")) for k in ("total", "used")}
        healthy = g("flexinfer_gpu_healthy", "1 when the GPU is healthy, 0 otherwise")
        pod_info = GaugeMetricFamily("flexinfer_gpu_pod_info", "A container holding the GPU (value is always 1)",
                                     labels=(*GPU_LABELS[:6], *HOLDER_LABELS))
        for s in samples:
            who = holders_of(s, holders)
            base = [m.node, str(s.index), s.uuid, s.vendor, s.arch, s.product]
            lv = [*base, *_holder_labels(who)]
            for ref in who:
                namespace, pod, container = ref.split("/", 2)
                pod_info.add_metric([*base, pod, namespace, container], 1.0)
            mem["total"].add_metric(lv, s.memory_total_bytes)
            mem["used"].add_metric(lv, s.memory_used_bytes)
            mem["free"].add_metric(lv, s.memory_free_bytes)
            if s.memory_reserved_bytes is not None:
                mem["reserved"].add_metric(lv, s.memory_reserved_bytes)
            for fam, v in ((power, s.power_usage_watts), (limit, s.power_limit_watts), (energy, s.energy_joules_total),
                           (temp, s.temperature_celsius), (mem_temp, s.memory_temperature_celsius),
                           (util, s.utilization_ratio), (gtt["total"], s.gtt_total_bytes),
                           (gtt["used"], s.gtt_used_bytes)):
                if v is not None:
                    fam.add_metric(lv, v)
            for name in ENGINES:
                if s.engine_utilization and (v := s.engine_utilization.get(name)) is not None:
                    engine.add_metric([*lv, name], v)
            for name, v in (("sm", s.sm_clock_hertz), ("memory", s.memory_clock_hertz)):
                if v is not None:
                    clock.add_metric([*lv, name], v)
            for fam, cur, mx in ((gen, s.pcie_gen_current, s.pcie_gen_max),
                                 (width, s.pcie_width_current, s.pcie_width_max)):
                if cur is not None:
                    fam.add_metric([*lv, "current"], cur)
                if mx is not None:
                    fam.add_metric([*lv, "max"], mx)
            for direction, v in (("tx", s.pcie_tx_bytes_per_second), ("rx", s.pcie_rx_bytes_per_second)):
                if v is not None:
                    pcie_rate.add_metric([*lv, direction], v)
            if s.pcie_replay_total is not None:
                replay.add_metric(lv, s.pcie_replay_total)
            for (uuid, code), n in xids.items():
                if uuid == s.uuid:
                    xid.add_metric([*lv, str(code)], n)
            if s.uuid in last_xid:
                code, t = last_xid[s.uuid]
                lxid.add_metric(lv, code)
                lxid_t.add_metric(lv, t)
            for reason, active in sorted((s.throttle_reasons or {}).items()):
                throttle.add_metric([*lv, reason], 1.0 if active else 0.0)
            for kind, v in (("correctable", s.ecc_correctable_total), ("uncorrectable", s.ecc_uncorrectable_total),
                            ("deferred", s.ecc_deferred_total)):
                if v is not None:
                    ecc.add_metric([*lv, kind], v)
            for kind in ("correctable", "uncorrectable"):
                if s.remapped_rows is not None and kind in s.remapped_rows:
                    remapped.add_metric([*lv, kind], s.remapped_rows[kind])
            for cause in ("single_bit", "double_bit"):
                if s.retired_pages is not None and cause in s.retired_pages:
                    retired.add_metric([*lv, cause], s.retired_pages[cause])
            for fam, flag in ((remap_pending, s.row_remap_pending), (remap_failed, s.row_remap_failed),
                              (retired_pending, s.retired_pages_pending), (mig, s.mig_enabled)):
                if flag is not None:
                    fam.add_metric(lv, 1.0 if flag else 0.0)
            for inst in s.mig_instances:
                ilv = [*lv, str(inst.gpu_instance_id), inst.profile]
                mig_mem["total"].add_metric(ilv, inst.memory_total_bytes)
                mig_mem["used"].add_metric(ilv, inst.memory_used_bytes)
            healthy.add_metric(lv, 1.0 if s.healthy else 0.0)
        yield from mem.values()
        yield from (power, limit, energy, temp, mem_temp, util, engine, clock, gen, width, pcie_rate, replay, xid,
                    lxid, lxid_t, throttle, ecc, remapped, remap_pending, remap_failed, retired, retired_pending)
        yield from gtt.values()
        yield mig
        yield from mig_mem.values()
        yield from (healthy, pod_info)


class AgentMetrics:
    """All metrics of one agent in its own registry (tests and the demo run many agents)."""

    def __init__(self, node: str, version: str | None = None) -> None:
        self.node = node
        self.lock = threading.Lock()
        self.samples: list[GpuSample] = []
        self.xid_counts: _Counter[tuple[str, int]] = _Counter()
        self.last_xid: dict[str, tuple[int, float]] = {}
        self.holders: dict[str, Holding] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_GpuCollector(self))
        self.sample_duration = Histogram(
            "flexinfer_agent_sample_duration_seconds", "Time to read all GPUs once", ["node"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=self.registry)
        self.node_writes = Counter("flexinfer_agent_node_writes", "Node label/annotation patches by result",
                                   ["node", "result"], registry=self.registry)
        self.info = Gauge("flexinfer_agent_info", "Agent build and environment (value is always 1)",
                          ["node", "version", "reader", "status", "driver_version", "runtime_version"],
                          registry=self.registry)
        self._info_labels: tuple[str, ...] | None = None
        self.version = version or buildinfo.version()

    def observe(self, samples: list[GpuSample], duration_seconds: float, reader: str, status: str,
                holders: dict[str, Holding] | None = None) -> None:
        with self.lock:
            self.samples = list(samples)
            self.holders = dict(holders or {})
            for s in samples:
                for ev in s.xid_events:
                    self.xid_counts[(s.uuid, ev.xid)] += 1
                    self.last_xid[s.uuid] = (ev.xid, ev.unix)
        self.sample_duration.labels(self.node).observe(duration_seconds)
        first = samples[0] if samples else None
        driver = first.driver_version if first else ""
        runtime = (f"cuda {first.cuda_version}" if first.cuda_version else
                   f"rocm {first.rocm_version}" if first.rocm_version else "") if first else ""
        labels = (self.node, self.version, reader, status[:120], driver, runtime)
        if labels != self._info_labels:
            if self._info_labels is not None:
                self.info.remove(*self._info_labels)
            self.info.labels(*labels).set(1)
            self._info_labels = labels

    def wrote(self, result: str) -> None:
        self.node_writes.labels(self.node, result).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
