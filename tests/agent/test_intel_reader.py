"""The Intel reader over fake sysfs trees laid out like the xe and i915 drivers' (FakeIntelSysfs from a fleet, and
hand-made trees for the edge cases): device id -> platform, local memory where published, frequency, hwmon energy,
power limit and temperatures, PCIe, lost GPUs, and attribution through the Intel device plugin's ids."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from flexinfer.agent.agent import Agent
from flexinfer.agent.attribution import Assignment
from flexinfer.agent.readers.fake import FakeIntelSysfs, fleet_reader
from flexinfer.agent.readers.intel import IntelSysfsReader, find_cards

from flexinfer import keys
from flexinfer.arch import arch_info, intel_arch_from_device_id
from flexinfer.state import state_labels

from .agent_helpers import ManualClock, node_from


def intel_gpu(**kw: object) -> dict[str, object]:
    g: dict[str, object] = {"vendor": "intel", "arch": "dg2", "product": "Intel Arc A770 Graphics",
                            "totalMiB": 16256, "usedMiB": 600, "powerW": 30, "powerCapW": 225}
    g.update(kw)
    return g


def test_platforms_from_device_ids() -> None:
    assert intel_arch_from_device_id(0x56A0) == "dg2" and intel_arch_from_device_id(0xE20B) == "bmg"
    assert intel_arch_from_device_id(0x0BD5) == "pvc" and intel_arch_from_device_id(0x1234) == ""
    a770 = arch_info("intel", "dg2")
    assert (a770.family, a770.codename, a770.known) == ("xe-hpg", "alchemist", True)
    assert arch_info("intel", "intel-1234").family == "xe" and not arch_info("intel", "intel-1234").known


def test_i915_with_local_memory_usage() -> None:
    node = node_from([intel_gpu(driver="i915", memoryTemperatureC=52, temperatureC=47, smClockMhz=2100)])
    agent = Agent("arc", fleet_reader(node))
    agent.step(now=1.0)
    res = agent.step(now=2.0)
    (s,) = res.samples
    assert (s.arch, s.product, s.drm_card) == ("dg2", "Intel Arc A770 Graphics", "card1")
    assert s.memory_total_bytes == 16256 << 20 and s.memory_used_bytes == 600 << 20 and s.memory_used_known
    assert s.energy_joules_total == pytest.approx(30 * 10 * 2) and s.power_usage_watts == pytest.approx(30.0)
    assert s.power_limit_watts == 225.0
    assert (s.temperature_celsius, s.memory_temperature_celsius) == (47.0, 52.0)
    assert s.sm_clock_hertz == 2100e6 and (s.pcie_gen_current, s.pcie_width_max) == (4, 16)
    g = res.state.gpus[0]
    assert (g.vendor, g.arch, g.free_mib, g.total_mib) == ("intel", "dg2", 16256 - 600, 16256)
    labels = state_labels(res.state)
    assert labels[keys.LABEL_VENDOR] == "intel" and labels[keys.LABEL_FAMILY] == "xe-hpg"
    assert labels[keys.LABEL_PRODUCT] == "Intel-Arc-A770-Graphics" and labels[keys.LABEL_MEMORY_MIB] == "16256"


class _Held:
    def __init__(self) -> None:
        self.assignments: list[Assignment] = []

    def poll(self) -> tuple[list[Assignment], str]:
        return self.assignments, ""


def test_xe_publishes_no_usage_so_a_held_gpu_counts_as_full() -> None:
    """xe has only the total in sysfs: free memory is the total until a container holds the GPU, then none."""
    held = _Held()
    agent = Agent("arc", fleet_reader(node_from([intel_gpu(driver="xe", usedMiB=9000)])), pod_resources=held)
    (s,) = agent.step(now=1.0).samples
    assert not s.memory_used_known and s.memory_total_bytes == 16256 << 20
    assert agent.last.state.gpus[0].free_mib == 16256  # type: ignore[union-attr]
    held.assignments = [Assignment("ml", "bge-reranker-0", "server", "gpu.intel.com/xe", "card1-0")]
    g = agent.step(now=2.0).state.gpus[0]
    assert g.pods == ("ml/bge-reranker-0/server",) and g.free_mib == 0


def test_lost_gpu_is_kept_unhealthy() -> None:
    node = node_from([intel_gpu(faults=[{"type": "lost", "atSample": 2}]), intel_gpu()])
    agent = Agent("arc", fleet_reader(node))
    assert agent.step(now=1.0).state.agent_status == "ok"
    st = agent.step(now=2.0).state
    assert [g.healthy for g in st.gpus] == [False, True] and st.gpus[0].reason == "GPU is lost"
    assert st.agent_status == "gpu 0 unhealthy: GPU is lost"


def test_missing_files_are_unsupported_once(monkeypatch: pytest.MonkeyPatch) -> None:
    node = node_from([intel_gpu(faults=[{"type": "not-supported", "metric": m}
                                        for m in ("energy", "clocks", "power", "temperature")])])
    fake = FakeIntelSysfs(node)
    reader = IntelSysfsReader(fake.sys_root, fake.proc_root, clock=fake.clock)
    reader.open()
    reads: list[str] = []
    import flexinfer.agent.readers.intel as intel_mod

    real = intel_mod._int
    monkeypatch.setattr(intel_mod, "_int", lambda p: reads.append(p.name) or real(p))
    for _ in range(4):
        fake.sample_no += 1
        fake.update()
        (s,) = reader.sample()
    assert {"energy", "clocks", "power_limit"} <= s.unsupported
    assert s.energy_joules_total is None and s.power_limit_watts is None and s.temperature_celsius is None
    assert reads.count("energy1_input") == 1 and reads.count("power1_max") == 1


def _card(root: Path, n: int, *, vendor: str = "0x8086", cls: str = "0x030000", driver: str | None = "xe",
          device: str = "0x56a0", extra: dict[str, str] | None = None) -> Path:
    dev = root / "devices" / f"0000:{n + 0x20:02x}:00.0"
    dev.mkdir(parents=True)
    for name, text in {"vendor": vendor, "class": cls, "device": device, **(extra or {})}.items():
        (dev / name).parent.mkdir(parents=True, exist_ok=True)
        (dev / name).write_text(text + "\n")
    if driver:
        drv = root / "bus" / "pci" / "drivers" / driver
        drv.mkdir(parents=True, exist_ok=True)
        os.symlink(drv, dev / "driver")
    card = dev / "drm" / f"card{n}"
    card.mkdir(parents=True)
    os.symlink(dev, card / "device")
    (root / "class" / "drm").mkdir(parents=True, exist_ok=True)
    os.symlink(card, root / "class" / "drm" / f"card{n}")
    return dev


def test_only_intel_display_gpus_on_xe_or_i915_are_read(tmp_path: Path) -> None:
    _card(tmp_path, 0, vendor="0x10de")  # an NVIDIA card
    _card(tmp_path, 1)  # Arc on xe
    _card(tmp_path, 2, cls="0x120000")  # not a display controller
    _card(tmp_path, 3, driver=None)  # no driver bound
    _card(tmp_path, 4, driver="vfio-pci")  # passed through to a VM
    os.symlink(tmp_path / "class" / "drm" / "card1", tmp_path / "class" / "drm" / "card1-DP-1")  # a connector
    assert [c.card for c in find_cards(tmp_path)] == ["card1"]


@pytest.mark.parametrize("junk", ["", "not a number", "\x00\xff", "9" * 80])
def test_junk_sysfs_values_do_not_raise(tmp_path: Path, junk: str) -> None:
    dev = _card(tmp_path, 1, device="0xe20b", extra={"tile0/physical_vram_size_bytes": junk,
                                                     "current_link_speed": junk, "hwmon/hwmon0/energy1_input": junk,
                                                     "hwmon/hwmon0/temp1_input": junk})
    assert dev.exists()
    r = IntelSysfsReader(tmp_path, tmp_path / "proc", clock=ManualClock())
    r.open()
    (s,) = r.sample()
    assert s.arch == "bmg" and s.memory_total_bytes == 0 and s.pcie_gen_current is None
    assert s.energy_joules_total is None and s.temperature_celsius is None and s.healthy


def test_xe_tiles_add_up(tmp_path: Path) -> None:
    _card(tmp_path, 1, device="0x0bd5", extra={"tile0/physical_vram_size_bytes": str(64 << 30),
                                               "tile1/physical_vram_size_bytes": str(64 << 30)})
    r = IntelSysfsReader(tmp_path, tmp_path / "proc")
    r.open()
    (s,) = r.sample()
    assert (s.arch, s.memory_total_bytes, s.memory_used_known) == ("pvc", 128 << 30, False)
