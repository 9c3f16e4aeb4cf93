"""Forwarding to the Lease holder over gRPC keeps a bounded set of channels (the targets come from the Lease:
a new pod IP after every rollout), and a failed forward becomes a status the caller can send back."""

from __future__ import annotations

import grpc
from flexinfer.extender import replicas as rmod
from flexinfer.extender.replicas import MAX_PEER_CHANNELS, Holder, Replicas


def _replicas() -> Replicas:
    return Replicas(None, "flexinfer-system", http_url="http://127.0.0.1:1")


def test_channels_to_past_holders_are_bounded_and_closed() -> None:
    r = _replicas()
    targets = [f"127.0.0.1:{20000 + i}" for i in range(MAX_PEER_CHANNELS + 3)]
    first = r._stub_call(targets[0], "Filter")
    assert r._stub_call(targets[0], "Filter") is first  # reused
    kept = r._channels[targets[0]][0]
    for t in targets[1:MAX_PEER_CHANNELS]:
        r._stub_call(t, "Prioritize")
    r._stub_call(targets[0], "Filter")  # the oldest, used again: kept over the others
    for t in targets[MAX_PEER_CHANNELS:]:
        r._stub_call(t, "Filter")
    assert len(r._channels) == MAX_PEER_CHANNELS
    assert targets[0] in r._channels and r._channels[targets[0]][0] is kept
    assert list(r._channels)[-3:] == targets[-3:]
    r.stop()


def test_a_bare_rpc_error_is_unavailable(monkeypatch) -> None:
    r = _replicas()
    r._holder = Holder("other 1", "http://127.0.0.1:2", "127.0.0.1:3")
    monkeypatch.setattr(type(r.lock), "is_leader", property(lambda self: False))

    def fail(*_a, **_k):
        raise grpc.RpcError()

    monkeypatch.setattr(rmod.Replicas, "_stub_call", lambda self, target, method: fail)
    code, message = r.forward_grpc("Filter", object(), False)
    assert code is grpc.StatusCode.UNAVAILABLE and "127.0.0.1:3" in message
