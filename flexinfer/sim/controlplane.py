"""A real, local Kubernetes control plane for the e2e tier, `flexinfer demo --control-plane real` and the
scheduler bench: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok, built from the
pinned Go modules in ``hack/k8s`` (``bash hack/k8s/build.sh``), started on free loopback ports and always
torn down.

What runs (the recipe of upstream's ``hack/local-up-cluster.sh``, trimmed to what a laptop needs):

- etcd on 127.0.0.1 (``--unsafe-no-fsync``: the data is thrown away anyway);
- kube-apiserver on 127.0.0.1 only, TLS with a throw-away CA, client-certificate authentication for the
  control plane, ``--authorization-mode=Node,RBAC``, service-account signing keys and issuer (the
  TokenRequest API mints the tokens our components use);
- kube-controller-manager with the service-account key (token controller) and its default controllers
  (deployment, replicaset, garbage collector, namespace, serviceaccount, node lifecycle, ...), each with
  its own service account credentials as in a real cluster;
- kube-scheduler with the KubeSchedulerConfiguration we ship in ``daemonset/scheduler/`` (the patched
  default profile or the second scheduler), only the extender's ``urlPrefix`` pointed at the loopback
  extender and ``clientConnection.kubeconfig`` at a local file (see :func:`scheduler_config`);
- kwok, out of cluster, managing only Nodes annotated ``kwok.x-k8s.io/node: fake``: it keeps them Ready
  (with Leases) and moves pods bound to them to Running/Ready, so no kubelet is needed.

Teardown: every process runs in its own process group with the parent-death signal set to SIGKILL, and
is stopped by ``stop()`` (context manager, pytest finalizers), by an ``atexit`` hook, or by the kernel
when the Python process dies, so no process is left behind when a test fails or is interrupted. Start
the control plane from a thread that lives as long as it (the parent-death signal follows the thread
that spawned the child).

Certificates and keys come from the ``openssl`` command line (the only non-Python tool needed besides
the binaries). Everything lives in one work directory (``logs/<component>.log`` for each process), removed
on stop unless ``keep_workdir`` or ``FLEXINFER_E2E_KEEP=1``.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flexinfer import keys, kube, logs

log = logs.get("flexinfer.sim.controlplane")

JSON = dict[str, Any]
ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "hack" / "k8s" / "build.sh"
DAEMONSET = ROOT / "daemonset"
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
SERVICE_CIDR = "10.0.0.0/24"
POD_CIDR = "10.244.0.0/16"
SA_ISSUER = "https://kubernetes.default.svc"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
# The scheduler configurations we ship, by the name of the roll-out option in daemonset/scheduler/README.md.
SCHEDULER_CONFIGS = {
    "default": DAEMONSET / "scheduler" / "kube-scheduler-config.yaml",
    "second": DAEMONSET / "scheduler" / "second-scheduler" / "scheduler-config.yaml",
}
SECOND_SCHEDULER_NAME = "flexinfer-scheduler"
# Kinds `install_flexinfer` applies from daemonset/ (workloads are run by the harness as processes instead).
INSTALL_KINDS = frozenset({"Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole",
                           "ClusterRoleBinding", "Role", "RoleBinding"})


class ControlPlaneError(RuntimeError):
    """The control plane cannot be built, started or reached; the message says what and where the logs are."""


# --- binaries ------------------------------------------------------------------------------------------


def pinned_versions() -> dict[str, str]:
    """The component versions hack/k8s/go.mod pins (kubernetes, etcd, kwok)."""
    mods = {"k8s.io/kubernetes": "kubernetes", "go.etcd.io/etcd/server/v3": "etcd", "sigs.k8s.io/kwok": "kwok"}
    out: dict[str, str] = {}
    try:
        for line in (BUILD_SCRIPT.parent / "go.mod").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] in mods and parts[1].startswith("v"):
                out[mods[parts[0]]] = parts[1]
    except OSError:
        pass
    return out


def ensure_binaries(build: bool = True, timeout_s: float = 3600.0) -> Path:
    """The directory holding the pinned binaries: ``$FLEXINFER_K8S_BIN`` if set, else the build cache,
    building it first with ``hack/k8s/build.sh`` (minutes on a clean machine, instant when cached).
    Raises ControlPlaneError naming what is missing or why the build failed; never returns a partial set."""
    explicit = os.environ.get("FLEXINFER_K8S_BIN")
    if explicit:
        d = Path(explicit)
        missing = [b for b in BINARIES if not os.access(d / b, os.X_OK)]
        if missing or not (d / "kwok-stages.yaml").is_file():
            raise ControlPlaneError(f"FLEXINFER_K8S_BIN={d} lacks {', '.join(missing) or 'kwok-stages.yaml'}")
        return d
    if not BUILD_SCRIPT.is_file():
        raise ControlPlaneError(f"{BUILD_SCRIPT} not found: run from a source checkout or set FLEXINFER_K8S_BIN")
    argv = ["bash", str(BUILD_SCRIPT)] + ([] if build else ["--print"])
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise ControlPlaneError(f"{' '.join(argv)} did not finish within {timeout_s:.0f} s") from None
    if res.returncode != 0:
        tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-15:])
        raise ControlPlaneError(f"cannot get the Kubernetes binaries ({' '.join(argv)} exited "
                                f"{res.returncode}):\n{tail}")
    if build:
        res = subprocess.run(["bash", str(BUILD_SCRIPT), "--print"], capture_output=True, text=True, check=False)
    out = res.stdout.strip().splitlines()
    if res.returncode != 0 or not out:
        raise ControlPlaneError(f"hack/k8s/build.sh --print found no complete build: {res.stderr.strip()}")
    return Path(out[-1])


# --- processes -------------------------------------------------------------------------------------------

_LIVE: set[Process] = set()
_LIVE_LOCK = threading.Lock()


def _pdeathsig_prefix() -> list[str]:
    """`setpriv --pdeathsig KILL`: the kernel kills the child if this Python process dies (even SIGKILL)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv and sys.platform.startswith("linux") else []


