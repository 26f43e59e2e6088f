"""Subflows and flows started by tasks, embedded (docs/flows.md, "Subflows").

A flow called inside a flow body is a node of the parent graph that runs as a child
flow run; a flow called inside a task body while it runs is a child of that task run.
Retries, timeouts and triggers apply to a subflow node as to a task; a cancelled or
timed-out parent attempt cancels its children.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from _backends import StoppedClock

from headwater import FlowDefinitionError, FlowRunFailed, ParameterError, flow, task
from headwater.wire import SUBFLOW_TASK_TYPE, FlowRunState, TaskRunState
from headwater_runtime.embedded import SystemClock

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


@task
def add(x: int, y: int) -> int:
    return x + y


@task
def double(x: int) -> int:
    return 2 * x


@flow
def child(x: int, y: int = 1) -> int:
    return double(add(x, y))


@flow
def squares(n: int) -> list[int]:
    """Value-dependent: one task per element, decided by the value of n."""
    return [double(i) for i in range(n)]


@task
def sum_squares(n: int) -> int:
    # Data-dependent structure: the flow's shape depends on this task's input.
    return sum(squares(n))


@flow
def parent(a: int = 3) -> dict[str, int]:
    first = child(a)
    second = child(first, y=10)
    third = sum_squares(first)
    return {"first": first, "second": second, "third": third}


def test_subflows_and_a_run_time_flow_run_as_linked_child_runs() -> None:
    run = parent.run(a=3)
    assert run.state is FlowRunState.SUCCESS
    assert run.result == {"first": 8, "second": 36, "third": sum(2 * i for i in range(8))}
    assert {k: r.state for k, r in run.task_runs.items()} == {
        "child": TaskRunState.SUCCESS,
        "child-2": TaskRunState.SUCCESS,
        "sum_squares": TaskRunState.SUCCESS,
    }
    # In the order they started: child-2 and sum_squares both wait for child only,
    # so either may start first.
    by_task = {c.parent_task_run: c for c in run.children}
    assert len(by_task) == len(run.children) == 3
    assert run.children[0].parent_task_run == "child"
    assert {k: c.flow_name for k, c in by_task.items()} == {
        "child": "child",
        "child-2": "child",
        "sum_squares": "squares",
    }
    for c in run.children:
        assert c.parent_id == run.id and c.state is FlowRunState.SUCCESS
    first, second, runtime = by_task["child"], by_task["child-2"], by_task["sum_squares"]
    assert first.result == 8 and second.result == 36
    assert set(first.task_runs) == {"add", "double"}
    assert len(runtime.task_runs) == 8  # squares' graph for n=8
    assert run.child_runs("sum_squares") == [runtime]


def test_the_parent_graph_has_a_node_per_subflow_call() -> None:
    graph = parent.graph()
    nodes = {t.id: t for t in graph.tasks}
    assert nodes["child"].task_type == SUBFLOW_TASK_TYPE
    assert nodes["child"].subflow is not None and nodes["child"].subflow.flow_name == "child"
    assert nodes["child-2"].inputs["x"].task_id == "child"  # type: ignore[union-attr]
    assert nodes["sum_squares"].subflow is None
    message = parent.compile()
    assert [t.subflow.flow_name for t in message.tasks if t.HasField("subflow")] == [
        "child",
        "child",
    ]


def test_calling_a_flow_at_top_level_inside_a_task_still_returns_its_result() -> None:
    assert sum_squares.fn(3) == 0 + 2 + 4  # no host: a plain embedded run


ATTEMPTS: dict[str, int] = {}


@task
def flaky(label: str) -> str:
    ATTEMPTS[label] = ATTEMPTS.get(label, 0) + 1
    if ATTEMPTS[label] == 1:
        raise RuntimeError("first attempt fails")
    return label


@flow
def wobbly(label: str) -> str:
    return flaky(label)


@flow
def retried(label: str = "r") -> str:
    return wobbly.with_options(retries=1)(label)


def test_a_subflow_node_is_retried_with_a_new_child_run() -> None:
    ATTEMPTS.clear()
    run = retried.run()
    assert run.state is FlowRunState.SUCCESS and run.result == "r"
    node = run.task_run("wobbly")
    assert node.attempt == 2
    assert node.states == [
        TaskRunState.PENDING,
        TaskRunState.SCHEDULED,
        TaskRunState.RUNNING,
        TaskRunState.RETRYING,
        TaskRunState.SCHEDULED,
        TaskRunState.RUNNING,
        TaskRunState.SUCCESS,
    ]
    failure = node.attempts[0].failure
    assert failure is not None and failure.type == "headwater.SubflowFailed"
    # Why the child failed, without opening the child run: its first failed task.
    assert failure.message.endswith(
        "ended FAILED: flaky: FAILED (RuntimeError: first attempt fails)"
    )
    assert failure.cause is not None and failure.cause.type == "builtins.RuntimeError"
    assert [c.state for c in run.child_runs("wobbly")] == [
        FlowRunState.FAILED,
        FlowRunState.SUCCESS,
    ]


@task
def refuse(label: str) -> str:
    raise ValueError(f"bad source {label}")


@flow
def failing_child(label: str) -> str:
    return refuse(label)


@flow
def failing_parent() -> str:
    return failing_child("s3")


def test_a_failed_subflow_fails_its_parent_from_the_childs_original_exception() -> None:
    """``flow()`` raises FlowRunFailed chained to the first original exception: for a
    failed subflow, the exception of the child's first failed task (the node's own
    failure has none: its cause is that task's failure)."""
    with pytest.raises(FlowRunFailed) as info:
        failing_parent()
    cause = info.value.__cause__
    assert isinstance(cause, ValueError) and str(cause) == "bad source s3"


