"""The simulation package stays outside production (issue 13 item 4): no module of the agent, extender, controller,
proxy, the Kubernetes adapter or the domain core imports `flexinfer.sim`; only the demo (and tests/bench) do."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = ("agent", "extender", "controller", "proxy", "flexinfer")
ALLOWED = ("flexinfer/sim/", "flexinfer/demo/", "flexinfer/api/")


def _imports(tree: ast.AST, module: str) -> set[str]:
    """Absolute names `tree` imports (relative imports resolved against `module`, a dotted package path)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")[: len(module.split(".")) - node.level]
                base = ".".join([*parts, base] if base else parts)
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def test_production_code_never_imports_the_simulation() -> None:
    offenders = []
    for top in PRODUCTION:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith(ALLOWED):
                continue
            package = "flexinfer" if top == "flexinfer" else f"flexinfer.{top}"
            parts = path.relative_to(ROOT / top).with_suffix("").parts
            module = ".".join([package, *parts])
            names = _imports(ast.parse(path.read_text(encoding="utf-8")), module)
            if any(n == "flexinfer.sim" or n.startswith("flexinfer.sim.") for n in names):
                offenders.append(rel)
    assert not offenders, f"production modules import flexinfer.sim: {offenders}"


def test_the_check_sees_an_import_of_the_simulation() -> None:
    tree = ast.parse("from flexinfer.sim.fakeapi import FakeApiServer\nfrom ..sim import cluster\n")
    assert "flexinfer.sim.fakeapi" in _imports(tree, "flexinfer.cli.main")
    assert "flexinfer.sim.cluster" in _imports(tree, "flexinfer.cli.main")
