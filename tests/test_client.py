"""headwater.Client against a real server (no worker: runs wait in SCHEDULED)."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

import headwater
from headwater import Client, ServerError, flow, task
from headwater.wire import FlowRunState, Limits, TaskRunState
from headwater_runtime.server._app import RunningServer, start_server
from headwater_runtime.server._core import ServerSettings

T = TypeVar("T")


@task
def shout(text: str) -> str:
    return text.upper()


@flow
def greet(text: str = "hi") -> str:
    return shout(text)


class ServerThread:
    """A real server on its own event loop in a background thread."""

    def __init__(self, db: str | Path, token: str | None, **settings_: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.running: RunningServer | None = None
        settings = ServerSettings(port=0, db=str(db), token=token, **settings_)

        def main() -> None:
            asyncio.set_event_loop(self.loop)
            self.running = self.loop.run_until_complete(start_server(settings))
            self.ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=main, daemon=True)
        self.thread.start()
        assert self.ready.wait(30), "server did not start"

    @property
    def address(self) -> str:
        assert self.running is not None
        return f"127.0.0.1:{self.running.port}"

    def call(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` on the server's event loop; its result."""
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(30)

    def stop(self) -> None:
        assert self.running is not None
        future = asyncio.run_coroutine_threadsafe(self.running.stop(None), self.loop)
        try:
            future.result(30)
        except TimeoutError:
            # A stop that hangs is a bug: say where every thread and task is.
            import faulthandler
            import sys

            faulthandler.dump_traceback(sys.stderr, all_threads=True)
            try:  # (read from another thread: best effort)
                for task in list(asyncio.all_tasks(self.loop)):
                    task.print_stack(file=sys.stderr)
            except RuntimeError:
                pass
            raise
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


@pytest.fixture
def server(db: str) -> Iterator[ServerThread]:
    s = ServerThread(db, token="tok")
    yield s
    s.stop()


def test_deploy_run_inspect_and_cancel(server: ServerThread) -> None:
    with Client(server.address, token="tok") as client:
        assert greet.deploy(client) == "1"
        assert client.deploy(greet) == "1"  # same graph, same version
        run = client.run(greet, {"text": "hello"}, idempotency_key="once")
        assert run.created and run.state is FlowRunState.RUNNING
        assert client.run("greet", {"text": "hello"}, idempotency_key="once").id == run.id
        with pytest.raises(ServerError, match=f"already used for flow run {run.id}") as taken:
            client.run("greet", {"text": "bye"}, idempotency_key="once")
        assert taken.value.code == grpc.StatusCode.ALREADY_EXISTS
        # No worker can take the task: it waits, visibly SCHEDULED.
        shown = client.get(run.id, include_task_runs=True)
        assert [(t.key, t.state) for t in shown.task_runs] == [("shout", TaskRunState.SCHEDULED)]
        # Read as an embedded run's (task_run(key), .attempt): code works on both.
        assert shown.task_run("shout").attempt == shown.task_run("shout").attempts == 0
        page = shown._repr_html_()  # as a notebook shows it
        assert "<b>greet</b>" in page and ">RUNNING</span>" in page
        assert "<td style='text-align:left'>shout</td><td>1</td>" in page
        with pytest.raises(
            KeyError, match=r"no task run 'nope' in this flow run \(some keys: shout\)"
        ):
            shown.task_run("nope")
        with pytest.raises(KeyError, match=r"\(some keys: none read\)"):
            client.get(run.id).task_run("shout")
        assert [r.id for r in client.list_runs()] == [run.id]
        with pytest.raises(ServerError, match="has no result yet"):
            client.task_result(run.id, "shout")
        with pytest.raises(TimeoutError, match=rf"flow run '{run.id}' has not ended after 0.3s"):
            client.wait(run.id, timeout=0.3)  # (no worker: it would wait for ever)
        # A unique prefix of the id does for cancel and wait, as for get.
        cancelled = client.cancel(run.id[:8], "no workers today")
        assert cancelled.state is FlowRunState.CANCELLED and cancelled.id == run.id
        assert client.wait(run.id[:8]).state is FlowRunState.CANCELLED
        assert client.wait(run.id).state is FlowRunState.CANCELLED
        with pytest.raises(ServerError, match=r"has no result \(state CANCELLED\)"):
            client.task_result(run.id, "shout")
        with pytest.raises(ServerError, match="no task 'nope'"):
            client.task_result(run.id, "nope")
        with pytest.raises(ServerError, match="no task 'nope'"):  # a prefix: that run's
            client.task_result(run.id[:8], "nope")
        with pytest.raises(ServerError, match=r"has no task 'nope' \(its tasks: shout\)") as e:
            client.logs(run.id, task_id="nope")
        assert e.value.code == grpc.StatusCode.NOT_FOUND
        assert client.logs(run.id, task_id="shout") == []


