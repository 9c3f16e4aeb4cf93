"""Realistic kube-scheduler-shaped objects for extender tests (as informers send them: no kind/apiVersion)."""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator
from typing import Any

from flexinfer import keys
from flexinfer.state import GpuState, NodeGpuState, node_annotations, node_labels

NOW = 1_764_000_000.0


class Clock:
    """A settable clock for `clock=` parameters: `clock.t` is the time."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def gpu(index: int = 0, vendor: str = "nvidia", arch: str = "sm_89", total: int = 24576, free: int | None = None,
        *, healthy: bool = True, last_error_unix: float = 0.0, reason: str = "") -> GpuState:
    return GpuState(index=index, uuid=f"GPU-{vendor}-{arch}-{index}", vendor=vendor, arch=arch, total_mib=total,
                    free_mib=total if free is None else free, healthy=healthy, last_error_unix=last_error_unix,
                    reason=reason, error_events=1 if last_error_unix else 0)


def node_obj(name: str, gpus: list[GpuState] | None = None, observed: float | None = None, *,
             extra_annotations: dict[str, str] | None = None, extra_labels: dict[str, str] | None = None,
             agent_status: str = "ok", published: bool = True, resource_version: str = "1001") -> dict[str, Any]:
    """A Node as `kubectl get node -o json` shows it (minus kind/apiVersion), after the agent published."""
    gpus = gpus or []
    observed = NOW if observed is None else observed
    labels = {
        "beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
        "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "node.kubernetes.io/instance-type": "k3s",
    }
    annotations = {
        "node.alpha.kubernetes.io/ttl": "0",
        "volumes.kubernetes.io/controller-managed-attach-detach": "true",
        "flannel.alpha.coreos.com/backend-type": "vxlan",
    }
    if published:
        labels.update(node_labels(gpus))
        annotations.update(node_annotations(NodeGpuState(name, tuple(gpus), observed, agent_status)))
    labels.update(extra_labels or {})
    annotations.update(extra_annotations or {})
    capacity = {"cpu": "16", "ephemeral-storage": "479151816Ki", "hugepages-1Gi": "0", "hugepages-2Mi": "0",
                "memory": "65773872Ki", "pods": "110"}
    for g in gpus:
        res = {"nvidia": keys.RESOURCE_NVIDIA, "amd": keys.RESOURCE_AMD}.get(g.vendor)
        if res:
            capacity[res] = str(int(capacity.get(res, "0")) + 1)
    return {
        "metadata": {
            "name": name,
            "uid": f"0b1c2d3e-{abs(hash(name)) % 10**12:012d}",
            "resourceVersion": resource_version,
            "creationTimestamp": "2026-01-10T08:12:44Z",
            "labels": labels,
            "annotations": annotations,
            "managedFields": [
                {"manager": "k3s", "operation": "Update", "apiVersion": "v1", "time": "2026-01-10T08:12:44Z",
                 "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:metadata": {"f:annotations": {".": {}, "f:node.alpha.kubernetes.io/ttl": {}},
                                             "f:labels": {".": {}, "f:kubernetes.io/hostname": {}}}}},
                {"manager": "flexinfer-agent", "operation": "Update", "apiVersion": "v1",
                 "time": "2026-11-23T10:00:00Z", "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:metadata": {"f:annotations": {f"f:{keys.ANN_GPU_STATE}": {}}}}},
                {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": "2026-11-23T10:00:00Z",
                 "fieldsType": "FieldsV1", "subresource": "status",
                 "fieldsV1": {"f:status": {"f:conditions": {"k:{\"type\":\"Ready\"}": {"f:lastHeartbeatTime": {}}}}}},
            ],
        },
        "spec": {"podCIDR": "10.42.0.0/24", "podCIDRs": ["10.42.0.0/24"], "providerID": f"k3s://{name}"},
        "status": {
            "capacity": capacity,
            "allocatable": dict(capacity),
            "conditions": [
                {"type": "MemoryPressure", "status": "False", "lastHeartbeatTime": "2026-11-23T10:00:00Z",
                 "lastTransitionTime": "2026-01-10T08:12:44Z", "reason": "KubeletHasSufficientMemory",
                 "message": "kubelet has sufficient memory available"},
                {"type": "DiskPressure", "status": "False", "lastHeartbeatTime": "2026-11-23T10:00:00Z",
                 "lastTransitionTime": "2026-01-10T08:12:44Z", "reason": "KubeletHasNoDiskPressure",
                 "message": "kubelet has no disk pressure"},
                {"type": "Ready", "status": "True", "lastHeartbeatTime": "2026-11-23T10:00:00Z",
                 "lastTransitionTime": "2026-01-10T08:13:01Z", "reason": "KubeletReady",
                 "message": "kubelet is posting ready status"},
            ],
            "addresses": [{"type": "InternalIP", "address": "192.168.1.20"}, {"type": "Hostname", "address": name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {"architecture": "amd64", "bootID": "b", "containerRuntimeVersion": "containerd://1.7.22",
                         "kernelVersion": "6.8.0-49-generic", "kubeProxyVersion": "v1.31.4+k3s1",
                         "kubeletVersion": "v1.31.4+k3s1", "machineID": "m", "operatingSystem": "linux",
                         "osImage": "Ubuntu 24.04.1 LTS", "systemUUID": "s"},
            "images": [
                {"names": ["docker.io/vllm/vllm-openai@sha256:abc", "docker.io/vllm/vllm-openai:v0.11.0"],
                 "sizeBytes": 10234567890},
                {"names": ["registry.k8s.io/pause:3.10"], "sizeBytes": 320368},
            ],
        },
    }


def pod_obj(name: str = "llama-7b-5d8f9c7b4-x2x9z", *, annotations: dict[str, str] | None = None,
            gpus: int | None = 1, resource: str = keys.RESOURCE_NVIDIA, uid: str | None = None,
            init_gpus: int = 0, node_name: str = "", namespace: str = "models") -> dict[str, Any]:
    """A Pod as kube-scheduler sends it (from its informer: no kind/apiVersion)."""
    resources: dict[str, Any] = {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "16Gi"}}
    if gpus is not None:
        resources["requests"][resource] = str(gpus)
        resources["limits"][resource] = str(gpus)
    spec: dict[str, Any] = {
        "containers": [
            {"name": "server", "image": "docker.io/vllm/vllm-openai:v0.11.0",
             "args": ["--model", "meta-llama/Llama-2-7b-hf"], "ports": [{"containerPort": 8000, "protocol": "TCP"}],
             "resources": resources, "terminationMessagePath": "/dev/termination-log",
             "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent",
             "volumeMounts": [{"name": "kube-api-access-abcde", "readOnly": True,
                               "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]},
            {"name": "metrics-sidecar", "image": "busybox:1.36", "resources": {}},
        ],
        "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default", "schedulerName": "default-scheduler", "priority": 0,
        "enableServiceLinks": True, "preemptionPolicy": "PreemptLowerPriority",
        "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
                         "tolerationSeconds": 300}],
        "volumes": [{"name": "kube-api-access-abcde", "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}],
    }
    if init_gpus:
        spec["initContainers"] = [{"name": "warmup", "image": "busybox:1.36",
                                   "resources": {"limits": {resource: str(init_gpus)}}}]
    if node_name:
        spec["nodeName"] = node_name
    return {
        "metadata": {
            "name": name, "generateName": name.rsplit("-", 1)[0] + "-", "namespace": namespace,
            "uid": uid or f"uid-{name}", "resourceVersion": "48213", "creationTimestamp": "2026-11-23T10:01:02Z",
            "labels": {keys.LABEL_MODEL: "llama-7b", "pod-template-hash": "5d8f9c7b4"},
            "annotations": dict(annotations or {}),
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "llama-7b-5d8f9c7b4",
                                 "uid": "rs-uid", "controller": True, "blockOwnerDeletion": True}],
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                               "time": "2026-11-23T10:01:02Z", "fieldsType": "FieldsV1",
                               "fieldsV1": {"f:metadata": {"f:generateName": {}}}}],
        },
        "spec": spec,
        "status": {"phase": "Pending", "qosClass": "Burstable", "conditions": [
            {"type": "PodScheduled", "status": "False", "lastProbeTime": None,
             "lastTransitionTime": "2026-11-23T10:01:02Z", "reason": "Unschedulable",
             "message": "0/3 nodes are available"}]},
    }


def model_pod(est_mib: int = 20480, backend: str = "vllm", gpus: int = 1, *, vendor: str | None = None,
              resource: str = keys.RESOURCE_NVIDIA, extra: dict[str, str] | None = None, **kw: Any) -> dict[str, Any]:
    ann = {keys.POD_MODEL: "llama-7b", keys.POD_VRAM_ESTIMATE_MB: str(est_mib), keys.POD_BACKEND: backend}
    if vendor is not None:
        ann[keys.POD_VENDOR] = vendor
    ann.update(extra or {})
    return pod_obj(annotations=ann, gpus=gpus, resource=resource, **kw)


def fleet_nodes(now: float | None = None) -> list[dict[str, Any]]:
    """A small heterogeneous fleet (node objects) used by contract and parity tests."""
    now = time.time() if now is None else now
    return [
        node_obj("ada-24g", [gpu(0, "nvidia", "sm_89", 24576, 23000)], now),
        node_obj("maxwell-6g", [gpu(0, "nvidia", "sm_52", 6144, 5800)], now),
        node_obj("two-12g", [gpu(0, "nvidia", "sm_86", 12288, 12000), gpu(1, "nvidia", "sm_86", 12288, 12000)], now),
        node_obj("ada-full", [gpu(0, "nvidia", "sm_89", 24576, 2000)], now),
        node_obj("rdna3", [gpu(0, "amd", "gfx1100", 24560, 24000)], now),
        node_obj("cpu-only", [], now),
        node_obj("stale-ada", [gpu(0, "nvidia", "sm_89", 24576, 24000)], now - 3600),
        node_obj("junk", [], now, extra_annotations={keys.ANN_GPU_STATE: "{not json"},
                 extra_labels={keys.LABEL_VENDOR: "nvidia"}),
    ]


def strip(obj: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(obj)


@contextlib.contextmanager
def served_extender(nodes: list[dict[str, Any]] | None = None) -> Iterator[tuple[Any, Any, str, Any]]:
    """An Extender over `nodes` (default: the small fleet) served on loopback over gRPC and HTTP, as in
    production. Reservations have a zero TTL, so prioritize calls never change a later answer.
    Yields (extender, SchedulerExtender stub, HTTP base URL, gRPC channel)."""
    import grpc
    from flexinfer.extender.cache import NodeCache
    from flexinfer.extender.grpc_server import serve_grpc
    from flexinfer.extender.http import build_app, serve_in_thread
    from flexinfer.extender.policy import PolicyConfig
    from flexinfer.extender.reservations import Reservations
    from flexinfer.extender.service import Extender

    from flexinfer.api.v1 import scheduler_extender_pb2_grpc as pb_grpc

    cache = NodeCache()
    cache.replace_all(fleet_nodes(time.time()) if nodes is None else nodes)
    ext = Extender(cache, PolicyConfig(), Reservations(tentative_ttl_seconds=0))
    g = serve_grpc(ext, "127.0.0.1", 0)
    h = serve_in_thread(build_app(ext), "127.0.0.1", 0)
    channel = grpc.insecure_channel(f"127.0.0.1:{g.port}")
    try:
        yield ext, pb_grpc.SchedulerExtenderStub(channel), h.url, channel
    finally:
        channel.close()
        h.stop()
        g.stop(0)
