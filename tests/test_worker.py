"""The Python worker against a fake WorkerGatewayService (and the real PayloadService).

The fake gateway answers Hello with a Welcome, heartbeats with HeartbeatAcks and
outcomes with Acks, records everything the worker sends, and lets a test push
assignments and cancels. Workers run as `headwater worker` subprocesses (end to end)
or in a thread through the Worker API (fine-grained cases).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import headwater
from headwater._worker import (
    BACKOFF_INITIAL,
    BACKOFF_MAX,
    BACKOFF_SOON,
    SOON_WINDOW,
    Worker,
    WorkerError,
    reconnect_delay,
)
from headwater.v1 import graph_pb2, payload_pb2, payload_pb2_grpc, worker_pb2, worker_pb2_grpc
from headwater.wire import decode_value, encode, seconds
from headwater_runtime.server import MAX_CHUNK, PayloadServicer, StoreIO, TokenAuthInterceptor
from headwater_runtime.store import SQLiteStore

TOKEN = "s3cret"
WAIT = 15.0  # upper bound of every wait; a passing test never gets near it

TASKS = """
import logging
import time

from headwater import Skip, task


@task
def add(a, b):
    return a + b


@task
def combine(items, mapping, picked, blob):
    return {"items": items, "keys": list(mapping), "mapping": mapping, "picked": picked,
            "blob": len(blob)}


@task
def big(n):
    return b"x" * n


@task
def squares(n):
    return [i * i for i in range(n)]


@task
def pair():
    return (1, 2)


@task
def table(n):
    return {"name": "t", "rows": list(range(n))}


@task(cache_key_fn=lambda inputs: f"n={inputs['n']}")
def keyed(n, noise):
    logging.getLogger("hw_tasks.keyed").info("computing %d", n)
    return n * 100


def broken_key(inputs):
    raise RuntimeError("no key today")


@task(cache_key_fn=broken_key)
def badly_keyed(n):
    return n


@task(no_retry_on=[KeyError])
def explode(kind):
    if kind == "key":
        raise KeyError("missing")
    try:
        raise OSError("disk on fire")
    except OSError as exc:
        raise ValueError("bad value") from exc


@task
def nothing_to_do():
    raise Skip("nothing to do")


@task
def block(seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)
    return "finished"


@task
def gated(folder):
    import pathlib

    for line in ("one", "two", "three"):
        print(line, flush=True)
        (pathlib.Path(folder) / f"said-{line}").touch()
        gate = pathlib.Path(folder) / line
        for _ in range(3000):  # (bounded: the test opens each gate)
            if gate.exists():
                break
            time.sleep(0.01)
    return "said"


@task
def chatty(n):
    log = logging.getLogger("hw_tasks.chatty")
    log.info("hello %d", n)
    print("counting:", end=" ")  # a line without its newline: sent before the record
    log.warning("careful")
    print(n, end="")  # ...or at the end
    return n
