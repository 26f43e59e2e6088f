"""Attempts handed to a worker before a restart wait for that worker: only it keeps
them, and when it comes back without them they are sent again at once, with no loss
counted (server/_orphans.py). A server that itself did not run for longer than the
heartbeat timeout keeps its workers (``ServerCore._caught_up``)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import grpc
from e2e_helpers import Cluster, poll, start_server
from test_durability import (
    BOUND,
    HOLDER_W,
    SlowReplayStore,
    StreamWorker,
    _held_at_restart,
    create,
    finished,
    replaying,
    run_state,
    serve_all,
    served,
)
from test_run_manager import value_of
from test_server_protocol import TOKEN

from headwater.v1 import worker_pb2
from headwater.wire import FlowRunState, decode_value
from headwater_runtime.server._orphans import Orphan


async def _finish_with(worker: StreamWorker, channel: grpc.aio.Channel, run_id: str) -> None:
    done = asyncio.Event()
    serving = asyncio.create_task(serve_all(worker, done))
    assert await finished(channel, run_id) == FlowRunState.SUCCESS.value
    done.set()
    await serving


async def _ran_once(channel: grpc.aio.Channel, run_id: str, only: str = "") -> None:
    """The run's total is right, and each task run (or ``only`` that one) ran once."""
    got = await run_state(channel, run_id)
    assert decode_value(got.flow_run.result)["total"] == 30
    # No loss counted ("scale" is the map itself, never run).
    ran = {t.id: t.attempts for t in got.task_runs if t.name != "scale"}
    assert ({ran[only]} if only else set(ran.values())) == {1}, ran


def _stored_run(tmp_path: Path) -> tuple[SlowReplayStore, str, worker_pb2.Assignment]:
    """``_held_at_restart``, replayed at once: the store, the run's id, the attempt."""
    store, row, held = _held_at_restart(tmp_path)
    store.released.set()
    return store, row.id, held


async def _holder_finishes(
    channel: grpc.aio.Channel, held: worker_pb2.Assignment, run_id: str, only: str = ""
) -> None:
    """Worker "w" reconnects naming ``held``, keeps it, reports it; the run succeeds
    with each task run (or ``only`` that one) once."""
    worker = StreamWorker(channel, "w", slots=4, running=[held.token])
    kept = (await worker.next("welcome")).keep_running
    assert [t.task_run_id for t in kept] == [held.token.task_run_id]
    worker.send(result=worker.result(held))
    assert (await worker.next("ack")).accepted
    await _finish_with(worker, channel, run_id)
    await _ran_once(channel, run_id, only)
    await worker.close()


def test_only_the_worker_an_attempt_was_handed_to_keeps_it_after_a_restart(
    tmp_path: Path,
) -> None:
    """Another worker of the same task types naming the attempt first does not get it
    (a user trial: it did, its forged result became the run's, and the worker that
    held it was told to drop it); the worker it was handed to then keeps it."""
    store, run_id, held = _stored_run(tmp_path)

    async def main() -> None:
        async with (
            served(store) as running,
            grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
        ):
            await asyncio.wait_for(running.core.recovered.wait(), BOUND)
            intruder = StreamWorker(channel, "intruder", slots=4, running=[held.token])
            assert list((await intruder.next("welcome")).keep_running) == []
            forged = worker_pb2.TaskResult(token=held.token, result=value_of(1000))
            intruder.send(result=forged)
            assert not (await intruder.next("ack")).accepted
            await intruder.close()

            # The total is 30, not the forged value; the kept attempt ran once (the
            # intruder left with others: they ran again).
            await _holder_finishes(channel, held, run_id, only=held.token.task_run_id)

    asyncio.run(main())


def test_an_attempt_whose_worker_comes_back_without_it_is_sent_again_at_once(
    tmp_path: Path,
) -> None:
    """The worker it was handed to reconnects without naming it (the server stopped
    before the assignment left): it is sent again at once, as the same attempt, not
    counted lost (it waited out the heartbeat window, an hour here, then counted as a
    loss)."""
    store, run_id, held = _stored_run(tmp_path)

    async def main() -> None:
        async with (
            served(store) as running,
            grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
        ):
            await asyncio.wait_for(running.core.recovered.wait(), BOUND)
            assert (held.token.task_run_id, held.token.attempt) in running.core._orphans
            worker = StreamWorker(channel, "w", slots=4)
            assert list((await worker.next("welcome")).keep_running) == []
            sent = set()
            for _ in range(3):  # the one it had been handed, and the two never delivered
                assignment = await worker.next("assignment")
                sent.add((assignment.token.task_run_id, assignment.token.attempt))
                worker.send(result=worker.result(assignment))
            assert (held.token.task_run_id, 1) in sent
            assert not running.core._orphans
            await _finish_with(worker, channel, run_id)
            await _ran_once(channel, run_id)
            await worker.close()

    asyncio.run(main())


def test_a_worker_back_during_the_replay_without_its_attempt_gets_it_again_when_live(
    tmp_path: Path,
) -> None:
    """The same, with the worker reconnecting while the run is still replayed: once
    the run is live the attempt is sent again at once."""
    store, row, _ = _held_at_restart(tmp_path)

    async def main() -> None:
        async with replaying(store) as (running, channel):
            worker = StreamWorker(channel, "w", slots=4)
            assert list((await worker.next("welcome")).keep_running) == []
            store.released.set()
            await asyncio.wait_for(running.core.recovered.wait(), BOUND)
            assert not running.core._orphans
            await _finish_with(worker, channel, row.id)
            await _ran_once(channel, row.id)
            await worker.close()

    asyncio.run(main())


