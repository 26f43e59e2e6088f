"""Helpers for the pure engine tests: a fake clock, a compact graph builder, a driver.

Engine tests feed events by hand and look at the commands that come back. Every
Driver registers itself; the autouse fixture ``check_engines`` (import it into a test
module) calls ``validate()`` on each engine a test created, at teardown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import pytest

from headwater.wire import (
    NO_RETRY,
    CacheSpec,
    Const,
    FailureInfo,
    FromTask,
    GraphSpec,
    InputSpec,
    ParamSpec,
    RetrySpec,
    TaskRunState,
    TaskSpec,
    Trigger,
)
from headwater_runtime.engine import (
    CacheChecked,
    CacheEntry,
    CancelRequested,
    CancelTask,
    CheckCache,
    Command,
    Event,
    EventIgnored,
    FlowFinished,
    FlowRunEngine,
    RunTask,
    StateEntry,
    TaskFailed,
    TaskLost,
    TaskRunRecord,
    TaskSkipped,
    TaskStarted,
    TaskSucceeded,
    WriteCache,
)

S = TaskRunState

__all__ = [
    "Driver",
    "FakeClock",
    "S",
    "check_engines",
    "const",
    "flow",
    "task",
    "up",
]


class FakeClock:
    """A clock that only moves when a test says so."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


# ------------------------------------------------------------------ graph builder


def up(task_id: str, *path: str | int) -> FromTask:
    """The result of task ``task_id`` (or part of it)."""
    return FromTask(task_id, tuple(path))


def const(value: Any) -> Const:
    return Const(value)


def task(
    task_id: str,
    *upstreams: str,
    inputs: Mapping[str, InputSpec] | None = None,
    wait_for: Iterable[str] = (),
    retry: RetrySpec = NO_RETRY,
    timeout: float | None = None,
    trigger: Trigger = Trigger.ALL_SUCCESSFUL,
    cache: CacheSpec | None = None,
    mapped: Iterable[str] | None = None,
) -> TaskSpec:
    """A TaskSpec; each positional upstream id becomes an input of the same name."""
    all_inputs: dict[str, InputSpec] = {u: FromTask(u) for u in upstreams}
    all_inputs.update(inputs or {})
    return TaskSpec(
        id=task_id,
        name=task_id,
        task_type=f"test.{task_id}",
        inputs=all_inputs,
        wait_for=tuple(wait_for),
        retry=retry,
        timeout=timeout,
        trigger=trigger,
        cache=cache,
        mapped=None if mapped is None else tuple(mapped),
    )


def flow(
    *tasks: TaskSpec,
    params: Iterable[ParamSpec] = (),
    result: InputSpec | None = None,
    reference: Iterable[str] = (),
    name: str = "test-flow",
) -> GraphSpec:
    return GraphSpec(
        name=name,
        tasks=tuple(tasks),
        params=tuple(params),
        result=result,
        reference_task_ids=tuple(reference),
    )


# ------------------------------------------------------------------------ driver

_LIVE: list[Driver] = []


@pytest.fixture(autouse=True)
def check_engines() -> Iterator[None]:
    """Validate every engine the test drove, at teardown."""
    _LIVE.clear()
    yield
    drivers = list(_LIVE)
    _LIVE.clear()
    for driver in drivers:
        driver.engine.validate()


def failure(
    type: str = "builtins.ValueError",
    message: str = "boom",
    *,
    retryable: bool = True,
    timed_out: bool = False,
) -> FailureInfo:
    return FailureInfo(type=type, message=message, retryable=retryable, timed_out=timed_out)


