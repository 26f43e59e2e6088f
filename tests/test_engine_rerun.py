"""Retrying a flow run from its failure (RunRetried, engine/_rerun.py): what is kept,
what runs again, and that attempt numbers never repeat."""

from __future__ import annotations

from engine_helpers import (
    Driver,
    FakeClock,
    S,
    check_engines,  # noqa: F401  (autouse fixture)
    failure,
    flow,
    task,
    up,
)

from headwater.wire import Const, FlowRunState, GraphSpec, RetrySpec, Trigger
from headwater_runtime.engine import (
    EventIgnored,
    FlowFinished,
    FlowRunEngine,
    JournaledEngine,
    JournalEntry,
    RunRetried,
    RunTask,
    TaskFailed,
    TaskSucceeded,
    replay,
)


def _retry(d: Driver, reason: str = "") -> list[object]:
    return d.send(RunRetried(reason))  # type: ignore[arg-type]


def test_a_failed_chain_reruns_the_failed_task_and_what_it_blocked_only() -> None:
    d = Driver(flow(task("a"), task("b", "a"), task("c", "b"), task("side")))
    d.succeed("a", 1)
    d.succeed("side", "s")
    d.fail("b")
    assert d.engine.state is FlowRunState.FAILED
    assert d.state("c") is S.TRIGGER_FAILED

    commands = _retry(d, "fixed the database")
    assert d.engine.state is FlowRunState.RUNNING
    assert d.engine.run_attempt == 2
    assert d.dispatched(commands) == ["b"], "only the failed task is ready at once"
    assert d.inputs("b") == {"a": 1}, "the kept upstream result is its input"
    assert d.run_task("b").attempt == 2, "attempt numbers go on (fencing tokens)"
    assert d.state("a") is S.SUCCESS and d.state("side") is S.SUCCESS
    assert d.state("c") is S.PENDING
    assert d.states("b")[-4:] == [S.FAILED, S.PENDING, S.SCHEDULED, S.RUNNING]
    assert "fixed the database" in d.runs["b"].history[-3].message
    d.succeed("b", 2)
    assert d.dispatched() == ["c"]
    assert d.inputs("c") == {"b": 2}
    d.succeed("c", 3)
    assert d.engine.state is FlowRunState.SUCCESS
    assert [s for s, _, _ in d.engine.flow_history] == [
        FlowRunState.RUNNING,
        FlowRunState.FAILED,
        FlowRunState.RUNNING,
        FlowRunState.SUCCESS,
    ]
    assert d.runs["a"].attempt == 1, "a kept task never ran again"


def test_a_mapped_task_reruns_only_its_failed_children_and_their_downstream() -> None:
    g = flow(
        task("m", inputs={"x": Const([0, 1, 2, 3])}, mapped=["x"]),
        task("n", inputs={"y": up("m")}, mapped=["y"]),  # element-wise over m
        task("total", "n"),
    )
    d = Driver(g)
    for i in (0, 2, 3):
        d.succeed(f"m[{i}]", i * 10)
    d.fail("m[1]")
    for i in (0, 2, 3):
        d.succeed(f"n[{i}]", i * 100)
    assert d.state("n[1]") is S.TRIGGER_FAILED
    assert d.engine.state is FlowRunState.FAILED

    commands = _retry(d)
    assert d.dispatched(commands) == ["m[1]"]
    assert d.inputs("m[1]") == {"x": 1}, "the kept expansion's shared input is resolved again"
    assert d.state("m") is S.MAPPED and d.state("n") is S.MAPPED
    assert [d.state(f"n[{i}]") for i in range(4)] == [S.SUCCESS, S.PENDING, S.SUCCESS, S.SUCCESS]
    assert d.state("total") is S.PENDING
    d.succeed("m[1]", 10)
    assert d.dispatched() == ["n[1]"]
    assert d.inputs("n[1]") == {"y": 10}
    d.succeed("n[1]", 100)
    assert d.dispatched() == ["total"]
    assert d.inputs("total") == {"n": [0, 100, 200, 300]}
    d.succeed("total", 600)
    assert d.engine.state is FlowRunState.SUCCESS
    assert all(d.runs[f"m[{i}]"].attempt == 1 for i in (0, 2, 3))
    assert d.runs["m[1]"].attempt == 2


def test_a_cancelled_run_reruns_what_was_cancelled_and_keeps_what_finished() -> None:
    d = Driver(flow(task("a"), task("b", "a"), task("slow")))
    d.succeed("a", 1)
    d.cancel("stop")
    assert d.engine.state is FlowRunState.CANCELLED
    assert d.state("b") is S.CANCELLED and d.state("slow") is S.CANCELLED
    commands = _retry(d)
    assert sorted(d.dispatched(commands)) == ["b", "slow"]
    assert d.run_task("b").attempt == 2 and d.run_task("slow").attempt == 2
    d.complete()
    assert d.engine.state is FlowRunState.SUCCESS
    assert d.runs["a"].attempt == 1


