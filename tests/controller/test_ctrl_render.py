"""Rendered Deployment / Service / PVC for Models (controller.render, controller.backends)."""

from __future__ import annotations

import pytest
from flexinfer.controller.backends import container_for, source_ref
from flexinfer.controller.render import (
    effective_vendor,
    endpoint,
    render_all,
    render_deployment,
    render_pvc,
    render_service,
    startup_failure_threshold,
)

from flexinfer import keys
from flexinfer.backends import NAMES as BACKENDS
from flexinfer.model import parse_model


def mk(spec, name="qwen3-14b", ns="ai"):
    return parse_model({"apiVersion": keys.MODEL_API_VERSION, "kind": keys.MODEL_KIND,
                        "metadata": {"name": name, "namespace": ns, "uid": "u-1"}, "spec": spec})


GPU_MODEL = mk({"backend": "llamacpp", "source": "HF://Qwen/Qwen3-14B-GGUF",
                "gpu": {"vendor": "amd", "shared": "quality", "priority": 100, "vramEstimateMB": 12000},
                "serverless": {"coldStartTimeout": "5m", "minReplicas": 1},
                "config": {"ggufFile": "Qwen3-14B-Q4_K_M.gguf", "ctxSize": 8192},
                "cache": {"strategy": "SharedPVC", "size": "40Gi", "storageClass": "local"},
                "serviceLabels": ["fast-chat", "gpt-4"],
                "litellm": {"aliases": ["gpt-4"]}})


