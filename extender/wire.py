"""kube-scheduler extender wire types (k8s.io/kube-scheduler/extender/v1), decoded with msgspec.

The Go structs have no JSON tags, so kube-scheduler sends and expects PascalCase field names.
Kubernetes <= 1.15 used lowercase tags. We accept either spelling on input and always emit
PascalCase (reference.md section A). Node items are kept as `msgspec.Raw`: in nodes mode the
passing nodes are echoed byte for byte, never re-encoded.
"""

from __future__ import annotations

import msgspec

from .pod import PodWire


class NodeListIn(msgspec.Struct):
    items: list[msgspec.Raw] | None = None


class ExtenderArgs(msgspec.Struct):
    Pod: PodWire | None = None
    pod: PodWire | None = None
    Nodes: NodeListIn | None = None
    nodes: NodeListIn | None = None
    NodeNames: list[str] | None = None
    nodenames: list[str] | None = None

    @property
    def the_pod(self) -> PodWire | None:
        return self.Pod if self.Pod is not None else self.pod

    @property
    def the_nodes(self) -> NodeListIn | None:
        return self.Nodes if self.Nodes is not None else self.nodes

    @property
    def the_names(self) -> list[str] | None:
        return self.NodeNames if self.NodeNames is not None else self.nodenames


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


class HostPriority(msgspec.Struct):
    Host: str
    Score: int


class ErrorBody(msgspec.Struct):
    Error: str


args_decoder = msgspec.json.Decoder(ExtenderArgs)
node_item_decoder = msgspec.json.Decoder(NodeItem)
encoder = msgspec.json.Encoder()
