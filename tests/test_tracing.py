"""Tracing of embedded runs (in-memory exporter) and the OTEL_* configuration."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Sequence
from pathlib import Path

import cloudpickle
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.test.globals_test import reset_trace_globals
from opentelemetry.trace import StatusCode

from headwater import Skip, flow, task
from headwater._cli import main
from headwater._worker_tracing import execute_traced
from headwater.v1 import state_pb2, worker_pb2
from headwater_runtime.embedded import EmbeddedRun, ThreadExecutor
from headwater_runtime.execution import TaskInterrupted
from headwater_runtime.tracing import (
    TracingConfigError,
    TracingSettings,
    active_tracer,
    configure_tracing,
    in_span,
    inject,
    tracing_settings_from_env,
)


def by_name(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return sorted(
        (s for s in spans if s.name == name),
        key=lambda s: (s.attributes or {}).get("headwater.attempt", 0),
    )


def one(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    found = by_name(spans, name)
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


def attrs(span: ReadableSpan) -> dict[str, object]:
    return dict(span.attributes or {})


def event(span: ReadableSpan, name: str) -> dict[str, object] | None:
    return next((dict(e.attributes or {}) for e in span.events if e.name == name), None)


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


# ----------------------------------------------------------------- embedded runs


def test_flow_span_with_one_span_per_attempt_and_retry_events(
    span_exporter: InMemorySpanExporter,
) -> None:
    calls: list[int] = []

    @task(retries=2, retry_delay=0.01)
    def flaky(x: int) -> int:
        calls.append(x)
        if len(calls) < 3:
            raise ConnectionError(f"try {len(calls)}")
        return x

    @task
    def double(x: int) -> int:
        return 2 * x

    @flow
    def pipeline(n: int = 2) -> list[int]:
        return double.map([flaky(n), 5])

    run = pipeline.run()
    assert run.ok
    spans = span_exporter.get_finished_spans()
    root = one(spans, "flow pipeline")
    assert root.parent is None  # no caller span: a root
    assert attrs(root) == {
        "headwater.flow.name": "pipeline",
        "headwater.flow_run.id": run.id,
        "headwater.state": "SUCCESS",
    }
    assert root.status.status_code is StatusCode.UNSET

    attempts = by_name(spans, "task flaky")
    assert [attrs(s)["headwater.attempt"] for s in attempts] == [1, 2, 3]
    assert [attrs(s)["headwater.state"] for s in attempts] == ["FAILED", "FAILED", "SUCCESS"]
    for span in attempts:
        assert parent_id(span) == root.context.span_id
        assert span.context.trace_id == root.context.trace_id
        assert attrs(span)["headwater.task.name"] == "flaky"
        assert attrs(span)["headwater.task_run.id"] == f"{run.id}/flaky"
        assert attrs(span)["headwater.flow.name"] == "pipeline"
        assert attrs(span)["headwater.flow_run.id"] == run.id
    for number, span in enumerate(attempts[:2], start=1):
        assert span.status.status_code is StatusCode.ERROR
        assert event(span, "headwater.retry") == {
            "headwater.retry.delay": 0.01,
            "headwater.retry.number": number,
        }
        failure = event(span, "exception")
        assert failure is not None
        assert failure["exception.type"] == "builtins.ConnectionError"
        assert failure["exception.message"] == f"try {number}"
    assert event(attempts[2], "headwater.retry") is None

    children = by_name(spans, "task double")
    mapped = [s for s in children if "headwater.map_index" in attrs(s)]
    assert sorted(attrs(s)["headwater.map_index"] for s in mapped) == [0, 1]
    assert {attrs(s)["headwater.task_run.id"] for s in mapped} == {
        f"{run.id}/double[0]",
        f"{run.id}/double[1]",
    }
    # The mapped parent itself never runs: one span marks its expansion.
    (parent,) = [s for s in children if "headwater.map_index" not in attrs(s)]
    assert attrs(parent)["headwater.state"] == "MAPPED" and attrs(parent)["headwater.attempt"] == 0


def test_a_failure_is_an_error_with_the_exception_recorded(
    span_exporter: InMemorySpanExporter,
) -> None:
    @task
    def explode() -> int:
        raise ValueError("bad input row 7")

    @task
    def after(x: int) -> int:
        return x

    @flow
    def doomed() -> int:
        return after(explode())

    run = doomed.run()
    assert run.state.name == "FAILED"
    spans = span_exporter.get_finished_spans()
    attempt = one(spans, "task explode")
    assert attrs(attempt)["headwater.state"] == "FAILED"
    assert attempt.status.status_code is StatusCode.ERROR
    assert "bad input row 7" in (attempt.status.description or "")
    failure = event(attempt, "exception")
    assert failure is not None
    assert failure["exception.type"] == "builtins.ValueError"
    assert failure["exception.message"] == "bad input row 7"
    assert 'raise ValueError("bad input row 7")' in str(failure["exception.stacktrace"])
    # The downstream task never ran: its trigger failed, and that is visible too.
    downstream = one(spans, "task after")
    assert attrs(downstream)["headwater.state"] == "TRIGGER_FAILED"
    assert attrs(downstream)["headwater.attempt"] == 0
    assert downstream.status.status_code is StatusCode.ERROR
    root = one(spans, "flow doomed")
    assert attrs(root)["headwater.state"] == "FAILED"
    assert root.status.status_code is StatusCode.ERROR


def test_a_timed_out_attempt_is_an_error(
    span_exporter: InMemorySpanExporter,
) -> None:
    stop = threading.Event()

    @task(timeout=0.2)
    def spin() -> None:
        while not stop.is_set():  # pure Python: the interruption lands here
            pass

    @flow
    def stuck() -> None:
        return spin()

    try:
        run = stuck.run()
    finally:
        stop.set()
    assert run.state.name == "FAILED"
    spans = span_exporter.get_finished_spans()
    attempt = one(spans, "task spin")
    assert attrs(attempt)["headwater.state"] == "TIMED_OUT"
    assert attempt.status.status_code is StatusCode.ERROR
    failure = event(attempt, "exception")
    assert failure is not None and failure["exception.type"] == "headwater.TaskTimeout"


def test_a_cancelled_run_marks_the_running_attempt_and_the_runs_that_never_ran(
    span_exporter: InMemorySpanExporter,
) -> None:
    started, release = threading.Event(), threading.Event()

    @task
    def block() -> int:
        started.set()
        while not release.wait(0.01):
            pass
        return 1

    @task
    def after(x: int) -> int:
        return x

    @flow
    def f() -> int:
        return after(block())

    embedded = EmbeddedRun(f.graph(), executor=ThreadExecutor(2))
    canceller = threading.Thread(target=lambda: started.wait(60) and embedded.cancel("stop"))
    canceller.start()
    try:
        engine = embedded.run()
    finally:
        canceller.join(60)
        release.set()
    assert engine.state.name == "CANCELLED"
    spans = span_exporter.get_finished_spans()
    running = one(spans, "task block")
    assert (attrs(running)["headwater.state"], attrs(running)["headwater.attempt"]) == (
        "CANCELLED",
        1,
    )
    never = one(spans, "task after")
    assert (attrs(never)["headwater.state"], attrs(never)["headwater.attempt"]) == ("CANCELLED", 0)
    assert attrs(never)["headwater.message"] == "stop"
    for span in (running, never):  # cancelling is not an error of the task
        assert span.status.status_code is StatusCode.UNSET
    root = one(spans, "flow f")
    assert attrs(root)["headwater.state"] == "CANCELLED"
    assert root.status.status_code is StatusCode.UNSET


def test_skips_and_cache_hits_are_visible(span_exporter: InMemorySpanExporter) -> None:
    @task
    def maybe() -> int:
        raise Skip("nothing new today")

    @task
    def downstream(x: int) -> int:
        return x

    @task(cache_for=60)
    def expensive(x: int) -> int:
        return x * 100

    @flow
    def daily(x: int = 3) -> int:
        downstream(maybe())
        return expensive(x)

    assert daily.run().ok
    span_exporter.clear()
    second = daily.run()
    assert second.ok and second.result == 300
    spans = span_exporter.get_finished_spans()

    skipped = one(spans, "task maybe")
    assert attrs(skipped)["headwater.state"] == "SKIPPED"
    assert attrs(skipped)["headwater.attempt"] == 1  # it ran, and asked to be skipped
    assert skipped.status.status_code is StatusCode.UNSET
    propagated = one(spans, "task downstream")
    assert attrs(propagated)["headwater.state"] == "SKIPPED"
    assert attrs(propagated)["headwater.attempt"] == 0  # never ran

    cached = one(spans, "task expensive")
    assert attrs(cached)["headwater.state"] == "CACHED"
    assert attrs(cached)["headwater.cache_hit"] is True
    assert attrs(cached)["headwater.attempt"] == 0
    hit = event(cached, "headwater.cache_hit")
    assert hit is not None and hit["headwater.cache_key"] == attrs(cached)["headwater.cache_key"]


def test_a_run_inside_a_user_span_is_its_child_and_task_spans_nest_under_attempts(
    span_exporter: InMemorySpanExporter,
) -> None:
    tracer = trace.get_tracer("user-code")

    @task
    def step() -> str:
        with tracer.start_as_current_span("inside the task"):
            return "done"

    @flow
    def nested() -> str:
        return step()

    with tracer.start_as_current_span("notebook cell") as cell:
        assert nested() == "done"
    spans = span_exporter.get_finished_spans()
    root = one(spans, "flow nested")
    assert parent_id(root) == cell.get_span_context().span_id
    assert root.context.trace_id == cell.get_span_context().trace_id
    attempt = one(spans, "task step")
    inner = one(spans, "inside the task")
    assert parent_id(inner) == attempt.context.span_id


def test_a_traced_caller_survives_pickling_for_executors_in_other_processes(
    span_exporter: InMemorySpanExporter,
) -> None:
    tracer = trace.get_tracer("test")

    def body(inputs: dict[str, int]) -> int:
        with trace.get_tracer("task").start_as_current_span("task body"):
            return inputs["x"] + 1

    with tracer.start_as_current_span("attempt") as attempt:
        wrapped = in_span(body, attempt)
    shipped = cloudpickle.loads(cloudpickle.dumps(wrapped))
    assert shipped({"x": 1}) == 2
    inner = one(span_exporter.get_finished_spans(), "task body")
    assert parent_id(inner) == attempt.get_span_context().span_id
    assert inner.context.trace_id == attempt.get_span_context().trace_id


def test_no_tracer_without_a_real_provider() -> None:
    reset_trace_globals()
    assert active_tracer() is None  # the default proxy provider: tracing is off
    assert configure_tracing(TracingSettings()).provider is None
    assert trace.get_tracer_provider().__class__ is trace.ProxyTracerProvider


def test_an_sdk_provider_disabled_by_otel_sdk_disabled_means_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    reset_trace_globals()
    trace.set_tracer_provider(TracerProvider())
    try:
        assert active_tracer() is None
    finally:
        reset_trace_globals()


# ------------------------------------------------------------------------ worker


def _assignment(task_name: str, map_index: int, parent: dict[str, str]) -> worker_pb2.Assignment:
    return worker_pb2.Assignment(
        token=worker_pb2.FencingToken(task_run_id=f"run1/{task_name}", attempt=2),
        flow_run_id="run1",
        task_type="mod.double",
        task_name=task_name,
        map_index=map_index,
        trace_context=parent,
    )


def test_the_worker_span_is_a_child_of_the_assignments_context_and_records_failures(
    span_exporter: InMemorySpanExporter,
) -> None:
    with trace.get_tracer("server").start_as_current_span("task double") as attempt:
        parent = inject()
    assignment = _assignment("double[3]", 3, parent)
    boom = state_pb2.Failure(type="builtins.KeyError", message="'x'", stack_trace="Traceback")
    failed = worker_pb2.ConnectRequest(
        failure=worker_pb2.TaskFailure(token=assignment.token, failure=boom)
    )
    tracer = trace.get_tracer("worker")
    assert execute_traced(tracer, assignment, "w1", lambda: failed) is failed
    span = one(span_exporter.get_finished_spans(), "execute double")
    assert parent_id(span) == attempt.get_span_context().span_id
    assert span.context.trace_id == attempt.get_span_context().trace_id
    assert attrs(span) == {
        "headwater.task.name": "double",  # not "double[3]": the index is an attribute
        "headwater.task_type": "mod.double",
        "headwater.task_run.id": "run1/double[3]",
        "headwater.attempt": 2,
        "headwater.flow_run.id": "run1",
        "headwater.worker.name": "w1",
        "headwater.map_index": 3,
    }
    assert span.status.status_code is StatusCode.ERROR
    assert event(span, "exception") == {
        "exception.type": "builtins.KeyError",
        "exception.message": "'x'",
        "exception.stacktrace": "Traceback",
    }


def test_an_interrupted_worker_attempt_still_ends_its_span(
    span_exporter: InMemorySpanExporter,
) -> None:
    def interrupted() -> worker_pb2.ConnectRequest:
        raise TaskInterrupted

    with pytest.raises(TaskInterrupted):
        execute_traced(trace.get_tracer("w"), _assignment("slow", -1, {}), "w1", interrupted)
    span = one(span_exporter.get_finished_spans(), "execute slow")
    assert span.parent is None  # an assignment without context: a root
    assert [e.name for e in span.events] == ["headwater.interrupted"]
    assert "headwater.map_index" not in attrs(span)


# ------------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    ("env", "service"),
    [
        ({}, "headwater-worker"),  # the entry point's default
        ({"OTEL_SERVICE_NAME": "etl-workers"}, "etl-workers"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs,team=data"}, "from-attrs"),
    ],
)
def test_configure_installs_a_provider_and_the_resource_follows_the_environment(
    env: dict[str, str], service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reset_trace_globals()
    tracing = configure_tracing(
        TracingSettings(exporters=("console",), service_name="headwater-worker")
    )
    try:
        assert tracing.provider is trace.get_tracer_provider()
        assert tracing.provider.resource.attributes["service.name"] == service
        assert active_tracer() is not None
        assert len(tracing.instrumentors) == 2  # gRPC client and aio server
    finally:
        tracing.shutdown()
        reset_trace_globals()
    assert tracing.provider is None and tracing.instrumentors == []


def test_configure_keeps_a_provider_the_process_already_has() -> None:
    reset_trace_globals()
    mine = TracerProvider()
    trace.set_tracer_provider(mine)
    tracing = configure_tracing(TracingSettings(exporters=("otlp",)))
    try:
        assert trace.get_tracer_provider() is mine
        assert tracing.provider is None  # not ours to shut down
    finally:
        tracing.shutdown()
        reset_trace_globals()


@pytest.mark.parametrize(
    ("env", "exporters", "protocol", "active"),
    [
        ({}, (), "grpc", False),
        ({"OTEL_TRACES_EXPORTER": "none"}, (), "grpc", False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ("otlp",), "grpc", True),
        ({"OTEL_TRACES_EXPORTER": " OTLP , console "}, ("otlp", "console"), "grpc", True),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
            ("otlp",),
            "http/protobuf",
            True,
        ),
        (
            {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
            },
            ("otlp",),
            "grpc",
            True,
        ),
        (
            {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "TRUE"},
            ("console",),
            "grpc",
            False,
        ),
    ],
)
def test_settings_follow_the_standard_variables(
    env: dict[str, str], exporters: tuple[str, ...], protocol: str, active: bool
) -> None:
    settings = tracing_settings_from_env(env, service_name="svc")
    assert (settings.exporters, settings.protocol, settings.active) == (exporters, protocol, active)
    assert settings.service_name == "svc"


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "unsupported exporter 'zipkin'"),
        ({"OTEL_TRACES_EXPORTER": "none,otlp"}, "'none' cannot be combined"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
            "^OTEL_EXPORTER_OTLP_PROTOCOL: unsupported protocol 'http/json'",
        ),
        (  # (the general variable was named, though only this one was set: a user trial)
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "foo"},
            "^OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: unsupported protocol 'foo'",
        ),
    ],
)
def test_bad_settings_are_one_clear_line(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(TracingConfigError, match=fragment):
        tracing_settings_from_env(env)


@pytest.mark.parametrize("command", ["run", "worker", "server"])
def test_every_command_refuses_an_unknown_exporter_with_exit_2(
    command: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    script = tmp_path / "f.py"
    script.write_text("from headwater import flow\n@flow\ndef f() -> int:\n    return 1\n")
    argv = {
        "run": ["run", str(script)],
        "worker": ["worker", "--server", "127.0.0.1:1", "--module", str(script)],
        "server": ["server", "--port", "0", "--db", str(tmp_path / "hw.db")],
    }[command]
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "jaeger")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "headwater: error: OTEL_TRACES_EXPORTER: unsupported exporter 'jaeger' "
        "(Headwater supports otlp, console or none)"
    ]
    assert not (tmp_path / "hw.db").exists()  # refused before doing anything


def test_headwater_run_exports_to_the_console_on_stderr_and_flushes_at_exit(
    tmp_path: Path,
) -> None:
    script = tmp_path / "hello.py"
    script.write_text(
        textwrap.dedent(
            """
            from headwater import flow, task

            @task
            def greet(name: str) -> str:
                return f"hello {name}"

            @flow
            def hello(name: str = "world") -> str:
                return greet(name)
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(OTEL_TRACES_EXPORTER="console", OTEL_SERVICE_NAME="my-notebook")
    # The batch processor would wait 10 minutes: only the shutdown at exit exports.
    env["OTEL_BSP_SCHEDULE_DELAY"] = "600000"
    proc = subprocess.run(
        [sys.executable, "-m", "headwater._cli", "run", str(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == '"hello world"'  # stdout stays the result only
    assert '"name": "flow hello"' in proc.stderr
    assert '"name": "task greet"' in proc.stderr
    assert '"service.name": "my-notebook"' in proc.stderr


def test_a_cli_span_says_when_its_run_did_not_succeed(span_exporter: InMemorySpanExporter) -> None:
    """`headwater run --server`'s own span was UNSET for a FAILED run (a user trial):
    the command marks it failed; a span it does not mark stays UNSET, as a good one."""
    from headwater_runtime.tracing import cli_span

    with cli_span("run good"):
        pass
    with cli_span("run bad") as failed:
        failed("flow run FAILED")
    spans = span_exporter.get_finished_spans()
    assert one(spans, "run good").status.status_code is StatusCode.UNSET
    bad = one(spans, "run bad").status
    assert (bad.status_code, bad.description) == (StatusCode.ERROR, "flow run FAILED")
