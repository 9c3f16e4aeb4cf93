#!/usr/bin/env bash
# Set up a fresh machine and run every test tier that can run here (lint + pytest).
# .ci/run calls exactly this. Extra arguments go to pytest (e.g. `bash hack/test.sh -m "not integration"`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[test]'

# The Prometheus integration test uses Debian's real `prometheus` (and its `promtool`).
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian package prometheus for the integration tests..."
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      prometheus >/dev/null) || echo "warning: could not install prometheus; its tests will be skipped"
  else
    echo "warning: prometheus not installed and not root; the Prometheus tests will be skipped"
  fi
fi

"$VENV/bin/ruff" check .
# The e2e tier's pinned Kubernetes binaries (hack/k8s; built once into ~/.cache/flexinfer, then reused).
# A failed build does not stop the other tiers; tests/e2e then fails with the build's output.
bash hack/k8s/build.sh || echo "warning: hack/k8s/build.sh failed; the e2e tier will fail"
set +e
"$VENV/bin/python" -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests for this selection (exit 5); treating as success"
  exit 0
fi
exit "$rc"
