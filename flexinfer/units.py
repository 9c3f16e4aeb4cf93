"""Quantities: Kubernetes-style memory strings and MiB conversions."""

from __future__ import annotations

import re

from flexinfer.errors import ParseError, text_of

MIB = 1024 * 1024
GIB = 1024 * MIB

_QTY_RE = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|K|M|G|T|k)?$", re.ASCII)
_FACTORS = {
    None: 1, "k": 1000, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4,
    "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4,
}


def parse_quantity_bytes(value: str) -> int:
    """'24Gi' -> bytes. Only the suffixes Kubernetes uses for memory."""
    m = _QTY_RE.match(text_of(value).strip())
    if not m:
        raise ParseError("memory quantity", value, "a number with an optional suffix Ki/Mi/Gi/Ti/K/M/G/T")
    try:
        return int(float(m.group(1)) * _FACTORS[m.group(2)])
    except (OverflowError, ValueError):  # absurdly long digit strings
        raise ParseError("memory quantity", value, "a number small enough to be a memory size") from None


def mib_to_label(mib: int) -> str:
    """Total MiB -> a label value: the nearest whole GiB when within 5% ("24Gi"), else "NNNNMi"."""
    gib = round(mib / 1024)
    if gib > 0 and abs(gib * 1024 - mib) <= 0.05 * gib * 1024:
        return f"{gib}Gi"
    return f"{mib}Mi"


def parse_mib(value: object, what: str) -> int:
    """A non-negative integer MiB count from an annotation or JSON field."""
    if isinstance(value, bool):
        raise ParseError(what, value, "a non-negative integer number of MiB")
    if isinstance(value, int):
        n = value
    else:
        s = text_of(value).strip()
        if not (s.isascii() and s.isdigit()) or len(s) > 16:
            raise ParseError(what, value, "a non-negative integer number of MiB")
        n = int(s)
    if n < 0 or n > 1 << 40:
        raise ParseError(what, value, "a non-negative integer number of MiB")
    return n
