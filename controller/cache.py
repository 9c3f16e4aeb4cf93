"""Model cache lifecycle (pure: plans, Job objects and status from plain dicts; no I/O).

A Model whose files live in a PVC mounted at /models (``spec.cache.strategy: SharedPVC``, or a ``pvc://``
source) gets:

1. **the cache PVC** ``<model>-cache`` (SharedPVC without ``pvcName``), with the access mode its storage
   class can give (:func:`access_mode`): ReadWriteMany when the class's provisioner is a shared filesystem
   (so the prefetch Job and the model pod may run on different nodes), else ReadWriteOnce. The PVC is
   never deleted by the controller (it holds downloaded weights); it goes with the Model (owner reference).
2. **a prefetch Job** for ``HF://`` and ``ollama://`` sources that downloads the model into the PVC before
   the model may start: ``huggingface_hub.snapshot_download`` into ``/models/hf-local/<org>/<repo>`` with
   ``spec.config.hfAllowPatterns`` / ``hfIgnorePatterns`` (lists or comma-separated strings) and
   ``hfRevision``; for GGUF backends (llama.cpp) only ``spec.config.ggufFile`` and its ``mmproj`` (plus any
   hfAllowPatterns), never a whole multi-quant repo; ``ollama pull`` into ``/models/ollama`` for Ollama.
3. **a cache-check Job** that verifies the files are there (each allow pattern matched, no ``.incomplete``
   download left; the Ollama manifest; the path of a ``pvc://`` source) and ends in Complete or Failed.

``status.cache`` says where it stands: ``{ready, phase: Prefetching|Checking|Ready|Failed, key, pvc,
accessMode, prefetchJob, checkJob, message}``. ``key`` hashes what is prefetched (source, revision,
patterns, files); a spec change gives new Job names and starts over. A Model whose cache is not ready does
not start (and never preempts anyone for it). Jobs are kept after they finish (no TTL: a vanished Job would
be recreated); deleting a failed Job makes the controller run it again. The model server then reads the
prefetched directory (``recipes`` get it as ``local``) instead of downloading at start.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from flexinfer import backends, keys
from flexinfer.backends.recipes import (
    MODELS_DIR,
    OLLAMA_DIR,
    OLLAMA_SERVE,
    cfg,
    hf_local_dir,
    pvc_of_source,
    source_ref,
)
from flexinfer.model import Model

from .backends import ImageOverrides, image_for

JSON = dict[str, Any]

# Images of the helper Jobs (pinned; --prefetch-image replaces the HF one, e.g. with an image that already
# has huggingface_hub, for clusters without access to PyPI).
HF_PREFETCH_IMAGE = "python:3.12.8-slim"
HF_HUB_VERSION = "0.30.2"
CHECK_IMAGE = HF_PREFETCH_IMAGE
HF_TOKEN_SECRET = "flexinfer-hf-token"  # optional Secret (key "token") for gated Hugging Face repos
PREFETCH_DEADLINE_S = 6 * 3600
CHECK_DEADLINE_S = 600

READY, PREFETCHING, CHECKING, FAILED = "Ready", "Prefetching", "Checking", "Failed"

# Storage provisioners that give ReadWriteMany (shared filesystems). Anything else gets ReadWriteOnce, which
# every provisioner supports. Rook names its CephFS driver "<namespace>.cephfs.csi.ceph.com".
RWX_PROVISIONERS = frozenset({
    "nfs.csi.k8s.io", "k8s-sigs.io/nfs-subdir-external-provisioner", "cluster.local/nfs-subdir-external-provisioner",
    "cephfs.csi.ceph.com", "driver.longhorn.io", "efs.csi.aws.com", "file.csi.azure.com", "kubernetes.io/azure-file",
    "filestore.csi.storage.gke.io", "kubernetes.io/glusterfs", "nfs.csi.netapp.com", "csi.juicefs.com",
    "seaweedfs-csi-driver",
})
DEFAULT_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"


@dataclass(frozen=True, slots=True)
class Plan:
    """What the cache of one Model needs."""

    pvc: str  # claim mounted at /models
    prefetch: str  # "hf" | "ollama" | "" (nothing to download)
    key: str  # hash of what is prefetched/checked
    check: JSON  # what the check Job verifies (JSON for its script)
    local: str | None = None  # directory the server reads instead of downloading (HF prefetch)
    repo: str = ""
    revision: str = ""
    allow: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    ollama_ref: str = ""
    note: str = ""  # why there is no prefetch although the source could be downloaded


def _patterns(value: Any) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else []
    return tuple(str(x).strip() for x in items if str(x).strip())


def cache_pvc(model: Model) -> str | None:
    src = pvc_of_source(model.spec.source)
    if src:
        return src
    if model.spec.cache.strategy == "SharedPVC":
        return model.spec.cache.pvc_name or f"{model.name}-cache"
    return None


def ollama_manifest(ref: str) -> str:
    """Where ``ollama pull ref`` leaves its manifest under OLLAMA_MODELS."""
    name, _, tag = ref.partition(":")
    parts = name.split("/")
    if len(parts) == 1:
        parts = ["registry.ollama.ai", "library", *parts]
    elif len(parts) == 2:
        parts = ["registry.ollama.ai", *parts]
    return "/".join([OLLAMA_DIR, "manifests", *parts, tag or "latest"])


def plan(model: Model) -> Plan | None:
    """The cache plan of `model`, None when it has no cache volume (strategy Memory/None, file:// sources)."""
    pvc = cache_pvc(model)
    if not pvc:
        return None
    kind, ref = source_ref(model.spec.source)
    if kind == "pvc":
        check = {"kind": "path", "path": ref}
        return Plan(pvc, "", _key(check), check)
    if kind == "ollama":
        check = {"kind": "file", "path": ollama_manifest(ref)}
        return Plan(pvc, "ollama", _key({**check, "ref": ref}), check, ollama_ref=ref)
    if kind != "hf":
        return None
    mode = backends.REGISTRY[model.backend].hf_prefetch
    allow = _patterns(cfg(model, "hfAllowPatterns"))
    ignore = _patterns(cfg(model, "hfIgnorePatterns"))
    revision = str(cfg(model, "hfRevision") or "")
    local = hf_local_dir(ref)
    if not mode:
        return Plan(pvc, "", "", {}, note=f"{model.backend} downloads {ref} itself")
    if mode == "gguf":
        gguf = cfg(model, "ggufFile")
        if not gguf:
            return Plan(pvc, "", "", {}, note=f"{model.backend} prefetches only named GGUF files: set "
                                              "spec.config.ggufFile (a multi-quant repo is never downloaded whole)")
        files = tuple(str(f) for f in (gguf, cfg(model, "mmproj")) if f)
        allow = (*files, *(a for a in allow if a not in files))
        check = {"kind": "hf", "dir": local, "files": list(files), "patterns": list(allow)}
    else:
        check = {"kind": "hf", "dir": local, "files": [], "patterns": list(allow)}
    key = _key({"repo": ref, "revision": revision, "allow": allow, "ignore": ignore, **check})
    return Plan(pvc, "hf", key, check, local, ref, revision, allow, ignore)


def _key(data: JSON) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]