class Process:
    """One child process in its own process group, output appended to a log file."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.wanted = False  # started and not stopped on purpose (a supervisor restarts it if it dies)
        self.supervise = False
        self.restarts = 0

    def start(self) -> Process:
        if self.alive():
            return self
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env} if self.env is not None else None
        with open(self.log_path, "ab") as out:
            out.write(f"\n=== start {time.strftime('%H:%M:%S')}: {' '.join(self.argv)}\n".encode())
            out.flush()
            self.popen = subprocess.Popen(_pdeathsig_prefix() + self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.starts += 1
        self.wanted = True
        with _LIVE_LOCK:
            _LIVE.add(self)
        log.debug("process_started", name=self.name, pid=self.popen.pid)
        return self

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, sig)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM to the group, SIGKILL after `timeout_s`; always reaps. Not restarted by a supervisor."""
        self.wanted = False
        p = self.popen
        if p is not None:
            if p.poll() is None:
                self.signal(signal.SIGTERM)
                try:
                    p.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    self.signal(signal.SIGKILL)
                    p.wait(10)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)  # anything left in the group
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def kill(self) -> None:
        """SIGKILL (a crash, not a shutdown: a supervisor restarts a supervised process)."""
        self.signal(signal.SIGKILL)
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(10)
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def restart(self, timeout_s: float = 10.0) -> Process:
        self.stop(timeout_s)
        return self.start()

    def log_tail(self, lines: int = 40) -> str:
        """The last `lines` lines of the log, read back from its end in 64 KiB blocks only as far as they need
        (callers that scan a whole log for "forbidden" ask for 200000 lines and get them, not the last 64 KiB)."""
        chunks: list[bytes] = []
        newlines = 0
        try:
            with open(self.log_path, "rb") as f:
                pos = f.seek(0, os.SEEK_END)
                while pos > 0 and newlines <= lines:
                    step = min(pos, 65536)
                    pos -= step
                    f.seek(pos)
                    chunks.append(f.read(step))
                    newlines += chunks[-1].count(b"\n")
        except OSError:
            return ""
        text = b"".join(reversed(chunks)).decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])


@atexit.register
def _stop_all_processes() -> None:
    with _LIVE_LOCK:
        procs = list(_LIVE)
    for p in procs:
        p.signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    for p in procs:
        if p.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(max(0.1, deadline - time.monotonic()))
        p.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(what: str, check: Callable[[], Any], timeout_s: float, interval_s: float = 0.1,
               procs: Iterable[Process] = ()) -> Any:
    """Poll `check` until it returns something truthy; ControlPlaneError (with log tails) on timeout or
    when one of `procs` exits."""
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    procs = list(procs)
    while True:
        try:
            result = check()
            if result:
                return result
        except Exception as e:  # the thing we wait for is not there yet
            last_error = e
        for p in procs:
            if not p.alive():
                raise ControlPlaneError(f"{p.name} exited while waiting for {what} (log {p.log_path}):\n"
                                        f"{p.log_tail()}")
        if time.monotonic() > deadline:
            tails = "".join(f"\n--- {p.name} ({p.log_path}):\n{p.log_tail(20)}" for p in procs)
            raise ControlPlaneError(f"timed out after {timeout_s:.0f} s waiting for {what}"
                                    f"{f': {last_error}' if last_error else ''}{tails}")
        time.sleep(interval_s)


