"""The repository stands on its own docs: nothing outside docs/ cites documents the repository does not
contain, every docs/ page the code cites exists, and the fact tables in docs/ agree with the code
(docs/gpu-architectures.md with flexinfer/arch.py, docs/backend-compatibility.md with flexinfer/compat.py).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from flexinfer import arch, compat

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
THIS = Path(__file__).resolve().relative_to(ROOT).as_posix()

# Citations of material that lives outside this repository (the upstream-facts notes and the
# operators' write-ups FlexInfer was built from). Their facts belong in docs/, in our words.
OUTSIDE = re.compile(r"\.\./shared|shared/docs|reference\.md|\bthe seeds?\b|\bseeds/", re.IGNORECASE)
DOC_LINK = re.compile(r"\bdocs/([A-Za-z0-9_.-]+\.md)\b")
SKIP_DIRS = {".git", ".venv", "build", "dist", "node_modules", "__pycache__"}


def tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60)
        files = [f for f in out.stdout.decode("utf-8", "replace").split("\0") if f]
        if files:
            return files
    except (OSError, subprocess.SubprocessError):
        pass
    found = []  # not a git checkout (e.g. an unpacked sdist): every file except build and tool dirs
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        found += [Path(dirpath, f).relative_to(ROOT).as_posix() for f in filenames]
    return found


def text_of(rel: str) -> str | None:
    path = ROOT / rel
    if not path.is_file() or path.stat().st_size > 2_000_000:
        return None
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None  # binary
    return data.decode("utf-8", "replace")


def test_nothing_outside_docs_cites_material_the_repository_does_not_contain() -> None:
    hits = []
    for rel in tracked_files():
        if rel.startswith("docs/") or rel == THIS:
            continue
        text = text_of(rel)
        if text is None:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{rel}:{n}: {line.strip()[:120]}")
    assert not hits, "cite docs/ in this repository instead:\n" + "\n".join(hits)


def test_every_cited_docs_page_exists() -> None:
    missing = set()
    for rel in tracked_files():
        if rel.startswith("docs/"):
            continue  # the pages themselves also name upstream projects' docs/ files
        text = text_of(rel)
        if text is None:
            continue
        for m in DOC_LINK.finditer(text):
            if not (DOCS / m.group(1)).is_file():
                missing.add(f"{rel}: docs/{m.group(1)}")
    assert not missing, sorted(missing)


# --- markdown tables -----------------------------------------------------------------------------


def table_after(doc: str, heading: str) -> tuple[list[str], list[list[str]]]:
    """The first markdown table after ``heading``: (header cells, rows of cells)."""
    text = (DOCS / doc).read_text(encoding="utf-8")
    start = text.index(heading)
    lines = text[start:].splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[first:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    header, sep, *body = rows
    assert set("".join(sep)) <= set("-: "), f"{doc}: no table separator after {heading!r}"
    return header, body


# --- docs/gpu-architectures.md -------------------------------------------------------------------


def test_nvidia_table_matches_arch() -> None:
    header, rows = table_after("gpu-architectures.md", "## NVIDIA")
    assert header[:3] == ["Compute capability", "Label", "Family"]
    checked = 0
    for cc, label, family, *_ in rows:
        m = re.fullmatch(r"(\d+)\.(\d)", cc)
        if m is None:  # "1.x"-style rows: the family applies to the whole major version
            major = int(cc.split(".")[0])
            assert arch.nvidia_family(major, 0) == family, cc
            continue
        info = arch.nvidia_arch(int(m.group(1)), int(m.group(2)))
        assert (info.arch, info.family) == (label, family), f"docs row {cc}: {label} {family} != {info}"
        checked += 1
    assert checked >= 15


def test_amd_table_matches_arch_row_by_row() -> None:
    header, rows = table_after("gpu-architectures.md", "## AMD")
    assert header[:4] == ["gfx", "Family", "Codename", "KFD gfx_target_version"]
    documented = {}
    for gfx, family, codename, kfd, *_ in rows:
        info = arch.amd_arch(gfx)
        assert (info.family, info.codename) == (family, codename), f"docs row {gfx}"
        assert arch.encode_gfx_target_version(gfx) == int(kfd), f"docs row {gfx}: KFD {kfd}"
        assert arch.decode_gfx_target_version(kfd) == gfx
        documented[gfx] = family
    assert set(documented) == set(arch.AMD_GFX), "docs/gpu-architectures.md and arch.AMD_GFX list different targets"


# --- docs/backend-compatibility.md ---------------------------------------------------------------

SYMBOL = {"✔": compat.Verdict.SUPPORTED, "~": compat.Verdict.DEGRADED, "✘": compat.Verdict.UNSUPPORTED}


def crd_backend_names() -> list[str]:
    """spec.backend's enum in the Model CRD: every name (canonical and alias) a user may write."""
    def find(node: Any) -> list[str] | None:
        if isinstance(node, dict):
            backend = node.get("backend")
            if isinstance(backend, dict) and isinstance(backend.get("enum"), list):
                return backend["enum"]
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            return None
        for child in children:
            if (got := find(child)) is not None:
                return got
        return None

    docs = list(yaml.safe_load_all((ROOT / "daemonset" / "base" / "crd-models.yaml").read_text()))
    names = find(docs)
    assert names, "spec.backend enum not found in the CRD"
    return names


