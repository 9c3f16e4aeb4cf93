"""Against a real kube-apiserver: the CRD is accepted and its CEL rules enforced, and the agent's
merge patch on a real Node touches only our keys."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from flexinfer import keys, kube

pytestmark = pytest.mark.envtest
ROOT = Path(__file__).resolve().parents[2]


def test_crd_installs_and_cel_rejects_cpu_with_count(envtest_kubeconfig):
    api = kube.api_client(kubeconfig=envtest_kubeconfig)
    crd = yaml.safe_load((ROOT / "daemonset/base/crd-models.yaml").read_text())
    kube.apply_object(api, crd)
    kube.apply_object(api, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ai"}})
    good = {"apiVersion": keys.MODEL_API_VERSION, "kind": "Model", "metadata": {"name": "ok", "namespace": "ai"},
            "spec": {"backend": "ollama", "source": "ollama://llama3:8b"}}
    bad = {"apiVersion": keys.MODEL_API_VERSION, "kind": "Model", "metadata": {"name": "bad", "namespace": "ai"},
           "spec": {"backend": "ollama", "source": "ollama://llama3:8b", "gpu": {"vendor": "cpu", "count": 1}}}
    for _ in range(60):  # the CRD takes a moment to be served
        try:
            kube.create_object(api, good)
            break
        except kube.KubeError:
            time.sleep(0.5)
    with pytest.raises(kube.KubeError) as e:
        kube.create_object(api, bad)
    assert e.value.status == 422


def test_agent_patch_touches_only_our_keys(envtest_kubeconfig):
    api = kube.api_client(kubeconfig=envtest_kubeconfig)
    kube.create_object(api, {"apiVersion": "v1", "kind": "Node",
                             "metadata": {"name": "gpu-1", "labels": {"other": "keep"}}})
    kube.patch_node_metadata(api, "gpu-1", {keys.LABEL_VENDOR: "nvidia"}, {keys.ANN_FREE_MEMORY: "5800"})
    kube.patch_node_metadata(api, "gpu-1", {keys.LABEL_VENDOR: None}, {})
    node = kube.get_object(api, "nodes", "gpu-1")
    assert node["metadata"]["labels"]["other"] == "keep"
    assert keys.LABEL_VENDOR not in node["metadata"]["labels"]
    assert node["metadata"]["annotations"][keys.ANN_FREE_MEMORY] == "5800"
