"""Model cache lifecycle (issue 15 point 5): the plan, the Jobs (their scripts run for real), the access mode
from the StorageClass, and the lifecycle against the fake API server; preflight's cache check reads the
status it writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import kubernetes_validate
import pytest
from flexinfer.controller import cache
from flexinfer.controller.reconcile import Controller
from flexinfer.controller.render import render_deployment

from flexinfer import keys
from flexinfer.model import parse_model

from .conftest import publish_nodes

NS = "ai"
T0 = 1_800_000_000.0


def mk(spec: dict, name: str = "r1") -> dict:
    return {"apiVersion": keys.MODEL_API_VERSION, "kind": keys.MODEL_KIND,
            "metadata": {"name": name, "namespace": NS, "uid": "u-1"}, "spec": spec}


GGUF = {"backend": "llamacpp", "source": "HF://unsloth/DeepSeek-R1-Distill-Qwen-32B-GGUF",
        "gpu": {"vendor": "amd", "vramEstimateMB": 18000}, "serverless": {"minReplicas": 1},
        "cache": {"strategy": "SharedPVC"},
        "config": {"ggufFile": "DeepSeek-R1-Distill-Qwen-32B-Q4_K_M.gguf", "mmproj": "mmproj-f16.gguf",
                   "hfRevision": "abc123", "hfIgnorePatterns": "*.md, *.txt"}}


# --- the plan (pure) ---------------------------------------------------------------------------------------

def test_gguf_repo_prefetches_only_the_named_files():
    p = cache.plan(parse_model(mk(GGUF)))
    assert p.prefetch == "hf" and p.pvc == "r1-cache"
    assert p.allow == ("DeepSeek-R1-Distill-Qwen-32B-Q4_K_M.gguf", "mmproj-f16.gguf")
    assert p.ignore == ("*.md", "*.txt") and p.revision == "abc123"
    assert p.local == "/models/hf-local/unsloth/DeepSeek-R1-Distill-Qwen-32B-GGUF"
    args = render_deployment(parse_model(mk(GGUF)), 1)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("-m") + 1] == f"{p.local}/DeepSeek-R1-Distill-Qwen-32B-Q4_K_M.gguf"
    assert args[args.index("--mmproj") + 1] == f"{p.local}/mmproj-f16.gguf"


def test_gguf_repo_without_a_file_is_never_downloaded_whole():
    spec = {**GGUF, "config": {}}
    p = cache.plan(parse_model(mk(spec)))
    assert p.prefetch == "" and not p.key and "ggufFile" in p.note
    args = render_deployment(parse_model(mk(spec)), 1)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--hf-repo" in args  # the server downloads what it needs itself


def test_repo_prefetch_with_patterns_and_a_new_key_per_spec():
    spec = {"backend": "vllm", "source": "HF://Qwen/Qwen3-8B-AWQ", "gpu": {"vendor": "nvidia"},
            "cache": {"strategy": "SharedPVC", "pvcName": "models"},
            "config": {"hfAllowPatterns": ["*.safetensors", "*.json"]}}
    p = cache.plan(parse_model(mk(spec)))
    assert p.pvc == "models" and p.allow == ("*.safetensors", "*.json") and p.check["patterns"] == list(p.allow)
    other = cache.plan(parse_model(mk({**spec, "config": {"hfAllowPatterns": "*.safetensors", "hfRevision": "v2"}})))
    assert other.key != p.key
    args = render_deployment(parse_model(mk(spec)), 1)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "/models/hf-local/Qwen/Qwen3-8B-AWQ"


@pytest.mark.parametrize(("ref", "path"), [
    ("llama3:8b", "/models/ollama/manifests/registry.ollama.ai/library/llama3/8b"),
    ("nomic-embed-text", "/models/ollama/manifests/registry.ollama.ai/library/nomic-embed-text/latest"),
    ("user/model:q4", "/models/ollama/manifests/registry.ollama.ai/user/model/q4"),
    ("hf.co/org/repo:Q4_K_M", "/models/ollama/manifests/hf.co/org/repo/Q4_K_M"),
])
def test_ollama_manifest_path(ref, path):
    assert cache.ollama_manifest(ref) == path


def test_no_cache_volume_no_plan_and_pvc_sources_are_checked():
    assert cache.plan(parse_model(mk({"backend": "ollama", "source": "ollama://llama3:8b"}))) is None
    assert cache.plan(parse_model(mk({"backend": "ollama", "source": "ollama://llama3:8b",
                                      "cache": {"strategy": "Memory"}}))) is None
    p = cache.plan(parse_model(mk({"backend": "vllm", "source": "pvc://nvme/qwen3-8b", "gpu": {}})))
    assert p.pvc == "nvme" and p.prefetch == "" and p.check == {"kind": "path", "path": "/models/qwen3-8b"}


@pytest.mark.parametrize(("provisioner", "mode"), [
    ("nfs.csi.k8s.io", "ReadWriteMany"), ("rook-ceph.cephfs.csi.ceph.com", "ReadWriteMany"),
    ("driver.longhorn.io", "ReadWriteMany"), ("rancher.io/local-path", "ReadWriteOnce"),
    ("ebs.csi.aws.com", "ReadWriteOnce"), ("rook-ceph.rbd.csi.ceph.com", "ReadWriteOnce"),
])
def test_access_mode_from_the_storage_class(provisioner, mode):
    sc = {"metadata": {"name": "sc"}, "provisioner": provisioner}
    assert cache.access_mode(sc)[0] == mode
    assert cache.access_mode(None)[0] == "ReadWriteOnce"


def test_default_storage_class():
    classes = [{"metadata": {"name": "b", "annotations": {cache.DEFAULT_CLASS_ANNOTATION: "false"}}},
               {"metadata": {"name": "a", "annotations": {cache.DEFAULT_CLASS_ANNOTATION: "true"}}}]
    assert cache.default_class(classes)["metadata"]["name"] == "a"
    assert cache.default_class([]) is None


def test_jobs_are_valid_kubernetes_objects_and_locked_down():
    m = parse_model(mk({**GGUF, "nodeSelector": {keys.LABEL_ARCH: "gfx1100"}}))
    p = cache.plan(m)
    for job in (cache.prefetch_job(m, p), cache.check_job(m, p),
                cache.prefetch_job(parse_model(mk({"backend": "ollama", "source": "ollama://llama3:8b",
                                                   "cache": {"strategy": "SharedPVC"}})),
                                   cache.plan(parse_model(mk({"backend": "ollama", "source": "ollama://llama3:8b",
                                                              "cache": {"strategy": "SharedPVC"}}))))):
        kubernetes_validate.validate(job, kubernetes_validate.latest_version(), strict=True)
        pod = job["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False and pod["restartPolicy"] == "Never"
        assert len(job["metadata"]["name"]) <= 63 and job["metadata"]["ownerReferences"][0]["controller"]
        assert keys.LABEL_MODEL not in job["spec"]["template"]["metadata"]["labels"]  # the Service must not pick it
    assert cache.prefetch_job(m, p)["spec"]["template"]["spec"]["nodeSelector"] == {keys.LABEL_ARCH: "gfx1100"}


# --- the Jobs' scripts, run for real ------------------------------------------------------------------------

def _env(job: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"] if "value" in e}


def test_hf_prefetch_script_calls_snapshot_download_with_the_plan(tmp_path: Path):
    """The Job's Python runs against a stand-in huggingface_hub that records its call."""
    m = parse_model(mk(GGUF))
    job = cache.prefetch_job(m, cache.plan(m))
    fake = tmp_path / "site" / "huggingface_hub"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(textwrap.dedent("""
        import json, os
        def snapshot_download(**kw):
            open(os.environ["RECORD"], "w").write(json.dumps(kw))
            return kw["local_dir"]
    """))
    env = {**os.environ, **_env(job), "PYTHONPATH": str(tmp_path / "site"), "RECORD": str(tmp_path / "call.json")}
    subprocess.run([sys.executable, "-c", env["FLEXINFER_SCRIPT"]], env=env, check=True, timeout=60)
    call = json.loads((tmp_path / "call.json").read_text())
    assert call == {"repo_id": "unsloth/DeepSeek-R1-Distill-Qwen-32B-GGUF", "revision": "abc123",
                    "allow_patterns": ["DeepSeek-R1-Distill-Qwen-32B-Q4_K_M.gguf", "mmproj-f16.gguf"],
                    "ignore_patterns": ["*.md", "*.txt"],
                    "local_dir": "/models/hf-local/unsloth/DeepSeek-R1-Distill-Qwen-32B-GGUF"}