"""


# The fake control plane -------------------------------------------------------------


class FakeGateway(worker_pb2_grpc.WorkerGatewayServiceServicer):
    """Records what workers send; test code pushes ConnectResponses to the latest
    session with ``send``."""

    def __init__(
        self,
        welcome: worker_pb2.Welcome,
        *,
        reject: tuple[grpc.StatusCode, str] | None = None,
        keep_running: bool = True,
        answer_heartbeats: bool = True,
    ) -> None:
        self.welcome = welcome
        self.reject = reject
        self.keep_running = keep_running
        self.answer_heartbeats = answer_heartbeats
        #: Acknowledge every outcome at once (False: the test sends the Ack itself).
        self.ack_outcomes = True
        self.loop: asyncio.AbstractEventLoop | None = None
        self.received: list[worker_pb2.ConnectRequest] = []
        self.batches: list[int] = []  # sizes of the batches received (their messages are
        # in ``received`` one by one)
        self.largest = 0
        self._cond = threading.Condition()
        self._outboxes: list[asyncio.Queue[worker_pb2.ConnectResponse | None]] = []

    async def Connect(
        self,
        request_iterator: AsyncIterator[worker_pb2.ConnectRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[worker_pb2.ConnectResponse]:
        out: asyncio.Queue[worker_pb2.ConnectResponse | None] = asyncio.Queue()
        self._outboxes.append(out)

        async def read() -> None:
            async for request in request_iterator:
                self._record(request)
                kind = request.WhichOneof("message")
                if kind == "hello":
                    welcome = worker_pb2.Welcome()
                    welcome.CopyFrom(self.welcome)
                    if self.keep_running:
                        welcome.keep_running.extend(request.hello.running)
                    out.put_nowait(worker_pb2.ConnectResponse(welcome=welcome))
                elif kind == "heartbeat" and self.answer_heartbeats:
                    out.put_nowait(worker_pb2.ConnectResponse(heartbeat_ack={}))
                elif kind in ("result", "failure", "skipped") and self.ack_outcomes:
                    token = getattr(request, kind).token
                    ack = worker_pb2.Ack(token=token, accepted=True)
                    out.put_nowait(worker_pb2.ConnectResponse(ack=ack))
            out.put_nowait(None)

        if self.reject is not None:
            first = await context.read()
            self._record(first)
            await context.abort(*self.reject)
        reader = asyncio.create_task(read())
        try:
            while (message := await out.get()) is not None:
                yield message
        finally:
            reader.cancel()

    def _record(self, request: worker_pb2.ConnectRequest) -> None:
        with self._cond:
            self.largest = max(self.largest, request.ByteSize())
            if request.WhichOneof("message") == "batch":
                self.batches.append(len(request.batch.messages))
                self.received.extend(request.batch.messages)
            else:
                self.received.append(request)
            self._cond.notify_all()

    def send(self, **message: Any) -> None:
        assert self.loop is not None and self._outboxes
        response = worker_pb2.ConnectResponse(**message)
        self.loop.call_soon_threadsafe(self._outboxes[-1].put_nowait, response)

    def all(self, kind: str) -> list[Any]:
        with self._cond:
            return [getattr(r, kind) for r in self.received if r.WhichOneof("message") == kind]

    def mark(self) -> int:
        with self._cond:
            return len(self.received)

    def wait_for(
        self, kind: str, match: Callable[[Any], bool] = lambda _: True, since: int = 0
    ) -> Any:
        """The first message of this kind that matches (received at index >= since)."""
        deadline = time.monotonic() + WAIT
        with self._cond:
            while True:
                for request in self.received[since:]:
                    if request.WhichOneof("message") == kind and match(getattr(request, kind)):
                        return getattr(request, kind)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    kinds = [r.WhichOneof("message") for r in self.received]
                    raise AssertionError(f"no matching {kind} within {WAIT}s; got {kinds}")
                self._cond.wait(remaining)


class FakeServer:
    """The fake gateway plus the real PayloadService, on an aio server in a thread."""

    def __init__(
        self,
        db: Path,
        gateway: FakeGateway,
        *,
        port: int = 0,
        token: str | None = None,
    ) -> None:
        self.gateway = gateway
        self.store = SQLiteStore(db)
        self.io = StoreIO()
        self.loop = asyncio.new_event_loop()
        gateway.loop = self.loop
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._server: grpc.aio.Server | None = None
        self.port = self._call(self._start(port, token))
        self.address = f"127.0.0.1:{self.port}"
        self.auth = (("authorization", f"Bearer {token}"),) if token else ()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT)

    async def _start(self, port: int, token: str | None) -> int:
        interceptors = [TokenAuthInterceptor(token)] if token else []
        self._server = grpc.aio.server(interceptors=interceptors)
        worker_pb2_grpc.add_WorkerGatewayServiceServicer_to_server(self.gateway, self._server)
        payload_pb2_grpc.add_PayloadServiceServicer_to_server(
            PayloadServicer(self.store, io=self.io), self._server
        )
        bound = self._server.add_insecure_port(f"127.0.0.1:{port}")
        await self._server.start()
        return int(bound)

    async def _stop(self) -> None:
        assert self._server is not None
        await self._server.stop(None)
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        self._call(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(WAIT)
        self.loop.close()
        # Store calls still under way (an upload's abort) finish before the store closes.
        self.io.close()
        self.store.close()

    def download(self, ref: payload_pb2.PayloadRef) -> bytes:
        with grpc.insecure_channel(self.address) as channel:
            stub = payload_pb2_grpc.PayloadServiceStub(channel)
            request = payload_pb2.DownloadPayloadRequest(payload_id=ref.payload_id)
            parts = stub.DownloadPayload(request, timeout=WAIT, metadata=self.auth)
            return b"".join(p.chunk for p in parts)

    def upload(self, value: Any) -> payload_pb2.PayloadRef:
        encoded = encode(value)
        header = payload_pb2.UploadPayloadHeader(
            size_bytes=len(encoded.data),
            metadata=encoded.metadata,
            sha256=hashlib.sha256(encoded.data).hexdigest(),
        )
        parts = [payload_pb2.UploadPayloadRequest(header=header)]
        for start in range(0, len(encoded.data), MAX_CHUNK):
            chunk = encoded.data[start : start + MAX_CHUNK]
            parts.append(payload_pb2.UploadPayloadRequest(chunk=chunk))
        with grpc.insecure_channel(self.address) as channel:
            stub = payload_pb2_grpc.PayloadServiceStub(channel)
            return stub.UploadPayload(iter(parts), timeout=WAIT, metadata=self.auth).ref


def welcome(**fields: Any) -> worker_pb2.Welcome:
    msg = worker_pb2.Welcome(
        session_id="s1", server_version="fake", protocol_version=1, inline_payload_limit=1 << 20
    )
    msg.heartbeat_interval.FromMilliseconds(100)
    msg.heartbeat_timeout.FromSeconds(10)
    for name, value in fields.items():
        if isinstance(value, list):
            getattr(msg, name).extend(value)
        else:
            setattr(msg, name, value)
    return msg


@pytest.fixture
def tasks_file(tmp_path: Path) -> Path:
    path = tmp_path / "hw_tasks.py"
    path.write_text(TASKS)
    return path


@pytest.fixture
def server(tmp_path: Path) -> Iterator[FakeServer]:
    fake = FakeServer(tmp_path / "hw.db", FakeGateway(welcome()))
    yield fake
    fake.stop()


@contextlib.contextmanager
def worker_thread(address: str, tasks_file: Path, **options: Any) -> Iterator[Worker]:
    worker = Worker(address, [str(tasks_file)], name="test-worker", **options)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            worker.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(WAIT)
        assert not thread.is_alive(), "the worker did not stop"
    assert not errors, errors


def value(obj: Any) -> worker_pb2.InputValue:
    encoded = encode(obj)
    payload = payload_pb2.Payload(data=encoded.data, metadata=encoded.metadata)
    return worker_pb2.InputValue(value=payload_pb2.Value(inline=payload))


def token(name: str, attempt: int = 1) -> worker_pb2.FencingToken:
    return worker_pb2.FencingToken(task_run_id=f"run1/{name}", attempt=attempt)


def assign(
    gateway: FakeGateway, name: str, task: str, attempt: int = 1, **fields: Any
) -> worker_pb2.FencingToken:
    tok = token(name, attempt)
    msg = worker_pb2.Assignment(token=tok, task_type=f"hw_tasks.{task}", map_index=-1, **fields)
    gateway.send(assignment=msg)
    return tok


def inputs(**values: Any) -> dict[str, worker_pb2.InputValue]:
    return {k: v if isinstance(v, worker_pb2.InputValue) else value(v) for k, v in values.items()}


def about(tok: worker_pb2.FencingToken) -> Callable[[Any], bool]:
    return lambda msg: msg.token == tok


def start_cli(tmp_path: Path, *args: str, token: str | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    env.pop("HEADWATER_TOKEN", None)
    if token is not None:
        env["HEADWATER_TOKEN"] = token
    command = [sys.executable, "-m", "headwater._cli", "worker", *args]
    return subprocess.Popen(
        command, env=env, cwd=tmp_path, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        _, stderr = proc.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return proc.returncode, stderr


# End to end: `headwater worker` as a subprocess -------------------------------------


@pytest.mark.e2e
def test_cli_worker_says_hello_runs_tasks_with_logs_and_exits_0_on_sigterm(
    tmp_path: Path, tasks_file: Path, server: FakeServer
) -> None:
    gateway = server.gateway
    proc = start_cli(
        tmp_path,
        *("--server", server.address, "--module", "hw_tasks", "--slots", "3", "--name", "w1"),
        *("--label", "gpu=true", "--label", "zone=eu"),
    )
    try:
        hello = gateway.wait_for("hello")
        assert len(hello.worker_id) == 32 and hello.name == "w1"
        assert hello.protocol_version == 1 and hello.slots == 3
        assert {"hw_tasks.add", "hw_tasks.chatty", "headwater.case", "headwater.merge"} <= set(
            hello.capabilities
        )
        assert dict(hello.labels) == {"gpu": "true", "zone": "eu"}
        runtime = hello.runtime
        assert (runtime.language, runtime.sdk_version, runtime.pid) == (
            "python",
            headwater.__version__,
            proc.pid,
        )
        assert runtime.language_version.startswith(f"{sys.version_info[0]}.")
        assert runtime.hostname and not hello.running

        tok = assign(gateway, "chatty", "chatty", inputs=inputs(n=3), argument_order=["n"])
        result = gateway.wait_for("result", about(tok))
        assert decode_value(result.result) == 3
        logs = [entry for entry in gateway.all("log") if entry.token == tok]
        assert [(e.level, e.logger, e.message) for e in logs] == [
            ("INFO", "hw_tasks.chatty", "hello 3"),
            ("INFO", "stdout", "counting: "),  # (it came after the record)
            ("WARNING", "hw_tasks.chatty", "careful"),
            ("INFO", "stdout", "3"),
        ]
        assert all(e.timestamp.seconds > 0 for e in logs)
        # A short attempt's result implies its start: no TaskStarted (STARTED_DELAY).
        stuck = assign(gateway, "stuck", "block", inputs=inputs(seconds=60))
        gateway.wait_for("started", about(stuck))  # abandoned on SIGTERM, exit 0 at once
        assert [s.token for s in gateway.all("started")] == [stuck]
    finally:
        proc.send_signal(signal.SIGTERM)
        code, stderr = finish(proc)
    assert code == 0, stderr
    connected = [line for line in stderr.splitlines() if line.startswith("headwater worker")]
    capabilities = len(hello.capabilities)
    assert connected == [
        f"headwater worker w1 connected to {server.address} ({capabilities} capabilities, 3 slots)",
        "headwater worker w1: SIGTERM; stopping (running tasks are given back to the server), "
        "at most 10s",
    ]


@pytest.mark.e2e
def test_a_bad_token_exits_non_zero_with_one_line(tmp_path: Path, tasks_file: Path) -> None:
    fake = FakeServer(tmp_path / "hw.db", FakeGateway(welcome()), token=TOKEN)
    try:
        proc = start_cli(tmp_path, "--server", fake.address, "--module", "hw_tasks", token="wrong")
        code, stderr = finish(proc)
    finally:
        fake.stop()
    assert code == 2  # (refused for good, as any refused request: README)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("headwater: error:") and "invalid token" in lines[0]


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--server", "127.0.0.1:1"], "headwater worker FILE.py (or --module package.module)"),
        (["--server", "127.0.0.1:1", "-m", "no_such_module_here"], "no module named"),
        (["--server", "127.0.0.1:1", "-m", "hw_tasks", "--label", "gpu"], "--label expects"),
        (["--server", "127.0.0.1:1", "-m", "hw_tasks", "--slots", "0"], "--slots must be"),
        (["-m", "hw_tasks"], "no server given: pass --server HOST:PORT"),
        (["--server", "localhost", "-m", "hw_tasks"], "--server expects HOST:PORT"),
    ],
)
def test_cli_usage_errors_are_one_line_and_exit_2(
    tmp_path: Path, tasks_file: Path, args: list[str], fragment: str
) -> None:
    env_server = os.environ.pop("HEADWATER_SERVER", None)
    try:
        code, stderr = finish(start_cli(tmp_path, *args))
    finally:
        if env_server is not None:
            os.environ["HEADWATER_SERVER"] = env_server
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert fragment in stderr


# Fine-grained: the Worker API in a thread -------------------------------------------


def test_inputs_are_decoded_assembled_and_selected(tasks_file: Path, server: FakeServer) -> None:
    gateway = server.gateway
    blob = os.urandom(3 << 20)  # by reference: downloaded in chunks and verified
    args = inputs(
        items=worker_pb2.InputValue(
            list=worker_pb2.InputValueList(items=[value(1), value(2)], tuple=True)
        ),
        mapping=worker_pb2.InputValue(
            map=worker_pb2.InputValueMap(
                entries=[
                    worker_pb2.InputValueMapEntry(key="z", value=value(1)),
                    worker_pb2.InputValueMapEntry(key="a", value=value([2])),
                ]
            )
        ),
        picked=worker_pb2.InputValue(
            value=value({"rows": [10, 20, 30]}).value,
            path=[payload_pb2.PathElement(key="rows"), payload_pb2.PathElement(index=-1)],
        ),
        blob=worker_pb2.InputValue(value=payload_pb2.Value(ref=server.upload(blob))),
    )
    with worker_thread(server.address, tasks_file, slots=2):
        gateway.wait_for("hello")
        before = time.time()
        tok = assign(gateway, "combine", "combine", inputs=args)
        result = gateway.wait_for("result", about(tok))
    # (Its start, for the server's RUNNING time when no TaskStarted went out: a short
    # task showed a duration of about 0 on a server; and its end, for an outcome the
    # server gets late: held while it was away, the attempt took in the outage.)
    assert before <= seconds(result.started_at) <= seconds(result.ended_at) <= time.time()
    assert decode_value(result.result) == {
        "items": (1, 2),
        "keys": ["z", "a"],
        "mapping": {"z": 1, "a": [2]},
        "picked": 30,
        "blob": len(blob),
    }


def test_a_result_over_the_inline_limit_goes_by_reference_in_chunks(
    tmp_path: Path, tasks_file: Path
) -> None:
    gateway = FakeGateway(welcome(inline_payload_limit=1024))
    fake = FakeServer(tmp_path / "hw.db", gateway, token=TOKEN)  # the token goes on every call
    try:
        with worker_thread(fake.address, tasks_file, slots=1, token=TOKEN):
            fake.gateway.wait_for("hello")
            tok = assign(fake.gateway, "big", "big", inputs=inputs(n=5_000_000))
            result = fake.gateway.wait_for("result", about(tok)).result
            small = assign(fake.gateway, "small", "big", inputs=inputs(n=10))
            inline = fake.gateway.wait_for("result", about(small)).result
        assert result.WhichOneof("kind") == "ref"
        ref = result.ref
        data = fake.download(ref)
        assert len(data) == ref.size_bytes and hashlib.sha256(data).hexdigest() == ref.sha256
        assert decode_value(result, lambda _: data) == b"x" * 5_000_000
        assert inline.WhichOneof("kind") == "inline" and decode_value(inline) == b"x" * 10
        assert fake.gateway.largest < 4 << 20
    finally:
        fake.stop()


def test_split_result_sends_every_element(tasks_file: Path, server: FakeServer) -> None:
    gateway = server.gateway
    with worker_thread(server.address, tasks_file, slots=2):
        gateway.wait_for("hello")
        tok = assign(gateway, "squares", "squares", inputs=inputs(n=4), split_result=True)
        plain = assign(gateway, "plain", "squares", inputs=inputs(n=4))
        result = gateway.wait_for("result", about(tok)).result
        unsplit = gateway.wait_for("result", about(plain)).result
    assert decode_value(result) == [0, 1, 4, 9]
    assert [decode_value(item) for item in result.items] == [0, 1, 4, 9]
    assert result.inline.metadata["headwater.length"] == "4"
    assert not unsplit.items


def test_split_path_splits_only_that_part_of_the_result(
    tasks_file: Path, server: FakeServer
) -> None:
    gateway = server.gateway
    rows = [payload_pb2.PathElement(key="rows")]
    missing = [payload_pb2.PathElement(key="nope")]
    with worker_thread(server.address, tasks_file, slots=2):
        gateway.wait_for("hello")
        tok = assign(gateway, "t", "table", inputs=inputs(n=3), split_result=True, split_path=rows)
        bad = assign(
            gateway, "b", "table", inputs=inputs(n=3), split_result=True, split_path=missing
        )
        result = gateway.wait_for("result", about(tok)).result
        unsplit = gateway.wait_for("result", about(bad)).result
    assert decode_value(result) == {"name": "t", "rows": [0, 1, 2]}
    assert [decode_value(item) for item in result.items] == [0, 1, 2]
    assert result.inline.metadata["headwater.length"] == "3"
    assert result.inline.metadata["headwater.split_path"] == '["rows"]'
    # A path that does not fit: no split (the mapped task then fails as "not a sequence").
    assert not unsplit.items and "headwater.length" not in unsplit.inline.metadata


def test_a_function_cache_key_is_reported_and_a_hit_skips_the_task(
    tasks_file: Path, server: FakeServer
) -> None:
    gateway = server.gateway
    by_function = graph_pb2.CachePolicy(key_source=graph_pb2.CACHE_KEY_SOURCE_FUNCTION)
    with worker_thread(server.address, tasks_file, slots=1):
        gateway.wait_for("hello")
        hit = assign(gateway, "k1", "keyed", inputs=inputs(n=3, noise=1), cache=by_function)
        report = gateway.wait_for("cache_key", about(hit))
        assert report.cache_key == "n=3"
        gateway.send(cache_decision=worker_pb2.CacheDecision(token=hit, hit=True))
        # The slot is free again (slots=1): the next attempt runs, and this one is a miss.
        miss = assign(gateway, "k2", "keyed", inputs=inputs(n=4, noise=1), cache=by_function)
        gateway.wait_for("cache_key", about(miss))
        gateway.send(cache_decision=worker_pb2.CacheDecision(token=miss, hit=False))
        result = gateway.wait_for("result", about(miss))
        broken = assign(gateway, "k3", "badly_keyed", inputs=inputs(n=5), cache=by_function)
        unkeyed = gateway.wait_for("result", about(broken))
        warning = gateway.wait_for("log", lambda m: m.token == broken and "cache key" in m.message)
    assert decode_value(result.result) == 400 and result.cache_key == "n=4"
    assert not [r for r in gateway.all("result") if r.token == hit]  # the task never ran
    assert not [m for m in gateway.all("log") if m.token == hit]
    assert decode_value(unkeyed.result) == 5 and unkeyed.cache_key == ""
    assert warning.level == "WARNING" and "no key today" in warning.message
    assert f"task run {broken.task_run_id} attempt 1: could not compute" in warning.message


def test_failures_are_structured(tasks_file: Path, server: FakeServer) -> None:
    gateway = server.gateway
    with worker_thread(server.address, tasks_file, slots=4):
        gateway.wait_for("hello")
        value_error = assign(gateway, "v", "explode", inputs=inputs(kind="value"))
        key_error = assign(gateway, "k", "explode", inputs=inputs(kind="key"))
        not_json = assign(gateway, "j", "pair", result_encoding="json")
        reader = "task 'resize', argument 'image'"
        for_node = assign(
            gateway, "n", "pair", result_encoding="json", result_consumer=reader, task_name="pair"
        )
        unknown = assign(gateway, "u", "no_such_task")
        sent = [("v", value_error), ("k", key_error), ("j", not_json), ("n", for_node)]
        failures = {
            name: gateway.wait_for("failure", about(tok)).failure
            for name, tok in [*sent, ("u", unknown)]
        }
    bad = failures["v"]
    assert (bad.type, bad.message, bad.retryable, bad.language) == (
        "builtins.ValueError",
        "bad value",
        True,
        "python",
    )
    assert 'raise ValueError("bad value")' in bad.stack_trace
    assert (bad.cause.type, bad.cause.message) == ("builtins.OSError", "disk on fire")
    assert (failures["k"].type, failures["k"].retryable) == ("builtins.KeyError", False)
    assert (failures["j"].type, failures["j"].retryable) == ("headwater.EncodingError", False)
    assert (failures["n"].type, failures["n"].retryable) == ("headwater.EncodingError", False)
    assert failures["n"].message.startswith(
        "the result of task 'pair' must be json because task 'resize', argument 'image' reads"
    )
    assert "a tuple cannot be json" in failures["n"].message
    assert "\n" not in failures["n"].message
    assert (failures["u"].type, failures["u"].retryable) == ("headwater.UnknownTaskType", False)
    assert not gateway.all("result")


def test_the_workers_own_failure_around_a_task_fails_the_attempt_and_frees_its_slot(
    tasks_file: Path, server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error of the worker's own while it runs a task or describes its outcome (a
    bug; a task's exception whose ``__str__`` raised was one) is reported as the
    attempt's failure: the thread died on it, the attempt stayed held and its run
    RUNNING, the slot taken for good."""
    from headwater import _worker_attempts

    real = _worker_attempts.execute
    broken = {"once": True}

    def execute_breaking_once(*args: Any, **kwargs: Any) -> Any:
        if broken.pop("once", False):
            raise RuntimeError("describing the outcome broke")
        return real(*args, **kwargs)

    monkeypatch.setattr(_worker_attempts, "execute", execute_breaking_once)
    gateway = server.gateway
    with worker_thread(server.address, tasks_file, slots=1):
        gateway.wait_for("hello")
        first = assign(gateway, "b", "nothing_to_do")
        failure = gateway.wait_for("failure", about(first)).failure
        # The one slot is free again: the next attempt runs.
        second = assign(gateway, "s", "nothing_to_do")
        skipped = gateway.wait_for("skipped", about(second))
    assert (failure.type, failure.message) == (
        "builtins.RuntimeError",
        "describing the outcome broke",
    )
    assert skipped.reason == "nothing to do"


