"""Intel reader on the sysfs files of the `xe` and `i915` kernel drivers (docs/intel-gpus.md). No Intel library
is needed: everything comes from /sys (injectable root, as the KFD reader's), and junk or missing files are
"unsupported", never an exception.

* GPUs: /sys/class/drm/card<N> whose `device/vendor` is 0x8086, `device/class` a display controller and
  `device/driver` xe or i915. The PCI device id (`device/device`) gives the platform (flexinfer.arch: 0x56a0 ->
  dg2, the Arc A770). Identity: the PCI bus id (`intel-0000:03:00.0`, as Intel GPUs expose no UUID in sysfs) and
  the DRM card name, which the Intel device plugin's device ids carry (`card1-0`).
* Local memory: xe publishes each tile's `physical_vram_size_bytes` (total only); Intel's out-of-tree i915
  builds publish `lmem_total_bytes` and `lmem_avail_bytes`. Where usage is not published the sample says so
  (`memory_used_known=False`) and the agent counts the GPU as full while any container holds it, rather than
  promise memory it cannot see.
* Frequency: i915 `gt_act_freq_mhz` (or `gt_cur_freq_mhz`), xe `tile*/gt*/freq0/act_freq` (or `cur_freq`).
* hwmon (`device/hwmon/hwmon*`): `energy1_input` (microjoules, a counter; power is its rate between two
  samples), `power1_max` (the sustained power limit, microwatts; 0 = no limit), `temp*_input` (millidegrees;
  a `vram` labelled sensor is the memory temperature).
* PCIe: `current_link_speed` / `max_link_speed` (GT/s -> generation) and the link widths.
* Health: a GPU seen before that is gone (driver unbound, fallen off the bus) is kept, unhealthy, "GPU is lost".
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from flexinfer import logs
from flexinfer.arch import INTEL, intel_arch_from_device_id

from .base import GpuSample

log = logs.get("flexinfer.agent.intel")

INTEL_VENDOR_ID = 0x8086
DRIVERS = ("xe", "i915")
MAX_CARDS = 64
_CARD = re.compile(r"^card(\d{1,4})$")
_GT_S_TO_GEN = {2.5: 1, 5.0: 2, 8.0: 3, 16.0: 4, 32.0: 5, 64.0: 6}
# Marketing names for common parts (the kernel has none); others are named by platform and device id.
PRODUCTS = {0x56A0: "Intel Arc A770 Graphics", 0x56A1: "Intel Arc A750 Graphics", 0x56A5: "Intel Arc A380 Graphics",
            0xE20B: "Intel Arc B580 Graphics", 0xE20C: "Intel Arc B570 Graphics"}


def _read(path: Path, limit: int = 4096) -> str | None:
    try:
        with open(path, errors="replace") as f:
            return f.read(limit).strip()
    except OSError:
        return None


_MAX_VALUE = 1 << 62  # no sysfs counter here comes near it; larger text is junk


def _int(path: Path) -> int | None:
    """A non-negative integer file (decimal or 0x hex), else None."""
    text = _read(path, 64)
    if text is None or len(text) > 20:
        return None
    try:
        v = int(text, 0)
    except ValueError:
        return None
    return v if 0 <= v < _MAX_VALUE else None


def _gen(text: str | None) -> int | None:
    """'16.0 GT/s PCIe' -> 4."""
    if not text:
        return None
    try:
        return _GT_S_TO_GEN.get(float(text.split()[0]))
    except (ValueError, IndexError):
        return None


@dataclass(frozen=True, slots=True)
class IntelCard:
    """One Intel GPU found in sysfs."""

    card: str  # "card1"
    path: Path  # /sys/class/drm/card1
    driver: str  # xe | i915
    device_id: int
    pci_bus_id: str

    @property
    def uuid(self) -> str:
        return f"intel-{self.pci_bus_id}"


def find_cards(sys_root: str | Path = "/sys") -> list[IntelCard]:
    """Intel display-class GPUs bound to xe or i915, by card number."""
    base = Path(sys_root) / "class" / "drm"
    try:
        names = sorted((n for n in os.listdir(base) if _CARD.match(n)), key=lambda n: int(n[4:]))[:MAX_CARDS]
    except OSError:
        return []
    out = []
    for name in names:
        dev = base / name / "device"
        if _int(dev / "vendor") != INTEL_VENDOR_ID:
            continue
        cls = _int(dev / "class")
        if cls is None or cls >> 16 != 0x03:  # PCI base class 03: display controller
            continue
        try:
            driver = os.path.basename(os.readlink(dev / "driver"))
            pci = os.path.basename(os.path.realpath(dev))
        except OSError:
            continue
        device_id = _int(dev / "device")
        if driver not in DRIVERS or device_id is None:
            continue
        out.append(IntelCard(name, base / name, driver, device_id, pci))
    return out


@dataclass
class _Gpu:
    card: IntelCard
    index: int
    unsupported: set[str] = field(default_factory=set)
    last_energy: tuple[float, float] | None = None  # (joules, monotonic seconds) for the power rate
    healthy: bool = True
    reason: str = ""
    last: GpuSample | None = None


class IntelSysfsReader:
    vendor = INTEL

    def __init__(self, sys_root: str | Path = "/sys", proc_root: str | Path = "/proc",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sys_root = Path(sys_root)
        self.proc_root = Path(proc_root)
        self.clock = clock
        self._gpus: dict[str, _Gpu] = {}  # by PCI bus id: card numbers can change across driver rebinds
        self._status = "not opened"
        self.driver_version = ""

    @property
    def status(self) -> str:
        return self._status

    def open(self) -> None:
        self.driver_version = (_read(self.proc_root / "sys" / "kernel" / "osrelease", 128) or "").split("-")[0]
        self._status = "ok"

    def close(self) -> None:
        self._status = "closed"

    def sample(self) -> list[GpuSample]:
        seen = {c.pci_bus_id: c for c in find_cards(self.sys_root)}
        for pci, card in seen.items():
            g = self._gpus.get(pci)
            if g is None:
                self._gpus[pci] = _Gpu(card, len(self._gpus))
            else:
                g.card, g.healthy, g.reason = card, True, ""
        out = []
        for pci, g in sorted(self._gpus.items(), key=lambda kv: kv[1].index):
            if pci not in seen:
                if g.healthy:
                    log.warning("intel_gpu_lost", pci=pci, card=g.card.card)
                g.healthy, g.reason = False, "GPU is lost"
                out.append(self._stale(g))
                continue
            try:
                out.append(self._sample(g))
            except Exception as e:  # a bug or a surprising file: never kill the loop
                log.error("intel_sample_error", pci=pci, error=repr(e))
                out.append(self._stale(g))
        return out

    def _stale(self, g: _Gpu) -> GpuSample:
        if g.last is not None:
            return replace(g.last, healthy=g.healthy, reason=g.reason)
        arch = intel_arch_from_device_id(g.card.device_id) or f"intel-{g.card.device_id:04x}"
        return GpuSample(index=g.index, uuid=g.card.uuid, vendor=INTEL, arch=arch, healthy=False,
                         reason=g.reason or "GPU unavailable", drm_card=g.card.card)

    def _value(self, g: _Gpu, metric: str, *paths: Path) -> int | None:
        """The first readable integer among `paths`; none readable once -> unsupported, never read again."""
        if metric in g.unsupported:
            return None
        for p in paths:
            v = _int(p)
            if v is not None:
                return v
        g.unsupported.add(metric)
        log.info("intel_metric_unsupported", pci=g.card.pci_bus_id, metric=metric)
        return None

    def _sample(self, g: _Gpu) -> GpuSample:
        c = g.card
        dev = c.path / "device"
        arch = intel_arch_from_device_id(c.device_id) or f"intel-{c.device_id:04x}"
        s = GpuSample(index=g.index, uuid=c.uuid, vendor=INTEL, arch=arch,
                      product=PRODUCTS.get(c.device_id, f"Intel GPU {arch} {c.device_id:04x}"),
                      pci_bus_id=c.pci_bus_id, drm_card=c.card, driver_version=self.driver_version)
        total, used = self._memory(g)
        s.memory_total_bytes = total or 0
        s.memory_used_bytes = used if used is not None else 0
        s.memory_used_known = used is not None
        s.unified_memory = not total  # an integrated GPU: its memory is system RAM
        mhz = self._value(g, "clocks", c.path / "gt_act_freq_mhz", c.path / "gt_cur_freq_mhz",
                          *sorted(dev.glob("tile0/gt0/freq0/act_freq")), *sorted(dev.glob("tile0/gt0/freq0/cur_freq")))
        s.sm_clock_hertz = None if mhz is None else mhz * 1e6
        self._hwmon(g, s, dev)
        s.pcie_gen_current = _gen(_read(dev / "current_link_speed", 64))
        s.pcie_gen_max = _gen(_read(dev / "max_link_speed", 64))
        s.pcie_width_current = _int(dev / "current_link_width")
        s.pcie_width_max = _int(dev / "max_link_width")
        s.healthy, s.reason = g.healthy, g.reason
        s.unsupported = frozenset(g.unsupported)
        g.last = s
        return s

    def _memory(self, g: _Gpu) -> tuple[int | None, int | None]:
        """(total, used) local-memory bytes; used None when the driver does not publish it."""
        c, dev = g.card, g.card.path / "device"
        if c.driver == "xe":
            tiles = [v for p in sorted(dev.glob("tile*/physical_vram_size_bytes"))
                     + sorted(dev.glob("tile*/memory/physical_vram_size_bytes")) if (v := _int(p)) is not None]
            return (sum(tiles) if tiles else None), None
        total = _int(c.path / "lmem_total_bytes") or _int(dev / "lmem_total_bytes")
        avail = _int(c.path / "lmem_avail_bytes")
        if avail is None:
            avail = _int(dev / "lmem_avail_bytes")
        if total is None:
            return None, None
        return total, (max(0, total - avail) if avail is not None else None)

    def _hwmon(self, g: _Gpu, s: GpuSample, dev: Path) -> None:
        mons = sorted(dev.glob("hwmon/hwmon*"))
        if not mons:
            g.unsupported.add("hwmon")
            return
        mon = mons[0]
        uj = self._value(g, "energy", mon / "energy1_input")
        if uj is not None:
            joules, now = uj / 1e6, self.clock()
            s.energy_joules_total = joules
            if g.last_energy is not None and now > g.last_energy[1] and joules >= g.last_energy[0]:
                s.power_usage_watts = (joules - g.last_energy[0]) / (now - g.last_energy[1])
            g.last_energy = (joules, now)
        limit = self._value(g, "power_limit", mon / "power1_max", mon / "power1_rated_max")
        s.power_limit_watts = limit / 1e6 if limit else None
        for temp in sorted(mon.glob("temp*_input")):
            label = (_read(temp.with_name(temp.name.replace("_input", "_label")), 64) or "").lower()
            v = _int(temp)
            if v is None:
                continue
            if label in ("vram", "mctrl", "memory"):
                s.memory_temperature_celsius = v / 1000.0
            elif s.temperature_celsius is None and label in ("", "pkg", "card", "gpu"):
                s.temperature_celsius = v / 1000.0
