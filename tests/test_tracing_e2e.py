"""One trace across processes: this test's client, a `headwater server` and a
`headwater worker` subprocess each export with the real OTLP exporter to an in-test
OTLP receiver, and the spans must form one tree: client span -> flow -> task attempt
-> worker execute, including across a retry."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_helpers import Cluster, start_server, start_worker
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.grpc import GrpcInstrumentorClient
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from otlp_receiver import OTLPReceiver, ReceivedSpan

from headwater import Client
from headwater._loader import load_file
from headwater_runtime.engine import FlowRunState

pytestmark = pytest.mark.e2e

TASKS = """
import os
from pathlib import Path
from headwater import flow, task

@task(retries=1)
def flaky(x: int) -> int:
    marker = Path(os.environ["HW_TEST_DIR"]) / "flaky-failed-once"
    if not marker.exists():
        marker.write_text("x")
        raise RuntimeError("first attempt fails")
    return x + 1

@task
def double(x: int) -> int:
    return 2 * x

@flow
def traced(x: int = 1) -> int:
    return double(flaky(x))
"""


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as r:
        yield r


@pytest.fixture
def cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, receiver: OTLPReceiver
) -> Iterator[Cluster]:
    (tmp_path / "traced_tasks.py").write_text(textwrap.dedent(TASKS))
    monkeypatch.setenv("HW_TEST_DIR", str(tmp_path))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
        "HW_TEST_DIR": str(tmp_path),
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        # No timed export during the test: spans arrive only because every process
        # flushes its exporter when it stops (SIGTERM for the server and the worker).
        "OTEL_BSP_SCHEDULE_DELAY": "600000",
    }
    procs = Cluster(env)
    yield procs
    procs.stop()


def _one(spans: list[ReceivedSpan], **where: object) -> ReceivedSpan:
    found = [s for s in spans if all(_field(s, k) == v for k, v in where.items())]
    assert len(found) == 1, (where, [(s.service, s.name, s.attributes) for s in found])
    return found[0]


def _field(span: ReceivedSpan, key: str) -> object:
    if key in ("service", "name", "parent_id"):
        return getattr(span, key)
    return span.attributes.get(key.replace("__", "."))


def test_one_trace_links_client_flow_attempts_and_worker_spans(
    tmp_path: Path, cluster: Cluster, receiver: OTLPReceiver
) -> None:
    _, address = start_server(cluster, tmp_path / "hw.db")
    start_worker(cluster, address, "w1", module="traced_tasks")
    module = load_file(str(tmp_path / "traced_tasks.py"))

    # This process exports like the others, with the real OTLP exporter (a provider of
    # its own, not the global one); the gRPC instrumentation puts the current context
    # in the metadata of every call.
    provider = TracerProvider(resource=Resource({"service.name": "test-client"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=receiver.endpoint)))
    instrumentor = GrpcInstrumentorClient()
    instrumentor.instrument()
    try:
        with (
            provider.get_tracer("test").start_as_current_span("client") as client_span,
            Client(address) as client,
        ):
            run = client.run(module.traced, {"x": 1})  # type: ignore[attr-defined]
            final = client.wait(run.id)
            assert final.state is FlowRunState.SUCCESS, final.message
            assert final.result == 4
    finally:
        instrumentor.uninstrument()
        provider.shutdown()
    trace_id = format(client_span.get_span_context().trace_id, "032x")
    cluster.stop()
    for stopped in cluster.procs:  # exited on SIGTERM by themselves, not killed
        assert stopped.popen.returncode == 0, (stopped.popen.args, stopped.other[-10:])

    def complete(spans: list[ReceivedSpan]) -> bool:
        names = [s.name for s in spans]
        return (
            "flow traced" in names
            and names.count("execute flaky") == 2
            and "execute double" in names
            and "client" in names
        )

    spans = receiver.wait_for(complete, "the spans of the flow run")
    assert {s.trace_id for s in spans} == {trace_id}, "every span belongs to the client's trace"

    client = _one(spans, name="client", service="test-client")
    flow = _one(spans, name="flow traced", service="headwater-server")
    assert flow.parent_id == client.span_id
    assert flow.attributes["headwater.flow.name"] == "traced"
    assert flow.attributes["headwater.flow_run.id"] == run.id
    assert flow.attributes["headwater.state"] == "SUCCESS" and not flow.error

    # Two attempts of flaky: the first failed (ERROR, exception, retry), the second won.
    first = _one(spans, name="task flaky", headwater__attempt=1)
    second = _one(spans, name="task flaky", headwater__attempt=2)
    for attempt in (first, second):
        assert attempt.service == "headwater-server" and attempt.parent_id == flow.span_id
        assert attempt.attributes["headwater.task_run.id"] == f"{run.id}/flaky"
        assert attempt.attributes["headwater.flow_run.id"] == run.id
    assert first.attributes["headwater.state"] == "FAILED" and first.error
    exception = first.event("exception")
    assert exception is not None and exception["exception.type"] == "builtins.RuntimeError"
    assert exception["exception.message"] == "first attempt fails"
    assert "Traceback" in exception["exception.stacktrace"]
    assert first.event("headwater.retry") is not None
    assert second.attributes["headwater.state"] == "SUCCESS" and not second.error
    double = _one(spans, name="task double", parent_id=flow.span_id)
    assert double.attributes["headwater.state"] == "SUCCESS"

    # Each worker span is the child of its own attempt's span, across the process gap.
    for attempt in (first, second, double):
        task = attempt.attributes["headwater.task.name"]
        execute = _one(spans, name=f"execute {task}", parent_id=attempt.span_id)
        assert execute.service == "headwater-worker"
        assert execute.attributes["headwater.attempt"] == attempt.attributes["headwater.attempt"]
        assert execute.attributes["headwater.task_run.id"] == f"{run.id}/{task}"
        assert execute.attributes["headwater.flow_run.id"] == run.id
        assert execute.attributes["headwater.worker.name"] == "w1"
        assert execute.attributes["headwater.task_type"].endswith(task)
        assert execute.error == (attempt is first)
    failed = _one(spans, name="execute flaky", parent_id=first.span_id)
    assert (failed.event("exception") or {}).get("exception.type") == "builtins.RuntimeError"

    # The RPCs themselves carry the context in gRPC metadata (the instrumentation):
    # the server's span of CreateFlowRun is a child of the client's current span.
    rpc = _one(spans, service="headwater-server", name=_RPC)
    assert rpc.parent_id == client.span_id


_RPC = "/headwater.v1.ControlPlaneService/CreateFlowRun"


def test_headwater_run_on_a_server_is_one_trace_from_the_cli_to_the_worker(
    tmp_path: Path, cluster: Cluster, receiver: OTLPReceiver
) -> None:
    _, address = start_server(cluster, tmp_path / "hw.db")
    start_worker(cluster, address, "w1", module="traced_tasks")
    script = f"{tmp_path / 'traced_tasks.py'}:traced"
    proc = subprocess.run(
        [sys.executable, "-m", "headwater._cli", "run", script, "--server", address],
        capture_output=True,
        text=True,
        env=cluster.env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "4", proc.stderr
    cluster.stop()  # flushes the server's and the worker's spans
    for stopped in cluster.procs:  # exited on SIGTERM by themselves, not killed
        assert stopped.popen.returncode == 0, (stopped.popen.args, stopped.other[-10:])
    spans = receiver.spans
    cli = _one(spans, name="run traced", service="headwater")
    flow = _one(spans, name="flow traced", service="headwater-server")
    assert cli.parent_id == "" and flow.parent_id == cli.span_id
    attempts = [s for s in spans if s.name == "task flaky"]
    assert len(attempts) == 2 and {a.parent_id for a in attempts} == {flow.span_id}
    for attempt in attempts:
        _one(spans, name="execute flaky", parent_id=attempt.span_id, service="headwater-worker")
    assert {s.trace_id for s in spans} == {cli.trace_id}


def test_headwater_run_exports_over_otlp_http_before_it_exits(
    tmp_path: Path, receiver: OTLPReceiver
) -> None:
    script = tmp_path / "hello.py"
    script.write_text(
        "from headwater import flow, task\n\n"
        "@task\ndef greet(name: str) -> str:\n    return 'hi ' + name\n\n"
        "@flow\ndef hello(name: str = 'you') -> str:\n    return greet(name)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.http_endpoint,
        OTEL_BSP_SCHEDULE_DELAY="600000",  # only the flush at exit can deliver them
    )
    proc = subprocess.run(
        [sys.executable, "-m", "headwater._cli", "run", str(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    spans = receiver.spans  # the process has exited: everything it exported is here
    flow = _one(spans, name="flow hello", service="headwater")
    task = _one(spans, name="task greet", service="headwater")
    assert flow.parent_id == "" and task.parent_id == flow.span_id
    assert task.trace_id == flow.trace_id
    assert task.attributes["headwater.state"] == "SUCCESS"
