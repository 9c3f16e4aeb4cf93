"""Package discovery for FlexInfer's layout (everything else is in pyproject.toml).

The import package is ``flexinfer``, but three of its subpackages live at the top of the repository,
where users were promised them: ``agent/`` is ``flexinfer.agent``, ``extender/`` is
``flexinfer.extender`` and ``controller/`` is ``flexinfer.controller``. ``[tool.setuptools]
package-dir`` in pyproject.toml maps each import name to its directory. setuptools' own
``packages.find`` cannot follow such a mapping (it names packages after their directories), so this
file finds the packages instead of a hand-kept list: every directory with an ``__init__.py`` under a
mapped directory is a package, named after the mapping.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def package_dirs(root: Path = ROOT) -> dict[str, str]:
    """Import name -> directory, from pyproject.toml's ``[tool.setuptools] package-dir``."""
    config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    return dict(config["tool"]["setuptools"]["package-dir"])


def discover(root: Path = ROOT) -> list[str]:
    """Every package under every mapped directory (directories holding an ``__init__.py``)."""
    packages: set[str] = set()
    for name, directory in package_dirs(root).items():
        base = root / directory
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            if any(part.startswith((".", "_")) or "-" in part for part in rel.parts):
                continue  # caches, hidden dirs and non-identifiers are not packages
            packages.add(".".join([name, *rel.parts]))
    return sorted(packages)


if __name__ == "__main__":  # setuptools runs this file as __main__ when it builds
    from setuptools import setup

    setup(packages=discover())