def _run_check(job: dict, root: Path) -> subprocess.CompletedProcess:
    check = json.loads(_env(job)["FLEXINFER_CHECK"])
    # re-root /models to the temp dir
    text = json.dumps(check).replace("/models", str(root))
    script = job["spec"]["template"]["spec"]["containers"][0]["command"][2]
    return subprocess.run([sys.executable, "-c", script], env={**os.environ, "FLEXINFER_CHECK": text},
                          capture_output=True, text=True, timeout=60)


def test_check_script_finds_missing_partial_and_good_downloads(tmp_path: Path):
    m = parse_model(mk(GGUF))
    job = cache.check_job(m, cache.plan(m))
    d = tmp_path / "hf-local" / "unsloth" / "DeepSeek-R1-Distill-Qwen-32B-GGUF"
    r = _run_check(job, tmp_path)
    assert r.returncode == 1 and "does not exist" in r.stdout
    d.mkdir(parents=True)
    (d / "DeepSeek-R1-Distill-Qwen-32B-Q4_K_M.gguf").write_bytes(b"GGUF")
    r = _run_check(job, tmp_path)
    assert r.returncode == 1 and "mmproj-f16.gguf is missing" in r.stdout
    (d / "mmproj-f16.gguf").write_bytes(b"GGUF")
    (d / "x.gguf.incomplete").write_bytes(b"")
    r = _run_check(job, tmp_path)
    assert r.returncode == 1 and "unfinished downloads" in r.stdout
    (d / "x.gguf.incomplete").unlink()
    r = _run_check(job, tmp_path)
    assert r.returncode == 0, r.stdout


