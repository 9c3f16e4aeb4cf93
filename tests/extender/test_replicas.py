"""Issue 14 item 5 over real sockets: two extender replicas behind one "Service" agree.

Row: "the manifest's default of 2 extender replicas, requests alternating: 10 pods placed in 5 slots". Two real
`flexinfer-extender` processes (mutual TLS, `--leader-elect`) watch the fake API server; a kube-scheduler-like
loop sends every request to the next replica in turn (what a Service does across connections), binds
asynchronously (100 ms later, so the next cycles run before the bind is visible: the race) and retries a pod
after an extender error. A 50-pod burst must never place more pods than fit, also when the Lease holder is
SIGKILLed mid-burst. The control test shows the same burst overcommitting without leader election.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from flexinfer.sim.fakeapi import FakeApiServer

from .certs import CA, SERVICE_DNS, Pair
from .ext_fixtures import gpu, model_pod, node_obj

pytestmark = pytest.mark.integration

NAMESPACE = "models"
NODES = [f"gpu-{i}" for i in range(5)]
FREE_MIB, POD_MIB = 24000, 4000
SLOTS_PER_GPU = FREE_MIB // POD_MIB  # 6
CAPACITY = SLOTS_PER_GPU * len(NODES)  # 30
PODS = 50
BIND_DELAY_S = 0.1


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pair]:
    ca = CA(tmp_path_factory.mktemp("pki"))
    return {"server": ca.issue("flexinfer-extender", server=True, client=True),
            "scheduler": ca.issue("system:kube-scheduler")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def cluster() -> Iterator[FakeApiServer]:
    with FakeApiServer() as fake:
        now = time.time()
        for n in NODES:
            fake.put_object({"apiVersion": "v1", "kind": "Node",
                             **node_obj(n, [gpu(0, "nvidia", "sm_89", 24576, FREE_MIB)], now)})
        for ns in (NAMESPACE, "flexinfer-system"):
            fake.put_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        for i in range(PODS):
            pod = model_pod(POD_MIB, "llamacpp", 1, name=f"burst-{i:02d}", uid=f"uid-burst-{i:02d}")
            pod["metadata"].pop("resourceVersion", None)
            fake.put_object({"apiVersion": "v1", "kind": "Pod", **pod})
        yield fake


class Replica:
    def __init__(self, fake: FakeApiServer, pki: dict[str, Pair], log_dir: Path, i: int, leader_elect: bool) -> None:
        self.port = free_port()
        self.grpc_port = free_port()
        s = pki["server"]
        args = [sys.executable, "-m", "flexinfer.extender.main", "--kube-server", fake.url, "--bind-address",
                "127.0.0.1", "--http-port", str(self.port), "--grpc-port", str(self.grpc_port),
                "--tls-cert", s.cert, "--tls-key", s.key,
                "--client-ca-file", s.ca, "--log-format", "json", "--log-level", "info"]
        if leader_elect:
            args += ["--leader-elect", "--leader-election-namespace", "flexinfer-system", "--leader-lease-seconds",
                     "3", "--advertise-address", "127.0.0.1", "--peer-server-name", SERVICE_DNS]
        self.log = log_dir / f"replica-{i}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1", "POD_NAME": f"extender-{i}"})
        self.url = f"https://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(15)
            if self.alive():
                self.kill()


@contextlib.contextmanager
def replicas(fake: FakeApiServer, pki: dict[str, Pair], tmp_path: Path, leader_elect: bool) -> Iterator[list[Replica]]:
    reps = [Replica(fake, pki, tmp_path, i, leader_elect) for i in range(2)]
    ctx = client_ctx(pki)
    try:
        deadline = time.monotonic() + 40
        for r in reps:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{r.url}/readyz", verify=ctx, timeout=1).status_code == 200:
                        break
                assert r.alive() and time.monotonic() < deadline, r.log.read_text()[-3000:]
                time.sleep(0.1)
        if leader_elect:  # one of them holds the Lease, and both know which (the follower learns it within 1 s)
            while (identity := holder(fake)) is None or not all(
                    f'"leader": "{identity}"' in r.log.read_text() for r in reps):
                assert time.monotonic() < deadline, [r.log.read_text()[-1500:] for r in reps]
                time.sleep(0.1)
        yield reps
    finally:
        for r in reps:
            r.stop()


def holder(fake: FakeApiServer) -> str | None:
    lease = fake.get_object("leases", "flexinfer-extender", "flexinfer-system")
    return ((lease or {}).get("spec") or {}).get("holderIdentity") or None


def client_ctx(pki: dict[str, Pair]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki["scheduler"].ca)
    ctx.load_cert_chain(pki["scheduler"].cert, pki["scheduler"].key)
    return ctx


class Scheduler:
    """kube-scheduler's loop as far as the extender sees it: one cycle at a time, filter then (>= 2 feasible)
    prioritize, bind asynchronously; an extender error puts the pod back in the queue (backoff)."""

    def __init__(self, fake: FakeApiServer, reps: list[Replica], ctx: ssl.SSLContext) -> None:
        self.fake = fake
        self.reps = reps
        self.clients = [httpx.Client(verify=ctx, timeout=2.0) for _ in reps]  # httpTimeout: 2s
        self.next = 0
        self.down_until = [0.0] * len(reps)
        self.binder = ThreadPoolExecutor(8)
        self.bound: dict[str, str] = {}
        self.unschedulable: list[str] = []
        self.errors = 0
        self.on_answer: Any = None
        self.answered = 0
        self._lock = threading.Lock()

    def call(self, verb: str, pod: dict[str, Any], names: list[str]) -> Any:
        now = time.monotonic()
        for _ in self.reps:  # alternate, skipping an endpoint the "Service" dropped
            i = self.next
            self.next = (self.next + 1) % len(self.reps)
            if self.down_until[i] <= now:
                break
        try:
            res = self.clients[i].post(f"{self.reps[i].url}/{verb}", json={"Pod": pod, "NodeNames": names})
        except httpx.ConnectError:
            # the endpoints controller drops a dead pod from the Service within a probe period or so
            self.down_until[i] = now + 2.0
            raise
        if res.status_code != 200:
            raise httpx.HTTPStatusError(res.text, request=res.request, response=res)
        return res.json()

    def cycle(self, pod: dict[str, Any]) -> bool:
        """True when the pod is done (bound or unschedulable), False to retry it."""
        try:
            passed = self.call("filter", pod, NODES)["NodeNames"]
            if not passed:
                self.unschedulable.append(pod["metadata"]["name"])
                return True
            node = passed[0]
            if len(passed) > 1:
                scores = self.call("prioritize", pod, passed)
                node = max(scores, key=lambda h: h["Score"])["Host"]
        except httpx.HTTPError:
            self.errors += 1
            return False
        self.binder.submit(self._bind, pod["metadata"]["name"], node)
        self.answered += 1
        if self.on_answer is not None:
            self.on_answer(self.answered)
        return True

    def _bind(self, name: str, node: str) -> None:
        time.sleep(BIND_DELAY_S)
        res = httpx.post(f"{self.fake.url}/api/v1/namespaces/{NAMESPACE}/pods/{name}/binding",
                         json={"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
                               "target": {"kind": "Node", "name": node}}, timeout=10)
        assert res.status_code in (200, 201), res.text
        with self._lock:
            self.bound[name] = node

    def run(self, pods: list[dict[str, Any]], deadline_s: float = 60.0) -> None:
        queue = deque(pods)
        deadline = time.monotonic() + deadline_s
        while queue:
            assert time.monotonic() < deadline, f"burst did not finish: {len(queue)} pods left"
            pod = queue.popleft()
            if not self.cycle(pod):
                queue.append(pod)
                time.sleep(0.05)  # kube-scheduler's backoff, shortened
        self.binder.shutdown(wait=True)
        for c in self.clients:
            c.close()


def burst_pods() -> list[dict[str, Any]]:
    return [model_pod(POD_MIB, "llamacpp", 1, name=f"burst-{i:02d}", uid=f"uid-burst-{i:02d}") for i in range(PODS)]


def placed_per_node(fake: FakeApiServer) -> Counter[str]:
    return Counter(p["spec"].get("nodeName") for p in fake.list_objects("pods", NAMESPACE) if p["spec"].get("nodeName"))


def test_two_replicas_never_place_more_pods_than_fit(pki, tmp_path) -> None:
    with cluster() as fake, replicas(fake, pki, tmp_path, leader_elect=True) as reps:
        sched = Scheduler(fake, reps, client_ctx(pki))
        sched.run(burst_pods())
        per_node = placed_per_node(fake)
        forwarded = sum('"extender_forward_failed"' in r.log.read_text() for r in reps)
    assert all(n <= SLOTS_PER_GPU for n in per_node.values()), per_node
    assert sum(per_node.values()) == CAPACITY and len(sched.unschedulable) == PODS - CAPACITY
    assert sched.errors == 0 and forwarded == 0  # both replicas answered: the follower through the leader


def test_two_replicas_agree_when_the_lease_holder_is_killed_mid_burst(pki, tmp_path) -> None:
    with cluster() as fake, replicas(fake, pki, tmp_path, leader_elect=True) as reps:
        sched = Scheduler(fake, reps, client_ctx(pki))
        first = holder(fake)
        leader = next(r for r in reps if f":{r.port} " in f"{first} ")
        killed = threading.Event()

        def kill_at(n: int) -> None:
            if n == CAPACITY // 2 and not killed.is_set():
                killed.set()
                leader.kill()

        sched.on_answer = kill_at
        t0 = time.monotonic()
        sched.run(burst_pods())
        took = time.monotonic() - t0
        per_node = placed_per_node(fake)
        second = holder(fake)
    assert killed.is_set() and not leader.alive()
    assert second is not None and second != first  # the survivor took the Lease over
    assert all(n <= SLOTS_PER_GPU for n in per_node.values()), per_node
    assert sum(per_node.values()) == CAPACITY, per_node  # no slot lost either
    assert sched.errors > 0 and took < 30  # pods were retried while the Lease expired (3 s), then placed


def test_control_without_leader_election_the_replicas_overcommit(pki, tmp_path) -> None:
    """The issue's row, reproduced with the same harness: each replica keeps its own reservations."""
    with cluster() as fake, replicas(fake, pki, tmp_path, leader_elect=False) as reps:
        sched = Scheduler(fake, reps, client_ctx(pki))
        sched.run(burst_pods())
        per_node = placed_per_node(fake)
    assert sum(per_node.values()) > CAPACITY, per_node


