#!/usr/bin/env bash
# Regenerate Python gRPC code from every .proto under proto/ (needs grpcio-tools at the grpcio version:
# `pip install -e '.[test]'`): our contracts into flexinfer/api/v1/, the kubelet's PodResources API
# (copied from k8s.io/kubelet, see its header) into flexinfer/api/podresources/v1/.
# tests/test_proto_generated.py fails when the output is stale.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.}"
for dir in $(find proto -name '*.proto' -printf '%h\n' | sort -u); do
  python -m grpc_tools.protoc -Iproto --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" "$dir"/*.proto
done
