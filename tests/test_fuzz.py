"""A Hypothesis-driven fuzz of every RPC: malformed and hostile messages against an
in-process server, with 0 crashes, 0 hangs and 0 UNKNOWN status codes.

Every method of ControlPlaneService, OperationsService, AccessService and
PayloadService, and the worker stream of WorkerGatewayService, gets:

* raw bytes that are not its request message (garbage, truncated fields, invalid
  UTF-8, nesting deeper than protobuf's 100 levels);
* well-formed messages built from the method's own descriptor with hostile values:
  ids of things that exist and of things that do not, task run ids of attempts
  another worker session holds, "/" and "x[0]" in names, extreme integers, NaN and
  infinite numbers, huge declared sizes and negative offsets, several members of a
  oneof, deep nesting and 10,000-element lists.

A call may be refused with any status a client can act on; it may not end UNKNOWN or
INTERNAL (a bug), DEADLINE_EXCEEDED (a hang) or UNAVAILABLE (a crash), nothing may be
logged at ERROR, and the server must answer GetServerInfo after every example. An
attempt held by another worker session stays held by it whatever the fuzzed
sessions send. Derandomized (the same examples every run) and bounded; it prints how
many calls each RPC got and which status codes came back.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pg_cluster import STORES, database_for
from test_run_manager import FUNCTIONS, value_of
from test_server_protocol import proto_pipeline

from headwater.v1 import (
    access_pb2,
    control_plane_pb2_grpc,
    graph_pb2,
    operations_pb2,
    payload_pb2,
    payload_pb2_grpc,
    state_pb2,
    worker_pb2,
)
from headwater.v1 import control_plane_pb2 as cp
from headwater.wire import LENGTH_KEY, FlowRunState, Limits
from headwater_runtime.server._app import RunningServer, start_server
from headwater_runtime.server._core import ServerSettings

pytestmark = [
    pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies"),
    pytest.mark.timeout(300),
]

#: Statuses that mean a bug (UNKNOWN, INTERNAL), a hang or a crash.
FORBIDDEN = {
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS,
}
CALL_TIMEOUT = 20.0
CONTROL = "/headwater.v1.ControlPlaneService"
GATEWAY = "/headwater.v1.WorkerGatewayService"
PAYLOAD = "/headwater.v1.PayloadService"
RAW = {"request_serializer": None, "response_deserializer": None}
#: The same examples every run, few enough for `make test` on a busy machine.
FUZZ = settings(
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class Served:
    """An in-process server on its own event loop thread, with what the fuzz needs to
    know about it: ids that exist, and attempts a worker session holds."""

    def __init__(self, db: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        settings_ = ServerSettings(
            port=0,
            db=db,
            heartbeat_interval=0.5,
            heartbeat_timeout=3600.0,
            limits=Limits(max_map_width=1_000),
        )
        self.running: RunningServer = self._call(start_server(settings_))
        self.address = f"127.0.0.1:{self.running.port}"
        self.channel = grpc.insecure_channel(
            self.address, options=[("grpc.max_receive_message_length", -1)]
        )
        self.calls: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()
        self.codes: Counter[str] = Counter()
        self.strings: list[str] = ["", "x/y", "x[0]", "nope", "\x00", "é" * 40]
        self.tokens: list[worker_pb2.FencingToken] = []

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(120)

    def call(self, path: str, kind: str, request: Any) -> grpc.StatusCode:
        """One call with raw request bytes (or an iterator of them); its status. A
        forbidden status fails the test at once, naming the call."""
        method = path.rsplit("/", 1)[1]
        self.calls[method] += 1
        code = grpc.StatusCode.OK
        started = time.perf_counter()
        try:
            if kind == "unary_unary":
                self.channel.unary_unary(path, **RAW)(request, timeout=CALL_TIMEOUT)
            elif kind == "unary_stream":
                responses = self.channel.unary_stream(path, **RAW)(request, timeout=CALL_TIMEOUT)
                for _ in responses:
                    if method == "WatchFlowRun":  # a watch of a live run never ends:
                        responses.cancel()  # its first answer is what shows the server
                        break
            elif kind == "stream_unary":
                self.channel.stream_unary(path, **RAW)(request, timeout=CALL_TIMEOUT)
            else:
                for _ in self.channel.stream_stream(path, **RAW)(request, timeout=CALL_TIMEOUT):
                    pass
        except grpc.RpcError as exc:
            code = exc.code()
            if not (code == grpc.StatusCode.DEADLINE_EXCEEDED and self._following(method, request)):
                assert code not in FORBIDDEN, (path, code, exc.details())
        self.codes[code.name] += 1
        self.seconds[method] += time.perf_counter() - started
        return code

    def _following(self, method: str, request: Any) -> bool:
        """Whether a call that ran out of time follows the logs of a run still under
        way (a run the fuzz created, which no worker runs): such a watch lasts until
        the run ends, and its time running out is no hang of the server's. The
        derandomized examples met none; another seed or a changed message may."""
        if method != "WatchTaskRunLogs" or not isinstance(request, bytes):
            return False
        try:
            run_id = cp.WatchTaskRunLogsRequest.FromString(request).flow_run_id
        except DecodeError:
            return False
        stub = control_plane_pb2_grpc.ControlPlaneServiceStub(self.channel)
        try:
            got = stub.GetFlowRun(cp.GetFlowRunRequest(id=run_id), timeout=CALL_TIMEOUT)
        except grpc.RpcError:
            return False
        return not FlowRunState(got.flow_run.state).is_terminal

    def alive(self) -> None:
        stub = control_plane_pb2_grpc.ControlPlaneServiceStub(self.channel)
        assert stub.GetServerInfo(cp.GetServerInfoRequest(), timeout=CALL_TIMEOUT).protocol_version

    def close(self) -> None:
        self.channel.close()
        self._call(self.running.stop(None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


class Holder:
    """A worker session that takes attempts and keeps them (no outcome, no heartbeat
    needed: the heartbeat timeout is an hour). Fuzzed sessions then use its tokens."""

    def __init__(self, served: Served) -> None:
        self.assignments: list[worker_pb2.Assignment] = []
        self.got = threading.Event()
        self._end = threading.Event()
        hello = worker_pb2.Hello(
            worker_id="holder", protocol_version=1, capabilities=list(FUNCTIONS), slots=2
        )

        def requests() -> Iterator[worker_pb2.ConnectRequest]:
            yield worker_pb2.ConnectRequest(hello=hello)
            self._end.wait()

        stub = served.channel.stream_stream(
            f"{GATEWAY}/Connect",
            request_serializer=worker_pb2.ConnectRequest.SerializeToString,
            response_deserializer=worker_pb2.ConnectResponse.FromString,
        )
        self.call = stub(requests())
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for response in self.call:
                if response.HasField("assignment"):
                    self.assignments.append(response.assignment)
                    self.got.set()
        except grpc.RpcError:
            pass

    def close(self) -> None:
        self._end.set()
        self.call.cancel()
        self.thread.join(30)


class ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module", params=STORES)
def served(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    pytestconfig: pytest.Config,
) -> Iterator[Served]:
    """A server on each store: on PostgreSQL, text with a NUL character in a lookup (a
    GetFlow version "\\x00") was UNAVAILABLE, "cannot read from the database"."""
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    served = Served(database_for(request, request.param, tmp_path_factory.mktemp("fuzz")))
    holder: Holder | None = None
    try:
        control = control_plane_pb2_grpc.ControlPlaneServiceStub(served.channel)
        control.RegisterFlow(cp.RegisterFlowRequest(graph=proto_pipeline.compile()))
        holder = Holder(served)
        for _ in range(2):
            run = control.CreateFlowRun(cp.CreateFlowRunRequest(flow_name="proto_pipeline"))
            served.strings.append(run.flow_run.id)
        assert holder.got.wait(60), "the holder got no assignment"
        for a in holder.assignments:
            served.tokens.append(a.token)
            served.strings.append(a.token.task_run_id)
        payloads = payload_pb2_grpc.PayloadServiceStub(served.channel)
        header = payload_pb2.UploadPayloadHeader(size_bytes=3, metadata={"encoding": "json"})
        ref = payloads.UploadPayload(
            iter(
                [
                    payload_pb2.UploadPayloadRequest(header=header),
                    payload_pb2.UploadPayloadRequest(chunk=b"123"),
                ]
            )
        ).ref
        served.strings.append(ref.payload_id)
        yield served
        # Intruders changed nothing: the holder still holds every attempt it was given.
        dispatcher = served.running.core.dispatcher
        held = [(t.task_run_id, t.attempt) for t in served.tokens]
        owners = {dispatcher.owner(token) for token in held}
        assert len(owners) == 1 and None not in owners, "an intruder took an attempt"
        assert not errors.records, [r.getMessage() for r in errors.records]
    finally:
        if holder is not None:
            holder.close()
        served.close()
        logging.getLogger().removeHandler(errors)
        capture = pytestconfig.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled():  # shown even when output is captured
            print(figures(served))


def figures(served: Served) -> str:
    """What the fuzz did: calls per RPC, status codes seen."""
    calls = ", ".join(
        f"{m} {n} ({served.seconds[m]:.1f} s)" for m, n in sorted(served.calls.items())
    )
    codes = ", ".join(f"{c} {n}" for c, n in served.codes.most_common())
    total = sum(served.calls.values())
    return f"\nfuzz: {total} calls over {len(served.calls)} RPCs ({calls}); status codes: {codes}"


# ----------------------------------------------------------------------- strategies

#: Raw bytes no request decodes from (random bytes may or may not).
MALFORMED = [
    b"\x0a\x7f\x01",  # a length past the end
    b"\xff" * 5,  # wire type 7
    b"\x0a\x02\xff\xfe",  # invalid UTF-8 in field 1
]


def raw_bytes() -> st.SearchStrategy[bytes]:
    return st.sampled_from(MALFORMED) | st.binary(max_size=64)


def deep_value(depth: int) -> payload_pb2.Value:
    """A Value nesting its elements ``depth`` levels deep, built in place."""
    value = current = payload_pb2.Value()
    for level in range(depth):
        current.inline.data = b"1"
        current.inline.metadata["encoding"] = "json"
        if level < depth - 1:
            current.inline.metadata[LENGTH_KEY] = "1"
            current = current.items.add()
    return value


def _hostile_values() -> list[payload_pb2.Value]:
    """Values a hostile peer sends: huge or lying declared lengths, many elements,
    deep nesting, no encoding, references to payloads that do not exist. Built once:
    drawing them is then cheap."""
    values = [deep_value(depth) for depth in (5, 40, 99, 150)]
    values.append(payload_pb2.Value())
    for payload_id, size, location in [("nope", -1, ""), ("dask-x", 2**62, "dask"), ("", 0, "x")]:
        ref = payload_pb2.PayloadRef(
            payload_id=payload_id, size_bytes=size, location=location, metadata={"encoding": "json"}
        )
        values.append(payload_pb2.Value(ref=ref))
    for length in ["100000000", "-1", "1e9", "x", "9" * 40, "0", "1"]:
        value = value_of(1)
        value.inline.metadata[LENGTH_KEY] = length
        values.append(value)
    for count in (3, 1_001, 10_000):
        for declared in (False, True):
            value = value_of(1)
            value.items.extend([value_of(0)] * count)
            if declared:
                value.inline.metadata[LENGTH_KEY] = str(count)
            values.append(value)
    no_encoding = value_of(1)
    del no_encoding.inline.metadata["encoding"]
    values.append(no_encoding)
    return values


HOSTILE_VALUES = _hostile_values()


def hostile_values() -> st.SearchStrategy[payload_pb2.Value]:
    return st.sampled_from(HOSTILE_VALUES)


def _scalar(field: Any, served: Served) -> st.SearchStrategy[Any]:
    key = (f"{field.full_name}:scalar", 0)
    if key not in _STRATEGIES:
        _STRATEGIES[key] = _scalar_of(field, served)
    return _STRATEGIES[key]


def _scalar_of(field: Any, served: Served) -> st.SearchStrategy[Any]:
    t = field.type
    if t == field.TYPE_STRING:
        return st.sampled_from(served.strings) | st.text(max_size=12)
    if t == field.TYPE_BYTES:
        return st.binary(max_size=32)
    if t == field.TYPE_BOOL:
        return st.booleans()
    if t in (field.TYPE_DOUBLE, field.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    if t == field.TYPE_ENUM:
        return st.integers(-1, 20)
    if t in (field.TYPE_UINT32, field.TYPE_FIXED32):
        return st.sampled_from([0, 1, 2, 5_000, 2**32 - 1])
    if t in (field.TYPE_UINT64, field.TYPE_FIXED64):
        return st.sampled_from([0, 1, 2, 2**63, 2**64 - 1])
    if t in (field.TYPE_INT32, field.TYPE_SINT32, field.TYPE_SFIXED32):
        return st.sampled_from([0, 1, -1, 3, 2**31 - 1, -(2**31)])
    return st.sampled_from([0, 1, -1, 6, 2**62, 2**63 - 1, -(2**63)])


#: Message strategies by (message type, depth): built once, reused by every draw.
_STRATEGIES: dict[tuple[str, int], st.SearchStrategy[Any]] = {}
#: How deep generated messages nest (hostile depths come from HOSTILE_VALUES).
MAX_DEPTH = 2


def messages(descriptor: Any, served: Served, depth: int = 0) -> st.SearchStrategy[Any]:
    """Messages of any type, from its descriptor: any subset of its fields (several
    members of a oneof included), hostile scalars, Values from HOSTILE_VALUES."""
    key = (descriptor.full_name, depth)
    if key not in _STRATEGIES:
        _STRATEGIES[key] = (
            hostile_values()
            if descriptor.full_name == "headwater.v1.Value"
            else _message(descriptor, served, depth)
        )
    return _STRATEGIES[key]


@st.composite
def _message(draw: st.DrawFn, descriptor: Any, served: Served, depth: int) -> Any:
    from google.protobuf import message_factory

    msg = message_factory.GetMessageClass(descriptor)()
    for field in descriptor.fields:
        if draw(st.integers(0, 2)):  # about a third of the fields are set
            continue
        if field.type == field.TYPE_MESSAGE and depth >= MAX_DEPTH:
            continue
        if field.type == field.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            key_field, value_field = field.message_type.fields
            key = draw(_scalar(key_field, served))
            target = getattr(msg, field.name)
            if value_field.type == value_field.TYPE_MESSAGE:
                target[key].CopyFrom(draw(messages(value_field.message_type, served, depth + 1)))
            else:
                target[key] = draw(_scalar(value_field, served))
            continue
        count = draw(st.integers(1, 3)) if field.is_repeated else 1
        for _ in range(count):
            if field.type == field.TYPE_MESSAGE:
                sub = draw(messages(field.message_type, served, depth + 1))
                if field.is_repeated:
                    getattr(msg, field.name).add().CopyFrom(sub)
                else:
                    getattr(msg, field.name).CopyFrom(sub)
            elif field.is_repeated:
                getattr(msg, field.name).append(draw(_scalar(field, served)))
            else:
                setattr(msg, field.name, draw(_scalar(field, served)))
    return msg


def _methods(service: str, descriptor: Any) -> list[Any]:
    return list(descriptor.services_by_name[service].methods)


def _kind(method: Any) -> str:
    return ("stream" if method.client_streaming else "unary") + (
        "_stream" if method.server_streaming else "_unary"
    )


# --------------------------------------------------------------------------- tests

CONTROL_METHODS = _methods("ControlPlaneService", cp.DESCRIPTOR)


@settings(FUZZ, max_examples=400)
@given(data=st.data())
def test_fuzz_the_control_plane(served: Served, data: st.DataObject) -> None:
    _fuzz_call(served, data, CONTROL, data.draw(st.sampled_from(CONTROL_METHODS)))


def _fuzz_call(served: Served, data: st.DataObject, service: str, method: Any) -> None:
    """One call of ``method`` with raw bytes (a quarter of the time) or a hostile
    message of its request type; then the server must still answer."""
    if data.draw(st.integers(0, 3)) == 0:
        request = data.draw(raw_bytes())
    else:
        request = data.draw(messages(method.input_type, served)).SerializeToString()
    served.call(f"{service}/{method.name}", _kind(method), request)
    served.alive()


def test_fuzz_graphs_with_hostile_shapes(served: Served) -> None:
    """Graphs that are well formed but hostile: 10,000-input lists, deep nesting,
    clashing ids, NaN retry numbers; and the largest parameters a request can hold."""
    requests = [cp.RegisterFlowRequest() for _ in range(5)]
    wide, deep, clash, nan, many = (r.graph for r in requests)  # built in place
    wide.name, deep.name, clash.name, nan.name, many.name = "wide", "deep", "c", "n", "m"
    node = wide.tasks.add(id="a", task_type="m")
    node.inputs["x"].list.items.extend([graph_pb2.Input(parameter="p")] * 10_000)
    nested = deep.tasks.add(id="a", task_type="m").inputs["x"]
    for _ in range(60):  # 120 message levels: deeper than protobuf decodes
        nested = nested.list.items.add()
    nested.parameter = "p"
    clash.tasks.add(id="a/b", task_type="m")
    nan.tasks.add(id="a", task_type="m").retry.backoff_factor = float("nan")
    many.tasks.extend([graph_pb2.TaskNode(id=f"t{i}", task_type="m") for i in range(10_000)])
    many.tasks[0].wait_for.extend([f"t{i}" for i in range(1, 10_000)])
    shallow = cp.RegisterFlowRequest()
    shallow.graph.name = "shallow"
    nested = shallow.graph.tasks.add(id="a", task_type="m").inputs["x"]
    for _ in range(40):  # decodes, but nests deeper than max_nesting
        nested = nested.list.items.add()
    nested.parameter = "p"
    for request in [*requests, shallow]:
        served.call(f"{CONTROL}/RegisterFlow", "unary_unary", request.SerializeToString())
        served.alive()
    for value in (deep_value(99), deep_value(150), value_of("x" * (3 << 20))):
        request = cp.CreateFlowRunRequest(flow_name="proto_pipeline")
        request.parameters["n"].CopyFrom(value)
        served.call(f"{CONTROL}/CreateFlowRun", "unary_unary", request.SerializeToString())
        served.alive()


@st.composite
def worker_messages(draw: st.DrawFn, served: Served) -> worker_pb2.ConnectRequest:
    """A message of the worker stream: any member (or several) of the oneof, about
    attempts this session holds, another session holds, or nobody does."""
    msg = draw(messages(worker_pb2.ConnectRequest.DESCRIPTOR, served))
    if served.tokens and draw(st.booleans()):
        stolen = draw(st.sampled_from(served.tokens))
        kind = draw(st.sampled_from(["result", "failure", "log", "started", "cancelled"]))
        report = getattr(msg, kind)
        report.token.CopyFrom(stolen)
        if kind == "result":
            report.result.CopyFrom(draw(hostile_values()))
    return msg


#: Day-two operations and credentials: (service path, method) of each RPC.
OPS_METHODS = [
    (f"/headwater.v1.{service}", method)
    for service, descriptor in (
        ("OperationsService", operations_pb2.DESCRIPTOR),
        ("AccessService", access_pb2.DESCRIPTOR),
    )
    for method in _methods(service, descriptor)
]


@settings(FUZZ, max_examples=250)
@given(data=st.data())
def test_fuzz_operations_and_access(served: Served, data: st.DataObject) -> None:
    """Retries, limits, workers (drains, paged listings), webhooks and credentials:
    the fuzz covered the control plane only, though its promise is every RPC."""
    _fuzz_call(served, data, *data.draw(st.sampled_from(OPS_METHODS)))


@settings(FUZZ, max_examples=200)
@given(data=st.data())
def test_fuzz_the_worker_stream(served: Served, data: st.DataObject) -> None:
    hello = worker_pb2.Hello(
        worker_id=data.draw(st.sampled_from(["fuzz", "holder", ""])),
        protocol_version=data.draw(st.sampled_from([1, 1, 1, 2, 0])),
        capabilities=data.draw(st.sampled_from([list(FUNCTIONS), ["x"], []])),
        slots=data.draw(st.sampled_from([1, 2, 2**31 - 1, 2**32 - 1, 0])),
    )
    stream: list[bytes] = []
    if data.draw(st.integers(0, 4)):
        stream.append(worker_pb2.ConnectRequest(hello=hello).SerializeToString())
    for _ in range(data.draw(st.integers(0, 6))):
        if data.draw(st.integers(0, 5)) == 0:
            stream.append(data.draw(raw_bytes()))
        else:
            message = data.draw(worker_messages(served))
            if data.draw(st.integers(0, 3)) == 0:  # packed in a batch
                batch = worker_pb2.ConnectRequest()
                batch.batch.messages.add().CopyFrom(message)
                message = batch
            stream.append(message.SerializeToString())
    served.call(f"{GATEWAY}/Connect", "stream_stream", iter(stream))
    served.alive()


@st.composite
def reports(draw: st.DrawFn, served: Served) -> list[worker_pb2.ConnectRequest]:
    """What a session may send about an attempt it holds: any report, with hostile
    contents (values, failures, log timestamps and texts), in any order and number;
    their tokens are set once the attempt is known (``about``)."""
    out: list[worker_pb2.ConnectRequest] = []
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(
            st.sampled_from(
                ["log", "started", "result", "failure", "skipped", "cancelled", "cache_key"]
            )
        )
        msg = worker_pb2.ConnectRequest()
        report = getattr(msg, kind)
        report.token.task_run_id = "set by about()"  # also makes the oneof member set
        if kind == "result":
            report.result.CopyFrom(
                draw(
                    st.sampled_from([value_of([1, 2], split=True), value_of(7)]) | hostile_values()
                )
            )
            report.cache_key = draw(st.sampled_from(["", "k", "x" * 5_000]))
        elif kind == "failure":
            report.failure.CopyFrom(draw(messages(state_pb2.Failure.DESCRIPTOR, served)))
            report.timed_out = draw(st.booleans())
        elif kind == "log":
            report.level = draw(st.sampled_from(["INFO", "", "\x00", "X" * 100]))
            report.message = draw(st.sampled_from(["hello", "", "é" * 70_000]))
            seconds = draw(st.sampled_from([None, 0, -(2**40), 2**40, 253402300800, -62135596801]))
            if seconds is not None:
                report.timestamp.seconds = seconds
                report.timestamp.nanos = draw(st.sampled_from([0, 999_999_999, -1, 2**31 - 1]))
        elif kind == "skipped":
            report.reason = draw(st.sampled_from(["", "why"]))
        elif kind == "cache_key":
            report.cache_key = draw(st.sampled_from(["", "k"]))
        if draw(st.integers(0, 3)) == 0:
            wrapped = worker_pb2.ConnectRequest()
            wrapped.batch.messages.add().CopyFrom(msg)
            msg = wrapped
        out.append(msg)
    return out


def about(message: worker_pb2.ConnectRequest, token: worker_pb2.FencingToken) -> bytes:
    """A report drawn by ``reports`` about the attempt ``token`` names."""
    for inner in [message, *message.batch.messages]:
        kind = inner.WhichOneof("message")
        if kind not in ("batch", None):
            getattr(inner, kind).token.CopyFrom(token)
    return message.SerializeToString()


@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_fuzz_reports_about_held_attempts(served: Served, data: st.DataObject) -> None:
    """A session that holds an attempt sends hostile reports about it; then every way
    of reading the run back (task runs, results, logs) is asked for."""
    control = control_plane_pb2_grpc.ControlPlaneServiceStub(served.channel)
    n = data.draw(st.sampled_from([0, 2]))
    plan = data.draw(reports(served))  # drawn before anything the server decides
    control.CreateFlowRun(
        cp.CreateFlowRunRequest(flow_name="proto_pipeline", parameters={"n": value_of(n)}),
        timeout=CALL_TIMEOUT,
    )
    outbox: queue.Queue[bytes | None] = queue.Queue()
    hello = worker_pb2.Hello(
        worker_id="fuzz-holder", protocol_version=1, capabilities=list(FUNCTIONS), slots=1
    )
    outbox.put(worker_pb2.ConnectRequest(hello=hello).SerializeToString())

    def requests() -> Iterator[bytes]:
        while (item := outbox.get()) is not None:
            yield item

    served.calls["Connect"] += 1
    call = served.channel.stream_stream(f"{GATEWAY}/Connect", **RAW)(
        requests(), timeout=CALL_TIMEOUT
    )
    code = grpc.StatusCode.OK
    run_id = ""
    try:
        for raw in call:
            response = worker_pb2.ConnectResponse.FromString(raw)
            if response.HasField("assignment") and not run_id:
                run_id = response.assignment.flow_run_id  # this run's, or an older one's
                for message in plan:
                    outbox.put(about(message, response.assignment.token))
                outbox.put(None)  # then end the stream: the server ends the call
    except grpc.RpcError as exc:
        code = exc.code()
        assert code not in FORBIDDEN, (code, exc.details())
    finally:
        outbox.put(None)
    assert run_id, "no attempt was assigned"
    served.codes[code.name] += 1
    for path, request in [
        (f"{CONTROL}/GetFlowRun", cp.GetFlowRunRequest(id=run_id, include_task_runs=True)),
        (f"{CONTROL}/ListTaskRunLogs", cp.ListTaskRunLogsRequest(flow_run_id=run_id)),
        (
            f"{CONTROL}/GetTaskRunResult",
            cp.GetTaskRunResultRequest(flow_run_id=run_id, task_id="numbers"),
        ),
        (
            f"{CONTROL}/GetTaskRunResult",
            cp.GetTaskRunResultRequest(flow_run_id=run_id, task_id="scale", map_index=-1),
        ),
    ]:
        served.call(path, "unary_unary", request.SerializeToString())
    served.call(
        f"{CONTROL}/WatchFlowRun",
        "unary_stream",
        cp.WatchFlowRunRequest(id=run_id).SerializeToString(),
    )
    served.alive()


@st.composite
def upload_requests(draw: st.DrawFn) -> list[bytes]:
    """An upload stream: headers and chunks in any order and number, with any sizes."""
    parts: list[bytes] = []
    for _ in range(draw(st.integers(0, 6))):
        choice = draw(st.integers(0, 4))
        if choice == 0:
            parts.append(draw(raw_bytes()))
        elif choice == 1:
            header = payload_pb2.UploadPayloadHeader(
                size_bytes=draw(st.sampled_from([0, 3, -1, 2**40, 2**63 - 1, 2**20])),
                sha256=draw(st.sampled_from(["", "0" * 64, "zz"])),
            )
            if draw(st.booleans()):
                header.metadata["encoding"] = "json"
            parts.append(payload_pb2.UploadPayloadRequest(header=header).SerializeToString())
        else:
            chunk = draw(st.sampled_from([b"", b"abc", b"x" * 70_000]))
            parts.append(payload_pb2.UploadPayloadRequest(chunk=chunk).SerializeToString())
    return parts


@settings(FUZZ, max_examples=120)
@given(data=st.data())
def test_fuzz_the_payload_service(served: Served, data: st.DataObject) -> None:
    if data.draw(st.booleans()):
        served.call(f"{PAYLOAD}/UploadPayload", "stream_unary", iter(data.draw(upload_requests())))
    else:
        request = payload_pb2.DownloadPayloadRequest(
            payload_id=data.draw(st.sampled_from(served.strings)),
            offset=data.draw(st.sampled_from([0, 1, 3, 4, -1, 2**62, -(2**63)])),
        ).SerializeToString()
        if data.draw(st.integers(0, 4)) == 0:
            request = data.draw(raw_bytes())
        served.call(f"{PAYLOAD}/DownloadPayload", "unary_stream", request)
    served.alive()


def test_fuzz_many_empty_chunks_are_refused_at_the_first(served: Served) -> None:
    header = payload_pb2.UploadPayloadHeader(size_bytes=0, metadata={"encoding": "json"})
    parts = [payload_pb2.UploadPayloadRequest(header=header).SerializeToString()]
    parts += [payload_pb2.UploadPayloadRequest(chunk=b"").SerializeToString()] * 200_000
    code = served.call(f"{PAYLOAD}/UploadPayload", "stream_unary", iter(parts))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    served.alive()


def test_a_huge_list_of_one_state_is_one_state(served: Served) -> None:
    """ListFlowRuns with the same state 250,000 times (1 MB, under the message limit)
    answered UNKNOWN: SQLite has no room for 250,000 query parameters."""
    control = control_plane_pb2_grpc.ControlPlaneServiceStub(served.channel)
    request = cp.ListFlowRunsRequest(states=[FlowRunState.RUNNING.value] * 250_000, page_size=5)
    listed = control.ListFlowRuns(request, timeout=CALL_TIMEOUT)
    assert all(r.state == FlowRunState.RUNNING.value for r in listed.flow_runs)
    served.alive()


@pytest.mark.parametrize("size", [300, 17_000, 1_000_000])
def test_a_refusal_quoting_a_huge_id_still_reaches_the_client(served: Served, size: int) -> None:
    """A status's details travel as HTTP/2 metadata, which a peer refuses over 16 KiB:
    GetFlowRun of a 17,000-character id answered RESOURCE_EXHAUSTED ("received metadata
    size exceeds hard limit") instead of NOT_FOUND. Overlong words are shortened."""
    control = control_plane_pb2_grpc.ControlPlaneServiceStub(served.channel)
    for call, request in (
        (control.GetFlowRun, cp.GetFlowRunRequest(id="x" * size)),
        (control.CreateFlowRun, cp.CreateFlowRunRequest(flow_name="y" * size)),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            call(request, timeout=CALL_TIMEOUT)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND, caught.value.details()
        said = caught.value.details()
        assert len(said) < 1_000 and f"({size:,} characters)" in said, said
        assert "\n" not in said
    served.alive()


def test_an_overlong_idempotency_key_is_refused(served: Served) -> None:
    """A 100,000-character idempotency key was stored and indexed with its run (a user
    trial); keys are at most 1,000 characters, as Temporal's workflow ids."""
    control = control_plane_pb2_grpc.ControlPlaneServiceStub(served.channel)
    request = cp.CreateFlowRunRequest(flow_name="proto_pipeline", idempotency_key="k" * 1_001)
    with pytest.raises(grpc.RpcError) as caught:
        control.CreateFlowRun(request, timeout=CALL_TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    said = caught.value.details() or ""
    assert said == "idempotency_key is 1,001 characters long (at most 1,000)", said
    served.alive()