# --- storage class -> access mode ----------------------------------------------------------------------

def default_class(classes: Iterable[JSON]) -> JSON | None:
    marked = [c for c in classes if (c.get("metadata") or {}).get("annotations", {}).get(DEFAULT_CLASS_ANNOTATION)
              == "true"]
    return sorted(marked, key=lambda c: (c.get("metadata") or {}).get("name", ""))[0] if marked else None


def access_mode(storage_class: JSON | None) -> tuple[str, str]:
    """(access mode, why) for the cache PVC from its StorageClass (None: unknown)."""
    if storage_class is None:
        return "ReadWriteOnce", "storage class unknown or not readable: ReadWriteOnce works everywhere"
    name = (storage_class.get("metadata") or {}).get("name", "")
    prov = str(storage_class.get("provisioner") or "")
    if prov in RWX_PROVISIONERS or prov.endswith(".cephfs.csi.ceph.com"):
        return "ReadWriteMany", f"storage class {name} ({prov}) is a shared filesystem"
    return "ReadWriteOnce", f"storage class {name} ({prov}) gives ReadWriteOnce"


# --- Jobs ----------------------------------------------------------------------------------------------

def job_name(model: Model, what: str, key: str) -> str:
    return f"{model.name[:40].rstrip('-')}-{what}-{key[:8]}"


