from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GpuState(_message.Message):
    __slots__ = ("index", "uuid", "vendor", "arch", "family", "product", "total_mib", "free_mib", "healthy", "reason", "error_events", "last_error_unix", "unified_memory", "power_watts", "power_limit_watts", "temperature_celsius", "utilization_ratio")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    VENDOR_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MIB_FIELD_NUMBER: _ClassVar[int]
    FREE_MIB_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_EVENTS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_UNIX_FIELD_NUMBER: _ClassVar[int]
    UNIFIED_MEMORY_FIELD_NUMBER: _ClassVar[int]
    POWER_WATTS_FIELD_NUMBER: _ClassVar[int]
    POWER_LIMIT_WATTS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_CELSIUS_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_RATIO_FIELD_NUMBER: _ClassVar[int]
    index: int
    uuid: str
    vendor: str
    arch: str
    family: str
    product: str
    total_mib: int
    free_mib: int
    healthy: bool
    reason: str
    error_events: int
    last_error_unix: float
    unified_memory: bool
    power_watts: float
    power_limit_watts: float
    temperature_celsius: float
    utilization_ratio: float
    def __init__(self, index: _Optional[int] = ..., uuid: _Optional[str] = ..., vendor: _Optional[str] = ..., arch: _Optional[str] = ..., family: _Optional[str] = ..., product: _Optional[str] = ..., total_mib: _Optional[int] = ..., free_mib: _Optional[int] = ..., healthy: _Optional[bool] = ..., reason: _Optional[str] = ..., error_events: _Optional[int] = ..., last_error_unix: _Optional[float] = ..., unified_memory: _Optional[bool] = ..., power_watts: _Optional[float] = ..., power_limit_watts: _Optional[float] = ..., temperature_celsius: _Optional[float] = ..., utilization_ratio: _Optional[float] = ...) -> None: ...

class NodeGpuState(_message.Message):
    __slots__ = ("node", "gpus", "observed_unix", "agent_status", "labels", "annotations")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class AnnotationsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_UNIX_FIELD_NUMBER: _ClassVar[int]
    AGENT_STATUS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ANNOTATIONS_FIELD_NUMBER: _ClassVar[int]
    node: str
    gpus: _containers.RepeatedCompositeFieldContainer[GpuState]
    observed_unix: float
    agent_status: str
    labels: _containers.ScalarMap[str, str]
    annotations: _containers.ScalarMap[str, str]
    def __init__(self, node: _Optional[str] = ..., gpus: _Optional[_Iterable[_Union[GpuState, _Mapping]]] = ..., observed_unix: _Optional[float] = ..., agent_status: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., annotations: _Optional[_Mapping[str, str]] = ...) -> None: ...