def test_a_task_that_ran_after_a_failure_runs_again_with_the_new_inputs() -> None:
    g = flow(task("a"), task("cleanup", "a", trigger=Trigger.ALL_FINISHED))
    d = Driver(g)
    d.fail("a")
    d.succeed("cleanup", "cleaned after a failure")
    assert d.engine.state is FlowRunState.FAILED
    _retry(d)
    assert d.state("cleanup") is S.PENDING
    d.succeed("a", 5)
    assert d.inputs("cleanup") == {"a": 5}
    d.succeed("cleanup", "cleaned")
    assert d.engine.state is FlowRunState.SUCCESS


def test_a_mapped_task_that_never_expanded_expands_on_the_retry() -> None:
    g = flow(task("src"), task("m", inputs={"x": up("src")}, mapped=["x"]), task("r", "m"))
    d = Driver(g)
    d.fail("src")
    assert d.state("m") is S.TRIGGER_FAILED
    _retry(d)
    d.succeed("src", [1, 2])
    assert sorted(d.dispatched()) == ["m[0]", "m[1]"]
    d.complete(lambda cmd: cmd.inputs.get("x"))
    assert d.engine.state is FlowRunState.SUCCESS


def test_an_expansion_downstream_of_a_rerun_task_expands_again_with_attempts_going_on() -> None:
    g = flow(
        task("src"),
        task("m", inputs={"x": up("src")}, mapped=["x"], trigger=Trigger.ALL_FINISHED),
    )
    d = Driver(g)
    d.fail("src")
    # all_finished: m maps over src's result, which is None: it fails to expand.
    assert d.state("m") is S.FAILED
    _retry(d)
    d.succeed("src", [1, 2, 3])
    assert sorted(d.dispatched()) == ["m[0]", "m[1]", "m[2]"]
    d.complete()
    assert d.engine.state is FlowRunState.SUCCESS


def test_every_retry_gets_a_fresh_retry_budget() -> None:
    d = Driver(flow(task("a", retry=RetrySpec(max_retries=1))))
    d.fail("a")
    d.fail("a")
    assert d.engine.state is FlowRunState.FAILED
    _retry(d)
    d.fail("a")
    assert d.state("a") is S.RUNNING, "the retry budget starts over: retried at once"
    assert d.run_task("a").attempt == 4
    d.succeed("a", 1)
    assert d.engine.state is FlowRunState.SUCCESS


def test_a_report_about_an_attempt_of_the_previous_run_attempt_is_refused() -> None:
    d = Driver(flow(task("a")))
    d.fail("a")
    _retry(d)
    refused = d.send(TaskFailed("a", 1, failure()))
    assert d.only_ignored(refused) and refused
    assert d.state("a") is S.RUNNING and d.attempt("a") == 2


def test_only_a_failed_or_cancelled_run_can_be_retried() -> None:
    d = Driver(flow(task("a")))
    running = _retry(d)
    assert [type(c) for c in running] == [EventIgnored]
    assert "only a FAILED or CANCELLED run" in running[0].reason  # type: ignore[attr-defined]
    d.succeed("a", 1)
    assert d.engine.state is FlowRunState.SUCCESS
    ignored = _retry(d)
    assert isinstance(ignored[0], EventIgnored) and "SUCCESS" in ignored[0].reason


def test_a_retry_that_fails_again_can_be_retried_again() -> None:
    d = Driver(flow(task("a"), task("b", "a")))
    d.succeed("a", 1)
    d.fail("b")
    _retry(d)
    d.fail("b")
    assert d.engine.state is FlowRunState.FAILED
    _retry(d)
    assert d.engine.run_attempt == 3
    d.succeed("b", 2)
    assert d.engine.state is FlowRunState.SUCCESS
    assert d.runs["b"].attempt == 3


def test_replaying_a_journal_with_a_retry_rebuilds_the_run_exactly() -> None:
    g: GraphSpec = flow(
        task("m", inputs={"x": Const([0, 1, 2])}, mapped=["x"]),
        task("total", "m"),
    )
    clock = FakeClock()
    journal: list[JournalEntry] = []
    engine = FlowRunEngine(g, clock=clock)
    live = JournaledEngine(engine, journal.append)
    live.start()
    live.handle(TaskFailed("m[1]", 1, failure()))
    for i in (0, 2):
        clock.advance(1)
        live.handle(TaskSucceeded(f"m[{i}]", 1, i))
    assert engine.state is FlowRunState.FAILED
    clock.advance(5)
    out = live.handle(RunRetried("again"))
    assert [c.run.key for c in out if isinstance(c, RunTask)] == ["m[1]"]
    engine.validate()

    rebuilt = replay(g, {}, journal, clock=clock)
    assert rebuilt.state is FlowRunState.RUNNING and rebuilt.run_attempt == 2
    for key, run in engine.runs.items():
        again = rebuilt.runs[key]
        assert (again.state, again.attempt, again.history) == (run.state, run.attempt, run.history)
    rebuilt.validate()
    finished = rebuilt.handle(TaskSucceeded("m[1]", 2, 1))
    finished += rebuilt.handle(TaskSucceeded("total", 1, 3))
    assert any(isinstance(c, FlowFinished) for c in finished)
    assert rebuilt.state is FlowRunState.SUCCESS
