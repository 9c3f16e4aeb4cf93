"""The checked-in gRPC code is what hack/gen-proto.sh produces from proto/: our contracts (flexinfer/api/v1) and
the kubelet's PodResources API copied from k8s.io/kubelet (flexinfer/api/podresources/v1)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIRS = sorted({p.parent.relative_to(ROOT / "proto") for p in (ROOT / "proto").rglob("*.proto")})


def test_every_proto_directory_is_covered() -> None:
    assert {str(d) for d in PROTO_DIRS} >= {"flexinfer/api/v1", "flexinfer/api/podresources/v1"}


@pytest.mark.parametrize("rel", PROTO_DIRS, ids=str)
def test_generated_code_is_up_to_date(tmp_path: Path, rel: Path) -> None:
    pytest.importorskip("grpc_tools")
    protos = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "proto" / rel).glob("*.proto"))
    assert protos, "no .proto files"
    res = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-Iproto", f"--python_out={tmp_path}", f"--pyi_out={tmp_path}",
         f"--grpc_python_out={tmp_path}", *protos], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    fresh = {p.name: p.read_text() for p in (tmp_path / rel).iterdir() if p.is_file()}
    checked_in = {p.name: p.read_text() for p in (ROOT / rel).iterdir() if p.is_file() and "_pb2" in p.name}
    assert set(fresh) == set(checked_in), "generated file set differs: run hack/gen-proto.sh"
    stale = [name for name in fresh if fresh[name] != checked_in[name]]
    assert not stale, f"stale generated code {stale}: run hack/gen-proto.sh"


def test_gen_script_covers_every_proto_directory(tmp_path: Path) -> None:
    """hack/gen-proto.sh itself regenerates every directory (a new proto dir is not forgotten by the script)."""
    pytest.importorskip("grpc_tools")
    env_path = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    res = subprocess.run(["bash", str(ROOT / "hack" / "gen-proto.sh"), str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, env={"PATH": env_path})
    assert res.returncode == 0, res.stderr
    for rel in PROTO_DIRS:
        assert sorted(p.name for p in (tmp_path / rel).glob("*_pb2*.py")), f"gen-proto.sh skipped {rel}"


def test_every_service_is_importable() -> None:
    from flexinfer.api.podresources.v1 import api_pb2_grpc
    from flexinfer.api.v1 import node_agent_pb2_grpc, scheduler_extender_pb2_grpc

    assert hasattr(node_agent_pb2_grpc, "NodeAgentServicer")
    assert hasattr(scheduler_extender_pb2_grpc, "SchedulerExtenderServicer")
    assert hasattr(api_pb2_grpc, "PodResourcesListerStub")


def test_podresources_wire_names_are_the_kubelets() -> None:
    """The kubelet answers /v1.PodResourcesLister/List: the copied proto must keep package `v1`."""
    from flexinfer.api.podresources.v1 import api_pb2

    service = api_pb2.DESCRIPTOR.services_by_name["PodResourcesLister"]
    assert service.full_name == "v1.PodResourcesLister"
    assert api_pb2.ListPodResourcesResponse.DESCRIPTOR.full_name == "v1.ListPodResourcesResponse"
