"""flexinfer.arch: every row of the NVIDIA and AMD tables in docs/gpu-architectures.md, KFD decoding, junk."""

from __future__ import annotations

import pytest

from flexinfer.arch import (
    AMD,
    AMD_GFX,
    INTEL,
    NONE,
    NVIDIA,
    amd_arch,
    arch_info,
    decode_gfx_target_version,
    encode_gfx_target_version,
    normalize_vendor,
    nvidia_arch,
    nvidia_family,
    parse_compute_capability,
)
from flexinfer.errors import ParseError

# (major, minor, sm, family) -- docs/gpu-architectures.md (GFD getArchFamily).
NVIDIA_ROWS = [
    (1, 0, "sm_10", "tesla"), (1, 3, "sm_13", "tesla"),
    (2, 0, "sm_20", "fermi"), (2, 1, "sm_21", "fermi"),
    (3, 0, "sm_30", "kepler"), (3, 5, "sm_35", "kepler"), (3, 7, "sm_37", "kepler"),
    (5, 0, "sm_50", "maxwell"), (5, 2, "sm_52", "maxwell"), (5, 3, "sm_53", "maxwell"),
    (6, 0, "sm_60", "pascal"), (6, 1, "sm_61", "pascal"), (6, 2, "sm_62", "pascal"),
    (7, 0, "sm_70", "volta"), (7, 2, "sm_72", "volta"), (7, 4, "sm_74", "volta"),
    (7, 5, "sm_75", "turing"),
    (8, 0, "sm_80", "ampere"), (8, 6, "sm_86", "ampere"), (8, 7, "sm_87", "ampere"), (8, 8, "sm_88", "ampere"),
    (8, 9, "sm_89", "ada-lovelace"),
    (9, 0, "sm_90", "hopper"),
    (10, 0, "sm_100", "blackwell"), (10, 3, "sm_103", "blackwell"),
    (11, 0, "sm_110", "undefined"),
    (12, 0, "sm_120", "blackwell"), (12, 1, "sm_121", "blackwell"),
    (13, 0, "sm_130", "rubin"), (13, 5, "sm_135", "rubin"),
    (4, 0, "sm_40", "undefined"), (14, 0, "sm_140", "undefined"),
]


@pytest.mark.parametrize(("major", "minor", "sm", "family"), NVIDIA_ROWS)
def test_nvidia_cc_to_sm_and_family(major: int, minor: int, sm: str, family: str) -> None:
    info = nvidia_arch(major, minor)
    assert info.vendor == NVIDIA
    assert info.arch == sm
    assert info.family == family
    assert nvidia_family(major, minor) == family
    assert info.compute == f"{major}.{minor}"
    assert info.cc == (major, minor)
    assert info.known is (family != "undefined")


@pytest.mark.parametrize(("major", "minor", "sm", "family"), NVIDIA_ROWS)
def test_nvidia_arch_label_round_trip(major: int, minor: int, sm: str, family: str) -> None:
    info = arch_info("nvidia", sm)
    assert (info.arch, info.family, info.cc) == (sm, family, (major, minor))
    assert arch_info("NVIDIA", sm.upper()) == info
    assert parse_compute_capability(f"{major}.{minor}") == (major, minor)


@pytest.mark.parametrize("suffixed", ["sm_90a", "sm_100a", "sm_120f"])
def test_nvidia_arch_specific_suffix_accepted(suffixed: str) -> None:
    assert arch_info("nvidia", suffixed).arch == suffixed.rstrip("af")


@pytest.mark.parametrize(("major", "minor"), [(-1, 0), (0, -1), (5, 10), (100, 0), (7, 99)])
def test_nvidia_arch_out_of_range(major: int, minor: int) -> None:
    with pytest.raises(ParseError, match="compute capability"):
        nvidia_arch(major, minor)


@pytest.mark.parametrize("junk", ["", "sm_", "sm_5", "sm_1000", "gfx1100", "52", "sm-52", "sm_5x", "sm_52b",
                                  "sm_\u0665\u0662x", "None", "sm_52 extra"])
