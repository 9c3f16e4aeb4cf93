"""Bench inputs: generated fleets, kubelet-sized Node objects, a managed Pod, extender request bodies.

Nodes come from `flexinfer.fleet.generate_fleet` + `flexinfer.nodes.fleet_node_objects` (the agent's
real labels and annotations). `realistic_node` then adds what a real kubelet/API server puts on a
Node (managedFields, conditions with heartbeats, addresses, nodeInfo, ~40 container images) so one
node is ~5-10 KB of JSON, like `kubectl get node -o json` on a busy GPU worker.
"""

from __future__ import annotations

import copy
import hashlib
import time
from typing import Any

import msgspec

from flexinfer import keys
from flexinfer.fleet import generate_fleet
from flexinfer.nodes import fleet_node_objects
from flexinfer.state import rfc3339

_IMAGES = (
    "registry.k8s.io/kube-proxy:v1.31.4", "registry.k8s.io/pause:3.10", "docker.io/calico/node:v3.28.2",
    "docker.io/calico/cni:v3.28.2", "nvcr.io/nvidia/k8s-device-plugin:v0.17.0",
    "nvcr.io/nvidia/cloud-native/dcgm:3.3.9-1-ubuntu22.04", "nvcr.io/nvidia/k8s/dcgm-exporter:3.3.9-3.6.1-ubuntu22.04",
    "docker.io/rocm/k8s-device-plugin:1.31.0.6", "docker.io/rocm/device-metrics-exporter:v1.2.0",
    "ghcr.io/flexinfer/flexinfer:0.1.0", "docker.io/vllm/vllm-openai:v0.11.0", "docker.io/ollama/ollama:0.12.6",
    "ghcr.io/ggml-org/llama.cpp:server-cuda-b6800", "ghcr.io/ggml-org/llama.cpp:server-rocm-b6800",
    "docker.io/mlcai/mlc-llm:nightly-cu124", "docker.io/rocm/vllm:rocm6.4.1_vllm_0.10.1",
    "quay.io/prometheus/node-exporter:v1.8.2", "docker.io/grafana/promtail:3.2.1",
    "registry.k8s.io/csi-secrets-store/driver:v1.4.6", "registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.12.0",
    "docker.io/longhornio/longhorn-manager:v1.7.2", "docker.io/longhornio/longhorn-instance-manager:v1.7.2",
    "docker.io/library/busybox:1.37", "docker.io/library/python:3.12-slim", "ghcr.io/open-webui/open-webui:0.6.32",
    "docker.io/comfyanonymous/comfyui:latest", "ghcr.io/huggingface/text-embeddings-inference:1.8",
    "docker.io/litellm/litellm:v1.77.7", "quay.io/jetstack/cert-manager-controller:v1.16.1",
    "registry.k8s.io/metrics-server/metrics-server:v0.7.2", "docker.io/traefik:v3.2.0",
    "quay.io/cilium/cilium:v1.16.3", "quay.io/cilium/operator-generic:v1.16.3",
    "registry.k8s.io/coredns/coredns:v1.11.3", "docker.io/bitnami/kubectl:1.31",
    "docker.io/pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime", "docker.io/rocm/pytorch:rocm6.2.3_ubuntu22.04_py3.10",
    "ghcr.io/huggingface/text-generation-inference:3.0.1", "docker.io/nvidia/cuda:12.6.2-base-ubuntu24.04",
    "docker.io/minio/minio:RELEASE.2024-10-13T13-34-11Z",
)


