"""Durable under faults (issue 12): failing commits lose nothing and release nothing
early, a full disk is survived, fencing is bound to the worker session, a worker that
gives an attempt back does not hang the run, journals of other formats or engines are
refused, and retention gives the space back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import types
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from unittest import mock

import grpc
import pytest
from test_run_manager import (
    FUNCTIONS,
    Clock,
    FakeDispatch,
    decode_input,
    numbers,
    total,
    value_of,
)
from test_server_protocol import AUTH, TOKEN, proto_pipeline, status_of

import headwater
from headwater import _client, flow, task, unmapped
from headwater.v1 import (
    access_pb2,
    access_pb2_grpc,
    control_plane_pb2_grpc,
    operations_pb2_grpc,
    payload_pb2,
    worker_pb2,
    worker_pb2_grpc,
)
from headwater.v1 import control_plane_pb2 as cp
from headwater.v1 import operations_pb2 as ops
from headwater.wire import (
    FlowRunState,
    Limits,
    PayloadTransfer,
    TaskRunState,
    decode_value,
    encode,
    split_task_run_id,
)
from headwater_runtime.engine import ENGINE_VERSION, TaskSucceeded
from headwater_runtime.server import RunManager, _io
from headwater_runtime.server._app import RunningServer, start_server
from headwater_runtime.server._core import ServerSettings
from headwater_runtime.server._creation import RunCreation
from headwater_runtime.server._dispatch import UNSTORED_PER_SLOT
from headwater_runtime.server._runs import PendingAssignment
from headwater_runtime.store import (
    Fenced,
    FlowRunRow,
    LimitRow,
    RunEvent,
    ScheduleRow,
    SQLiteStore,
    Store,
    StoreUnavailable,
    WriteBatch,
    open_store,
)

BOUND = 60.0


class FailingStore(SQLiteStore):
    """A SQLite store whose commits fail while ``failing`` is set, the way a full disk
    makes them fail."""

    failing = False
    attempts = 0

    def commit(self, batch: WriteBatch) -> None:
        """Fail like a full disk while ``failing``; else commit."""
        if batch:
            type(self).attempts += 1
        if self.failing and batch:
            raise StoreUnavailable(
                "cannot write to the database: database or disk is full", full=True
            )
        super().commit(batch)

    def create_flow_run(
        self,
        row: FlowRunRow,
        schedule: ScheduleRow | None = None,
        start: Any = None,
        audit: Any = None,
    ) -> tuple[FlowRunRow, bool]:
        """Fail like a full disk while ``failing`` (a new run is stored with its start,
        in one transaction); else insert."""
        if self.failing:
            raise StoreUnavailable(
                "cannot write to the database: database or disk is full", full=True
            )
        return super().create_flow_run(row, schedule, start, audit)


@contextlib.asynccontextmanager
async def served(store: Store, **settings: Any) -> AsyncIterator[RunningServer]:
    options = {"heartbeat_interval": 0.5, "heartbeat_timeout": 3600.0, "token": TOKEN, **settings}
    db = getattr(store, "path", "") or getattr(store, "url", "")
    running = await start_server(ServerSettings(port=0, db=db, **options), store=store)
    try:
        yield running
    finally:
        await asyncio.wait_for(running.stop(None), 30)


@contextlib.asynccontextmanager
async def one_slot_worker(
    store: Store, **settings: Any
) -> AsyncIterator[tuple[RunningServer, grpc.aio.Channel, StreamWorker]]:
    """A server on ``store`` (with these settings), a channel to it, and a one-slot
    protocol worker ("w") that has read its Welcome (the test closes the worker)."""
    async with (
        served(store, **settings) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        worker = StreamWorker(channel, "w", slots=1)
        await worker.next("welcome")
        yield running, channel, worker


class StreamWorker:
    """A worker written against the protocol, driven step by step by a test."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        name: str,
        slots: int = 4,
        running: list[worker_pb2.FencingToken] | None = None,
        features: tuple[str, ...] = (),
        capabilities: list[str] | None = None,
        auth: tuple[tuple[str, str], ...] = AUTH,
    ) -> None:
        self.outbox: asyncio.Queue[worker_pb2.ConnectRequest | None] = asyncio.Queue()
        hello = worker_pb2.Hello(
            worker_id=name,
            name=name,
            protocol_version=1,
            capabilities=list(FUNCTIONS) if capabilities is None else capabilities,
            slots=slots,
            running=running or [],
            features=features,
        )
        self.outbox.put_nowait(worker_pb2.ConnectRequest(hello=hello))

        async def requests() -> AsyncIterator[worker_pb2.ConnectRequest]:
            while (item := await self.outbox.get()) is not None:
                yield item

        stub = worker_pb2_grpc.WorkerGatewayServiceStub(channel)
        self.call = stub.Connect(requests(), metadata=auth)
        # One reader drains the stream into a queue: cancelling a read of a grpc.aio
        # stream would cancel the whole call, so waits with a timeout happen here.
        self.inbox: asyncio.Queue[worker_pb2.ConnectResponse | None] = asyncio.Queue()
        self.backlog: list[worker_pb2.ConnectResponse] = []
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            async for response in self.call:
                self.inbox.put_nowait(response)
        except grpc.aio.AioRpcError:
            pass
        finally:
            self.inbox.put_nowait(None)

    async def next(self, kind: str, within: float = BOUND) -> Any:
        """The next message of this kind from the server (others wait in a backlog for
        their own ``next``); TimeoutError when none comes ``within`` seconds."""
        for i, waiting in enumerate(self.backlog):
            if waiting.WhichOneof("message") == kind:
                del self.backlog[i]
                return getattr(waiting, kind)
        async with asyncio.timeout(within):
            while True:
                response = await self.inbox.get()
                if response is None:
                    raise AssertionError(f"the stream ended while waiting for {kind}")
                if response.WhichOneof("message") == kind:
                    return getattr(response, kind)
                self.backlog.append(response)

    def send(self, **message: Any) -> None:
        self.outbox.put_nowait(worker_pb2.ConnectRequest(**message))

    def result(self, assignment: worker_pb2.Assignment) -> worker_pb2.TaskResult:
        args = {name: decode_input(v) for name, v in assignment.inputs.items()}
        value = FUNCTIONS[assignment.task_type](**args)
        return worker_pb2.TaskResult(
            token=assignment.token, result=value_of(value, assignment.split_result)
        )

    async def close(self) -> None:
        self.outbox.put_nowait(None)
        self.call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader


async def create(channel: grpc.aio.Channel, **params: Any) -> str:
    client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
    await client.RegisterFlow(cp.RegisterFlowRequest(graph=proto_pipeline.compile()), metadata=AUTH)
    values = {k: value_of(v) for k, v in params.items()}
    created = await client.CreateFlowRun(
        cp.CreateFlowRunRequest(flow_name="proto_pipeline", parameters=values), metadata=AUTH
    )
    return str(created.flow_run.id)


async def run_state(channel: grpc.aio.Channel, run_id: str) -> Any:
    client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
    got = await client.GetFlowRun(
        cp.GetFlowRunRequest(id=run_id, include_task_runs=True), metadata=AUTH
    )
    return got


async def finished(channel: grpc.aio.Channel, run_id: str) -> int:
    """Watch a run until it ends; its final state."""
    client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
    request = cp.WatchFlowRunRequest(id=run_id, flow_run_only=True)
    state = 0
    async with asyncio.timeout(BOUND):
        async for change in client.WatchFlowRun(request, metadata=AUTH):
            state = change.flow_run.state
    return state


async def serve_to_end(worker: StreamWorker, channel: grpc.aio.Channel, run_id: str) -> int:
    """Run every assignment until the run ends, then close the worker; the run's final
    state."""
    done = asyncio.Event()
    serving = asyncio.create_task(serve_all(worker, done))
    state = await finished(channel, run_id)
    done.set()
    await serving
    await worker.close()
    return state


async def logs_of(channel: grpc.aio.Channel, run_id: str) -> cp.ListTaskRunLogsResponse:
    """A run's log records (the first page)."""
    return await control_plane_pb2_grpc.ControlPlaneServiceStub(channel).ListTaskRunLogs(
        cp.ListTaskRunLogsRequest(flow_run_id=run_id), metadata=AUTH
    )


async def serve_all(worker: StreamWorker, done: asyncio.Event) -> int:
    """Run every assignment until ``done``; the number of results sent."""
    sent = 0
    while not done.is_set():
        try:
            a = await worker.next("assignment", within=0.2)
        except TimeoutError:
            continue
        worker.send(result=worker.result(a))
        sent += 1
    return sent


def test_a_failing_commit_releases_nothing_and_loses_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """While commits fail (as on a full disk), no assignment, Ack or watch note leaves
    the server and callers get RESOURCE_EXHAUSTED naming the cause; when the store
    recovers, the kept batch is stored in order, the log says so, and the run
    finishes."""

    async def main() -> None:
        store = FailingStore(tmp_path / "hw.db")
        async with (
            served(store) as running,
            grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
        ):
            worker = StreamWorker(channel, "w1")
            await worker.next("welcome")
            run_id = await create(channel, n=3)  # stored started: its row and its start
            first = await worker.next("assignment")
            store.failing = True
            client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
            # A new run cannot be stored: the caller hears why, and nothing is kept.
            code, details = await status_of(
                client.CreateFlowRun(
                    cp.CreateFlowRunRequest(flow_name="proto_pipeline"), metadata=AUTH
                )
            )
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "disk is full" in details
            code, details = await status_of(
                client.CancelFlowRun(cp.CancelFlowRunRequest(id="nope"), metadata=AUTH)
            )
            assert code == grpc.StatusCode.NOT_FOUND
            # The result is applied in memory, but its Ack and the assignments it
            # makes ready wait for the commit.
            worker.send(result=worker.result(first))
            with pytest.raises(TimeoutError):
                await worker.next("ack", within=0.5)
            with pytest.raises(TimeoutError):
                await worker.next("assignment", within=0.1)
            assert FailingStore.attempts >= 2, "the failed commit was not retried"
            # A caller that needs durability hears why at once.
            code, details = await status_of(
                client.CancelFlowRun(cp.CancelFlowRunRequest(id=run_id), metadata=AUTH)
            )
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "disk is full" in details
            assert "the cancel is kept" in details  # (no need to cancel again)
            store.failing = False  # space came back
            ack = await worker.next("ack")  # the kept batch is stored: the Ack goes out
            assert ack.accepted and ack.token == first.token
            assert "the server's state is stored again (after " in caplog.text
            # The cancel above was kept too (it is stored with the rest): start over
            # with a run nobody cancels.
            run_id = await create(channel, n=3)
            assert await serve_to_end(worker, channel, run_id) == 4
            got = await run_state(channel, run_id)
            assert decode_value(got.flow_run.result) == {"scaled": [0, 10, 20], "total": 30}
        # Sequence numbers stayed contiguous through the failures.
        reopened = SQLiteStore(tmp_path / "hw.db")
        for row in reopened.list_flow_runs():
            seqs = [e.seq for e in reopened.events(row.id)]
            assert seqs == list(range(1, len(seqs) + 1)), (row.id, seqs)
        cancelled = [r for r in reopened.list_flow_runs() if r.state == 6]
        assert len(cancelled) == 1  # the cancel kept while the disk was full
        reopened.close()

    asyncio.run(main())