def test_check_script_for_ollama_and_pvc_sources(tmp_path: Path):
    om = parse_model(mk({"backend": "ollama", "source": "ollama://llama3:8b", "cache": {"strategy": "SharedPVC"}}))
    job = cache.check_job(om, cache.plan(om))
    assert _run_check(job, tmp_path).returncode == 1
    manifest = tmp_path / "ollama" / "manifests" / "registry.ollama.ai" / "library" / "llama3" / "8b"
    manifest.parent.mkdir(parents=True)
    manifest.write_text("{}")
    assert _run_check(job, tmp_path).returncode == 0
    pm = parse_model(mk({"backend": "vllm", "source": "pvc://nvme/qwen3-8b", "gpu": {}}))
    job = cache.check_job(pm, cache.plan(pm))
    (tmp_path / "qwen3-8b").mkdir()
    assert "is empty" in _run_check(job, tmp_path).stdout
    (tmp_path / "qwen3-8b" / "config.json").write_text("{}")
    assert _run_check(job, tmp_path).returncode == 0


# --- the lifecycle against the fake API server -------------------------------------------------------------

def complete(fake, name, ok=True):
    cond = {"type": "Complete" if ok else "Failed", "status": "True", "reason": "BackoffLimitExceeded",
            "message": "Job has reached the specified backoff limit"}
    fake.patch_object("jobs", name, {"status": {"conditions": [cond]}}, NS)


@pytest.mark.integration
def test_lifecycle_pvc_prefetch_check_then_start(fake_api, kube_api):
    from flexinfer.nodes import view_of
    from flexinfer.preflight import Level, run

    publish_nodes(fake_api, T0)
    fake_api.put_object({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                         "metadata": {"name": "nfs", "annotations": {cache.DEFAULT_CLASS_ANNOTATION: "true"}},
                         "provisioner": "nfs.csi.k8s.io"})
    obj = mk(GGUF)
    del obj["metadata"]["uid"]
    fake_api.put_object(obj)
    ctl = Controller(kube_api, namespace=NS, clock=lambda: T0)
    ctl.reconcile_once()
    pvc = fake_api.get_object("persistentvolumeclaims", "r1-cache", NS)
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # the default class is NFS
    st = fake_api.get_object("models", "r1", NS)["status"]
    prefetch = st["cache"]["prefetchJob"]
    assert st["cache"] == {"pvc": "r1-cache", "key": st["cache"]["key"], "accessMode": "ReadWriteMany",
                           "prefetchJob": prefetch, "ready": False, "phase": "Prefetching",
                           "message": f"starting Job {prefetch}"}
    assert fake_api.get_object("jobs", prefetch, NS) is not None
    assert fake_api.get_object("deployments", "r1", NS)["spec"]["replicas"] == 0  # always-on, but not yet
    assert st["phase"] == "Pending" and "cache is not ready" in st["message"]
    # preflight on the Model as the cluster has it: BLOCK while not prefetched
    nodes = [view_of(n) for n in fake_api.list_objects("nodes")]
    report = run(parse_model(fake_api.get_object("models", "r1", NS), allow_never_runs=True), nodes, now=T0)
    assert next(c for c in report.checks if c.name == "cache_prefetch").level is Level.BLOCK
    ctl.reconcile_once()
    assert len(fake_api.list_objects("jobs", NS)) == 1  # no second prefetch while one runs
    complete(fake_api, prefetch)
    ctl.reconcile_once()
    st = fake_api.get_object("models", "r1", NS)["status"]
    check = st["cache"]["checkJob"]
    assert st["cache"]["phase"] == "Checking" and fake_api.get_object("jobs", check, NS) is not None
    complete(fake_api, check, ok=False)  # the files are not there: Failed, says how to retry
    ctl.reconcile_once()
    st = fake_api.get_object("models", "r1", NS)["status"]
    assert st["phase"] == "Failed" and st["cache"]["phase"] == "Failed" and "delete the Job" in st["cache"]["message"]
    assert any(e["reason"] == "CacheFailed" for e in fake_api.list_objects("events", NS))
    fake_api.delete_object("jobs", check, NS)  # the operator fixed the cache and deletes the failed check
    ctl.reconcile_once()
    assert fake_api.get_object("models", "r1", NS)["status"]["cache"]["phase"] == "Checking"
    complete(fake_api, check)
    ctl.reconcile_once()
    st = fake_api.get_object("models", "r1", NS)["status"]
    assert st["cache"]["ready"] is True and st["cache"]["phase"] == "Ready"
    assert fake_api.get_object("deployments", "r1", NS)["spec"]["replicas"] == 1
    report = run(parse_model(fake_api.get_object("models", "r1", NS), allow_never_runs=True), nodes, now=T0)
    assert next(c for c in report.checks if c.name == "cache_prefetch").level is Level.PASS
    # ready stays ready for this spec even when the finished Jobs are cleaned up by someone
    for j in fake_api.list_objects("jobs", NS):
        fake_api.delete_object("jobs", j["metadata"]["name"], NS)
    before = len(fake_api.requests("GET"))
    ctl.reconcile_once()
    assert fake_api.list_objects("jobs", NS) == []
    assert fake_api.get_object("models", "r1", NS)["status"]["cache"]["ready"] is True
    # and nobody looks for them any more (no GET per Job per pass once the cache is ready)
    assert not [r for r in fake_api.requests("GET")[before:] if "/jobs/" in r.path]