def test_skip_is_reported_as_skipped(tasks_file: Path, server: FakeServer) -> None:
    gateway = server.gateway
    with worker_thread(server.address, tasks_file, slots=1):
        gateway.wait_for("hello")
        tok = assign(gateway, "s", "nothing_to_do")
        skipped = gateway.wait_for("skipped", about(tok))
    assert skipped.reason == "nothing to do"


def test_slots_are_reported_and_an_extra_assignment_is_refused(
    tasks_file: Path, server: FakeServer
) -> None:
    gateway = server.gateway
    with worker_thread(server.address, tasks_file, slots=2):
        gateway.wait_for("hello")
        first = assign(gateway, "a", "block", inputs=inputs(seconds=30))
        second = assign(gateway, "b", "block", inputs=inputs(seconds=30))
        third = assign(gateway, "c", "block", inputs=inputs(seconds=30))
        full = gateway.wait_for("failure", about(third)).failure
        busy = gateway.wait_for("heartbeat", lambda hb: hb.used_slots == 2)
        assert busy.free_slots == 0
        assert sorted(t.task_run_id for t in busy.running) == ["run1/a", "run1/b"]
        gateway.send(heartbeat_ack=worker_pb2.HeartbeatAck(cancel=[first]))
        gateway.send(cancel=worker_pb2.CancelTaskRun(token=second, reason="user"))
        gateway.wait_for("cancelled", about(first))
        gateway.wait_for("cancelled", about(second))
        idle = gateway.wait_for("heartbeat", since=gateway.mark())
        assert (idle.used_slots, idle.free_slots, list(idle.running)) == (0, 2, [])
    assert (full.type, full.retryable) == ("headwater.WorkerFull", True)
    assert not gateway.all("result")


