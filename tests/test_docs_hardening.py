"""docs/hardening.md maps hardening items to their tests: every test it names exists, and every row of the
hostile-clients issue's table (issue 14: deep JSON, many names, unknown names, header floods, slow clients,
invented gfx targets, forged reservations, default binding, two replicas) has a row there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "hardening.md"


def cited_tests(text: str) -> list[tuple[str, str]]:
    """(file, test name) for every `tests/x.py::name` and every following `::name` in the same table cell."""
    out: list[tuple[str, str]] = []
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        for cell in line.split("|"):
            current = None
            for m in re.finditer(r"(tests/[\w/]+\.py)|::(\w+)", cell):
                if m.group(1):
                    current = m.group(1)
                    out.append((current, ""))
                elif current is not None:
                    out.append((current, m.group(2)))
    return out


def test_every_test_the_hardening_doc_names_exists() -> None:
    cited = cited_tests(DOC.read_text())
    assert len(cited) > 50, "the doc's tables were not parsed"
    missing = []
    for file, name in cited:
        path = ROOT / file
        if not path.is_file():
            missing.append(file)
        elif name and not re.search(rf"^\s*(async )?def {name}\(", path.read_text(), re.MULTILINE):
            missing.append(f"{file}::{name}")
    assert not missing, f"docs/hardening.md names tests that do not exist: {sorted(set(missing))}"


# One phrase per row of issue 14's table, as the doc's first column words it.
ISSUE_14_ROWS = [
    "nested ~1000 deep",
    "gRPC `pod_json`",
    "1M NodeNames",
    "12 x 100k different unknown nodes",
    "gRPC 2 x 1M names",
    "64 MiB header lines",
    "slow clients, partial bodies",
    "3000 idle connections",
    "50k distinct gfx targets",
    "6 forged single-node filter requests",
    "default binding",
    "2 replicas",
]


@pytest.mark.parametrize("phrase", ISSUE_14_ROWS)
def test_every_row_of_the_hostile_clients_issue_has_a_row_with_a_test(phrase: str) -> None:
    rows = [line for line in DOC.read_text().splitlines() if line.startswith("|") and phrase in line.split("|")[1]]
    assert rows, f"docs/hardening.md has no row for {phrase!r}"
    assert all(re.search(r"tests/[\w/]+\.py::\w+", r) for r in rows), rows
