"""flexinfer.units: memory quantities, MiB labels, MiB fields."""

from __future__ import annotations

import pytest

from flexinfer.errors import ParseError
from flexinfer.units import GIB, MIB, mib_to_label, parse_mib, parse_quantity_bytes


@pytest.mark.parametrize(("value", "expected"), [
    ("0", 0), ("1", 1), ("1024", 1024), ("1k", 1000), ("1K", 1000), ("1Ki", 1024), ("1M", 10**6), ("1Mi", MIB),
    ("1G", 10**9), ("24Gi", 24 * GIB), ("1T", 10**12), ("1Ti", 1024**4), ("1.5Gi", int(1.5 * GIB)),
    ("0.5Mi", MIB // 2), (" 64Gi ", 64 * GIB), ("128Gi", 128 * GIB), (16, 16), ("000012Mi", 12 * MIB),
])
def test_parse_quantity_bytes(value: str, expected: int) -> None:
    assert parse_quantity_bytes(value) == expected


@pytest.mark.parametrize("junk", ["", " ", "Gi", "24 Gi", "24gi", "24GB", "-1Gi", "1e3", "1.Gi", ".5Gi", "24Gi\nx",
                                  "0x10", "twenty", "24Pi", "\u0661\u0662Gi", "1" + "0" * 400, "9" * 5000 + "Gi", None,
                                  [], "1.5.5Mi", "NaN", "inf"])
def test_parse_quantity_bytes_junk(junk: object) -> None:
    with pytest.raises(ParseError, match="memory quantity") as e:
        parse_quantity_bytes(junk)  # type: ignore[arg-type]
    assert "expected" in str(e.value)


@pytest.mark.parametrize(("mib", "label"), [
    (24560, "24Gi"),  # RX 7900 XTX
    (24576, "24Gi"), (24467, "24Gi"),  # RTX PRO 4000
    (16368, "16Gi"),  # Radeon VII
    (6144, "6Gi"),  # GTX 980 Ti
    (81559, "80Gi"),  # H100 80GB
    (15360, "15Gi"),  # T4 as NVML reports it
    (49152, "48Gi"), (196592, "192Gi"), (1024, "1Gi"), (1000, "1Gi"), (900, "900Mi"), (512, "512Mi"), (0, "0Mi"),
    (1, "1Mi"), (1536, "1536Mi"), (23000, "22Gi"), (25000, "24Gi"),
])
def test_mib_to_label(mib: int, label: str) -> None:
    assert mib_to_label(mib) == label
    # nearest whole GiB when within 5 %: the label, read back, is off by at most 5 %
    assert parse_quantity_bytes(label) / MIB <= mib * 1.05 + 1


@pytest.mark.parametrize(("value", "expected"), [(0, 0), (6144, 6144), ("24560", 24560), (" 12 ", 12),
                                                 (1 << 40, 1 << 40)])
def test_parse_mib(value: object, expected: int) -> None:
    assert parse_mib(value, "field") == expected


@pytest.mark.parametrize("junk", [-1, "-1", "1.5", 1.5, "", "abc", True, False, None, "\u00b2", "\u0661\u0662",
                                  (1 << 40) + 1, "9" * 5000, "1e3", [], {}, float("nan"), "0x10"])
def test_parse_mib_junk_names_the_field(junk: object) -> None:
    with pytest.raises(ParseError, match="my field") as e:
        parse_mib(junk, "my field")
    assert "MiB" in str(e.value)


def test_parse_mib_huge_int_message() -> None:
    with pytest.raises(ParseError, match="too large to show"):
        parse_mib(10**5000, "my field")
