"""One trace across processes: this test's client, a `headwater server`, a
`headwater worker` and (for the polyglot flow) a Node.js worker subprocess each export
with the real OTLP exporter to an in-test OTLP receiver, and the spans must form one
tree: client span -> flow -> task attempt -> worker execute, including across a retry."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest
from e2e_helpers import Cluster, node_worker_args, start_server, start_worker
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.grpc import GrpcInstrumentorClient
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span
from otlp_receiver import OTLPReceiver, ReceivedSpan

from headwater import Client
from headwater._loader import load_file
from headwater.wire import FlowRunState

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


@contextmanager
def client_span(receiver: OTLPReceiver) -> Iterator[Span]:
    """A "client" span of service ``test-client``, current while the block runs.

    This process exports like the others, with the real OTLP exporter (a provider of
    its own, not the global one), flushed when the block ends; the gRPC instrumentation
    puts the current context in the metadata of every call."""
    provider = TracerProvider(resource=Resource({"service.name": "test-client"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=receiver.endpoint)))
    instrumentor = GrpcInstrumentorClient()
    instrumentor.instrument()
    try:
        with provider.get_tracer("test").start_as_current_span("client") as span:
            yield span
    finally:
        instrumentor.uninstrument()
        provider.shutdown()


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

    with client_span(receiver) as span, Client(address) as client:
        run = client.run(module.traced, {"x": 1})  # type: ignore[attr-defined]
        final = client.wait(run.id)
        assert final.state is FlowRunState.SUCCESS, final.message
        assert final.result == 4
    trace_id = format(span.get_span_context().trace_id, "032x")
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


POLYGLOT = """
from headwater import flow, remote_task, task, unmapped

scale = remote_task("math.scale")
flaky = remote_task("flaky.once", retries=1)  # the Node handler fails on attempt 1

@task
def numbers(n: int) -> list[int]:
    return list(range(n))

@task
def total(scaled: list, retried: dict) -> int:
    return sum(scaled) + retried["value"]

@flow
def polyglot(n: int = 3) -> int:
    scaled = scale.map(x=numbers(n), factor=unmapped(10))
    return total(scaled, flaky(value=n))
"""

#: Each process's own OTEL_SERVICE_NAME.
SERVICES = {"server": "hw-server", "python": "hw-python-worker", "node": "hw-node-worker"}


def test_one_trace_across_the_server_a_python_and_a_node_worker(
    tmp_path: Path, cluster: Cluster, receiver: OTLPReceiver
) -> None:
    """Python -> Node (mapped) -> Python, with a Node step that fails once: every
    process's spans form one tree, each worker span under its own attempt span."""
    (tmp_path / "polyglot_traced.py").write_text(textwrap.dedent(POLYGLOT))
    named = {key: {"OTEL_SERVICE_NAME": name} for key, name in SERVICES.items()}
    _, address = start_server(partial(cluster, env=named["server"]), tmp_path / "hw.db")
    start_worker(partial(cluster, env=named["python"]), address, "py", module="polyglot_traced")
    node = cluster.spawn(node_worker_args(address, "js"), "stderr", named["node"])
    node.wait_line("connected to")
    module = load_file(str(tmp_path / "polyglot_traced.py"))

    with client_span(receiver) as span, Client(address) as client:
        run = client.run(module.polyglot, {"n": 3})  # type: ignore[attr-defined]
        final = client.wait(run.id)
    assert final.state is FlowRunState.SUCCESS, final.message
    assert final.result == (0 + 10 + 20) + 3
    # OTEL_BSP_SCHEDULE_DELAY is ten minutes: nothing of the Node worker's is exported
    # yet; what follows arrives only because SIGTERM makes it flush before it exits.
    assert not [s for s in receiver.spans if s.service == SERVICES["node"]]
    cluster.stop()
    for stopped in cluster.procs:  # exited on SIGTERM by themselves, not killed
        assert stopped.popen.returncode == 0, (stopped.popen.args, stopped.other[-10:])

    def complete(spans: list[ReceivedSpan]) -> bool:
        names = [s.name for s in spans]
        return (
            "client" in names
            and "flow polyglot" in names
            and names.count("execute math.scale") == 3
            and names.count("execute flaky.once") == 2
            and names.count("execute numbers") == 1
            and names.count("execute total") == 1
        )

    spans = receiver.wait_for(complete, "the spans of the polyglot run")
    trace_id = format(span.get_span_context().trace_id, "032x")
    assert {s.trace_id for s in spans} == {trace_id}, "every span belongs to the client's trace"
    assert {s.service for s in spans} == {"test-client", *SERVICES.values()}

    client = _one(spans, name="client", service="test-client")
    flow = _one(spans, name="flow polyglot", service=SERVICES["server"])
    assert flow.parent_id == client.span_id and not flow.error

    # Every attempt span is the flow's child; every execute span is the child of the
    # attempt span of the same task run and attempt, in the worker that ran it.
    attempts = [s for s in spans if s.name.startswith("task ") and s.attributes[ATTEMPT] > 0]
    executes = [s for s in spans if s.name.startswith("execute ")]
    assert {a.parent_id for a in attempts} == {flow.span_id}
    assert sorted(_attempt_key(a) for a in attempts) == sorted(_attempt_key(e) for e in executes)
    by_span_id = {a.span_id: a for a in attempts}
    for execute in executes:
        attempt = by_span_id[execute.parent_id]
        assert _attempt_key(execute) == _attempt_key(attempt), execute
        assert execute.name == "execute " + attempt.attributes["headwater.task.name"]
        assert execute.error == attempt.error
        node_task = execute.attributes["headwater.task_type"] in ("math.scale", "flaky.once")
        assert execute.service == SERVICES["node" if node_task else "python"], execute
        assert execute.attributes["headwater.worker.name"] == ("js" if node_task else "py")

    # The mapped Node children: one low-cardinality name, the index as an attribute.
    mapped = sorted(
        (s for s in executes if s.name == "execute math.scale"),
        key=lambda s: int(s.attributes["headwater.map_index"]),
    )
    assert [s.attributes["headwater.map_index"] for s in mapped] == [0, 1, 2]
    assert [s.attributes["headwater.task_run.id"] for s in mapped] == [
        f"{run.id}/math.scale[{i}]" for i in range(3)
    ]

    # The Node step failed on attempt 1 (ERROR + exception, on both sides) and was retried.
    failed = _one(spans, name="execute flaky.once", headwater__attempt=1)
    assert failed.error and failed.service == SERVICES["node"]
    exception = failed.event("exception")
    assert exception is not None and exception["exception.type"] == "TransientError"
    assert exception["exception.message"] == "transient failure on attempt 1"
    first = by_span_id[failed.parent_id]
    assert first.attributes["headwater.state"] == "FAILED" and first.error
    assert first.event("headwater.retry") is not None
    retried = _one(spans, name="execute flaky.once", headwater__attempt=2)
    assert not retried.error and by_span_id[retried.parent_id].attributes[STATE] == "SUCCESS"


