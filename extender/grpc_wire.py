"""Protobuf wire bytes of the two large gRPC answers (FilterResponse, PrioritizeResponse), joined in C from
pieces cached per node name, plus a memo of recently seen node-name lists.

Building a 5000-entry answer the usual way creates one Python message object per node (about 2 us each)
and fills map fields through Python-level loops; the pieces here are made once per node name (and per
reason / score), so an answer is `b"".join(...)` over cached bytes. The bytes are exactly what protobuf
itself writes for these messages (`tests/extender/test_grpc_wire.py` compares both); the servicer parses
them back into the message type gRPC serialises (a single pass in C).

Every memo here is keyed by data from the request and bounded (cleared when full).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from itertools import repeat
from operator import getitem

from flexinfer.api.v1 import scheduler_extender_pb2 as pb

from .memo import MAX_KEPT_NAMES, NodeNames
from .policy import MAX_SCORE  # kube-scheduler's MaxExtenderPriority: the policy's one number

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
        # The last answers as messages, reused while the same (shared, never changed) answer objects come again.
        self._last_filter: tuple[object, object, object, pb.FilterResponse] | None = None
        self._last_priorities: tuple[object, list[int], pb.PrioritizeResponse] | None = None

    def filter_message(self, passed: Sequence[str], failed: Mapping[str, str],
                       unresolvable: Mapping[str, str]) -> pb.FilterResponse:
        """FilterResponse for the answer; the same message again for the same answer objects (the extender shares
        its cached answer while nothing changed)."""
        last = self._last_filter
        if last is not None and last[0] is passed and last[1] is failed and last[2] is unresolvable:
            return last[3]
        msg = pb.FilterResponse.FromString(self.filter_response(passed, failed, unresolvable))
        self._last_filter = (passed, failed, unresolvable, msg)
        return msg

    def prioritize_message(self, names: Sequence[str], scores: list[int]) -> pb.PrioritizeResponse:
        """PrioritizeResponse; the same message again for the same name list with equal scores."""
        last = self._last_priorities
        if last is not None and last[0] is names and last[1] == scores:
            return last[2]
        msg = pb.PrioritizeResponse.FromString(self.prioritize_response(names, scores))
        self._last_priorities = (names, scores, msg)
        return msg

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


class NameListMemo:
    """Recently seen node-name lists from gRPC requests as `memo.NodeNames` (names + their set, reused by the
    verdict cache's answer memo), keyed by the list itself. Bounded: `size` lists, and lists longer than
    `max_names` are never kept."""

    def __init__(self, size: int = 8, max_names: int = MAX_KEPT_NAMES) -> None:
        self.size = size
        self.max_names = max_names
        self._lists: OrderedDict[tuple[str, ...], NodeNames] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._lists)

    def get(self, names: Sequence[str]) -> NodeNames:
        key = tuple(names)
        if len(key) > self.max_names:
            return NodeNames(list(key))
        with self._lock:
            hit = self._lists.get(key)
            if hit is not None:
                self._lists.move_to_end(key)
                return hit
            made = self._lists[key] = NodeNames(list(key))
            while len(self._lists) > self.size:
                self._lists.popitem(last=False)
            return made