def test_grpc_filter_on_the_follower_is_answered_and_reserved_by_the_lease_holder(pki, tmp_path) -> None:
    import json

    import grpc

    from flexinfer.api.v1 import scheduler_extender_pb2 as pb
    from flexinfer.api.v1 import scheduler_extender_pb2_grpc as pb_grpc

    def read(path: str) -> bytes:
        return Path(path).read_bytes()

    with cluster() as fake, replicas(fake, pki, tmp_path, leader_elect=True) as reps:
        identity = holder(fake)
        leader = next(r for r in reps if f":{r.port} " in f"{identity} ")
        follower = next(r for r in reps if r is not leader)
        sched = pki["scheduler"]
        creds = grpc.ssl_channel_credentials(read(sched.ca), read(sched.key), read(sched.cert))
        pod = model_pod(POD_MIB, "llamacpp", 1, name="grpc-pod", uid="uid-grpc-pod")
        req = pb.FilterRequest(pod=pb.PodSource(pod_json=json.dumps(pod).encode()), node_names=[NODES[0]])
        with grpc.secure_channel(f"127.0.0.1:{follower.grpc_port}", creds,
                                 options=[("grpc.ssl_target_name_override", SERVICE_DNS)]) as ch:
            out = pb_grpc.SchedulerExtenderStub(ch).Filter(req, timeout=10)
        assert out.error == "" and list(out.node_names) == [NODES[0]]

        def reservations(r: Replica) -> float:
            text = httpx.get(f"{r.url}/metrics", verify=client_ctx(pki), timeout=10).text
            line = next(x for x in text.splitlines() if x.startswith("flexinfer_extender_reservations "))
            return float(line.split()[1])

        assert reservations(leader) == 1 and reservations(follower) == 0
