"""Protobuf wire bytes of the two large gRPC answers (FilterResponse, PrioritizeResponse), joined in C from
pieces cached per node name, and the request side: Filter/Prioritize request bytes to what the servicer needs,
with recently seen node-name lists reused by their bytes.

Building a 5000-entry answer the usual way creates one Python message object per node (about 2 us each)
and fills map fields through Python-level loops; the pieces here are made once per node name (and per
reason / score), so an answer is `b"".join(...)` over cached bytes. The bytes are exactly what protobuf
itself writes for these messages (`tests/extender/test_grpc_wire.py` compares both); the servicer hands them
to gRPC as they are (no serialiser for Filter and Prioritize).

Every memo here is keyed by data from the request and bounded (cleared when full).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from itertools import repeat
from operator import getitem

from google.protobuf.message import DecodeError

from flexinfer.api.v1 import scheduler_extender_pb2 as pb

from .memo import MAX_KEPT_NAMES, Lru, NameIntern, NodeNames
from .policy import MAX_SCORE  # kube-scheduler's MaxExtenderPriority: the policy's one number
from .wire import MAX_KEY_BYTES

MAX_PIECES = 50_000  # cached byte pieces per kind; cleared when over

# FilterResponse: node_names = 1 (repeated string), failed_nodes = 2, failed_and_unresolvable_nodes = 3 (maps)
_TAG_NAME, _TAG_FAILED, _TAG_UNRESOLVABLE = 0x0A, 0x12, 0x1A
# PrioritizeResponse.priorities = 1; HostPriority: host = 1 (string), score = 2 (int64); map entry: key 1, value 2
_TAG_ITEM, _TAG_HOST, _TAG_SCORE, _TAG_KEY, _TAG_VALUE = 0x0A, 0x0A, 0x10, 0x0A, 0x12


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "replace")


def _field(tag: int, data: bytes) -> bytes:
    return bytes((tag,)) + _varint(len(data)) + data


def _host_items(name: str) -> tuple[bytes, ...]:
    """PrioritizeResponse.priorities entries for `name` with score 0..MAX_SCORE (proto3 omits a zero score)."""
    host = _field(_TAG_HOST, _utf8(name))
    return tuple(_field(_TAG_ITEM, host + (bytes((_TAG_SCORE,)) + _varint(s) if s else b""))
                 for s in range(MAX_SCORE + 1))


def _map_entry(key: tuple[int, str, str]) -> bytes:
    tag, name, reason = key
    return _field(tag, _field(_TAG_KEY, _utf8(name)) + _field(_TAG_VALUE, _utf8(reason)))


class ResponseEncoder:
    """FilterResponse / PrioritizeResponse bytes from cached pieces (thread-safe; bounded)."""

    def __init__(self, max_pieces: int = MAX_PIECES) -> None:
        self.max_pieces = max_pieces
        self._lock = threading.Lock()
        self._names: dict[str, bytes] = {}
        self._hosts: dict[str, tuple[bytes, ...]] = {}
        self._entries: dict[tuple[int, str, str], bytes] = {}
        # The last answers' bytes, reused while the same (shared, never changed) answer objects come again.
        self._last_filter: tuple[object, object, object, bytes] | None = None
        self._last_priorities: tuple[object, list[int], bytes] | None = None

    def filter_bytes(self, passed: Sequence[str], failed: Mapping[str, str],
                     unresolvable: Mapping[str, str]) -> bytes:
        """FilterResponse bytes for the answer; the same bytes again for the same answer objects (the extender
        shares its cached answer while nothing changed)."""
        last = self._last_filter
        if last is not None and last[0] is passed and last[1] is failed and last[2] is unresolvable:
            return last[3]
        out = self.filter_response(passed, failed, unresolvable)
        self._last_filter = (passed, failed, unresolvable, out)
        return out

    def prioritize_bytes(self, names: Sequence[str], scores: list[int]) -> bytes:
        """PrioritizeResponse bytes; the same bytes again for the same name list with equal scores."""
        last = self._last_priorities
        if last is not None and last[0] is names and last[1] == scores:
            return last[2]
        out = self.prioritize_response(names, scores)
        self._last_priorities = (names, scores, out)
        return out

    def _fill(self, memo: dict, keys: Sequence, make: object) -> bool:
        """Make the pieces `keys` lacks; False when they are too many to keep (the caller makes them unkept)."""
        missing = set(keys).difference(memo)
        if len(memo) + len(missing) > self.max_pieces:
            memo.clear()
            missing = set(keys)
            if len(missing) > self.max_pieces:
                return False
        for k in missing:
            memo[k] = make(k)  # type: ignore[operator]
        return True

    def filter_response(self, passed: Sequence[str], failed: Mapping[str, str],
                        unresolvable: Mapping[str, str]) -> bytes:
        with self._lock:
            return b"".join((self._join(self._names, passed, lambda n: _field(_TAG_NAME, _utf8(n))),
                             self._join(self._entries, list(zip(repeat(_TAG_FAILED), failed, failed.values())),
                                        _map_entry),
                             self._join(self._entries, list(zip(repeat(_TAG_UNRESOLVABLE), unresolvable,
                                                                unresolvable.values())), _map_entry)))

    def _join(self, memo: dict, keys: Sequence, make: object) -> bytes:
        try:  # the common case: every piece made before
            return b"".join(map(memo.__getitem__, keys))
        except KeyError:
            get = memo.__getitem__ if self._fill(memo, keys, make) else make
            return b"".join(map(get, keys))  # type: ignore[arg-type]

    def prioritize_response(self, names: Sequence[str], scores: Sequence[int]) -> bytes:
        if any(s < 0 or s > MAX_SCORE for s in scores):
            raise ValueError(f"scores outside 0..{MAX_SCORE}")
        with self._lock:
            hosts = self._hosts
            try:
                items = list(map(hosts.__getitem__, names))
            except KeyError:
                get = hosts.__getitem__ if self._fill(hosts, names, _host_items) else _host_items
                items = list(map(get, names))
            return b"".join(map(getitem, items, scores))


class ScheduleRequest:
    """A Filter/Prioritize request as the servicer needs it: the bytes as they came (a follower forwards them
    unchanged), the pod source, the node names (a `memo.NodeNames` shared by every request with the same
    list), or `error` when the bytes are not a FilterRequest/PrioritizeRequest (the two have one layout)."""

    __slots__ = ("error", "node_names", "pod", "raw")

    def __init__(self, raw: bytes, pod: pb.PodSource, node_names: Sequence[str], error: str = "") -> None:
        self.raw = raw
        self.pod = pod
        self.node_names = node_names
        self.error = error


def _pod_field_end(raw: bytes) -> tuple[int, int] | None:
    """(start, end) of the pod field's payload when `raw` begins with field 1 (pod) as length-delimited, as every
    protobuf library writes a FilterRequest (fields in number order); else None."""
    if not raw or raw[0] != 0x0A:
        return None
    size, shift, i = 0, 0, 1
    while i < len(raw) and i < 6:
        b = raw[i]
        size |= (b & 0x7F) << shift
        i += 1
        if b < 0x80:
            end = i + size
            return (i, end) if end <= len(raw) else None
        shift += 7
    return None


class RequestDecoder:
    """Filter/Prioritize request bytes -> `ScheduleRequest` (the gRPC request deserializer).

    kube-scheduler-like clients send the same node list for pod after pod. A request written pod first (every
    protobuf library does) is split there: the pod field is parsed on its own (a few hundred bytes), and the rest
    (the names) is looked up by its exact bytes, so a repeated list costs one bytes hash and compare instead of
    parsing and hashing thousands of names. The names of the same bytes after one pod field are the same list
    whatever the pod (field 1 adds nothing to field 2), and a rest that carries a pod field again (protobuf merges
    repeated message fields) is parsed whole instead. Bounded whatever clients send: `size` lists (least
    recently used dropped), only lists of at most `max_names` names and `max_key_bytes` bytes kept. A list met
    for the first time goes through `intern` (the extender's `memo.NameIntern`), so HTTP and gRPC asking about the
    same nodes share one list object and the verdict index's answer for it.

    Bytes that are not the message give `error` (answered in the `error` field and counted, like a malformed
    pod) instead of gRPC's INTERNAL "Exception deserializing request"."""

    def __init__(self, size: int = 8, max_names: int = MAX_KEPT_NAMES, intern: NameIntern | None = None,
                 max_key_bytes: int = MAX_KEY_BYTES, max_request_names: int | None = None) -> None:
        self.size = size
        self.max_names = max_names
        self.max_request_names = max_request_names  # more: the names stay protobuf's (the edge refuses them)
        self.max_key_bytes = max_key_bytes
        self.intern = intern if intern is not None else NameIntern(size)
        self._lists: Lru[bytes, NodeNames] = Lru(size)

    def __len__(self) -> int:
        return len(self._lists)

    def decode(self, raw: bytes) -> ScheduleRequest:
        try:
            return self._decode(raw)
        except DecodeError as e:
            return ScheduleRequest(raw, pb.PodSource(), (), f"the request is not a {pb.FilterRequest.DESCRIPTOR.name} "
                                                 f"protobuf message: {e}")

    def _decode(self, raw: bytes) -> ScheduleRequest:
        span = _pod_field_end(raw)
        if span is None:
            return self._whole(raw)
        rest = raw[span[1]:]
        names = self._lists.get(rest)
        if names is None:
            tail = pb.FilterRequest.FromString(rest)
            if tail.HasField("pod"):
                return self._whole(raw)
            if self._too_many(tail):
                return ScheduleRequest(raw, pb.PodSource.FromString(raw[span[0]:span[1]]), tail.node_names)
            names = self.intern.get(list(tail.node_names))
            if len(names) <= self.max_names and len(rest) <= self.max_key_bytes:
                names = self._lists.keep(rest, names)
        return ScheduleRequest(raw, pb.PodSource.FromString(raw[span[0]:span[1]]), names)

    def _whole(self, raw: bytes) -> ScheduleRequest:
        msg = pb.FilterRequest.FromString(raw)
        if self._too_many(msg):
            return ScheduleRequest(raw, msg.pod, msg.node_names)
        return ScheduleRequest(raw, msg.pod, self.intern.get(list(msg.node_names)))

    def _too_many(self, msg: pb.FilterRequest) -> bool:
        """More names than a request may carry: they are not turned into Python strings (a million of them took
        ~150 MiB that stayed with the process) but left in protobuf's container, whose length the edge reads
        to refuse the call (grpc_edge.Guard: RESOURCE_EXHAUSTED)."""
        return self.max_request_names is not None and len(msg.node_names) > self.max_request_names
