"""Attempts ready for a worker: ``PendingAssignment`` and how its message is built
(``assignment_message``).

The run manager hands the dispatcher a PendingAssignment per RunTask; the Assignment
message is built only when the attempt is actually dispatched (a 10,000-task fan-out
makes 10,000 attempts ready at once, and building their messages up front would delay
the run's first dispatch).
"""

from __future__ import annotations

import operator
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from headwater.v1 import graph_pb2, worker_pb2
from headwater.wire import FailureInfo, Limits, duration, path_to_proto, task_run_id
from headwater_runtime.tracing import inject

from ._spill import ASSIGNMENT_BUDGET, fit_inputs
from ._values import Composite, fill_input_value

#: An attempt's fencing token, ``(task run id, attempt)``.
Token = tuple[str, int]
#: A PendingAssignment's token.
TOKEN_OF = operator.attrgetter("token")
_SLICE = 2_000  # attempts laid out per C call (queued_attempts)

if TYPE_CHECKING:
    from headwater_runtime.engine import RunTask
    from headwater_runtime.store import Store

    from ._runs import ActiveRun


class PendingAssignment:
    """An attempt ready for a worker. The Assignment message may be given, or built on
    first use.

    Args:
        flow_run_id: the flow run the attempt belongs to.
        task_type: the capability a worker needs to run it.
        labels: labels the worker must have.
        assignment: the Assignment message, or a function that builds it and says its
            encoded size.
        token: ``(task run id, attempt)``; required when ``assignment`` is a function.
        code_digest: the digest of the task's code in the run's graph ("": any code).
        tags: the task's tags (concurrency limits: _tag_limits.py).
    """

    __slots__ = (
        "_build",
        "_message",
        "code_digest",
        "dask_values",
        "flow_run_id",
        "labels",
        "size",
        "start_by",
        "start_timeout",
        "tags",
        "task_type",
        "token",
    )

    def __init__(
        self,
        flow_run_id: str,
        task_type: str,
        labels: Mapping[str, str],
        assignment: worker_pb2.Assignment | Callable[[], tuple[worker_pb2.Assignment, int]],
        token: tuple[str, int] | None = None,
        code_digest: str = "",
        tags: tuple[str, ...] = (),
    ) -> None:
        self.flow_run_id = flow_run_id
        self.tags = tags
        self.task_type = task_type
        self.labels = labels
        self.code_digest = code_digest
        if isinstance(assignment, worker_pb2.Assignment):
            self._message: worker_pb2.Assignment | None = assignment
            self._build: Callable[[], tuple[worker_pb2.Assignment, int]] | None = None
            token = (assignment.token.task_run_id, assignment.token.attempt)
        else:
            self._message, self._build = None, assignment
        assert token is not None, "a lazily built assignment needs its token"
        self.token: tuple[str, int] = token
        #: Its inputs' Values that hold Dask refs, when found ahead of time (``prebuild``
        #: in _wide.py; None: not looked for yet).
        self.dask_values: list[Any] | None = None
        #: The Assignment's encoded size, as its builder found it (None: not built, or
        #: given ready-made).
        self.size: int | None = None
        #: When the attempt fails if no worker has taken it (schedule_to_start_timeout).
        self.start_by: float | None = None
        self.start_timeout: float = 0.0

    @property
    def assignment(self) -> worker_pb2.Assignment:
        """The Assignment message (built now if it was not given)."""
        if self._message is None:
            assert self._build is not None
            message, self.size = self._build()
            self._message, self._build = message, None
            return message
        return self._message


class Dispatch(Protocol):
    """Where assignments go (the dispatcher); called only after a commit."""

    def submit(self, pending: PendingAssignment) -> None:
        """Queue an attempt for a worker."""
        ...

    def submit_many(
        self, flow_run_id: str, by_type: Mapping[str, Sequence[PendingAssignment]]
    ) -> None:
        """Queue attempts of one flow run, grouped by task type (in order)."""
        ...

    def submit_queued(self, queued: QueuedAttempts) -> None:
        """Queue attempts of one flow run laid out off the event loop (a run starting)."""
        ...

    def cancel(self, flow_run_id: str, task_run_id: str, attempt: int, reason: str) -> None:
        """Stop an attempt (drop it if still queued, else ask its worker)."""
        ...

    def cancel_many(
        self, flow_run_id: str, cancels: Mapping[tuple[str, int], str], *, whole_run: bool = False
    ) -> None:
        """Stop attempts of one flow run: the reason by ``(task run id, attempt)``;
        ``whole_run``: they are every attempt of the run (the run is cancelled)."""
        ...


@dataclass(frozen=True, eq=False)
class QueuedAttempts:
    """The ready attempts of one flow run laid out as the dispatcher keeps them (its
    queues by task type, its index by token, those with a start deadline), built by
    ``queued_attempts`` on any thread, so that a 100,000-task run starting costs the
    event loop a few dict operations (``Dispatch.submit_queued``), not a pass over
    every attempt."""

    flow_run_id: str
    by_type: Mapping[str, Sequence[PendingAssignment]]
    queues: dict[str, deque[PendingAssignment]]
    index: dict[Token, PendingAssignment]
    start_by: list[tuple[float, int, PendingAssignment]]  # as the dispatcher's heap holds them


