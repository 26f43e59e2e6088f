"""Heavy requests stay off the server's event loop, and downloads stream.

The loop's share of a large CreateFlowRun is asserted structurally (where the engine
starts, how attempts reach the dispatcher), never by timing it: how long other
clients wait meanwhile is measured by ``python -m benchmarks --only server-loop``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from e2e_helpers import BOUND

from headwater.v1 import control_plane_pb2 as cp
from headwater.v1 import (
    control_plane_pb2_grpc,
    graph_pb2,
    payload_pb2,
    payload_pb2_grpc,
    worker_pb2,
)
from headwater.wire import CHUNK_SIZE, TaskRunState
from headwater_runtime.engine import JournaledEngine
from headwater_runtime.server import PayloadServicer, StoreIO, _assignments, _gc
from headwater_runtime.server._app import start_server
from headwater_runtime.server._assignments import PendingAssignment
from headwater_runtime.server._core import ServerSettings
from headwater_runtime.server._dispatch import Dispatcher, WorkerSession
from headwater_runtime.server._gc import Collector
from headwater_runtime.server._io import to_its_end
from headwater_runtime.store import SQLiteStore

TASKS = 2_000


def _graph(n: int) -> graph_pb2.FlowGraph:
    graph = graph_pb2.FlowGraph(name="wide")
    for i in range(n):
        graph.tasks.add(id=f"t{i}", task_type="bench.noop")
    return graph


def test_a_new_run_is_started_off_the_loop_stored_started_and_handed_over_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CreateFlowRun builds and starts the run on a reader thread; its row and its
    start (every ready task run SCHEDULED) are stored together before the answer; its
    attempts are laid out for the dispatcher on that thread too, and the loop hands
    them over in one call."""
    started_on: list[threading.Thread] = []
    laid_out_on: list[threading.Thread] = []
    real_start = JournaledEngine.start
    real_lay_out = _assignments.queued_attempts

    def start(self: JournaledEngine) -> Any:
        started_on.append(threading.current_thread())
        return real_start(self)

    def lay_out(*args: Any) -> Any:
        laid_out_on.append(threading.current_thread())
        return real_lay_out(*args)

    monkeypatch.setattr(JournaledEngine, "start", start)
    monkeypatch.setattr(_assignments, "queued_attempts", lay_out)

    async def main() -> None:
        running = await start_server(ServerSettings(port=0, db=str(tmp_path / "hw.db")))
        loop_thread = threading.current_thread()
        dispatcher = running.core.dispatcher
        calls: list[tuple[str, int]] = []
        submit, submit_many = dispatcher.submit, dispatcher.submit_many
        submit_queued = dispatcher.submit_queued

        def one(pending: PendingAssignment) -> None:
            calls.append(("submit", 1))
            submit(pending)

        def many(flow_run_id: str, by_type: Any) -> None:
            calls.append(("submit_many", sum(map(len, by_type.values()))))
            submit_many(flow_run_id, by_type)

        def laid_out(queued: Any) -> None:
            calls.append(("submit_queued", len(queued.index)))
            submit_queued(queued)

        dispatcher.submit, dispatcher.submit_many = one, many  # type: ignore[method-assign]
        dispatcher.submit_queued = laid_out  # type: ignore[method-assign]
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
                version = (
                    await client.RegisterFlow(cp.RegisterFlowRequest(graph=_graph(TASKS)))
                ).version
                created = await client.CreateFlowRun(
                    cp.CreateFlowRunRequest(flow_name="wide", flow_version=version)
                )
                run_id = created.flow_run.id
                # Stored started, before the answer: no commit was needed after it.
                rows = running.store.task_runs(run_id)
                assert len(rows) == TASKS
                assert {r.state for r in rows} == {TaskRunState.SCHEDULED.value}
                assert [e.kind for e in running.store.events(run_id)] == ["run_started"]
        finally:
            await running.stop(None)
        assert len(started_on) == 1 and started_on[0] is not loop_thread
        assert started_on[0].name.startswith("headwater-store-reader")
        assert laid_out_on == started_on
        assert calls == [("submit_queued", TASKS)]
        assert dispatcher.pending_count == TASKS

    asyncio.run(asyncio.wait_for(main(), 120))


def _pending(run: str, i: int, task_type: str = "t") -> PendingAssignment:
    token = worker_pb2.FencingToken(task_run_id=f"{run}/t{i}", attempt=1)
    return PendingAssignment(run, task_type, {}, worker_pb2.Assignment(token=token))


