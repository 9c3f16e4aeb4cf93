"""Leader election (issue 15 point 3): expiry by local observation time, renew deadline < lease duration,
API timeouts < renew deadline, stop acting the moment renewal fails. Clocks skewed by +/-20 s, a killed
leader and a hung API server; at every instant at most one replica acts."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest
from flexinfer.controller.leader import LeaseLock, LeaseTimings
from flexinfer.controller.reconcile import Controller

from flexinfer import keys, kube

pytestmark = pytest.mark.integration
NS = "ai"
T0 = 1_800_000_000.0
TIMINGS = LeaseTimings()  # 15 s lease, 10 s renew deadline, 2 s retry period, 4 s API timeout


class World:
    """True time, and per replica a wall clock (skewed) and a monotonic clock (arbitrary offset)."""

    def __init__(self) -> None:
        self.t = 0.0

    def wall(self, skew_s: float):
        return lambda: T0 + self.t + skew_s

    def mono(self, offset_s: float):
        return lambda: offset_s + self.t


class Replica:
    def __init__(self, api, world: World, name: str, skew_s: float, offset_s: float, phase_s: float = 0.0) -> None:
        self.lock = LeaseLock(api, NS, identity=name, timings=TIMINGS, clock=world.wall(skew_s),
                              monotonic=world.mono(offset_s))
        self.next_try = phase_s
        self.alive = True

    def step(self, now: float) -> None:
        if self.alive and now >= self.next_try:
            self.lock.try_acquire_or_renew()
            self.next_try = now + TIMINGS.retry_period_s


def run(world: World, replicas: list[Replica], until_s: float, dt: float = 0.5,
        on_step=None) -> list[tuple[float, list[str]]]:
    """Advance true time; after every step record who acts. Asserts at most one at every instant."""
    timeline = []
    while world.t < until_s:
        for r in replicas:
            r.step(world.t)
        if on_step:
            on_step(world.t)
        acting = [r.lock.identity for r in replicas if r.lock.is_leader]
        assert len(acting) <= 1, f"two replicas act at t={world.t}: {acting}"
        timeline.append((world.t, acting))
        world.t += dt
    return timeline


@pytest.mark.parametrize("skew_s", [+20.0, -20.0])
def test_a_skewed_follower_never_takes_a_renewed_lease(kube_api, skew_s):
    """The old rule (renewTime + duration vs the local wall clock) let a replica 20 s fast take a freshly
    renewed lease at once; with observation time the skew does not matter either way."""
    world = World()
    a = Replica(kube_api, world, "a", 0.0, 1000.0)
    b = Replica(kube_api, world, "b", skew_s, 5.0, phase_s=0.25)
    timeline = run(world, [a, b], 90.0)
    assert all(acting == ["a"] for t, acting in timeline)


@pytest.mark.parametrize("leader_skew_s", [+20.0, -20.0])
def test_a_skewed_leader_keeps_its_lease(kube_api, leader_skew_s):
    """A leader whose wall clock is 20 s slow writes renewTimes that look expired to everyone else."""
    world = World()
    a = Replica(kube_api, world, "a", leader_skew_s, 0.0)
    b = Replica(kube_api, world, "b", 0.0, 77.0, phase_s=0.25)
    timeline = run(world, [a, b], 90.0)
    assert all(acting == ["a"] for t, acting in timeline)


@pytest.mark.parametrize("follower_skew_s", [+20.0, -20.0, 0.0])
def test_killed_leader_is_replaced_after_the_lease_duration_and_never_overlaps(kube_api, follower_skew_s):
    world = World()
    a = Replica(kube_api, world, "a", 0.0, 0.0)
    b = Replica(kube_api, world, "b", follower_skew_s, 500.0, phase_s=1.0)
    last_renewal = {}

    def kill(t):
        if t == 30.0:
            a.alive = False  # the pod dies: no release, no more renewals
            last_renewal["t"] = a.next_try - TIMINGS.retry_period_s

    timeline = run(world, [a, b], 80.0, on_step=kill)
    a_end = max(t for t, acting in timeline if acting == ["a"])
    b_start = min(t for t, acting in timeline if acting == ["b"])
    assert a_end < last_renewal["t"] + TIMINGS.renew_deadline_s  # stopped acting at its renew deadline
    assert b_start >= last_renewal["t"] + TIMINGS.lease_duration_s  # not before the lease expired
    assert b_start <= last_renewal["t"] + TIMINGS.lease_duration_s + TIMINGS.retry_period_s + 1.0
    assert all(acting == ["b"] for t, acting in timeline if t >= b_start)


def test_clean_release_hands_over_at_once(kube_api):
    world = World()
    a = Replica(kube_api, world, "a", 0.0, 0.0)
    b = Replica(kube_api, world, "b", 0.0, 0.0)
    assert a.lock.try_acquire_or_renew() and not b.lock.try_acquire_or_renew()
    a.lock.release()
    assert not a.lock.is_leader
    assert b.lock.try_acquire_or_renew()
    lease = kube.get_object(kube_api, "leases", "flexinfer-controller", NS)
    assert lease["spec"]["holderIdentity"] == "b" and lease["spec"]["leaseTransitions"] == 1


def test_race_loser_gets_conflict(fake_api, kube_api):
    world = World()
    a = Replica(kube_api, world, "a", 0.0, 0.0)
    assert a.lock.try_acquire_or_renew()
    world.t += 100  # a stopped renewing long ago: anyone may take it, but only one write wins
    b = Replica(kube_api, world, "b", 0.0, 0.0)
    b.lock.try_acquire_or_renew()  # first sight: b starts counting the lease duration now
    world.t += TIMINGS.lease_duration_s + 1
    fake_api.fail("PUT", f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/flexinfer-controller",
                  status=409, times=1)
    assert b.lock.try_acquire_or_renew() is False
    assert b.lock.try_acquire_or_renew() is True


@pytest.mark.parametrize(("kw", "bad"), [
    ({"renew_deadline_s": 15.0}, "shorter than the lease duration"),
    ({"api_timeout_s": 10.0}, "shorter than the renew deadline"),
    ({"retry_period_s": 9.0}, "retry period"),
])
def test_timings_must_nest(kw, bad):
    with pytest.raises(ValueError, match=bad):
        LeaseTimings(**kw)


@contextlib.contextmanager
def black_hole():
    """A TCP server that accepts connections and never answers: a hung API server."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        srv.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(srv.accept()[0])

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        t.join(2)
        for c in held:
            c.close()
        srv.close()


