"""Rendered objects are valid Kubernetes objects (pinned JSON schemas, strict: no unknown fields)."""

from __future__ import annotations

import kubernetes_validate
import pytest
from flexinfer.controller.render import RenderOptions, render_all

from flexinfer import keys
from flexinfer.backends import NAMES as BACKENDS
from flexinfer.model import parse_model

K8S_VERSION = kubernetes_validate.latest_version()

SPECS = [
    {"backend": b, "source": "HF://org/model-7b", "gpu": {"vendor": "amd", "shared": "g", "priority": 5},
     "cache": {"strategy": "SharedPVC", "size": "20Gi"}, "serviceLabels": ["chat"],
     "litellm": {"aliases": ["gpt-4"]}, "resources": {"requests": {"memory": "8Gi"}},
     "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ai", "effect": "NoSchedule"}]}
    for b in sorted(BACKENDS)
] + [
    {"backend": "ollama", "source": "ollama://llama3:8b", "cache": {"strategy": "Memory"}},
    {"backend": "vllm", "source": "pvc://models/qwen3-8b", "gpu": {"vendor": "nvidia", "count": 2}},
    {"backend": "llamacpp", "source": "file:///data/m.gguf", "gpu": {}},
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s['backend']}-{s['source'][:8]}")
def test_rendered_objects_validate(spec):
    m = parse_model({"apiVersion": keys.MODEL_API_VERSION, "kind": keys.MODEL_KIND,
                     "metadata": {"name": "m1", "namespace": "ai", "uid": "u"}, "spec": spec})
    opts = RenderOptions(runtime_class={"nvidia": "nvidia", "amd": "rocm"}, scheduler_name="flexinfer-scheduler")
    for vendor in ("nvidia", "amd"):
        for obj in render_all(m, 1, vendor, opts):
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