def test_cancelling_queued_attempts_drops_them_and_leaves_no_empty_queue() -> None:
    """Cancels are grouped like submissions; a run whose last queued attempt was
    cancelled leaves no empty queue behind (the next worker to connect once made the
    dispatcher index an empty queue)."""
    lost: list[Any] = []
    dispatcher = Dispatcher(on_lost=lambda *a: lost.append(a))
    dispatcher.submit_many("r1", {"t": [_pending("r1", i) for i in range(10_000)]})
    dispatcher.submit_many("r2", {"t": [_pending("r2", 0)], "u": [_pending("r2", 1, "u")]})
    dispatcher.cancel_many("r1", {(f"r1/t{i}", 1): "stop" for i in range(10_000)})
    dispatcher.cancel("r2", "r2/t0", 1, "stop")
    assert dispatcher.pending_count == 1
    # A reconnecting worker claims a queued attempt by its token: a lookup, not a
    # search of every queue (a Hello may name 100,000 tokens), and it is not sent again.
    dispatcher.submit_many("r3", {"t": [_pending("r3", i) for i in range(3)]})
    claimed = dispatcher.take_pending(("r3/t1", 1))
    assert claimed is not None and claimed.token == ("r3/t1", 1)
    assert dispatcher.take_pending(("r3/t1", 1)) is None
    dispatcher.cancel_many("r3", {("r3/t0", 1): "stop", ("r3/t2", 1): "stop"})
    sent: list[Any] = []
    session = WorkerSession("s", "w", "w", frozenset({"t", "u"}), {}, 4, sent.append)
    dispatcher.connect(session)  # pumps
    # The one left: r2's "u" attempt.
    assert [m.assignment.token.task_run_id for m in sent] == ["r2/t1"]
    assert dispatcher.pending_count == 0 and not lost


def test_cancelling_a_whole_run_drops_its_queue_and_stops_what_workers_hold() -> None:
    """The run manager cancels a run set aside as a whole (whole_run): its queued
    attempts leave at once, the attempt a worker holds is asked to stop, other runs'
    attempts stay."""
    dispatcher = Dispatcher(on_lost=lambda *a: None)
    dispatcher.submit_many("r1", {"t": [_pending("r1", i) for i in range(10)]})
    sent: list[Any] = []
    session = WorkerSession("s", "w", "w", frozenset({"t"}), {}, 1, sent.append)
    dispatcher.connect(session)  # takes r1/t0
    dispatcher.submit_many("r2", {"t": [_pending("r2", 0)]})
    assert dispatcher.pending_count == 10
    dispatcher.cancel_many("r1", {(f"r1/t{i}", 1): "stop" for i in range(10)}, whole_run=True)
    assert dispatcher.pending_count == 1  # r2's
    assert dispatcher.queued("r1") == [] and len(dispatcher.queued("r2")) == 1
    kinds = [m.WhichOneof("message") for m in sent]
    assert kinds == ["assignment", "cancel"]
    assert sent[1].cancel.token.task_run_id == "r1/t0" and sent[1].cancel.reason == "stop"


