"""Client of the kubelet's PodResources API (v1 `List`, gRPC over a unix socket): which container holds
which device. The Python client is generated from the upstream proto (proto/flexinfer/api/podresources/v1).

The kubelet serves it on /var/lib/kubelet/pod-resources/kubelet.sock (root-only; the DaemonSet mounts the
directory read-only). Bounds: one call at a time with a deadline (default 5 s), answers up to 16 MiB, at most
MAX_ASSIGNMENTS devices and names of Kubernetes' maximum lengths; anything else is dropped and counted.

`PodResourcesSource` is what the agent uses: it never raises. No socket (not mounted, not a kubelet node):
attribution is off and the agent says nothing about it beyond one log line. A socket that fails: the last good
answer is kept for `keep_seconds` (the holders rarely change within a minute) and the agent status says why.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from typing import Any

from flexinfer import logs
from flexinfer.state import valid_pod_ref

from .attribution import Assignment, is_gpu_resource

log = logs.get("flexinfer.agent.podresources")

DEFAULT_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
MAX_MESSAGE_BYTES = 16 << 20
MAX_ASSIGNMENTS = 10_000
MAX_DEVICE_ID_CHARS = 256


class PodResourcesError(Exception):
    """The kubelet could not be asked (socket refused, deadline, permission, malformed answer)."""


class PodResourcesClient:
    """One channel to the kubelet's socket; `list()` returns the GPU devices held by containers."""

    def __init__(self, socket_path: str = DEFAULT_SOCKET, *, timeout_seconds: float = 5.0,
                 max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.socket_path = socket_path
        self.timeout_seconds = timeout_seconds
        self.max_message_bytes = max_message_bytes
        self._channel: Any = None
        self._stub: Any = None
        self.dropped = 0  # devices left out by the bounds in the last answer

    def _connect(self) -> Any:
        if self._stub is None:
            import grpc

            from flexinfer.api.podresources.v1 import api_pb2_grpc

            self._channel = grpc.insecure_channel(
                f"unix://{os.path.abspath(self.socket_path)}",
                options=[("grpc.max_receive_message_length", self.max_message_bytes),
                         ("grpc.max_send_message_length", 1 << 16),
                         ("grpc.enable_retries", 0)])
            self._stub = api_pb2_grpc.PodResourcesListerStub(self._channel)
        return self._stub

    def list(self) -> list[Assignment]:
        """Every GPU device the kubelet has given a container. Raises PodResourcesError."""
        import grpc

        from flexinfer.api.podresources.v1 import api_pb2

        stub = self._connect()
        try:
            answer = stub.List(api_pb2.ListPodResourcesRequest(), timeout=self.timeout_seconds)
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            details = (e.details() if hasattr(e, "details") else "") or ""
            name = code.name if code is not None else "error"
            raise PodResourcesError(f"{name}: {details.splitlines()[0][:160] if details else 'no details'}") from None
        out: list[Assignment] = []
        dropped = 0
        for pod in answer.pod_resources:
            for container in pod.containers:
                holder = f"{pod.namespace}/{pod.name}/{container.name}"
                for devices in container.devices:
                    if not is_gpu_resource(devices.resource_name):
                        continue
                    for device_id in devices.device_ids:
                        if (len(out) >= MAX_ASSIGNMENTS or not valid_pod_ref(holder)
                                or not 0 < len(device_id) <= MAX_DEVICE_ID_CHARS):
                            dropped += 1
                            continue
                        out.append(Assignment(pod.namespace, pod.name, container.name, devices.resource_name,
                                              device_id))
        self.dropped = dropped
        if dropped:
            log.warning("pod_resources_dropped", devices=dropped, limit=MAX_ASSIGNMENTS)
        return out

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel = self._stub = None


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


class PodResourcesSource:
    """What the agent asks each sample: (assignments, status). Status is "" when fine or when there is no kubelet
    socket at all (attribution off), else one line for the agent status."""

    def __init__(self, client: PodResourcesClient | None = None, *, socket_path: str = DEFAULT_SOCKET,
                 keep_seconds: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client or PodResourcesClient(socket_path)
        self.keep_seconds = keep_seconds
        self.clock = clock
        self._last: list[Assignment] = []
        self._last_ok = -float("inf")
        self._said_missing = False
        self.calls = 0
        self.failures = 0

    @property
    def socket_path(self) -> str:
        return self.client.socket_path

    def poll(self) -> tuple[list[Assignment], str]:
        if not _is_socket(self.socket_path):
            if not self._said_missing:
                log.info("pod_resources_unavailable", socket=self.socket_path,
                         hint="mount /var/lib/kubelet/pod-resources to attribute GPUs to pods")
                self._said_missing = True
            self._last = []
            return [], ""
        self._said_missing = False
        self.calls += 1
        try:
            self._last = self.client.list()
            self._last_ok = self.clock()
            return self._last, ""
        except PodResourcesError as e:
            self.failures += 1
            log.warning("pod_resources_failed", socket=self.socket_path, error=str(e))
            kept = self._last if self.clock() - self._last_ok <= self.keep_seconds else []
            self._last = kept
            return kept, f"kubelet pod-resources: {e}"

    def close(self) -> None:
        self.client.close()
