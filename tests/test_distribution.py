"""The container image and project metadata (the wheel's contents: tests/test_packaging.py): the image recipe is
reproducible and labelled: base images pinned by digest, Python dependencies
from the committed lock with hashes, OCI labels; the lock covers every runtime dependency of pyproject."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()
LOCK = ROOT / "requirements" / "runtime.lock"


def _args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE, re.M))


def _resolve(ref: str, args: dict[str, str]) -> str:
    for _ in range(5):
        ref = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], ref)
    return ref


def test_every_base_image_is_pinned_by_digest():
    args = _args()
    froms = re.findall(r"^FROM (\S+)", DOCKERFILE, re.M)
    assert len(froms) == 2
    for ref in froms:
        image = _resolve(ref, args)
        assert re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", image), f"FROM {ref} -> {image} has no digest"


def _lock_pins() -> dict[str, tuple[str, int]]:
    pins: dict[str, tuple[str, int]] = {}
    for block in re.split(r"\n(?=\S)", LOCK.read_text()):
        m = re.match(r"([A-Za-z0-9_.\-\[\]]+)==([^\s;\\]+)", block)
        if m:
            name = canonicalize_name(m.group(1).split("[")[0])
            pins[name] = (m.group(2), block.count("--hash=sha256:"))
    return pins


def test_python_dependencies_come_from_the_lock_with_hashes():
    assert "COPY requirements/runtime.lock" in DOCKERFILE
    install = re.search(r"pip install (--require-hashes[^\n]*)-r /tmp/runtime.lock", DOCKERFILE)
    assert install, "the image must install its dependencies from the lock with --require-hashes"
    assert re.search(r"pip install --no-deps /wheels/flexinfer-\*\.whl", DOCKERFILE), \
        "the project wheel must not pull unpinned dependencies"
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert "!requirements/runtime.lock" in ignore and "!LICENSE" in ignore


def test_lock_pins_every_runtime_dependency_within_pyproject_ranges():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _lock_pins()
    assert pins, "empty lock"
    for spec in project["dependencies"]:
        req = Requirement(spec.split("#")[0].strip())
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is a runtime dependency but not in requirements/runtime.lock"
        version, hashes = pins[name]
        assert req.specifier.contains(version, prereleases=True), f"lock pins {req.name}=={version}, outside {spec}"
        assert hashes >= 1, f"{req.name} has no hash in the lock"
    assert all(h >= 1 for _, h in pins.values()), "every locked package needs at least one hash"


def test_image_carries_oci_labels():
    labels = dict(re.findall(r'(org\.opencontainers\.image\.[\w.]+)="([^"]*)"', DOCKERFILE))
    for key in ("title", "description", "licenses", "source", "version", "revision"):
        assert f"org.opencontainers.image.{key}" in labels, key
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert labels["org.opencontainers.image.licenses"] == project["license"]
    assert labels["org.opencontainers.image.source"] == project["urls"]["Source"]
    assert _args()["VERSION"] == project["version"]


def test_license_and_project_metadata():
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert {"Homepage", "Source", "Issues"} <= set(project["urls"])
    assert any(c.startswith("Programming Language :: Python :: 3.11") for c in project["classifiers"])
    assert "Typing :: Typed" in project["classifiers"]
    assert (ROOT / "flexinfer" / "py.typed").is_file()



def test_image_header_names_every_console_script():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    header = DOCKERFILE.split("\nARG ", 1)[0]
    assert not [s for s in scripts if not re.search(rf"\b{re.escape(s)}\b(?!-)", header)], \
        "the Dockerfile's header must name every entry point the image carries"
