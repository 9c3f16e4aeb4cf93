"""AMD static facts from KFD sysfs, no ROCm userspace needed (docs/gpu-architectures.md).

`/sys/class/kfd/kfd/topology/nodes/<n>/properties` holds `key value` lines; GPU nodes have a
non-zero `gfx_target_version` (decimal major*10000+minor*100+stepping, decoded by
flexinfer.arch.decode_gfx_target_version). VRAM size comes from `mem_banks/*/properties`
(`size_in_bytes`), usage from amdgpu's `/sys/class/drm/renderD<N>/device/mem_info_vram_used`.
The sysfs root is injectable for tests. Junk lines and unreadable files are skipped, never raised.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flexinfer import logs
from flexinfer.arch import AMD, decode_gfx_target_version

from .base import GpuSample


def _is_int(s: str) -> bool:
    """ASCII digits only: str.isdigit() also accepts '²', which int() rejects."""
    return s.isascii() and s.isdigit()

log = logs.get("flexinfer.agent.kfd")

TOPOLOGY = "class/kfd/kfd/topology/nodes"
# APUs: VRAM is carved out of system RAM (Strix Halo gfx1151, Strix Point, Krackan, Phoenix, Rembrandt, ...)
APU_TARGETS = frozenset({"gfx1151", "gfx1150", "gfx1152", "gfx1153", "gfx1103", "gfx1035", "gfx1036", "gfx90c",
                         "gfx1037", "gfx1013"})
# heap_type 1 = FB public, 2 = FB private (device-local VRAM); 0 = system memory
_VRAM_HEAPS = {1, 2}


def parse_properties(text: str) -> dict[str, int]:
    """`key value` lines -> ints; lines that are not exactly a name and an integer are ignored."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 2:
            continue
        try:
            out[parts[0]] = int(parts[1], 0)
        except ValueError:
            continue
    return out


@dataclass(frozen=True, slots=True)
class KfdNode:
    node_id: int
    gfx: str  # "gfx1100"; "" when the value could not be decoded
    gfx_target_version: int
    vendor_id: int = 0
    device_id: int = 0
    drm_render_minor: int = -1
    location_id: int = 0
    domain: int = 0
    unique_id: int = 0
    simd_count: int = 0
    cpu_cores_count: int = 0
    vram_bytes: int = 0

    @property
    def pci_bus_id(self) -> str:
        loc = self.location_id
        return f"{self.domain:04x}:{(loc >> 8) & 0xFF:02x}:{(loc >> 3) & 0x1F:02x}.{loc & 0x7}"


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def read_kfd_nodes(sys_root: str | Path = "/sys") -> list[KfdNode]:
    """GPU nodes of the KFD topology, sorted by node id (CPU nodes are skipped)."""
    base = Path(sys_root) / TOPOLOGY
    try:
        entries = sorted(base.iterdir(), key=lambda p: (not _is_int(p.name), int(p.name) if _is_int(p.name) else 0))
    except OSError:
        return []
    nodes: list[KfdNode] = []
    for d in entries:
        if not _is_int(d.name):
            continue
        text = _read(d / "properties")
        if text is None:
            continue
        p = parse_properties(text)
        gtv = p.get("gfx_target_version", 0)
        if gtv <= 0:
            continue  # CPU node
        try:
            gfx = decode_gfx_target_version(gtv)
        except Exception as e:
            log.warning("kfd_bad_gfx_target_version", node=d.name, value=gtv, error=str(e))
            gfx = ""
        vram = 0
        banks = d / "mem_banks"
        try:
            bank_dirs = list(banks.iterdir()) if banks.is_dir() else []
        except OSError:
            bank_dirs = []
        for b in bank_dirs:
            bp = parse_properties(_read(b / "properties") or "")
            if bp.get("heap_type", -1) in _VRAM_HEAPS:
                vram += max(0, bp.get("size_in_bytes", 0))
        nodes.append(KfdNode(
            node_id=int(d.name), gfx=gfx, gfx_target_version=gtv, vendor_id=p.get("vendor_id", 0),
            device_id=p.get("device_id", 0), drm_render_minor=p.get("drm_render_minor", -1),
            location_id=p.get("location_id", 0), domain=p.get("domain", 0), unique_id=p.get("unique_id", 0),
            simd_count=p.get("simd_count", 0), cpu_cores_count=p.get("cpu_cores_count", 0), vram_bytes=vram,
        ))
    return nodes


def drm_vram_bytes(sys_root: str | Path, render_minor: int) -> tuple[int | None, int | None]:
    """(total, used) VRAM bytes from amdgpu sysfs for /dev/dri/renderD<minor>, None if unreadable."""
    dev = Path(sys_root) / "class/drm" / f"renderD{render_minor}" / "device"
    vals = []
    for name in ("mem_info_vram_total", "mem_info_vram_used"):
        t = _read(dev / name)
        try:
            vals.append(int(t.strip()) if t is not None else None)
        except ValueError:
            vals.append(None)
    return vals[0], vals[1]


class KfdReader:
    """Static AMD facts when amdsmi is unusable: gfx target, VRAM size (and usage when amdgpu shows it)."""

    vendor = AMD

    def __init__(self, sys_root: str | Path = "/sys", reason: str = "") -> None:
        self.sys_root = sys_root
        self._reason = reason

    @property
    def status(self) -> str:
        return f"amdsmi unavailable ({self._reason}); KFD sysfs only" if self._reason else "ok"

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def sample(self) -> list[GpuSample]:
        out = []
        for i, n in enumerate(read_kfd_nodes(self.sys_root)):
            total, used = drm_vram_bytes(self.sys_root, n.drm_render_minor)
            total = total or n.vram_bytes
            used = used if used is not None else 0
            unified = n.gfx in APU_TARGETS or n.cpu_cores_count > 0
            out.append(GpuSample(
                index=i, uuid=f"{n.unique_id:016x}" if n.unique_id else f"kfd-node-{n.node_id}", vendor=AMD,
                arch=n.gfx, pci_bus_id=n.pci_bus_id, memory_total_bytes=total, memory_used_bytes=used,
                unified_memory=unified,
                healthy=bool(n.gfx), reason="" if n.gfx else f"unknown gfx_target_version {n.gfx_target_version}",
            ))
        return out