def test_an_attempt_waiting_for_a_flow_it_started_lends_its_slot() -> None:
    """While a task waits for a flow run it started (``FlowLauncher`` around
    CreateFlowRun and the wait), its slot is free for another assignment, as the server
    counts it; taken back after, also when it started two flows at once."""
    from headwater._worker_attempts import Attempts

    sent: list[worker_pb2.ConnectRequest] = []
    attempts = Attempts({}, 1, "w", sent.append)
    token = ("run1/parent", 1)
    attempts.running[token] = object()  # type: ignore[assignment]
    assert (attempts.heartbeat().used_slots, attempts.heartbeat().free_slots) == (1, 0)
    with attempts.lending(token):
        assert (attempts.heartbeat().used_slots, attempts.heartbeat().free_slots) == (0, 1)
        with attempts.lending(token):  # a second flow started from the same task
            assert attempts.heartbeat().used_slots == 0
        assert attempts.heartbeat().used_slots == 0, "lent while any child runs"
    assert (attempts.heartbeat().used_slots, attempts.heartbeat().free_slots) == (1, 0)
    with attempts.lending(token):
        del attempts.running[token]  # the attempt ended while waiting
        assert attempts.heartbeat().used_slots == 0
    assert not sent


def test_batched_assignments_run_and_attempt_threads_are_reused(
    tmp_path: Path, tasks_file: Path
) -> None:
    fake = FakeServer(tmp_path / "hw.db", FakeGateway(welcome(features=["batch"])))
    gateway = fake.gateway
    before = set(threading.enumerate())
    try:
        with worker_thread(fake.address, tasks_file, slots=2):
            hello = gateway.wait_for("hello")
            assert list(hello.features) == ["batch", "drain"]
            tokens = [token(f"b{i}") for i in range(40)]
            for pair in zip(tokens[::2], tokens[1::2], strict=True):
                # Two assignments in one message, as a server sends what is ready at once.
                batch = worker_pb2.ConnectResponseBatch(
                    messages=[
                        worker_pb2.ConnectResponse(
                            assignment=worker_pb2.Assignment(
                                token=tok,
                                task_type="hw_tasks.add",
                                map_index=-1,
                                inputs=inputs(a=i, b=1),
                            )
                        )
                        for i, tok in enumerate(pair)
                    ]
                )
                gateway.send(batch=batch)
                for tok in pair:
                    gateway.wait_for("result", about(tok))
                    gateway.send(ack=worker_pb2.Ack(token=tok, accepted=True))
            pooled = [
                t
                for t in set(threading.enumerate()) - before
                if t.name.startswith("headwater-task-")
            ]
        results = {r.token.task_run_id: decode_value(r.result) for r in gateway.all("result")}
    finally:
        fake.stop()
    assert results == {f"run1/b{i}": i % 2 + 1 for i in range(40)}
    assert len(pooled) <= 2, "attempt threads are reused, at most `slots` of them idle"


