"""gRPC NodeAgent service (GetState, WatchState) plus the standard gRPC health service."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from flexinfer.api.v1 import gpu_pb2, node_agent_pb2_grpc
from flexinfer.state import NodeGpuState, node_annotations, state_labels

from .agent import Agent

SERVICE_NAME = "flexinfer.api.v1.NodeAgent"


def to_proto(state: NodeGpuState | None, agent: Agent | None = None, node: str = "") -> gpu_pb2.NodeGpuState:
    if state is None:
        return gpu_pb2.NodeGpuState(node=node, agent_status="no sample yet")
    extra = {}
    if agent is not None and agent.last is not None:
        extra = {s.uuid: s for s in agent.last.samples}
    gpus = []
    for g in state.gpus:
        s = extra.get(g.uuid)
        gpus.append(gpu_pb2.GpuState(
            index=g.index, uuid=g.uuid, vendor=g.vendor, arch=g.arch, family=g.info.family, product=g.product,
            total_mib=g.total_mib, free_mib=g.free_mib, healthy=g.healthy, reason=g.reason,
            error_events=g.error_events, last_error_unix=g.last_error_unix, unified_memory=g.unified_memory,
            power_watts=(s.power_usage_watts or 0.0) if s else 0.0,
            power_limit_watts=(s.power_limit_watts or 0.0) if s else 0.0,
            temperature_celsius=(s.temperature_celsius or 0.0) if s else 0.0,
            utilization_ratio=(s.utilization_ratio or 0.0) if s else 0.0,
        ))
    return gpu_pb2.NodeGpuState(node=state.node, gpus=gpus, observed_unix=state.observed_unix,
                                agent_status=state.agent_status, labels=state_labels(state),
                                annotations=node_annotations(state))


class NodeAgentServicer(node_agent_pb2_grpc.NodeAgentServicer):
    def __init__(self, agent: Agent, default_heartbeat_seconds: float = 60.0, poll_seconds: float = 0.5) -> None:
        self.agent = agent
        self.default_heartbeat_seconds = default_heartbeat_seconds
        self.poll_seconds = poll_seconds

    def GetState(self, request: Any, context: grpc.ServicerContext) -> gpu_pb2.NodeGpuState:
        return to_proto(self.agent.state, self.agent, self.agent.node)

    def WatchState(self, request: Any, context: grpc.ServicerContext) -> Iterator[gpu_pb2.NodeGpuState]:
        import time

        heartbeat = request.heartbeat_seconds if request.heartbeat_seconds > 0 else self.default_heartbeat_seconds
        hub = self.agent.hub
        version = hub.version
        yield to_proto(hub.state, self.agent, self.agent.node)
        last_sent = time.monotonic()
        while context.is_active():
            wait = min(self.poll_seconds, max(0.0, heartbeat - (time.monotonic() - last_sent)))
            new_version, state = hub.wait(version, wait)
            if not context.is_active():
                return
            if new_version != version or time.monotonic() - last_sent >= heartbeat:
                version = new_version
                last_sent = time.monotonic()
                yield to_proto(state, self.agent, self.agent.node)


class GrpcServer:
    def __init__(self, agent: Agent, host: str = "127.0.0.1", port: int = 0, max_workers: int = 8,
                 default_heartbeat_seconds: float = 60.0) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers))
        node_agent_pb2_grpc.add_NodeAgentServicer_to_server(
            NodeAgentServicer(agent, default_heartbeat_seconds), self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = self.server.add_insecure_port(f"{host}:{port}")

    def start(self) -> None:
        self.server.start()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float = 1.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