def test_a_large_build_holds_off_full_collections_and_is_frozen_after() -> None:
    collector = Collector(large=10)
    before = gc.get_threshold()
    try:
        with collector.building(5):  # small: nothing changes
            assert gc.get_threshold() == before
        with collector.building(10):
            assert gc.get_threshold()[:2] == before[:2]
            assert gc.get_threshold()[2] > 10**6  # no full collection meanwhile
            built = [[i] for i in range(1_000)]
        assert gc.get_threshold() == before
        assert gc.get_freeze_count() >= len(built)  # out of the collector's sight
        collector.large_run_started()
        collector.large_run_started()
        collector.large_run_ended()  # another large run is live: all stays frozen
        assert gc.get_freeze_count() >= len(built) and collector.unfrozen == 0
        collector.large_run_ended()  # the last large run: nothing stays frozen
        assert gc.get_freeze_count() == 0 and collector.unfrozen == 1
        with collector.building(10):  # a large graph, frozen
            pass
        assert gc.get_freeze_count() > 0
        collector.close()  # the server stops: nothing stays frozen
        assert gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_during_a_large_build_a_young_collection_has_nothing_young_to_traverse() -> None:
    """A young collection traverses every young container: a build's fresh list of
    100,000 nodes took it 3-7 ms, with the GIL held. During a large build everything is
    frozen before each young collection; a garbage cycle dropped meanwhile is
    collected once things are unfrozen."""
    collector = Collector(large=10)
    before = gc.get_threshold()
    gc.unfreeze()  # whatever an earlier test or import left frozen
    gc.collect()

    class Cycle:
        partner: object = None

    def dropped_cycle() -> weakref.ref[Cycle]:
        a, b = Cycle(), Cycle()
        a.partner, b.partner = b, a
        return weakref.ref(a)

    try:
        with collector.building(5):  # small: the collector is left alone
            small = dropped_cycle()
            gc.collect(0)
            assert small() is None and gc.get_freeze_count() == 0
        with collector.building(10):
            growing: dict[int, list[int]] = {i: [i] for i in range(1_000)}
            cycle = dropped_cycle()
            assert gc.collect(0) == 0  # everything young was frozen first
            assert gc.get_freeze_count() >= len(growing) and cycle() is not None
        assert not any(getattr(cb, "__name__", "") == "_freeze_young" for cb in gc.callbacks)
        collector.close()  # unfrozen: the cycle is the collector's again
        assert gc.get_freeze_count() == 0
        gc.collect()
        assert cycle() is None and len(growing) == 1_000
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_a_large_commit_holds_off_full_collections_and_freezes_nothing() -> None:
    """While a large batch is committed, no full collection runs; the thresholds come
    back afterwards however commits and builds overlap."""
    collector = Collector(large=10)
    before = gc.get_threshold()
    gc.unfreeze()
    try:
        with collector.committing(5):  # small: nothing changes
            assert gc.get_threshold() == before
        with collector.committing(10):
            assert gc.get_threshold()[2] > 10**6 and gc.get_threshold()[:2] == before[:2]
            gc.collect(0)
            assert gc.get_freeze_count() == 0  # nothing frozen
            with collector.building(10):  # a build starts during the commit ...
                pass
            assert gc.get_threshold()[2] > 10**6  # ... and ends before it
        assert gc.get_threshold() == before
        building = collector.building(10)
        building.__enter__()
        with collector.committing(10):  # a commit inside a build
            pass
        assert gc.get_threshold()[2] > 10**6
        building.__exit__(None, None, None)
        assert gc.get_threshold() == before
        collector.close()
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_upkeep_collects_the_young_generations_only_when_cpython_has_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Freeing old objects keeps CPython's young count down, so a long release can
    leave the young generations uncollected for minutes: the timer loop's upkeep
    collects them when no young collection happened since its last call, and leaves
    things alone when one did. Never the oldest generation."""

    def young() -> tuple[int, int, int]:
        stats = gc.get_stats()
        return stats[0]["collections"], stats[1]["collections"], stats[2]["collections"]

    collector = Collector()
    now = [1000.0]
    monkeypatch.setattr(_gc.time, "monotonic", lambda: now[0])

    def upkeep(after: float = 0.5) -> None:
        now[0] += after
        collector.upkeep()

    enabled = gc.isenabled()
    gc.disable()  # no automatic collection in this process meanwhile: counts are exact
    try:
        upkeep()  # the first call only takes note
        start = young()
        upkeep(0.1)  # too soon after the last one: nothing
        assert young() == start
        upkeep()  # none since: one young collection
        assert young() == (start[0] + 1, start[1], start[2])
        gc.collect(0)  # one happened on its own: upkeep leaves it at that
        upkeep()
        assert young() == (start[0] + 2, start[1], start[2])
        for _ in range(20):  # every tenth of its own takes the middle generation too
            upkeep()
        after = young()
        assert after[1] == start[1] + 2 and after[2] == start[2]
        assert after[0] == start[0] + 2 + 18
    finally:
        if enabled:
            gc.enable()


class _WatchedStore(SQLiteStore):
    """Serves chunk 3 and later only once the client has received chunks 0 to 2: a
    server that read a payload whole before sending any of it would wait forever."""

    received = threading.Event()
    whole_reads = 0

    def read_payload_chunk(self, payload_id: str, index: int) -> bytes:
        if index >= 3 and not self.received.wait(60):
            raise AssertionError("chunk 3 was read before chunks 0-2 reached the client")
        return super().read_payload_chunk(payload_id, index)

    def read_payload(self, *args: Any, **kwargs: Any) -> Iterator[bytes]:
        type(self).whole_reads += 1
        return super().read_payload(*args, **kwargs)


def test_the_store_upkeep_runs_beside_the_writes_one_at_a_time_at_most_so_often() -> None:
    """The store's upkeep (SQLite: the WAL checkpoint, several ms) is queued by a write
    and runs on a thread of its own: the writes that follow are not held up by it (on
    the writer thread they were: a burst of run creations' slowest 1 % took ~3x
    longer); no other is queued while one is under way; then not again until
    ``upkeep_every`` has passed."""
    seen: list[tuple[str, str]] = []
    upkeep_started, upkeep_may_end = threading.Event(), threading.Event()

    def upkeep(beside_writes: bool) -> bool:
        assert beside_writes
        seen.append(("upkeep", threading.current_thread().name))
        upkeep_started.set()
        assert upkeep_may_end.wait(BOUND)
        return False

    def write(tag: str) -> str:
        seen.append((tag, threading.current_thread().name))
        return tag

    async def main() -> None:
        io = StoreIO(upkeep=upkeep, upkeep_every=0)
        try:
            assert await io.write(write, "first") == "first"
            assert await asyncio.to_thread(upkeep_started.wait, BOUND)
            # Under way: the next writes go on, and queue no other upkeep.
            assert await asyncio.wait_for(io.write(write, "second"), BOUND) == "second"
            assert await asyncio.wait_for(io.write(write, "third"), BOUND) == "third"
        finally:
            upkeep_may_end.set()
            io.close()
        io = StoreIO(upkeep=lambda beside: calls.append(beside) or False, upkeep_every=3600)
        try:
            for _ in range(3):
                await io.write(write, "later")
        finally:
            io.close()  # (after the upkeep under way)

    calls: list[bool] = []
    asyncio.run(main())
    writer = "headwater-store-writer_0"
    # (The first write and the upkeep it queued run at once, on two threads.)
    assert sorted(seen[:2]) == [("first", writer), ("upkeep", "headwater-store-upkeep_0")]
    assert seen[2:] == [("second", writer), ("third", writer)] + [("later", writer)] * 3
    assert calls == [True]  # the first write's; the others' too soon after it


def test_the_store_upkeep_runs_between_writes_when_the_store_asks() -> None:
    """An upkeep that returns True (SQLite: the log has not started over, as writes went
    on beside each checkpoint) has the next one run on the writer thread, after the
    write that queued it and before the next write; then beside the writes again."""
    seen: list[tuple[str, bool | None, str]] = []

    def upkeep(beside_writes: bool) -> bool:
        seen.append(("upkeep", beside_writes, threading.current_thread().name))
        # The first asks for the next between writes (counted apart from the writes:
        # the first write and the upkeep it queued run at once, in either order).
        return [entry[0] for entry in seen].count("upkeep") == 1

    def write(tag: str) -> str:
        seen.append((tag, None, threading.current_thread().name))
        return tag

    async def main() -> None:
        io = StoreIO(upkeep=upkeep, upkeep_every=0)
        try:
            for tag in ("first", "second", "third"):
                await io.write(write, tag)
                # The upkeep it queued ends (so the next write queues another).
                assert io._upkeeping is not None
                await asyncio.wait_for(asyncio.wrap_future(io._upkeeping), BOUND)
        finally:
            io.close()

    asyncio.run(main())
    writer, upkeeper = "headwater-store-writer_0", "headwater-store-upkeep_0"
    # (Each write and an upkeep it queued beside it run at once, on two threads.)
    assert [entry for entry in seen if entry[2] == writer] == [
        ("first", None, writer),
        ("second", None, writer),
        ("upkeep", False, writer),  # asked for: between the second write and the third
        ("third", None, writer),
    ]
    assert [entry for entry in seen if entry[2] != writer] == [("upkeep", True, upkeeper)] * 2


def test_store_calls_keep_their_order_skip_when_cancelled_and_stop_on_close() -> None:
    """The writer thread runs writes in the order they were asked for and hands each
    outcome (a result or the exception) back to the loop; a read whose caller was
    cancelled before it began never runs (a client gone before its query was reached);
    one under way runs to its end; after ``close`` nothing more is taken."""
    ran: list[str] = []
    lanes: list[Any] = []
    reader_busy, reader_may_go = threading.Event(), threading.Event()

    def write(tag: str) -> str:
        ran.append(tag)
        if tag == "bad":
            raise ValueError("no room")
        return tag.upper()

    def hold() -> str:
        ran.append("hold")
        reader_busy.set()
        assert reader_may_go.wait(BOUND)
        return "held"

    async def main() -> None:
        io = StoreIO(readers=1)
        lanes.extend([io._writer, io._readers])
        try:
            writes = [asyncio.ensure_future(io.write(write, t)) for t in ("a", "bad", "c")]
            outcomes = await asyncio.gather(*writes, return_exceptions=True)
            assert outcomes[0] == "A" and outcomes[2] == "C"
            assert isinstance(outcomes[1], ValueError) and str(outcomes[1]) == "no room"
            held = asyncio.ensure_future(io.read(hold))
            assert await asyncio.to_thread(reader_busy.wait, BOUND)
            skipped = asyncio.ensure_future(io.read(write, "never"))
            await asyncio.sleep(0)  # (queued behind the read under way)
            skipped.cancel()
            held.cancel()  # under way: it still runs to its end
            reader_may_go.set()
            assert await io.read(write, "after") == "AFTER"
        finally:
            io.close()
        with pytest.raises(RuntimeError, match="after shutdown"):
            await io.write(write, "late")

    asyncio.run(main())
    assert ran == ["a", "bad", "c", "hold", "after"]
    threads = [thread for lane in lanes for thread in lane._threads]
    assert [t.name for t in threads] == ["headwater-store-writer_0", "headwater-store-reader_0"]
    assert not any(thread.is_alive() for thread in threads)  # close joined them


def test_a_download_streams_one_stored_chunk_at_a_time(tmp_path: Path) -> None:
    data = bytes(range(256)) * (8 * CHUNK_SIZE // 256)  # 8 stored chunks

    async def main() -> None:
        store = _WatchedStore(tmp_path / "hw.db")
        io = StoreIO()
        server = grpc.aio.server()
        payload_pb2_grpc.add_PayloadServiceServicer_to_server(PayloadServicer(store, io=io), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            meta = store.put_payload(iter([data]), {"encoding": "pickle"}, len(data))
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = payload_pb2_grpc.PayloadServiceStub(channel)
                parts = []
                request = payload_pb2.DownloadPayloadRequest(payload_id=meta.id)
                async for part in stub.DownloadPayload(request):
                    parts.append(part.chunk)
                    if len(parts) == 3:
                        store.received.set()
            assert b"".join(parts) == data and len(parts) == 8
            assert _WatchedStore.whole_reads == 0
        finally:
            await server.stop(None)
            io.close()
            store.close()

    asyncio.run(asyncio.wait_for(main(), 120))


def test_a_result_with_many_elements_is_applied_off_the_loop_and_acked_once_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mapped-over result of 12,000 elements makes 12,000 child task runs: that is
    done on a reader thread with the run set aside (it once stopped every other call
    for seconds), their attempts laid out for the dispatcher there too, the run counts
    as large from then on (retired off the loop when it ends), and the worker's Ack
    comes only once the children are stored."""
    from test_limits import _report_hostile_results
    from test_run_manager import value_of
    from test_server_protocol import proto_pipeline

    from headwater_runtime.server._runs import RunManager

    applied_on: list[threading.Thread] = []
    real = RunManager.handle_aside

    def handle_aside(self: RunManager, *args: Any) -> Any:
        applied_on.append(threading.current_thread())
        return real(self, *args)

    monkeypatch.setattr(RunManager, "handle_aside", handle_aside)
    laid_out: list[tuple[threading.Thread, int]] = []  # (where, how many attempts)
    real_lay_out = _assignments.queued_attempts

    def lay_out(flow_run_id: str, by_type: dict[str, list[Any]]) -> Any:
        laid_out.append((threading.current_thread(), sum(map(len, by_type.values()))))
        return real_lay_out(flow_run_id, by_type)

    monkeypatch.setattr(_assignments, "queued_attempts", lay_out)
    width = 12_000

    async def main() -> None:
        settings = ServerSettings(port=0, db=str(tmp_path / "hw.db"))
        running = await start_server(settings)
        loop_thread = threading.current_thread()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
                await client.RegisterFlow(cp.RegisterFlowRequest(graph=proto_pipeline.compile()))
                created = await client.CreateFlowRun(
                    cp.CreateFlowRunRequest(flow_name="proto_pipeline")
                )
                run_id = created.flow_run.id
                (ack,) = await _report_hostile_results(
                    channel, [value_of(list(range(width)), split=True)]
                )
                assert ack.accepted, ack.reason
                # The Ack follows the commit: the children are stored, ready.
                rows = running.store.task_runs(run_id)
                children = [r for r in rows if r.key.startswith("scale[")]
                assert len(children) == width
                assert {r.state for r in children} == {TaskRunState.SCHEDULED.value}
                assert running.core.runs.runs[run_id].large
        finally:
            await running.stop(None)
        assert len(applied_on) == 1 and applied_on[0] is not loop_thread
        assert applied_on[0].name.startswith("headwater-store-reader")
        # The children's attempts were laid out for the dispatcher there too.
        assert (applied_on[0], width) in laid_out

    asyncio.run(asyncio.wait_for(main(), 120))


