"""Attempts a worker claims (``Hello.running``) while a restarted server still
replays their run are checked once the run is live: a worker that could not have
been given one (another task type) does not keep it, its reports on it are refused,
and its going away costs the task no retry (server/_claims.py)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import grpc
from test_durability import (
    BOUND,
    FUNCTIONS,
    SlowReplayStore,
    StreamWorker,
    _delivered_then_restarting,
    _held_at_restart,
    _until,
    finished,
    replaying,
    run_state,
    serve_all,
)
from test_run_manager import Clock, FakeDispatch, value_of

from headwater import flow, task
from headwater.v1 import payload_pb2, payload_pb2_grpc, worker_pb2
from headwater.wire import FlowRunState, decode_value
from headwater_runtime.server import RunManager, new_credential


def _other_types(task_type: str) -> list[str]:
    return [t for t in FUNCTIONS if t != task_type]


async def _finish_with(worker: StreamWorker, channel: object, run_id: str) -> None:
    done = asyncio.Event()
    serving = asyncio.create_task(serve_all(worker, done))
    assert await finished(channel, run_id) == FlowRunState.SUCCESS.value  # type: ignore[arg-type]
    done.set()
    await serving


def test_a_claim_made_during_a_replay_by_a_worker_of_another_task_type_is_taken_back(
    tmp_path: Path,
) -> None:
    """A worker without the task's type names an attempt that another worker held at
    the crash, while its run is replayed, and reports a forged result for it. Once
    the run is live it is told to cancel the attempt, its result is refused, and the
    worker that held it reconnects, keeps it and its result counts (the forged one
    became the run's result before)."""
    store, row, held = _held_at_restart(tmp_path)

    async def main() -> None:
        async with replaying(store) as (running, channel):
            intruder = StreamWorker(
                channel, "intruder", slots=1, running=[held.token],
                capabilities=_other_types(held.task_type),
            )  # fmt: skip
            welcome = await intruder.next("welcome")
            assert [t.task_run_id for t in welcome.keep_running] == [held.token.task_run_id]
            forged = worker_pb2.TaskResult(token=held.token, result=value_of(1000))
            waiting = running.core.runs._aside[row.id]
            before = len(waiting)
            intruder.send(result=forged)

            def report_waits() -> bool:  # for the replay, as every report on the run
                return len(waiting) > before

            await _until(report_waits, "the forged result to wait for the replay")
            store.released.set()
            await asyncio.wait_for(running.core.recovered.wait(), BOUND)

            cancel = await intruder.next("cancel")
            assert cancel.token.task_run_id == held.token.task_run_id
            assert "not this worker's to keep after the restart" in cancel.reason
            ack = await intruder.next("ack")
            assert not ack.accepted and "taken back" in ack.reason
            assert running.core.dispatcher.owner((held.token.task_run_id, 1)) is None

            worker = StreamWorker(channel, "w", slots=4, running=[held.token])
            kept = (await worker.next("welcome")).keep_running
            assert [t.task_run_id for t in kept] == [held.token.task_run_id]
            worker.send(result=worker.result(held))
            assert (await worker.next("ack")).accepted
            await _finish_with(worker, channel, row.id)
            got = await run_state(channel, row.id)
            assert decode_value(got.flow_run.result)["total"] == 30  # not the forged value
            # Each task ran once ("scale" is the map itself, never run).
            assert {t.attempts for t in got.task_runs if t.name != "scale"} == {1}
            await worker.close()
            await intruder.close()

    asyncio.run(main())


def test_a_worker_that_claims_others_attempts_during_a_replay_and_leaves_costs_no_retry(
    tmp_path: Path,
) -> None:
    """The same claim, and the claiming worker goes away before the run is live: the
    attempt is not counted lost (its task keeps its retries and is not sent again);
    it waits for the worker that held it, which keeps it when it reconnects."""
    store, row, held = _held_at_restart(tmp_path)

    async def main() -> None:
        async with replaying(store) as (running, channel):
            intruder = StreamWorker(
                channel, "intruder", slots=1, running=[held.token],
                capabilities=_other_types(held.task_type),
            )  # fmt: skip
            welcome = await intruder.next("welcome")
            assert [t.task_run_id for t in welcome.keep_running] == [held.token.task_run_id]
            await intruder.close()  # before its run is live
            sessions = running.core.dispatcher.sessions
            await _until(lambda: len(sessions) == 0, "the intruder's session to end")
            store.released.set()
            await asyncio.wait_for(running.core.recovered.wait(), BOUND)
            token = (held.token.task_run_id, held.token.attempt)
            assert token in running.core._orphans  # waits for the worker that held it

            worker = StreamWorker(channel, "w", slots=4, running=[held.token])
            kept = (await worker.next("welcome")).keep_running
            assert [t.task_run_id for t in kept] == [held.token.task_run_id]
            worker.send(result=worker.result(held))
            assert (await worker.next("ack")).accepted
            await _finish_with(worker, channel, row.id)
            got = await run_state(channel, row.id)
            # Each task ran once ("scale" is the map itself, never run).
            assert {t.attempts for t in got.task_runs if t.name != "scale"} == {1}
            assert decode_value(got.flow_run.result)["total"] == 30
            await worker.close()

    asyncio.run(main())


@task
def size_of(data: bytes) -> int:
    return len(data)


FUNCTIONS[size_of.task_type] = size_of.fn


@flow
def measure(blob: bytes) -> int:
    return size_of(blob)


def test_a_worker_only_credential_that_keeps_an_attempt_during_a_replay_may_read_its_inputs(
    tmp_path: Path,
) -> None:
    """A worker-only credential reads only its held attempts' inputs; the inputs of an
    attempt it keeps while its run is replayed are known once the run is live: from
    then on it may download them (as it may those of an attempt kept after the
    replay), and not before."""
    store = SlowReplayStore(tmp_path / "hw.db")
    store.released.set()
    blob = b"b" * 5000
    digest = hashlib.sha256(blob).hexdigest()
    meta = store.put_payload(iter([blob]), {"encoding": "bytes"}, len(blob), digest)
    ref = payload_pb2.PayloadRef(
        payload_id=meta.id, size_bytes=len(blob), metadata={"encoding": "bytes"}, sha256=digest
    )
    credential, secret = new_credential("pool", "worker", created_by="test", now=time.time())
    store.add_credential(credential)
    dispatch = FakeDispatch()
    manager = RunManager(store, dispatch, Clock())
    manager.register_flow(measure.compile())
    row, _ = manager.create_run(measure.name, "", {"blob": payload_pb2.Value(ref=ref)})
    manager.flush()
    (held,) = (p.assignment for p in dispatch.submitted)
    _delivered_then_restarting(store, manager, row, held, holder="pool/w")
    auth = (("authorization", f"Bearer {secret}"),)

    async def download() -> grpc.StatusCode:
        stub = payload_pb2_grpc.PayloadServiceStub(channel)
        request = payload_pb2.DownloadPayloadRequest(payload_id=meta.id)
        try:
            async for _ in stub.DownloadPayload(request, metadata=auth, timeout=BOUND):
                pass
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    async def main() -> None:
        nonlocal channel
        async with replaying(store) as (running, channel):
            worker = StreamWorker(channel, "w", slots=1, running=[held.token], auth=auth)
            kept = (await worker.next("welcome")).keep_running
            assert [t.task_run_id for t in kept] == [held.token.task_run_id]
            assert await download() == grpc.StatusCode.PERMISSION_DENIED  # not known yet
            store.released.set()
            await asyncio.wait_for(running.core.recovered.wait(), BOUND)
            assert await download() == grpc.StatusCode.OK
            worker.send(result=worker_pb2.TaskResult(token=held.token, result=value_of(len(blob))))
            assert (await worker.next("ack")).accepted
            assert await finished(channel, row.id) == FlowRunState.SUCCESS.value
            await worker.close()

    channel: grpc.aio.Channel
    asyncio.run(main())