_HF_SCRIPT = """
import json, os
from huggingface_hub import snapshot_download
allow = json.loads(os.environ["FLEXINFER_HF_ALLOW"]) or None
ignore = json.loads(os.environ["FLEXINFER_HF_IGNORE"]) or None
path = snapshot_download(repo_id=os.environ["FLEXINFER_HF_REPO"], revision=os.environ.get("FLEXINFER_HF_REVISION")
                         or None, allow_patterns=allow, ignore_patterns=ignore, local_dir=os.environ["FLEXINFER_DEST"])
print("prefetched into", path)
"""

_CHECK_SCRIPT = """
import fnmatch, json, os, sys
c = json.loads(os.environ["FLEXINFER_CHECK"])
def fail(msg):
    print("cache check failed:", msg); sys.exit(1)
if c["kind"] in ("path", "file"):
    p = c["path"]
    if not os.path.exists(p): fail(p + " does not exist")
    if os.path.isdir(p) and not os.listdir(p): fail(p + " is empty")
    if os.path.isfile(p) and os.path.getsize(p) == 0: fail(p + " is empty")
else:
    d = c["dir"]
    if not os.path.isdir(d): fail(d + " does not exist")
    rel = [os.path.relpath(os.path.join(r, f), d) for r, _, fs in os.walk(d) for f in fs]
    rel = [f for f in rel if not f.startswith(".cache" + os.sep)]
    if not rel: fail(d + " is empty")
    partial = [f for f in rel if f.endswith(".incomplete")]
    if partial: fail("unfinished downloads: " + ", ".join(partial[:5]))
    for f in c["files"]:
        p = os.path.join(d, f)
        if not os.path.isfile(p) or os.path.getsize(p) == 0: fail(f + " is missing or empty in " + d)
    for pat in c["patterns"]:
        if not any(fnmatch.fnmatch(f, pat) for f in rel): fail("no file matches " + pat + " in " + d)
print("cache ok")
"""


def _job(model: Model, name: str, pvc: str, container: JSON, deadline_s: int, backoff: int) -> JSON:
    from .render import owner_refs  # render imports this module

    labels = {keys.LABEL_MODEL: model.name, keys.LABEL_MANAGED_BY: keys.MANAGED_BY}
    pod_spec: JSON = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "containers": [{**container, "volumeMounts": [{"name": "models", "mountPath": MODELS_DIR}],
                        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "2Gi"}}}],
        "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": pvc}}],
    }
    # Node-local storage binds the PVC to the node of its first user: keep the Job where the model may run.
    if model.spec.node_selector:
        pod_spec["nodeSelector"] = dict(model.spec.node_selector)
    if model.spec.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in model.spec.tolerations]
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": model.namespace, "labels": labels,
                         "ownerReferences": owner_refs(model)},
            "spec": {"backoffLimit": backoff, "activeDeadlineSeconds": deadline_s,
                     # no flexinfer.ai/model label on the Job's pods: the model's Service selects by it
                     "template": {"metadata": {"labels": {keys.LABEL_MANAGED_BY: keys.MANAGED_BY,
                                                          keys.PREFIX + "cache-of": model.name}},
                                  "spec": pod_spec}}}


def prefetch_job(model: Model, p: Plan, hf_image: str = HF_PREFETCH_IMAGE,
                 overrides: ImageOverrides | None = None) -> JSON | None:
    """The Job that downloads the model into the cache volume (None: nothing to download). Ollama's runs the
    Model's own CPU image (`spec.image`, else `--backend-image ollama[/cpu]=...`, else the registry's), so an
    air-gapped cluster's mirror is used for it too."""
    if p.prefetch == "hf":
        env = [{"name": "FLEXINFER_HF_REPO", "value": p.repo},
               {"name": "FLEXINFER_HF_REVISION", "value": p.revision},
               {"name": "FLEXINFER_HF_ALLOW", "value": json.dumps(list(p.allow))},
               {"name": "FLEXINFER_HF_IGNORE", "value": json.dumps(list(p.ignore))},
               {"name": "FLEXINFER_DEST", "value": p.local or ""},
               {"name": "HF_HOME", "value": f"{MODELS_DIR}/hf"},
               {"name": "FLEXINFER_SCRIPT", "value": _HF_SCRIPT},
               {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": HF_TOKEN_SECRET, "key": "token",
                                                                   "optional": True}}}]
        script = (f'python -c "import huggingface_hub" 2>/dev/null || pip install --no-cache-dir --quiet '
                  f'huggingface_hub=={HF_HUB_VERSION} && exec python -c "$FLEXINFER_SCRIPT"')
        container = {"name": "prefetch", "image": hf_image, "command": ["/bin/sh", "-c", script], "env": env}
    elif p.prefetch == "ollama":
        image = image_for(model, "cpu", overrides)
        script = OLLAMA_SERVE + 'ollama pull "$FLEXINFER_OLLAMA_REF"; rc=$?; kill $pid; exit $rc'
        container = {"name": "prefetch", "image": image, "command": ["/bin/sh", "-c", script],
                     "env": [{"name": "FLEXINFER_OLLAMA_REF", "value": p.ollama_ref},
                             {"name": "OLLAMA_MODELS", "value": OLLAMA_DIR},
                             {"name": "OLLAMA_HOST", "value": "127.0.0.1:11434"}]}
    else:
        return None
    return _job(model, job_name(model, "prefetch", p.key), p.pvc, container, PREFETCH_DEADLINE_S, 3)


