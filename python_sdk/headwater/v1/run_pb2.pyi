import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from headwater.v1 import payload_pb2 as _payload_pb2
from headwater.v1 import state_pb2 as _state_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FlowRun(_message.Message):
    __slots__ = ("id", "flow_name", "flow_version", "parameters", "state", "history", "created_at", "started_at", "ended_at", "idempotency_key", "result", "failed_task_ids", "trace_context", "schedule_id")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _payload_pb2.Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_payload_pb2.Value, _Mapping]] = ...) -> None: ...
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    FLOW_NAME_FIELD_NUMBER: _ClassVar[int]
    FLOW_VERSION_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    FAILED_TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    flow_name: str
    flow_version: str
    parameters: _containers.MessageMap[str, _payload_pb2.Value]
    state: _state_pb2.FlowRunState
    history: _containers.RepeatedCompositeFieldContainer[_state_pb2.FlowRunStateEntry]
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    ended_at: _timestamp_pb2.Timestamp
    idempotency_key: str
    result: _payload_pb2.Value
    failed_task_ids: _containers.RepeatedScalarFieldContainer[str]
    trace_context: _containers.ScalarMap[str, str]
    schedule_id: str
    def __init__(self, id: _Optional[str] = ..., flow_name: _Optional[str] = ..., flow_version: _Optional[str] = ..., parameters: _Optional[_Mapping[str, _payload_pb2.Value]] = ..., state: _Optional[_Union[_state_pb2.FlowRunState, str]] = ..., history: _Optional[_Iterable[_Union[_state_pb2.FlowRunStateEntry, _Mapping]]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ended_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., idempotency_key: _Optional[str] = ..., result: _Optional[_Union[_payload_pb2.Value, _Mapping]] = ..., failed_task_ids: _Optional[_Iterable[str]] = ..., trace_context: _Optional[_Mapping[str, str]] = ..., schedule_id: _Optional[str] = ...) -> None: ...

class TaskRun(_message.Message):
    __slots__ = ("id", "flow_run_id", "task_id", "name", "map_index", "parent_task_run_id", "state", "history", "attempts", "worker_id", "cache_key")
    ID_FIELD_NUMBER: _ClassVar[int]
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MAP_INDEX_FIELD_NUMBER: _ClassVar[int]
    PARENT_TASK_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    CACHE_KEY_FIELD_NUMBER: _ClassVar[int]
    id: str
    flow_run_id: str
    task_id: str
    name: str
    map_index: int
    parent_task_run_id: str
    state: _state_pb2.TaskRunState
    history: _containers.RepeatedCompositeFieldContainer[_state_pb2.TaskRunStateEntry]
    attempts: int
    worker_id: str
    cache_key: str
    def __init__(self, id: _Optional[str] = ..., flow_run_id: _Optional[str] = ..., task_id: _Optional[str] = ..., name: _Optional[str] = ..., map_index: _Optional[int] = ..., parent_task_run_id: _Optional[str] = ..., state: _Optional[_Union[_state_pb2.TaskRunState, str]] = ..., history: _Optional[_Iterable[_Union[_state_pb2.TaskRunStateEntry, _Mapping]]] = ..., attempts: _Optional[int] = ..., worker_id: _Optional[str] = ..., cache_key: _Optional[str] = ...) -> None: ...

class Schedule(_message.Message):
    __slots__ = ("id", "flow_name", "flow_version", "interval", "cron", "parameters", "enabled", "next_run_at", "timezone", "catchup", "created_at")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _payload_pb2.Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_payload_pb2.Value, _Mapping]] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    FLOW_NAME_FIELD_NUMBER: _ClassVar[int]
    FLOW_VERSION_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    CRON_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    NEXT_RUN_AT_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    CATCHUP_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    flow_name: str
    flow_version: str
    interval: _duration_pb2.Duration
    cron: str
    parameters: _containers.MessageMap[str, _payload_pb2.Value]
    enabled: bool
    next_run_at: _timestamp_pb2.Timestamp
    timezone: str
    catchup: bool
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., flow_name: _Optional[str] = ..., flow_version: _Optional[str] = ..., interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., cron: _Optional[str] = ..., parameters: _Optional[_Mapping[str, _payload_pb2.Value]] = ..., enabled: _Optional[bool] = ..., next_run_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., timezone: _Optional[str] = ..., catchup: _Optional[bool] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class LogEntry(_message.Message):
    __slots__ = ("task_run_id", "attempt", "timestamp", "level", "logger", "message")
    TASK_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    LOGGER_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    task_run_id: str
    attempt: int
    timestamp: _timestamp_pb2.Timestamp
    level: str
    logger: str
    message: str
    def __init__(self, task_run_id: _Optional[str] = ..., attempt: _Optional[int] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., level: _Optional[str] = ..., logger: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...