def http_ok(url: str, timeout_s: float = 2.0, context: ssl.SSLContext | None = None) -> Callable[[], bool]:
    """A `wait_until` check: `url` answers 200 (an HTTP error status means not yet)."""

    def ok() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s, context=context) as r:
                return r.status == 200
        except urllib.error.HTTPError:
            return False

    return ok


# --- certificates and kubeconfigs --------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    res = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise ControlPlaneError(f"openssl {' '.join(args)} failed: {res.stderr.strip()[-500:]}")


_EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def make_ca(directory: Path, name: str, cn: str) -> Path:
    """A self-signed CA `<name>.crt` + `<name>.key` in `directory` (EC P-256, 3 days)."""
    if shutil.which("openssl") is None:
        raise ControlPlaneError("the openssl command is needed to create the test certificates")
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "3",
             "-subj", f"/CN={cn}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature", cwd=directory)
    return directory / f"{name}.crt"


def make_cert(directory: Path, name: str, ca: str, cn: str, *, orgs: Iterable[str] = (),
              sans: Iterable[str] = (), server: bool = False, client: bool = False) -> tuple[Path, Path]:
    """`<name>.crt` + `<name>.key` signed by the CA `<ca>.crt`/`<ca>.key` in the same directory.
    `sans` like "DNS:host" / "IP:127.0.0.1"; `server`/`client` set the extended key usage."""
    subj = f"/CN={cn}" + "".join(f"/O={o}" for o in orgs)
    usage = ",".join(u for u, on in (("serverAuth", server), ("clientAuth", client)) if on) or "clientAuth"
    args = ["req", "-x509", *_EC, "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-keyout", f"{name}.key",
            "-out", f"{name}.crt", "-days", "3", "-subj", subj, "-addext", f"extendedKeyUsage={usage}",
            "-addext", "basicConstraints=critical,CA:FALSE"]
    sans = list(sans)
    if sans:
        args += ["-addext", "subjectAltName=" + ",".join(sans)]
    _openssl(*args, cwd=directory)
    return directory / f"{name}.crt", directory / f"{name}.key"


@dataclass
class Pki:
    """A throw-away CA, the API server's serving certificate, client certificates and the SA key pair."""

    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    def cert(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"

    def create(self, clients: Mapping[str, tuple[str, tuple[str, ...]]]) -> Pki:
        d = self.dir
        make_ca(d, "ca", "flexinfer-e2e-ca")
        make_cert(d, "apiserver", "ca", "kube-apiserver", server=True,
                  sans=("IP:127.0.0.1", "DNS:localhost", "DNS:kubernetes", "DNS:kubernetes.default",
                        "DNS:kubernetes.default.svc", "IP:10.0.0.1"))
        for name, (cn, groups) in clients.items():
            make_cert(d, name, "ca", cn, orgs=groups, client=True)
        _openssl("genrsa", "-out", "sa.key", "2048", cwd=d)
        _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)
        return self