def test_a_child_run_is_retried_through_its_parent_not_alone() -> None:
    """A child run's outcome is its parent's task run's: retried alone it ended SUCCESS
    while the parent kept the task run FAILED (as RetryFlowRun did on a server, a
    hostile trial); the parent's retry runs it again."""
    run = failing_parent.run()
    (child,) = run.children
    assert (run.state, child.state) == (FlowRunState.FAILED, FlowRunState.FAILED)
    with pytest.raises(RuntimeError) as refused:
        child.retry()
    assert str(refused.value) == (
        f"cannot retry flow run {child.id}: it is a child of flow run {run.id} (its task "
        "run 'failing_child'), which its outcome belongs to: retry that run, which runs "
        "the child again"
    )
    assert run.task_run("failing_child").state is TaskRunState.FAILED


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()  # release whatever still waits, so no thread outlives the test


GATES: list[threading.Event] = []


@task
def wait_for_gate() -> str:
    GATES[-1].wait()
    return "released"


@flow
def blocked() -> str:
    return wait_for_gate()


@flow
def impatient() -> str:
    return blocked.with_options(timeout=0.2)()


def test_a_timed_out_subflow_node_cancels_its_child(gate: threading.Event) -> None:
    GATES.append(gate)
    run = impatient.run()
    assert run.state is FlowRunState.FAILED
    node = run.task_run("blocked")
    assert node.state is TaskRunState.TIMED_OUT
    assert node.failure is not None and node.failure.timed_out, node.failure
    assert node.failure.type == "headwater.TaskTimeout"
    (only,) = run.children
    assert only.state is FlowRunState.CANCELLED
    assert only.task_run("wait_for_gate").state is TaskRunState.CANCELLED
    assert "timed out" in only.message


CLOCKS: list[StoppedClock] = []


@task
def overstays(after: int) -> str:
    """Runs past the flow's deadline (the test's clock jumps over it) until the gate
    opens; once it is open, returns at once."""
    if not GATES[-1].is_set():
        CLOCKS[-1].advance(1.0)
    GATES[-1].wait()
    return "released"


@flow(timeout=0.2)
def hurried() -> list[Any]:
    doubled = double(1)
    return [doubled, overstays(doubled)]