def test_a_claim_during_the_replay_of_an_attempt_handed_to_another_worker_is_taken_back(
    tmp_path: Path,
) -> None:
    """A worker of the same task types names, while the run is replayed, an attempt
    that was handed to another: once the run is live it is told to cancel it, and the
    worker it was handed to keeps it."""
    store, row, held = _held_at_restart(tmp_path)

    async def main() -> None:
        async with replaying(store) as (running, channel):
            intruder = StreamWorker(channel, "intruder", slots=1, running=[held.token])
            kept = (await intruder.next("welcome")).keep_running
            assert [t.task_run_id for t in kept] == [held.token.task_run_id]  # (unchecked yet)
            store.released.set()
            await asyncio.wait_for(running.core.recovered.wait(), BOUND)
            assert (await intruder.next("cancel")).token.task_run_id == held.token.task_run_id
            # (It may have been given another attempt meanwhile, run again once it left.)
            await intruder.close()
            await _holder_finishes(channel, held, row.id, only=held.token.task_run_id)

    asyncio.run(main())


def test_time_the_server_did_not_run_does_not_count_against_its_workers(
    tmp_path: Path,
) -> None:
    """A turn of the timer loop that comes long after the last one (the server was
    stopped or starved) moves the workers' last contact and the orphans' deadlines
    forward by the time lost, so no heartbeat window ends for it."""
    store, _, held = _stored_run(tmp_path)

    async def main() -> None:
        async with served(store, heartbeat_timeout=5.0, heartbeat_interval=0.5) as running:
            core = running.core
            await asyncio.wait_for(core.recovered.wait(), BOUND)
            token = (held.token.task_run_id, held.token.attempt)
            orphan = core._orphans.get(token)
            assert isinstance(orphan, Orphan) and orphan.holder == HOLDER_W
            deadline = orphan.deadline
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                worker = StreamWorker(channel, "other", slots=1)
                await worker.next("welcome")
                (session,) = core.dispatcher.sessions.values()
                seen = session.last_seen
                core._ticked -= 30.0  # as if the server had been stopped for 30 s
                core._caught_up()
                assert session.last_seen > seen  # (by 30 s at most: not in the future)
                assert session.last_seen <= core.clock.now()
                assert orphan.deadline >= deadline + 29.0
                core._caught_up()  # on time: nothing moves
                assert orphan.deadline < deadline + 31.0
                await worker.close()

    asyncio.run(main())


def test_a_server_paused_past_the_heartbeat_timeout_keeps_its_workers(tmp_path: Path) -> None:
    """A real server stopped (SIGSTOP) for twice its heartbeat timeout while a worker
    runs a task and keeps sending heartbeats: when it goes on, it reads them and keeps
    the worker, whose result is taken (the server dropped it at once, and the task
    ran again; with the timeout a few times over, the run FAILED with WorkerLost)."""
    env = {**os.environ, "HEADWATER_TOKEN": TOKEN}
    procs = Cluster(env)
    try:
        server, address = start_server(
            procs,
            tmp_path / "hw.db",
            0,
            "--heartbeat-timeout",
            "2s",
            "--heartbeat-interval",
            "0.5s",
        )

        async def main() -> None:
            async with grpc.aio.insecure_channel(address) as channel:
                worker = StreamWorker(channel, "w", slots=1)
                await worker.next("welcome")
                run_id = await create(channel, n=2)
                first = await worker.next("assignment")

                async def beat() -> None:
                    while True:
                        worker.send(heartbeat=worker_pb2.Heartbeat(running=[first.token]))
                        await asyncio.sleep(0.25)

                beating = asyncio.create_task(beat())
                server.popen.send_signal(signal.SIGSTOP)
                stopped = time.monotonic()
                await asyncio.sleep(4.0)  # twice the heartbeat timeout
                server.popen.send_signal(signal.SIGCONT)
                assert time.monotonic() - stopped >= 4.0
                worker.send(result=worker.result(first))
                ack = await worker.next("ack")
                assert ack.accepted, ack.reason
                beating.cancel()
                await _finish_with(worker, channel, run_id)
                got = await run_state(channel, run_id)
                assert {t.attempts for t in got.task_runs if t.name != "scale"} == {1}
                await worker.close()

        asyncio.run(asyncio.wait_for(main(), 120))
        # Logged by the server on its own schedule, and read by a thread: waited for.
        poll(
            lambda: any("did not run for" in line for line in server.lines + server.other),
            "the server to log its stall",
        )
    finally:
        procs.stop()


def test_orphans_expire_in_deadline_order_a_bounded_number_at_a_time() -> None:
    """The timer loop asks for the next deadline on every turn, and counts lost the
    orphans past theirs: a scan of every orphan each turn (tens of thousands after a
    restart with many attempts held) and all of them lost in one turn held the loop.
    Now a heap (orphans claimed or postponed meanwhile are skipped), at most
    ``at_most`` a call."""
    from headwater_runtime.server._orphans import Orphans

    orphans = Orphans()
    for i in range(6):
        orphans.add((f"r/t{i}", 1), Orphan("r", 100.0 + i, "w"))
    assert orphans.next_deadline() == 100.0
    orphans.pop(("r/t0", 1))  # claimed by its worker
    assert orphans.next_deadline() == 101.0
    assert orphans.expired(50.0, 10) == []
    first = orphans.expired(104.0, 2)
    assert [token for token, _ in first] == [("r/t1", 1), ("r/t2", 1)]
    assert orphans.next_deadline() == 103.0  # still due: the next turn comes at once
    orphans.postpone(10.0)  # the server itself did not run for 10 s
    assert orphans.next_deadline() == 113.0 and orphans.expired(104.0, 10) == []
    rest = orphans.expired(200.0, 10)
    assert [token for token, _ in rest] == [("r/t3", 1), ("r/t4", 1), ("r/t5", 1)]
    assert len(orphans) == 0 and orphans.next_deadline() is None