def test_hung_api_server_leader_stops_acting_before_anyone_takes_over(kube_api):
    """Real time, small timings. The leader's API server hangs (every call blocks until its timeout): it must
    stop acting at its renew deadline even while a renewal is stuck; the other replica, which still reaches
    the API server, takes over only after the lease duration; at no sampled instant do both act."""
    timings = LeaseTimings(lease_duration_s=3.0, renew_deadline_s=2.0, retry_period_s=0.4, api_timeout_s=1.0)
    a = LeaseLock(kube_api, NS, identity="a", timings=timings)
    b = LeaseLock(kube_api, NS, identity="b", timings=timings)
    assert a.try_acquire_or_renew() and not b.try_acquire_or_renew()
    overlaps, samples = [], []
    stop = threading.Event()

    def loop(lock):
        while not stop.is_set():
            lock.try_acquire_or_renew()
            stop.wait(timings.retry_period_s)

    def watch():
        while not stop.is_set():
            both = a.is_leader and b.is_leader
            samples.append((time.monotonic(), a.is_leader, b.is_leader))
            if both:
                overlaps.append(time.monotonic())
            time.sleep(0.01)

    with black_hole() as url:
        hung = kube.api_client(server=url)
        a.api = hung  # from now on every call of a's blocks until the API timeout
        t_hang = time.monotonic()
        threads = [threading.Thread(target=f, args=args, daemon=True)
                   for f, args in ((loop, (a,)), (loop, (b,)), (watch, ()))]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any(lb for _, _, lb in samples):
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join(5)
        hung.close()
    assert b.is_leader and not a.is_leader
    assert not overlaps, overlaps[:3]
    a_end = max(t for t, la, _ in samples if la) if any(la for _, la, _ in samples) else t_hang
    b_start = min(t for t, _, lb in samples if lb)
    assert a_end - t_hang < timings.renew_deadline_s + 0.2  # a's last good renewal was just before the hang
    assert b_start > a_end


def test_a_replica_that_lost_the_lease_writes_nothing(fake_api, kube_api):
    fake_api.put_object({"apiVersion": keys.MODEL_API_VERSION, "kind": keys.MODEL_KIND,
                         "metadata": {"name": "m", "namespace": NS},
                         "spec": {"backend": "llamacpp", "source": "HF://a/b-7b-GGUF", "gpu": {"vendor": "amd"},
                                  "serverless": {"minReplicas": 1}}})
    ctl = Controller(kube_api, namespace=NS)
    ctl.write_guard = lambda: False
    result = ctl.reconcile_once()
    assert result.writes == [] and any("not the leader" in e for e in result.errors)
    assert fake_api.get_object("deployments", "m", NS) is None
    assert not fake_api.requests("POST") and not fake_api.requests("PATCH") and not fake_api.requests("PUT")
