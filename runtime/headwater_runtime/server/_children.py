"""Child flow runs on the server: subflow nodes and flows that tasks start.

A child flow run names its parent run, the key of the parent's task run that stands
for it and that task run's attempt (``FlowRunRow.parent_*``). Two kinds:

- **subflow nodes** (``TaskSpec.subflow``): when the engine dispatches the node, the
  run manager hands a ``SubflowStart`` to the server core instead of a worker; the core
  creates the child (building its graph on a worker if it needs one) and reports the
  attempt started. When the child ends, its outcome is fed to the parent's engine in
  the same batch as the child's end (``subflow_outcome``), so retries, timeouts and
  triggers apply to the node as to a task, and a crash cannot separate the two.
- **run-time flows**: a task calls a flow while it runs; the worker creates the child
  with ``CreateFlowRun.parent_task_run_id`` and waits for it itself.

Either way, when the parent's attempt ends for any reason (cancelled, timed out,
failed, lost) while a child still runs, the child is cancelled.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from headwater.v1 import payload_pb2
from headwater.wire import (
    FailureInfo,
    FlowRunState,
    GraphSpec,
    Limits,
    result_split,
    split_child_key,
    split_task_run_id,
    task_run_id,
)
from headwater_runtime.engine import (
    FlowRunEngine,
    RunTask,
    TaskFailed,
    TaskRunRecord,
    TaskSucceeded,
    subflow_outcome,
)
from headwater_runtime.store import FlowRunRow
from headwater_runtime.tracing import inject

from ._limits import InvalidValue, LimitExceeded, check_value
from ._values import split_part, to_result_value

if TYPE_CHECKING:
    from headwater_runtime.tracing import RunTracer


class NotRunning(LookupError):
    """A run was to be started as the child of a task run attempt that is not running
    (FAILED_PRECONDITION)."""


@dataclass(frozen=True)
class SubflowStart:
    """A subflow node's attempt, to be started as a child flow run.

    Attributes:
        parent_id: the parent flow run.
        key: the subflow node's task run key in it.
        attempt: the attempt.
        flow_name: the child flow.
        flow_version: its pinned version ("" for the latest, or a build).
        parameters: the node's inputs as the child's parameters.
        trace_context: the W3C context the child's flow span is a child of (the
            node's attempt span when tracing).
    """

    parent_id: str
    key: str
    attempt: int
    flow_name: str
    flow_version: str
    parameters: dict[str, payload_pb2.Value]
    trace_context: dict[str, str] = field(default_factory=dict)

    @property
    def idempotency_key(self) -> str:
        """One child per attempt, however often the start is repeated (a restart)."""
        return f"subflow:{task_run_id(self.parent_id, self.key)}#{self.attempt}"


def subflow_start(parent: FlowRunRow, command: RunTask, trace: RunTracer | None) -> SubflowStart:
    """What starting the child of a dispatched subflow node needs."""
    run = command.run
    spec = run.spec.subflow
    assert spec is not None
    context = parent.trace_context
    if trace is not None:
        context = inject(trace.dispatched(run, command.attempt))
    return SubflowStart(
        parent_id=parent.id,
        key=run.key,
        attempt=command.attempt,
        flow_name=spec.flow_name,
        flow_version=spec.flow_version,
        parameters={
            # The child maps over these: with their elements (a split part as a list).
            name: to_result_value(split_part(v) if name in spec.mapped_parameters else v)
            for name, v in command.inputs.items()
        },
        trace_context=dict(context),
    )


def child_split_nodes(
    row: FlowRunRow,
    graph: GraphSpec,
    parent_graph: GraphSpec,
    parent_split: Mapping[str, tuple[str | int, ...]],
) -> dict[str, tuple[str | int, ...]]:
    """The tasks a child run (``row``, of ``graph``) has its workers split: its
    graph's, plus, when it is a subflow node's child and the parent maps over that
    node's result or a part of it (the node is in ``parent_split``, the parent run's
    own), the task its result comes from (``result_split``): the server maps over a
    value's elements without decoding it."""
    key = row.parent_task_key
    child = split_child_key(key) if key.endswith("]") else None
    node_id = child[0] if child else key
    path = parent_split.get(node_id)
    if path is None or not any(t.id == node_id and t.subflow for t in parent_graph.tasks):
        return graph.split_nodes()  # (a flow a task starts: the task's own result)
    return result_split(graph, path)