def test_a_top_level_run_over_its_flows_timeout_is_stopped_and_fails(
    gate: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``@flow(timeout=...)`` also bounds a top-level run (each run attempt): at the
    deadline what is unfinished is cancelled and the run fails, saying why; a retry
    gets the whole timeout again.

    The deadline passes on a stopped clock, moved by ``overstays`` once it runs: so
    ``double`` (its input) has ended before it, and the retried attempt is never cut
    off, however slowly a loaded machine runs them (a real 0.2 s was not enough)."""
    GATES.append(gate)
    CLOCKS.append(StoppedClock())
    monkeypatch.setattr(SystemClock, "now", CLOCKS[-1].now)
    with pytest.raises(FlowRunFailed) as raised:
        hurried()
    assert str(raised.value) == (
        "flow run of 'hurried' ended FAILED: the flow run exceeded its timeout of 0.2s "
        "(overstays CANCELLED)"
    )
    run = hurried.run()
    assert run.state is FlowRunState.FAILED
    assert run.message == "the flow run exceeded its timeout of 0.2s"
    assert run.task_run("double").state is TaskRunState.SUCCESS
    assert run.task_run("overstays").state is TaskRunState.CANCELLED
    # The retried attempt is released at once. It ends SUCCESS on a clock already
    # past the first attempt's deadline: its timeout counts from the retry.
    gate.set()
    again = run.retry()
    assert again.state is FlowRunState.SUCCESS and again.result == [2, "released"]
    assert again.attempt == 2


@task(timeout=0.2)
def starts_blocked() -> str:
    return blocked()


@flow
def runtime_timeout() -> str:
    return starts_blocked()


def test_a_flow_started_by_a_task_is_cancelled_when_the_task_times_out(
    gate: threading.Event,
) -> None:
    GATES.append(gate)
    run = runtime_timeout.run()
    assert run.task_run("starts_blocked").state is TaskRunState.TIMED_OUT
    (only,) = run.children
    assert only.parent_task_run == "starts_blocked"
    assert only.state is FlowRunState.CANCELLED


@task
def boom() -> int:
    raise ValueError("boom")


@flow(trigger="all_finished")
def cleanup(x: int = 1) -> int:
    return double(x)


@flow
def with_cleanup() -> Any:
    failed = boom()
    return cleanup(wait_for=[failed])


def test_a_subflow_node_follows_its_trigger() -> None:
    run = with_cleanup.run()
    assert run.task_run("boom").state is TaskRunState.FAILED
    assert run.task_run("cleanup").state is TaskRunState.SUCCESS
    assert [(c.flow_name, c.result) for c in run.children] == [("cleanup", 2)]


@flow
def skipped_downstream() -> Any:
    return child(boom())


def test_a_subflow_node_after_a_failure_is_trigger_failed_and_never_starts() -> None:
    run = skipped_downstream.run()
    assert run.task_run("child").state is TaskRunState.TRIGGER_FAILED
    assert run.children == []


def test_a_misspelled_flow_option_is_refused_naming_the_flow_and_its_options() -> None:
    with pytest.raises(
        FlowDefinitionError,
        match=r"^flow 'myflow': unknown option\(s\) \['retires'\]; known: backoff, .*name, "
        r"retries, .*version$",
    ):

        @flow(retires=2)  # type: ignore[call-overload]
        def myflow() -> None:
            pass

    with pytest.raises(
        FlowDefinitionError, match=r"^flow 'child': unknown option\(s\) \['tries'\]"
    ):
        child.with_options(tries=1)  # type: ignore[call-arg]
    # A bad value of a known option names the flow too (it said "task 'child'").
    with pytest.raises(TypeError, match=r"^flow 'child': timeout must be a number of seconds"):
        child.with_options(timeout="10")  # type: ignore[arg-type]


def test_subflow_calls_are_checked_when_the_parent_is_built() -> None:
    @flow
    def missing() -> Any:
        return child()  # type: ignore[call-arg]

    with pytest.raises(FlowDefinitionError, match=r"subflow 'child' is missing .*'x'"):
        missing.graph()

    @flow
    def wrong_type() -> Any:
        return child("three")  # type: ignore[arg-type]

    with pytest.raises(ParameterError, match=r"parameter 'x' expects int, got 'three'"):
        wrong_type.graph()

    @flow
    def converted() -> Any:
        return child("3")  # type: ignore[arg-type]

    assert converted() == 8  # "3" converted to 3 when the parent was built

    @flow
    def uses_run() -> Any:
        return child.run(1)

    with pytest.raises(FlowDefinitionError, match=r"call it \(child\(\.\.\.\)\)"):
        uses_run.graph()


@flow
def from_a_result(a: int = 2) -> list[int]:
    # The child's graph depends on a value known only at run time (a task's result).
    return squares(add(a, 1))


def test_a_value_dependent_subflow_gets_the_graph_for_its_run_time_inputs() -> None:
    run = from_a_result.run()
    assert run.result == [0, 2, 4]
    (only,) = run.children
    assert set(only.task_runs) == {"double", "double-2", "double-3"}


def test_child_flow_spans_nest_under_the_parent_task_spans(
    span_exporter: InMemorySpanExporter,
) -> None:
    run = parent.run(a=1)
    assert run.state is FlowRunState.SUCCESS
    spans = span_exporter.get_finished_spans()
    by_id = {s.context.span_id: s for s in spans}

    def parent_of(span: Any) -> Any:
        return by_id.get(span.parent.span_id) if span.parent is not None else None

    flows = {s.attributes["headwater.flow_run.id"]: s for s in spans if s.name.startswith("flow ")}
    top = flows[run.id]
    assert top.parent is None or top.parent.span_id not in by_id
    for c in run.children:
        span = flows[c.id]
        task_span = parent_of(span)
        assert task_span is not None, span.name
        assert task_span.name == f"task {c.parent_task_run.split('-')[0]}"
        assert task_span.attributes["headwater.task_run.id"] == f"{run.id}/{c.parent_task_run}"
        assert parent_of(task_span) is top