IMAGES_PER_NODE = 12  # a GPU worker with the usual DaemonSets + a few model servers: ~8 KB per Node


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def realistic_node(obj: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """Add kubelet/API-server bulk to a Node dict (returns a new dict; FlexInfer keys untouched)."""
    now = time.time() if now is None else now
    n = copy.deepcopy(obj)
    meta = n.setdefault("metadata", {})
    name = meta["name"]
    h = _digest(name)
    labels = meta.setdefault("labels", {})
    labels.update({
        "beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
        "node.kubernetes.io/instance-type": "gpu-worker", "node-role.kubernetes.io/worker": "",
        "topology.kubernetes.io/region": "homelab-1",
    })
    ann = meta.setdefault("annotations", {})
    ann.update({
        "node.alpha.kubernetes.io/ttl": "0",
        "volumes.kubernetes.io/controller-managed-attach-detach": "true",
        "csi.volume.kubernetes.io/nodeid": f'{{"driver.longhorn.io":"{name}","secrets-store.csi.k8s.io":"{name}"}}',
        "projectcalico.org/IPv4Address": f"10.0.{int(h[:2], 16)}.{int(h[2:4], 16)}/24",
        "projectcalico.org/IPv4VXLANTunnelAddr": f"10.244.{int(h[4:6], 16)}.0",
    })
    meta.update({
        "uid": f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}",
        "resourceVersion": str(int(h[:7], 16)),
        "creationTimestamp": rfc3339(now - 86400 * 90),
    })
    fields_labels = {f"f:{k}": {} for k in labels}
    fields_ann = {f"f:{k}": {} for k in ann}
    meta["managedFields"] = [
        {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": rfc3339(now - 86400 * 90),
         "fieldsType": "FieldsV1", "fieldsV1": {
             "f:metadata": {"f:annotations": {".": {}, "f:volumes.kubernetes.io/controller-managed-attach-detach": {}},
                            "f:labels": {".": {}, **{k: {} for k in list(fields_labels)[:8]}}},
             "f:spec": {"f:providerID": {}}}},
        {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
         "time": rfc3339(now - 86400 * 90), "fieldsType": "FieldsV1", "fieldsV1": {
             "f:metadata": {"f:annotations": {"f:node.alpha.kubernetes.io/ttl": {}}},
             "f:spec": {"f:podCIDR": {}, "f:podCIDRs": {".": {}, 'v:"10.244.3.0/24"': {}}}}},
        {"manager": "calico-node", "operation": "Update", "apiVersion": "v1", "time": rfc3339(now - 3600),
         "fieldsType": "FieldsV1", "subresource": "status", "fieldsV1": {
             "f:metadata": {"f:annotations": {"f:projectcalico.org/IPv4Address": {},
                                              "f:projectcalico.org/IPv4VXLANTunnelAddr": {}}},
             "f:status": {"f:conditions": {'k:{"type":"NetworkUnavailable"}': {
                 ".": {}, "f:lastHeartbeatTime": {}, "f:lastTransitionTime": {}, "f:message": {},
                 "f:reason": {}, "f:status": {}, "f:type": {}}}}}},
        {"manager": "flexinfer-agent", "operation": "Update", "apiVersion": "v1", "time": rfc3339(now - 30),
         "fieldsType": "FieldsV1",
         "fieldsV1": {"f:metadata": {"f:annotations": fields_ann, "f:labels": fields_labels}}},
        {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": rfc3339(now - 10),
         "fieldsType": "FieldsV1", "subresource": "status", "fieldsV1": {"f:status": {
             "f:allocatable": {f"f:{k}": {} for k in n.get("status", {}).get("allocatable", {})},
             "f:capacity": {f"f:{k}": {} for k in n.get("status", {}).get("capacity", {})},
             "f:conditions": {f'k:{{"type":"{t}"}}': {"f:lastHeartbeatTime": {}, "f:lastTransitionTime": {},
                                                       "f:message": {}, "f:reason": {}, "f:status": {}}
                              for t in ("DiskPressure", "MemoryPressure", "PIDPressure", "Ready")},
             "f:images": {}, "f:nodeInfo": {"f:bootID": {}, "f:kernelVersion": {}, "f:osImage": {}}}}},
    ]
    spec = n.setdefault("spec", {})
    spec.update({"podCIDR": "10.244.3.0/24", "podCIDRs": ["10.244.3.0/24"], "providerID": f"k3s://{name}"})
    status = n.setdefault("status", {})
    hb, tr = rfc3339(now - 10), rfc3339(now - 86400 * 30)
    status["conditions"] = [
        {"type": "NetworkUnavailable", "status": "False", "lastHeartbeatTime": rfc3339(now - 3600),
         "lastTransitionTime": tr, "reason": "CalicoIsUp", "message": "Calico is running on this node"},
        {"type": "MemoryPressure", "status": "False", "lastHeartbeatTime": hb, "lastTransitionTime": tr,
         "reason": "KubeletHasSufficientMemory", "message": "kubelet has sufficient memory available"},
        {"type": "DiskPressure", "status": "False", "lastHeartbeatTime": hb, "lastTransitionTime": tr,
         "reason": "KubeletHasNoDiskPressure", "message": "kubelet has no disk pressure"},
        {"type": "PIDPressure", "status": "False", "lastHeartbeatTime": hb, "lastTransitionTime": tr,
         "reason": "KubeletHasSufficientPID", "message": "kubelet has sufficient PID available"},
        {"type": "Ready", "status": "True", "lastHeartbeatTime": hb, "lastTransitionTime": tr,
         "reason": "KubeletReady", "message": "kubelet is posting ready status. AppArmor enabled"},
    ]
    status["addresses"] = [{"type": "InternalIP", "address": f"10.0.{int(h[:2], 16)}.{int(h[2:4], 16)}"},
                           {"type": "Hostname", "address": name}]
    status["daemonEndpoints"] = {"kubeletEndpoint": {"Port": 10250}}
    status["nodeInfo"] = {
        "machineID": h[:32], "systemUUID": f"{h[32:40]}-{h[40:44]}-{h[44:48]}-{h[48:52]}-{h[52:64]}",
        "bootID": _digest(name + "boot")[:32], "kernelVersion": "6.8.0-49-generic",
        "osImage": "Ubuntu 24.04.1 LTS", "containerRuntimeVersion": "containerd://1.7.22-k3s1",
        "kubeletVersion": "v1.31.4+k3s1", "kubeProxyVersion": "v1.31.4+k3s1", "operatingSystem": "linux",
        "architecture": "amd64",
    }
    status["images"] = [
        {"names": [f"{img.rsplit(':', 1)[0]}@sha256:{_digest(img)}", img], "sizeBytes": 10_000_000 + i * 7_654_321}
        for i, img in enumerate(_IMAGES[:IMAGES_PER_NODE])
    ]
    return n


