import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from headwater.v1 import payload_pb2 as _payload_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Trigger(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRIGGER_UNSPECIFIED: _ClassVar[Trigger]
    TRIGGER_ALL_SUCCESSFUL: _ClassVar[Trigger]
    TRIGGER_ALL_FINISHED: _ClassVar[Trigger]
    TRIGGER_ALL_FAILED: _ClassVar[Trigger]
    TRIGGER_ANY_SUCCESSFUL: _ClassVar[Trigger]
    TRIGGER_ANY_FAILED: _ClassVar[Trigger]
    TRIGGER_NONE_FAILED: _ClassVar[Trigger]

class CacheKeySource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CACHE_KEY_SOURCE_UNSPECIFIED: _ClassVar[CacheKeySource]
    CACHE_KEY_SOURCE_INPUTS: _ClassVar[CacheKeySource]
    CACHE_KEY_SOURCE_FUNCTION: _ClassVar[CacheKeySource]
TRIGGER_UNSPECIFIED: Trigger
TRIGGER_ALL_SUCCESSFUL: Trigger
TRIGGER_ALL_FINISHED: Trigger
TRIGGER_ALL_FAILED: Trigger
TRIGGER_ANY_SUCCESSFUL: Trigger
TRIGGER_ANY_FAILED: Trigger
TRIGGER_NONE_FAILED: Trigger
CACHE_KEY_SOURCE_UNSPECIFIED: CacheKeySource
CACHE_KEY_SOURCE_INPUTS: CacheKeySource
CACHE_KEY_SOURCE_FUNCTION: CacheKeySource

class FlowGraph(_message.Message):
    __slots__ = ("name", "version", "parameters", "tasks", "result", "reference_task_ids", "description", "value_dependent", "parameters_digest")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    VALUE_DEPENDENT_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    parameters: _containers.RepeatedCompositeFieldContainer[ParameterSpec]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskNode]
    result: Input
    reference_task_ids: _containers.RepeatedScalarFieldContainer[str]
    description: str
    value_dependent: bool
    parameters_digest: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., parameters: _Optional[_Iterable[_Union[ParameterSpec, _Mapping]]] = ..., tasks: _Optional[_Iterable[_Union[TaskNode, _Mapping]]] = ..., result: _Optional[_Union[Input, _Mapping]] = ..., reference_task_ids: _Optional[_Iterable[str]] = ..., description: _Optional[str] = ..., value_dependent: _Optional[bool] = ..., parameters_digest: _Optional[str] = ...) -> None: ...

class ParameterSpec(_message.Message):
    __slots__ = ("name", "default_value", "required", "type", "json_schema")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VALUE_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    JSON_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    name: str
    default_value: _payload_pb2.Payload
    required: bool
    type: str
    json_schema: str
    def __init__(self, name: _Optional[str] = ..., default_value: _Optional[_Union[_payload_pb2.Payload, _Mapping]] = ..., required: _Optional[bool] = ..., type: _Optional[str] = ..., json_schema: _Optional[str] = ...) -> None: ...

class TaskNode(_message.Message):
    __slots__ = ("id", "name", "task_type", "inputs", "wait_for", "retry", "timeout", "trigger", "cache", "map", "tags", "required_labels", "resources", "version", "portable", "argument_order")
    class InputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Input
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Input, _Mapping]] = ...) -> None: ...
    class RequiredLabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ResourcesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    WAIT_FOR_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    MAP_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_LABELS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PORTABLE_FIELD_NUMBER: _ClassVar[int]
    ARGUMENT_ORDER_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    task_type: str
    inputs: _containers.MessageMap[str, Input]
    wait_for: _containers.RepeatedScalarFieldContainer[str]
    retry: RetryPolicy
    timeout: _duration_pb2.Duration
    trigger: Trigger
    cache: CachePolicy
    map: MapSpec
    tags: _containers.RepeatedScalarFieldContainer[str]
    required_labels: _containers.ScalarMap[str, str]
    resources: _containers.ScalarMap[str, float]
    version: str
    portable: bool
    argument_order: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., task_type: _Optional[str] = ..., inputs: _Optional[_Mapping[str, Input]] = ..., wait_for: _Optional[_Iterable[str]] = ..., retry: _Optional[_Union[RetryPolicy, _Mapping]] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., trigger: _Optional[_Union[Trigger, str]] = ..., cache: _Optional[_Union[CachePolicy, _Mapping]] = ..., map: _Optional[_Union[MapSpec, _Mapping]] = ..., tags: _Optional[_Iterable[str]] = ..., required_labels: _Optional[_Mapping[str, str]] = ..., resources: _Optional[_Mapping[str, float]] = ..., version: _Optional[str] = ..., portable: _Optional[bool] = ..., argument_order: _Optional[_Iterable[str]] = ...) -> None: ...