def test_nvidia_arch_junk(junk: str) -> None:
    with pytest.raises(ParseError, match="NVIDIA arch") as e:
        arch_info("nvidia", junk)
    assert "sm_XY" in str(e.value)


@pytest.mark.parametrize("junk", ["", "5", "5.", ".2", "5.2.1", "x.y", "100.0", "5.10", "abc"])
def test_compute_capability_junk(junk: str) -> None:
    with pytest.raises(ParseError, match="compute capability"):
        parse_compute_capability(junk)


# (gfx, family) -- docs/gpu-architectures.md, every row.
AMD_ROWS = [
    ("gfx900", "gcn5"), ("gfx906", "gcn5"),
    ("gfx908", "cdna1"), ("gfx90a", "cdna2"), ("gfx942", "cdna3"), ("gfx950", "cdna4"),
    ("gfx1010", "rdna1"), ("gfx1012", "rdna1"),
    ("gfx1030", "rdna2"), ("gfx1031", "rdna2"), ("gfx1032", "rdna2"),
    ("gfx1100", "rdna3"), ("gfx1101", "rdna3"), ("gfx1102", "rdna3"), ("gfx1103", "rdna3"),
    ("gfx1150", "rdna3.5"), ("gfx1151", "rdna3.5"), ("gfx1152", "rdna3.5"),
    ("gfx1200", "rdna4"), ("gfx1201", "rdna4"),
]


@pytest.mark.parametrize(("gfx", "family"), AMD_ROWS)
def test_amd_gfx_to_family(gfx: str, family: str) -> None:
    info = amd_arch(gfx)
    assert (info.vendor, info.arch, info.family, info.known) == (AMD, gfx, family, True)
    assert info.compute == "" and info.cc is None
    assert info.codename
    assert arch_info("amd", gfx) == info
    assert arch_info("AMD", gfx.upper()) == info
    assert arch_info("rocm", f"  {gfx} ") == info


def test_amd_table_covers_reference_rows() -> None:
    assert {g for g, _ in AMD_ROWS} <= set(AMD_GFX)


@pytest.mark.parametrize("gfx", ["gfx1300", "gfx9ff", "gfx1250"])
def test_amd_unknown_well_formed_target(gfx: str) -> None:
    info = amd_arch(gfx)
    assert info.family == "unknown" and not info.known and info.arch == gfx


@pytest.mark.parametrize("junk", ["", "gfx", "gfx12", "gfx123456", "1100", "gfx11 00", "gfxzzz", "sm_52", "gfx-1100"])
def test_amd_arch_junk(junk: str) -> None:
    with pytest.raises(ParseError, match="gfx target") as e:
        amd_arch(junk)
    assert "e.g. gfx1100" in str(e.value)


# KFD gfx_target_version -> ISA name (docs/gpu-architectures.md).
KFD_ROWS = [
    (90000, "gfx900"), (90006, "gfx906"), (90008, "gfx908"), (90010, "gfx90a"), (90402, "gfx942"),
    (90500, "gfx950"), (100100, "gfx1010"), (100102, "gfx1012"), (100300, "gfx1030"), (100301, "gfx1031"),
    (110000, "gfx1100"), (110001, "gfx1101"), (110002, "gfx1102"), (110003, "gfx1103"), (110500, "gfx1150"),
    (110501, "gfx1151"), (110502, "gfx1152"), (120000, "gfx1200"), (120001, "gfx1201"),
]


@pytest.mark.parametrize(("value", "gfx"), KFD_ROWS)
def test_decode_gfx_target_version(value: int, gfx: str) -> None:
    assert decode_gfx_target_version(value) == gfx
    assert decode_gfx_target_version(str(value)) == gfx
    assert decode_gfx_target_version(f" {value}\n") == gfx  # as read from the sysfs properties file
    assert encode_gfx_target_version(gfx) == value
    assert encode_gfx_target_version(decode_gfx_target_version(value)) == value
    assert amd_arch(decode_gfx_target_version(value)).known


