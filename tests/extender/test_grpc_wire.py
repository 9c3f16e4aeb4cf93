"""extender.grpc_wire writes the same messages protobuf would, and its memos stay bounded."""

from __future__ import annotations

import random

from flexinfer.extender.grpc_wire import NameListMemo, ResponseEncoder

from flexinfer.api.v1 import scheduler_extender_pb2 as pb


def test_filter_and_prioritize_bytes_parse_to_the_protobuf_messages() -> None:
    rng = random.Random(7)
    enc = ResponseEncoder(max_pieces=64)  # small: the clear-when-full path runs too
    for _ in range(40):
        names = [rng.choice(["n", "ü-node", "x" * 200, "a.b-c"]) + str(rng.randrange(100)) for _ in range(30)]
        passed = names[:10]
        failed = {n: rng.choice(["Insufficient free GPU memory", "node not in extender cache"]) for n in names[10:20]}
        unres = {n: rng.choice(["node has no GPU", "vllm does not run on maxwell sm_52", "é" * 300])
                 for n in names[20:]}
        ours = pb.FilterResponse.FromString(enc.filter_response(passed, failed, unres))
        assert ours == pb.FilterResponse(node_names=passed, failed_nodes=failed, failed_and_unresolvable_nodes=unres)
        scores = [rng.randrange(0, 11) for _ in names]
        mine = pb.PrioritizeResponse.FromString(enc.prioritize_response(names, scores))
        assert mine == pb.PrioritizeResponse(priorities=[pb.HostPriority(host=n, score=s)
                                                         for n, s in zip(names, scores, strict=True)])
        assert len(enc._names) <= 64 and len(enc._hosts) <= 64 and len(enc._entries) <= 64
    many = [f"ghost-{i}" for i in range(200)]  # more than the memo keeps: answered, not kept
    assert list(pb.FilterResponse.FromString(enc.filter_response(many, {}, {})).node_names) == many
    assert len(enc._names) <= 64


def test_name_lists_reused_and_bounded() -> None:
    memo = NameListMemo(size=2, max_names=5)
    a = memo.get(["a", "b"])
    assert memo.get(("a", "b")) is a and a.wanted == {"a", "b"}
    memo.get(["c"])
    memo.get(["d"])
    assert len(memo) == 2 and memo.get(["a", "b"]) is not a
    big = memo.get([str(i) for i in range(6)])
    assert len(big) == 6 and len(memo) == 2
