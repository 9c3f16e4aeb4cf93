#!/usr/bin/env bash
# Set up a fresh machine and run the main job: `flexinfer demo` on the embedded homelab fleet.
# Extra arguments go to `flexinfer demo` (e.g. `bash hack/demo.sh --fleet my-fleet.yaml`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e .
exec "$VENV/bin/flexinfer" demo "$@"