def test_gpu_deployment_full():
    d = render_deployment(GPU_MODEL, 1)
    pod = d["spec"]["template"]
    c = pod["spec"]["containers"][0]
    assert d["spec"]["strategy"] == {"type": "Recreate"}
    assert d["spec"]["replicas"] == 1
    assert d["metadata"]["ownerReferences"] == [{"apiVersion": keys.MODEL_API_VERSION, "kind": "Model",
                                                 "name": "qwen3-14b", "uid": "u-1", "controller": True,
                                                 "blockOwnerDeletion": True}]
    assert d["spec"]["selector"] == {"matchLabels": {keys.LABEL_MODEL: "qwen3-14b"}}
    assert pod["metadata"]["labels"][keys.LABEL_MODEL] == "qwen3-14b"
    assert pod["metadata"]["labels"][keys.SERVICE_LABEL_PREFIX + "gpt-4"] == "true"
    assert pod["metadata"]["annotations"] == {
        keys.POD_MODEL: "qwen3-14b", keys.POD_BACKEND: "llamacpp", keys.POD_VRAM_ESTIMATE_MB: "12000",
        keys.POD_VENDOR: "amd", keys.POD_GROUP: "quality"}
    assert c["resources"] == {"limits": {"amd.com/gpu": "1"}, "requests": {"amd.com/gpu": "1"}}
    assert c["image"] == "ghcr.io/ggml-org/llama.cpp:server-rocm-b6000"  # pinned build, never a moving tag
    # the cache PVC is prefetched with just that GGUF (controller.cache): the server reads it from there
    assert c["args"][c["args"].index("-m") + 1] == "/models/hf-local/Qwen/Qwen3-14B-GGUF/Qwen3-14B-Q4_K_M.gguf"
    assert "--hf-repo" not in c["args"]
    assert c["args"][c["args"].index("-c") + 1] == "8192"
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    sp = c["startupProbe"]
    assert sp["failureThreshold"] * sp["periodSeconds"] >= 300
    assert pod["spec"]["volumes"] == [{"name": "models", "persistentVolumeClaim": {"claimName": "qwen3-14b-cache"}},
                                      {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}]
    assert c["volumeMounts"] == [{"name": "models", "mountPath": "/models"}, {"name": "dshm", "mountPath": "/dev/shm"}]
    tol = pod["spec"]["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tol
    assert {"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tol


def test_pvc_and_service():
    pvc = render_pvc(GPU_MODEL)
    assert pvc["metadata"]["name"] == "qwen3-14b-cache"
    assert pvc["spec"] == {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "40Gi"}},
                           "storageClassName": "local"}
    assert pvc["metadata"]["ownerReferences"][0]["controller"] is True
    svc = render_service(GPU_MODEL)
    assert svc["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]
    assert svc["spec"]["selector"] == {keys.LABEL_MODEL: "qwen3-14b"}
    ann = svc["metadata"]["annotations"]
    assert ann["litellm.flexinfer.ai/aliases"] == "gpt-4"
    assert ann["litellm.flexinfer.ai/api-base"] == "http://qwen3-14b.ai.svc:8080/v1"
    assert svc["metadata"]["labels"][keys.SERVICE_LABEL_PREFIX + "fast-chat"] == "true"
    assert endpoint(GPU_MODEL) == "http://qwen3-14b.ai.svc:8080"
    assert [o["kind"] for o in render_all(GPU_MODEL, 0)] == ["PersistentVolumeClaim", "Deployment", "Service"]


def test_pvc_source_mounted_and_no_cache_pvc():
    m = mk({"backend": "vllm", "source": "pvc://models-nvme/qwen3-8b", "gpu": {"vendor": "nvidia", "count": 2},
            "cache": {"strategy": "SharedPVC"}})
    assert render_pvc(m) is None
    d = render_deployment(m, 1)
    c = d["spec"]["template"]["spec"]["containers"][0]
    assert d["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"] == {"claimName": "models-nvme"}
    assert c["args"][0] == "/models/qwen3-8b"
    assert c["args"][c["args"].index("--tensor-parallel-size") + 1] == "2"
    assert c["resources"]["limits"] == {"nvidia.com/gpu": "2"}


def test_memory_cache_cpu_model_and_estimate():
    m = mk({"backend": "ollama", "source": "ollama://llama3:8b", "cache": {"strategy": "Memory", "size": "8Gi"}})
    d = render_deployment(m, 1)
    pod = d["spec"]["template"]
    assert pod["spec"]["volumes"][0] == {"name": "models", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}}
    assert "strategy" not in d["spec"]
    assert "resources" not in pod["spec"]["containers"][0]
    assert "tolerations" not in pod["spec"]
    assert keys.POD_VRAM_ESTIMATE_MB not in pod["metadata"]["annotations"]
    c = pod["spec"]["containers"][0]
    assert c["readinessProbe"]["exec"] == {"command": ["ollama", "show", "llama3:8b"]}  # ready once pulled
    assert c["livenessProbe"]["httpGet"]["path"] == "/api/version"
    g = mk({"backend": "ollama", "source": "ollama://llama3:8b", "gpu": {},
            "config": {"contextLength": 8192, "kvCacheType": "q8_0"}})
    ann = render_deployment(g, 1)["spec"]["template"]["metadata"]["annotations"]
    assert int(ann[keys.POD_VRAM_ESTIMATE_MB]) > 4000
    assert keys.POD_VENDOR not in ann  # auto: the resource decides
    env = {e["name"]: e["value"] for e in render_deployment(g, 1)["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["OLLAMA_CONTEXT_LENGTH"] == "8192" and env["OLLAMA_KV_CACHE_TYPE"] == "q8_0"


@pytest.mark.parametrize(
    ("spec_gpu", "selector", "auto", "vendor"),
    [
        ({}, {}, "nvidia", "nvidia"),
        ({}, {}, "amd", "amd"),
        ({}, {keys.LABEL_VENDOR: "amd"}, "nvidia", "amd"),
        ({"vendor": "NVIDIA"}, {}, "amd", "nvidia"),
        ({"vendor": "cpu"}, {}, "amd", "cpu"),
        ({}, {}, "bogus", "nvidia"),
    ],
)
def test_effective_vendor(spec_gpu, selector, auto, vendor):
    m = mk({"backend": "llamacpp", "source": "HF://a/b", "gpu": spec_gpu, "nodeSelector": selector})
    assert effective_vendor(m, auto) == vendor


def test_image_override_jit_policy_and_replicas_clamped():
    m = mk({"backend": "mlc", "source": "HF://mlc-ai/Qwen3-8B-q4f32_1-MLC", "image": "me/mlc:1",
            "gpu": {"vendor": "nvidia"}, "config": {"jitPolicy": "readonly", "modelLibPath": "/models/x.so"}})
    d = render_deployment(m, 5)
    c = d["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "me/mlc:1" and d["spec"]["replicas"] == 1
    assert c["args"][:2] == ["serve", "HF://mlc-ai/Qwen3-8B-q4f32_1-MLC"]
    assert "--model-lib" in c["args"]
    assert d["spec"]["template"]["metadata"]["annotations"][keys.POD_JIT_POLICY] == "READONLY"


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_every_backend_renders(backend):
    m = mk({"backend": backend, "source": "HF://org/model-7b", "gpu": {"vendor": "nvidia"}})
    c = container_for(m, "nvidia")
    assert c.image and c.port > 0 and c.health_path.startswith("/")
    d = render_deployment(m, 1)
    assert d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] == c.port


@pytest.mark.parametrize(("src", "ref"), [
    ("HF://org/m", ("hf", "org/m")), ("ollama://llama3:8b", ("ollama", "llama3:8b")),
    ("file:///data/m.gguf", ("file", "/data/m.gguf")), ("pvc://p/dir/m", ("pvc", "/models/dir/m")),
])
def test_source_ref(src, ref):
    assert source_ref(src) == ref


@pytest.mark.parametrize(("timeout", "threshold"), [(300, 30), (301, 31), (0, 1), (5, 1)])
def test_startup_threshold(timeout, threshold):
    assert startup_failure_threshold(timeout) == threshold


def test_preferred_archs_from_compiled_cache_and_pinned_arch():
    from flexinfer.controller.render import pod_annotations, preferred_archs

    from flexinfer import keys
    from flexinfer.model import parse_model

    m = parse_model({"metadata": {"name": "m"}, "spec": {
        "backend": "mlc-llm", "source": "HF://mlc-ai/Qwen3-14B-q4f16_1-MLC",
        "gpu": {"vendor": "amd", "vramEstimateMB": 12288},
        "config": {"compiledArchs": "gfx1100, GFX942"}, "nodeSelector": {keys.LABEL_ARCH: "gfx1151"}}})
    assert preferred_archs(m) == ["gfx1100", "gfx942", "gfx1151"]
    assert pod_annotations(m, "amd")[keys.POD_PREFERRED_ARCHS] == "gfx1100,gfx942,gfx1151"
    plain = parse_model({"metadata": {"name": "p"}, "spec": {"backend": "ollama", "source": "ollama://x:1b"}})
    assert keys.POD_PREFERRED_ARCHS not in pod_annotations(plain, "nvidia")


# --- issue 15 point 6: model pods as operators run them --------------------------------------------------

@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_pods_have_no_api_token_and_a_memory_backed_shm_sized_by_the_registry(backend):
    from flexinfer.backends import REGISTRY

    m = mk({"backend": backend, "source": "HF://org/model-7b", "gpu": {"vendor": "nvidia"}})
    pod = render_deployment(m, 1)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm == {"name": "dshm", "emptyDir": {"medium": "Memory",
                                                "sizeLimit": f"{REGISTRY[backend].shm_mib // 1024}Gi"}}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]
    assert REGISTRY[backend].shm_mib >= 1024  # the container runtime's 64 MiB default breaks PyTorch workers


def test_runtime_class_per_vendor_and_scheduler_name():
    from flexinfer.controller.render import RenderOptions

    opts = RenderOptions(runtime_class={"nvidia": "nvidia"}, scheduler_name="flexinfer-scheduler")
    nv = mk({"backend": "vllm", "source": "HF://Qwen/Qwen3-8B", "gpu": {"vendor": "nvidia"}})
    pod = render_deployment(nv, 1, options=opts)["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == "nvidia" and pod["schedulerName"] == "flexinfer-scheduler"
    amd = render_deployment(GPU_MODEL, 1, options=opts)["spec"]["template"]["spec"]
    assert "runtimeClassName" not in amd and amd["schedulerName"] == "flexinfer-scheduler"
    cpu = mk({"backend": "ollama", "source": "ollama://llama3:8b"})
    assert "runtimeClassName" not in render_deployment(cpu, 1, "nvidia", opts)["spec"]["template"]["spec"]
    plain = render_deployment(nv, 1)["spec"]["template"]["spec"]
    assert "runtimeClassName" not in plain and "schedulerName" not in plain


def test_image_overrides_pin_digests_and_reject_moving_tags():
    from flexinfer.controller.backends import parse_image_overrides
    from flexinfer.controller.render import RenderOptions

    from flexinfer.errors import ParseError

    digest = "rocm/vllm@sha256:" + "0" * 64
    ov = parse_image_overrides([f"vllm/amd={digest}", "llama.cpp=registry.local/llama.cpp:server-b6100"])
    assert ov == {("vllm", "amd"): digest, ("llamacpp", "*"): "registry.local/llama.cpp:server-b6100"}
    opts = RenderOptions(image_overrides=ov)
    vllm_amd = mk({"backend": "vllm", "source": "HF://Qwen/Qwen3-8B", "gpu": {"vendor": "amd"}})
    assert render_deployment(vllm_amd, 1, options=opts)["spec"]["template"]["spec"]["containers"][0]["image"] == digest
    vllm_nv = mk({"backend": "vllm", "source": "HF://Qwen/Qwen3-8B", "gpu": {"vendor": "nvidia"}})
    assert render_deployment(vllm_nv, 1, options=opts)["spec"]["template"]["spec"]["containers"][0]["image"] == \
        "vllm/vllm-openai:v0.8.5"
    llama = render_deployment(GPU_MODEL, 1, options=opts)["spec"]["template"]["spec"]["containers"][0]["image"]
    assert llama == "registry.local/llama.cpp:server-b6100"
    for bad in ("vllm=vllm/vllm-openai:latest", "vllm=vllm/vllm-openai", "vllm/amd=rocm/vllm:latest-rocm",
                "tgi=x:1", "vllm/ati=x:1", "vllm", "=x:1"):
        with pytest.raises(ParseError):
            parse_image_overrides([bad])


@pytest.mark.parametrize(("mib", "q"), [(1024, "1Gi"), (8192, "8Gi"), (1536, "1536Mi"), (100, "100Mi")])
def test_quantities_are_rendered_as_the_api_server_stores_them(mib, q):
    from flexinfer.controller.render import mib_quantity

    assert mib_quantity(mib) == q