def node_objects(n: int, now: float | None = None, *, realistic: bool = False, seed: int = 42) -> list[dict[str, Any]]:
    now = time.time() if now is None else now
    objs = fleet_node_objects(generate_fleet(n, seed), now)
    return [realistic_node(o, now) for o in objs] if realistic else objs


def node_list(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "NodeList", "metadata": {"resourceVersion": "1"}, "items": items}


def managed_pod(name: str = "qwen3-14b-7d9f-abcde", *, vram_mib: int = 12000, backend: str = "llamacpp",
                gpus: int = 1) -> dict[str, Any]:
    """A controller-created pod as kube-scheduler sends it (informer object: no kind/apiVersion)."""
    now = time.time()
    return {
        "metadata": {
            "name": name, "generateName": name.rsplit("-", 1)[0] + "-", "namespace": "llm",
            "uid": "5f3c8f5e-1b7a-4f59-9d0e-" + _digest(name)[:12], "resourceVersion": "918273",
            "creationTimestamp": rfc3339(now),
            "labels": {keys.LABEL_MODEL: "qwen3-14b", "pod-template-hash": "7d9f",
                       keys.LABEL_MANAGED_BY: "flexinfer-controller"},
            "annotations": {keys.POD_MODEL: "qwen3-14b", keys.POD_BACKEND: backend,
                            keys.POD_VRAM_ESTIMATE_MB: str(vram_mib), keys.POD_VENDOR: "auto"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name.rsplit("-", 1)[0],
                                 "uid": "0b6e7a57-3c9d-4b8e-9f0a-1d2c3b4a5f60", "controller": True,
                                 "blockOwnerDeletion": True}],
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                               "time": rfc3339(now), "fieldsType": "FieldsV1",
                               "fieldsV1": {"f:metadata": {"f:annotations": {".": {}}, "f:labels": {".": {}}},
                                            "f:spec": {"f:containers": {'k:{"name":"server"}': {".": {}}}}}}],
        },
        "spec": {
            "containers": [{
                "name": "server", "image": "ghcr.io/ggml-org/llama.cpp:server-cuda-b6800",
                "args": ["--model", "/models/qwen3-14b-q4_k_m.gguf", "--ctx-size", "8192", "--port", "8080"],
                "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}],
                "resources": {"requests": {"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": str(gpus)},
                              "limits": {"memory": "16Gi", "nvidia.com/gpu": str(gpus)}},
                "volumeMounts": [{"name": "models", "mountPath": "/models", "readOnly": True}],
                "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent",
            }],
            "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": "model-cache"}}],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default", "schedulerName": "default-scheduler", "priority": 0,
            "enableServiceLinks": True, "preemptionPolicy": "PreemptLowerPriority",
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
                             "tolerationSeconds": 300}],
        },
        "status": {"phase": "Pending", "qosClass": "Burstable"},
    }


def args_nodenames(pod: dict[str, Any], names: list[str]) -> bytes:
    """ExtenderArgs, nodeCacheCapable form (PascalCase, as kube-scheduler >= 1.16 sends)."""
    return msgspec.json.encode({"Pod": pod, "Nodes": None, "NodeNames": names})


def args_nodes(pod: dict[str, Any], items: list[dict[str, Any]]) -> bytes:
    """ExtenderArgs, full-nodes form: a NodeList without kind/apiVersion."""
    return msgspec.json.encode({"Pod": pod, "Nodes": {"metadata": {}, "items": items}, "NodeNames": None})


def with_rv_suffix(items: list[dict[str, Any]], suffix: str) -> list[dict[str, Any]]:
    """The same Node objects with `suffix` appended to each resourceVersion (a copy: metadata only)."""
    return [{**i, "metadata": {**i["metadata"], "resourceVersion": f"{i['metadata'].get('resourceVersion', '')}"
                               f"{suffix}"}} for i in items]
