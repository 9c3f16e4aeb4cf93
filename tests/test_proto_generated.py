"""The checked-in gRPC code in flexinfer/api/v1 is what hack/gen-proto.sh produces from proto/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "flexinfer" / "api" / "v1"


def test_generated_code_is_up_to_date(tmp_path):
    pytest.importorskip("grpc_tools")
    protos = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "proto" / "flexinfer" / "api" / "v1").glob("*.proto"))
    assert protos, "no .proto files"
    res = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-Iproto", f"--python_out={tmp_path}", f"--pyi_out={tmp_path}",
         f"--grpc_python_out={tmp_path}", *protos], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    fresh = {p.name: p.read_text() for p in (tmp_path / "flexinfer" / "api" / "v1").iterdir() if p.is_file()}
    checked_in = {p.name: p.read_text() for p in GENERATED.iterdir() if p.is_file() and "_pb2" in p.name}
    assert set(fresh) == set(checked_in), "generated file set differs: run hack/gen-proto.sh"
    stale = [name for name in fresh if fresh[name] != checked_in[name]]
    assert not stale, f"stale generated code {stale}: run hack/gen-proto.sh"


def test_every_service_is_importable():
    from flexinfer.api.v1 import node_agent_pb2_grpc, scheduler_extender_pb2_grpc

    assert hasattr(node_agent_pb2_grpc, "NodeAgentServicer")
    assert hasattr(scheduler_extender_pb2_grpc, "SchedulerExtenderServicer")
