"""The distribution ships every package (non-editable installs, e.g. the container image).

pyproject.toml maps import names to directories (``[tool.setuptools.package-dir]``: agent/ is
flexinfer.agent, ...) and setup.py discovers the packages under them. These tests check the discovery
against the directory tree and build a real wheel from a clean copy of the sources.
"""

from __future__ import annotations

import runpy
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SETUP = runpy.run_path(str(ROOT / "setup.py"), run_name="setup_for_tests")  # discovery only, no setup() call
MAPPING: dict[str, str] = SETUP["package_dirs"]()


def source_modules() -> dict[str, Path]:
    """Every .py file under the mapped directories, keyed by its path inside the wheel."""
    out = {}
    for name, directory in MAPPING.items():
        base = ROOT / directory
        for py in base.rglob("*.py"):
            rel = py.relative_to(base)
            if "__pycache__" in rel.parts:
                continue
            out["/".join([*name.split("."), *rel.parts])] = py
    return out


def test_mapping_names_the_top_level_layout() -> None:
    assert MAPPING["flexinfer"] == "flexinfer"
    for part in ("agent", "extender", "controller"):
        assert MAPPING[f"flexinfer.{part}"] == part


def test_every_directory_with_python_files_is_a_discovered_package() -> None:
    packages = set(SETUP["discover"]())
    missing_init = []
    for wheel_path, py in source_modules().items():
        package = ".".join(wheel_path.split("/")[:-1])
        if package not in packages:
            missing_init.append(f"{py.relative_to(ROOT)} (package {package} has no __init__.py?)")
    assert not missing_init, "modules a wheel would leave out:\n" + "\n".join(sorted(missing_init))
    for package in packages:  # and nothing discovered that is not a directory with an __init__.py
        top = max((n for n in MAPPING if package == n or package.startswith(n + ".")), key=len)
        rel = package[len(top):].lstrip(".").split(".") if package != top else []
        assert (ROOT / MAPPING[top] / Path(*rel) / "__init__.py").is_file(), package


@pytest.fixture(scope="module")
def wheel_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A non-editable wheel built (as pip builds it for an image) from a clean copy of the sources, so a
    stale build/ directory in the checkout can neither add nor hide files."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    for directory in set(MAPPING.values()):
        shutil.copytree(ROOT / directory, src / directory, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
                   check=True, capture_output=True, timeout=300)
    return next(out.glob("flexinfer-*.whl"))


@pytest.fixture(scope="module")
def wheel_names(wheel_file: Path) -> list[str]:
    return zipfile.ZipFile(wheel_file).namelist()


def test_built_wheel_holds_every_module_and_nothing_else(wheel_names: list[str]) -> None:
    in_wheel = {n for n in wheel_names if n.endswith(".py")}
    expected = set(source_modules())
    assert not expected - in_wheel, f"missing from the wheel: {sorted(expected - in_wheel)}"
    assert not in_wheel - expected, f"in the wheel but not in the sources: {sorted(in_wheel - expected)}"
    assert "flexinfer/data/homelab.yaml" in wheel_names and "flexinfer/py.typed" in wheel_names


def test_image_build_context_has_what_discovery_needs() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    allowed = (ROOT / ".dockerignore").read_text().split()
    copied = " ".join(line for line in dockerfile.splitlines() if line.startswith("COPY "))
    for need in ["setup.py", *(f"{d}/" for d in sorted(set(MAPPING.values())))]:
        assert f"!{need}" in allowed, f".dockerignore keeps {need} out of the image build context"
        assert f" {need}" in copied, f"the Dockerfile does not COPY {need} before building the wheel"


def test_console_scripts_resolve():
    import importlib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"flexinfer", "flexinfer-agent", "flexinfer-extender", "flexinfer-controller",
                            "flexinfer-proxy"}
    for target in scripts.values():
        module, _, func = target.partition(":")
        assert callable(getattr(importlib.import_module(module), func))


def test_wheel_carries_license_and_metadata(wheel_file: Path, wheel_names: list[str]) -> None:
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in wheel_names), wheel_names[-10:]
    meta = zipfile.ZipFile(wheel_file).read(next(n for n in wheel_names if n.endswith(".dist-info/METADATA")))
    text = meta.decode()
    assert "License-Expression: Apache-2.0" in text and "Project-URL: Source," in text
