"""A new Lease holder does not know the old holder's tentative reservations (extender/replicas.py, "takeover").

Two in-process replicas (their own node cache, pod watch and Lease candidate) on the fake API server, one clock
for both Lease candidates that the test moves. The old holder places a pod whose bind is delayed; the Lease moves
(the holder stops renewing and it expires); the new holder must not place a second pod onto the memory the first
one took: it answers "leader changed, retry" until the grace has passed and its pod watch has delivered the pods
a fresh list shows bound (the test holds that watch back for a while), then it sees the first pod committed.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flexinfer.extender.main import Running, build
from flexinfer.extender.pod import requirements_from_dict
from flexinfer.extender.replicas import BoundPodCatchUp, Replicas

from flexinfer import kube
from flexinfer.sim.fakeapi import FakeApiServer

from .ext_fixtures import gpu, model_pod, node_obj

pytestmark = pytest.mark.integration

NS = "models"
NODE = "gpu-0"
LEASE_S = 3.0  # renew deadline 2.25 s: the default takeover grace
POD_MIB = 16000  # one fits on the 24000 MiB free


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def pod(name: str) -> dict[str, Any]:
    p = model_pod(POD_MIB, "llamacpp", 1, name=name, uid=f"uid-{name}")
    p["metadata"]["namespace"] = NS
    p["metadata"].pop("resourceVersion", None)
    return p


def wait(what: str, ok: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not ok():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def advance(clock: Clock, holder: Replica, seconds: float) -> None:
    """Move the clock, the holder renewing every half second as its loop would."""
    end = clock.t + seconds
    while clock.t < end:
        clock.t = min(end, clock.t + 0.5)
        assert holder.replicas.step()


class Replica:
    def __init__(self, fake: FakeApiServer, port: int, clock: Clock) -> None:
        self.running: Running = build(kube_server=fake.url)
        ext = self.running.extender
        self.replicas = Replicas(self.running.api, "flexinfer-system", http_url=f"http://127.0.0.1:{port}",
                                 lease_duration_s=LEASE_S,
                                 catch_up=BoundPodCatchUp(self.running.api, self.running.pod_watch, ext))
        self.replicas.lock.monotonic = clock
        wait("caches synced", lambda: len(ext.cache) == 1 and ext.cache.commitments_synced)

    def answer_filter(self, p: dict[str, Any]) -> list[str] | str:
        """What kube-scheduler gets: the nodes that passed (this replica answered; it reserved when one did), or
        the 503 reason. Forwarding is not modelled: the test asks the holder."""
        _, why = self.replicas._target(False)
        if why:
            return why
        return list(self.running.extender.filter(requirements_from_dict(p), [NODE]).passed)

    def close(self) -> None:
        self.replicas.stop()
        self.running.stop()


@contextlib.contextmanager
def two_replicas() -> Iterator[tuple[FakeApiServer, Clock, Replica, Replica]]:
    with FakeApiServer() as fake:
        fake.put_object({"apiVersion": "v1", "kind": "Node",
                         **node_obj(NODE, [gpu(0, "nvidia", "sm_89", 24576, 24000)], time.time())})
        for ns in (NS, "flexinfer-system"):
            fake.put_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        for name in ("first", "second"):
            fake.put_object({"apiVersion": "v1", "kind": "Pod", **pod(name)})
        clock = Clock()
        a = b = None
        try:
            a = Replica(fake, 1, clock)
            b = Replica(fake, 2, clock)
            yield fake, clock, a, b
        finally:
            for r in (a, b):
                if r is not None:
                    r.close()


def test_a_new_lease_holder_does_not_place_onto_memory_the_old_holder_placed_a_pod_on() -> None:
    with two_replicas() as (_, clock, a, b):
        assert a.replicas.step() and not b.replicas.step()  # a created the Lease: no takeover, it answers at once
        assert not a.replicas.catching_up and a.replicas.lock.takeover()[0] == 0
        assert a.answer_filter(pod("first")) == [NODE]  # a places "first" (reserved); kube-scheduler binds later
        assert a.answer_filter(pod("second")) == []  # a itself knows the memory is taken

        # a stops renewing (a loaded API server, a paused process); the Lease expires and b takes it over
        clock.t += LEASE_S + 0.1
        assert not a.replicas.lock.is_leader
        assert b.replicas.step()
        count, _, previous = b.replicas.lock.takeover()
        assert count == 1 and previous == a.replicas.identity
        answer = b.answer_filter(pod("second"))
        assert answer != [NODE], "the new holder placed a second pod onto memory the old holder gave the first"
        assert isinstance(answer, str) and "leader changed" in answer

        # b's pod watch is slow: "first"'s bind reaches the API server, but not b's commitments yet
        watch = b.running.pod_watch
        gate, deliver = threading.Event(), watch.on_event
        watch.on_event = lambda kind, obj: (gate.wait(20), deliver(kind, obj))
        kube.bind_pod(a.running.api, NS, "first", NODE)
        wait("a's watch sees the bind", lambda: a.running.extender.cache.commitment("uid-first") is not None)
        snaps: list[Any] = []
        listed = b.replicas.catch_up.snapshot
        b.replicas.catch_up.snapshot = lambda: snaps.append(listed()) or snaps[-1]
        advance(clock, b, b.replicas.takeover_grace_s)  # the grace is over: b lists the bound pods ...
        wait("b listed the bound pods", lambda: snaps)
        assert snaps[0].holding == ("uid-first",)
        time.sleep(0.3)
        assert b.replicas.catching_up  # ... and waits for its watch to deliver "first"
        assert isinstance(b.answer_filter(pod("second")), str)
        gate.set()
        wait("b caught up", lambda: not b.replicas.catching_up)
        assert b.running.extender.cache.commitment("uid-first") is not None
        assert b.answer_filter(pod("second")) == []  # b answers now, and knows "first" holds the memory
        assert len(b.replicas.takeover_waits) == 1


def test_a_released_lease_is_a_takeover_and_renewing_ones_own_is_not() -> None:
    with two_replicas() as (_, clock, a, b):
        assert a.replicas.step() and not b.replicas.step()
        clock.t += 1.0
        assert a.replicas.step() and not a.replicas.catching_up  # renewed its own: nothing to wait for
        a.replicas.stop()  # graceful: 503 from now on, hand-off grace, then the Lease is released (holder "")
        assert b.replicas.step()
        assert b.replicas.lock.takeover()[0] == 1 and b.replicas.lock.takeover()[2] == ""
        assert b.replicas.catching_up and isinstance(b.answer_filter(pod("first")), str)
        advance(clock, b, b.replicas.takeover_grace_s)
        wait("b caught up (nothing bound: the list is covered at once)", lambda: not b.replicas.catching_up)
        assert b.answer_filter(pod("first")) == [NODE]


def test_the_wait_is_bounded_when_the_bound_pod_list_keeps_failing() -> None:
    with two_replicas() as (fake, clock, a, b):
        assert a.replicas.step() and not b.replicas.step()
        clock.t += LEASE_S + 0.1
        fake.fail("GET", "/api/v1/pods", status=500, times=-1, watch=False)
        assert b.replicas.step() and b.replicas.catching_up
        advance(clock, b, b.replicas.takeover_grace_s)
        time.sleep(0.3)
        assert b.replicas.catching_up  # the list fails: still waiting
        advance(clock, b, b.replicas.takeover_timeout_s)
        wait("b answers after the timeout", lambda: not b.replicas.catching_up)
        assert b.answer_filter(pod("first")) == [NODE]


# --- LeaseLock details the replicas rely on (controller/leader.py) ---------------------------------------------


def test_the_candidate_that_loses_the_create_race_learns_the_holder_at_once() -> None:
    """Both replicas start together and both find no Lease: one POST wins, the other gets 409. The loser used to
    know no holder until its next attempt (a retry period of 503 'no replica holds the Lease yet')."""
    with two_replicas() as (fake, _, a, b):
        assert a.replicas.step()
        fake.fail("GET", "/apis/coordination.k8s.io/v1/namespaces/flexinfer-system/leases/flexinfer-extender",
                  status=404, times=1)  # b's read still says "no Lease": it POSTs too
        assert not b.replicas.step()
        assert b.replicas.holder is not None and b.replicas.holder.identity == a.replicas.identity
        assert b.replicas._target(False)[0] == b.replicas.holder  # forwards to a, not 503


def test_release_after_the_renew_deadline_still_hands_the_lease_over() -> None:
    """A graceful hand-off waits with renewals stopped; if the renew deadline passes meanwhile, the Lease (which
    still names this replica) is released anyway, so the follower need not wait for it to expire."""
    with two_replicas() as (fake, clock, a, b):
        assert a.replicas.step() and not b.replicas.step()
        clock.t += LEASE_S * 0.75 + 0.1
        assert not a.replicas.lock.is_leader
        a.replicas.lock.release()
        lease = fake.get_object("leases", "flexinfer-extender", "flexinfer-system") or {}
        assert lease["spec"]["holderIdentity"] == ""
        assert b.replicas.step()  # at once: the Lease was released, not left to expire
        assert b.replicas.lock.takeover()[2] == ""
