"""Tracing in the control plane's run manager (in-memory exporter, no network): the
assignment carries the attempt span's context, lost workers and restarts are visible,
and with tracing off the client's context passes through untouched."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from test_run_manager import Clock, FakeDispatch, drain, pipeline, value_of

from headwater_runtime.engine import TaskLost
from headwater_runtime.server._runs import RunManager, split_task_run_id
from headwater_runtime.store import SQLiteStore
from headwater_runtime.tracing import extract

CALLER = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}


def named(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def attrs(span: ReadableSpan) -> dict[str, object]:
    return dict(span.attributes or {})


def test_assignments_carry_the_attempt_span_under_the_callers_trace(
    tmp_path: Path, span_exporter: InMemorySpanExporter
) -> None:
    store = SQLiteStore(tmp_path / "hw.db")
    dispatch = FakeDispatch()
    manager = RunManager(store, dispatch, Clock())
    manager.register_flow(pipeline.compile())
    row, _ = manager.create_run("pipeline", "", {"n": value_of(2)}, trace_context=CALLER)
    manager.flush()
    (first,) = dispatch.submitted
    carried = trace.get_current_span(extract(first.assignment.trace_context)).get_span_context()
    drain(manager, dispatch, fail_first={"scale[1]"})
    store.close()

    spans = span_exporter.get_finished_spans()
    (flow,) = named(spans, "flow pipeline")
    assert format(flow.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert flow.parent is not None and format(flow.parent.span_id, "016x") == "b7ad6b7169203331"
    assert attrs(flow)["headwater.flow_run.id"] == row.id
    assert attrs(flow)["headwater.state"] == "SUCCESS"
    # The run's stored context (what GetFlowRun returns) names its flow span.
    stored = trace.get_current_span(extract(row.trace_context)).get_span_context()
    assert stored.span_id == flow.context.span_id
    (numbers,) = named(spans, "task numbers")
    # The worker's parent is the attempt span, not the flow run's (or caller's) span.
    assert carried.span_id == numbers.context.span_id
    assert carried.trace_id == flow.context.trace_id
    assert [e.name for e in numbers.events] == ["headwater.started"]
    retried = [s for s in named(spans, "task scale") if attrs(s).get("headwater.map_index") == 1]
    assert [attrs(s)["headwater.state"] for s in retried] == ["FAILED", "SUCCESS"]
    assert all(s.parent is not None and s.parent.span_id == flow.context.span_id for s in retried)
    exception = next(e for e in retried[0].events if e.name == "exception")
    assert dict(exception.attributes or {})["exception.type"] == "builtins.OSError"


def test_a_lost_worker_ends_the_attempt_span_and_the_next_attempt_gets_its_own(
    tmp_path: Path, span_exporter: InMemorySpanExporter
) -> None:
    store = SQLiteStore(tmp_path / "hw.db")
    dispatch = FakeDispatch()
    manager = RunManager(store, dispatch, Clock())
    manager.register_flow(pipeline.compile())
    row, _ = manager.create_run("pipeline", "", {"n": value_of(1)})
    manager.flush()
    lost = dispatch.submitted.pop(0).assignment
    run_id, key = split_task_run_id(lost.token.task_run_id)
    manager.handle(run_id, TaskLost(key, lost.token.attempt))
    drain(manager, dispatch)
    store.close()

    spans = named(span_exporter.get_finished_spans(), "task numbers")
    assert [attrs(s)["headwater.attempt"] for s in spans] == [1, 2]
    assert attrs(spans[0])["headwater.state"] == "CANCELLED"
    assert [e.name for e in spans[0].events][-1] == "headwater.worker_lost"
    assert spans[0].status.status_code is StatusCode.UNSET  # not the task's fault
    assert attrs(spans[1])["headwater.state"] == "SUCCESS"
    (flow,) = named(span_exporter.get_finished_spans(), "flow pipeline")
    assert flow.parent is None  # the client sent no context: the run is a root
    assert attrs(flow)["headwater.flow_run.id"] == row.id


def test_an_attempt_given_back_is_said_so_not_lost(
    tmp_path: Path, span_exporter: InMemorySpanExporter
) -> None:
    """A worker stopping on purpose gives its attempt back: no loss, and its span says
    ``headwater.given_back`` (it read ``headwater.worker_lost``, a trial)."""
    store = SQLiteStore(tmp_path / "hw.db")
    dispatch = FakeDispatch()
    manager = RunManager(store, dispatch, Clock())
    manager.register_flow(pipeline.compile())
    manager.create_run("pipeline", "", {"n": value_of(1)})
    manager.flush()
    back = dispatch.submitted.pop(0).assignment
    run_id, key = split_task_run_id(back.token.task_run_id)
    manager.handle(run_id, TaskLost(key, back.token.attempt, "it stopped", given_back=True))
    manager.flush()
    lost = dispatch.submitted.pop(0).assignment
    manager.handle(run_id, TaskLost(key, lost.token.attempt))
    drain(manager, dispatch)
    store.close()

    spans = named(span_exporter.get_finished_spans(), "task numbers")
    assert [attrs(s)["headwater.state"] for s in spans] == ["CANCELLED", "CANCELLED", "SUCCESS"]
    assert [[e.name for e in s.events][-1] for s in spans[:2]] == [
        "headwater.given_back",
        "headwater.worker_lost",
    ]
    assert all(s.status.status_code is StatusCode.UNSET for s in spans)


def test_losing_the_worker_too_often_fails_the_run_and_its_last_attempt_is_an_error(
    tmp_path: Path, span_exporter: InMemorySpanExporter
) -> None:
    store = SQLiteStore(tmp_path / "hw.db")
    dispatch = FakeDispatch()
    manager = RunManager(store, dispatch, Clock())
    manager.register_flow(pipeline.compile())
    manager.create_run("pipeline", "", {"n": value_of(1)})
    for _ in range(4):  # the engine re-dispatches a lost attempt 3 times, then fails it
        manager.flush()
        lost = dispatch.submitted.pop(0).assignment
        run_id, key = split_task_run_id(lost.token.task_run_id)
        manager.handle(run_id, TaskLost(key, lost.token.attempt))
    manager.flush()
    store.close()

    spans = named(span_exporter.get_finished_spans(), "task numbers")
    assert [attrs(s)["headwater.attempt"] for s in spans] == [1, 2, 3, 4]
    assert all(attrs(s)["headwater.state"] == "CANCELLED" for s in spans)
    assert all(s.events[-1].name == "headwater.worker_lost" for s in spans)
    assert [s.status.status_code for s in spans] == [StatusCode.UNSET] * 3 + [StatusCode.ERROR]
    (flow,) = named(span_exporter.get_finished_spans(), "flow pipeline")
    assert attrs(flow)["headwater.state"] == "FAILED"


def test_a_restart_ends_the_flow_span_and_resumes_in_a_new_one(
    tmp_path: Path, span_exporter: InMemorySpanExporter
) -> None:
    path = tmp_path / "hw.db"
    store = SQLiteStore(path)
    dispatch = FakeDispatch()
    manager = RunManager(store, dispatch, Clock())
    manager.register_flow(pipeline.compile())
    row, _ = manager.create_run("pipeline", "", {"n": value_of(1)}, trace_context=CALLER)
    manager.flush()
    handed = dispatch.submitted[0].token  # a worker got the attempt (and it is stored)
    manager.delivered(row.id, handed[0], handed[1], "worker-a", "worker-a")
    manager.flush()
    manager.end_traces()  # what ServerCore.stop() does
    store.close()

    store = SQLiteStore(path)
    dispatch = FakeDispatch()
    manager = RunManager(store, dispatch, Clock())
    in_flight = manager.recover().held
    assert len(in_flight) == 1
    flow_run_id, task_run_id, attempt = in_flight[0]
    manager.handle(flow_run_id, TaskLost(split_task_run_id(task_run_id)[1], attempt))
    drain(manager, dispatch)
    store.close()

    spans = span_exporter.get_finished_spans()
    before, after = named(spans, "flow pipeline")
    assert attrs(before)["headwater.state"] == "RUNNING"
    assert attrs(before)["headwater.message"] == "server stopped"
    assert attrs(after)["headwater.resumed"] is True
    assert attrs(after)["headwater.state"] == "SUCCESS"
    # One trace: the resumed flow span is a child of the first process's flow span.
    assert after.parent is not None and after.parent.span_id == before.context.span_id
    numbers = named(spans, "task numbers")
    resumed = [s for s in numbers if attrs(s).get("headwater.resumed")]
    assert len(resumed) == 1 and attrs(resumed[0])["headwater.state"] == "CANCELLED"


def test_with_tracing_off_the_callers_context_passes_through(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "hw.db")
    dispatch = FakeDispatch()
    manager = RunManager(store, dispatch, Clock())
    assert manager.tracer is None
    manager.register_flow(pipeline.compile())
    manager.create_run("pipeline", "", {}, trace_context=CALLER)
    manager.flush()
    assert dict(dispatch.submitted[0].assignment.trace_context) == CALLER
    store.close()