def test_a_fenced_server_reports_being_fenced_until_it_steps_down(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A leader whose write was refused for a newer epoch steps down; its commit's
    retries meanwhile met its store's threads going away ("cannot schedule new futures
    after shutdown") and logged that as a failure to store the server's state (a
    trial). Fenced stays the reason, said once."""

    class FencedStore(SQLiteStore):
        tries = 0

        def commit(self, batch: WriteBatch) -> None:
            if not batch:
                return super().commit(batch)
            type(self).tries += 1
            if type(self).tries == 1:
                raise Fenced("this server leads at lease epoch 1, and the lease is now at epoch 2")
            raise RuntimeError("cannot schedule new futures after shutdown")

    async def main() -> None:
        store = FencedStore(tmp_path / "hw.db")
        async with (
            served(store) as running,
            grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
        ):
            worker = StreamWorker(channel, "w1")
            await worker.next("welcome")
            await create(channel, n=3)
            worker.send(result=worker.result(await worker.next("assignment")))
            deadline = time.monotonic() + BOUND
            while FencedStore.tries < 3:  # (retried with backoff: 0.05 s, 0.1 s, ...)
                assert time.monotonic() < deadline, "the commit was not retried"
                await asyncio.sleep(0.02)
            assert isinstance(running.core.commits.error, Fenced)

    with caplog.at_level(logging.WARNING, "headwater.server"):
        asyncio.run(main())
    assert caplog.text.count("another server leads now") == 1
    assert "could not store the server's state" not in caplog.text


def test_a_batch_put_back_after_a_failed_commit_keeps_its_values(tmp_path: Path) -> None:
    """A result that arrived while the store was failing is stored with the retried
    batch: no journal entry refers to a value that is not stored."""
    store = FailingStore(tmp_path / "hw.db")
    dispatch = FakeDispatch()
    manager = RunManager(store, dispatch, Clock())
    manager.register_flow(one_task.compile())
    manager.create_run("one_task", "", {"i": value_of(7)})
    manager.flush()
    (pending,) = dispatch.submitted
    token = pending.assignment.token
    run_id, key = split_task_run_id(token.task_run_id)
    manager.handle(run_id, TaskSucceeded(key, token.attempt, value_of("a value of its own")))
    store.failing = True
    with pytest.raises(StoreUnavailable):
        manager.flush()
    store.failing = False
    manager.flush()
    referenced = {e.value_id for e in store.events(run_id) if e.value_id}
    assert referenced
    assert set(store.get_values(referenced)) == referenced
    store.close()


def test_while_commits_fail_no_assignment_leaves(tmp_path: Path) -> None:
    """Once a commit has failed, slots freed by results do not get the attempts that
    wait: their deliveries could not be recorded. They go out when the store recovers."""

    async def main() -> None:
        store = FailingStore(tmp_path / "hw.db")
        async with one_slot_worker(store) as (running, channel, worker):
            await create(channel, n=3)
            first = await worker.next("assignment")
            worker.send(result=worker.result(first))
            scale = await worker.next("assignment")  # three wait now; one slot
            core = running.core
            store.failing = True
            worker.send(started=worker_pb2.TaskStarted(token=scale.token))
            await _until(lambda: core.dispatcher.paused, "a commit to fail")
            worker.send(result=worker.result(scale))
            (session,) = core.dispatcher.sessions.values()
            await _until(lambda: session.free == 1, "the result to free the slot")
            assert core.dispatcher.pending_count == 2
            assert all(m.WhichOneof("message") != "assignment" for m in _drain(worker))
            store.failing = False
            assert (await worker.next("assignment")).token.task_run_id.endswith("]")
            await worker.close()

    asyncio.run(main())


def test_a_small_sqlite_run_is_built_and_stored_by_the_writer_thread_in_one_hop(
    tmp_path: Path,
) -> None:
    """A run of a small flow version the server holds is built and stored by one call
    on the writer thread (two thread hops fewer before its first assignment); without
    a version the graph is looked up and the run built on a reader thread first."""

    async def main() -> None:
        async with one_slot_worker(SQLiteStore(tmp_path / "hw.db")) as (running, channel, worker):
            client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
            graph = proto_pipeline.compile()
            registered = await client.RegisterFlow(
                cp.RegisterFlowRequest(graph=graph), metadata=AUTH
            )
            io, calls = running.core.io, []
            read, write = io.read, io.write
            creating = {"_prepare_and_store", "prepare_run", "_store_run"}  # (not commits)

            async def on_reader(fn: Any, *args: Any, **kwargs: Any) -> Any:
                if fn.__name__ in creating:
                    calls.append(("read", fn.__name__))
                return await read(fn, *args, **kwargs)

            async def on_writer(fn: Any, *args: Any, **kwargs: Any) -> Any:
                if fn.__name__ in creating:
                    calls.append(("write", fn.__name__))
                return await write(fn, *args, **kwargs)

            io.read, io.write = on_reader, on_writer  # type: ignore[method-assign]
            request = cp.CreateFlowRunRequest(
                flow_name="proto_pipeline",
                flow_version=registered.version,
                parameters={"n": value_of(2)},
            )
            created = await client.CreateFlowRun(request, metadata=AUTH)
            assert calls == [("write", "_prepare_and_store")]
            first = await worker.next("assignment")
            assert first.flow_run_id == created.flow_run.id
            calls.clear()
            request.flow_version = ""
            await client.CreateFlowRun(request, metadata=AUTH)
            assert calls == [("read", "prepare_run"), ("write", "_store_run")]
            await worker.close()

    asyncio.run(main())


class HeldStore(SQLiteStore):
    """A SQLite store that holds the commit recording the delivery of one task run
    until the test releases it (a store that has fallen behind)."""

    def __init__(self, path: Path, key: str) -> None:
        super().__init__(path)
        self.key = key
        self.released = threading.Event()

    def commit(self, batch: WriteBatch) -> None:
        """Wait for ``released`` if the batch records the delivery of ``key``."""
        if any(r.key == self.key and r.delivered for r in batch.task_runs.values()):
            assert self.released.wait(BOUND)
        super().commit(batch)


def test_a_worker_never_has_more_unrecorded_deliveries_than_the_cap_per_slot(
    tmp_path: Path,
) -> None:
    """However far the store falls behind, a worker is not sent another attempt while
    it has UNSTORED_PER_SLOT times as many assignments whose delivery is not stored as
    it has slots: after a crash each of those may run twice."""

    async def main() -> None:
        store = HeldStore(tmp_path / "hw.db", "scale[0]")
        async with one_slot_worker(store) as (running, channel, worker):
            await create(channel, n=UNSTORED_PER_SLOT + 1)
            first = await worker.next("assignment")
            worker.send(result=worker.result(first))
            held = await worker.next("assignment")  # its delivery's commit is held
            assert held.token.task_run_id.endswith("/scale[0]")
            worker.send(result=worker.result(held))
            for _ in range(UNSTORED_PER_SLOT - 1):  # up to the cap, for 1 slot
                last = await worker.next("assignment")
                worker.send(result=worker.result(last))
            (session,) = running.core.dispatcher.sessions.values()
            token = (last.token.task_run_id, last.token.attempt)
            try:
                await _until(lambda: token not in session.running, "the result to arrive")
                assert session.unstored == UNSTORED_PER_SLOT
                assert running.core.dispatcher.pending_count == 1
                assert all(m.WhichOneof("message") != "assignment" for m in _drain(worker))
            finally:
                store.released.set()  # or the server cannot stop
            assert (await worker.next("assignment")).token.task_run_id.endswith("]")
            await worker.close()

    asyncio.run(main())


def test_a_stopping_server_hands_out_nothing_and_the_next_sends_it_at_once(
    tmp_path: Path,
) -> None:
    """From the moment a server begins to stop it hands out no attempt: one handed out
    then is recorded delivered, and the stop may end the worker's stream before it
    arrives; the next server then waited a heartbeat window for a worker to claim it,
    and ran it again as attempt 2 (seen after SIGTERMs under load). What the stopping
    server stored is acked, and the next server sends the queued attempt at once."""

    async def main() -> None:
        store = SQLiteStore(tmp_path / "hw.db")
        async with one_slot_worker(store) as (running, channel, worker):
            run_id = await create(channel, n=2)
            first = await worker.next("assignment")
            running.core.closing()  # what stop() does first
            worker.send(result=worker.result(first))
            ack = await worker.next("ack")
            assert ack.accepted and ack.token == first.token
            await running.core.flush()
            assert all(m.WhichOneof("message") != "assignment" for m in _drain(worker))
            delivered = store.delivered(run_id)
            assert not any(key.startswith("scale") for key in delivered), delivered
            await worker.close()
        again = SQLiteStore(tmp_path / "hw.db")
        async with one_slot_worker(again) as (running, channel, worker):
            sent = await worker.next("assignment")
            assert sent.token.task_run_id.endswith("/scale[0]")
            assert sent.token.attempt == 1
            await worker.close()

    asyncio.run(main())


def test_a_worker_keeps_every_resent_attempt_it_holds_even_beyond_its_slots(
    tmp_path: Path,
) -> None:
    """After a restart, attempts whose delivery was not stored are sent again; a worker
    that reconnects holding more of them than it has slots (finished, not yet
    acknowledged) keeps them all: none runs a second time elsewhere."""
    store = SQLiteStore(tmp_path / "hw.db")
    dispatch = FakeDispatch()
    manager = RunManager(store, dispatch, Clock())
    manager.register_flow(proto_pipeline.compile())
    manager.create_run("proto_pipeline", "", {"n": value_of(3)})
    manager.flush()
    (numbers,) = dispatch.submitted
    dispatch.submitted.clear()
    token = numbers.assignment.token
    run_id, key = split_task_run_id(token.task_run_id)
    manager.handle(run_id, TaskSucceeded(key, token.attempt, value_of([0, 1, 2], True)))
    manager.flush()
    held = [p.assignment.token for p in dispatch.submitted]  # dispatched, never delivered
    assert len(held) == 3

    async def main() -> None:
        async with (
            served(store) as running,
            grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
        ):
            worker = StreamWorker(channel, "w", slots=1, running=held)
            welcome = await worker.next("welcome")
            kept = {(t.task_run_id, t.attempt) for t in welcome.keep_running}
            assert kept == {(t.task_run_id, t.attempt) for t in held}
            assert running.core.dispatcher.pending_count == 0
            await worker.close()

    asyncio.run(main())


class SlowReplayStore(SQLiteStore):
    """A SQLite store whose reading of a run's journal waits for ``released``: a run
    whose replay takes long (a 100,000-element map in flight takes seconds)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.reading = threading.Event()
        self.released = threading.Event()
        self.slow: str | None = None  # only this run's journal waits (None: every run's)

    def events(self, flow_run_id: str) -> list[RunEvent]:
        """Wait for ``released``, then read the journal."""
        if self.slow in (None, flow_run_id):
            self.reading.set()
            assert self.released.wait(BOUND)
        return super().events(flow_run_id)


