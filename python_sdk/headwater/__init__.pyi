# The public API of the Headwater SDK (one list: read by type checkers, and parsed at
# run time by headwater.wire.lazy.attach_stub to import each name on first use).
from headwater.wire import EncodingError as EncodingError
from headwater.wire import FailureInfo as FailureInfo
from headwater.wire import FlowRunState as FlowRunState
from headwater.wire import GraphError as GraphError
from headwater.wire import ParameterError as ParameterError
from headwater.wire import TaskRunState as TaskRunState
from headwater.wire import Trigger as Trigger
from headwater_runtime.dask import DaskExecutor as DaskExecutor
from headwater_runtime.embedded import ResultCache as ResultCache
from headwater_runtime.embedded import ThreadExecutor as ThreadExecutor
from headwater_runtime.engine import AttemptRecord as AttemptRecord
from headwater_runtime.engine import StateEntry as StateEntry
from headwater_runtime.engine import TaskRunRecord as TaskRunRecord
from headwater_runtime.execution import Skip as Skip
from headwater_runtime.execution import TaskInterrupted as TaskInterrupted

from ._access_info import AuditEntry as AuditEntry
from ._access_info import CredentialInfo as CredentialInfo
from ._client import Client as Client
from ._client import RemoteFlowRun as RemoteFlowRun
from ._client import ServerError as ServerError
from ._client import TaskRunInfo as TaskRunInfo
from ._client import ValueInfo as ValueInfo
from ._client import WaitingInfo as WaitingInfo
from ._client_ops import LimitInfo as LimitInfo
from ._client_ops import WebhookInfo as WebhookInfo
from ._client_ops import WorkerInfo as WorkerInfo
from ._compiler import case as case
from ._compiler import merge as merge
from ._errors import FlowDefinitionError as FlowDefinitionError
from ._flow import Flow as Flow
from ._flow import flow as flow
from ._logs import LogEntry as LogEntry
from ._refs import TaskRef as TaskRef
from ._refs import unmapped as unmapped
from ._remote import RemoteTask as RemoteTask
from ._remote import remote_task as remote_task
from ._run import FlowRun as FlowRun
from ._schedule_info import ScheduleInfo as ScheduleInfo
from ._signals import FlowRunCancelled as FlowRunCancelled
from ._signals import FlowRunFailed as FlowRunFailed
from ._signals import FlowRunInterrupted as FlowRunInterrupted
from ._task import Task as Task
from ._task import task as task

__version__: str