@pytest.mark.integration
def test_a_member_whose_cache_is_not_ready_does_not_preempt(fake_api, kube_api):
    from flexinfer.controller.reconcile import activate

    publish_nodes(fake_api, T0)
    base = {"backend": "llamacpp", "gpu": {"vendor": "amd", "shared": "q", "vramEstimateMB": 8000},
            "serverless": {"idleTimeout": "1m"}}
    fake_api.put_object(mk({**base, "source": "HF://a/small-GGUF", "gpu": {**base["gpu"], "priority": 10},
                            "serverless": {"minReplicas": 1}}, name="small"))
    fake_api.put_object(mk({**base, "source": "HF://a/big-GGUF", "gpu": {**base["gpu"], "priority": 90},
                            "cache": {"strategy": "SharedPVC"}, "config": {"ggufFile": "big.gguf"}}, name="big"))
    ctl = Controller(kube_api, namespace=NS, clock=lambda: T0)
    ctl.reconcile_once()
    activate(kube_api, NS, "big", now=T0)
    ctl.reconcile_once()
    assert fake_api.get_object("deployments", "small", NS)["spec"]["replicas"] == 1
    assert fake_api.get_object("deployments", "big", NS)["spec"]["replicas"] == 0
    assert fake_api.get_object("models", "big", NS)["status"]["conditions"][0]["reason"] == "CacheNotReady"


def test_ollama_prefetch_job_uses_the_operators_image_override():
    """Air-gapped clusters mirror images: the Ollama prefetch Job runs `--backend-image ollama[/cpu]=...` (or the
    Model's own spec.image) like the model pod, not the registry's public image."""
    from controller.backends import parse_image_overrides
    from flexinfer import backends

    doc = {"backend": "ollama", "source": "ollama://llama3:8b", "cache": {"strategy": "SharedPVC"}}
    m = parse_model(mk(doc))
    p = cache.plan(m)

    def image(job: dict) -> str:
        return job["spec"]["template"]["spec"]["containers"][0]["image"]

    mirror = "registry.local/ollama/ollama@sha256:" + "a" * 64
    assert image(cache.prefetch_job(m, p)) == backends.REGISTRY["ollama"].image_for("cpu")
    assert image(cache.prefetch_job(m, p, overrides=parse_image_overrides([f"ollama={mirror}"]))) == mirror
    assert image(cache.prefetch_job(m, p, overrides=parse_image_overrides([f"ollama/cpu={mirror}"]))) == mirror
    own = parse_model(mk({**doc, "image": mirror}))
    assert image(cache.prefetch_job(own, cache.plan(own))) == mirror
    state = cache.evaluate(m, p, {}, None, overrides=parse_image_overrides([f"ollama={mirror}"]))
    assert [image(j) for j in state.create] == [mirror]
