"""GPU architecture table: the one place that maps NVIDIA compute capability and AMD gfx targets
to architecture names and families.

Family names for NVIDIA follow NVIDIA GPU Feature Discovery (GFD >= 0.20) so operators see the
same words, but the mapping is computed here from the compute capability rather than trusted
from a GFD label whose value depends on the GFD version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from flexinfer.errors import ParseError, text_of

NVIDIA = "nvidia"
AMD = "amd"
INTEL = "intel"
NONE = "none"
VENDORS = (NVIDIA, AMD, INTEL, NONE)


@dataclass(frozen=True, slots=True)
class ArchInfo:
    """What the scheduler needs to know about one GPU architecture."""

    vendor: str
    arch: str  # label-safe target: "sm_52", "gfx1100"
    family: str  # "maxwell", "rdna3", ...
    compute: str = ""  # NVIDIA compute capability "5.2"; empty for AMD
    codename: str = ""
    known: bool = True  # False when the target is not in our table

    @property
    def cc(self) -> tuple[int, int] | None:
        if not self.compute:
            return None
        major, minor = self.compute.split(".")
        return int(major), int(minor)


# --- NVIDIA ---------------------------------------------------------------------------------

def nvidia_family(major: int, minor: int) -> str:
    """Compute capability -> family, as GFD v0.20 `getArchFamily` does (11.x is `undefined`)."""
    if major == 1:
        return "tesla"
    if major == 2:
        return "fermi"
    if major == 3:
        return "kepler"
    if major == 5:
        return "maxwell"
    if major == 6:
        return "pascal"
    if major == 7:
        return "volta" if minor < 5 else "turing"
    if major == 8:
        return "ada-lovelace" if minor >= 9 else "ampere"
    if major == 9:
        return "hopper"
    if major in (10, 12):
        return "blackwell"
    if major == 13:
        return "rubin"
    return "undefined"


def nvidia_arch(major: int, minor: int) -> ArchInfo:
    if major < 0 or minor < 0 or major > 99 or minor > 9:
        raise ParseError("compute capability", f"{major}.{minor}", "major 0-99 and minor 0-9")
    family = nvidia_family(major, minor)
    return ArchInfo(NVIDIA, f"sm_{major}{minor}", family, f"{major}.{minor}", known=family != "undefined")


_CC_RE = re.compile(r"^(\d{1,2})\.(\d)$")
_SM_RE = re.compile(r"^sm_(\d{1,2})(\d)[af]?$")


def parse_compute_capability(value: str) -> tuple[int, int]:
    """'5.2' -> (5, 2). Rejects junk with a ParseError."""
    m = _CC_RE.match(text_of(value).strip())
    if not m:
        raise ParseError("compute capability", value, "MAJOR.MINOR, e.g. 8.9")
    return int(m.group(1)), int(m.group(2))


# --- AMD ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Gfx:
    family: str
    codename: str


# gfx target -> family. Sources: ROCm gpu-specs tables, LLVM AMDGPUUsage (docs/gpu-architectures.md).
AMD_GFX: dict[str, _Gfx] = {
    "gfx900": _Gfx("gcn5", "vega10"),
    "gfx906": _Gfx("gcn5", "vega20"),
    "gfx908": _Gfx("cdna1", "arcturus"),
    "gfx90a": _Gfx("cdna2", "aldebaran"),
    "gfx940": _Gfx("cdna3", "mi300"),
    "gfx941": _Gfx("cdna3", "mi300"),
    "gfx942": _Gfx("cdna3", "mi300"),
    "gfx950": _Gfx("cdna4", "mi350"),
    "gfx1010": _Gfx("rdna1", "navi10"),
    "gfx1011": _Gfx("rdna1", "navi12"),
    "gfx1012": _Gfx("rdna1", "navi14"),
    "gfx1030": _Gfx("rdna2", "navi21"),
    "gfx1031": _Gfx("rdna2", "navi22"),
    "gfx1032": _Gfx("rdna2", "navi23"),
    "gfx1034": _Gfx("rdna2", "navi24"),
    "gfx1035": _Gfx("rdna2", "rembrandt"),
    "gfx1036": _Gfx("rdna2", "raphael"),
    "gfx1100": _Gfx("rdna3", "navi31"),
    "gfx1101": _Gfx("rdna3", "navi32"),
    "gfx1102": _Gfx("rdna3", "navi33"),
    "gfx1103": _Gfx("rdna3", "phoenix"),
    "gfx1150": _Gfx("rdna3.5", "strix-point"),
    "gfx1151": _Gfx("rdna3.5", "strix-halo"),
    "gfx1152": _Gfx("rdna3.5", "krackan"),
    "gfx1153": _Gfx("rdna3.5", "gfx1153"),
    "gfx1200": _Gfx("rdna4", "navi44"),
    "gfx1201": _Gfx("rdna4", "navi48"),
}

_GFX_RE = re.compile(r"^gfx[0-9a-f]{3,5}$")


def amd_arch(gfx: str) -> ArchInfo:
    """gfx target -> ArchInfo. Unknown but well-formed targets get family 'unknown'."""
    target = text_of(gfx).strip().lower()
    if not _GFX_RE.match(target):
        raise ParseError("gfx target", gfx, "gfx followed by 3-5 hex digits, e.g. gfx1100")
    row = AMD_GFX.get(target)
    if row is None:
        return ArchInfo(AMD, target, "unknown", known=False)
    return ArchInfo(AMD, target, row.family, codename=row.codename)


def decode_gfx_target_version(value: int | str) -> str:
    """KFD `gfx_target_version` (major*10000 + minor*100 + stepping) -> ISA name.

    Minor and stepping are printed in hex: 90010 -> gfx90a, 110000 -> gfx1100, 110501 -> gfx1151.
    CPU nodes report 0, which is not a GPU: that raises ParseError.
    """
    try:
        v = int(str(value).strip())
    except ValueError:
        raise ParseError("gfx_target_version", value, "a decimal integer such as 110000") from None
    if v <= 0:
        raise ParseError("gfx_target_version", value, "a positive value (0 means a CPU node)")
    major, rest = divmod(v, 10000)
    minor, stepping = divmod(rest, 100)
    if major == 0 or major > 99 or minor > 15 or stepping > 15:
        raise ParseError("gfx_target_version", value, "major*10000 + minor*100 + stepping, minor/stepping < 16")
    return f"gfx{major}{minor:x}{stepping:x}"


def encode_gfx_target_version(gfx: str) -> int:
    """Inverse of decode_gfx_target_version (for fakes and tests)."""
    target = amd_arch(gfx).arch
    digits = target[3:]
    if not digits[:-2].isdigit():
        raise ParseError("gfx target", gfx, "gfx + decimal major + hex minor + hex stepping, e.g. gfx90a")
    major, minor, stepping = int(digits[:-2]), int(digits[-2], 16), int(digits[-1], 16)
    return major * 10000 + minor * 100 + stepping


# --- Intel ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _IntelPlatform:
    family: str  # Xe generation: xe-hpg, xe2-hpg, xe-hpc, xe-lpg, xe2-lpg
    codename: str
    device_ids: frozenset[int]  # PCI device ids (the kernel's i915/xe PCI id tables)


# Intel platform (the arch we label: the kernel's platform name) -> family. Device ids from the Linux
# kernel's Intel PCI id tables (include/drm/intel/pciids.h); docs/intel-gpus.md.
INTEL_PLATFORMS: dict[str, _IntelPlatform] = {
    "dg2": _IntelPlatform("xe-hpg", "alchemist", frozenset({  # Arc A-series; Data Center GPU Flex (ATS-M)
        0x5690, 0x5691, 0x5692, 0x56A0, 0x56A1, 0x56A2, 0x56BE, 0x56BF,  # G10
        0x5693, 0x5694, 0x5695, 0x56A5, 0x56A6, 0x56B0, 0x56B1, 0x56BA, 0x56BB, 0x56BC, 0x56BD,  # G11
        0x5696, 0x5697, 0x56A3, 0x56A4, 0x56B2, 0x56B3,  # G12
        0x56C0, 0x56C1, 0x56C2})),  # ATS-M (Flex 170 / 140)
    "bmg": _IntelPlatform("xe2-hpg", "battlemage", frozenset({  # Arc B-series
        0xE202, 0xE20B, 0xE20C, 0xE20D, 0xE210, 0xE211, 0xE212, 0xE215, 0xE216})),
    "pvc": _IntelPlatform("xe-hpc", "ponte-vecchio", frozenset({  # Data Center GPU Max
        0x0B69, 0x0B6E, 0x0BD0, 0x0BD1, 0x0BD2, 0x0BD4, 0x0BD5, 0x0BD6, 0x0BD7, 0x0BD8, 0x0BD9, 0x0BDA,
        0x0BDB})),
    "mtl": _IntelPlatform("xe-lpg", "meteor-lake", frozenset({0x7D40, 0x7D45, 0x7D55, 0x7D60, 0x7DD5})),
    "arl": _IntelPlatform("xe-lpg", "arrow-lake", frozenset({0x7D41, 0x7D51, 0x7D67, 0x7DD1, 0xB640})),
    "lnl": _IntelPlatform("xe2-lpg", "lunar-lake", frozenset({0x6420, 0x64A0, 0x64B0})),
}
_INTEL_BY_DEVICE = {d: name for name, p in INTEL_PLATFORMS.items() for d in p.device_ids}


def intel_arch_from_device_id(device_id: int) -> str:
    """PCI device id -> Intel platform ("dg2" for 0x56A0, the Arc A770); "" when not in the table."""
    return _INTEL_BY_DEVICE.get(device_id, "")


def intel_arch(arch: str) -> ArchInfo:
    """An Intel platform name -> ArchInfo; unknown names stay usable (family "xe", known=False)."""
    a = re.sub(r"[^a-z0-9_.-]+", "-", text_of(arch).strip().lower()).strip("-_.")[:63].strip("-_.") or "unknown"
    row = INTEL_PLATFORMS.get(a)
    if row is None:
        return ArchInfo(INTEL, a, "xe", known=False)
    return ArchInfo(INTEL, a, row.family, codename=row.codename)


# Longest arch / vendor text whose parse is memoised (longer junk is parsed, never kept).
_MEMO_MAX_CHARS = 64


def arch_info(vendor: str, arch: str) -> ArchInfo:
    """Parse an arch label value for a vendor: 'sm_52' (nvidia) or 'gfx906' (amd).

    Pure, and ArchInfo is immutable, so results for short string inputs are memoised (bounded LRU):
    the extender calls this for every GPU of every node it parses. Junk still raises every time.
    """
    if type(vendor) is str and type(arch) is str and len(arch) <= _MEMO_MAX_CHARS and len(vendor) <= _MEMO_MAX_CHARS:
        return _arch_info_memo(vendor, arch)
    return _arch_info(vendor, arch)


def _arch_info(vendor: str, arch: str) -> ArchInfo:
    vendor = normalize_vendor(vendor)
    if vendor == NVIDIA:
        m = _SM_RE.match(text_of(arch).strip().lower())
        if not m:
            raise ParseError("NVIDIA arch", arch, "sm_XY, e.g. sm_89")
        return nvidia_arch(int(m.group(1)), int(m.group(2)))
    if vendor == AMD:
        return amd_arch(arch)
    if vendor == INTEL:
        return intel_arch(arch)
    return ArchInfo(NONE, "none", "none", known=False)


_arch_info_memo = lru_cache(maxsize=1024)(_arch_info)

_VENDOR_ALIASES = {"nvidia": NVIDIA, "amd": AMD, "rocm": AMD, "intel": INTEL, "none": NONE, "cpu": NONE}


def normalize_vendor(value: str) -> str:
    """Vendor names are read case-insensitively ('NVIDIA' from the Go FlexInfer, 'nvidia' here)."""
    if type(value) is str:
        known = _VENDOR_ALIASES.get(value)  # fast path: the exact spellings the agent writes
        if known is not None:
            return known
    v = "" if value is None else text_of(value).strip().lower()  # Python None is missing, not vendor "none"
    if v not in _VENDOR_ALIASES:
        raise ParseError("GPU vendor", value, "one of nvidia, amd, intel, none")
    return _VENDOR_ALIASES[v]
