"""The README's contract tables are checked against flexinfer/keys.py (one place for each fact)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flexinfer import keys

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()

CONTRACT_KEYS = sorted(
    v for k, v in vars(keys).items()
    if k.isupper() and isinstance(v, str) and v.startswith(keys.PREFIX) and v != keys.PREFIX
)


@pytest.mark.parametrize("key", CONTRACT_KEYS)
def test_every_key_is_documented(key: str) -> None:
    expected = key + "<arch>" if key == keys.LABEL_ARCH_COUNT_PREFIX else key
    assert f"`{expected}`" in README, f"{key} is in flexinfer/keys.py but not in the README tables"


def test_readme_names_both_commands_and_ci_runs_the_test_one() -> None:
    assert "bash hack/demo.sh" in README and "bash hack/test.sh" in README
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert "exec bash hack/test.sh" in ci


def test_readme_links_every_docs_page_and_names_every_test_tier() -> None:
    root = Path(__file__).resolve().parent.parent
    pages = sorted(p.name for p in (root / "docs").glob("*.md"))
    assert pages
    missing = [p for p in pages if f"(docs/{p})" not in README]
    assert not missing, f"README does not link these docs/ pages: {missing}"
    layout = README[README.index("## Layout"):]
    tiers = sorted(d.name for d in (root / "tests").iterdir() if (d / "__init__.py").is_file())
    assert not [t for t in tiers if f"{t}/" not in layout], "README's Layout misses a tests/ directory"
