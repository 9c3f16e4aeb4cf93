"""NodeNames decoding: errors located at `$.NodeNames`; repeated lists reused, bounded."""

from __future__ import annotations

import msgspec
import pytest
from flexinfer.extender import wire
from flexinfer.extender.memo import NodeNames


def raw_of(body: bytes) -> msgspec.Raw:
    raw = wire.args_decoder.decode(body).the_names
    assert raw is not None
    return raw


def test_names_decode_either_spelling_and_null_means_absent() -> None:
    assert wire.names_of(raw_of(b'{"NodeNames": ["a", "b"]}')) == ["a", "b"]
    assert wire.names_of(raw_of(b'{"nodenames": ["a"]}')) == ["a"]
    assert wire.names_of(raw_of(b'{"NodeNames": null, "nodenames": ["x"]}')) == ["x"]
    assert wire.args_decoder.decode(b'{"NodeNames": null}').the_names is None
    assert wire.args_decoder.decode(b"{}").the_names is None


@pytest.mark.parametrize(("body", "where"), [
    (b'{"NodeNames": "a"}', "`$.NodeNames`"),
    (b'{"NodeNames": ["a", 3]}', "`$.NodeNames[1]`"),
])
def test_bad_names_are_located(body: bytes, where: str) -> None:
    with pytest.raises(msgspec.ValidationError) as e:
        wire.names_of(raw_of(body))
    assert str(e.value).endswith("at " + where)


def test_name_lists_reuse_the_same_object_for_the_same_bytes_and_stay_bounded() -> None:
    lists = wire.NameLists(size=2)
    a1 = lists.decode(raw_of(b'{"NodeNames": ["a", "b"]}'))
    a2 = lists.decode(raw_of(b'{"NodeNames": ["a", "b"]}'))
    assert isinstance(a1, NodeNames) and a1 is a2 and a1.wanted == frozenset({"a", "b"})
    b = lists.decode(raw_of(b'{"NodeNames": ["b"]}'))
    lists.decode(raw_of(b'{"NodeNames": ["c"]}'))  # evicts the least recently used: ["a", "b"]
    assert lists.decode(raw_of(b'{"NodeNames": ["a", "b"]}')) is not a1
    assert lists.decode(raw_of(b'{"NodeNames": ["c"]}')) is not b
    assert len(lists._lists) == 2
    with pytest.raises(msgspec.ValidationError):
        lists.decode(raw_of(b'{"NodeNames": [1]}'))


def test_shared_json_reuses_the_encoding_of_the_same_object_and_stays_bounded() -> None:
    """SharedJson: the same (never changed) object again -> the same Raw, byte-identical to encoding it; small
    objects pass through; objects over the budget are never kept; the kept entries never exceed the budget."""
    import msgspec
    from flexinfer.extender.wire import SharedJson, encoder

    js = SharedJson(max_entries=1000, min_len=10)
    small = {"a": "x"}
    assert js.of(small) is small and len(js) == 0
    failed = {f"n{i}": "Insufficient free GPU memory" for i in range(400)}
    raw = js.of(failed)
    assert isinstance(raw, msgspec.Raw) and bytes(raw) == encoder.encode(failed)
    assert js.of(failed) is raw  # the same object: no second encoding
    assert js.of(dict(failed)) is not raw  # an equal but different object is encoded on its own
    names = [f"n{i}" for i in range(400)]
    assert bytes(js.of(names)) == encoder.encode(names)
    assert js.entries <= 1000 and js.of(failed) is not raw  # the oldest were dropped to stay within budget
    huge = {f"u{i}": "Node not found in the extender's cache" for i in range(5000)}
    assert js.of(huge) is huge and js.entries <= 1000  # over the budget: never kept


def test_name_lists_longer_than_the_byte_bound_are_answered_not_kept() -> None:
    """A list kept by its bytes is bounded in bytes too (long names), over HTTP and over gRPC."""
    from flexinfer.extender.grpc_wire import RequestDecoder

    from flexinfer.api.v1 import scheduler_extender_pb2 as pb

    long_names = ["x" * 300 + str(i) for i in range(20)]
    lists = wire.NameLists(max_key_bytes=1000)
    got = lists.decode(raw_of(msgspec.json.encode({"NodeNames": long_names})))
    assert list(got) == long_names and len(lists._lists) == 0
    assert len(lists.decode(raw_of(b'{"NodeNames": ["a"]}'))) == 1 and len(lists._lists) == 1
    grpc_lists = RequestDecoder(max_key_bytes=1000)
    raw = pb.FilterRequest(pod=pb.PodSource(pod_json=b"{}"), node_names=long_names).SerializeToString()
    assert list(grpc_lists.decode(raw).node_names) == long_names and len(grpc_lists) == 0