class ChildRuns:
    """Which running child flow runs belong to which parent task run attempts.

    ``waiting`` listeners hear when an attempt gets its first running child and when
    its last one ends, with the attempt's fencing token: a task that calls a flow
    waits for it, and its worker's slot is lent meanwhile (_dispatch.py).
    """

    def __init__(self) -> None:
        # (parent run id, task run key) -> {child run id: parent attempt}
        self._links: dict[tuple[str, str], dict[str, int]] = {}
        #: Called with (parent attempt's token, whether it now waits for a child).
        self.waiting: list[Callable[[tuple[str, int], bool], None]] = []

    def link(self, row: FlowRunRow) -> None:
        """A child run started (or was recovered)."""
        if row.parent_flow_run_id:
            key = (row.parent_flow_run_id, row.parent_task_key)
            children = self._links.setdefault(key, {})
            first = row.parent_attempt not in children.values()
            children[row.id] = row.parent_attempt
            if first:
                self._tell(row, True)

    def unlink(self, row: FlowRunRow) -> None:
        """A child run ended."""
        key = (row.parent_flow_run_id, row.parent_task_key)
        children = self._links.get(key)
        if children is not None and children.pop(row.id, None) is not None:
            if not children:
                del self._links[key]
            if row.parent_attempt not in children.values():
                self._tell(row, False)

    def waits(self, token: tuple[str, int]) -> bool:
        """Whether the attempt with this fencing token has a child run running."""
        if not self._links:
            return False
        parent_id, key = split_task_run_id(token[0])
        return token[1] in self._links.get((parent_id, key), {}).values()

    def _tell(self, row: FlowRunRow, waiting: bool) -> None:
        token = (task_run_id(row.parent_flow_run_id, row.parent_task_key), row.parent_attempt)
        for listener in self.waiting:
            listener(token, waiting)

    def orphaned(self, parent_id: str, run: TaskRunRecord) -> list[str]:
        """Children of task run ``run`` whose attempt is no longer the one running (it
        ended, or a newer one replaced it): to be cancelled."""
        if not self._links:  # no child runs at all: the common case, on a hot path
            return []
        children = self._links.get((parent_id, run.key))
        if not children:
            return []
        return [
            child
            for child, attempt in children.items()
            if attempt != run.attempt or not run.dispatched
        ]

    def current(self, parent: FlowRunEngine | None, key: str, attempt: int) -> bool:
        """Whether attempt ``attempt`` of task run ``key`` is the one running in the
        parent's engine (None: the parent is not running)."""
        run = parent.runs.get(key) if parent is not None else None
        return run is not None and run.attempt == attempt and run.dispatched


def result_value(engine: FlowRunEngine) -> Any:
    """A finished child's result as one stored Value (for the parent's task run)."""
    return to_result_value(engine.result) if engine.result is not None else None


#: The failure type of a subflow node whose child's result the server cannot take
#: (the same as a worker's refused result: server/_reports.py).
RESULT_REFUSED = "headwater.ResultRefused"


def subflow_event(
    row: FlowRunRow, result: Any, limits: Limits, engine: FlowRunEngine | None = None
) -> TaskSucceeded | TaskFailed:
    """How a subflow node's attempt ends, its child ``row`` having ended with
    ``result`` (``subflow_outcome``), once the result is checked as a worker's is: a
    child's result nests its graph's inputs around its tasks' values, so each level of
    subflows could nest values deeper than ``max_nesting`` allows, up to messages no
    client can decode. Over a limit the node fails (not retryable)."""
    key, attempt = row.parent_task_key, row.parent_attempt
    if isinstance(result, payload_pb2.Value):
        try:
            check_value(result, limits, f"the result of child flow run {row.id}")
        except (LimitExceeded, InvalidValue) as exc:
            failure = FailureInfo(type=RESULT_REFUSED, message=str(exc), retryable=False)
            return TaskFailed(key, attempt, failure)
    state = FlowRunState(row.state)
    return subflow_outcome(key, attempt, row.id, row.flow_name, state, result, row.message, engine)


def parent_fields(parent: tuple[str, str, int] | None) -> Mapping[str, Any]:
    """The FlowRunRow fields of a child's link to its parent (none for a top-level run)."""
    if parent is None:
        return {}
    parent_id, key, attempt = parent
    return {"parent_flow_run_id": parent_id, "parent_task_key": key, "parent_attempt": attempt}


__all__ = [
    "ChildRuns",
    "NotRunning",
    "SubflowStart",
    "parent_fields",
    "result_value",
    "subflow_event",
    "subflow_start",
]