class Input(_message.Message):
    __slots__ = ("task_output", "constant", "parameter", "list", "map")
    TASK_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    CONSTANT_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_FIELD_NUMBER: _ClassVar[int]
    LIST_FIELD_NUMBER: _ClassVar[int]
    MAP_FIELD_NUMBER: _ClassVar[int]
    task_output: TaskOutput
    constant: _payload_pb2.Payload
    parameter: str
    list: InputList
    map: InputMap
    def __init__(self, task_output: _Optional[_Union[TaskOutput, _Mapping]] = ..., constant: _Optional[_Union[_payload_pb2.Payload, _Mapping]] = ..., parameter: _Optional[str] = ..., list: _Optional[_Union[InputList, _Mapping]] = ..., map: _Optional[_Union[InputMap, _Mapping]] = ...) -> None: ...

class TaskOutput(_message.Message):
    __slots__ = ("task_id", "path")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    path: _containers.RepeatedCompositeFieldContainer[_payload_pb2.PathElement]
    def __init__(self, task_id: _Optional[str] = ..., path: _Optional[_Iterable[_Union[_payload_pb2.PathElement, _Mapping]]] = ...) -> None: ...

class InputList(_message.Message):
    __slots__ = ("items", "tuple")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    TUPLE_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Input]
    tuple: bool
    def __init__(self, items: _Optional[_Iterable[_Union[Input, _Mapping]]] = ..., tuple: _Optional[bool] = ...) -> None: ...

class InputMap(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[InputMapEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[InputMapEntry, _Mapping]]] = ...) -> None: ...

class InputMapEntry(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: Input
    def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Input, _Mapping]] = ...) -> None: ...

class RetryPolicy(_message.Message):
    __slots__ = ("max_retries", "delay", "backoff_factor", "max_delay", "jitter", "non_retryable_errors")
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    DELAY_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_FACTOR_FIELD_NUMBER: _ClassVar[int]
    MAX_DELAY_FIELD_NUMBER: _ClassVar[int]
    JITTER_FIELD_NUMBER: _ClassVar[int]
    NON_RETRYABLE_ERRORS_FIELD_NUMBER: _ClassVar[int]
    max_retries: int
    delay: _duration_pb2.Duration
    backoff_factor: float
    max_delay: _duration_pb2.Duration
    jitter: float
    non_retryable_errors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, max_retries: _Optional[int] = ..., delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., backoff_factor: _Optional[float] = ..., max_delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., jitter: _Optional[float] = ..., non_retryable_errors: _Optional[_Iterable[str]] = ...) -> None: ...

class CachePolicy(_message.Message):
    __slots__ = ("key_source", "expiry", "version")
    KEY_SOURCE_FIELD_NUMBER: _ClassVar[int]
    EXPIRY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    key_source: CacheKeySource
    expiry: _duration_pb2.Duration
    version: str
    def __init__(self, key_source: _Optional[_Union[CacheKeySource, str]] = ..., expiry: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., version: _Optional[str] = ...) -> None: ...

class MapSpec(_message.Message):
    __slots__ = ("mapped_inputs",)
    MAPPED_INPUTS_FIELD_NUMBER: _ClassVar[int]
    mapped_inputs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, mapped_inputs: _Optional[_Iterable[str]] = ...) -> None: ...
