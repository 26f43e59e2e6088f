"""Day-two operations in the control plane, in process: retry from failure in the run
manager (across a restart, traced as a new attempt), the OperationsService's answers to
bad input, webhook deliveries that give up, and the configuration's precedence. The
tests that keep state run on both stores (the db fixture: SQLite, PostgreSQL)."""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from test_run_manager import Clock, FakeDispatch, drain, pipeline, value_of, work
from test_server_protocol import serving

from headwater.v1 import operations_pb2 as ops
from headwater.v1 import operations_pb2_grpc
from headwater.wire import FlowRunState, TaskRunState, duration
from headwater_runtime.server._config import ConfigError, limits_from_env, settings
from headwater_runtime.server._core import ServerSettings
from headwater_runtime.server._journal import JournalFormatError
from headwater_runtime.server._ops_core import RetryRefused
from headwater_runtime.server._runs import RunManager
from headwater_runtime.store import LimitRow, NotFound, open_store


def named(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def test_a_run_retried_after_a_restart_reruns_only_what_failed_as_a_new_traced_attempt(
    db: str, span_exporter: InMemorySpanExporter
) -> None:
    store = open_store(db)
    dispatch = FakeDispatch()
    manager = RunManager(store, dispatch, Clock())
    manager.register_flow(pipeline.compile())
    row, _ = manager.create_run("pipeline", "", {"n": value_of(3)})
    manager.flush()
    # scale[1] fails on every attempt (it has one retry): the run FAILS, total never runs.
    while dispatch.submitted:
        pending = dispatch.submitted.pop(0)
        work(manager, pending, fail=pending.assignment.task_name == "scale[1]")
        manager.flush()
    assert store.get_flow_run(row.id).state == FlowRunState.FAILED.value

    restarted = RunManager(store, dispatch, Clock())  # a new server on the same store
    assert restarted.recover().held == []
    active = restarted.rebuild(store.get_flow_run(row.id))
    restarted.retry(active, "the disk is back")
    restarted.flush()
    assert [p.assignment.task_name for p in dispatch.submitted] == ["scale[1]"]
    assert dispatch.submitted[0].assignment.token.attempt == 3  # attempt numbers go on
    drain(restarted, dispatch)
    stored = store.get_flow_run(row.id)
    assert stored.state == FlowRunState.SUCCESS.value
    assert [(a.attempt, FlowRunState(a.state).name) for a in store.run_attempts(row.id)] == [
        (1, "FAILED"),
        (2, "SUCCESS"),
    ]
    states = {t.key: TaskRunState(t.state).name for t in store.task_runs(row.id)}
    assert set(states.values()) == {"SUCCESS", "MAPPED"}
    history = [TaskRunState(h.state).name for h in store.task_run_history(row.id, "scale[1]")]
    assert history[-5:] == ["FAILED", "PENDING", "SCHEDULED", "RUNNING", "SUCCESS"]
    store.close()

    flows = named(span_exporter.get_finished_spans(), "flow pipeline")
    assert [dict(s.attributes or {}).get("headwater.flow_run.attempt") for s in flows] == [
        None,
        2,
    ]
    assert flows[0].context.trace_id == flows[1].context.trace_id, "one trace per run"


def call(db: str, body: Any, **options: Any) -> Any:
    """``body(stub, running)`` against an in-process server on ``db`` (the db fixture:
    SQLite or PostgreSQL)."""

    async def main() -> Any:
        async with (
            serving(db, **options) as running,
            grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
        ):
            stub = operations_pb2_grpc.OperationsServiceStub(channel)
            return await asyncio.wait_for(body(stub, running), 60)

    return asyncio.run(main())


async def refused(request: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await request
    return caught.value.code(), caught.value.details() or ""


def test_bad_operations_requests_get_one_line_and_the_right_status(db: str) -> None:
    async def body(stub: operations_pb2_grpc.OperationsServiceStub, running: Any) -> None:
        code = grpc.StatusCode
        cases = [
            (stub.RetryFlowRun(ops.RetryFlowRunRequest(id="nope")), code.NOT_FOUND, "'nope'"),
            (stub.RetryFlowRun(ops.RetryFlowRunRequest()), code.INVALID_ARGUMENT, "id"),
            (
                stub.SetConcurrencyLimit(ops.SetConcurrencyLimitRequest()),
                code.INVALID_ARGUMENT,
                "needs a tag",
            ),
            (
                stub.SetConcurrencyLimit(
                    ops.SetConcurrencyLimitRequest(
                        limit=ops.ConcurrencyLimit(tag="  ", concurrency=1)
                    )
                ),
                code.INVALID_ARGUMENT,
                "needs a tag",
            ),
            (
                stub.SetConcurrencyLimit(
                    ops.SetConcurrencyLimitRequest(limit=ops.ConcurrencyLimit(tag="db"))
                ),
                code.INVALID_ARGUMENT,
                "give a concurrency, a rate or both",
            ),
            (
                stub.SetConcurrencyLimit(
                    ops.SetConcurrencyLimitRequest(limit=ops.ConcurrencyLimit(tag="db", rate=5))
                ),
                code.INVALID_ARGUMENT,
                "period above zero",
            ),
            (
                # (stored before its answer failed: listing limits then failed with
                # UNKNOWN for everyone, across restarts, a user trial)
                stub.SetConcurrencyLimit(
                    ops.SetConcurrencyLimitRequest(
                        limit=ops.ConcurrencyLimit(
                            tag="db", rate=1, rate_period=Duration(seconds=2**63 - 1)
                        )
                    )
                ),
                code.INVALID_ARGUMENT,
                "a rate's period is 9.223372036854776e+18 seconds (at most 315,576,000,000",
            ),
            (
                # (PostgreSQL's integer column refused it: UNKNOWN, found by the fuzz)
                stub.SetConcurrencyLimit(
                    ops.SetConcurrencyLimitRequest(
                        limit=ops.ConcurrencyLimit(tag="db", concurrency=2**32 - 1)
                    )
                ),
                code.INVALID_ARGUMENT,
                "limit of 'db': a concurrency of 4,294,967,295 (at most 2,147,483,647)",
            ),
            (
                stub.SetConcurrencyLimit(
                    ops.SetConcurrencyLimitRequest(
                        limit=ops.ConcurrencyLimit(
                            tag="db", rate=2**31, rate_period=Duration(seconds=1)
                        )
                    )
                ),
                code.INVALID_ARGUMENT,
                "limit of 'db': a rate of 2,147,483,648 (at most 2,147,483,647)",
            ),
            (
                stub.SetConcurrencyLimit(
                    ops.SetConcurrencyLimitRequest(
                        limit=ops.ConcurrencyLimit(tag="db\x00", concurrency=1)
                    )
                ),
                code.INVALID_ARGUMENT,
                "a limit's tag 'db\\x00' must not contain control characters",
            ),
            (
                stub.SetConcurrencyLimit(
                    ops.SetConcurrencyLimitRequest(
                        limit=ops.ConcurrencyLimit(tag="t" * 100_000, concurrency=1)
                    )
                ),
                code.INVALID_ARGUMENT,
                "a limit's tag is 100000 characters long (at most 200)",
            ),
            (
                stub.DeleteConcurrencyLimit(ops.DeleteConcurrencyLimitRequest(tag="db")),
                code.NOT_FOUND,
                "tag 'db' has no limit",
            ),
            (stub.DrainWorker(ops.DrainWorkerRequest(name="w")), code.NOT_FOUND, "'w'"),
            (stub.ResumeWorker(ops.ResumeWorkerRequest(name="w")), code.NOT_FOUND, "'w'"),
            (
                stub.CreateWebhook(ops.CreateWebhookRequest(webhook=ops.Webhook(url="ftp://x"))),
                code.INVALID_ARGUMENT,
                "http:// or https://",
            ),
            (
                stub.CreateWebhook(
                    ops.CreateWebhookRequest(webhook=ops.Webhook(url="http://bad host/hook"))
                ),
                code.INVALID_ARGUMENT,
                "must not contain spaces or control characters",
            ),
            (
                stub.CreateWebhook(
                    ops.CreateWebhookRequest(
                        webhook=ops.Webhook(url="http://127.0.0.1:9/x\r\nX-Evil: 1")
                    )
                ),
                code.INVALID_ARGUMENT,
                "must not contain spaces or control characters",
            ),
            (
                stub.CreateWebhook(
                    ops.CreateWebhookRequest(webhook=ops.Webhook(url="http://h:99999/"))
                ),
                code.INVALID_ARGUMENT,
                "bad port",
            ),
            (
                stub.CreateWebhook(
                    ops.CreateWebhookRequest(webhook=ops.Webhook(url="http://h/" + "x" * 200_000))
                ),
                code.INVALID_ARGUMENT,
                "webhook URL is 200,009 characters long (at most 2,048)",
            ),
            (  # (taken, it never fired: a run is RUNNING once created; a user trial)
                stub.CreateWebhook(
                    ops.CreateWebhookRequest(
                        webhook=ops.Webhook(url="http://h/", states=[FlowRunState.SCHEDULED.value])
                    )
                ),
                code.INVALID_ARGUMENT,
                "a flow run never changes to SCHEDULED after it is created: a webhook fires for "
                "RUNNING, SUCCESS, FAILED, CANCELLED (and late marks)",
            ),
            (
                stub.DeleteWebhook(ops.DeleteWebhookRequest(id="nope")),
                code.NOT_FOUND,
                "'nope'",
            ),
        ]
        for request, expected, fragment in cases:
            got, details = await refused(request)
            assert (got, fragment in details, "\n" in details) == (expected, True, False), (
                got,
                details,
            )
        assert running.core.store.list_limits() == []  # nothing refused was stored
        limit = ops.ConcurrencyLimit(tag="db", concurrency=2, rate=10)
        limit.rate_period.CopyFrom(duration(1.0))
        stored = await stub.SetConcurrencyLimit(ops.SetConcurrencyLimitRequest(limit=limit))
        assert (stored.limit.tag, stored.limit.concurrency, stored.limit.rate) == ("db", 2, 10)
        listed = await stub.ListConcurrencyLimits(ops.ListConcurrencyLimitsRequest())
        assert [m.tag for m in listed.limits] == ["db"]
        assert running.core.store.list_limits() == [LimitRow("db", 2, 10, 1.0)]

    call(db, body)


def test_a_drained_workers_record_stays_while_drained_and_its_drain_can_be_lifted(
    db: str,
) -> None:
    """A drain is kept by name. The record of a worker gone for longer than
    forget_workers_after (7 days) went while its drain stayed: the drain was listed
    nowhere, and `headwater workers resume NAME` said "no worker named ... is known"
    (NOT_FOUND), so it waited for the next worker of that name. A drained worker's
    record now stays, listed offline and drained, until the drain is lifted; a drain
    whose record went anyway (a prune before this change) can still be lifted."""
    from headwater_runtime.store import DrainRow, WorkerRow

    store = open_store(db)
    old = time.time() - 8 * 86400
    for name in ("gpu-1", "gpu-2"):
        store.put_worker(WorkerRow(name, f"id-{name}", ("etl.x",), {}, 2, "0.1.0", "python",
                                   "h", old - 60, old))  # fmt: skip
    store.put_drain(DrainRow("gpu-1", exit_when_idle=False, at=old))
    store.put_drain(DrainRow("no-record", exit_when_idle=False, at=old))
    store.close()

    async def body(stub: operations_pb2_grpc.OperationsServiceStub, running: Any) -> Any:
        for _ in range(200):  # the automatic prune at start
            if running.core.last_prune is not None:
                break
            await asyncio.sleep(0.05)
        assert running.core.last_prune is not None
        listed = await stub.ListWorkers(ops.ListWorkersRequest())
        await stub.ResumeWorker(ops.ResumeWorkerRequest(name="no-record"))
        await stub.ResumeWorker(ops.ResumeWorkerRequest(name="gpu-1"))
        again = await running.core.prune(None)  # the next prune: gpu-1 is not drained now
        after = await stub.ListWorkers(ops.ListWorkersRequest())
        return (
            running.core.last_prune.workers,
            [(w.name, w.online, w.draining) for w in listed.workers],
            again.workers,
            [w.name for w in after.workers],
            sorted(running.core.ops.workers.drains),
        )

    forgotten, listed, again, after, drains = call(db, body)
    assert forgotten == 1 and listed == [("gpu-1", False, True)]  # gpu-2 went
    assert (again, after, drains) == (1, [], [])
    store = open_store(db)
    try:
        assert store.list_drains() == [] and store.list_workers() == []
    finally:
        store.close()


def test_retrying_a_run_that_is_not_over_is_refused(db: str) -> None:
    async def body(stub: operations_pb2_grpc.OperationsServiceStub, running: Any) -> None:
        core = running.core
        await core.register_flow(pipeline.compile())
        row, _ = await core.create_run("pipeline", "", {"n": value_of(1)})
        got, details = await refused(stub.RetryFlowRun(ops.RetryFlowRunRequest(id=row.id)))
        assert got is grpc.StatusCode.FAILED_PRECONDITION
        assert details == f"flow run {row.id} is running; it can be retried once it ends"
        await core.cancel_run(row.id, "stop")
        # By a unique prefix of its id, as GetFlowRun and CancelFlowRun take it.
        retried = await stub.RetryFlowRun(ops.RetryFlowRunRequest(id=row.id[:8], reason="go"))
        assert retried.flow_run.id == row.id
        assert retried.flow_run.state == FlowRunState.RUNNING.value
        assert retried.flow_run.attempt == 2
        with pytest.raises(RetryRefused):
            await core.ops.retry(row.id, "twice")

    call(db, body)


def test_a_run_retried_and_ended_while_another_retry_reads_it_is_read_again(db: str) -> None:
    """Two retries of one run at once (a double click): while the second read the run,
    the first retried it and it ended again. The second then retried it from what it
    had read, its journal from before the first retry: its entries took sequence
    numbers already stored. It reads the run again: the run is retried once more, as
    its third attempt, and every commit goes through."""

    async def body(stub: operations_pb2_grpc.OperationsServiceStub, running: Any) -> None:
        core = running.core
        await core.register_flow(pipeline.compile())
        row, _ = await core.create_run("pipeline", "", {"n": value_of(1)})

        async def stopped(why: str) -> None:
            await core.cancel_run(row.id, why)
            while row.id in core.runs.runs:  # noqa: ASYNC110 (ended, and that end committed)
                await asyncio.sleep(0.01)

        await stopped("stop")
        read, release, held = core.io.read, asyncio.Event(), asyncio.Event()

        async def holding(fn: Any, *args: Any, **kwargs: Any) -> Any:
            got = await read(fn, *args, **kwargs)
            if fn == core.ops._rebuild and not held.is_set():
                held.set()  # the second retry's read: back once the first is over
                await release.wait()
            return got

        core.io.read = holding
        second = asyncio.ensure_future(core.ops.retry(row.id, "second"))
        await held.wait()
        await core.ops.retry(row.id, "first")
        await stopped("stop again")
        release.set()
        await second
        await stopped("stop a third time")
        await core.durable()
        attempts = await read(core.store.run_attempts, row.id)
        assert [(a.attempt, FlowRunState(a.state).name) for a in attempts] == [
            (1, "CANCELLED"),
            (2, "CANCELLED"),
            (3, "CANCELLED"),
        ]

    call(db, body)


async def ended_runs(core: Any, count: int = 1) -> list[Any]:
    """``count`` runs of ``pipeline`` created and cancelled, their ends committed."""
    await core.register_flow(pipeline.compile())
    rows = [
        (await core.create_run("pipeline", "", {"n": value_of(n + 1)}))[0] for n in range(count)
    ]
    for row in rows:
        await core.cancel_run(row.id, "stop")
    while any(row.id in core.runs.runs for row in rows):  # noqa: ASYNC110
        await asyncio.sleep(0.01)  # (ended, and that end committed)
    return rows


def test_a_prune_while_a_run_is_retried_keeps_that_run(db: str) -> None:
    """A prune that came while a retry read its run deleted the run (stored as ended
    until the retry's first commit): the retry's commits then named a run no longer
    stored, and failed until the server stopped. The run is kept, retried and stored."""

    async def body(stub: operations_pb2_grpc.OperationsServiceStub, running: Any) -> None:
        core = running.core
        row, other = await ended_runs(core, 2)
        read, release, held = core.io.read, asyncio.Event(), asyncio.Event()

        async def holding(fn: Any, *args: Any, **kwargs: Any) -> Any:
            got = await read(fn, *args, **kwargs)
            if fn == core.ops._rebuild and not held.is_set():
                held.set()
                await release.wait()
            return got

        core.io.read = holding
        retry = asyncio.ensure_future(core.ops.retry(row.id, "again"))
        await held.wait()
        report = await core.prune(0.0)
        assert report.runs == 1  # the other run: this one is kept
        release.set()
        await retry
        await core.cancel_run(row.id, "stop again")
        await core.durable()
        attempts = await read(core.store.run_attempts, row.id)
        assert [(a.attempt, FlowRunState(a.state).name) for a in attempts] == [
            (1, "CANCELLED"),
            (2, "CANCELLED"),
        ]
        with pytest.raises(NotFound):
            await read(core.store.get_flow_run, other.id)

    call(db, body)


def test_a_run_a_prune_beside_the_server_deletes_while_it_is_retried_is_not_retried(
    db: str,
) -> None:
    """``headwater prune`` beside the server does not know of a retry under way: a
    prune that deleted the run after the retry read it left the retry's commits naming
    a run no longer stored (the retry said OK; the run was gone, and its new journal
    entries stayed behind). Now the retry is refused (NotFound) and stores nothing."""

    async def body(stub: operations_pb2_grpc.OperationsServiceStub, running: Any) -> None:
        core = running.core
        (row,) = await ended_runs(core)
        read = core.io.read

        async def pruned_after(fn: Any, *args: Any, **kwargs: Any) -> Any:
            got = await read(fn, *args, **kwargs)
            if fn == core.ops._rebuild:  # a prune of its own store, not the server's
                report = await asyncio.to_thread(
                    core.store.prune, core.clock.now() + 1, core.clock.now(), grace=0
                )
                assert report.runs == 1
            return got

        core.io.read = pruned_after
        with pytest.raises(NotFound, match="no longer stored as it was read to be retried"):
            await core.ops.retry(row.id, "again")
        core.io.read = read
        await core.durable()
        assert row.id not in core.runs.runs
        assert await read(core.store.events, row.id) == []
        with pytest.raises(NotFound):
            await read(core.store.get_flow_run, row.id)

    call(db, body)


def test_a_prune_between_a_retried_runs_journal_and_its_values_is_not_found(db: str) -> None:
    """The retry reads the run's journal, then its values: a prune beside the server
    in between made it "stored value ... is missing" (INVALID_ARGUMENT, a trial on
    PostgreSQL), where a prune before or after is NOT_FOUND. (The prune is put where
    the value read fails: these runs were cancelled before any result.)"""

    async def body(stub: operations_pb2_grpc.OperationsServiceStub, running: Any) -> None:
        core = running.core
        row, kept = await ended_runs(core, 2)
        rebuild = core.runs.rebuild

        def values_gone(stored: Any, *args: Any) -> Any:
            if stored.id == row.id:  # (the prune deletes both: kept is tried first)
                core.store.prune(core.clock.now() + 1, core.clock.now(), grace=0)
            raise JournalFormatError("stored value 0123 is missing")

        core.runs.rebuild = values_gone
        try:
            # A value missing from a run still stored is another matter: said as it is.
            with pytest.raises(JournalFormatError, match="stored value 0123 is missing"):
                await core.ops.retry(kept.id, "again")
            with pytest.raises(NotFound, match="no longer stored as it was read to be retried"):
                await core.ops.retry(row.id, "again")
            assert row.id not in core.runs.runs
        finally:
            core.runs.rebuild = rebuild

    call(db, body)


def test_a_retry_whose_claim_comes_after_another_retry_stored_the_run_is_refused(
    db: str,
) -> None:
    """Two retries at once: the second's claim of the run comes after the first stored
    it running, and finds it changed. It is refused as running again, not as gone."""

    async def body(stub: operations_pb2_grpc.OperationsServiceStub, running: Any) -> None:
        core = running.core
        (row,) = await ended_runs(core)
        write, release, held = core.io.write, asyncio.Event(), asyncio.Event()

        async def holding(fn: Any, *args: Any, **kwargs: Any) -> Any:
            if fn == core.store.claim_for_retry and not held.is_set():
                held.set()  # the second retry's claim: sent once the first is stored
                await release.wait()
            return await write(fn, *args, **kwargs)

        core.io.write = holding
        second = asyncio.ensure_future(core.ops.retry(row.id, "second"))
        await held.wait()
        await core.ops.retry(row.id, "first")  # claimed, retried, stored running
        release.set()
        with pytest.raises(RetryRefused, match="is running again already"):
            await second
        assert row.id in core.runs.runs
        await core.cancel_run(row.id, "stop again")

    call(db, body)


def test_retrying_a_child_flow_run_on_its_own_is_refused(db: str) -> None:
    """A child run's outcome is its parent's task run's: retried alone (a hostile
    trial, while its parent ran), the child ended SUCCESS while the parent kept the
    node FAILED, and retrying the parent ran the child a third time."""

    async def body(stub: operations_pb2_grpc.OperationsServiceStub, running: Any) -> None:
        core = running.core
        await core.register_flow(pipeline.compile())
        parent, _ = await core.create_run("pipeline", "", {"n": value_of(1)})
        # A child whose parent's attempt is over by the time it is adopted: cancelled.
        link = (parent.id, "sub", 1)
        row, _ = core.runs.create_run("pipeline", "", {"n": value_of(1)}, parent=link)
        await core.durable()
        assert FlowRunState(core.store.get_flow_run(row.id).state) is FlowRunState.CANCELLED
        got, details = await refused(stub.RetryFlowRun(ops.RetryFlowRunRequest(id=row.id)))
        assert got is grpc.StatusCode.FAILED_PRECONDITION
        assert details == (
            f"cannot retry flow run {row.id}: it is a child of flow run {parent.id} (its task "
            "run 'sub'), which its outcome belongs to: retry that run, which runs the child "
            "again"
        )
        assert core.store.get_flow_run(row.id).state == FlowRunState.CANCELLED.value

    call(db, body)


class Receiver:
    """A local HTTP receiver of webhook POSTs; ``answer()`` (on its thread) says the
    status of each."""

    def __init__(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(outer.answer())
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def answer(self) -> int:
        return 204

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class AlwaysFailing(Receiver):
    """Answers every POST with 503 (and counts them)."""

    def __init__(self) -> None:
        self.tries = 0
        super().__init__()

    def answer(self) -> int:
        self.tries += 1
        return 503


def test_a_delivery_that_keeps_failing_is_retried_with_backoff_then_given_up(
    db: str,
) -> None:
    receiver = AlwaysFailing()

    async def body(stub: operations_pb2_grpc.OperationsServiceStub, running: Any) -> None:
        core = running.core
        hook = ops.Webhook(url=receiver.url, states=[FlowRunState.CANCELLED.value])
        await stub.CreateWebhook(ops.CreateWebhookRequest(webhook=hook))
        await core.register_flow(pipeline.compile())
        row, _ = await core.create_run("pipeline", "", {"n": value_of(1)})
        await core.cancel_run(row.id, "stop")
        while True:  # bounded by the test's wait_for
            (listed,) = (await stub.ListWebhooks(ops.ListWebhooksRequest())).webhooks
            if listed.failed:
                break
            await asyncio.sleep(0.05)
        assert (listed.pending, listed.failed, listed.last_error) == (0, 1, "HTTP 503")
        assert receiver.tries == 3
        assert listed.secret == "", "a secret is never returned"

    try:
        call(
            db,
            body,
            webhook_max_attempts=3,
            webhook_backoff=0.05,
            webhook_backoff_max=0.1,
        )
    finally:
        receiver.close()


class Holding(Receiver):
    """Answers no POST until released (a hanging receiver)."""

    def __init__(self) -> None:
        self.got = threading.Event()
        self.release = threading.Event()
        super().__init__()

    def answer(self) -> int:
        self.got.set()
        self.release.wait(60)
        return 204

    def close(self) -> None:
        self.release.set()
        super().close()


def test_a_receiver_that_hangs_holds_back_only_its_own_deliveries(db: str) -> None:
    """The deliverer waited for the slowest POST of a batch before the next one: one
    receiver that hung delayed every other webhook's deliveries by its timeout, each
    time (a user trial). Here the other webhook gets both its deliveries while the
    hanging receiver still holds its first POST (held until the test releases it)."""
    hanging, failing = Holding(), AlwaysFailing()
    ok_states = [FlowRunState.CANCELLED.value]

    async def body(stub: operations_pb2_grpc.OperationsServiceStub, running: Any) -> None:
        core = running.core
        for url in (hanging.url, failing.url):
            hook = ops.Webhook(url=url, states=ok_states)
            await stub.CreateWebhook(ops.CreateWebhookRequest(webhook=hook))
        await core.register_flow(pipeline.compile())
        for _ in range(2):
            row, _ = await core.create_run("pipeline", "", {"n": value_of(1)})
            await core.cancel_run(row.id, "stop")
        while True:  # bounded by the test's wait_for
            if failing.tries >= 2:
                break
            await asyncio.sleep(0.02)
        assert hanging.got.is_set() and not hanging.release.is_set()
        hanging.release.set()

    try:
        call(db, body, webhook_max_attempts=1, webhook_timeout=120)
    finally:
        hanging.close()
        failing.close()


def test_an_outbox_the_store_cannot_read_is_one_warning_line(
    db: str, caplog: pytest.LogCaptureFixture
) -> None:
    """While the database was away, the webhook deliverer logged a whole traceback at
    ERROR each second (a trial); a store that cannot be read now is one warning line,
    as everywhere else, and the deliverer tries again."""
    from headwater_runtime.store import StoreUnavailable

    async def body(stub: operations_pb2_grpc.OperationsServiceStub, running: Any) -> None:
        store, reads, again = running.core.store, [], asyncio.Event()
        real, loop = store.due_deliveries, asyncio.get_running_loop()

        def away(*args: Any) -> Any:  # (on a reader thread)
            reads.append(1)
            if len(reads) == 1:
                raise StoreUnavailable("cannot read from the database: server closed")
            loop.call_soon_threadsafe(again.set)
            return real(*args)

        store.due_deliveries = away
        running.core.ops.deliverer.wake()
        await again.wait()  # it tried again (bounded by the test's wait_for)

    with caplog.at_level(logging.WARNING, "headwater.server"):
        call(db, body)
    said = [r for r in caplog.records if "webhook" in r.getMessage()]
    assert [(r.levelno, r.exc_info) for r in said] == [(logging.WARNING, None)], said
    assert said[0].getMessage() == (
        "cannot read the webhook outbox (cannot read from the database: server closed); "
        "trying again shortly"
    )


def test_a_delivery_stored_while_the_outbox_is_read_is_not_left_waiting() -> None:
    """A wake() (a delivery stored) that came while the deliverer read the outbox was
    lost: it cleared the wake after the read, and the delivery waited for the next
    one, up to 60 s. The outbox is read again at once."""
    from headwater_runtime.server._webhooks import Deliverer, DeliverySettings

    async def main() -> None:
        reads: list[float] = []
        again = asyncio.Event()

        class Outbox:
            def due_deliveries(self, now: float, limit: int) -> list[Any]:
                reads.append(now)
                if len(reads) == 1:
                    deliverer.wake()  # stored while this read ran
                else:
                    again.set()
                return []

            def next_delivery_at(self) -> float | None:
                return None  # nothing due later: it would wait 60 s for a wake

        class IO:
            async def read(self, fn: Any, *args: Any) -> Any:
                return fn(*args)

        hooks = type("Hooks", (), {"store": Outbox(), "io": IO(), "clock": time.time})()
        deliverer = Deliverer(hooks, DeliverySettings())
        deliverer.start()
        try:
            await asyncio.wait_for(again.wait(), 10)  # (60 s when the wake was lost)
        finally:
            await deliverer.stop()

    asyncio.run(main())


def test_a_delivery_that_ends_while_the_outbox_is_read_is_not_tried_once_more() -> None:
    """The deliverer reads the outbox while a delivery is under way. When that delivery
    failed, had its try written and ended before the read came back, the read still
    showed it due with one try fewer, and it was posted again: one try more than
    ``webhook_max_attempts`` (CI saw 4 tries of 3). Here the read is held until the
    delivery has ended: it is posted once, as max_attempts=1 says."""
    from headwater_runtime.server._webhooks import Deliverer, DeliverySettings
    from headwater_runtime.store import DeliveryRow, WebhookRow

    async def main() -> None:
        outbox = {1: DeliveryRow("h", b"{}", 0.0, 0.0, id=1)}
        posts: list[int] = []
        ended, idle = asyncio.Event(), asyncio.Event()

        class Outbox:
            def due_deliveries(self, now: float, limit: int) -> list[DeliveryRow]:
                return list(outbox.values())

            def next_delivery_at(self) -> float | None:
                idle.set()
                return None

            def delivery_failed(self, id: int, attempts: int, next_at: Any, error: str) -> None:
                assert next_at is None  # max_attempts=1: given up
                del outbox[id]
                ended.set()

        class IO:
            held = False

            async def read(self, fn: Any, *args: Any) -> Any:
                seen = fn(*args)
                if deliverer._inflight and not self.held:  # read while it is under way
                    self.held = True
                    await ended.wait()  # ... and come back after it ended
                return seen

            async def write(self, fn: Any, *args: Any) -> Any:
                return fn(*args)

        def post(hook: WebhookRow, delivery: DeliveryRow) -> str:
            posts.append(delivery.attempts)
            return "HTTP 503"

        hooks = type("Hooks", (), {"store": Outbox(), "io": IO(), "clock": time.time})()
        hooks.hooks = {"h": WebhookRow("h", "http://127.0.0.1:9/")}
        deliverer = Deliverer(hooks, DeliverySettings(max_attempts=1))
        deliverer._post = post  # type: ignore[method-assign]
        deliverer.start()
        try:
            await asyncio.wait_for(idle.wait(), 10)
            assert hooks.io.held, "the read was not held: the test tests nothing"
            assert (posts, list(deliverer._inflight)) == ([0], [])
        finally:
            await deliverer.stop()

    asyncio.run(main())


def test_a_delivery_to_an_unusable_url_stored_earlier_is_a_failed_try() -> None:
    """A URL stored before it was checked (``http://bad host/``) made urllib raise
    InvalidURL, which the deliverer did not catch: its loop logged a traceback every
    second, never counted the try, and held up the other webhooks' deliveries."""
    from headwater_runtime.server._webhooks import Deliverer, DeliverySettings
    from headwater_runtime.store import DeliveryRow, WebhookRow

    deliverer = Deliverer(None, DeliverySettings())  # type: ignore[arg-type]
    try:
        for url in ("http://bad host/hook", "http://127.0.0.1:9/x\r\nX-Evil: 1"):
            error = deliverer._post(WebhookRow("h", url), DeliveryRow("h", b"{}", 0.0, 0.0))
            assert error is not None and "InvalidURL" in error, error
    finally:
        deliverer._threads.shutdown()


def test_settings_come_from_flags_then_environment_then_the_file_then_defaults(
    tmp_path: Path,
) -> None:
    config = tmp_path / "headwater.toml"
    config.write_text(
        '[server]\nport = 1111\nhost = "0.0.0.0"\nheartbeat_timeout = "30s"\n'
        'late_after = "off"\n[limits.db]\nconcurrency = 3\n'
        '[[webhooks]]\nurl = "http://x/h"\nstates = ["failed"]\nlate = true\n'
        "[webhook_delivery]\nmax_attempts = 4\n"
    )
    env = {"HEADWATER_CONFIG": str(config), "HEADWATER_PORT": "2222", "HEADWATER_DB": "env.db"}
    got = settings({"db": "flag.db", "host": None}, env)
    assert (got.port, got.db, got.host) == (2222, "flag.db", "0.0.0.0")
    assert (got.heartbeat_timeout, got.heartbeat_interval, got.late_after) == (30.0, 5.0, 0.0)
    assert got.tag_limits == (LimitRow("db", 3, 0, 0.0),)
    assert [(w.url, w.states, w.late) for w in got.webhooks] == [
        ("http://x/h", (FlowRunState.FAILED.value,), True)
    ]
    assert got.webhook_max_attempts == 4
    assert settings({}, {}).port == 50051  # the default
    config.write_text('[server]\nlease = "4s"\npayload_dir = "/file"\n')
    several = settings({}, {"HEADWATER_CONFIG": str(config), "HEADWATER_PAYLOAD_DIR": "/env"})
    assert (several.lease, several.payload_dir) == (4.0, "/env")
    bad = [
        ("[server]\nport = 70000\n", "[server] port: must be a port 0..65535"),
        ('[server]\nport = "x"\n', "[server] port: must be a port 0..65535, got 'x'"),
        (
            '[webhook_delivery]\nmax_attempts = "x"\n',
            "[webhook_delivery] max_attempts: must be a whole number >= 1, got 'x'",
        ),
        ('[server]\nlate_after = "soon"\n', "[server] late_after: expects a duration"),
        ('[limits.db]\nrate = "fast"\n', "[limits.db] rate: expects a rate"),
        ("[[webhooks]]\nflows = []\n", "takes url (required)"),
        (
            '[[webhooks]]\nurl = "http://a b/"\n',
            "[[webhooks]] #1: webhook URL 'http://a b/' must not",
        ),
        ("[webhooks]\nurl = 1\n", "webhooks must be an array of tables"),
        # A string where a list belongs was read letter by letter (flows e, t, l).
        ('[[webhooks]]\nurl = "https://h/x"\nflows = "etl"\n', "flows must be a list of"),
        ('[[webhooks]]\nurl = "https://h/x"\nstates = "FAILED"\n', "states must be a list"),
        ('[[webhooks]]\nurl = "https://h/x"\nlate = "no"\n', "late must be true or false"),
        ('[[webhooks]]\nurl = "https://h/x"\nsecret = 5\n', "secret must be a string"),
        ("[server]\nport = 47171.9\n", "[server] port: must be a port 0..65535, got 47171.9"),
        ("[extra]\n", "unknown table [extra]"),
        ("server = [", "is not valid TOML"),
    ]
    for text, fragment in bad:
        config.write_text(text)
        with pytest.raises(ConfigError) as caught:
            settings({}, {}, str(config))
        assert fragment in str(caught.value) and str(config) in str(caught.value)
    with pytest.raises(ConfigError, match="environment variable HEADWATER_PORT"):
        settings({}, {"HEADWATER_PORT": "x"})
    # A flag puts a bad variable right (it was refused all the same, a user trial).
    fixed = settings(
        {"port": 3333, "retention": 30 * 86400.0},
        {"HEADWATER_PORT": "x"} | {"HEADWATER_RETENTION": "30"},
    )
    assert (fixed.port, fixed.retention) == (3333, 30 * 86400.0)
    assert settings({"http": False}, {"HEADWATER_HTTP_PORT": "bogus"}).http is False  # --no-http
    width = limits_from_env({"HEADWATER_MAX_MAP_WIDTH": "abc"}, max_map_width=10).max_map_width
    assert width == 10  # --max-map-width 10 puts the variable right
    with pytest.raises(ConfigError, match=r"heartbeat_interval \(30s\) must be shorter than"):
        settings({"heartbeat_interval": 30.0, "heartbeat_timeout": 5.0}, {})
    with pytest.raises(ConfigError, match="cannot read the configuration file"):
        settings({}, {}, str(tmp_path / "missing.toml"))


def test_the_documented_configuration_file_is_one_the_server_takes(tmp_path: Path) -> None:
    """docs/operations.md's example file, as it is: every key it shows is one the
    server reads (a PostgreSQL server's --advertise among them)."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "operations.md").read_text()
    section = doc.split("## The configuration file", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    config = tmp_path / "headwater.toml"
    config.write_text(example)
    got = settings({}, {}, str(config))
    assert (got.advertise, got.http_port, got.lease) == ("cp1.internal:50051", 8080, 10.0)
    assert got.tls_client_ca == "/etc/headwater/ca.crt"
    assert settings({}, {"HEADWATER_ADVERTISE": "cp2:1"}, str(config)).advertise == "cp2:1"


def test_the_stop_timeout_comes_from_the_flag_environment_or_file(tmp_path: Path) -> None:
    config = tmp_path / "headwater.toml"
    config.write_text('[server]\nstop_timeout = "45s"\n')
    assert settings({}, {}).stop_timeout == 30.0  # the default
    assert settings({}, {}, str(config)).stop_timeout == 45.0
    assert settings({}, {"HEADWATER_STOP_TIMEOUT": "2m"}, str(config)).stop_timeout == 120.0
    assert settings({"stop_timeout": 5.0}, {"HEADWATER_STOP_TIMEOUT": "2m"}).stop_timeout == 5.0
    with pytest.raises(ConfigError, match="HEADWATER_STOP_TIMEOUT"):
        settings({}, {"HEADWATER_STOP_TIMEOUT": "soon"})
    ran = subprocess.run(
        [sys.executable, "-m", "headwater._cli", "server", "--stop-timeout", "soon"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 2 and "--stop-timeout" in ran.stderr, ran.stderr


def test_a_ui_url_that_is_no_web_address_is_refused_wherever_it_is_given(
    tmp_path: Path,
) -> None:
    """ui_url goes into every webhook body's link: `javascript:alert(1)` in the file,
    `ftp://a b` as the flag and `notaurl` in the environment were all taken (a user
    trial), although a bad value stops the server with one line."""
    config = tmp_path / "headwater.toml"
    config.write_text('[server]\nui_url = "javascript:alert(1)"\n')
    with pytest.raises(ConfigError, match=r"ui_url: must be an http:// or https:// URL"):
        settings({}, {}, str(config))
    with pytest.raises(ConfigError, match=r"HEADWATER_UI_URL: must be an http:// or https://"):
        settings({}, {"HEADWATER_UI_URL": "notaurl"})
    good = "https://ui.example:8443/headwater"
    assert settings({}, {"HEADWATER_UI_URL": good}).ui_url == good
    for flags, said in (
        (["--ui-url", "ftp://a b"], "--ui-url must be an http:// or https:// URL, got 'ftp://a b'"),
        (["--dask-release-after", "-3"], "must be a positive duration, got '-3' (or 0)"),
    ):
        ran = subprocess.run(
            [sys.executable, "-m", "headwater._cli", "server", *flags],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert ran.returncode == 2 and said in ran.stderr, ran.stderr


def test_the_server_log_level_comes_from_the_flag_environment_or_file(tmp_path: Path) -> None:
    config = tmp_path / "headwater.toml"
    config.write_text('[server]\nlog_level = "warning"\n')
    assert settings({}, {}).log_level == "info"  # the default
    assert settings({}, {}, str(config)).log_level == "warning"
    assert settings({}, {"HEADWATER_LOG_LEVEL": "DEBUG"}, str(config)).log_level == "debug"
    assert settings({"log_level": "error"}, {"HEADWATER_LOG_LEVEL": "debug"}).log_level == "error"
    with pytest.raises(ConfigError, match="HEADWATER_LOG_LEVEL: must be one of debug, info"):
        settings({}, {"HEADWATER_LOG_LEVEL": "loud"})
    ran = subprocess.run(
        [sys.executable, "-m", "headwater._cli", "server", "--log-level", "loud"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 2 and "--log-level: invalid choice: 'loud'" in ran.stderr
    # Records carry their time, level and logger; Headwater's from the level up,
    # other libraries' from warning up (in a process of its own: logging is global).
    script = (
        "import logging\n"
        "from headwater_runtime.server._cli import configure_logging\n"
        "configure_logging('info')\n"
        "logging.getLogger('headwater.server').info('pruned 3 finished runs')\n"
        "logging.getLogger('headwater.server').debug('not shown at info')\n"
        "logging.getLogger('aiohttp.access').info('GET / 200')\n"
        "logging.getLogger('aiohttp.access').warning('a library warning')\n"
    )
    logged = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    lines = logged.stderr.splitlines()
    assert len(lines) == 2, lines
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.fullmatch(stamp + " INFO headwater.server: pruned 3 finished runs", lines[0])
    assert re.fullmatch(stamp + " WARNING aiohttp.access: a library warning", lines[1])


def test_a_scheduled_run_is_late_with_its_reason_also_when_it_fired_during_downtime(
    db: str,
) -> None:
    """A fire whose run no worker can start is marked late (no worker); a fire missed
    while the server was down is created late on restart and says so."""
    from headwater.v1 import control_plane_pb2 as cp
    from headwater.v1 import control_plane_pb2_grpc, run_pb2

    async def runs(channel: grpc.aio.Channel) -> list[Any]:
        client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
        return list((await client.ListFlowRuns(cp.ListFlowRunsRequest())).flow_runs)

    async def first(stub: Any, running: Any) -> float:
        core = running.core
        await core.register_flow(pipeline.compile())
        schedule = run_pb2.Schedule(flow_name="pipeline", enabled=True)
        schedule.interval.FromSeconds(2)
        created = core.schedules.create(schedule)
        core.touch()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            while True:  # bounded by call()'s wait_for
                marked = [r for r in await runs(channel) if r.late]
                if marked:
                    break
                await asyncio.sleep(0.05)
            (late,) = marked
        assert late.schedule_id == created.id
        assert late.late_reason == "waiting: no connected worker offers test_run_manager.numbers"
        core.schedules.set_enabled(created.id, False)  # no more fires while it runs
        core.schedules.set_enabled(created.id, True)
        return float(core.store.get_schedule(created.id).next_run_at or 0)

    options = {"late_after": 0.3}
    next_fire = call(db, first, **options)
    # The server is down when the next fire is due, and longer than late_after after it.
    deadline = time.monotonic() + 10
    while time.time() < next_fire + 0.5:  # the fire is at most 2 s away
        assert time.monotonic() < deadline
        time.sleep(0.05)

    async def second(stub: Any, running: Any) -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            while True:
                late = [r for r in await runs(channel) if "not running" in r.late_reason]
                if late:
                    break
                await asyncio.sleep(0.05)
        assert "after its schedule's fire time (the server was not running)" in late[0].late_reason

    call(db, second, **options)


def test_a_server_that_stepped_down_waits_for_its_database_instead_of_exiting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A PostgreSQL leader whose database went down (or read-only) stepped down, then
    exited when it could not open the store again: no server was left to take the lead
    when the database came back. It now tries again, with a pause, until it can."""
    import os
    import signal
    import types

    from headwater_runtime.server import _app

    class Fake:
        def __init__(self, lost: bool) -> None:
            self.port, self.http, self.tls = 4242, None, None
            self.leading, self.lost = asyncio.Event(), asyncio.Event()
            self.leading.set()
            if lost:
                self.lost.set()
            self.lost_reason = "the lease could not be renewed for a whole period"
            self.leadership = types.SimpleNamespace(lease=None, epoch=1)
            ops = types.SimpleNamespace(metrics_server=None)
            self.core = types.SimpleNamespace(
                ops=ops, recovered=asyncio.Event(), recovery=None, stored_all=True
            )

        async def stop(self, grace: float | None = None) -> None:
            return None

    starts: list[str] = []

    async def start(settings: Any) -> Fake:
        starts.append("start")
        if len(starts) == 1:
            return Fake(lost=True)  # leads, then steps down at once
        if len(starts) in (2, 3):
            raise RuntimeError("cannot connect to the database: connection refused")
        asyncio.get_running_loop().call_soon(os.kill, os.getpid(), signal.SIGTERM)
        return Fake(lost=False)  # the database is back: it serves, until SIGTERM

    monkeypatch.setattr(_app, "start_server", start)
    monkeypatch.setattr(_app, "RESTART_PAUSE", 0.01)
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    asyncio.run(asyncio.wait_for(_app.serve_forever(ServerSettings(port=0)), 30))
    assert starts == ["start"] * 4
    # The SIGTERM gave both signals their default action (a second one exits at once)
    # and armed the stop's deadline: a process that goes on gets its handlers back
    # (this one's Ctrl-C was SIG_DFL for the rest of the test run).
    assert {sig: signal.getsignal(sig) for sig in before} == before
    err = capsys.readouterr()
    assert "standing by again" in err.err
    assert err.out.count("headwater server listening on 127.0.0.1:4242") == 2


def test_a_leader_whose_renewal_hangs_steps_down_within_its_lease() -> None:
    """A renewal waited for psycopg-pool's 30 s connection timeout: with the database
    gone, a leader with a 10 s lease believed it led for ~33 s. A renewal that does not
    answer now counts as failed once the lease would have run out."""
    import threading

    from headwater_runtime.server._leader import Leadership

    released, answered = threading.Event(), threading.Event()

    class HangingLease:
        duration = 0.4

        def renew(self) -> bool:
            released.wait(60)  # a database that does not answer until the test says so
            answered.set()
            return True

    async def kept() -> tuple[str, bool]:
        try:
            reason = await Leadership(HangingLease()).keep(lambda: False)  # type: ignore[arg-type]
            return reason, answered.is_set()
        finally:
            released.set()  # (lets the renewal's thread end)

    reason, renewal_answered = asyncio.run(asyncio.wait_for(kept(), 30))
    assert reason.startswith("the lease could not be renewed for a whole period"), reason
    assert not renewal_answered, "it stepped down while the renewal still hung"


def test_a_standby_restarted_on_its_old_address_does_not_name_itself_the_leader() -> None:
    """Killed and restarted on the same port, a server found the lease naming its own
    address and said 'standing by on X: the leader is X'."""
    import types

    from headwater_runtime.server._leader import Leadership

    leadership = Leadership(types.SimpleNamespace(address="h:1"))  # type: ignore[arg-type]
    leadership.leader, leadership.epoch = "h:1", 4
    said = leadership.refusal()
    assert "a previous server at h:1 leads until its lease runs out" in said
    assert "the leader is" not in said
    leadership.leader = "h:2"
    assert "the leader is h:2 (lease epoch 4)" in leadership.refusal()


def test_a_limit_the_configuration_changes_is_in_the_audit_log(db: str) -> None:
    """A `[limits.TAG]` of the server's configuration is set at every start; the audit
    log kept showing the last `limits set` while the file's value applied (a user
    trial). A start that changes a limit records it, by "configuration"; one that
    changes nothing adds nothing."""

    async def entries(stub: Any, running: Any) -> list[tuple[str, str, str]]:
        rows = running.core.store.audit_entries("limit")
        return [(r.actor, r.action, r.detail) for r in rows]

    three = (LimitRow("db", concurrency=3),)
    first = call(db, entries, tag_limits=three)
    assert first == [("configuration", "limit.set", "concurrency 3")]
    assert call(db, entries, tag_limits=three) == first  # the same again: nothing new
    changed = call(db, entries, tag_limits=(LimitRow("db", 2, 5, 1.0),))
    assert changed[0] == ("configuration", "limit.set", "concurrency 2, rate 5/1s")
    assert changed[1:] == first