def canonical_backends() -> list[str]:
    out: list[str] = []
    for name in crd_backend_names():
        b = compat.canonical_backend(name)
        if b not in out:
            out.append(b)
    return out


def arch_of(target: str) -> arch.ArchInfo:
    if target.startswith("sm_"):
        return arch.arch_info(arch.NVIDIA, target)
    if target.startswith("gfx"):
        return arch.arch_info(arch.AMD, target)
    if target in arch.INTEL_PLATFORMS:
        return arch.arch_info(arch.INTEL, target)
    if target == "intel":
        return arch.arch_info(arch.INTEL, "arc")
    assert target == "none", target
    return arch.arch_info(arch.NONE, "none")


def test_backend_matrix_matches_compat_cell_by_cell() -> None:
    header, rows = table_after("backend-compatibility.md", "## The matrix")
    assert header[:2] == ["Target", "Family"]
    backends = header[2:]
    assert sorted(backends) == sorted(canonical_backends()), "the matrix columns are not the backends of the CRD"
    wrong = []
    for target, family, *cells in rows:
        info = arch_of(target)
        assert info.family == family, f"{target}: family {family} != {info.family}"
        for backend, cell in zip(backends, cells, strict=True):
            got = compat.check(backend, info).verdict
            if SYMBOL[cell] is not got:
                wrong.append(f"{target} x {backend}: docs say {SYMBOL[cell].value}, compat says {got.value}")
    assert not wrong, "docs/backend-compatibility.md disagrees with flexinfer/compat.py:\n" + "\n".join(wrong)
    targets = {r[0] for r in rows}
    assert set(arch.AMD_GFX) <= targets, "every gfx target of the architecture table has a matrix row"


@pytest.mark.parametrize("name", crd_backend_names())
def test_every_backend_name_and_alias_is_in_the_compatibility_doc(name: str) -> None:
    text = (DOCS / "backend-compatibility.md").read_text(encoding="utf-8").lower()
    assert name.lower() in text or name.replace("_", "-").lower() in text, name


# --- docs/extender-protocol.md -------------------------------------------------------------------


def test_extender_protocol_page_names_every_wire_field_and_the_score_range() -> None:
    """The page's field names are the ones our wire structs decode and encode, and its score range is the
    policy's (one number, also used by the gRPC encoder)."""
    import msgspec
    from flexinfer.extender import grpc_wire, policy, wire

    text = (DOCS / "extender-protocol.md").read_text(encoding="utf-8")
    fields = set()
    for struct in (wire.ExtenderArgs, wire.ExtenderFilterResult, wire.HostPriority, wire.ErrorBody):
        fields |= {f.encode_name for f in msgspec.structs.fields(struct) if f.encode_name[0].isupper()}
    assert {"Pod", "Nodes", "NodeNames", "FailedNodes", "FailedAndUnresolvableNodes", "Error", "Host",
            "Score"} <= fields
    missing = sorted(f for f in fields if f'"{f}"' not in text)
    assert not missing, f"docs/extender-protocol.md does not name wire fields {missing}"
    m = re.search(r"`MaxExtenderPriority` = (\d+)", text)
    assert m and int(m.group(1)) == policy.MAX_SCORE == grpc_wire.MAX_SCORE
