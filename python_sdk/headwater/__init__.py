"""Headwater: write flows as Python functions, run them embedded or on a server.

from headwater import flow, task

@task(retries=2)
def double(x: int) -> int:
    return 2 * x

@flow
def pipeline(n: int = 3) -> list[int]:
    return double.map(range(n))

pipeline()          # runs in-process, returns [0, 2, 4]
pipeline.run()      # returns a FlowRun with per-task states
pipeline.compile()  # the FlowGraph message sent to a server
"""

from typing import TYPE_CHECKING, Any

from headwater_runtime.embedded import ResultCache, ThreadExecutor
from headwater_runtime.engine import (
    AttemptRecord,
    FailureInfo,
    FlowRunState,
    StateEntry,
    TaskRunRecord,
    TaskRunState,
    Trigger,
)
from headwater_runtime.execution import Skip

from ._client import Client, RemoteFlowRun, ServerError, TaskRunInfo
from ._compiler import case, merge
from ._errors import FlowDefinitionError, GraphError, ParameterError
from ._flow import Flow, flow
from ._payloads import EncodingError
from ._refs import TaskRef, unmapped
from ._remote import RemoteTask, remote_task
from ._run import FlowRun
from ._schedule_info import ScheduleInfo
from ._signals import FlowRunCancelled, FlowRunFailed
from ._task import Task, task

if TYPE_CHECKING:
    from headwater_runtime.dask import DaskExecutor

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # DaskExecutor imports dask.distributed (~1 s): only when it is asked for, so
    # `import headwater`, the CLI and workers stay fast.
    if name == "DaskExecutor":
        from headwater_runtime.dask import DaskExecutor

        return DaskExecutor
    raise AttributeError(f"module 'headwater' has no attribute {name!r}")


__all__ = [
    "AttemptRecord",
    "Client",
    "DaskExecutor",
    "EncodingError",
    "FailureInfo",
    "Flow",
    "FlowDefinitionError",
    "FlowRun",
    "FlowRunCancelled",
    "FlowRunFailed",
    "FlowRunState",
    "GraphError",
    "ParameterError",
    "RemoteFlowRun",
    "RemoteTask",
    "ResultCache",
    "ScheduleInfo",
    "ServerError",
    "Skip",
    "StateEntry",
    "Task",
    "TaskRef",
    "TaskRunInfo",
    "TaskRunRecord",
    "TaskRunState",
    "ThreadExecutor",
    "Trigger",
    "__version__",
    "case",
    "flow",
    "merge",
    "remote_task",
    "task",
    "unmapped",
]