def write_kubeconfig(path: Path, server: str, ca: Path, *, token: str | None = None,
                     cert: Path | None = None, key: Path | None = None, user: str = "user") -> Path:
    """A one-context kubeconfig (token or client certificate), readable only by us."""
    creds: JSON = {"token": token} if token else {"client-certificate": str(cert), "client-key": str(key)}
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": "flexinfer-e2e",
        "clusters": [{"name": "flexinfer-e2e", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": creds}],
        "contexts": [{"name": "flexinfer-e2e", "context": {"cluster": "flexinfer-e2e", "user": user}}],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    return path


# --- manifests ---------------------------------------------------------------------------------------------

def _resource(obj: JSON) -> kube.Resource | None:
    """The resource of a manifest (kube.RESOURCES, matched on apiVersion and kind), None for kinds we do not
    know. Pure."""
    try:
        res = kube.resource_for(obj.get("kind") or "")
    except kube.KubeError:
        return None
    return res if res.kind == obj.get("kind") and res.api_version == obj.get("apiVersion") else None


def object_path(obj: JSON, name: bool = True) -> str:
    """The REST path of a manifest (its collection with name=False). Pure."""
    res = _resource(obj)
    if res is None:
        raise ControlPlaneError(f"do not know how to apply {obj.get('apiVersion', '')} {obj.get('kind', '')}")
    meta = obj.get("metadata") or {}
    return kube.resource_path(res, meta.get("namespace") or "default", meta["name"] if name else None)


def render_kustomization(directory: Path) -> list[JSON]:
    """The objects a plain kustomization (``resources`` + ``namespace`` only, nested directories allowed)
    renders to, as `kubectl kustomize` would. Anything else (patches, components, generators) is refused
    rather than rendered wrongly."""
    kfile = directory / "kustomization.yaml"
    spec = yaml.safe_load(kfile.read_text()) or {}
    unsupported = set(spec) - {"apiVersion", "kind", "resources", "namespace"}
    if unsupported:
        raise ControlPlaneError(f"{kfile}: render_kustomization supports resources + namespace only, "
                                f"not {sorted(unsupported)}")
    out: list[JSON] = []
    for res in spec.get("resources") or []:
        p = directory / res
        if p.is_dir():
            out.extend(render_kustomization(p))
        else:
            out.extend(d for d in yaml.safe_load_all(p.read_text()) if isinstance(d, dict))
    ns = spec.get("namespace")
    if ns:
        for obj in out:
            res = _resource(obj)
            if res is not None and res.namespaced:
                obj.setdefault("metadata", {})["namespace"] = ns
            # kustomize also moves ServiceAccount subjects of bindings into the namespace
            for subj in obj.get("subjects") or []:
                if subj.get("kind") == "ServiceAccount":
                    subj["namespace"] = ns
    return out


def shipped_install_objects() -> list[JSON]:
    """What `install_flexinfer` applies: the base's Namespace, CRD, ServiceAccounts, roles and bindings,
    plus the second scheduler's RBAC, unchanged."""
    objs = [o for o in render_kustomization(DAEMONSET / "base") if o.get("kind") in INSTALL_KINDS]
    objs += [o for o in render_kustomization(DAEMONSET / "scheduler" / "second-scheduler")
             if o.get("kind") in INSTALL_KINDS]
    return objs


def shipped_scheduler_config(variant: str) -> JSON:
    """The KubeSchedulerConfiguration we ship for a roll-out option, as written."""
    try:
        return yaml.safe_load(SCHEDULER_CONFIGS[variant].read_text())
    except KeyError:
        raise ControlPlaneError(f"unknown scheduler variant {variant!r}; known: {sorted(SCHEDULER_CONFIGS)}") from None


def extender_tls_files(variant: str) -> dict[str, str]:
    """The shipped extender stanza's tlsConfig file fields (caFile/certFile/keyFile -> path), {} for HTTP."""
    ext = (shipped_scheduler_config(variant).get("extenders") or [{}])[0]
    if not ext.get("enableHTTPS"):
        return {}
    tls = ext.get("tlsConfig") or {}
    return {k: str(v) for k, v in tls.items() if k in ("caFile", "certFile", "keyFile") and v}


def scheduler_config(variant: str, extender_url: str | None, kubeconfig: Path, *, tls_dir: Path | None = None,
                     extender_overrides: Mapping[str, Any] | None = None,
                     client_connection: Mapping[str, Any] | None = None) -> JSON:
    """The shipped KubeSchedulerConfiguration (`default`: the patched default scheduler; `second`: the
    flexinfer-scheduler profile) with only what depends on where it runs changed: the extender's
    `urlPrefix` (-> `extender_url`), the directory of its tlsConfig files (-> `tls_dir`, same file names;
    in a cluster they are mounted from a Secret) and `clientConnection.kubeconfig` (-> a local file; in a
    cluster /etc/kubernetes/scheduler.conf or the pod's service account). `serverName`, timeouts,
    weights, managed resources stay as shipped. `extender_url=None` removes the extender (the bench's
    baseline: same scheduler, same profile, no extender). `extender_overrides` changes named extender
    fields (e.g. ``{"nodeCacheCapable": False}``) for tests of the documented alternatives;
    `client_connection` adds clientConnection fields (the bench's `qps`/`burst` variant)."""
    cfg = shipped_scheduler_config(variant)
    cfg.setdefault("clientConnection", {})["kubeconfig"] = str(kubeconfig)
    cfg["clientConnection"].update(client_connection or {})
    if extender_url is None:
        cfg.pop("extenders", None)
        return cfg
    for ext in cfg.get("extenders") or []:
        ext["urlPrefix"] = extender_url
        tls = ext.get("tlsConfig") or {}
        for k in ("caFile", "certFile", "keyFile"):
            if tls.get(k):
                if tls_dir is None:
                    raise ControlPlaneError(f"the {variant} scheduler config names tlsConfig.{k} {tls[k]}: "
                                            "pass tls_dir with the files")
                tls[k] = str(tls_dir / Path(tls[k]).name)
        ext.update(extender_overrides or {})
    return cfg


# --- the control plane ------------------------------------------------------------------------------------


@dataclass
class Ports:
    etcd: int = field(default_factory=free_port)
    etcd_peer: int = field(default_factory=free_port)
    apiserver: int = field(default_factory=free_port)
    controller_manager: int = field(default_factory=free_port)
    kwok: int = field(default_factory=free_port)


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kwok (+ kube-scheduler via `start_scheduler`).

    ``with ControlPlane() as cp: api = cp.admin_api()``. Extra processes (our extender, agents, controller)
    started with :meth:`spawn` are stopped with it."""

    def __init__(self, workdir: Path | str | None = None, *, bin_dir: Path | None = None, build: bool = True,
                 keep_workdir: bool | None = None, verbosity: int = 2,
                 controllers: str = "*", node_lease_duration_seconds: int = 40) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="flexinfer-cp-"))
        self.bin_dir = bin_dir
        self.build = build
        self.keep_workdir = (os.environ.get("FLEXINFER_E2E_KEEP") == "1") if keep_workdir is None else keep_workdir
        self.verbosity = verbosity
        self.controllers = controllers
        self.node_lease_duration_seconds = node_lease_duration_seconds
        self.ports = Ports()
        self.pki = Pki(self.workdir / "pki")
        self.procs: dict[str, Process] = {}
        self.scheduler_ports: dict[str, int] = {}  # kube-scheduler process name -> its secure port
        self._api: Any = None
        self._lock = threading.Lock()
        self.started = False
        self._supervisor: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- paths and clients --------------------------------------------------------------------------
    @property
    def api_url(self) -> str:
        return f"https://127.0.0.1:{self.ports.apiserver}"

    @property
    def logs_dir(self) -> Path:
        return self.workdir / "logs"

    def kubeconfig(self, name: str) -> Path:
        return self.workdir / "kubeconfigs" / f"{name}.kubeconfig"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.kubeconfig("admin")

    def admin_api(self) -> Any:
        """A kubernetes ApiClient as cluster admin (system:masters), shared."""
        with self._lock:
            if self._api is None:
                self._api = kube.api_client(kubeconfig=str(self.admin_kubeconfig))
            return self._api

    def admin_request(self, method: str, path: str, body: Any = None, headers: Mapping[str, str] | None = None,
                      timeout_s: float = 30.0) -> tuple[int, Any]:
        """One raw HTTPS request as admin with any headers (e.g. the Table Accept header kubectl sends);
        returns (status, decoded JSON body or text). No retries, no exceptions on HTTP errors."""
        ctx = ssl.create_default_context(cafile=str(self.pki.ca))
        ctx.load_cert_chain(str(self.pki.cert("admin")), str(self.pki.key("admin")))
        data = json.dumps(body).encode() if body is not None and not isinstance(body, bytes) else body
        hdrs = {"Accept": "application/json", **({"Content-Type": "application/json"} if data else {}),
                **(headers or {})}
        req = urllib.request.Request(f"{self.api_url}{path}", data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=timeout_s, context=ctx) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw) if raw else {}
        except ValueError:
            return status, raw.decode("utf-8", "replace")

    def component_metrics(self, port: int) -> str:
        """/metrics of a control-plane component's secure port (kube-scheduler), as admin (the component asks
        kube-apiserver to authenticate and authorize the client certificate)."""
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # its self-signed serving certificate, loopback only
        ctx.load_cert_chain(str(self.pki.cert("admin")), str(self.pki.key("admin")))
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", timeout=10, context=ctx) as r:
            return r.read().decode()

    def binary(self, name: str) -> str:
        assert self.bin_dir is not None
        return str(self.bin_dir / name)

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> ControlPlane:
        t0 = time.monotonic()
        try:
            if self.bin_dir is None:
                self.bin_dir = ensure_binaries(build=self.build)
            self.pki.create({
                "admin": ("flexinfer-e2e-admin", ("system:masters",)),
                "kube-controller-manager": ("system:kube-controller-manager", ()),
                "kube-scheduler": ("system:kube-scheduler", ()),
                # kwok plays every fake node's kubelet; it is the harness, so it gets admin rights
                "kwok": ("kwok", ("system:masters",)),
            })
            for name in ("admin", "kube-controller-manager", "kube-scheduler", "kwok"):
                write_kubeconfig(self.kubeconfig(name), self.api_url, self.pki.ca, cert=self.pki.cert(name),
                                 key=self.pki.key(name), user=name)
            self._start_etcd()
            self._start_apiserver()
            self._start_controller_manager()
            self._start_kwok()
            self._wait_bootstrapped()
        except BaseException:
            self.stop()
            raise
        self.started = True
        self._stopping.clear()
        self._supervisor = threading.Thread(target=self._supervise, name="controlplane-supervisor", daemon=True)
        self._supervisor.start()
        log.info("control_plane_started", api=self.api_url, workdir=str(self.workdir),
                 seconds=round(time.monotonic() - t0, 1))
        return self

    def _supervise(self) -> None:
        """Restart supervised processes that died (what the kubelet does for static pods and Deployments:
        kube-scheduler exits by design when it loses its Lease, e.g. while the API server restarts)."""
        backoff: dict[str, float] = {}
        next_try: dict[str, float] = {}
        while not self._stopping.wait(0.5):
            for name, p in list(self.procs.items()):
                if not (p.supervise and p.wanted) or p.alive():
                    continue
                now = time.monotonic()
                if now < next_try.get(name, 0.0):
                    continue
                delay = min(backoff.get(name, 0.5) * 2, 10.0)
                backoff[name], next_try[name] = delay, now + delay
                p.restarts += 1
                log.warning("process_restarted", name=name, exit_code=p.popen.returncode if p.popen else None,
                            restarts=p.restarts)
                with contextlib.suppress(OSError):
                    p.start()

    def stop(self) -> None:
        """Stop every process (components last-started first, etcd last); remove the work directory."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(5)
        for name in reversed(list(self.procs)):
            if name in ("etcd", "kube-apiserver"):
                continue
            self.procs[name].stop(5)
        for name in ("kube-apiserver", "etcd"):
            if name in self.procs:
                self.procs[name].stop(10)
        if self._api is not None:
            with contextlib.suppress(Exception):
                self._api.close()
            self._api = None
        self.started = False
        if self._own_workdir and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def spawn(self, name: str, argv: list[str], env: Mapping[str, str] | None = None, *,
              start: bool = True, supervise: bool = False) -> Process:
        """Run a process alongside the control plane (stopped with it); output in logs/<name>.log. A
        supervised process that dies (not stopped on purpose) is restarted with backoff, as by a kubelet."""
        old = self.procs.get(name)
        if old is not None:
            old.stop(5)
        proc = Process(name, argv, self.logs_dir / f"{name}.log", env)
        proc.supervise = supervise
        self.procs[name] = proc
        return proc.start() if start else proc

    def check_alive(self) -> None:
        """ControlPlaneError naming any core component that died (with its log tail)."""
        for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kwok"):
            p = self.procs.get(name)
            if p is not None and not p.alive():
                raise ControlPlaneError(f"{name} is not running (log {p.log_path}):\n{p.log_tail()}")

    # -- components ---------------------------------------------------------------------------------
    def _start_etcd(self) -> None:
        p = self.ports
        data = self.workdir / "etcd"
        proc = self.spawn("etcd", [
            self.binary("etcd"), "--name", "flexinfer-e2e", "--data-dir", str(data),
            "--listen-client-urls", f"http://127.0.0.1:{p.etcd}", "--advertise-client-urls",
            f"http://127.0.0.1:{p.etcd}", "--listen-peer-urls", f"http://127.0.0.1:{p.etcd_peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{p.etcd_peer}",
            "--initial-cluster", f"flexinfer-e2e=http://127.0.0.1:{p.etcd_peer}",
            "--unsafe-no-fsync", "--log-level", "warn", "--quota-backend-bytes", str(4 << 30),
        ])

        def healthy() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{p.etcd}/health", timeout=2) as r:
                return json.loads(r.read()).get("health") == "true"

        wait_until("etcd /health", healthy, 60, procs=[proc])

    def _apiserver_argv(self) -> list[str]:
        k = self.pki
        return [
            self.binary("kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{self.ports.etcd}",
            "--bind-address=127.0.0.1", f"--secure-port={self.ports.apiserver}",
            # The `kubernetes` Service's endpoints are not managed (nothing in-cluster dials it), so a
            # loopback advertise address is fine and no host interface is needed.
            "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none",
            f"--tls-cert-file={k.cert('apiserver')}", f"--tls-private-key-file={k.key('apiserver')}",
            f"--client-ca-file={k.ca}",
            "--authorization-mode=Node,RBAC",
            f"--service-account-issuer={SA_ISSUER}", f"--service-account-key-file={k.sa_pub}",
            f"--service-account-signing-key-file={k.sa_key}",
            f"--api-audiences={SA_ISSUER}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=true", "--profiling=false",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--v={self.verbosity}",
        ]

    def _start_apiserver(self) -> None:
        proc = self.spawn("kube-apiserver", self._apiserver_argv())
        self.wait_apiserver_ready([proc])

    def wait_apiserver_ready(self, procs: Iterable[Process] = (), timeout_s: float = 90.0) -> None:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca))
        ctx.load_cert_chain(str(self.pki.cert("admin")), str(self.pki.key("admin")))
        wait_until("kube-apiserver /readyz", http_ok(f"{self.api_url}/readyz", 3, ctx), timeout_s, interval_s=0.2,
                   procs=procs or [self.procs["kube-apiserver"]])

    def restart_apiserver(self, down_seconds: float = 0.0, *, crash: bool = False) -> None:
        """Stop kube-apiserver (SIGTERM, or SIGKILL with `crash`), optionally stay down a while, start it again
        on the same port and wait until it is ready. Clients see their watches end and reconnect; a
        kube-scheduler whose Lease could not be renewed exits and is restarted by the supervisor."""
        proc = self.procs["kube-apiserver"]
        if crash:
            proc.kill()
        else:
            proc.stop(5)  # its graceful shutdown can hang on open watch connections; a kubelet kills it too
        if down_seconds:
            time.sleep(down_seconds)
        proc.start()
        self.wait_apiserver_ready([proc])

    def _component_serving_ok(self, name: str, port: int, path: str = "/healthz") -> Callable[[], bool]:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the component's self-signed serving cert, loopback only
        return http_ok(f"https://127.0.0.1:{port}{path}", context=ctx)

    def _start_controller_manager(self) -> None:
        kc = self.kubeconfig("kube-controller-manager")
        proc = self.spawn("kube-controller-manager", [
            self.binary("kube-controller-manager"),
            f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1", f"--secure-port={self.ports.controller_manager}",
            f"--service-account-private-key-file={self.pki.sa_key}", f"--root-ca-file={self.pki.ca}",
            "--use-service-account-credentials=true", f"--controllers={self.controllers}",
            f"--service-cluster-ip-range={SERVICE_CIDR}", "--leader-elect=false",
            f"--cert-dir={self.workdir / 'kcm-certs'}", "--profiling=false",
            # fast enough for tests, as kind/kwokctl set them; the client rate limit (default 20/s per
            # controller) would take minutes to lift the not-ready taint admission puts on 5000 new Nodes
            "--concurrent-deployment-syncs=5", "--concurrent-replicaset-syncs=5",
            "--kube-api-qps=200", "--kube-api-burst=400",
            f"--v={self.verbosity}",
        ], supervise=True)
        wait_until("kube-controller-manager /healthz",
                   self._component_serving_ok("kube-controller-manager", self.ports.controller_manager), 60,
                   procs=[proc])

    def _start_kwok(self) -> None:
        key, value = KWOK_NODE_ANNOTATION
        proc = self.spawn("kwok", [
            self.binary("kwok"), f"--config={self.binary('kwok-stages.yaml')}",
            f"--kubeconfig={self.kubeconfig('kwok')}",
            "--manage-all-nodes=false", f"--manage-nodes-with-annotation-selector={key}={value}",
            f"--node-lease-duration-seconds={self.node_lease_duration_seconds}",
            f"--cidr={POD_CIDR}", "--node-ip=10.0.1.1",
            f"--server-address=127.0.0.1:{self.ports.kwok}",
        ], supervise=True)
        wait_until("kwok /healthz", http_ok(f"http://127.0.0.1:{self.ports.kwok}/healthz"), 60, procs=[proc])

    def _wait_bootstrapped(self) -> None:
        api = self.admin_api()
        wait_until("the default namespace's ServiceAccount (kube-controller-manager)",
                   lambda: kube.request(api, "GET", "/api/v1/namespaces/default/serviceaccounts/default"),
                   60, procs=[self.procs["kube-controller-manager"], self.procs["kube-apiserver"]])

    # -- kube-scheduler ------------------------------------------------------------------------------
    def start_scheduler(self, variant: str = "default", extender_url: str | None = None, *,
                        name: str = "kube-scheduler", extender_overrides: Mapping[str, Any] | None = None,
                        as_service_account: tuple[str, str] | None = None, tls_dir: Path | None = None,
                        client_connection: Mapping[str, Any] | None = None,
                        extra_args: Iterable[str] = ()) -> Process:
        """Start (or restart) kube-scheduler with a shipped configuration (see `scheduler_config`). The
        default profile runs with the system:kube-scheduler certificate as on a kubeadm control plane; the
        second scheduler runs as its shipped ServiceAccount (flexinfer-system/flexinfer-scheduler, whose
        RBAC `install_flexinfer` applies), as its Deployment would. `tls_dir` holds the files the shipped
        extender tlsConfig names (CA, client certificate and key)."""
        if as_service_account is None and variant == "second":
            as_service_account = (keys.SYSTEM_NAMESPACE, SECOND_SCHEDULER_NAME)
        if as_service_account is not None:
            kc = self.service_account_kubeconfig(*as_service_account)
        else:
            kc = self.kubeconfig("kube-scheduler")
        cfg = scheduler_config(variant, extender_url, kc, tls_dir=tls_dir, extender_overrides=extender_overrides,
                               client_connection=client_connection)
        cfg_path = self.workdir / f"{name}-config.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        port = free_port()
        self.scheduler_ports[name] = port
        argv = [self.binary("kube-scheduler"), f"--config={cfg_path}", "--bind-address=127.0.0.1",
                f"--secure-port={port}", f"--v={self.verbosity}", *extra_args]
        if as_service_account is None:
            argv += [f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}"]
        proc = self.spawn(name, argv, supervise=True)
        wait_until(f"{name} /healthz", self._component_serving_ok(name, port), 60, procs=[proc])
        le = cfg.get("leaderElection") or {}
        if le.get("leaderElect", True):
            lease_ns = le.get("resourceNamespace", "kube-system")
            lease_name = le.get("resourceName", "kube-scheduler")
            api = self.admin_api()

            def leading() -> bool:
                lease = kube.request(api, "GET", f"/apis/coordination.k8s.io/v1/namespaces/{lease_ns}/leases/"
                                                 f"{lease_name}")
                spec = lease.get("spec") or {}
                return bool(spec.get("holderIdentity")) and spec.get("renewTime") is not None and \
                    time.time() - _rfc3339(spec["renewTime"]) < float(spec.get("leaseDurationSeconds") or 15)

            wait_until(f"{name} to hold Lease {lease_ns}/{lease_name}", leading, 60, interval_s=0.2, procs=[proc])
        return proc

    def stop_scheduler(self, name: str = "kube-scheduler") -> None:
        p = self.procs.pop(name, None)
        if p is not None:
            p.stop(10)

    # -- objects -------------------------------------------------------------------------------------
    def apply(self, obj: JSON, field_manager: str = "flexinfer-e2e") -> JSON:
        """Server-side apply (as `kubectl apply --server-side --force-conflicts`): the object as written."""
        body = json.dumps(obj)
        return kube.request(self.admin_api(), "PATCH", object_path(obj),
                            query={"fieldManager": field_manager, "force": "true"}, body=body,
                            content_type="application/apply-patch+yaml")

    def install_flexinfer(self) -> list[JSON]:
        """Apply the shipped Namespace, CRD, ServiceAccounts, ClusterRoles/Roles and bindings (base + the
        second scheduler's RBAC) unchanged; wait until the Model CRD is served."""
        objs = shipped_install_objects()
        for obj in sorted(objs, key=lambda o: 0 if o["kind"] in ("Namespace", "CustomResourceDefinition") else 1):
            self.apply(obj)
        api = self.admin_api()

        def established() -> bool:
            crd = kube.request(api, "GET",
                               "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/models.ai.flexinfer")
            conds = {c.get("type"): c.get("status") for c in (crd.get("status") or {}).get("conditions") or []}
            if conds.get("Established") != "True":
                return False
            kube.request(api, "GET", "/apis/ai.flexinfer/v1alpha2/models")
            return True

        wait_until("the Model CRD to be served", established, 60, procs=[self.procs["kube-apiserver"]])
        for obj in objs:
            if obj["kind"] == "ServiceAccount":
                self.wait_service_account(obj["metadata"]["namespace"], obj["metadata"]["name"])
        return objs

    def wait_service_account(self, namespace: str, name: str = "default", timeout_s: float = 60.0) -> None:
        api = self.admin_api()
        wait_until(f"ServiceAccount {namespace}/{name}",
                   lambda: kube.request(api, "GET", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}"),
                   timeout_s)

    def create_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        """Create (or keep) a namespace and wait for its default ServiceAccount (pods need it)."""
        self.apply({"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": name, **({"labels": dict(labels)} if labels else {})}})
        self.wait_service_account(name)

    def service_account_token(self, namespace: str, name: str, expiration_seconds: int = 86400) -> str:
        """A bound token for the ServiceAccount from the TokenRequest API (what a projected volume holds)."""
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"expirationSeconds": expiration_seconds}}
        res = kube.request(self.admin_api(), "POST",
                           f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", body=body)
        token = (res.get("status") or {}).get("token")
        if not token:
            raise ControlPlaneError(f"TokenRequest for {namespace}/{name} returned no token")
        return str(token)

    def service_account_kubeconfig(self, namespace: str, name: str) -> Path:
        """A kubeconfig that authenticates as system:serviceaccount:<namespace>:<name> and nothing more."""
        self.wait_service_account(namespace, name)
        return write_kubeconfig(self.kubeconfig(f"sa-{namespace}-{name}"), self.api_url, self.pki.ca,
                                token=self.service_account_token(namespace, name), user=f"{namespace}-{name}")


def _rfc3339(value: str) -> float:
    from flexinfer.state import parse_rfc3339

    ts = parse_rfc3339(value)
    if ts is None:
        raise ValueError(f"not an RFC 3339 time: {value!r}")
    return ts


def python_entry_point(script: str) -> list[str]:
    """argv prefix for one of our console scripts, from the running interpreter's environment."""
    candidate = Path(sys.executable).parent / script
    if candidate.is_file():
        return [str(candidate)]
    found = shutil.which(script)
    if found:
        return [found]
    raise ControlPlaneError(f"console script {script} not found next to {sys.executable} or on PATH "
                            "(pip install -e .)")