ATTEMPT = "headwater.attempt"
STATE = "headwater.state"


def _attempt_key(span: ReceivedSpan) -> tuple[str, int]:
    return span.attributes["headwater.task_run.id"], int(span.attributes[ATTEMPT])


NESTED = """
from headwater import flow, task

@task
def double(x: int) -> int:
    return 2 * x

@flow
def inner(x: int) -> int:
    return double(x)

@task
def calls_inner(x: int) -> int:
    return inner(x) + 1

@flow
def nested(x: int = 1) -> list:
    return [inner(x), calls_inner(x)]
"""


def test_child_flow_runs_are_spans_under_the_parents_task_spans(
    tmp_path: Path, cluster: Cluster, receiver: OTLPReceiver
) -> None:
    """A subflow's flow span is the child of its node's task span (server); a flow a
    task starts is the child of the worker's execute span of that task."""
    (tmp_path / "nested_traced.py").write_text(textwrap.dedent(NESTED))
    _, address = start_server(cluster, tmp_path / "hw.db")
    start_worker(cluster, address, "w1", module="nested_traced")
    module = load_file(str(tmp_path / "nested_traced.py"))
    with client_span(receiver), Client(address) as client:
        run = client.run(module.nested, {"x": 2})  # type: ignore[attr-defined]
        final = client.wait(run.id)
    assert final.state is FlowRunState.SUCCESS, final.message
    assert final.result == [4, 5]
    cluster.stop()

    def complete(spans: list[ReceivedSpan]) -> bool:
        names = [s.name for s in spans]
        return names.count("flow inner") == 2 and names.count("execute double") == 2

    spans = receiver.wait_for(complete, "the spans of the nested runs")
    assert len({s.trace_id for s in spans}) == 1
    parent = _one(spans, name="flow nested", service="headwater-server")
    node = _one(spans, name="task inner", parent_id=parent.span_id)
    assert node.attributes["headwater.task_run.id"] == f"{run.id}/inner"
    subflow = _one(spans, name="flow inner", parent_id=node.span_id)
    assert subflow.service == "headwater-server" and not subflow.error
    caller = _one(spans, name="task calls_inner", parent_id=parent.span_id)
    execute = _one(spans, name="execute calls_inner", parent_id=caller.span_id)
    started = _one(spans, name="flow inner", parent_id=execute.span_id)
    assert started.service == "headwater-server"
    for child in (subflow, started):
        task = _one(spans, name="task double", parent_id=child.span_id)
        _one(spans, name="execute double", parent_id=task.span_id, service="headwater-worker")
