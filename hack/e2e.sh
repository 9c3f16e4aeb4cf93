#!/usr/bin/env bash
# The e2e tier alone: FlexInfer against a real control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kwok) built from the pinned Go modules in hack/k8s on first use (about 7 min on 2 idle
# cores, cached in ~/.cache/flexinfer afterwards). Extra arguments go to pytest, e.g.
#   bash hack/e2e.sh -k burst            # one scenario
#   FLEXINFER_E2E_KEEP=1 bash hack/e2e.sh  # keep the control plane's work directory and logs
# Logs of every process: the pytest temp dir, controlplane0/logs/<component>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[test]'
fi
bash hack/k8s/build.sh
exec "$VENV/bin/python" -m pytest tests/e2e -m e2e -p no:cacheprovider "$@"
