import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from headwater.v1 import graph_pb2 as _graph_pb2
from headwater.v1 import payload_pb2 as _payload_pb2
from headwater.v1 import state_pb2 as _state_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FencingToken(_message.Message):
    __slots__ = ("task_run_id", "attempt")
    TASK_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    task_run_id: str
    attempt: int
    def __init__(self, task_run_id: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class RuntimeInfo(_message.Message):
    __slots__ = ("language", "language_version", "sdk_version", "hostname", "pid")
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_VERSION_FIELD_NUMBER: _ClassVar[int]
    SDK_VERSION_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    language: str
    language_version: str
    sdk_version: str
    hostname: str
    pid: int
    def __init__(self, language: _Optional[str] = ..., language_version: _Optional[str] = ..., sdk_version: _Optional[str] = ..., hostname: _Optional[str] = ..., pid: _Optional[int] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("worker_id", "name", "protocol_version", "capabilities", "labels", "slots", "runtime", "running", "resources", "features")
    class LabelsEntry(_message.Message):
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
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    name: str
    protocol_version: int
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.ScalarMap[str, str]
    slots: int
    runtime: RuntimeInfo
    running: _containers.RepeatedCompositeFieldContainer[FencingToken]
    resources: _containers.ScalarMap[str, float]
    features: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, worker_id: _Optional[str] = ..., name: _Optional[str] = ..., protocol_version: _Optional[int] = ..., capabilities: _Optional[_Iterable[str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., slots: _Optional[int] = ..., runtime: _Optional[_Union[RuntimeInfo, _Mapping]] = ..., running: _Optional[_Iterable[_Union[FencingToken, _Mapping]]] = ..., resources: _Optional[_Mapping[str, float]] = ..., features: _Optional[_Iterable[str]] = ...) -> None: ...

class TaskStarted(_message.Message):
    __slots__ = ("token", "started_at")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    token: FencingToken
    started_at: _timestamp_pb2.Timestamp
    def __init__(self, token: _Optional[_Union[FencingToken, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("used_slots", "free_slots", "running")
    USED_SLOTS_FIELD_NUMBER: _ClassVar[int]
    FREE_SLOTS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    used_slots: int
    free_slots: int
    running: _containers.RepeatedCompositeFieldContainer[FencingToken]
    def __init__(self, used_slots: _Optional[int] = ..., free_slots: _Optional[int] = ..., running: _Optional[_Iterable[_Union[FencingToken, _Mapping]]] = ...) -> None: ...

class TaskLog(_message.Message):
    __slots__ = ("token", "timestamp", "level", "logger", "message")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    LOGGER_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    token: FencingToken
    timestamp: _timestamp_pb2.Timestamp
    level: str
    logger: str
    message: str
    def __init__(self, token: _Optional[_Union[FencingToken, _Mapping]] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., level: _Optional[str] = ..., logger: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class TaskResult(_message.Message):
    __slots__ = ("token", "result", "cache_key")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    CACHE_KEY_FIELD_NUMBER: _ClassVar[int]
    token: FencingToken
    result: _payload_pb2.Value
    cache_key: str
    def __init__(self, token: _Optional[_Union[FencingToken, _Mapping]] = ..., result: _Optional[_Union[_payload_pb2.Value, _Mapping]] = ..., cache_key: _Optional[str] = ...) -> None: ...

class TaskFailure(_message.Message):
    __slots__ = ("token", "failure", "timed_out")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    TIMED_OUT_FIELD_NUMBER: _ClassVar[int]
    token: FencingToken
    failure: _state_pb2.Failure
    timed_out: bool
    def __init__(self, token: _Optional[_Union[FencingToken, _Mapping]] = ..., failure: _Optional[_Union[_state_pb2.Failure, _Mapping]] = ..., timed_out: _Optional[bool] = ...) -> None: ...

class TaskSkipped(_message.Message):
    __slots__ = ("token", "reason")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    token: FencingToken
    reason: str
    def __init__(self, token: _Optional[_Union[FencingToken, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class TaskCancelled(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: FencingToken
    def __init__(self, token: _Optional[_Union[FencingToken, _Mapping]] = ...) -> None: ...

class CacheKeyReport(_message.Message):
    __slots__ = ("token", "cache_key")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    CACHE_KEY_FIELD_NUMBER: _ClassVar[int]
    token: FencingToken
    cache_key: str
    def __init__(self, token: _Optional[_Union[FencingToken, _Mapping]] = ..., cache_key: _Optional[str] = ...) -> None: ...

class ConnectRequest(_message.Message):
    __slots__ = ("hello", "started", "heartbeat", "log", "result", "failure", "skipped", "cancelled", "cache_key", "value_exported", "batch")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    CACHE_KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_EXPORTED_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    started: TaskStarted
    heartbeat: Heartbeat
    log: TaskLog
    result: TaskResult
    failure: TaskFailure
    skipped: TaskSkipped
    cancelled: TaskCancelled
    cache_key: CacheKeyReport
    value_exported: ValueExported
    batch: ConnectRequestBatch
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., started: _Optional[_Union[TaskStarted, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., log: _Optional[_Union[TaskLog, _Mapping]] = ..., result: _Optional[_Union[TaskResult, _Mapping]] = ..., failure: _Optional[_Union[TaskFailure, _Mapping]] = ..., skipped: _Optional[_Union[TaskSkipped, _Mapping]] = ..., cancelled: _Optional[_Union[TaskCancelled, _Mapping]] = ..., cache_key: _Optional[_Union[CacheKeyReport, _Mapping]] = ..., value_exported: _Optional[_Union[ValueExported, _Mapping]] = ..., batch: _Optional[_Union[ConnectRequestBatch, _Mapping]] = ...) -> None: ...

class ConnectRequestBatch(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[ConnectRequest]
    def __init__(self, messages: _Optional[_Iterable[_Union[ConnectRequest, _Mapping]]] = ...) -> None: ...

class ValueExported(_message.Message):
    __slots__ = ("payload_id", "value", "error")
    PAYLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    payload_id: str
    value: _payload_pb2.Value
    error: _state_pb2.Failure
    def __init__(self, payload_id: _Optional[str] = ..., value: _Optional[_Union[_payload_pb2.Value, _Mapping]] = ..., error: _Optional[_Union[_state_pb2.Failure, _Mapping]] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("session_id", "server_version", "protocol_version", "features", "heartbeat_interval", "heartbeat_timeout", "inline_payload_limit", "keep_running")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    INLINE_PAYLOAD_LIMIT_FIELD_NUMBER: _ClassVar[int]
    KEEP_RUNNING_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    server_version: str
    protocol_version: int
    features: _containers.RepeatedScalarFieldContainer[str]
    heartbeat_interval: _duration_pb2.Duration
    heartbeat_timeout: _duration_pb2.Duration
    inline_payload_limit: int
    keep_running: _containers.RepeatedCompositeFieldContainer[FencingToken]
    def __init__(self, session_id: _Optional[str] = ..., server_version: _Optional[str] = ..., protocol_version: _Optional[int] = ..., features: _Optional[_Iterable[str]] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., heartbeat_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., inline_payload_limit: _Optional[int] = ..., keep_running: _Optional[_Iterable[_Union[FencingToken, _Mapping]]] = ...) -> None: ...

class InputValue(_message.Message):
    __slots__ = ("value", "list", "map", "path")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    LIST_FIELD_NUMBER: _ClassVar[int]
    MAP_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    value: _payload_pb2.Value
    list: InputValueList
    map: InputValueMap
    path: _containers.RepeatedCompositeFieldContainer[_payload_pb2.PathElement]
    def __init__(self, value: _Optional[_Union[_payload_pb2.Value, _Mapping]] = ..., list: _Optional[_Union[InputValueList, _Mapping]] = ..., map: _Optional[_Union[InputValueMap, _Mapping]] = ..., path: _Optional[_Iterable[_Union[_payload_pb2.PathElement, _Mapping]]] = ...) -> None: ...

class InputValueList(_message.Message):
    __slots__ = ("items", "tuple")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    TUPLE_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[InputValue]
    tuple: bool
    def __init__(self, items: _Optional[_Iterable[_Union[InputValue, _Mapping]]] = ..., tuple: _Optional[bool] = ...) -> None: ...

class InputValueMap(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[InputValueMapEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[InputValueMapEntry, _Mapping]]] = ...) -> None: ...

class InputValueMapEntry(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: InputValue
    def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[InputValue, _Mapping]] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("token", "flow_run_id", "task_id", "task_type", "task_name", "inputs", "argument_order", "map_index", "deadline", "timeout", "trace_context", "result_encoding", "split_result", "cache", "split_path", "result_consumer")
    class InputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: InputValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[InputValue, _Mapping]] = ...) -> None: ...
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    TASK_NAME_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    ARGUMENT_ORDER_FIELD_NUMBER: _ClassVar[int]
    MAP_INDEX_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    RESULT_ENCODING_FIELD_NUMBER: _ClassVar[int]
    SPLIT_RESULT_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    SPLIT_PATH_FIELD_NUMBER: _ClassVar[int]
    RESULT_CONSUMER_FIELD_NUMBER: _ClassVar[int]
    token: FencingToken
    flow_run_id: str
    task_id: str
    task_type: str
    task_name: str
    inputs: _containers.MessageMap[str, InputValue]
    argument_order: _containers.RepeatedScalarFieldContainer[str]
    map_index: int
    deadline: _timestamp_pb2.Timestamp
    timeout: _duration_pb2.Duration
    trace_context: _containers.ScalarMap[str, str]
    result_encoding: str
    split_result: bool
    cache: _graph_pb2.CachePolicy
    split_path: _containers.RepeatedCompositeFieldContainer[_payload_pb2.PathElement]
    result_consumer: str
    def __init__(self, token: _Optional[_Union[FencingToken, _Mapping]] = ..., flow_run_id: _Optional[str] = ..., task_id: _Optional[str] = ..., task_type: _Optional[str] = ..., task_name: _Optional[str] = ..., inputs: _Optional[_Mapping[str, InputValue]] = ..., argument_order: _Optional[_Iterable[str]] = ..., map_index: _Optional[int] = ..., deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., trace_context: _Optional[_Mapping[str, str]] = ..., result_encoding: _Optional[str] = ..., split_result: _Optional[bool] = ..., cache: _Optional[_Union[_graph_pb2.CachePolicy, _Mapping]] = ..., split_path: _Optional[_Iterable[_Union[_payload_pb2.PathElement, _Mapping]]] = ..., result_consumer: _Optional[str] = ...) -> None: ...

class CancelTaskRun(_message.Message):
    __slots__ = ("token", "reason")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    token: FencingToken
    reason: str
    def __init__(self, token: _Optional[_Union[FencingToken, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class HeartbeatAck(_message.Message):
    __slots__ = ("cancel",)
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    cancel: _containers.RepeatedCompositeFieldContainer[FencingToken]
    def __init__(self, cancel: _Optional[_Iterable[_Union[FencingToken, _Mapping]]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("token", "accepted", "reason", "code")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    token: FencingToken
    accepted: bool
    reason: str
    code: int
    def __init__(self, token: _Optional[_Union[FencingToken, _Mapping]] = ..., accepted: _Optional[bool] = ..., reason: _Optional[str] = ..., code: _Optional[int] = ...) -> None: ...

class CacheDecision(_message.Message):
    __slots__ = ("token", "hit")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    HIT_FIELD_NUMBER: _ClassVar[int]
    token: FencingToken
    hit: bool
    def __init__(self, token: _Optional[_Union[FencingToken, _Mapping]] = ..., hit: _Optional[bool] = ...) -> None: ...

class ConnectResponse(_message.Message):
    __slots__ = ("welcome", "assignment", "cancel", "heartbeat_ack", "ack", "cache_decision", "export_value", "batch")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_ACK_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    CACHE_DECISION_FIELD_NUMBER: _ClassVar[int]
    EXPORT_VALUE_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    assignment: Assignment
    cancel: CancelTaskRun
    heartbeat_ack: HeartbeatAck
    ack: Ack
    cache_decision: CacheDecision
    export_value: ExportValue
    batch: ConnectResponseBatch
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., assignment: _Optional[_Union[Assignment, _Mapping]] = ..., cancel: _Optional[_Union[CancelTaskRun, _Mapping]] = ..., heartbeat_ack: _Optional[_Union[HeartbeatAck, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., cache_decision: _Optional[_Union[CacheDecision, _Mapping]] = ..., export_value: _Optional[_Union[ExportValue, _Mapping]] = ..., batch: _Optional[_Union[ConnectResponseBatch, _Mapping]] = ...) -> None: ...

class ConnectResponseBatch(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[ConnectResponse]
    def __init__(self, messages: _Optional[_Iterable[_Union[ConnectResponse, _Mapping]]] = ...) -> None: ...

class ExportValue(_message.Message):
    __slots__ = ("payload_id",)
    PAYLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    payload_id: str
    def __init__(self, payload_id: _Optional[str] = ...) -> None: ...
