"""Issue 14 item 1 on the gRPC port, over a real socket: an oversized message or oversized metadata (headers) is
refused by gRPC itself (`extender.grpc_edge.server_options`) with RESOURCE_EXHAUSTED and a reason, and the
server keeps answering. (gRPC core refuses them before the interceptor runs, so they are not in
flexinfer_extender_bad_requests_total; the interceptor's own rejections are: tests/extender/test_hostile_clients.py.)"""

from __future__ import annotations

import json
import time
from dataclasses import replace

import grpc
import pytest
from flexinfer.extender.cache import NodeCache
from flexinfer.extender.grpc_server import serve_grpc
from flexinfer.extender.listener import Limits
from flexinfer.extender.service import Extender

from flexinfer.api.v1 import scheduler_extender_pb2 as pb
from flexinfer.api.v1 import scheduler_extender_pb2_grpc as pb_grpc

from .ext_fixtures import fleet_nodes, model_pod

pytestmark = pytest.mark.integration


def test_oversized_message_and_metadata_are_resource_exhausted_and_the_server_keeps_serving() -> None:
    cache = NodeCache()
    cache.replace_all(fleet_nodes(time.time()))
    ext = Extender(cache)
    limits = replace(Limits(), max_body_bytes=64 * 1024)
    g = serve_grpc(ext, "127.0.0.1", 0, limits=limits)
    pod = pb.PodSource(pod_json=json.dumps(model_pod(20480)).encode())
    try:
        with grpc.insecure_channel(f"127.0.0.1:{g.port}") as ch:
            stub = pb_grpc.SchedulerExtenderStub(ch)
            big = pb.FilterRequest(pod=pod, node_names=["n" * 100] * 2000)  # ~200 KiB > 64 KiB
            with pytest.raises(grpc.RpcError) as err:
                stub.Filter(big, timeout=10)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "larger than max" in err.value.details() and str(limits.max_body_bytes) in err.value.details()
            with pytest.raises(grpc.RpcError) as err:  # one header value far over the 16 KiB of head
                stub.Filter(pb.FilterRequest(pod=pod, node_names=["ada-24g"]), timeout=10,
                            metadata=[("x-junk", "y" * (4 * limits.max_head_bytes))])
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "metadata size exceeds" in err.value.details()
            assert len(ext.reservations) == 0  # nothing refused reserved anything
            ok = stub.Filter(pb.FilterRequest(pod=pod, node_names=["ada-24g", "maxwell-6g"]), timeout=10)
            assert not ok.error and list(ok.node_names) == ["ada-24g"]
    finally:
        g.stop(0)