def test_a_cancelled_attempt_sends_no_result_and_frees_its_slot(
    tasks_file: Path, server: FakeServer
) -> None:
    gateway = server.gateway
    with worker_thread(server.address, tasks_file, slots=1):
        gateway.wait_for("hello")
        tok = assign(gateway, "slow", "block", inputs=inputs(seconds=30))
        gateway.wait_for("started", about(tok))
        gateway.send(cancel=worker_pb2.CancelTaskRun(token=tok, reason="user"))
        gateway.wait_for("cancelled", about(tok))
        after = assign(gateway, "after", "add", inputs=inputs(a=1, b=2))
        assert decode_value(gateway.wait_for("result", about(after)).result) == 3
    assert [r.token for r in gateway.all("result")] == [after]
    assert not gateway.all("failure")


def test_an_attempt_over_its_timeout_fails_timed_out(tasks_file: Path, server: FakeServer) -> None:
    gateway = server.gateway
    with worker_thread(server.address, tasks_file, slots=1):
        gateway.wait_for("hello")
        msg = worker_pb2.Assignment(
            token=token("t"), task_type="hw_tasks.block", inputs=inputs(seconds=30)
        )
        msg.timeout.FromMilliseconds(300)
        gateway.send(assignment=msg)
        report = gateway.wait_for("failure", about(token("t")))
        after = assign(gateway, "after", "add", inputs=inputs(a=1, b=2))
        gateway.wait_for("result", about(after))
    assert report.timed_out
    assert (report.failure.type, report.failure.retryable) == ("headwater.TaskTimeout", True)
    assert [r.token for r in gateway.all("result")] == [after]


