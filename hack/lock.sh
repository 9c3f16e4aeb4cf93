#!/usr/bin/env bash
# Regenerate requirements/runtime.lock: every runtime dependency of the product (pyproject's
# [project].dependencies, no extras) pinned to one version with the sha256 of every published file, for
# Python 3.11 and 3.12 on Linux (the default image and the ROCm variant). The Dockerfile installs from it with
# `pip install --require-hashes`, so an image built twice gets the same packages.
# uv is a developer tool here, installed into a throwaway virtualenv; the project does not depend on it.
set -euo pipefail
cd "$(dirname "$0")/.."
tool=$(mktemp -d)
trap 'rm -rf "$tool"' EXIT
python3 -m venv "$tool/venv"
"$tool/venv/bin/python" -m pip install --quiet --disable-pip-version-check "uv==0.13.8"
"$tool/venv/bin/uv" pip compile pyproject.toml --universal --python-version 3.11 \
  --generate-hashes --no-header --quiet \
  --custom-compile-command "bash hack/lock.sh" -o requirements/runtime.lock
echo "wrote requirements/runtime.lock"
