"""Handing a run's attempts out (a part of ``RunManager``, kept apart for size): a
RunTask becomes a PendingAssignment for the dispatcher (its message built when it is
sent) or a subflow start for the core, after the commit; deliveries to workers are
recorded, and the dispatcher asks here whether a queued attempt is still due.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

from headwater.v1 import worker_pb2
from headwater.wire import split_task_run_id, task_run_id
from headwater_runtime.engine import Clock, RunTask, TaskRunRecord
from headwater_runtime.store import Store

from ._assignments import Dispatch, PendingAssignment, assignment_message
from ._children import SubflowStart, subflow_start
from ._dispatch import WorkerSession, input_payloads
from ._sink import Sink
from ._values import fill_input_value

if TYPE_CHECKING:
    from ._runs import ActiveRun


def holdable(active: ActiveRun, key: str, session: WorkerSession, attempt: int = 0) -> bool:
    """Whether ``session`` could have been given an attempt of the run's task run
    ``key`` (its task type, labels and code); with ``attempt``, only that attempt while
    it is in flight."""
    run = active.engine.runs.get(key)
    if run is None or (attempt and (run.attempt != attempt or not run.dispatched)):
        return False
    spec = run.spec
    return session.offers(spec.task_type, spec.labels, spec.code_digest)


def inputs_of(active: ActiveRun, key: str, attempt: int) -> frozenset[str] | None:
    """The stored payloads an attempt in flight takes as input, from the engine (None
    when the attempt is not in flight)."""
    run = active.engine.runs.get(key)
    if run is None or run.attempt != attempt or not run.dispatched:
        return None
    message = worker_pb2.Assignment()
    for name, value in active.engine.resend(key).inputs.items():
        fill_input_value(message.inputs[name], value, elements=False)
    return input_payloads(message)


class RunDispatching:
    """Attempts of the run manager's runs, to workers (a mixin of ``RunManager``)."""

    store: Store
    dispatch: Dispatch
    clock: Clock
    runs: dict[str, ActiveRun]
    start_subflow: Callable[[SubflowStart], None] | None
    _aside: dict[str, list[Callable[[], object]]]
    _workers: dict[tuple[str, str], tuple[str, str | None]]
    _assignment_budget: int

    if TYPE_CHECKING:  # RunManager's

        def _sink_of(self, active: ActiveRun) -> Sink: ...

        def _project_row(self, active: ActiveRun, run: TaskRunRecord, at: float) -> None: ...

    def resend(self, flow_run_id: str, key: str) -> None:
        """Dispatch the in-flight attempt of a task run again, unchanged (it never
        reached a worker): no new attempt, no loss counted."""
        later = self._aside.get(flow_run_id)
        if later is not None:
            later.append(functools.partial(self.resend, flow_run_id, key))
            return
        active = self.runs[flow_run_id]
        self._dispatch(active, active.engine.resend(key))

    def may_hold(self, flow_run_id: str, key: str, session: WorkerSession) -> bool:
        """Whether ``session`` could have been given an attempt of this live run's task
        run (its task type, labels and code): a worker naming one it cannot run after a
        restart is not given it (a user trial took over another pool's attempt, its
        inputs and its result so). False when the run is not live here."""
        active = self.runs.get(flow_run_id)
        return active is not None and holdable(active, key, session)

    def attempt_inputs(self, flow_run_id: str, key: str, attempt: int) -> frozenset[str] | None:
        """The stored payloads that an attempt in flight of a live run takes as input,
        from its inputs as the engine has them (for a worker-only credential that keeps
        the attempt across a restart: this server never built its assignment). None
        when the run is not live here or the attempt is not in flight. Inputs that the
        assignment spilled to the store (large inline values) are not among them."""
        active = self.runs.get(flow_run_id)
        if active is None or flow_run_id in self._aside:
            return None
        return inputs_of(active, key, attempt)

    def _dispatch(self, active: ActiveRun, command: RunTask) -> None:
        """After the commit: a task's attempt to a worker, a subflow node's to the core
        (which starts its child flow run)."""
        if command.run.spec.subflow is not None and self.start_subflow is not None:
            start = subflow_start(active.row, command, active.trace)
            self._sink_of(active).effects.append(functools.partial(self.start_subflow, start))
            return
        pending = self._assignment(active, command)
        self._sink_of(active).effects.append(functools.partial(self.dispatch.submit, pending))

    def due(self, pending: PendingAssignment) -> bool:
        """Whether the attempt is still to be run (not cancelled, lost or replaced
        since it was made ready)."""
        flow_run_id, key = split_task_run_id(pending.token[0])
        active = self.runs.get(flow_run_id)
        run = active.engine.runs.get(key) if active is not None else None
        return run is not None and run.attempt == pending.token[1] and run.dispatched

    def delivered(
        self, flow_run_id: str, task_run_id_: str, attempt: int, worker: str, holder: str
    ) -> None:
        """An attempt was handed to this worker (its name, and ``holder``: its
        ``WorkerSession.holder``): recorded durably with the next commit (a restarted
        server then waits for that worker rather than sending it again), and shown
        with the task run."""
        later = self._aside.get(flow_run_id)
        if later is not None:
            later.append(
                functools.partial(
                    self.delivered, flow_run_id, task_run_id_, attempt, worker, holder
                )
            )
            return
        key = split_task_run_id(task_run_id_)[1]
        self._workers[(flow_run_id, key)] = (worker, holder)
        active = self.runs.get(flow_run_id)
        run = active.engine.runs.get(key) if active is not None else None
        if active is None or run is None or run.attempt != attempt or not run.dispatched:
            return
        active.delivered[key] = attempt
        self._project_row(active, run, self.clock.now())

    def _assignment(self, active: ActiveRun, command: RunTask) -> PendingAssignment:
        spec = command.run.spec
        token = (task_run_id(active.row.id, command.run.key), command.attempt)
        build = functools.partial(
            assignment_message, active, command, self.store, self._assignment_budget
        )
        pending = PendingAssignment(
            active.row.id,
            spec.task_type,
            spec.labels,
            build,
            token,
            spec.code_digest,
            tags=spec.tags,
        )
        if spec.schedule_to_start_timeout is not None:  # see _waiting.py
            pending.start_timeout = spec.schedule_to_start_timeout
            pending.start_by = self.clock.now() + spec.schedule_to_start_timeout
        return pending
