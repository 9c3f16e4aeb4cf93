"""Agent test fixtures: fleet nodes, and the real amdsmi package imported against a stub libamd_smi.so.

`import amdsmi` binds every C symbol of libamd_smi.so at import time and fails without ROCm. To get
the REAL exception classes (AmdSmiLibraryException, ...) we compile a stub library that defines each
symbol the wrapper binds (all return AMDSMI_STATUS_NOT_SUPPORTED) and point ROCM_PATH at it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .agent_helpers import ManualClock


@pytest.fixture(scope="session")
def amdsmi_real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The real `amdsmi` package, loaded against a compiled stub libamd_smi.so."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc) to build the stub libamd_smi.so; amdsmi cannot be imported without it")
    spec = importlib.util.find_spec("amdsmi")
    if spec is None or spec.submodule_search_locations is None:
        pytest.skip("amdsmi package not installed (pip install amdsmi==7.0.2, test extra)")
    wrapper = Path(next(iter(spec.submodule_search_locations))) / "amdsmi_wrapper.py"
    symbols = sorted(set(re.findall(r"_libraries\['libamd_smi\.so'\]\.(\w+)", wrapper.read_text())))
    assert symbols, "amdsmi_wrapper.py binds no symbols? (format changed)"
    root = tmp_path_factory.mktemp("rocm")
    (root / "lib").mkdir()
    src = root / "stub.c"
    src.write_text("".join(f"int {s}(void) {{ return 2; }}\n" for s in symbols))
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(root / "lib" / "libamd_smi.so"), str(src)], check=True,
                   capture_output=True, timeout=60)
    saved = {k: os.environ.get(k) for k in ("ROCM_PATH", "ROCM_HOME")}
    os.environ["ROCM_PATH"] = str(root)
    os.environ.pop("ROCM_HOME", None)
    for name in [m for m in sys.modules if m == "amdsmi" or m.startswith("amdsmi.")]:
        del sys.modules[name]
    try:
        mod = importlib.import_module("amdsmi")
        yield mod
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()