def test_list_runs_pages_past_what_one_call_returns(
    server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server returns at most 1,000 runs a call; `runs list --limit 1001` said
    'page_size must be 1..1000'. The Client pages (here 2 a page, to see it)."""
    import headwater._client as client_module

    monkeypatch.setattr(client_module, "LIST_PAGE", 2)
    with Client(server.address, token="tok") as client:
        made = [client.run(greet, {"text": str(i)}).id for i in range(5)]
        newest_first = made[::-1]
        assert [r.id for r in client.list_runs(limit=3)] == newest_first[:3]
        assert [r.id for r in client.list_runs(limit=100)] == newest_first
        with pytest.raises(ValueError, match="limit must be at least 1"):
            client.list_runs(limit=0)


def test_large_parameters_are_uploaded_not_inlined(server: ServerThread) -> None:
    big = "x" * (3 << 20)
    with Client(server.address, token="tok") as client:
        value = client._encode(big)
        assert value.WhichOneof("kind") == "ref"
        assert client._decode(value) == big
        run = client.run(greet, {"text": big})
        assert run.state is FlowRunState.RUNNING


def test_a_parameter_is_inlined_only_when_its_whole_value_fits_the_servers_limit(
    db: str,
) -> None:
    """The server counts a parameter's whole encoded Value (data, metadata, message)
    against max_parameter_bytes; the client inlined by the size of the data alone, so a
    parameter of 1 MiB of data was sent inline and refused by a default server, and one
    over a lower limit was refused however small."""
    server = ServerThread(db, token="tok")
    try:
        with Client(server.address, token="tok") as client:
            exactly = "x" * ((1 << 20) - 2)  # 1 MiB of JSON data with its quotes
            assert client._encode(exactly).WhichOneof("kind") == "ref"
            assert client._encode("x" * 1000).WhichOneof("kind") == "inline"
            assert client.run(greet, {"text": exactly}).state is FlowRunState.RUNNING
    finally:
        server.stop()
    server = ServerThread(db, token="tok", limits=Limits(max_parameter_bytes=500))
    try:
        with Client(server.address, token="tok") as client:
            assert client.server_info()["max_parameter_bytes"] == 500
            assert client._encode("x" * 400).WhichOneof("kind") == "inline"
            assert client._encode("x" * 1000).WhichOneof("kind") == "ref"
            assert client.run(greet, {"text": "x" * 1000}).state is FlowRunState.RUNNING
    finally:
        server.stop()


def test_errors_are_one_clear_line(server: ServerThread, tmp_path: Path) -> None:
    with (
        Client(server.address, token="wrong") as client,
        pytest.raises(ServerError, match="refused the credential") as refused,
    ):
        client.list_runs()
    # Said for a Client's user too, not only for the command line's (a user trial).
    assert str(refused.value).endswith(
        "(give one with --token on the command line or Client(token=...), or set HEADWATER_TOKEN)"
    ), str(refused.value)
    with (
        Client(server.address, token="tok") as client,
        pytest.raises(ServerError, match="'nope' is not registered"),
    ):
        client.run("nope")
    with (
        Client("127.0.0.1:1", token="tok", timeout=2) as client,
        pytest.raises(ServerError, match="cannot reach the Headwater server"),
    ):
        client.list_runs()
    # with several addresses, the error names them all: each was tried
    with (
        Client("127.0.0.1:1,127.0.0.1:2", token="tok", timeout=2) as client,
        pytest.raises(
            ServerError,
            match=re.escape("cannot reach any Headwater server of 127.0.0.1:1,127.0.0.1:2"),
        ),
    ):
        client.list_runs()


@flow(name="fan")
def fan() -> list[str]:
    return [shout(f"x{i}") for i in range(2_000)]


def test_a_graph_over_the_message_limit_says_which_limit_and_how_to_raise_it(
    db: str,
) -> None:
    """gRPC alone says 'Received message larger than max (N vs. M)': the error names
    the flow, its tasks and graph size, the limit and the flag that raises it."""
    limit = 64 * 1024
    small = Limits(max_message_bytes=limit, max_chunk_bytes=limit // 2)
    server = ServerThread(db, token="tok", limits=small)
    try:
        with Client(server.address, token="tok") as client:
            assert client.deploy(greet) == "1"  # (a small graph passes)
            with pytest.raises(ServerError) as refused:
                client.deploy(fan)
    finally:
        server.stop()
    message = str(refused.value)
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert re.fullmatch(
        r"register flow 'fan': flow 'fan' has 2,000 tasks: its graph is a 0\.\d MB message, "
        r"over the server's message limit of 65,536 bytes \(max_message_bytes, 4 MiB by "
        r"default\): raise it on the server with --max-message-bytes or "
        r"HEADWATER_MAX_MESSAGE_BYTES, and start its workers with the same "
        r"--max-message-bytes .*",
        message,
    ), message
    assert "\n" not in message


@task
def _inc(x: int) -> int:
    return x + 1


@flow(name="constant")
def _constant(n: int = 20_000) -> list[int]:
    return _inc.map(list(range(n)))


def test_a_graph_over_the_message_limit_for_a_constant_names_the_task_given_it(
    db: str,
) -> None:
    """A one-task graph over the limit because of a list written in the flow body: the
    error names the task given it and says to have a task return the data (it advised
    putting fewer tasks in a graph of one, a user trial)."""
    limit = 64 * 1024
    small = Limits(max_message_bytes=limit, max_chunk_bytes=limit // 2)
    server = ServerThread(db, token="tok", limits=small)
    try:
        with Client(server.address, token="tok") as client, pytest.raises(ServerError) as refused:
            client.deploy(_constant)
    finally:
        server.stop()
    message = str(refused.value)
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "flow 'constant' has 1 task: its graph is a 0." in message
    assert "MB of it the arguments of task '_inc' written in the flow body" in message
    assert message.endswith(
        "or have a task return that data, or pass it as a parameter, rather than writing "
        "it into the flow body (docs/limits.md)"
    ), message
    assert "fewer tasks" not in message


def test_client_is_public() -> None:
    assert headwater.Client is Client


@task
def _delayed(x: int, delay: float) -> int:
    return x


@task
def _three() -> list[int]:
    return [0, 1, 2]


@flow
def maps_over_a_scalar(delay: float = 0.5) -> list[int]:
    return _delayed.map(_three(), delay=delay)  # (meant: delay=unmapped(delay))


def test_a_run_mapping_over_a_scalar_parameter_is_refused_saying_what_to_do(
    server: ServerThread,
) -> None:
    """A `.map()` that maps over a parameter meant to go whole (a float): the server
    asked for the parameter to be passed, with its elements, and passing it was taken
    and failed the task at run time (a user trial). The client refuses it before
    anything is sent, pointing at unmapped(...)."""
    from headwater import ParameterError

    with Client(server.address, token="tok") as client:
        for params in ({}, {"delay": 2.0}):
            with pytest.raises(ParameterError) as info:
                client.run(maps_over_a_scalar, params)
            assert str(info.value) == (
                "parameter 'delay' is a float, but a task maps over it: on a server a task "
                "maps over a list or tuple parameter only; pass a list, or, if each call "
                "should get the whole value, wrap it in unmapped(...) where the flow passes "
                "it to .map()"
            )
        assert client.list_runs() == []  # nothing was sent


def test_a_task_run_that_ended_well_reports_no_failure() -> None:
    """A user trial: after a run retry, a task run that now succeeded (it had been
    TRIGGER_FAILED) still reported that failure, where an embedded FlowRun reports
    none. A failed one reports its last failure; one cancelled while it waited to be
    retried, the failure it waited after."""
    from headwater._client import task_run_info
    from headwater.v1 import run_pb2, state_pb2

    def made(state: TaskRunState, *steps: tuple[TaskRunState, str]) -> run_pb2.TaskRun:
        t = run_pb2.TaskRun(id="r/load", name="load", task_id="load", map_index=-1)
        t.state = state_pb2.TaskRunState.ValueType(state.value)
        for step, failed in steps:
            entry = t.history.add(state=state_pb2.TaskRunState.ValueType(step.value))
            if failed:
                entry.failure.type, entry.failure.message = "builtins.ValueError", failed
        return t

    S = TaskRunState
    retried_run = [(S.TRIGGER_FAILED, "trigger all_successful did not pass"), (S.PENDING, "")]
    good = made(S.SUCCESS, *retried_run, (S.SCHEDULED, ""), (S.RUNNING, ""), (S.SUCCESS, ""))
    assert task_run_info(good).failure is None
    bad = made(
        S.FAILED, (S.RUNNING, ""), (S.RETRYING, "first"), (S.RUNNING, ""), (S.FAILED, "last")
    )
    failure = task_run_info(bad).failure
    assert failure is not None and failure.message == "last"
    cancelled = made(S.CANCELLED, (S.RUNNING, ""), (S.RETRYING, "first"), (S.CANCELLED, ""))
    failure = task_run_info(cancelled).failure
    assert failure is not None and failure.message == "first"


def test_a_task_runs_run_seconds_count_its_attempts_only() -> None:
    """`task time` counted the time between a task run's first start and its end: the
    pauses between attempts, and hours a run sat FAILED before its retry (a user
    trial). ``run_seconds`` adds up each attempt, from RUNNING to its end."""
    from headwater._client import task_run_info
    from headwater.v1 import run_pb2, state_pb2

    S = TaskRunState
    t = run_pb2.TaskRun(id="r/load", name="load", task_id="load", map_index=-1)
    t.state = state_pb2.TaskRunState.ValueType(S.SUCCESS.value)
    steps = [
        (S.SCHEDULED, 0.0), (S.RUNNING, 1.0), (S.RETRYING, 3.0),  # 2 s
        (S.SCHEDULED, 13.0), (S.RUNNING, 14.0), (S.FAILED, 15.5),  # 1.5 s
        (S.PENDING, 3600.0), (S.SCHEDULED, 3600.0), (S.RUNNING, 3601.0),  # a run retry
        (S.SUCCESS, 3601.25),  # 0.25 s
    ]  # fmt: skip
    for state, at in steps:
        entry = t.history.add(state=state_pb2.TaskRunState.ValueType(state.value))
        entry.timestamp.FromNanoseconds(int(at * 1e9))
    info = task_run_info(t)
    assert info.run_seconds == 3.75 and info.duration == 3600.25
    del t.history[-1]
    t.state = state_pb2.TaskRunState.ValueType(S.RUNNING.value)
    assert task_run_info(t).run_seconds == 3.5  # (the one running is not counted yet)
    pending = run_pb2.TaskRun(id="r/x", name="x", state=state_pb2.TASK_RUN_STATE_PENDING)
    assert task_run_info(pending).run_seconds is None


def test_a_closed_client_says_so_and_bad_timeouts_are_refused(server: ServerThread) -> None:
    """A user trial: after close() (or its with block), calls failed with gRPC's own
    "Cannot invoke RPC on closed channel!"; Client(timeout=None) was taken and every
    call then failed with "unsupported operand type(s)"; wait(timeout=0) on an ended
    run raised TimeoutError without asking the server."""
    with Client(server.address, token="tok") as client:
        run = client.run(greet, {"text": "hi"})
        client.cancel(run.id)
        assert client.wait(run.id, timeout=0).state is FlowRunState.CANCELLED
        assert client.wait(run.id, timeout=-1).state is FlowRunState.CANCELLED
        with pytest.raises(TypeError, match="timeout must be a number of seconds, got '5'"):
            client.wait(run.id, timeout="5")  # type: ignore[arg-type]
    closed = f"this Client of {server.address} is closed"
    for call in (client.list_runs, lambda: client.wait(run.id), lambda: client.logs(run.id)):
        with pytest.raises(RuntimeError, match=closed):
            call()
    with pytest.raises(RuntimeError, match=closed), client:
        pass
    for bad in (None, 0, -1, "30"):
        with pytest.raises((TypeError, ValueError), match="timeout must be"):
            Client(server.address, timeout=bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="address must be 'HOST:PORT'"):
        Client(47531)  # type: ignore[arg-type]


def test_a_webhooks_flows_and_states_must_be_lists_of_known_names(server: ServerThread) -> None:
    """A user trial: flows="adder" was stored as five one-letter names (the hook never
    fired); states="FAILED" said KeyError: 'F', and an unknown state a bare KeyError."""
    from headwater import FlowRunState as State

    with Client(server.address, token="tok") as client:
        with pytest.raises(
            TypeError, match=r"flows must be a list, got 'adder': write \['adder'\]"
        ):
            client.create_webhook("http://127.0.0.1:9/hook", flows="adder")
        with pytest.raises(TypeError, match="states must be a list"):
            client.create_webhook("http://127.0.0.1:9/hook", states="FAILED")
        with pytest.raises(ValueError, match="unknown flow run state 'NOPE': use one of PENDING"):
            client.create_webhook("http://127.0.0.1:9/hook", states=["NOPE"])
        made = client.create_webhook(
            "http://127.0.0.1:9/hook", flows=["adder"], states=["failed", State.CANCELLED]
        )
        assert made.flows == ["adder"] and made.states == [State.FAILED, State.CANCELLED]
        assert client.list_webhooks() == [made]
        client.delete_webhook(made.id)


def test_audits_limit_is_checked_by_the_client(server: ServerThread) -> None:
    """A user trial: limit=0 returned entries (the server's default page), and 1001
    was refused naming page_size, which the caller never gave."""
    with Client(server.address, token="tok") as client:
        for bad in (0, 1001, -1, "5"):
            with pytest.raises(ValueError, match=rf"limit must be in 1..1000, got {bad!r}"):
                client.audit(limit=bad)  # type: ignore[arg-type]
        assert len(client.audit(limit=1)) <= 1


def test_arguments_of_the_wrong_kind_are_named(server: ServerThread) -> None:
    """A user trial: get(123) said "bad argument type for built-in operation" and
    run(None) "'NoneType' object has no attribute 'validate'"."""
    with Client(server.address, token="tok") as client:
        for call in (client.get, client.cancel, client.waiting, client.wait, client.logs):
            with pytest.raises(TypeError, match=r"a flow run id is a str .*, got 123"):
                call(123)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="run takes a @flow function or a flow's name"):
            client.run(None)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="deploy takes a @flow function, got str 'greet'"):
            client.deploy("greet")  # type: ignore[arg-type]
