"""FlowRun: what a finished (embedded) flow run looks like to users."""

from __future__ import annotations

import contextlib
import sys
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from headwater.wire import FailureInfo, FlowRunState, task_run_id
from headwater_runtime.engine import (
    FlowRunEngine,
    FlowRunFailure,
    StateEntry,
    TaskRunRecord,
    not_retryable,
)
from headwater_runtime.execution import TaskLogLine

if TYPE_CHECKING:
    from headwater_runtime.embedded import EmbeddedRun, Executor

from ._logs import LogEntry, from_seconds
from ._signals import FlowRunCancelled, FlowRunFailed, FlowRunInterrupted


@dataclass
class FlowRun:
    """The outcome of a flow run.

    Attributes:
        id: run id.
        flow_name: the flow's name.
        state: FlowRunState (``.name`` is the contract's name, e.g. ``"SUCCESS"``).
        result: the flow function's return value, resolved (when it succeeded).
        parameters: parameter values used (defaults filled in).
        task_runs: every task run by key: the task id, ``id[i]`` for mapped child i.
        failures: the reference task runs that did not succeed.
        message: why the run ended as it did.
        started_at: when the run started (seconds since the epoch).
        ended_at: when it ended (None while it has not).
        parent_id: for a child flow run (a subflow, or a flow a task called), the id
            of the flow run it belongs to; "" for a top-level run.
        parent_task_run: for a child flow run, the key of the parent's task run that
            stands for it (the subflow node, or the task that called the flow).
        children: the child flow runs this run started, in the order they started
            (each attempt of a subflow node, and flows its tasks called).
        logs: what the tasks printed and logged, in order (tasks run on this
            process's threads; a Dask cluster's workers keep their own output).
        attempt: the run attempt: 1, and one more each time it was retried from its
            failure (``retry``).
    """

    id: str
    flow_name: str
    state: FlowRunState
    result: Any
    parameters: dict[str, Any]
    task_runs: Mapping[str, TaskRunRecord] = field(repr=False)
    failures: list[FlowRunFailure] = field(default_factory=list)
    message: str = ""
    started_at: float | None = None
    ended_at: float | None = None
    parent_id: str = ""
    parent_task_run: str = ""
    children: list[FlowRun] = field(default_factory=list, repr=False)
    attempt: int = 1
    _engine: FlowRunEngine | None = field(default=None, repr=False, compare=False)
    _hold: _EngineHold | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_embedded(cls, run: EmbeddedRun, *, held: bool = True) -> FlowRun:
        """The outcome of an embedded run, with its links and its child runs.
        ``held`` False: dropping it (and its children) releases no engine: a FlowRun a
        task got from a flow it called, dropped when the task returned, released the
        child's engine before its parent's FlowRun was made of it."""
        flow_run = cls.from_engine(run.id, run.engine, run.logs, held=held)
        flow_run.parent_id = run.parent_id
        flow_run.parent_task_run = run.parent_task_run
        flow_run.children = [cls.from_embedded(child, held=held) for child in list(run.children)]
        return flow_run

    def child_runs(self, task_run: str) -> list[FlowRun]:
        """The child flow runs the task run ``task_run`` (a key) started, oldest first."""
        return [c for c in self.children if c.parent_task_run == task_run]

    logs: list[LogEntry] = field(default_factory=list, repr=False)

    @classmethod
    def from_engine(
        cls,
        run_id: str,
        engine: FlowRunEngine,
        logs: Sequence[TaskLogLine] = (),
        *,
        held: bool = True,
    ) -> FlowRun:
        """The outcome of the run an engine drove (the result only if it succeeded),
        with the log lines its tasks wrote."""
        history = engine.flow_history
        return cls(
            id=run_id,
            flow_name=engine.graph.name,
            state=engine.state,
            result=engine.result if engine.state is FlowRunState.SUCCESS else None,
            parameters=dict(engine.params),
            task_runs=engine.runs,
            failures=engine.failed_runs() if engine.state is FlowRunState.FAILED else [],
            message=history[-1][2] if history else "",
            started_at=history[0][1] if history else None,
            ended_at=history[-1][1] if engine.state.is_terminal else None,
            logs=[
                LogEntry(
                    task_run_id(run_id, line.key),
                    line.attempt,
                    from_seconds(line.at),
                    line.level,
                    line.logger,
                    line.message,
                )
                for line in logs
            ],
            attempt=engine.run_attempt,
            _engine=engine,
            _hold=_EngineHold.of(engine) if held else None,
        )

    def retry(
        self,
        *,
        executor: Executor | None = None,
        max_workers: int | None = None,
        reason: str = "",
        on_transition: Callable[[TaskRunRecord, StateEntry], None] | None = None,
    ) -> FlowRun:
        """Run this FAILED or CANCELLED run again from its failure, in this process,
        and return it when it ends (the same id, its next ``attempt``).

        Task runs that succeeded are kept with their results (still in memory); failed,
        timed out, cancelled and not-run ones run again, and a mapped task reruns only
        its failed children (docs/semantics.md). ``executor``/``max_workers`` as for
        ``Flow.run``: the executor must be of the kind the run used (a thread pool by
        default). RuntimeError for a run in another state, and for a child run (its
        outcome is its parent's task run's: retry the parent, which runs it again); on a
        server, use ``Client.retry``.
        """
        from headwater_runtime.embedded import PROCESS_CACHE, EmbeddedRun, ThreadExecutor

        engine = self._engine
        why = not_retryable(self.state, self.parent_id, self.parent_task_run)
        if engine is None and why is None:
            why = "it was not run here"
        if engine is None or why is not None:
            raise RuntimeError(f"cannot retry flow run {self.id}: {why}")
        if executor is not None and max_workers is not None:
            raise ValueError("pass either executor= or max_workers=, not both")
        redefined = _redefined_tasks(engine)
        if redefined:
            warnings.warn(
                f"flow run {self.id[:8]}: {', '.join(map(repr, redefined))} "
                f"{'was' if len(redefined) == 1 else 'were'} defined again since it ran; "
                "retry() runs the code the run started with. To run the new code, run the "
                "flow again (cache_for= on its slow tasks keeps their results)",
                stacklevel=2,
            )
        try:
            embedded = EmbeddedRun(
                engine.graph,
                executor=executor or ThreadExecutor(max_workers),
                cache=PROCESS_CACHE,
                on_transition=on_transition,
                engine=engine,
                run_id=self.id,
            )
        except ValueError as exc:  # (the executor cannot take the run's kept results)
            raise ValueError(f"cannot retry flow run {self.id[:8]}: {exc}") from None
        embedded.run(retry=reason)
        # The whole run: its links, the child runs and log lines of its earlier
        # attempts, then this one's (a user trial: the retried subflow's child run, and
        # every log line, could not be reached from the returned FlowRun).
        retried = FlowRun.from_embedded(embedded)
        retried.children = [*self.children, *retried.children]
        retried.logs = [*self.logs, *retried.logs]
        return retried._raise_if_interrupted(embedded)

    def _raise_if_interrupted(self, run: EmbeddedRun) -> FlowRun:
        """This run; FlowRunInterrupted with it when Ctrl-C cancelled ``run``."""
        if run.interrupted:
            raise FlowRunInterrupted(self)
        return self

    @property
    def ok(self) -> bool:
        """Whether the run succeeded."""
        return self.state is FlowRunState.SUCCESS

    @property
    def duration(self) -> float | None:
        """Seconds from start to end; None until the run has ended."""
        if self.started_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.started_at

    def task_run(self, key: str) -> TaskRunRecord:
        """The run of task ``key`` (a task id, or ``id[i]`` for mapped child i)."""
        try:
            return self.task_runs[key]
        except KeyError:
            known = ", ".join(list(self.task_runs)[:10])
            raise KeyError(f"no task run {key!r} in this flow run (some keys: {known})") from None

    def raise_for_state(self) -> None:
        """Raise FlowRunCancelled / FlowRunFailed unless the run succeeded."""
        if self.state is FlowRunState.CANCELLED:
            raise FlowRunCancelled(self)
        if self.state is not FlowRunState.SUCCESS:
            first = next(
                (e for f in self.failures if (e := _original(f.failure)) is not None), None
            )
            # (no local names the error: this frame, in its traceback, would hold it,
            # and the run with it, in a cycle)
            raise FlowRunFailed(self) from first

    def _repr_html_(self) -> str:
        """The run as a notebook shows it: its state, time and why it failed, and its
        tasks' task runs added up per task (``headwater._html``)."""
        from ._html import run_html

        rows = (
            (r.task_id, r.key, r.state.name, r.attempt, r.run_seconds, "")
            for r in self.task_runs.values()
        )
        return run_html(self.flow_name, self.state.name, self.id, self.duration, self.message, rows)

    def __repr__(self) -> str:
        # Why a run did not succeed, first line (a notebook shows the repr: it said
        # FAILED and nothing of why, a trial).
        why = self.message.splitlines()[0][:200] if self.message and not self.ok else ""
        return (
            f"<FlowRun {self.flow_name} {self.state.name} tasks={len(self.task_runs)} "
            f"id={self.id[:8]}{': ' + why if why else ''}>"
        )


