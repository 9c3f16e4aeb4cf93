"""tests/integration: make the repository root importable (the bench harness lives in bench/, not in the
installed package)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.append(ROOT)
