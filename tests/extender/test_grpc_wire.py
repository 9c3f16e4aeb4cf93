"""extender.grpc_wire writes the same messages protobuf would, and its memos stay bounded."""

from __future__ import annotations

import random

from flexinfer.extender.grpc_wire import RequestDecoder, ResponseEncoder

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


def _request(pod: bytes, names: list[str]) -> bytes:
    return pb.FilterRequest(pod=pb.PodSource(pod_json=pod), node_names=names).SerializeToString()


def test_decoded_requests_equal_protobufs_parse_whatever_the_field_order() -> None:
    """The split (pod field alone, names memoised by their bytes) gives what parsing the whole message gives,
    also for names written before the pod, a pod field repeated after the names (protobuf merges it), no pod,
    no names, and a length prefix that runs past the end."""
    rng = random.Random(11)
    dec = RequestDecoder(size=4)
    for _ in range(300):
        names = [rng.choice(["n", "ü-node", "x" * 150]) + str(rng.randrange(50)) for _ in range(rng.randrange(0, 40))]
        pod = pb.PodSource(pod_json=rng.choice([b"{}", b'{"metadata":{"name":"p"}}', b"x" * 300]))
        names_only = pb.FilterRequest(node_names=names).SerializeToString()
        pod_only = pb.FilterRequest(pod=pod).SerializeToString()
        other = pb.FilterRequest(pod=pb.PodSource(requirements=pb.PodRequirements(name="q"))).SerializeToString()
        raw = rng.choice([pod_only + names_only, names_only + pod_only, pod_only + names_only + other,
                          names_only, pod_only, other + names_only])
        want = pb.FilterRequest.FromString(raw)
        got = dec.decode(raw)
        assert not got.error and got.raw is raw
        assert list(got.node_names) == list(want.node_names) and got.pod == want.pod
        assert len(dec) <= 4
    bad = dec.decode(b"\x0a\x05ab")  # pod length past the end
    assert "not a FilterRequest protobuf message" in bad.error and bad.node_names == ()
    assert dec.decode(b"\xff\xff\xff").error


def test_the_same_names_after_any_pod_are_one_object_and_the_memo_is_bounded() -> None:
    dec = RequestDecoder(size=2, max_names=5)
    names = ["a", "b", "c"]
    first = dec.decode(_request(b'{"a":1}', names))
    second = dec.decode(_request(b'{"b":2}', names))
    assert second.node_names is first.node_names and first.node_names.wanted == {"a", "b", "c"}
    assert second.pod.pod_json == b'{"b":2}'
    dec.decode(_request(b"{}", ["d"]))
    dec.decode(_request(b"{}", ["e"]))
    assert len(dec) == 2 and dec.decode(_request(b"{}", names)).node_names is not first.node_names
    big = dec.decode(_request(b"{}", [str(i) for i in range(6)]))
    assert len(big.node_names) == 6 and len(dec) == 2  # longer than max_names: answered, not kept


def test_answer_bytes_are_reused_for_the_same_answer_objects_only() -> None:
    enc = ResponseEncoder()
    passed, failed, unres = ["a"], {"b": "node has no GPU"}, {}
    once = enc.filter_bytes(passed, failed, unres)
    assert enc.filter_bytes(passed, failed, unres) is once
    assert enc.filter_bytes(list(passed), failed, unres) == once
    changed = enc.filter_bytes(["a", "c"], failed, unres)
    assert list(pb.FilterResponse.FromString(changed).node_names) == ["a", "c"]
    names = ["a", "b"]
    p1 = enc.prioritize_bytes(names, [3, 0])
    assert enc.prioritize_bytes(names, [3, 0]) is p1
    p2 = enc.prioritize_bytes(names, [3, 4])
    assert [h.score for h in pb.PrioritizeResponse.FromString(p2).priorities] == [3, 4]


def test_http_and_grpc_share_one_list_object_through_the_intern_and_it_is_bounded() -> None:
    import msgspec
    from flexinfer.extender.memo import NameIntern
    from flexinfer.extender.wire import NameLists

    intern = NameIntern(size=2)
    http, grpc_ = NameLists(intern=intern), RequestDecoder(intern=intern)
    names = ["a", "b", "c"]
    over_http = http.decode(msgspec.Raw(msgspec.json.encode(names)))
    over_grpc = grpc_.decode(_request(b"{}", names)).node_names
    whole = grpc_.decode(pb.FilterRequest(node_names=names).SerializeToString()).node_names  # no pod: parsed whole
    assert over_grpc is over_http and whole is over_http
    intern.get(["x"])
    intern.get(["y"])
    assert len(intern) == 2 and intern.get(names) is not over_http  # least recently used dropped
    from flexinfer.extender.memo import MAX_KEPT_NAMES

    many = [str(i) for i in range(MAX_KEPT_NAMES + 1)]
    assert list(intern.get(many)) == many and len(intern) == 2  # too long to keep


def test_more_names_than_a_request_may_carry_stay_protobufs_and_are_not_kept() -> None:
    """Over the edge's limit the names are not turned into Python strings (the edge refuses the call by their
    count), and nothing is memoised."""
    from flexinfer.extender.memo import NodeNames

    dec = RequestDecoder(max_request_names=3)
    four = ["a", "b", "c", "d"]
    for raw in (_request(b"{}", four), pb.FilterRequest(node_names=four).SerializeToString()):
        got = dec.decode(raw)
        assert len(got.node_names) == 4 and not isinstance(got.node_names, NodeNames)
        assert len(dec) == 0 and len(dec.intern) == 0
    assert isinstance(dec.decode(_request(b"{}", ["a", "b", "c"])).node_names, NodeNames)  # at the limit: as usual