def queued_attempts(
    flow_run_id: str, by_type: Mapping[str, Sequence[PendingAssignment]]
) -> QueuedAttempts:
    """Lay out ready attempts of one flow run for ``Dispatch.submit_queued``. Pure:
    touches no dispatcher, so it runs on the reader thread that prepares a run."""
    index: dict[Token, PendingAssignment] = {}
    for pendings in by_type.values():
        # In slices: one C call over 100,000 attempts would hold the GIL (and so the
        # event loop) for tens of ms; between slices the interpreter can switch.
        for at in range(0, len(pendings), _SLICE):
            part = pendings[at : at + _SLICE]
            index.update(zip(map(TOKEN_OF, part), part, strict=True))
    return QueuedAttempts(
        flow_run_id,
        by_type,
        {task_type: deque(pendings) for task_type, pendings in by_type.items()},
        index,
        [
            (p.start_by, id(p), p)
            for pendings in by_type.values()
            for p in pendings
            if p.start_by is not None
        ],
    )


class ReadyAttempts:
    """The effect that hands a group of ready attempts of one run to the dispatcher
    (after their commit). ``lay_out`` prepares them for it beforehand, off the event
    loop, when the run was started on a reader thread.

    Args:
        dispatch: the dispatcher the attempts go to.
        flow_run_id: the run they belong to.
        by_type: the attempts by task type (filled in while the engine's commands are
            carried out).
    """

    __slots__ = ("by_type", "dispatch", "flow_run_id", "queued")

    def __init__(
        self, dispatch: Dispatch, flow_run_id: str, by_type: dict[str, list[PendingAssignment]]
    ) -> None:
        self.dispatch = dispatch
        self.flow_run_id = flow_run_id
        self.by_type = by_type  # filled in while the engine's commands are carried out
        self.queued: QueuedAttempts | None = None

    def lay_out(self) -> None:
        """Lay the attempts out as the dispatcher keeps them (any thread; once the
        group is complete)."""
        self.queued = queued_attempts(self.flow_run_id, self.by_type)

    def __call__(self) -> None:
        if self.queued is not None:
            self.dispatch.submit_queued(self.queued)
        else:
            self.dispatch.submit_many(self.flow_run_id, self.by_type)


def assignment_message(
    active: ActiveRun, command: RunTask, store: Store, budget: int = ASSIGNMENT_BUDGET
) -> tuple[worker_pb2.Assignment, int]:
    """The Assignment message of an attempt of a live run (built when it is dispatched;
    inline inputs that would make it larger than ``budget`` are spilled to ``store``),
    and its encoded size."""
    run = command.run
    spec = run.spec
    flow_run_id = active.row.id
    consumer = active.consumers.producers.get(spec.id)
    msg = worker_pb2.Assignment(
        token=worker_pb2.FencingToken(
            task_run_id=task_run_id(flow_run_id, run.key), attempt=command.attempt
        ),
        flow_run_id=flow_run_id,
        task_id=spec.id,
        task_type=spec.task_type,
        task_name=run.name,
        argument_order=list(spec.argument_order),
        map_index=run.map_index,
        result_encoding="json" if spec.portable or consumer else "",
        result_consumer=f"task {consumer[0]!r}, argument {consumer[1]!r}" if consumer else "",
        split_result=spec.id in active.split_nodes,
        # The attempt span's context when tracing; else the client's, passed through.
        trace_context=(
            active.row.trace_context
            if active.trace is None
            else inject(active.trace.dispatched(run, command.attempt))
        ),
    )
    split_path = active.split_nodes.get(spec.id)
    if split_path:
        msg.split_path.extend(path_to_proto(split_path))
    for name, value in command.inputs.items():
        fill_input_value(msg.inputs[name], value, elements=False)
    if spec.timeout is not None:
        msg.timeout.CopyFrom(duration(spec.timeout))
    if spec.cache is not None and spec.cache.by_function and command.attempt == 1:
        msg.cache.key_source = graph_pb2.CACHE_KEY_SOURCE_FUNCTION
        msg.cache.version = spec.cache.version
    _, size = fit_inputs(msg, store, budget)  # many inline inputs must not exceed 4 MiB
    return msg, size


#: The failure of an attempt whose inputs cannot be sent in one message.
INPUTS_TOO_LARGE = "headwater.InputsTooLarge"


def oversize_failure(pending: PendingAssignment, limits: Limits) -> FailureInfo | None:
    """Why an assignment cannot be sent, when it is larger than the workers accept even
    after its large inline inputs were spilled (many small ones, a reduce over a map
    wider than the message limit was set for); None when it fits. Not retryable: the
    same inputs make the same message."""
    message = pending.assignment  # built now if it was not: that sizes it
    size = pending.size if pending.size is not None else message.ByteSize()
    if size <= limits.max_message_bytes:
        return None
    task_run, attempt = pending.token
    what = f"the inputs of task run {task_run} (attempt {attempt}) make a {size}-byte message"
    return FailureInfo(
        type=INPUTS_TOO_LARGE,
        message=str(limits.exceeded("max_message_bytes", what)),
        retryable=False,
    )


def input_width(inputs: Mapping[str, Any]) -> int:
    """About how many values an attempt's inputs hold (the length of each list or dict
    argument, 1 for any other): a reduce over a 100,000-element map has 100,000."""
    width = 0
    for value in inputs.values():
        if type(value) is Composite:
            width += len(value.items)
        elif isinstance(value, list | tuple | dict):
            width += len(value)
        else:
            width += 1
    return width