@pytest.mark.parametrize("junk", [0, -1, "0", "-90010", "abc", "", " ", "None", None, "90010.0", 90010.5,
                                  "0x15f9a", 10**30, "9" * 5000, 90016, 91600, 990000 * 100, True, [90010]])
def test_decode_gfx_target_version_junk(junk: object) -> None:
    with pytest.raises(ParseError, match="gfx_target_version") as e:
        decode_gfx_target_version(junk)  # type: ignore[arg-type]
    assert "expected" in str(e.value)


def test_decode_zero_says_cpu_node() -> None:
    with pytest.raises(ParseError, match="CPU node"):
        decode_gfx_target_version(0)


@pytest.mark.parametrize("junk", ["", "gfx", "sm_52", "gfxabc", "gfxa0a", "nonsense"])
def test_encode_gfx_target_version_junk(junk: str) -> None:
    with pytest.raises(ParseError, match="gfx target"):
        encode_gfx_target_version(junk)


@pytest.mark.parametrize(("raw", "vendor"), [
    ("nvidia", NVIDIA), ("NVIDIA", NVIDIA), ("Nvidia", NVIDIA), (" nvidia\n", NVIDIA),
    ("amd", AMD), ("AMD", AMD), ("Amd", AMD), ("rocm", AMD), ("ROCm", AMD),
    ("intel", INTEL), ("INTEL", INTEL), ("none", NONE), ("None", NONE), ("cpu", NONE), ("CPU", NONE),
])
def test_normalize_vendor(raw: str, vendor: str) -> None:
    assert normalize_vendor(raw) == vendor


@pytest.mark.parametrize("junk", ["", " ", "nvidia.com/gpu", "ati", "radeon", "geforce", "mixed", "nvidia amd",
                                  "0", "\uff4e\uff56\uff49\uff44\uff49\uff41", None, 0, [], 10**5000],
                         ids=lambda v: type(v).__name__ if not isinstance(v, str) else repr(v))
def test_normalize_vendor_junk(junk: object) -> None:
    with pytest.raises(ParseError, match="GPU vendor") as e:
        normalize_vendor(junk)  # type: ignore[arg-type]
    assert "one of nvidia, amd, intel, none" in str(e.value)


@pytest.mark.parametrize("junk", ["", "arm", "MIXED"])
def test_arch_info_rejects_bad_vendor(junk: str) -> None:
    with pytest.raises(ParseError, match="GPU vendor"):
        arch_info(junk, "sm_52")


def test_arch_info_intel_and_none() -> None:
    intel = arch_info("intel", "Xe-HPG")
    assert (intel.vendor, intel.arch, intel.family, intel.known) == (INTEL, "xe-hpg", "xe", False)
    assert arch_info("intel", "").arch == "unknown"
    none = arch_info("cpu", "whatever")
    assert (none.vendor, none.arch, none.family, none.known) == (NONE, "none", "none", False)
    assert none.cc is None


def test_arch_info_is_hashable_and_frozen() -> None:
    info = arch_info("nvidia", "sm_52")
    assert {info: 1}[arch_info("nvidia", "sm_52")] == 1
    with pytest.raises(AttributeError):
        info.family = "pascal"  # type: ignore[misc]


@pytest.mark.parametrize(("raw", "arch"), [("Xe-HPG", "xe-hpg"), ("Arc A770 (DG2)", "arc-a770-dg2"), ("!!!", "unknown"),
                                           ("x" * 100, "x" * 63)])
def test_intel_arch_is_label_safe(raw: str, arch: str) -> None:
    info = arch_info("intel", raw)
    assert info.arch == arch and len(info.arch) <= 63


def test_huge_int_does_not_break_the_error_message() -> None:
    with pytest.raises(ParseError, match="too large to show"):
        decode_gfx_target_version(10**5000)
