"""The main job needs no extras (issue: the first hour of a new user): `bash hack/demo.sh` installs `-e .` only,
so `flexinfer demo` must run with the runtime dependencies alone. Here it runs in a child interpreter in which
every package that only the `test` extra brings in cannot be imported; `.ci/run` proves the same on a fresh clone
in a fresh virtualenv, and the second test keeps it doing so."""

from __future__ import annotations

import importlib.metadata as md
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _closure(name: str, extras: tuple[str, ...] = (), seen: set[str] | None = None) -> set[str]:
    """Canonical names of `name` and every installed distribution it requires (with `extras`), recursively."""
    seen = set() if seen is None else seen
    key = canonicalize_name(name)
    if key in seen:
        return seen
    seen.add(key)
    try:
        requires = md.distribution(name).requires or []
    except md.PackageNotFoundError:
        return seen
    for spec in requires:
        req = Requirement(spec)
        if req.marker and not any(req.marker.evaluate({"extra": e}) for e in ("", *extras)):
            continue
        _closure(req.name, tuple(req.extras), seen)
    return seen


def _test_only_modules() -> list[str]:
    """Top-level modules provided only by distributions the `test` extra adds to the runtime dependencies."""
    runtime = _closure("flexinfer")
    test_only = _closure("flexinfer", ("test",)) - runtime
    assert {"pytest", "hypothesis", "jsonschema"} <= test_only, "the test extra is not installed"
    return sorted(m for m, dists in md.packages_distributions().items()
                  if dists and all(canonicalize_name(d) in test_only for d in dists))


BLOCKER = """
import importlib.abc, sys
BLOCKED = set(sys.argv[1].split(","))
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (only the test extra installs it)", name=name)
        return None
sys.meta_path.insert(0, Blocker())
sys.argv = ["flexinfer", "demo"]
from flexinfer.cli.main import main
main()
"""


def test_demo_runs_with_the_runtime_dependencies_alone():
    blocked = _test_only_modules()
    assert "pytest" in blocked and "jsonschema" in blocked
    res = subprocess.run([sys.executable, "-c", BLOCKER, ",".join(blocked)], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "only the test extra installs it" not in res.stderr
    assert "demo finished in" in res.stdout


def test_ci_runs_the_main_job_as_a_newcomer_before_the_tests():
    ci = (ROOT / ".ci" / "run").read_text()
    demo_sh = (ROOT / "hack" / "demo.sh").read_text()
    clone, demo, tests = ci.find("git clone"), ci.find("bash hack/demo.sh)"), ci.find("exec bash hack/test.sh")
    assert -1 < clone < demo < tests, ".ci/run must run hack/demo.sh on a fresh clone before the tests"
    assert "pip install" in demo_sh and "-e ." in demo_sh and "[test]" not in demo_sh, \
        "hack/demo.sh must install the project without extras, as a newcomer gets it"
