from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PodRequirements(_message.Message):
    __slots__ = ("namespace", "name", "uid", "model", "backend", "vendor", "vram_estimate_mib", "gpu_count", "jit_policy", "preferred_archs")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    VENDOR_FIELD_NUMBER: _ClassVar[int]
    VRAM_ESTIMATE_MIB_FIELD_NUMBER: _ClassVar[int]
    GPU_COUNT_FIELD_NUMBER: _ClassVar[int]
    JIT_POLICY_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_ARCHS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    uid: str
    model: str
    backend: str
    vendor: str
    vram_estimate_mib: int
    gpu_count: int
    jit_policy: str
    preferred_archs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., uid: _Optional[str] = ..., model: _Optional[str] = ..., backend: _Optional[str] = ..., vendor: _Optional[str] = ..., vram_estimate_mib: _Optional[int] = ..., gpu_count: _Optional[int] = ..., jit_policy: _Optional[str] = ..., preferred_archs: _Optional[_Iterable[str]] = ...) -> None: ...

class PodSource(_message.Message):
    __slots__ = ("pod_json", "requirements")
    POD_JSON_FIELD_NUMBER: _ClassVar[int]
    REQUIREMENTS_FIELD_NUMBER: _ClassVar[int]
    pod_json: bytes
    requirements: PodRequirements
    def __init__(self, pod_json: _Optional[bytes] = ..., requirements: _Optional[_Union[PodRequirements, _Mapping]] = ...) -> None: ...

class FilterRequest(_message.Message):
    __slots__ = ("pod", "node_names")
    POD_FIELD_NUMBER: _ClassVar[int]
    NODE_NAMES_FIELD_NUMBER: _ClassVar[int]
    pod: PodSource
    node_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, pod: _Optional[_Union[PodSource, _Mapping]] = ..., node_names: _Optional[_Iterable[str]] = ...) -> None: ...

class FilterResponse(_message.Message):
    __slots__ = ("node_names", "failed_nodes", "failed_and_unresolvable_nodes", "error")
    class FailedNodesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class FailedAndUnresolvableNodesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_NAMES_FIELD_NUMBER: _ClassVar[int]
    FAILED_NODES_FIELD_NUMBER: _ClassVar[int]
    FAILED_AND_UNRESOLVABLE_NODES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    node_names: _containers.RepeatedScalarFieldContainer[str]
    failed_nodes: _containers.ScalarMap[str, str]
    failed_and_unresolvable_nodes: _containers.ScalarMap[str, str]
    error: str
    def __init__(self, node_names: _Optional[_Iterable[str]] = ..., failed_nodes: _Optional[_Mapping[str, str]] = ..., failed_and_unresolvable_nodes: _Optional[_Mapping[str, str]] = ..., error: _Optional[str] = ...) -> None: ...

class PrioritizeRequest(_message.Message):
    __slots__ = ("pod", "node_names")
    POD_FIELD_NUMBER: _ClassVar[int]
    NODE_NAMES_FIELD_NUMBER: _ClassVar[int]
    pod: PodSource
    node_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, pod: _Optional[_Union[PodSource, _Mapping]] = ..., node_names: _Optional[_Iterable[str]] = ...) -> None: ...

class HostPriority(_message.Message):
    __slots__ = ("host", "score")
    HOST_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    host: str
    score: int
    def __init__(self, host: _Optional[str] = ..., score: _Optional[int] = ...) -> None: ...

class PrioritizeResponse(_message.Message):
    __slots__ = ("priorities", "error")
    PRIORITIES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    priorities: _containers.RepeatedCompositeFieldContainer[HostPriority]
    error: str
    def __init__(self, priorities: _Optional[_Iterable[_Union[HostPriority, _Mapping]]] = ..., error: _Optional[str] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("pod", "node_names")
    POD_FIELD_NUMBER: _ClassVar[int]
    NODE_NAMES_FIELD_NUMBER: _ClassVar[int]
    pod: PodSource
    node_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, pod: _Optional[_Union[PodSource, _Mapping]] = ..., node_names: _Optional[_Iterable[str]] = ...) -> None: ...

class NodeVerdict(_message.Message):
    __slots__ = ("node", "feasible", "unresolvable", "reason", "detail", "score", "gpu")
    NODE_FIELD_NUMBER: _ClassVar[int]
    FEASIBLE_FIELD_NUMBER: _ClassVar[int]
    UNRESOLVABLE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    GPU_FIELD_NUMBER: _ClassVar[int]
    node: str
    feasible: bool
    unresolvable: bool
    reason: str
    detail: str
    score: int
    gpu: str
    def __init__(self, node: _Optional[str] = ..., feasible: _Optional[bool] = ..., unresolvable: _Optional[bool] = ..., reason: _Optional[str] = ..., detail: _Optional[str] = ..., score: _Optional[int] = ..., gpu: _Optional[str] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("requirements", "verdicts", "error")
    REQUIREMENTS_FIELD_NUMBER: _ClassVar[int]
    VERDICTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    requirements: PodRequirements
    verdicts: _containers.RepeatedCompositeFieldContainer[NodeVerdict]
    error: str
    def __init__(self, requirements: _Optional[_Union[PodRequirements, _Mapping]] = ..., verdicts: _Optional[_Iterable[_Union[NodeVerdict, _Mapping]]] = ..., error: _Optional[str] = ...) -> None: ...