def _redefined_tasks(engine: FlowRunEngine) -> list[str]:
    """The tasks of the run whose module now has another function under their name (a
    later notebook cell defined the task again): a retry runs the old ones."""
    names = []
    for spec in engine.graph.tasks:
        fn = spec.fn
        module = sys.modules.get(getattr(fn, "__module__", None) or "")
        if fn is None or module is None:
            continue
        now = getattr(module, getattr(fn, "__name__", ""), None)
        now_fn = getattr(now, "fn", now)
        if callable(now_fn) and now_fn is not fn and spec.name not in names:
            names.append(spec.name)
    return names


class _EngineHold:
    """What the FlowRuns of one embedded run share: when the last of them is dropped,
    the run's engine is unlinked (``FlowRunEngine.unlink``: its nodes and task runs no
    longer refer to each other), so reference counting frees its results at once.

    Tied into cycles, a dropped run's values waited for the cycle collector: a
    notebook cell calling a flow that makes a 200 MB array 15 times grew to 2.9 GB
    (a trial); ``gc.collect()`` gave it back.
    """

    __slots__ = ("__weakref__", "engine")

    def __init__(self, engine: FlowRunEngine) -> None:
        self.engine = engine

    @classmethod
    def of(cls, engine: FlowRunEngine) -> _EngineHold:
        """The hold of ``engine`` (one per engine: a retried run's FlowRuns share it)."""
        hold = _HELD.get(id(engine))
        if hold is None or hold.engine is not engine:
            hold = _HELD[id(engine)] = cls(engine)
        return hold

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # (at exit, modules may be half torn down)
            _drop_tracebacks(self.engine)
            # (unlink, not release: a reader of `f.run().task_runs["x"]` holds the runs
            # of a FlowRun already gone)
            self.engine.unlink()