def test_a_reduce_over_a_wide_map_is_built_off_the_loop_and_the_run_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a real worker: a result wide enough (here the threshold is lowered to 3)
    is applied aside, and the reduce over its mapped children gets its Assignment
    built on a reader thread (with its Dask-held inputs looked for there), then
    submitted; the run ends with the right result."""
    from test_server_protocol import proto_pipeline

    from headwater._worker import Worker
    from headwater.wire import FlowRunState, decode_value
    from headwater_runtime.server import _wide

    built_on: list[tuple[str, threading.Thread]] = []
    real = _wide.prebuild

    def prebuild(pending: PendingAssignment) -> None:
        built_on.append((pending.task_type, threading.current_thread()))
        real(pending)

    monkeypatch.setattr(_wide, "prebuild", prebuild)

    async def main() -> None:
        running = await start_server(ServerSettings(port=0, db=str(tmp_path / "hw.db")))
        running.core.runs.collector.large = 3
        loop_thread = threading.current_thread()
        worker = Worker(f"127.0.0.1:{running.port}", ["test_run_manager"], slots=2)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
                await client.RegisterFlow(cp.RegisterFlowRequest(graph=proto_pipeline.compile()))
                created = await client.CreateFlowRun(
                    cp.CreateFlowRunRequest(flow_name="proto_pipeline")
                )
                request = cp.GetFlowRunRequest(id=created.flow_run.id)
                while True:
                    got = (await client.GetFlowRun(request)).flow_run
                    if got.state in (FlowRunState.SUCCESS.value, FlowRunState.FAILED.value):
                        break
                    await asyncio.sleep(0.05)
                assert got.state == FlowRunState.SUCCESS.value, got.message
                assert decode_value(got.result) == {"scaled": [0, 10, 20], "total": 30}
        finally:
            worker.stop()
            await asyncio.to_thread(thread.join, 30)
            await running.stop(None)
        assert [t for t, _ in built_on] == ["test_run_manager.total"]
        assert built_on[0][1] is not loop_thread

    asyncio.run(asyncio.wait_for(main(), 120))


def test_work_carried_past_its_callers_cancel_logs_a_failure_but_not_a_refusal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """to_its_end carries work on when its caller goes away; if the work then fails,
    nobody is waiting: the server logs it, as a WARNING, unless the failure is the
    request's own fault (a refusal: a flow that is not registered...), logged at DEBUG:
    a client that went away before its run creation was refused left a warning."""

    async def work(release: asyncio.Event, error: BaseException) -> None:
        await release.wait()
        raise error

    async def carried(error: BaseException) -> None:
        release = asyncio.Event()
        caller = asyncio.create_task(
            to_its_end(work(release, error), "storing a thing", (LookupError,))
        )
        await asyncio.sleep(0)  # the caller waits on its work
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        release.set()
        for _ in range(5):  # the carried work ends, and its done callback runs
            await asyncio.sleep(0)

    caplog.set_level(logging.DEBUG, logger="headwater.server")
    asyncio.run(carried(LookupError("no flow 'x'")))
    asyncio.run(carried(OSError("disk full")))
    logged = [
        (r.levelno, r.getMessage()) for r in caplog.records if "storing a thing" in r.getMessage()
    ]
    assert logged == [
        (logging.DEBUG, "storing a thing (its caller went away) failed: no flow 'x'"),
        (logging.WARNING, "storing a thing (its caller went away) failed: disk full"),
    ]