def test_reconnects_with_its_running_attempts_and_delivers_their_outcome(
    tmp_path: Path, tasks_file: Path
) -> None:
    first = FakeServer(tmp_path / "hw.db", FakeGateway(welcome()))
    second: FakeServer | None = None
    try:
        with worker_thread(first.address, tasks_file, slots=1) as worker:
            hello = first.gateway.wait_for("hello")
            tok = assign(first.gateway, "slow", "block", inputs=inputs(seconds=1.0))
            first.gateway.wait_for("started", about(tok))
            first.stop()
            second = FakeServer(tmp_path / "hw2.db", FakeGateway(welcome()), port=first.port)
            again = second.gateway.wait_for("hello")
            assert again.worker_id == hello.worker_id == worker.worker_id
            assert list(again.running) == [tok]
            result = second.gateway.wait_for("result", about(tok))
            assert decode_value(result.result) == "finished"
    finally:
        if second is not None:
            second.stop()


def test_what_a_task_prints_while_its_server_is_away_reaches_the_next_one(
    tmp_path: Path, tasks_file: Path
) -> None:
    """A user trial: a task printed 40 lines across a server restart; 20 were kept, the
    ones printed while no server was there were dropped. The worker keeps them for the
    next server, before the outcome."""
    first = FakeServer(tmp_path / "hw.db", FakeGateway(welcome()))
    second: FakeServer | None = None
    said = lambda text: lambda msg: msg.message == text  # noqa: E731
    try:
        with worker_thread(first.address, tasks_file, slots=1) as worker:
            first.gateway.wait_for("hello")
            tok = assign(first.gateway, "gated", "gated", inputs=inputs(folder=str(tmp_path)))
            first.gateway.wait_for("log", said("one"))
            first.stop()
            deadline = time.monotonic() + WAIT
            while worker._session is not None and worker._session.welcome is not None:
                assert time.monotonic() < deadline, "the worker did not see its server go"
                time.sleep(0.01)
            (tmp_path / "one").touch()  # "two" is printed with no server
            deadline = time.monotonic() + WAIT
            while not (tmp_path / "said-two").exists():
                assert time.monotonic() < deadline, "the task printed nothing more"
                time.sleep(0.01)
            second = FakeServer(tmp_path / "hw2.db", FakeGateway(welcome()), port=first.port)
            assert list(second.gateway.wait_for("hello").running) == [tok]
            second.gateway.wait_for("log", said("two"))
            (tmp_path / "two").touch()
            second.gateway.wait_for("log", said("three"))
            (tmp_path / "three").touch()
            assert decode_value(second.gateway.wait_for("result", about(tok)).result) == "said"
            kinds = [m.WhichOneof("message") for m in second.gateway.received]
            assert kinds.index("log") < kinds.index("result")
    finally:
        if second is not None:
            second.stop()