def check_job(model: Model, p: Plan, image: str = CHECK_IMAGE) -> JSON:
    container = {"name": "check", "image": image, "command": ["python", "-c", _CHECK_SCRIPT],
                 "env": [{"name": "FLEXINFER_CHECK", "value": json.dumps(p.check, sort_keys=True)}]}
    return _job(model, job_name(model, "cache-check", p.key), p.pvc, container, CHECK_DEADLINE_S, 1)


# --- status ----------------------------------------------------------------------------------------------

def job_state(job: JSON | None) -> tuple[str, str]:
    """("absent"|"active"|"succeeded"|"failed", message)."""
    if job is None:
        return "absent", ""
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("status") != "True":
            continue
        if c.get("type") in ("Complete", "SuccessCriteriaMet"):
            return "succeeded", ""
        if c.get("type") in ("Failed", "FailureTarget"):
            return "failed", str(c.get("message") or c.get("reason") or "the Job failed")
    return "active", ""


@dataclass(frozen=True, slots=True)
class CacheState:
    status: JSON  # status.cache
    create: tuple[JSON, ...] = ()  # Jobs to create now

    @property
    def ready(self) -> bool:
        return bool(self.status.get("ready"))


def evaluate(model: Model, p: Plan, jobs: Mapping[str, JSON | None], previous: JSON | None, access: str = "",
             hf_image: str = HF_PREFETCH_IMAGE, overrides: ImageOverrides | None = None) -> CacheState:
    """status.cache and the Jobs to create, from the plan, the Jobs that exist (by name) and the previous
    status.cache. Ready stays ready for the same key (the Jobs may be gone)."""
    prev = previous or {}
    base: JSON = {"pvc": p.pvc, "key": p.key}
    if access or prev.get("accessMode"):
        base["accessMode"] = access or prev.get("accessMode")
    if not p.key:  # nothing to prefetch or check: the server downloads at start
        return CacheState({**base, "message": p.note} if p.note else base)
    if prev.get("key") == p.key and prev.get("ready") is True:
        return CacheState({**base, "ready": True, "phase": READY, "message": "model files verified in the cache"})
    pj = prefetch_job(model, p, hf_image, overrides)
    if pj is not None:
        name = pj["metadata"]["name"]
        state, msg = job_state(jobs.get(name))
        base["prefetchJob"] = name
        if state == "absent":
            return CacheState({**base, "ready": False, "phase": PREFETCHING, "message": f"starting Job {name}"}, (pj,))
        if state == "active":
            return CacheState({**base, "ready": False, "phase": PREFETCHING, "message": f"Job {name} is downloading"})
        if state == "failed":
            return CacheState({**base, "ready": False, "phase": FAILED,
                               "message": f"prefetch Job {name} failed: {msg}; delete the Job to retry"})
    cj = check_job(model, p)
    name = cj["metadata"]["name"]
    base["checkJob"] = name
    state, msg = job_state(jobs.get(name))
    if state == "absent":
        return CacheState({**base, "ready": False, "phase": CHECKING, "message": f"starting Job {name}"}, (cj,))
    if state == "active":
        return CacheState({**base, "ready": False, "phase": CHECKING, "message": f"Job {name} is checking the files"})
    if state == "failed":
        return CacheState({**base, "ready": False, "phase": FAILED,
                           "message": f"cache check Job {name} failed ({msg}); see its logs, fix the cache, and "
                                      "delete the Job to check again"})
    return CacheState({**base, "ready": True, "phase": READY, "message": "model files verified in the cache"})
