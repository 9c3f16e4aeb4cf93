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