@contextlib.asynccontextmanager
async def replaying(
    store: SlowReplayStore,
) -> AsyncIterator[tuple[RunningServer, grpc.aio.Channel]]:
    """A server on ``store``, and a channel to it, once it listens and is replaying
    the store's unfinished run (held until ``store.released``)."""
    async with (
        served(store) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        assert await asyncio.to_thread(store.reading.wait, BOUND)
        yield running, channel


def _started_run(
    store: SlowReplayStore, pipeline: Any, n: int
) -> tuple[RunManager, FakeDispatch, FlowRunRow, PendingAssignment]:
    """A run of ``pipeline`` (its parameter ``n``) stored and started on a manager of
    its own; the attempt of its first task, taken from the manager's dispatch."""
    store.released.set()
    dispatch = FakeDispatch()
    manager = RunManager(store, dispatch, Clock())
    manager.register_flow(pipeline.compile())
    row, _ = manager.create_run(pipeline.name, "", {"n": value_of(n)})
    manager.flush()
    (first,) = dispatch.submitted
    dispatch.submitted.clear()
    return manager, dispatch, row, first


def _expanded_run(store: SlowReplayStore, n: int) -> tuple[RunManager, FakeDispatch, FlowRunRow]:
    """A ``proto_pipeline`` run stored with its map over ``n`` numbers expanded, on a
    manager whose dispatch holds the map's attempts (not yet delivered)."""
    manager, dispatch, row, numbers = _started_run(store, proto_pipeline, n)
    token = numbers.assignment.token
    key = split_task_run_id(token.task_run_id)[1]
    manager.handle(row.id, TaskSucceeded(key, token.attempt, value_of(list(range(n)), True)))
    manager.flush()
    return manager, dispatch, row


#: The holder (``WorkerSession.holder``) of a StreamWorker "w" (the server's token).
HOLDER_W = "server-token/w"


def _delivered_then_restarting(
    store: SlowReplayStore,
    manager: RunManager,
    row: FlowRunRow,
    held: worker_pb2.Assignment,
    holder: str = HOLDER_W,
) -> None:
    """``held`` is stored as delivered to worker "w" (``holder``); the next server on
    ``store`` holds its replay until ``store.released``."""
    manager.delivered(row.id, held.token.task_run_id, held.token.attempt, "w", holder)
    manager.flush()
    store.released.clear()
    store.reading.clear()


def _held_at_restart(
    tmp_path: Path, holder: str = HOLDER_W
) -> tuple[SlowReplayStore, FlowRunRow, worker_pb2.Assignment]:
    """A stored run with three attempts in flight, the first delivered to worker "w"
    (``holder``), the others never delivered, whose next server holds its replay until
    ``store.released``: the store, the run, the delivered attempt."""
    store = SlowReplayStore(tmp_path / "hw.db")
    manager, dispatch, row = _expanded_run(store, 3)
    held = dispatch.submitted[0].assignment
    _delivered_then_restarting(store, manager, row, held, holder)
    return store, row, held


def test_a_run_being_resumed_holds_its_calls_and_keeps_what_workers_reclaim(
    tmp_path: Path,
) -> None:
    """A restarted server listens before it has replayed its unfinished runs. Until a
    run is replayed: a worker reconnecting with its attempts keeps them (the one it
    was known to hold, and one whose delivery was never stored), its reports on the
    run wait (no ack before the report is stored), and a cancel waits too. Then
    nothing is sent twice, the attempt nobody holds is sent again, and the run
    finishes."""
    store = SlowReplayStore(tmp_path / "hw.db")
    manager, dispatch, row = _expanded_run(store, 3)
    scales = [p.assignment for p in dispatch.submitted]
    assert len(scales) == 3
    held, unrecorded, lost = scales  # delivered to "w" (stored); sent (not stored); neither
    _delivered_then_restarting(store, manager, row, held)

    async def main() -> None:
        async with replaying(store) as (running, channel):
            assert not running.core.recovered.is_set()  # listening, still replaying
            claims = [held.token, unrecorded.token]
            worker = StreamWorker(channel, "w", slots=2, running=claims)  # both busy
            welcome = await worker.next("welcome")
            assert {t.task_run_id for t in welcome.keep_running} == {
                held.token.task_run_id,
                unrecorded.token.task_run_id,
            }
            # Reads are answered meanwhile, from the store.
            running_state = FlowRunState.RUNNING.value
            assert (await run_state(channel, row.id)).flow_run.state == running_state
            # Both reclaimed attempts report while the run is replayed: the reports
            # wait, and so do their acks.
            worker.send(result=worker.result(held))
            worker.send(result=worker.result(unrecorded))
            waiting = running.core.runs._aside[row.id]

            def reports_wait() -> bool:
                calls = [getattr(c, "func", None) for c in waiting]
                return calls.count(running.core._report_due) == 2

            await _until(reports_wait, "the reports to wait for the replay")
            assert not [m for m in _drain(worker) if m.WhichOneof("message") == "ack"]
            other = StreamWorker(channel, "other", slots=4)
            await other.next("welcome")
            store.released.set()
            await asyncio.wait_for(running.core.recovered.wait(), BOUND)
            acks = [await worker.next("ack"), await worker.next("ack")]
            assert all(a.accepted for a in acks)
            assert {a.token.task_run_id for a in acks} == {
                held.token.task_run_id,
                unrecorded.token.task_run_id,
            }
            found = running.core.recovery
            assert found is not None and found.resumed == 1
            assert {t for _, t, _ in found.held} == {held.token.task_run_id}
            # Only the attempt nobody held is sent again; the two "w" reported are not,
            # to anyone (the one never recorded as delivered was due to be sent again).
            again = await other.next("assignment")
            assert again.token.task_run_id == lost.token.task_run_id
            other.send(result=other.result(again))
            done = asyncio.Event()
            serving = asyncio.create_task(serve_all(other, done))
            assert await finished(channel, row.id) == FlowRunState.SUCCESS.value
            done.set()
            assert await serving == 1  # the total; no scale attempt was sent twice
            assert not [m for m in _drain(worker) if m.WhichOneof("message") == "assignment"]
            await other.close()
            await worker.close()
            got = await run_state(channel, row.id)
            attempts = {t.name: t.attempts for t in got.task_runs if t.name != "scale"}
            assert set(attempts.values()) == {1}, attempts  # ("scale" is the map itself)
            assert decode_value(got.flow_run.result)["total"] == 30

    asyncio.run(main())


def test_consumers_of_bridge_values_sent_again_at_a_restart_wait_for_the_bridge(
    tmp_path: Path,
) -> None:
    """A run whose mapped tasks take the elements of a result a Dask bridge holds is
    resumed by a restarted server, and its queued attempts go to a plain worker that
    reconnected before the bridge did. The server knows the holder from the stored refs
    (``headwater.holder``): the attempts wait for the bridge, get the values it exports
    once it is back, and the run succeeds. (They failed with ValueUnavailable: ownership
    was in the old server's memory.) The bridge is told to keep exactly those values."""
    store = SlowReplayStore(tmp_path / "hw.db")
    manager, dispatch, row, first = _started_run(store, proto_pipeline, 3)

    def held(payload_id: str, **meta: str) -> Any:
        ref = payload_pb2.PayloadRef(payload_id=payload_id, location="dask", dask_key="k")
        ref.metadata.update({"headwater.holder": "bridge", **meta})
        return payload_pb2.Value(ref=ref)

    rows = held("rows", **{"headwater.length": "3"})
    rows.items.extend(held(f"rows-{i}") for i in range(3))
    token = first.assignment.token
    key = split_task_run_id(token.task_run_id)[1]
    manager.handle(row.id, TaskSucceeded(key, token.attempt, rows))
    manager.flush()
    assert len(dispatch.submitted) == 3  # the scale attempts: queued, never delivered
    store.released.clear()
    store.reading.clear()

    async def main() -> None:
        async with replaying(store) as (running, channel):
            plain = StreamWorker(channel, "plain", slots=3)
            await plain.next("welcome")
            store.released.set()
            await asyncio.wait_for(running.core.recovered.wait(), BOUND)
            await asyncio.sleep(0.3)  # (room for a wrong failure to be stored)
            got = await run_state(channel, row.id)
            states = {t.name: TaskRunState(t.state) for t in got.task_runs}
            assert not any(s.is_failure for s in states.values()), states
            bridge = StreamWorker(channel, "bridge", slots=1, features=("release-values",))
            await bridge.next("welcome")
            asked = sorted([(await bridge.next("export_value")).payload_id for _ in range(3)])
            assert asked == ["rows-0", "rows-1", "rows-2"]
            release = await bridge.next("release_values")
            assert release.all and sorted(release.keep) == ["rows", "rows-0", "rows-1", "rows-2"]
            for i, payload_id in enumerate(asked):
                exported = worker_pb2.ValueExported(payload_id=payload_id, value=value_of(i))
                bridge.send(value_exported=exported)
            done = asyncio.Event()
            serving = [
                asyncio.create_task(serve_all(plain, done)),
                asyncio.create_task(serve_all(bridge, done)),
            ]
            assert await finished(channel, row.id) == FlowRunState.SUCCESS.value
            done.set()
            assert sum([await s for s in serving]) == 4  # three scales and the total
            got = await run_state(channel, row.id)
            assert decode_value(got.flow_run.result)["total"] == (0 + 1 + 2) * 10
            await plain.close()
            await bridge.close()

    asyncio.run(main())


@task(tags=["db"], retries=1)
def db_scale(x: int, factor: int) -> int:
    return x * factor


FUNCTIONS[db_scale.task_type] = db_scale.fn


@flow
def db_pipeline(n: int = 2, factor: int = 10) -> dict[str, Any]:
    scaled = db_scale.map(numbers(n), unmapped(factor))
    return {"scaled": scaled, "total": total(scaled)}


def test_an_attempt_reclaimed_during_a_replay_by_a_worker_that_goes_is_lost_with_its_lease(
    tmp_path: Path,
) -> None:
    """A worker reclaims an attempt it held at the crash while its run is still being
    replayed, then goes away before the run is live: the attempt is lost at once (its
    retry is sent), and its lease on a limited tag ends with it. It was kept as an
    orphan instead, holding the tag's only slot until the heartbeat window ended."""
    store = SlowReplayStore(tmp_path / "hw.db")
    manager, dispatch, row, producer = _started_run(store, db_pipeline, 2)
    token = producer.assignment.token
    key = split_task_run_id(token.task_run_id)[1]
    manager.handle(row.id, TaskSucceeded(key, token.attempt, value_of([0, 1], True)))
    manager.flush()
    held, queued = (p.assignment for p in dispatch.submitted)
    _delivered_then_restarting(store, manager, row, held)

    async def main() -> None:
        # The tag's only slot; no heartbeat loss within the test (served's settings).
        limit = (LimitRow("db", concurrency=1),)
        async with served(store, tag_limits=limit) as running:
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
            assert await asyncio.to_thread(store.reading.wait, BOUND)
            gone = StreamWorker(channel, "w", slots=1, running=[held.token])
            welcome = await gone.next("welcome")
            assert [t.task_run_id for t in welcome.keep_running] == [held.token.task_run_id]
            await gone.close()  # before its run is live
            other = StreamWorker(channel, "other", slots=4)
            await other.next("welcome")
            store.released.set()
            await asyncio.wait_for(running.core.recovered.wait(), BOUND)
            # One at a time under the limit: the queued attempt and the lost one's retry.
            sent = []
            for _ in range(2):
                assignment = await other.next("assignment", within=10.0)
                sent.append((assignment.token.task_run_id, assignment.token.attempt))
                other.send(result=other.result(assignment))
            assert sorted(sent) == [
                (held.token.task_run_id, 2),
                (queued.token.task_run_id, queued.token.attempt),
            ]
            done = asyncio.Event()
            serving = asyncio.create_task(serve_all(other, done))
            assert await finished(channel, row.id) == FlowRunState.SUCCESS.value
            done.set()
            assert await serving == 1  # the total
            assert not running.core._orphans  # nothing waits for "w" any more
            await other.close()
            await channel.close()

    asyncio.run(main())


def test_a_cancel_of_a_run_being_resumed_waits_for_its_replay(tmp_path: Path) -> None:
    store = SlowReplayStore(tmp_path / "hw.db")
    store.released.set()
    manager = RunManager(store, FakeDispatch(), Clock())
    manager.register_flow(proto_pipeline.compile())
    row, _ = manager.create_run("proto_pipeline", "", {"n": value_of(3)})
    manager.flush()
    store.released.clear()

    async def main() -> None:
        async with replaying(store) as (running, channel):
            client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
            cancel = asyncio.ensure_future(
                client.CancelFlowRun(
                    cp.CancelFlowRunRequest(id=row.id, reason="no longer needed"), metadata=AUTH
                )
            )
            assert running.core.runs.replaying(row.id)
            store.released.set()
            cancelled = await asyncio.wait_for(cancel, BOUND)
            # Answered once the cancel is applied and stored, not before.
            assert cancelled.flow_run.state == FlowRunState.CANCELLED.value
            assert "no longer needed" in cancelled.flow_run.history[-1].message

    asyncio.run(main())


def test_a_small_run_is_resumed_while_a_large_one_is_still_replayed(tmp_path: Path) -> None:
    """A restarted server replays its unfinished runs smallest first: a run that
    takes long to replay (a wide map in flight) does not hold up the queued work of
    the others, although it is older. A worker that reports an attempt of the run
    still replayed has its slot back at once, for that other work."""
    store = SlowReplayStore(tmp_path / "hw.db")
    manager, dispatch, large = _expanded_run(store, 40)
    held = dispatch.submitted[0].assignment  # delivered to "w" (stored)
    manager.delivered(large.id, held.token.task_run_id, held.token.attempt, "w", HOLDER_W)
    small, _ = manager.create_run("proto_pipeline", "", {"n": value_of(2)})
    manager.flush()
    store.released.clear()
    store.reading.clear()
    store.slow = large.id

    async def main() -> None:
        async with replaying(store) as (running, channel):
            # The large run's journal is being read; the small one is live already.
            assert running.core.runs.replaying(large.id)
            assert not running.core.runs.replaying(small.id)
            worker = StreamWorker(channel, "w", slots=1, running=[held.token])  # busy
            await worker.next("welcome")
            worker.send(result=worker.result(held))  # waits for the replay, with its ack
            first = await worker.next("assignment")  # the slot is free again meanwhile
            assert split_task_run_id(first.token.task_run_id)[0] == small.id
            assert running.core.runs.replaying(large.id)
            # Until every run is resumed, attempts under a concurrency limit wait (the
            # large run's held attempts have no lease yet): test_tag_limits.py.
            assert running.core.dispatcher.limits.resuming
            store.released.set()
            await asyncio.wait_for(running.core.recovered.wait(), BOUND)
            assert not running.core.dispatcher.limits.resuming
            ack = await worker.next("ack")
            assert ack.accepted and ack.token.task_run_id == held.token.task_run_id
            done = asyncio.Event()
            serving = asyncio.create_task(serve_all(worker, done))
            worker.send(result=worker.result(first))
            assert await finished(channel, small.id) == FlowRunState.SUCCESS.value
            assert await finished(channel, large.id) == FlowRunState.SUCCESS.value
            done.set()
            assert await serving == 39 + 1 + 3  # scales and totals: none sent twice
            await worker.close()
            found = running.core.recovery
            assert found is not None and found.resumed == 2

    asyncio.run(main())


def test_a_run_replayed_with_a_wide_map_in_flight_is_a_large_run(tmp_path: Path) -> None:
    """Whether a replayed run is large (rebuilt with the cycle collector paused and
    what it built frozen; cancelled off the loop; released off the loop when it ends)
    goes by its task runs, mapped children included, not by its graph's three tasks."""
    store = SlowReplayStore(tmp_path / "hw.db")
    _, _, row = _expanded_run(store, 40)
    manager = RunManager(store, FakeDispatch(), Clock())
    manager.collector.large = 20  # 40 mapped children: large here; a 3-task graph: not
    try:
        (stored,), _ = manager.unfinished()
        resumed = manager.replay(stored)
        assert resumed.active.large and manager.collector.froze
        manager.resume(resumed)
        assert manager.set_aside(row.id) is resumed.active  # a cancel goes off the loop
    finally:
        manager.collector.close()  # the test process's objects back to the collector


@flow
def over_items(items: list[int]) -> list[str]:
    return payload.map(items)


def test_a_run_mapping_over_a_long_parameter_is_a_large_run(tmp_path: Path) -> None:
    """A map over a parameter makes its children when the run starts: with that many
    task runs the run is large (built with the cycle collector paused, cancelled off
    the loop), whatever its graph's size."""
    manager = RunManager(open_store(str(tmp_path / "hw.db")), FakeDispatch(), Clock())
    manager.collector.large = 20
    manager.register_flow(over_items.compile())
    try:
        narrow, _ = manager.create_run("over_items", "", {"items": value_of([1, 2], True)})
        assert not manager.runs[narrow.id].large and not manager.collector.froze
        items = value_of(list(range(40)), True)
        wide, _ = manager.create_run("over_items", "", {"items": items})
        # Built with the cycle collector paused, what it built frozen (_gc.py).
        assert manager.runs[wide.id].large and manager.collector.froze
        assert manager.set_aside(wide.id) is manager.runs[wide.id]  # cancelled off the loop
    finally:
        manager.collector.close()


@flow
def over_constants() -> list[str]:
    return payload.map(list(range(40)))


def test_a_graph_and_a_run_mapping_over_a_long_constant_list_are_large(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A map over a constant list compiled into a three-task graph: its graph is
    checked and built, and a run of it (which makes every child at its start) is
    built, with the cycle collector paused and what they built frozen, as for a
    graph or run of that many tasks. Neither was: a 100,000-item list stopped other
    clients for up to ~0.4 s while a run was created (full collections)."""
    from headwater_runtime.server._limits import graph_weight

    graph = over_constants.compile()
    assert graph_weight(graph, 20) == len(graph.tasks) + 40
    manager = RunManager(open_store(str(tmp_path / "hw.db")), FakeDispatch(), Clock())
    manager.collector.large = 20
    sizes: list[int] = []
    building = manager.collector.building

    def recording(tasks: int) -> Any:
        sizes.append(tasks)
        return building(tasks)

    monkeypatch.setattr(manager.collector, "building", recording)
    try:
        manager.register_flow(graph)
        assert sizes[-1] >= 40 and manager.collector.froze, "the graph was built as large"
        _, spec = manager.graph("over_constants")
        assert spec.weight() == len(spec.tasks) + 40
        sizes.clear()
        run, _ = manager.create_run("over_constants", "", {})
        assert sizes and sizes[-1] >= 40, "the run was built as large"
        assert manager.runs[run.id].large
    finally:
        manager.collector.close()


def test_a_parameter_sent_whole_cannot_be_mapped_over_and_the_failure_names_it(
    tmp_path: Path,
) -> None:
    """The server does not decode values: a list parameter a task maps over must come
    with its elements (``items``, as the Python client sends a list). Sent as one JSON
    value, the mapped task fails, naming the parameter."""
    manager = RunManager(open_store(str(tmp_path / "hw.db")), FakeDispatch(), Clock())
    manager.register_flow(over_items.compile())
    row, _ = manager.create_run("over_items", "", {"items": value_of([1, 2])})
    assert row.state == FlowRunState.FAILED.value
    failed = TaskRunState.FAILED.value
    (history,) = [h for h in manager.store.task_run_history(row.id, "payload") if h.state == failed]
    assert "cannot map over argument 'i': parameter 'items' (" in history.message
    assert "has no elements to map over" in history.message


def test_a_task_of_a_run_being_resumed_can_start_a_child_flow_run(tmp_path: Path) -> None:
    """A task a reconnected worker runs may start a child flow run while a restarted
    server is still replaying the task's own run: the call waits for that replay and
    is checked then (before, it was refused: the attempt was not running yet)."""
    store, row, held = _held_at_restart(tmp_path)

    async def main() -> None:
        async with replaying(store) as (running, channel):
            worker = StreamWorker(channel, "w", slots=4, running=[held.token])
            await worker.next("welcome")
            client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
            child = asyncio.ensure_future(
                client.CreateFlowRun(
                    cp.CreateFlowRunRequest(
                        flow_name="proto_pipeline",
                        parameters={"n": value_of(1)},
                        parent_task_run_id=held.token.task_run_id,
                        parent_attempt=held.token.attempt,
                    ),
                    metadata=AUTH,
                )
            )
            # Not answered while the parent run is replayed (a refusal would be at once).
            done, _ = await asyncio.wait([child], timeout=0.5)
            assert not done and running.core.runs.replaying(row.id)
            store.released.set()
            created = await asyncio.wait_for(child, BOUND)
            got = await run_state(channel, created.flow_run.id)
            assert got.flow_run.parent_flow_run_id == row.id
            assert got.flow_run.parent_task_run_id == held.token.task_run_id
            await worker.close()

    asyncio.run(main())


async def _until(condition: Any, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + BOUND
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def _drain(worker: StreamWorker) -> list[worker_pb2.ConnectResponse]:
    """What the server has sent the worker and nobody read yet."""
    out = list(worker.backlog)
    while not worker.inbox.empty():
        item = worker.inbox.get_nowait()
        if item is not None:
            out.append(item)
    return out


def test_fencing_is_bound_to_the_session(db: str) -> None:
    """A second worker session cannot report for, or log into, an attempt another
    session holds: FAILED_PRECONDITION, nothing changes, the holder's result counts."""

    async def main() -> None:
        store = open_store(db)
        async with (
            served(store) as running,
            grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
        ):
            holder = StreamWorker(channel, "holder", slots=1)
            await holder.next("welcome")
            run_id = await create(channel, n=2)
            a = await holder.next("assignment")
            intruder = StreamWorker(channel, "intruder", slots=1)
            await intruder.next("welcome")
            fake = worker_pb2.TaskResult(token=a.token, result=value_of([41, 42], True))
            intruder.send(result=fake)
            intruder.send(log=worker_pb2.TaskLog(token=a.token, level="INFO", message="pwned"))
            refused = await intruder.next("ack")
            assert not refused.accepted
            assert refused.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
            assert "not held by this worker session" in refused.reason
            holder.send(result=holder.result(a))
            accepted = await holder.next("ack")
            assert accepted.accepted, accepted.reason
            await intruder.close()
            assert await serve_to_end(holder, channel, run_id) == 4
            got = await run_state(channel, run_id)
            assert decode_value(got.flow_run.result) == {"scaled": [0, 10], "total": 10}
            logs = await logs_of(channel, run_id)
            assert [e.message for e in logs.entries] == []

    asyncio.run(main())


def test_a_peer_log_level_and_logger_are_stored_as_labels(db: str) -> None:
    """A worker's log level is stored upper case (WARN as WARNING, empty as INFO), a
    level or logger name is cut and loses its control characters: a peer cannot
    store a 1 MB "level" or escape sequences in it."""

    async def main() -> None:
        store = open_store(db)
        async with one_slot_worker(store) as (_running, channel, worker):
            run_id = await create(channel, n=2)
            a = await worker.next("assignment")
            sent = [
                ("warn", "app"),
                ("", "app\x1b[31m.red"),
                ("trace", "x" * 5_000),
                ("v" * 10_000, "app"),
            ]
            for level, logger in sent:
                log = worker_pb2.TaskLog(token=a.token, level=level, logger=logger, message="m")
                worker.send(log=log)
            worker.send(result=worker.result(a))
            assert (await worker.next("ack")).accepted
            assert await serve_to_end(worker, channel, run_id) == 4
            logs = await logs_of(channel, run_id)
            got = [(e.level, e.logger) for e in logs.entries]
            assert got == [
                ("WARNING", "app"),
                ("INFO", "app[31m.red"),
                ("TRACE", "x" * 200),
                ("V" * 16, "app"),
            ]

    asyncio.run(main())


def test_acks_come_in_the_order_of_the_reports(db: str) -> None:
    """A result sent twice is answered in the order sent: accepted (after its commit),
    then refused (a user trial: the refusal, sent at once, came first, and a worker
    matching Acks by token dropped the outcome the server had taken)."""

    async def main() -> None:
        store = open_store(db)
        async with one_slot_worker(store) as (_running, channel, worker):
            run_id = await create(channel, n=2)
            a = await worker.next("assignment")
            worker.send(result=worker.result(a))
            worker.send(result=worker.result(a))
            first, second = await worker.next("ack"), await worker.next("ack")
            assert (first.token, second.token) == (a.token, a.token)
            assert first.accepted and not second.accepted, (first, second)
            assert "not held by this worker session" in second.reason
            assert await serve_to_end(worker, channel, run_id) == 4

    asyncio.run(main())


def refusing_twice(error: Exception, real: Any) -> tuple[Any, list[int]]:
    """``real`` that raises ``error`` on its first two calls; and the calls made."""
    calls: list[int] = []

    def call(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) <= 2:
            raise error
        return real(*args, **kwargs)

    return call, calls


def test_a_store_that_cannot_be_read_answers_unavailable_for_every_read(db: str) -> None:
    """A read the store cannot serve (PostgreSQL restarting: a user trial saw
    ``ListFlowRuns`` answer ``UNKNOWN: Unexpected StoreUnavailable``) ends the call with
    UNAVAILABLE and the store's words (RESOURCE_EXHAUSTED when out of space), so
    clients retry; the next call is served."""

    async def main() -> None:
        store = open_store(db)
        async with (
            served(store) as running,
            grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
        ):
            run_id = await create(channel, n=2)
            client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
            calls = {  # (a call starts when it is made: made once the store is down)
                "list_flow_runs": lambda: client.ListFlowRuns(
                    cp.ListFlowRunsRequest(), metadata=AUTH
                ),
                "list_flows": lambda: client.ListFlows(cp.ListFlowsRequest(), metadata=AUTH),
                "audit_entries": lambda: client.ListAuditEntries(
                    cp.ListAuditEntriesRequest(), metadata=AUTH
                ),
            }
            for name, call in calls.items():
                real = getattr(running.store, name)
                down = StoreUnavailable("cannot read from the database: server closed")
                setattr(running.store, name, mock.Mock(side_effect=down))
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call()
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE, (name, info.value)
                assert "cannot read from the database: server closed" in (
                    info.value.details() or ""
                )
                setattr(running.store, name, real)
            real_tasks = running.store.task_runs
            full = StoreUnavailable("cannot read: out of space", full=True)
            running.store.task_runs = mock.Mock(side_effect=full)  # type: ignore[method-assign]
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.GetFlowRun(
                    cp.GetFlowRunRequest(id=run_id, include_task_runs=True), metadata=AUTH
                )
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            running.store.task_runs = real_tasks  # type: ignore[method-assign]
            listed = await client.ListFlowRuns(cp.ListFlowRunsRequest(), metadata=AUTH)
            assert [r.id for r in listed.flow_runs] == [run_id]
            # The SDK's client tries again until its timeout, then says what the
            # server said, not that it could not reach it. Its clock (the client
            # module's) jumps past the timeout at the second refusal: with a real
            # timeout of 1 s, the first refusal had to be back within 0.5 s for a
            # second try, which a loaded machine need not do.
            real_list = running.store.list_flow_runs
            down = StoreUnavailable("cannot read from the database: server closed")
            refusals: list[int] = []
            skipped = [0.0]  # seconds the client's clock is moved on

            def refuse(*args: Any, **kwargs: Any) -> Any:
                refusals.append(1)
                if len(refusals) == 2:
                    skipped[0] = 3600.0  # the client's timeout runs out now
                raise down

            running.store.list_flow_runs = refuse  # type: ignore[method-assign]
            moved = types.SimpleNamespace(
                monotonic=lambda: time.monotonic() + skipped[0], sleep=time.sleep
            )

            def list_runs() -> None:
                with (
                    mock.patch.object(_client, "time", moved),
                    headwater.Client(f"127.0.0.1:{running.port}", token=TOKEN) as c,
                ):
                    c.server_info()  # (reached: its reads then wait out an outage)
                    c.list_runs()

            with pytest.raises(headwater.ServerError) as error:
                await asyncio.to_thread(list_runs)
            assert "cannot use its database right now (list flow runs)" in str(error.value)
            assert "cannot read from the database: server closed" in str(error.value)
            assert len(refusals) == 2  # it tried again, until its timeout ran out

            # A full store: a client that never reached the server before waits it out
            # too (the refusal says the server answered), and so does a worker's upload
            # (a user trial: large results failed their tasks while the disk was full,
            # and the runs ended FAILED when space came back).
            full = StoreUnavailable("cannot write to the database: disk is full", full=True)
            listing, listings = refusing_twice(full, real_list)
            beginning, begins = refusing_twice(full, running.store.begin_payload)
            running.store.list_flow_runs = listing  # type: ignore[method-assign]
            running.store.begin_payload = beginning  # type: ignore[method-assign]
            encoded = encode(b"x" * 100)

            def fresh_client_and_upload() -> tuple[int, bytes]:
                address = f"127.0.0.1:{running.port}"
                with headwater.Client(address, token=TOKEN, timeout=20) as c:
                    listed = len(c.list_runs())
                with grpc.insecure_channel(address) as sync_channel:
                    transfer = PayloadTransfer(sync_channel, AUTH)
                    return listed, transfer.download(transfer.upload(encoded))

            listed, data = await asyncio.to_thread(fresh_client_and_upload)
            assert listed == 1 and data == encoded.data
            assert (len(listings), len(begins)) == (3, 3)

    asyncio.run(main())


def test_the_workers_table_is_stored_again_after_a_failed_flush(
    db: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The background flush of the workers' last contact that the store refuses (a full
    disk) is tried again with the next flush, and said once, naming what (a user trial:
    one unnamed ERROR every 5 s, and the rows were dropped)."""
    from headwater_runtime.server import _ops_core

    monkeypatch.setattr(_ops_core, "WORKER_FLUSH", 0.05)

    async def main() -> None:
        store = open_store(db)
        full = StoreUnavailable("cannot write to the database: disk is full", full=True)
        failing: list[int] = []
        real_put = store.put_worker

        def put_worker(row: Any) -> None:
            if len(failing) < 3:
                failing.append(1)
                raise full
            real_put(row)

        store.put_worker = put_worker  # type: ignore[method-assign]
        async with one_slot_worker(store) as (running, _channel, worker):
            async with asyncio.timeout(BOUND):
                while not [w for w in running.store.list_workers() if w.name == "w"]:
                    running.core.touch()
                    await asyncio.sleep(0.05)
            await worker.close()

    with caplog.at_level(logging.WARNING, "headwater"):
        asyncio.run(main())
    said = [r for r in caplog.records if "could not store the workers' last contact" in r.message]
    assert len(said) == 1 and said[0].levelno == logging.WARNING, said
    assert "disk is full" in said[0].message


def test_a_stop_that_cannot_store_everything_says_so_in_its_exit_status(
    tmp_path: Path,
) -> None:
    """A server stopped while its disk is full stores what it can, says what it could
    not, and its stop reports that (`headwater server` then exits 1, not 0: a user
    trial saw status 0 after "stopping with state that could not be stored")."""

    async def main() -> tuple[bool, bool]:
        store = FailingStore(tmp_path / "hw.db")
        async with served(store) as running:
            pass
        clean = running.core.stored_all
        store = FailingStore(tmp_path / "hw.db")
        running = await start_server(
            ServerSettings(port=0, db=str(tmp_path / "hw.db"), token=TOKEN), store=store
        )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            await create(channel, n=2)
            FailingStore.failing = True
            try:
                running.core.runs.cancel(next(iter(running.core.runs.runs)), "kept in memory")
                await asyncio.wait_for(running.stop(None), BOUND)
            finally:
                FailingStore.failing = False
        return clean, running.core.stored_all

    assert asyncio.run(main()) == (True, False)


def test_an_attempt_s_log_is_cut_at_max_log_bytes_and_says_what_was_dropped(db: str) -> None:
    """A worker that logs without end cannot fill the database: an attempt's records
    are stored up to max_log_bytes (UTF-8 bytes), the rest dropped; the log says so at
    the first drop and counts the drops when the outcome comes. A record counts at
    least 100 bytes (empty ones too). The next attempt has its own budget."""

    async def main() -> None:
        store = open_store(db)
        limits = Limits(max_log_bytes=1000)
        async with one_slot_worker(store, limits=limits) as (_running, channel, worker):
            run_id = await create(channel, n=2)
            a = await worker.next("assignment")
            # 50 characters, 100 bytes: counted in bytes, 9 more records fit, not 10.
            messages = ["é" * 50] + [f"{i:03d}".ljust(100, "x") for i in range(1, 30)]
            for message in messages:
                worker.send(log=worker_pb2.TaskLog(token=a.token, level="INFO", message=message))
            worker.send(result=worker.result(a))
            assert (await worker.next("ack")).accepted
            b = await worker.next("assignment")
            for message in ["next"] + [""] * 15:
                worker.send(log=worker_pb2.TaskLog(token=b.token, level="INFO", message=message))
            worker.send(result=worker.result(b))
            assert (await worker.next("ack")).accepted
            assert await serve_to_end(worker, channel, run_id) == 4
            logs = await logs_of(channel, run_id)
            first = [e for e in logs.entries if e.task_run_id == a.token.task_run_id]
            kept = [e.message for e in first if e.logger != "headwater.server"]
            assert kept == messages[:10]
            notes = [(e.level, e.message) for e in first if e.logger == "headwater.server"]
            assert len(notes) == 2 and {level for level, _ in notes} == {"WARNING"}
            assert (
                "logged over 1000 bytes, over this server's limit max_log_bytes = 1000"
                in (notes[0][1])
            )
            assert "--max-log-bytes" in notes[0][1]
            assert notes[1][1].startswith("20 log records (2000 bytes) of attempt 1 were dropped")
            second = [e for e in logs.entries if e.task_run_id == b.token.task_run_id]
            assert [e.message for e in second if e.logger != "headwater.server"] == ["next"] + [
                ""
            ] * 9
            assert second[-1].message.startswith("6 log records (0 bytes) of attempt 1 were")

    asyncio.run(main())


def test_an_unrequested_task_cancelled_gives_the_attempt_back(db: str) -> None:
    """A worker that drops an attempt nobody asked it to stop does not hang the run:
    the attempt is dispatched again, and such give-backs count no loss."""

    async def main() -> None:
        store = open_store(db)
        async with one_slot_worker(store) as (_running, channel, worker):
            run_id = await create(channel, n=1)
            first = await worker.next("assignment")
            # Given back more often than a worker may be lost (max_lost 3): a worker
            # stopping on purpose, four times (rolling restarts), fails nothing.
            again = first
            for _ in range(5):
                worker.send(cancelled=worker_pb2.TaskCancelled(token=again.token))
                previous, again = again, await worker.next("assignment")
                assert again.token.task_run_id == first.token.task_run_id
                assert again.token.attempt == previous.token.attempt + 1
            worker.send(result=worker.result(again))
            assert await serve_to_end(worker, channel, run_id) == 4
            got = await run_state(channel, run_id)
            numbers = next(t for t in got.task_runs if t.name == "numbers")
            assert numbers.attempts == 6 and numbers.state == 5
            # The run's journal now holds give-backs: only engine version 6 and later replay it.
            assert store.get_flow_run(run_id).engine_version == ENGINE_VERSION == "8"

    asyncio.run(main())


def execute(store: Store, sql: str) -> None:
    """Run one statement (no parameters) on either kind of store."""
    if isinstance(store, SQLiteStore):
        with store._db as conn:
            conn.execute(sql)
    else:
        with store.connection() as conn:  # type: ignore[attr-defined]
            conn.execute(sql)


def _run_of_a_future_engine(db: str) -> tuple[Store, FlowRunRow]:
    """A store holding one run whose journal engine version 99 wrote."""
    store = open_store(db)
    manager = RunManager(store, FakeDispatch(), Clock())
    manager.register_flow(proto_pipeline.compile())
    row, _ = manager.create_run("proto_pipeline", "", {})
    manager.flush()
    execute(store, f"UPDATE flow_runs SET engine_version='99' WHERE id='{row.id}'")
    return store, row


def test_journals_of_an_unknown_engine_version_are_not_replayed(db: str) -> None:
    store, row = _run_of_a_future_engine(db)
    found = RunManager(store, FakeDispatch(), Clock()).recover()
    assert [r for r, _ in found.refused] == [row.id]
    (why,) = [w for _, w in found.refused]
    assert "engine version 99" in why and "replays only 1" in why
    store.close()


def http_json(url: str) -> Any:
    """GET ``url`` with the test's token; its JSON."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def test_a_run_not_resumed_says_why_to_whoever_reads_it(db: str) -> None:
    """A run this server cannot replay shows why as its message (GetFlowRun with and
    without its task runs, ListFlowRuns), and what to do: it showed RUNNING with no
    message for good, the reason in the server's log only, which told a user rolling
    back to finish it 'with the Headwater that started it', the very server refusing
    it (a newer one had worked on it last: a user trial)."""
    store, row = _run_of_a_future_engine(db)

    async def main() -> None:
        async with (
            served(store) as running,
            grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
        ):
            client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
            with_tasks = await run_state(channel, row.id)
            alone = await client.GetFlowRun(cp.GetFlowRunRequest(id=row.id), metadata=AUTH)
            listed = await client.ListFlowRuns(cp.ListFlowRunsRequest(), metadata=AUTH)
            (in_list,) = [r for r in listed.flow_runs if r.id == row.id]
            for run in (with_tasks.flow_run, alone.flow_run, in_list):
                assert run.state == FlowRunState.RUNNING.value
                said = run.history[-1].message
                assert said.startswith(f"not resumed by this server: flow run {row.id} "), said
                assert "engine version 99" in said and "a newer Headwater" in said
                assert said.endswith("or cancel it")
            # The web UI's API says it too (a run's page, the runs list).
            assert running.http is not None
            base = f"http://127.0.0.1:{running.http.port}/api/runs"
            page = await asyncio.to_thread(http_json, f"{base}/{row.id}")
            runs = (await asyncio.to_thread(http_json, base))["runs"]
            (in_page,) = [r for r in runs if r["id"] == row.id]
            for shown in (page["run"], in_page):
                assert shown["state"] == "RUNNING"
                assert shown["message"].startswith("not resumed by this server: flow run ")
            await client.CancelFlowRun(cp.CancelFlowRunRequest(id=row.id), metadata=AUTH)
            ended = await run_state(channel, row.id)
            assert ended.flow_run.state == FlowRunState.CANCELLED.value
            assert not any(
                h.message.startswith("not resumed by this server") for h in ended.flow_run.history
            )

    asyncio.run(main())


def test_a_run_not_resumed_can_be_cancelled(db: str) -> None:
    """A run whose journal this server cannot replay stayed RUNNING for ever: a cancel
    answered OK and changed nothing (so retention never deleted it either). Now the
    cancel ends it, and its unfinished task runs, CANCELLED, saying why."""
    store, row = _run_of_a_future_engine(db)

    async def main() -> None:
        async with (
            served(store) as running,
            grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
        ):
            client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
            answer = await client.CancelFlowRun(
                cp.CancelFlowRunRequest(id=row.id, reason="downgraded"), metadata=AUTH
            )
            assert answer.flow_run.state == FlowRunState.CANCELLED.value
            got = await run_state(channel, row.id)
            assert got.flow_run.state == FlowRunState.CANCELLED.value
            said = got.flow_run.history[-1].message
            assert said.startswith("downgraded (not resumed by this server: "), said
            assert "engine version 99" in said
            assert {t.state for t in got.task_runs} == {TaskRunState.CANCELLED.value}
            # Their histories end CANCELLED, and so does the run attempt (it stayed
            # RUNNING for good, in the web UI and the API, a re-trial).
            for task_run in got.task_runs:
                assert task_run.history[-1].state == TaskRunState.CANCELLED.value
            (attempt,) = store.run_attempts(row.id)
            assert attempt.state == FlowRunState.CANCELLED.value
            assert attempt.ended_at is not None and attempt.message == said

    asyncio.run(main())


def test_two_cancels_at_once_of_a_run_not_resumed_both_succeed(db: str) -> None:
    """Two cancels of a run this server did not resume, both under way at once (a
    double click): the second failed with an internal KeyError once the first had
    ended the run. Both now answer with the run CANCELLED."""
    store, row = _run_of_a_future_engine(db)

    async def main() -> None:
        async with (
            served(store) as running,
            grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
        ):
            client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
            request = cp.CancelFlowRunRequest(id=row.id, reason="twice")
            answers = await asyncio.wait_for(
                asyncio.gather(
                    client.CancelFlowRun(request, metadata=AUTH),
                    client.CancelFlowRun(request, metadata=AUTH),
                ),
                30,
            )
            assert [a.flow_run.state for a in answers] == [FlowRunState.CANCELLED.value] * 2
            got = await run_state(channel, row.id)
            assert got.flow_run.history[-1].message.startswith("twice (not resumed")

    asyncio.run(main())


def test_a_store_of_another_schema_version_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    SQLiteStore(path).close()
    import sqlite3

    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    too_old = "schema version 1, and this Headwater uses 5: it is too old to migrate"
    with pytest.raises(RuntimeError, match=too_old):
        SQLiteStore(path)


def _database_of_schema_4(path: Path) -> None:
    """A SQLite database as schema version 4 had it (no holder of delivered attempts)."""
    import sqlite3

    SQLiteStore(path).close()
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("ALTER TABLE task_runs DROP COLUMN holder")
        db.execute("UPDATE meta SET value='4' WHERE key='schema_version'")


def _schema_of(path: Path) -> str:
    import sqlite3

    with contextlib.closing(sqlite3.connect(path)) as db:
        return str(db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])


def test_a_server_claims_a_database_before_it_migrates_it(tmp_path: Path) -> None:
    """A server takes the database's lock before it reads or migrates it: one started
    on a file another server holds is refused with the file as it was (it migrated
    the file first, under the server holding it, and was refused only then)."""
    import fcntl

    path = tmp_path / "old.db"
    _database_of_schema_4(path)
    with open(f"{path}.server-lock", "a+") as held:  # the server that serves it
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 1, the other server")
        held.flush()
        with pytest.raises(RuntimeError, match=r"in use by another headwater server \(pid 1, the"):
            open_store(str(path), server="this one")
    assert _schema_of(path) == "4"
    # A symbolic link to a served file is that file: one server serves it (a second
    # server on a link took a lock of its own beside the link and served it too).
    (tmp_path / "link").mkdir()
    link = tmp_path / "link" / "alias.db"
    link.symlink_to(path)
    first = open_store(str(path), server="first")
    try:
        first.claim("first")
        with pytest.raises(RuntimeError, match="in use by another headwater server"):
            open_store(str(link), server="second")
    finally:
        first.close()


def test_a_server_does_not_migrate_a_database_another_process_has_open(tmp_path: Path) -> None:
    """A server of a version before the server lock takes none: a newer server
    started on its file while it ran migrated the file under it, and both ran the
    same tasks (a user trial of an upgrade). A database of an older schema that
    another process has open is refused, as it was; once that process has ended, it
    is migrated."""
    path = tmp_path / "old.db"
    _database_of_schema_4(path)
    old_server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            f"db = sqlite3.connect({str(path)!r})\n"
            "db.execute('SELECT count(*) FROM flow_runs').fetchall()\n"
            "print('open', flush=True)\n"
            "sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert old_server.stdout is not None and old_server.stdout.readline() == "open\n"
        (tmp_path / "link").mkdir()
        link = tmp_path / "link" / "alias.db"  # (the same file, by a symbolic link)
        link.symlink_to(path)
        for given in (path, link):
            with pytest.raises(RuntimeError) as refused:
                open_store(str(given), server="new")
        said = str(refused.value)
        assert "schema version 4, which this server migrates to 5, and another process" in said
        assert f"has it open (pid {old_server.pid}: " in said, said
        assert _schema_of(path) == "4"
    finally:
        assert old_server.stdin is not None and old_server.stdout is not None
        old_server.stdin.close()
        old_server.wait(BOUND)
        old_server.stdout.close()
    # The server says it migrated the file (it was silent: a rollback then found the
    # file refused by the older server, with no copy made).
    cli = [sys.executable, "-m", "headwater._cli"]
    server = subprocess.Popen(
        [*cli, "server", "--port", "0", "--http-port", "off", "--db", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert server.stdout is not None
        while not lines or "listening on" not in lines[-1]:
            lines.append(server.stdout.readline())
            assert lines[-1], lines  # (it ended)
    finally:
        server.terminate()
        server.wait(BOUND)
        assert server.stdout is not None
        server.stdout.close()
    said = f"headwater server: migrated the database {path} from schema version 4 to 5: "
    assert any(line.startswith(said) for line in lines), lines
    assert _schema_of(path) == "5"


def test_a_store_of_schema_version_2_is_upgraded_in_place(tmp_path: Path) -> None:
    """Version 3 added the links of child flow runs (three columns of flow_runs) and
    the credentials and audit tables, version 4 the uploader of each payload, version 5
    the holder of each delivered attempt: a version 2 database gets them in place,
    keeps its runs, deliveries and payloads, and says the current version from then
    on."""
    import sqlite3

    from headwater_runtime.store import SCHEMA_VERSION, AuditRow, Delivery, TaskRunRow, WriteBatch

    path = tmp_path / "v2.db"
    store = SQLiteStore(path)
    store.create_flow_run(FlowRunRow("r0", "f", "1", FlowRunState.RUNNING.value, 1.0, b"{}"))
    kept = store.put_payload(iter([b"[1]"]), {"encoding": "json"}, 3).id
    batch = WriteBatch()
    batch.task_runs[("r0", "t")] = TaskRunRow("r0", "t", "t", -1, 2, 1, 1.0, "w", delivered=1)
    store.commit(batch)
    store.close()
    with sqlite3.connect(path) as db:  # what version 2 had
        db.execute("ALTER TABLE payloads DROP COLUMN uploader")
        db.execute("ALTER TABLE task_runs DROP COLUMN holder")
        db.execute("DROP TABLE credentials")
        db.execute("DROP TABLE audit")
        db.execute("DROP INDEX flow_runs_parent")
        for column in ("parent_flow_run_id", "parent_task_key", "parent_attempt"):
            db.execute(f"ALTER TABLE flow_runs DROP COLUMN {column}")
        db.execute("UPDATE meta SET value='2' WHERE key='schema_version'")
    store = SQLiteStore(path)
    assert store.get_flow_run("r0").parent_flow_run_id == ""
    assert store.payload_meta(kept).uploader is None  # (uploaded before version 4: unknown)
    assert store.delivered("r0") == {"t": Delivery(1, "w", None)}  # (holder unknown)
    assert b"".join(store.read_payload(kept)) == b"[1]"
    own = store.put_payload(iter([b"[2]"]), {"encoding": "json"}, 3, uploader="w1").id
    assert store.payload_meta(own).uploader == "w1"
    store.add_audit(AuditRow(1.0, "alice", "run", "flow_run", "r1"))
    assert [a.actor for a in store.audit_entries("flow_run", "r1")] == ["alice"]
    assert store.list_credentials() == []
    store.close()
    with sqlite3.connect(path) as db:
        (version,) = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    assert int(version) == SCHEMA_VERSION == 5


@task
def payload(i: int) -> str:
    return "x" * 4096 + str(i)


@flow
def one_task(i: int = 0) -> str:
    return payload(i)


def test_retention_gives_every_byte_of_finished_runs_back(db: str) -> None:
    """After retention removes them, finished runs leave nothing behind: no rows, no
    values, no payloads, and the database does not grow from one batch of runs to the
    next (SQLite gives the pages back to the file system; PostgreSQL, after VACUUM,
    reuses them)."""
    functions = {payload.task_type: payload.fn}
    clock = Clock()
    store = open_store(db, clock=clock.now)
    size = "page_count" if isinstance(store, SQLiteStore) else "bytes"
    sizes = ("page_count", "freelist_count", "bytes")
    dispatch = FakeDispatch()
    manager = RunManager(store, dispatch, clock)
    manager.register_flow(one_task.compile())

    def batch_of_runs(count: int) -> None:
        for i in range(count):
            manager.create_run("one_task", "", {"i": value_of(i)})
            manager.flush()
            (pending,) = dispatch.submitted
            dispatch.submitted.clear()
            a = pending.assignment
            from headwater.wire import split_task_run_id
            from headwater_runtime.engine import TaskSucceeded

            run_id, key = split_task_run_id(a.token.task_run_id)
            value = functions[a.task_type](**{n: decode_input(v) for n, v in a.inputs.items()})
            manager.handle(run_id, TaskSucceeded(key, a.token.attempt, value_of(value)))
            manager.flush()
            # an upload nobody references (a result that never arrived)
            store.put_payload(iter([b"y" * 5000]), {"encoding": "json"}, 5000)

    batch_of_runs(20)
    clock.t += 3600
    first = store.prune(clock.now(), clock.now(), grace=0)
    assert first.runs == 20 and first.values >= 20 and first.payloads == 20
    baseline = store.stats()  # type: ignore[attr-defined]
    assert {k: v for k, v in baseline.items() if k not in sizes} == {
        k: 0 for k in baseline if k not in sizes
    }
    batch_of_runs(20)
    grown = store.stats()  # type: ignore[attr-defined]
    assert grown[size] >= baseline[size]
    clock.t += 3600
    dry = store.prune(clock.now(), clock.now(), grace=0, dry_run=True)
    assert dry.dry_run and dry.runs == 20 and store.stats()["flow_runs"] == 20  # type: ignore[attr-defined]
    second = store.prune(clock.now(), clock.now(), grace=0)
    assert second.runs == 20 and second.bytes_reclaimed > 0
    if size == "page_count":  # every free page back to the file system, not one per prune
        assert store.stats()["freelist_count"] == 0  # type: ignore[attr-defined]
        assert second.bytes_reclaimed > 20 * 4096, second
    if size == "bytes":  # the second batch reused the space the first one freed
        batch_of_runs(20)
        again = store.stats()  # type: ignore[attr-defined]
        assert again[size] <= grown[size], (grown, again)
        clock.t += 3600
        store.prune(clock.now(), clock.now(), grace=0)
    after = store.stats()  # type: ignore[attr-defined]
    if size == "page_count":
        assert after[size] <= baseline[size], (baseline, after)
    assert after["flow_runs"] == after["run_values"] == after["payloads"] == 0
    store.close()


def test_prune_finds_unreferenced_values_through_indexes(tmp_path: Path) -> None:
    """Finding the values nothing refers to searches the journal by index, never scans
    it once per value: that was quadratic, and the server prunes on its writer thread
    at every start, so every commit waited (18 s for 7,000 values)."""
    from headwater_runtime.store._prune import ORPHAN_VALUE

    store = SQLiteStore(tmp_path / "hw.db")
    query = f"SELECT v.id FROM run_values v WHERE v.id > ? AND {ORPHAN_VALUE} ORDER BY v.id"
    plan = [row[-1] for row in store._db.execute(f"EXPLAIN QUERY PLAN {query}", ("",))]
    store.close()
    assert not [step for step in plan if step.startswith("SCAN") and " v " not in f" {step} "]
    assert any("run_events_value" in step for step in plan), plan


def test_prune_keeps_what_is_referenced(db: str) -> None:
    """Running runs, their values and young payloads survive a prune."""
    clock = Clock()
    store = open_store(db, clock=clock.now)
    dispatch = FakeDispatch()
    manager = RunManager(store, dispatch, clock)
    manager.register_flow(proto_pipeline.compile())
    row, _ = manager.create_run("proto_pipeline", "", {"n": value_of(2)})
    manager.flush()
    young = store.put_payload(iter([b"z"]), {"encoding": "json"}, 1)
    report = store.prune(clock.now() + 10_000, clock.now(), grace=60)
    assert report.runs == 0 and report.payloads == 0
    assert store.get_flow_run(row.id).state == FlowRunState.RUNNING.value
    assert store.payload_meta(young.id).size == 1
    store.close()


def test_headwater_prune_on_the_command_line(db: str, tmp_path: Path) -> None:
    from headwater._cli import main

    open_store(db).close()
    assert main(["prune", "--db", db, "--older-than", "30d", "--dry-run"]) == 0
    folder = str(tmp_path / "payloads")
    assert main(["prune", "--db", db, "--payload-dir", folder, "--older-than", "30d"]) == 0
    assert main(["prune", "--db", db, "--older-than", "soon"]) == 2
    # A bare number is seconds elsewhere: here it is refused ("30" meant for days
    # deleted nearly every finished run; a trial).
    assert main(["prune", "--db", db, "--older-than", "30"]) == 2


def test_a_prune_the_store_refuses_is_one_line(
    db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A full disk (or a database down) makes prune print one line and exit 1 (a user
    trial: a traceback), saying that pruning needs some free space itself."""
    from headwater._cli import main
    from headwater_runtime.store import PostgresStore

    open_store(db).close()
    full = StoreUnavailable("cannot write to the database: database or disk is full", full=True)
    for cls in (SQLiteStore, PostgresStore):
        monkeypatch.setattr(cls, "prune", mock.Mock(side_effect=full))
    assert main(["prune", "--db", db, "--older-than", "30d"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "could not prune" in err and "database or disk is full" in err
    assert "needs some free space itself" in err


needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mount") is None,
    reason="mounting a small tmpfs needs root (CI runs as root)",
)


@needs_root
def test_a_database_on_a_read_only_disk_is_refused_saying_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A copy on a read-only disk: prune, even a dry run, said only "unable to open
    database file" (a user trial); it names the cause (SQLite's WAL files are written
    beside the database)."""
    from headwater._cli import main

    mount = tmp_path / "ro"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], check=True)
    try:
        SQLiteStore(mount / "hw.db").close()
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        assert main(["prune", "--db", str(mount / "hw.db"), "--dry-run"]) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert "read-only" in err and "work on a writable copy" in err, err
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@needs_root
def test_a_full_disk_is_survived_and_every_run_finishes_when_space_returns(
    tmp_path: Path,
) -> None:
    """A real full file system: the server keeps running, refuses what it cannot store
    with RESOURCE_EXHAUSTED, and finishes every run once space comes back."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:

        async def main() -> None:
            store = SQLiteStore(mount / "hw.db")
            async with (
                served(store) as running,
                grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
            ):
                worker = StreamWorker(channel, "w", slots=8)
                await worker.next("welcome")
                client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
                await client.RegisterFlow(
                    cp.RegisterFlowRequest(graph=proto_pipeline.compile()), metadata=AUTH
                )
                run_ids: list[str] = []
                done = asyncio.Event()
                serving = asyncio.create_task(serve_all(worker, done))
                full = False
                async with asyncio.timeout(BOUND):
                    while not full:  # fill the disk with runs and their results
                        try:
                            created = await client.CreateFlowRun(
                                cp.CreateFlowRunRequest(
                                    flow_name="proto_pipeline", parameters={"n": value_of(50)}
                                ),
                                metadata=AUTH,
                            )
                            run_ids.append(created.flow_run.id)
                        except grpc.aio.AioRpcError as exc:
                            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
                            assert "full" in (exc.details() or "")
                            full = True
                        await asyncio.sleep(0.01)
                assert running.core.commits.error is not None or full
                remount = ["mount", "-o", "remount,size=64m", "tmpfs", str(mount)]
                await asyncio.to_thread(subprocess.run, remount, check=True)
                for run_id in run_ids:
                    assert await finished(channel, run_id) == 4
                done.set()
                await serving
                await worker.close()
                assert len(run_ids) >= 1

        asyncio.run(main())
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


class StoreWaitingIn(SQLiteStore):
    """A SQLite store whose ``held`` method waits for the test, then does its work."""

    def __init__(self, path: Path, held: str) -> None:
        super().__init__(path)
        self.entered = threading.Event()
        self.released = threading.Event()
        method = getattr(super(), held)

        def waiting(*args: Any, **kwargs: Any) -> Any:
            self.entered.set()
            assert self.released.wait(BOUND)
            return method(*args, **kwargs)

        setattr(self, held, waiting)


async def cancelled_while_stored(store: StoreWaitingIn, call: Any) -> None:
    """Cancel ``call`` (its client goes away) while the server stores its change, once
    the server has seen the cancellation, let the store go on."""
    assert await asyncio.to_thread(store.entered.wait, BOUND)
    call.cancel()
    with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
        await call
    # The server carries the change on without its caller (server/_io.py:to_its_end).
    await wait_until(lambda: bool(_io._CARRIED))
    store.released.set()
    await wait_until(lambda: not _io._CARRIED)


async def wait_until(condition: Any) -> None:
    """Poll (the server's state has no event to wait on) until ``condition()``."""
    async with asyncio.timeout(BOUND):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def test_a_run_stored_after_its_client_went_away_still_starts(tmp_path: Path) -> None:
    """A client killed while CreateFlowRun was storing its run (a user trial: SIGKILL
    right after client.run) cancels the call on the server; the run was stored anyway,
    but the call's end, which hands the run to the dispatcher, never ran: the run
    stayed RUNNING with its first task SCHEDULED and no attempt, until a restart."""

    async def main() -> None:
        store = StoreWaitingIn(tmp_path / "hw.db", "create_flow_run")
        async with one_slot_worker(store) as (_running, channel, worker):
            client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
            graph = proto_pipeline.compile()
            await client.RegisterFlow(cp.RegisterFlowRequest(graph=graph), metadata=AUTH)
            request = cp.CreateFlowRunRequest(
                flow_name="proto_pipeline", parameters={"n": value_of(1)}
            )
            await cancelled_while_stored(store, client.CreateFlowRun(request, metadata=AUTH))
            assignment = await worker.next("assignment")
            listed = await client.ListFlowRuns(cp.ListFlowRunsRequest(), metadata=AUTH)
            (run,) = listed.flow_runs
            assert assignment.token.task_run_id.startswith(run.id + "/")
            await worker.close()

    asyncio.run(main())


def test_a_credential_revoked_by_a_client_that_went_away_is_refused(tmp_path: Path) -> None:
    """The same for RevokeCredential: the revocation was stored, but the server's
    credentials in memory were not re-read, so the token stayed valid until a restart."""

    async def main() -> None:
        store = StoreWaitingIn(tmp_path / "hw.db", "revoke_credential")
        async with (
            served(store) as running,
            grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
        ):
            access = access_pb2_grpc.AccessServiceStub(channel)
            made = await access.CreateCredential(
                access_pb2.CreateCredentialRequest(name="ci", role="viewer"), metadata=AUTH
            )
            client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
            theirs = (("authorization", f"Bearer {made.token}"),)
            await client.ListFlowRuns(cp.ListFlowRunsRequest(), metadata=theirs)
            revoke = access.RevokeCredential(
                access_pb2.RevokeCredentialRequest(name="ci"), metadata=AUTH
            )
            await cancelled_while_stored(store, revoke)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.ListFlowRuns(cp.ListFlowRunsRequest(), metadata=theirs)
            assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED

    asyncio.run(main())


def test_a_drain_and_a_limit_cut_short_by_their_client_are_stored_and_audited(
    tmp_path: Path,
) -> None:
    """A drain applied in memory whose client went away before it was stored was lost
    at the next restart, and the audit entries of limits, cancels, deploys and new
    schedules went missing the same way (a user trial: 18 of 30 drains, 66 of 150
    limits)."""

    async def main() -> None:
        store = StoreWaitingIn(tmp_path / "hw.db", "put_drain")
        async with one_slot_worker(store) as (_running, channel, worker):
            ops_client = operations_pb2_grpc.OperationsServiceStub(channel)
            drain = ops_client.DrainWorker(ops.DrainWorkerRequest(name="w"), metadata=AUTH)
            await cancelled_while_stored(store, drain)
            assert [row.name for row in store.list_drains()] == ["w"]
            store.entered.clear()
            store.released.clear()
            store.put_limit = _held(store, SQLiteStore.put_limit)
            limit = ops.ConcurrencyLimit(tag="db", concurrency=2)
            call = ops_client.SetConcurrencyLimit(
                ops.SetConcurrencyLimitRequest(limit=limit), metadata=AUTH
            )
            await cancelled_while_stored(store, call)
            assert [row.tag for row in store.list_limits()] == ["db"]
            actions = {row.action for row in store.audit_entries("", "", 10)}
            assert {"worker.drain", "limit.set"} <= actions, actions
            await worker.close()

    asyncio.run(main())


def _held(store: StoreWaitingIn, method: Any) -> Any:
    def waiting(*args: Any, **kwargs: Any) -> Any:
        store.entered.set()
        assert store.released.wait(BOUND)
        return method(store, *args, **kwargs)

    return waiting


class HeldEndStore(SQLiteStore):
    """A SQLite store that holds the commit storing a run's end until ``release`` is set."""

    release = threading.Event()

    def commit(self, batch: WriteBatch) -> None:
        """Wait for ``release`` before committing a batch that ends a run."""
        if any(row.ended_at for row in batch.flow_runs.values()):
            assert self.release.wait(BOUND), "the run's end was never released"
        super().commit(batch)


def test_create_flow_run_answers_with_the_run_as_stored_not_as_it_went_on(
    tmp_path: Path,
) -> None:
    """CreateFlowRun answers with the run as its creation stored it, although the run
    went on (here: ended, its end not committed yet) before the answer was built. It
    answered from the live row: it read the result's value before it was stored and
    failed with UNKNOWN "stored value ... is missing" (seen with 1-task runs on a
    loaded server), or would have reported an end not yet stored."""
    HeldEndStore.release.clear()
    store = HeldEndStore(tmp_path / "hw.db")
    original = RunCreation._adopt
    live: list[FlowRunRow] = []

    async def adopt_and_let_it_end(self: RunCreation, stored: Any) -> tuple[FlowRunRow, bool]:
        live.append(stored[1])
        answer = await original(self, stored)
        await _until(lambda: live[0].ended_at is not None, "the run's end (held in memory)")
        return answer

    async def main() -> None:
        async with one_slot_worker(store) as (_, channel, worker):
            done = asyncio.Event()
            serving = asyncio.create_task(serve_all(worker, done))
            try:
                client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
                graph = proto_pipeline.compile()
                await client.RegisterFlow(cp.RegisterFlowRequest(graph=graph), metadata=AUTH)
                request = cp.CreateFlowRunRequest(
                    flow_name="proto_pipeline", parameters={"n": value_of(2)}
                )
                with mock.patch.object(RunCreation, "_adopt", adopt_and_let_it_end):
                    created = await client.CreateFlowRun(request, metadata=AUTH)
                run_id = created.flow_run.id
                assert created.created and created.flow_run.id == live[0].id
                assert live[0].state == FlowRunState.SUCCESS.value  # in memory, not stored
                assert created.flow_run.state == FlowRunState.RUNNING.value  # as stored
                assert not created.flow_run.HasField("result")
                got = await run_state(channel, run_id)
                assert got.flow_run.state == FlowRunState.RUNNING.value
                HeldEndStore.release.set()
                assert await finished(channel, run_id) == FlowRunState.SUCCESS.value
            finally:
                HeldEndStore.release.set()
                done.set()
                await serving
                await worker.close()

    asyncio.run(main())


def test_an_outcome_sent_late_ends_its_attempt_when_its_worker_says(tmp_path: Path) -> None:
    """A worker holds an outcome while the server is away and sends it again once it
    reconnects: the attempt ended then, by the outcome's ``ended_at`` (kept between its
    RUNNING time and the arrival), not at the arrival (a 6 s task showed 27 s after a
    21 s outage, a user trial)."""
    from headwater.wire import seconds, timestamp

    RUNNING, SUCCESS = TaskRunState.RUNNING.value, TaskRunState.SUCCESS.value

    async def main() -> tuple[float, float, float, float]:
        store = SQLiteStore(tmp_path / "hw.db")
        async with one_slot_worker(store) as (_, channel, worker):
            run_id = await create(channel, n=1)
            first = await worker.next("assignment")
            worker.send(started=worker_pb2.TaskStarted(token=first.token))

            async def entered(state: int) -> tuple[float, Any]:
                """When the task run entered ``state`` (waited for), and the run."""
                for _ in range(500):
                    got = await run_state(channel, run_id)
                    task = next(t for t in got.task_runs if t.id == first.token.task_run_id)
                    times = [seconds(h.timestamp) for h in task.history if h.state == state]
                    if times:
                        return times[0], got
                    await asyncio.sleep(0.01)
                raise AssertionError(f"the task run never entered state {state}")

            running, _ = await entered(RUNNING)
            await asyncio.sleep(0.3)  # the outcome arrives at least 0.3 s after the start
            result = worker.result(first)
            result.ended_at.CopyFrom(timestamp(running + 0.1))
            worker.send(result=result)
            ended, got = await entered(SUCCESS)
            await worker.close()
        store.close()
        return running, ended, seconds(got.flow_run.created_at), time.time()

    running, ended, created, now = asyncio.run(asyncio.wait_for(main(), 60))
    assert created <= running < now
    assert ended == pytest.approx(running + 0.1, abs=1e-6)


def test_a_retention_without_a_unit_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--retention 30` (or HEADWATER_RETENTION=30) was read as 30 seconds: a server
    meant to keep a month deleted almost every finished run at its start (a trial)."""
    from headwater._cli import main
    from headwater.wire import parse_duration

    assert main(["server", "--port", "0", "--retention", "30"]) == 2
    assert "--retention needs a unit: '30' could be seconds or days" in capsys.readouterr().err
    monkeypatch.setenv("HEADWATER_RETENTION", "1e3")
    assert main(["server", "--port", "0"]) == 2
    assert "HEADWATER_RETENTION: needs a unit" in capsys.readouterr().err
    assert parse_duration("30d", unit=True) == 30 * 86400
    assert parse_duration("30") == 30  # (elsewhere a bare number is seconds)