def test_a_refused_outcome_sent_again_after_a_reconnect_is_not_a_warning(
    tmp_path: Path, tasks_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An outcome whose Ack was lost with the session (the server restarted) is sent
    again; a refusal of it (the server had stored it before it restarted: "already
    ended SUCCESS") is logged as information. A refusal of a first send still warns."""
    gateway = FakeGateway(welcome())
    gateway.ack_outcomes = False
    first = FakeServer(tmp_path / "hw.db", gateway)
    second: FakeServer | None = None
    stored = "stale attempt 1 of task run 'done': the attempt already ended SUCCESS"
    try:
        with (
            caplog.at_level(logging.INFO, "headwater"),
            worker_thread(first.address, tasks_file, slots=1),
        ):
            gateway.wait_for("hello")
            tok = assign(gateway, "done", "add", inputs=inputs(a=1, b=2))
            gateway.wait_for("result", about(tok))  # (never acknowledged)
            first.stop()
            again = FakeGateway(welcome())
            again.ack_outcomes = False
            second = FakeServer(tmp_path / "hw2.db", again, port=first.port)
            assert list(again.wait_for("hello").running) == [tok]
            again.wait_for("result", about(tok))  # sent again
            again.send(ack=worker_pb2.Ack(token=tok, accepted=False, reason=stored, code=9))
            fresh = assign(again, "fresh", "add", inputs=inputs(a=2, b=2))
            again.wait_for("result", about(fresh))
            refused = "stale attempt 1 of task run 'fresh': the attempt timed out"
            again.send(ack=worker_pb2.Ack(token=fresh, accepted=False, reason=refused, code=9))
            deadline = time.monotonic() + WAIT
            while not (stored in caplog.text and refused in caplog.text):
                assert time.monotonic() < deadline, "the worker logged no refusal"
                time.sleep(0.01)
    finally:
        if second is not None:
            second.stop()
    records = {r.getMessage(): r.levelno for r in caplog.records if "outcome" in r.getMessage()}
    resent = [m for m in records if stored in m]
    first_send = [m for m in records if refused in m]
    assert len(resent) == 1 and records[resent[0]] == logging.INFO, records
    assert "sent again after reconnecting" in resent[0]
    assert len(first_send) == 1 and records[first_send[0]] == logging.WARNING, records


def test_a_refusal_before_welcome_stops_the_worker(tmp_path: Path, tasks_file: Path) -> None:
    gateway = FakeGateway(
        welcome(), reject=(grpc.StatusCode.FAILED_PRECONDITION, "protocol 1 is not supported")
    )
    fake = FakeServer(tmp_path / "hw.db", gateway)
    try:
        worker = Worker(fake.address, [str(tasks_file)])
        with pytest.raises(WorkerError, match="protocol 1 is not supported"):
            worker.run()
    finally:
        fake.stop()
    assert len(gateway.all("hello")) == 1


def test_load_errors_name_the_module() -> None:
    from headwater._loader import LoadError

    with pytest.raises(LoadError, match="no module named 'no_such_module_here'"):
        Worker("127.0.0.1:1", ["no_such_module_here"])
    with pytest.raises(ValueError, match="slots must be at least 1"):
        Worker("127.0.0.1:1", [], slots=0)


def test_two_flows_of_one_name_are_refused_when_the_worker_loads_them(tmp_path: Path) -> None:
    """A worker serving two files that each define a flow ``child`` built whichever came
    first when a server asked for ``child``: the other module's body (a user trial). The
    same flow imported into a second module is no clash."""
    body = "from headwater import flow\n\n@flow\ndef child(n: int = 1) -> int:\n    return {}\n"
    (tmp_path / "hwclash_a.py").write_text(body.format("n"))
    (tmp_path / "hwclash_b.py").write_text(body.format("n + 1"))
    (tmp_path / "hwclash_c.py").write_text("from hwclash_a import child\n")
    from headwater._loader import LoadError

    files = [str(tmp_path / f"hwclash_{x}.py") for x in "abc"]
    try:
        with pytest.raises(LoadError) as info:
            Worker("127.0.0.1:1", files[:2])
        assert str(info.value) == (
            "two flows are named 'child' (in hwclash_a and hwclash_b): a server knows a "
            "flow by its name; give one of them another name (@flow(name=...))"
        )
        assert list(Worker("127.0.0.1:1", [files[0], files[2]]).flows) == ["child"]
    finally:
        for name in ("hwclash_a", "hwclash_b", "hwclash_c"):
            sys.modules.pop(name, None)


def test_a_file_inside_a_package_is_loaded_under_its_dotted_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--module hwpkg/jobs.py`` (a file of package ``hwpkg``) offers
    ``hwpkg.jobs.hello``, the task type a client that imports ``hwpkg.jobs`` sends: it
    offered ``jobs.hello``, and runs waited forever for a worker. Relative imports work
    too; a file outside any package keeps its stem."""
    from headwater._loader import load_file

    package = tmp_path / "hwpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("def greet(n):\n    return 'hi ' + n\n")
    (package / "jobs.py").write_text(
        "from headwater import task\nfrom . import helpers\n\n"
        "@task\ndef hello(n: str) -> str:\n    return helpers.greet(n)\n"
    )
    (tmp_path / "hwloose.py").write_text(
        "from headwater import task\n\n@task\ndef solo() -> int:\n    return 1\n"
    )
    monkeypatch.setattr(sys, "path", list(sys.path))
    names = ("hwpkg", "hwpkg.jobs", "hwpkg.helpers", "hwloose")
    try:
        module = load_file(str(package / "jobs.py"))
        assert module.__name__ == "hwpkg.jobs"
        assert module.hello.task_type == "hwpkg.jobs.hello"
        assert module.hello.fn("x") == "hi x"
        assert "hwpkg.jobs.hello" in Worker("127.0.0.1:1", [str(package / "jobs.py")]).tasks
        assert load_file(str(tmp_path / "hwloose.py")).solo.task_type == "hwloose.solo"
    finally:
        for name in names:  # imported here: not left for other tests of this process
            sys.modules.pop(name, None)


def test_attempts_the_server_does_not_keep_are_abandoned(tmp_path: Path, tasks_file: Path) -> None:
    first = FakeServer(tmp_path / "hw.db", FakeGateway(welcome()))
    second: FakeServer | None = None
    try:
        with worker_thread(first.address, tasks_file, slots=1):
            first.gateway.wait_for("hello")
            tok = assign(first.gateway, "slow", "block", inputs=inputs(seconds=30))
            first.gateway.wait_for("started", about(tok))
            first.stop()
            gateway = FakeGateway(welcome(), keep_running=False)
            second = FakeServer(tmp_path / "hw2.db", gateway, port=first.port)
            assert list(gateway.wait_for("hello").running) == [tok]
            beat = gateway.wait_for("heartbeat")
            assert (beat.used_slots, list(beat.running)) == (0, [])
            after = assign(gateway, "after", "add", inputs=inputs(a=1, b=2))
            gateway.wait_for("result", about(after))
        assert [r.token for r in gateway.all("result")] == [after]
        assert not gateway.all("failure") and not gateway.all("cancelled")
    finally:
        if second is not None:
            second.stop()


def test_a_silent_server_is_dropped_and_dialled_again(tmp_path: Path, tasks_file: Path) -> None:
    quiet = welcome()
    quiet.heartbeat_timeout.FromMilliseconds(200)
    gateway = FakeGateway(quiet, answer_heartbeats=False)
    fake = FakeServer(tmp_path / "hw.db", gateway)
    try:
        with worker_thread(fake.address, tasks_file, slots=1):
            first = gateway.wait_for("hello")
            again = gateway.wait_for("hello", since=1)  # a second session
            assert again.worker_id == first.worker_id
    finally:
        fake.stop()


def test_a_drain_that_asks_to_exit_lets_running_work_finish_then_stops(
    tasks_file: Path, server: FakeServer
) -> None:
    gateway = server.gateway
    gateway.ack_outcomes = False  # the outcome stays unacknowledged until the test acks
    with worker_thread(server.address, tasks_file, slots=2) as worker:
        assert "drain" in gateway.wait_for("hello").features
        tok = assign(gateway, "slow", "block", inputs=inputs(seconds=0.3))
        gateway.wait_for("started", about(tok))
        gateway.send(drain=worker_pb2.Drain(exit_when_idle=True))
        gateway.wait_for("result", about(tok))
        assert not worker.drained, "an outcome not acknowledged yet is still held"
        gateway.send(ack=worker_pb2.Ack(token=tok, accepted=True))
        deadline = time.monotonic() + WAIT
        while not worker.drained:
            assert time.monotonic() < deadline, "the drained worker did not stop once idle"
            time.sleep(0.02)


def test_a_lifted_drain_keeps_the_worker_running(tasks_file: Path, server: FakeServer) -> None:
    gateway = server.gateway
    with worker_thread(server.address, tasks_file, slots=1) as worker:
        gateway.wait_for("hello")
        tok = assign(gateway, "slow", "block", inputs=inputs(seconds=0.3))
        gateway.wait_for("started", about(tok))
        gateway.send(drain=worker_pb2.Drain(exit_when_idle=True))
        gateway.send(drain=worker_pb2.Drain(cancelled=True))
        gateway.wait_for("result", about(tok))
        gateway.send(ack=worker_pb2.Ack(token=tok, accepted=True))
        after = assign(gateway, "after", "add", inputs=inputs(a=1, b=2))
        assert decode_value(gateway.wait_for("result", about(after)).result) == 3
        assert not worker.drained and not worker.exit_when_idle


def test_reconnect_tries_stay_close_together_for_a_while_after_a_connection_broke() -> None:
    """A restarted server's queued work waits for the workers' next try: for the first
    SOON_WINDOW seconds after a welcomed connection broke, tries are at most
    BACKOFF_SOON apart; later (or a server never reached) the backoff grows to MAX."""
    assert reconnect_delay(0, 0.0) == BACKOFF_INITIAL
    assert [reconnect_delay(n, 1.0) for n in range(3, 12)] == [BACKOFF_SOON] * 9
    assert reconnect_delay(20, SOON_WINDOW - 0.1) == BACKOFF_SOON
    assert reconnect_delay(20, SOON_WINDOW) == BACKOFF_MAX
    assert reconnect_delay(2, SOON_WINDOW + 5) == BACKOFF_INITIAL * 4


class _CountingTransfer:
    """Stands in for PayloadTransfer: counts uploads, stores nothing."""

    def __init__(self) -> None:
        self.uploads = 0

    def upload(self, encoded: Any) -> payload_pb2.PayloadRef:
        self.uploads += 1
        return payload_pb2.PayloadRef(
            payload_id=f"{self.uploads:032x}", size_bytes=len(encoded.data), sha256="0" * 64
        )


def test_a_split_result_too_large_for_one_message_is_refused_before_any_upload() -> None:
    """A million-element split cannot fit one message even with every element by
    reference: the worker says so at once, instead of uploading elements one by one
    for many minutes and failing at the end."""
    from headwater._worker_codec import encode_result
    from headwater.wire import EncodingError

    transfer = _CountingTransfer()
    with pytest.raises(EncodingError, match=r"split into 1,000,000 elements does not fit"):
        encode_result(
            list(range(1_000_000)),
            result_encoding="json",
            split=True,
            inline_limit=0,
            transfer=transfer,  # type: ignore[arg-type]
        )
    assert transfer.uploads == 0
    # 100,000 small elements fit inline: no upload, every element there.
    value = encode_result(
        list(range(100_000)),
        result_encoding="json",
        split=True,
        inline_limit=0,
        transfer=transfer,  # type: ignore[arg-type]
    )
    assert transfer.uploads == 0 and len(value.items) == 100_000
    assert decode_value(value.items[99_999]) == 99_999


def test_the_server_s_message_limit_from_welcome_bounds_a_split_result(tmp_path: Path) -> None:
    """The worker keeps what it sends under the server's max_message_bytes, which the
    Welcome names (a server may accept less, or more, than gRPC's 4 MiB), and says in
    its Hello how large a message it accepts itself."""
    small = FakeGateway(welcome(max_message_bytes=1 << 20))
    fake = FakeServer(tmp_path / "hw.db", small)
    tasks = tmp_path / "hw_tasks.py"
    tasks.write_text(TASKS)
    try:
        with worker_thread(fake.address, tasks, max_message_bytes=8 << 20) as worker:
            hello = small.wait_for("hello")
            tok = assign(small, "sq", "squares", inputs=inputs(n=60_000), split_result=True)
            refused = small.wait_for("failure", about(tok)).failure
            fits = assign(small, "ok", "squares", inputs=inputs(n=20_000), split_result=True)
            result = small.wait_for("result", about(fits)).result
            assert worker.attempts.max_message_bytes == 1 << 20
    finally:
        fake.stop()
    assert hello.max_message_bytes == 8 << 20
    assert (refused.type, refused.retryable) == ("headwater.EncodingError", False)
    assert "split into 60,000 elements does not fit in one message (960 KiB" in refused.message
    assert len(result.items) == 20_000


def test_a_larger_message_limit_lets_a_wider_split_stay_inline() -> None:
    """At 16 MiB (a server and workers started with --max-message-bytes) 300,000
    small elements fit one message, every one inline (~9 MB, over gRPC's 4 MiB); at
    8 MiB they do not, and nothing is uploaded before the worker says so."""
    from headwater._worker_codec import encode_result
    from headwater.wire import EncodingError

    transfer = _CountingTransfer()
    value = encode_result(
        list(range(300_000)),
        result_encoding="json",
        split=True,
        inline_limit=0,
        transfer=transfer,  # type: ignore[arg-type]
        max_message_bytes=16 << 20,
    )
    # The whole list (2 MB of JSON) is uploaded once; the elements are all inline.
    assert transfer.uploads == 1 and value.WhichOneof("kind") == "ref"
    assert len(value.items) == 300_000
    assert all(item.WhichOneof("kind") == "inline" for item in value.items)
    assert decode_value(value.items[299_999]) == 299_999
    assert 4 << 20 < value.ByteSize() < 16 << 20
    with pytest.raises(EncodingError, match=r"\(8,128 KiB under the server's max_message"):
        encode_result(
            list(range(300_000)),
            result_encoding="json",
            split=True,
            inline_limit=0,
            transfer=transfer,  # type: ignore[arg-type]
            max_message_bytes=8 << 20,
        )
    assert transfer.uploads == 1
