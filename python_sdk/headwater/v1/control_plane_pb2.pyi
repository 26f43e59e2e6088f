from headwater.v1 import graph_pb2 as _graph_pb2
from headwater.v1 import payload_pb2 as _payload_pb2
from headwater.v1 import run_pb2 as _run_pb2
from headwater.v1 import state_pb2 as _state_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterFlowRequest(_message.Message):
    __slots__ = ("graph",)
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    graph: _graph_pb2.FlowGraph
    def __init__(self, graph: _Optional[_Union[_graph_pb2.FlowGraph, _Mapping]] = ...) -> None: ...

class RegisterFlowResponse(_message.Message):
    __slots__ = ("name", "version", "created")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    created: bool
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., created: _Optional[bool] = ...) -> None: ...

class GetFlowRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class GetFlowResponse(_message.Message):
    __slots__ = ("graph",)
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    graph: _graph_pb2.FlowGraph
    def __init__(self, graph: _Optional[_Union[_graph_pb2.FlowGraph, _Mapping]] = ...) -> None: ...

class ListFlowsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FlowSummary(_message.Message):
    __slots__ = ("name", "versions", "value_dependent_graphs")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    VALUE_DEPENDENT_GRAPHS_FIELD_NUMBER: _ClassVar[int]
    name: str
    versions: _containers.RepeatedScalarFieldContainer[str]
    value_dependent_graphs: int
    def __init__(self, name: _Optional[str] = ..., versions: _Optional[_Iterable[str]] = ..., value_dependent_graphs: _Optional[int] = ...) -> None: ...

class ListFlowsResponse(_message.Message):
    __slots__ = ("flows",)
    FLOWS_FIELD_NUMBER: _ClassVar[int]
    flows: _containers.RepeatedCompositeFieldContainer[FlowSummary]
    def __init__(self, flows: _Optional[_Iterable[_Union[FlowSummary, _Mapping]]] = ...) -> None: ...

