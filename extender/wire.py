"""kube-scheduler extender wire types (k8s.io/kube-scheduler/extender/v1), decoded with msgspec.

The Go structs have no JSON tags, so kube-scheduler sends and expects PascalCase field names.
Kubernetes <= 1.15 used lowercase tags. We accept either spelling on input and always emit
PascalCase (docs/extender-protocol.md). Node items are kept as `msgspec.Raw`: in nodes mode the
passing nodes are echoed byte for byte, never re-encoded.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import msgspec

from .memo import MAX_KEPT_NAMES, Lru, NameIntern, NodeNames
from .pod import PodWire


class NodeListIn(msgspec.Struct):
    items: list[msgspec.Raw] | None = None


_NO_NAMES = msgspec.Raw()


class ExtenderArgs(msgspec.Struct):
    Pod: PodWire | None = None
    pod: PodWire | None = None
    Nodes: NodeListIn | None = None
    nodes: NodeListIn | None = None
    # Kept raw: decoded by `names_of` / `NameLists.decode`, which reuse the list when the same bytes come again.
    NodeNames: msgspec.Raw = _NO_NAMES
    nodenames: msgspec.Raw = _NO_NAMES

    @property
    def the_pod(self) -> PodWire | None:
        return self.Pod if self.Pod is not None else self.pod

    @property
    def the_nodes(self) -> NodeListIn | None:
        return self.Nodes if self.Nodes is not None else self.nodes

    @property
    def the_names(self) -> msgspec.Raw | None:
        """The raw NodeNames JSON (either spelling); None when absent or null."""
        for raw in (self.NodeNames, self.nodenames):
            if len(raw) and bytes(raw) != b"null":
                return raw
        return None


class _NodeMeta(msgspec.Struct, rename="camel"):
    name: str = ""
    resource_version: str = ""
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class NodeItem(msgspec.Struct):
    metadata: _NodeMeta | None = None


class NodeListOut(msgspec.Struct):
    metadata: dict[str, str]
    items: list[msgspec.Raw]


class ExtenderFilterResult(msgspec.Struct):
    Nodes: NodeListOut | None
    NodeNames: list[str] | None
    FailedNodes: dict[str, str]
    FailedAndUnresolvableNodes: dict[str, str]
    Error: str


class HostPriority(msgspec.Struct, gc=False):  # str + int: no cycles, so not tracked by the GC
    Host: str
    Score: int


class ErrorBody(msgspec.Struct):
    Error: str


args_decoder = msgspec.json.Decoder(ExtenderArgs)
_names_decoder = msgspec.json.Decoder(list[str])


def names_of(raw: msgspec.Raw) -> list[str]:
    """Decode NodeNames. Raises msgspec.ValidationError/DecodeError located at `$.NodeNames`."""
    try:
        return _names_decoder.decode(raw)
    except msgspec.ValidationError as e:
        text = str(e)
        located = text.replace("at `$", "at `$.NodeNames", 1) if "at `$" in text else f"{text} - at `$.NodeNames`"
        raise msgspec.ValidationError(located) from None




MAX_KEY_BYTES = 4 * 1024 * 1024  # a name list kept by its bytes: at most this long (16384 names of 253 characters)


class NameLists:
    """The last few distinct NodeNames lists, keyed by their exact JSON bytes, as `memo.NodeNames`
    (names + their set). kube-scheduler sends the same list (every node that passed its own filters)
    for pod after pod; a repeat costs one bytes hash and compare instead of decoding and hashing
    thousands of names again. Bounded whatever clients send: `size` lists (least recently used dropped),
    and only lists of at most `max_names` names and `max_key_bytes` bytes are kept."""

    def __init__(self, size: int = 8, max_names: int = MAX_KEPT_NAMES, intern: NameIntern | None = None,
                 max_key_bytes: int = MAX_KEY_BYTES) -> None:
        self.size = size
        self.max_names = max_names
        self.max_key_bytes = max_key_bytes
        self.intern = intern if intern is not None else NameIntern(size)
        self._lists: Lru[bytes, NodeNames] = Lru(size)

    def __len__(self) -> int:
        return len(self._lists)

    def decode(self, raw: msgspec.Raw) -> NodeNames:
        key = bytes(raw)
        hit = self._lists.get(key)
        if hit is not None:
            return hit
        names = self.intern.get(names_of(raw))
        if len(names) > self.max_names or len(key) > self.max_key_bytes:
            return names
        return self._lists.keep(key, names)


class SharedJson:
    """The JSON of large answer parts the extender hands out read-only and again and again (the verdict index
    returns the same passed list and rejection maps, by identity, while nothing changed; a shape's first filter
    shares one merged map of statically rejected nodes), as `msgspec.Raw` to splice into a response: a repeat
    costs a lookup instead of encoding thousands of entries. Keyed by object identity, holding the object (so its
    id cannot be reused while kept). Bounded whatever clients send: only objects of `min_len` to `max_entries`
    entries, at most `max_entries` entries kept in all (least recently used dropped; about 150 bytes each with
    the JSON). Callers pass only objects nobody changes after handing them out (the verdict index's
    copy-on-write contract, extender.memo)."""

    def __init__(self, max_entries: int = 50_000, min_len: int = 256) -> None:
        self.max_entries = max_entries
        self.min_len = min_len
        self.entries = 0
        self._kept: OrderedDict[int, tuple[list[str] | dict[str, str], msgspec.Raw]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._kept)

    def of(self, obj: list[str] | dict[str, str]) -> object:
        """`obj` itself when small or too large to keep, else its JSON as msgspec.Raw (encoded on first sight)."""
        n = len(obj)
        if n < self.min_len or n > self.max_entries:
            return obj
        key = id(obj)
        with self._lock:
            hit = self._kept.get(key)
            if hit is not None and hit[0] is obj:
                self._kept.move_to_end(key)
                return hit[1]
        raw = msgspec.Raw(encoder.encode(obj))
        with self._lock:
            old = self._kept.pop(key, None)
            if old is not None:  # another thread encoded and kept it meanwhile
                self.entries -= len(old[0])
            self._kept[key] = (obj, raw)
            self.entries += n
            while self.entries > self.max_entries:
                _, (dropped, _) = self._kept.popitem(last=False)
                self.entries -= len(dropped)
        return raw


node_item_decoder = msgspec.json.Decoder(NodeItem)
encoder = msgspec.json.Encoder()
