import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from headwater.v1 import payload_pb2 as _payload_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskRunState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_RUN_STATE_UNSPECIFIED: _ClassVar[TaskRunState]
    TASK_RUN_STATE_PENDING: _ClassVar[TaskRunState]
    TASK_RUN_STATE_SCHEDULED: _ClassVar[TaskRunState]
    TASK_RUN_STATE_RUNNING: _ClassVar[TaskRunState]
    TASK_RUN_STATE_RETRYING: _ClassVar[TaskRunState]
    TASK_RUN_STATE_SUCCESS: _ClassVar[TaskRunState]
    TASK_RUN_STATE_FAILED: _ClassVar[TaskRunState]
    TASK_RUN_STATE_TIMED_OUT: _ClassVar[TaskRunState]
    TASK_RUN_STATE_CANCELLED: _ClassVar[TaskRunState]
    TASK_RUN_STATE_SKIPPED: _ClassVar[TaskRunState]
    TASK_RUN_STATE_CACHED: _ClassVar[TaskRunState]
    TASK_RUN_STATE_TRIGGER_FAILED: _ClassVar[TaskRunState]
    TASK_RUN_STATE_MAPPED: _ClassVar[TaskRunState]

class FlowRunState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FLOW_RUN_STATE_UNSPECIFIED: _ClassVar[FlowRunState]
    FLOW_RUN_STATE_PENDING: _ClassVar[FlowRunState]
    FLOW_RUN_STATE_SCHEDULED: _ClassVar[FlowRunState]
    FLOW_RUN_STATE_RUNNING: _ClassVar[FlowRunState]
    FLOW_RUN_STATE_SUCCESS: _ClassVar[FlowRunState]
    FLOW_RUN_STATE_FAILED: _ClassVar[FlowRunState]
    FLOW_RUN_STATE_CANCELLED: _ClassVar[FlowRunState]
TASK_RUN_STATE_UNSPECIFIED: TaskRunState
TASK_RUN_STATE_PENDING: TaskRunState
TASK_RUN_STATE_SCHEDULED: TaskRunState
TASK_RUN_STATE_RUNNING: TaskRunState
TASK_RUN_STATE_RETRYING: TaskRunState
TASK_RUN_STATE_SUCCESS: TaskRunState
TASK_RUN_STATE_FAILED: TaskRunState
TASK_RUN_STATE_TIMED_OUT: TaskRunState
TASK_RUN_STATE_CANCELLED: TaskRunState
TASK_RUN_STATE_SKIPPED: TaskRunState
TASK_RUN_STATE_CACHED: TaskRunState
TASK_RUN_STATE_TRIGGER_FAILED: TaskRunState
TASK_RUN_STATE_MAPPED: TaskRunState
FLOW_RUN_STATE_UNSPECIFIED: FlowRunState
FLOW_RUN_STATE_PENDING: FlowRunState
FLOW_RUN_STATE_SCHEDULED: FlowRunState
FLOW_RUN_STATE_RUNNING: FlowRunState
FLOW_RUN_STATE_SUCCESS: FlowRunState
FLOW_RUN_STATE_FAILED: FlowRunState
FLOW_RUN_STATE_CANCELLED: FlowRunState

class Failure(_message.Message):
    __slots__ = ("type", "message", "stack_trace", "cause", "retryable", "language")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STACK_TRACE_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    type: str
    message: str
    stack_trace: str
    cause: Failure
    retryable: bool
    language: str
    def __init__(self, type: _Optional[str] = ..., message: _Optional[str] = ..., stack_trace: _Optional[str] = ..., cause: _Optional[_Union[Failure, _Mapping]] = ..., retryable: _Optional[bool] = ..., language: _Optional[str] = ...) -> None: ...

class TaskRunStateEntry(_message.Message):
    __slots__ = ("state", "timestamp", "message", "attempt", "result", "failure")
    STATE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    state: TaskRunState
    timestamp: _timestamp_pb2.Timestamp
    message: str
    attempt: int
    result: _payload_pb2.Value
    failure: Failure
    def __init__(self, state: _Optional[_Union[TaskRunState, str]] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., message: _Optional[str] = ..., attempt: _Optional[int] = ..., result: _Optional[_Union[_payload_pb2.Value, _Mapping]] = ..., failure: _Optional[_Union[Failure, _Mapping]] = ...) -> None: ...

class FlowRunStateEntry(_message.Message):
    __slots__ = ("state", "timestamp", "message")
    STATE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    state: FlowRunState
    timestamp: _timestamp_pb2.Timestamp
    message: str
    def __init__(self, state: _Optional[_Union[FlowRunState, str]] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...
