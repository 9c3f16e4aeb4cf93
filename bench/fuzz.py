"""The hypothesis fuzz tests with more examples than CI runs (FLEXINFER_FUZZ_EXAMPLES)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
AREAS = ("tests/core", "tests/extender", "tests/agent", "tests/controller")


def run(examples: int, progress: Any, timeout_s: float = 240.0) -> dict[str, Any]:
    paths = [a for a in AREAS if (ROOT / a).is_dir()]
    cmd = [sys.executable, "-m", "pytest", *paths, "-k", "fuzz", "-q", "-p", "no:cacheprovider",
           "-o", "addopts=", "--no-header"]
    progress(f"fuzz: {' '.join(cmd[3:])} with FLEXINFER_FUZZ_EXAMPLES={examples} (timeout {timeout_s:.0f} s)")
    env = {**os.environ, "FLEXINFER_FUZZ_EXAMPLES": str(examples)}
    t0 = time.perf_counter()
    try:
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
        code, text = out.returncode, out.stdout + out.stderr
    except subprocess.TimeoutExpired as e:
        code = -1
        text = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        text += f"\ntimed out after {timeout_s:.0f} s"
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    summary = lines[-1] if lines else "(no output)"
    failures = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))][:10]
    return {"command": "pytest " + " ".join(cmd[3:]), "examples": examples, "exit_code": code,
            "seconds": round(time.perf_counter() - t0, 1), "summary": summary, "failures": failures}