class CreateFlowRunRequest(_message.Message):
    __slots__ = ("flow_name", "flow_version", "parameters", "idempotency_key", "trace_context")
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
    FLOW_NAME_FIELD_NUMBER: _ClassVar[int]
    FLOW_VERSION_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    flow_name: str
    flow_version: str
    parameters: _containers.MessageMap[str, _payload_pb2.Value]
    idempotency_key: str
    trace_context: _containers.ScalarMap[str, str]
    def __init__(self, flow_name: _Optional[str] = ..., flow_version: _Optional[str] = ..., parameters: _Optional[_Mapping[str, _payload_pb2.Value]] = ..., idempotency_key: _Optional[str] = ..., trace_context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CreateFlowRunResponse(_message.Message):
    __slots__ = ("flow_run", "created")
    FLOW_RUN_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    flow_run: _run_pb2.FlowRun
    created: bool
    def __init__(self, flow_run: _Optional[_Union[_run_pb2.FlowRun, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetFlowRunRequest(_message.Message):
    __slots__ = ("id", "include_task_runs")
    ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_TASK_RUNS_FIELD_NUMBER: _ClassVar[int]
    id: str
    include_task_runs: bool
    def __init__(self, id: _Optional[str] = ..., include_task_runs: _Optional[bool] = ...) -> None: ...

class GetFlowRunResponse(_message.Message):
    __slots__ = ("flow_run", "task_runs")
    FLOW_RUN_FIELD_NUMBER: _ClassVar[int]
    TASK_RUNS_FIELD_NUMBER: _ClassVar[int]
    flow_run: _run_pb2.FlowRun
    task_runs: _containers.RepeatedCompositeFieldContainer[_run_pb2.TaskRun]
    def __init__(self, flow_run: _Optional[_Union[_run_pb2.FlowRun, _Mapping]] = ..., task_runs: _Optional[_Iterable[_Union[_run_pb2.TaskRun, _Mapping]]] = ...) -> None: ...

class ListFlowRunsRequest(_message.Message):
    __slots__ = ("flow_name", "states", "page_size", "page_token")
    FLOW_NAME_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    flow_name: str
    states: _containers.RepeatedScalarFieldContainer[_state_pb2.FlowRunState]
    page_size: int
    page_token: str
    def __init__(self, flow_name: _Optional[str] = ..., states: _Optional[_Iterable[_Union[_state_pb2.FlowRunState, str]]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListFlowRunsResponse(_message.Message):
    __slots__ = ("flow_runs", "next_page_token")
    FLOW_RUNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    flow_runs: _containers.RepeatedCompositeFieldContainer[_run_pb2.FlowRun]
    next_page_token: str
    def __init__(self, flow_runs: _Optional[_Iterable[_Union[_run_pb2.FlowRun, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchFlowRunRequest(_message.Message):
    __slots__ = ("id", "flow_run_only")
    ID_FIELD_NUMBER: _ClassVar[int]
    FLOW_RUN_ONLY_FIELD_NUMBER: _ClassVar[int]
    id: str
    flow_run_only: bool
    def __init__(self, id: _Optional[str] = ..., flow_run_only: _Optional[bool] = ...) -> None: ...

class WatchFlowRunResponse(_message.Message):
    __slots__ = ("flow_run", "task_run")
    FLOW_RUN_FIELD_NUMBER: _ClassVar[int]
    TASK_RUN_FIELD_NUMBER: _ClassVar[int]
    flow_run: _run_pb2.FlowRun
    task_run: _run_pb2.TaskRun
    def __init__(self, flow_run: _Optional[_Union[_run_pb2.FlowRun, _Mapping]] = ..., task_run: _Optional[_Union[_run_pb2.TaskRun, _Mapping]] = ...) -> None: ...

class CancelFlowRunRequest(_message.Message):
    __slots__ = ("id", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    reason: str
    def __init__(self, id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CancelFlowRunResponse(_message.Message):
    __slots__ = ("flow_run",)
    FLOW_RUN_FIELD_NUMBER: _ClassVar[int]
    flow_run: _run_pb2.FlowRun
    def __init__(self, flow_run: _Optional[_Union[_run_pb2.FlowRun, _Mapping]] = ...) -> None: ...

class GetTaskRunResultRequest(_message.Message):
    __slots__ = ("flow_run_id", "task_id", "map_index")
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    MAP_INDEX_FIELD_NUMBER: _ClassVar[int]
    flow_run_id: str
    task_id: str
    map_index: int
    def __init__(self, flow_run_id: _Optional[str] = ..., task_id: _Optional[str] = ..., map_index: _Optional[int] = ...) -> None: ...

class GetTaskRunResultResponse(_message.Message):
    __slots__ = ("result", "state")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    result: _payload_pb2.Value
    state: _state_pb2.TaskRunState
    def __init__(self, result: _Optional[_Union[_payload_pb2.Value, _Mapping]] = ..., state: _Optional[_Union[_state_pb2.TaskRunState, str]] = ...) -> None: ...

class ListTaskRunLogsRequest(_message.Message):
    __slots__ = ("flow_run_id", "task_run_id")
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    flow_run_id: str
    task_run_id: str
    def __init__(self, flow_run_id: _Optional[str] = ..., task_run_id: _Optional[str] = ...) -> None: ...

class ListTaskRunLogsResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[_run_pb2.LogEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[_run_pb2.LogEntry, _Mapping]]] = ...) -> None: ...

class CreateScheduleRequest(_message.Message):
    __slots__ = ("schedule",)
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    schedule: _run_pb2.Schedule
    def __init__(self, schedule: _Optional[_Union[_run_pb2.Schedule, _Mapping]] = ...) -> None: ...

class CreateScheduleResponse(_message.Message):
    __slots__ = ("schedule",)
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    schedule: _run_pb2.Schedule
    def __init__(self, schedule: _Optional[_Union[_run_pb2.Schedule, _Mapping]] = ...) -> None: ...

class ListSchedulesRequest(_message.Message):
    __slots__ = ("flow_name",)
    FLOW_NAME_FIELD_NUMBER: _ClassVar[int]
    flow_name: str
    def __init__(self, flow_name: _Optional[str] = ...) -> None: ...

class ListSchedulesResponse(_message.Message):
    __slots__ = ("schedules",)
    SCHEDULES_FIELD_NUMBER: _ClassVar[int]
    schedules: _containers.RepeatedCompositeFieldContainer[_run_pb2.Schedule]
    def __init__(self, schedules: _Optional[_Iterable[_Union[_run_pb2.Schedule, _Mapping]]] = ...) -> None: ...

class DeleteScheduleRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DeleteScheduleResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PauseScheduleRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class PauseScheduleResponse(_message.Message):
    __slots__ = ("schedule",)
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    schedule: _run_pb2.Schedule
    def __init__(self, schedule: _Optional[_Union[_run_pb2.Schedule, _Mapping]] = ...) -> None: ...

class ResumeScheduleRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ResumeScheduleResponse(_message.Message):
    __slots__ = ("schedule",)
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    schedule: _run_pb2.Schedule
    def __init__(self, schedule: _Optional[_Union[_run_pb2.Schedule, _Mapping]] = ...) -> None: ...

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetServerInfoResponse(_message.Message):
    __slots__ = ("server_version", "protocol_version", "features")
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    server_version: str
    protocol_version: int
    features: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, server_version: _Optional[str] = ..., protocol_version: _Optional[int] = ..., features: _Optional[_Iterable[str]] = ...) -> None: ...
