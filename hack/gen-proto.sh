#!/usr/bin/env bash
# Regenerate Python gRPC code from proto/ into flexinfer/api/v1/ (needs grpcio-tools:
# `pip install -e '.[test]'`). tests/test_proto_generated.py fails when the output is stale.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.}"
python -m grpc_tools.protoc -Iproto --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  proto/flexinfer/api/v1/*.proto