def _drop_tracebacks(engine: FlowRunEngine) -> None:
    """Let go of the tracebacks of a released run's failures. A traceback's frames lead
    back through the frames that called the task (the engine's, when it ran inline)
    to what they held (the run, its events and so the failure again): a cycle, so a
    failed run's values, its tasks' inputs among them, waited for the cycle collector
    (15 failed runs of a 200 MB input: 1.4 GB; a trial)."""
    seen: set[int] = set()
    for record in list(engine.runs.values()):
        if record.failure is None and len(record.attempts) <= 1:
            continue  # (no attempt failed: most task runs; 200 ms for 100,000 otherwise)
        failures = [record.failure, *(a.failure for a in record.attempts)]
        failures += [entry.failure for entry in record.history]
        while failures:
            failure = failures.pop()
            if failure is None or id(failure) in seen:
                continue
            seen.add(id(failure))
            failures.append(failure.cause)
            exc = failure.exception
            while exc is not None and id(exc) not in seen:
                seen.add(id(exc))
                exc.__traceback__ = None
                exc = exc.__cause__ or exc.__context__


#: Each engine's hold, while a FlowRun has it (by the engine's id).
_HELD: weakref.WeakValueDictionary[int, _EngineHold] = weakref.WeakValueDictionary()


def _original(failure: FailureInfo | None) -> BaseException | None:
    """The exception a failure was raised with, or that of its cause, and so on (a
    failed subflow's failure has none of its own: its cause is the child's first
    failed task's)."""
    while failure is not None:
        if failure.exception is not None:
            return failure.exception
        failure = failure.cause
    return None
