"""gRPC NodeAgent (GetState, WatchState) and the standard health service over a real socket on 127.0.0.1."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import grpc
import pytest
from flexinfer.agent.agent import Agent
from flexinfer.agent.grpc_server import SERVICE_NAME, GrpcServer
from flexinfer.agent.readers.fake import fleet_reader
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flexinfer import keys
from flexinfer.api.v1 import node_agent_pb2, node_agent_pb2_grpc
from flexinfer.state import state_labels

from .agent_helpers import node_from, nvidia_gpu

pytestmark = pytest.mark.integration


@pytest.fixture
def served() -> Iterator[tuple[Agent, grpc.Channel]]:
    node = node_from([nvidia_gpu(powerW=60, faults=[{"type": "xid", "xid": 79, "atSample": 3}])])
    agent = Agent("n1", fleet_reader(node))
    server = GrpcServer(agent, "127.0.0.1", 0)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield agent, channel
    finally:
        channel.close()
        server.stop(0)


def test_get_state_and_health(served: tuple[Agent, grpc.Channel]) -> None:
    agent, channel = served
    stub = node_agent_pb2_grpc.NodeAgentStub(channel)
    empty = stub.GetState(node_agent_pb2.GetStateRequest(), timeout=5)
    assert empty.node == "n1" and empty.agent_status == "no sample yet" and not empty.gpus
    agent.step(now=1000.0)
    st = stub.GetState(node_agent_pb2.GetStateRequest(), timeout=5)
    assert st.agent_status == "ok" and st.observed_unix == 1000.0
    (g,) = st.gpus
    assert (g.arch, g.family, g.total_mib, g.free_mib, g.healthy) == ("sm_86", "ampere", 23028, 22028, True)
    assert g.power_watts == 60.0
    assert st.labels[keys.LABEL_ARCH] == "sm_86" and st.annotations[keys.ANN_FREE_MEMORY] == "22028"
    # the labels the agent writes to the Node, software versions included
    assert dict(st.labels) == state_labels(agent.state) and st.labels[keys.LABEL_DRIVER_VERSION] == "580.95.05"
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", SERVICE_NAME):
        resp = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_watch_state_sends_current_then_changes_and_ends_on_cancel(served: tuple[Agent, grpc.Channel]) -> None:
    agent, channel = served
    agent.step(now=1000.0)
    stub = node_agent_pb2_grpc.NodeAgentStub(channel)
    call = stub.WatchState(node_agent_pb2.WatchStateRequest(heartbeat_seconds=3600))
    got: queue.Queue = queue.Queue()

    def consume() -> None:
        try:
            for msg in call:
                got.put(msg)
        except grpc.RpcError as e:
            got.put(e.code())

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    first = got.get(timeout=5)
    assert first.observed_unix == 1000.0 and first.gpus[0].healthy
    agent.step(now=1001.0)  # nothing significant changed: no message
    with pytest.raises(queue.Empty):
        got.get(timeout=0.7)
    agent.step(now=1002.0)  # sample 3: Xid 79 -> unhealthy -> a message
    changed = got.get(timeout=5)
    assert not changed.gpus[0].healthy and changed.gpus[0].reason == "Xid 79"
    call.cancel()
    assert got.get(timeout=5) == grpc.StatusCode.CANCELLED
    t.join(5)
    assert not t.is_alive()


def test_watch_heartbeat(served: tuple[Agent, grpc.Channel]) -> None:
    agent, channel = served
    agent.step(now=1000.0)
    stub = node_agent_pb2_grpc.NodeAgentStub(channel)
    call = stub.WatchState(node_agent_pb2.WatchStateRequest(heartbeat_seconds=0.2), timeout=5)
    msgs = []
    for msg in call:
        msgs.append(msg)
        if len(msgs) == 3:
            call.cancel()
            break
    assert len(msgs) == 3 and all(m.node == "n1" for m in msgs)
