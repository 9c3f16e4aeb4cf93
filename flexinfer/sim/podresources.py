"""A fake kubelet PodResources server: the real v1 proto (flexinfer.api.podresources.v1) over gRPC on a unix
socket, answering `List` from a table the test (or a simulation) edits, with fault injection.

    with FakeKubelet(tmp_path / "kubelet.sock") as kubelet:
        kubelet.assign("ml", "qwen-0", "server", "nvidia.com/gpu", ["GPU-1234::0"])
        ...  # agent.podresources.PodResourcesClient(str(kubelet.socket_path)).list()
"""

from __future__ import annotations

import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from flexinfer.api.podresources.v1 import api_pb2, api_pb2_grpc


@dataclass
class _Container:
    name: str
    devices: dict[str, list[str]] = field(default_factory=dict)  # resource -> device ids


@dataclass
class _Pod:
    namespace: str
    name: str
    containers: dict[str, _Container] = field(default_factory=dict)


class FakeKubelet(api_pb2_grpc.PodResourcesListerServicer):
    def __init__(self, socket_path: str | Path) -> None:
        self.socket_path = Path(socket_path)
        self._lock = threading.Lock()
        self._pods: dict[tuple[str, str], _Pod] = {}
        self.calls = 0
        self.fail_code: grpc.StatusCode | None = None  # answer every List with this error
        self.delay_seconds = 0.0
        self._server: Any = None

    # -- the table --------------------------------------------------------------------------------
    def assign(self, namespace: str, pod: str, container: str, resource: str, device_ids: list[str]) -> None:
        with self._lock:
            p = self._pods.setdefault((namespace, pod), _Pod(namespace, pod))
            c = p.containers.setdefault(container, _Container(container))
            c.devices.setdefault(resource, []).extend(device_ids)

    def remove_pod(self, namespace: str, pod: str) -> None:
        with self._lock:
            self._pods.pop((namespace, pod), None)

    def clear(self) -> None:
        with self._lock:
            self._pods.clear()

    # -- the service ------------------------------------------------------------------------------
    def List(self, request: Any, context: grpc.ServicerContext) -> api_pb2.ListPodResourcesResponse:
        self.calls += 1
        if self.delay_seconds:
            time.sleep(self.delay_seconds)
        if self.fail_code is not None:
            context.abort(self.fail_code, "injected failure")
        with self._lock:
            pods = [api_pb2.PodResources(
                name=p.name, namespace=p.namespace,
                containers=[api_pb2.ContainerResources(
                    name=c.name,
                    devices=[api_pb2.ContainerDevices(resource_name=r, device_ids=ids) for r, ids in c.devices.items()],
                    cpu_ids=[0, 1]) for c in p.containers.values()])
                for p in self._pods.values()]
        return api_pb2.ListPodResourcesResponse(pod_resources=pods)

    def GetAllocatableResources(self, request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not simulated")

    def Get(self, request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not simulated")

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> FakeKubelet:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        api_pb2_grpc.add_PodResourcesListerServicer_to_server(self, self._server)
        self._server.add_insecure_port(f"unix://{self.socket_path.resolve()}")
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(0).wait()
            self._server = None
        self.socket_path.unlink(missing_ok=True)

    def __enter__(self) -> FakeKubelet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