class Driver:
    """Drives one FlowRunEngine by hand, checking invariants after every step.

    ``in_flight`` holds the RunTask of every attempt the engine dispatched and has not
    heard the end of (by a result the driver sent, a CancelTask, or a lost worker).
    """

    def __init__(
        self,
        graph: GraphSpec,
        params: Mapping[str, Any] | None = None,
        *,
        clock: FakeClock | None = None,
        start: bool = True,
        register: bool = True,
        observer: Callable[[TaskRunRecord, StateEntry], None] | None = None,
        **engine_options: Any,
    ) -> None:
        self.clock = clock or FakeClock()
        self.observer = observer
        self.transitions: list[tuple[str, TaskRunState, TaskRunState]] = []
        self.log: list[Command] = []
        self.last: list[Command] = []
        self.in_flight: dict[str, RunTask] = {}
        self.max_seen_in_flight = 0
        self.engine = FlowRunEngine(
            graph,
            params,
            clock=self.clock,
            on_transition=self._on_transition,
            **engine_options,
        )
        if register:
            _LIVE.append(self)
        if start:
            self.start()

    # ------------------------------------------------------------ plumbing

    def _on_transition(self, run: TaskRunRecord, entry: StateEntry) -> None:
        self.transitions.append((run.key, run.history[-2].state, entry.state))
        if self.observer is not None:
            self.observer(run, entry)

    def _take(self, commands: list[Command]) -> list[Command]:
        for command in commands:
            if isinstance(command, RunTask):
                assert command.run.key not in self.in_flight, (
                    f"{command.run.key} dispatched while attempt "
                    f"{self.in_flight[command.run.key].attempt} is in flight"
                )
                self.in_flight[command.run.key] = command
            elif isinstance(command, CancelTask):
                current = self.in_flight.get(command.run.key)
                if current is not None and current.attempt == command.attempt:
                    del self.in_flight[command.run.key]
        self.max_seen_in_flight = max(self.max_seen_in_flight, len(self.in_flight))
        limit = self.engine.max_concurrency
        if limit is not None:
            assert len(self.in_flight) <= limit, f"{len(self.in_flight)} in flight > {limit}"
        self.log.extend(commands)
        self.last = commands
        self.engine.validate()
        return commands

    def start(self) -> list[Command]:
        return self._take(self.engine.start())

    def send(self, *events: Event) -> list[Command]:
        """Apply events (one: ``handle``; several: ``handle_many``)."""
        for event in events:
            if isinstance(event, TaskSucceeded | TaskFailed | TaskSkipped | TaskLost):
                current = self.in_flight.get(event.key)
                if current is not None and current.attempt == event.attempt:
                    del self.in_flight[event.key]
        if len(events) == 1:
            return self._take(self.engine.handle(events[0]))
        return self._take(self.engine.handle_many(events))

    def tick(self, seconds: float = 0.0) -> list[Command]:
        """Advance the clock and fire due timers."""
        self.clock.advance(seconds)
        return self._take(self.engine.fire_due_timers())

    # ------------------------------------------------------------- events

    def attempt(self, key: str) -> int:
        return self.engine.runs[key].attempt

    def succeed(self, key: str, value: Any = None, attempt: int | None = None) -> list[Command]:
        return self.send(TaskSucceeded(key, attempt or self.attempt(key), value))

    def fail(
        self, key: str, info: FailureInfo | None = None, attempt: int | None = None
    ) -> list[Command]:
        return self.send(TaskFailed(key, attempt or self.attempt(key), info or failure()))

    def skip(self, key: str, reason: str = "skipped", attempt: int | None = None) -> list[Command]:
        return self.send(TaskSkipped(key, attempt or self.attempt(key), reason))

    def lose(self, key: str) -> list[Command]:
        return self.send(TaskLost(key, self.attempt(key)))

    def started(self, key: str) -> list[Command]:
        return self.send(TaskStarted(key, self.attempt(key)))

    def cache(self, key: str, cache_key: str, entry: CacheEntry | None) -> list[Command]:
        return self.send(CacheChecked(key, cache_key, entry))

    def cancel(self, reason: str = "cancelled") -> list[Command]:
        return self.send(CancelRequested(reason))

    def complete(
        self,
        outcome: Callable[[RunTask], Any] = lambda cmd: None,
        *,
        max_steps: int = 10_000,
    ) -> None:
        """Succeed every dispatched run (value from ``outcome``) until the flow ends,
        oldest dispatch first, firing timers when nothing is in flight."""
        for _ in range(max_steps):
            if self.engine.finished:
                return
            if self.in_flight:
                cmd = next(iter(self.in_flight.values()))
                self.succeed(cmd.run.key, outcome(cmd), cmd.attempt)
            elif self.engine.next_timer_at is not None:
                self.tick(max(0.0, self.engine.next_timer_at - self.clock.now()))
            else:
                raise AssertionError("flow run is stuck: nothing in flight and no timers")
        raise AssertionError("flow run did not finish")

    # -------------------------------------------------------------- views

    @property
    def runs(self) -> dict[str, TaskRunRecord]:
        return self.engine.runs

    def state(self, key: str) -> TaskRunState:
        return self.engine.runs[key].state

    def states(self, key: str) -> list[TaskRunState]:
        return self.engine.runs[key].states

    def only_ignored(self, commands: list[Command]) -> bool:
        """Whether ``commands`` decide nothing (at most, an event was refused)."""
        return all(isinstance(c, EventIgnored) for c in commands)

    def failure_message(self, key: str) -> str:
        failure = self.engine.runs[key].failure
        assert failure is not None, f"{key} has no failure"
        return failure.message

    def dispatched(self, commands: list[Command] | None = None) -> list[str]:
        """Keys of the RunTask commands among ``commands`` (default: the last step's)."""
        source = self.last if commands is None else commands
        return [c.run.key for c in source if isinstance(c, RunTask)]

    def run_task(self, key: str) -> RunTask:
        """The latest RunTask for ``key``."""
        for command in reversed(self.log):
            if isinstance(command, RunTask) and command.run.key == key:
                return command
        raise AssertionError(f"{key} was never dispatched")

    def inputs(self, key: str) -> dict[str, Any]:
        return self.run_task(key).inputs

    def of_type(self, kind: type, commands: list[Command] | None = None) -> list[Any]:
        return [c for c in (self.last if commands is None else commands) if isinstance(c, kind)]

    def ignored(self, commands: list[Command] | None = None) -> list[EventIgnored]:
        return self.of_type(EventIgnored, commands)

    def finished_state(self) -> Any:
        done = [c for c in self.log if isinstance(c, FlowFinished)]
        assert len(done) == 1, f"expected one FlowFinished, got {done}"
        return done[0].state

    def cache_checks(self, commands: list[Command] | None = None) -> list[CheckCache]:
        return self.of_type(CheckCache, commands)

    def cache_writes(self, commands: list[Command] | None = None) -> list[WriteCache]:
        return self.of_type(WriteCache, commands)
