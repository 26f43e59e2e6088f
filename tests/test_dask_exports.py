"""The server's bookkeeping of values held by Dask bridge workers (server/_exports.py):
who holds what, holding assignments until the owner exported their inputs, reusing an
export, and failing attempts whose input is lost."""

from __future__ import annotations

import asyncio
from typing import Any

from headwater.v1 import payload_pb2, worker_pb2
from headwater.wire import FailureInfo
from headwater_runtime.server._dispatch import WorkerSession
from headwater_runtime.server._exports import DaskExports
from headwater_runtime.server._runs import PendingAssignment


def session(
    name: str, worker_id: str = ""
) -> tuple[WorkerSession, list[worker_pb2.ConnectResponse]]:
    sent: list[worker_pb2.ConnectResponse] = []
    s = WorkerSession(name, worker_id or name, name, frozenset({"t"}), {}, 4, sent.append)
    return s, sent


def dask_ref(payload_id: str) -> payload_pb2.Value:
    return payload_pb2.Value(
        ref=payload_pb2.PayloadRef(payload_id=payload_id, location="dask", dask_key="k")
    )


def pending(task_run_id: str, *values: payload_pb2.Value) -> PendingAssignment:
    assignment = worker_pb2.Assignment(
        token=worker_pb2.FencingToken(task_run_id=task_run_id, attempt=1), task_type="t"
    )
    for i, value in enumerate(values):
        assignment.inputs[f"a{i}"].CopyFrom(worker_pb2.InputValue(value=value))
    return PendingAssignment("run", "t", {}, assignment)


class Harness:
    def __init__(self) -> None:
        self.sent: list[tuple[WorkerSession, PendingAssignment]] = []
        self.failed: list[tuple[PendingAssignment, FailureInfo]] = []
        self.exports = DaskExports(
            send=lambda s, p: self.sent.append((s, p)),
            fail=lambda p, f: self.failed.append((p, f)),
        )


INLINE = payload_pb2.Value(
    inline=payload_pb2.Payload(data=b"[1, 2]", metadata={"encoding": "json"})
)


def exported(payload_id: str, value: Any = INLINE) -> worker_pb2.ValueExported:
    return worker_pb2.ValueExported(payload_id=payload_id, value=value)


def test_the_owner_gets_its_own_ref_and_others_wait_for_one_export() -> None:
    h = Harness()
    bridge, to_bridge = session("bridge")
    plain, _ = session("plain")
    result = dask_ref("p1")
    result.items.append(dask_ref("p1-0"))
    h.exports.record(bridge, result)
    assert h.exports.prepare(bridge, pending("r/a", dask_ref("p1"))) is True
    first, second = pending("r/b", dask_ref("p1")), pending("r/c", dask_ref("p1"))
    assert h.exports.prepare(plain, first) is False
    assert h.exports.prepare(plain, second) is False
    asks = [m.export_value.payload_id for m in to_bridge if m.HasField("export_value")]
    assert asks == ["p1"], "asked once for both consumers"
    h.exports.on_exported(bridge, exported("p1"))
    assert [p for _, p in h.sent] == [first, second]
    for _, p in h.sent:
        assert p.assignment.inputs["a0"].value == INLINE
    # A later consumer reuses the export without asking again.
    later = pending("r/d", dask_ref("p1"))
    assert h.exports.prepare(plain, later) is True
    assert later.assignment.inputs["a0"].value == INLINE
    assert len(to_bridge) == 1
    assert h.failed == []


def test_an_input_whose_owner_is_gone_fails_the_attempt() -> None:
    h = Harness()
    bridge, _ = session("bridge")
    plain, _ = session("plain")
    h.exports.record(bridge, dask_ref("p1"))
    waiting = pending("r/b", dask_ref("p1"))
    assert h.exports.prepare(plain, waiting) is False
    h.exports.forget(bridge)  # the bridge disconnected before answering
    ((failed, failure),) = h.failed
    assert failed is waiting
    assert failure.type == "headwater.ValueUnavailable" and not failure.retryable
    assert "'bridge'" in failure.message and "not implemented" in failure.message
    later = pending("r/c", dask_ref("p1"))
    assert h.exports.prepare(plain, later) is False
    assert h.failed[-1][0] is later
    assert h.sent == []


def test_a_bridge_that_reconnects_still_serves_its_values() -> None:
    h = Harness()
    first, _ = session("bridge-1", worker_id="bridge")
    plain, _ = session("plain")
    h.exports.connected(first)
    h.exports.record(first, dask_ref("p1"))
    h.exports.forget(first)  # the stream broke
    again, to_again = session("bridge-2", worker_id="bridge")
    h.exports.connected(again)  # the same worker, a new session
    assert h.exports.prepare(again, pending("r/a", dask_ref("p1"))) is True
    waiting = pending("r/b", dask_ref("p1"))
    assert h.exports.prepare(plain, waiting) is False
    assert [m.export_value.payload_id for m in to_again] == ["p1"]
    h.exports.on_exported(again, exported("p1"))
    assert [p for _, p in h.sent] == [waiting]
    assert h.failed == []


def test_an_export_error_fails_the_waiting_attempts() -> None:
    h = Harness()
    bridge, _ = session("bridge")
    plain, _ = session("plain")
    h.exports.record(bridge, dask_ref("p1"))
    waiting = pending("r/b", dask_ref("p1"), dask_ref("p1"))
    assert h.exports.prepare(plain, waiting) is False
    error = worker_pb2.ValueExported(payload_id="p1")
    error.error.message = "cannot pickle the value"
    h.exports.on_exported(bridge, error)
    ((failed, failure),) = h.failed
    assert failed is waiting and "cannot pickle the value" in failure.message
    # An answer from a worker that does not own the value is ignored.
    other = pending("r/c", dask_ref("p1"))
    h.exports.prepare(plain, other)
    h.exports.on_exported(plain, exported("p1"))
    assert h.sent == []


def test_a_result_a_client_reads_is_exported_then_substituted() -> None:
    async def scenario() -> payload_pb2.Value:
        h = Harness()
        bridge, to_bridge = session("bridge")
        h.exports.record(bridge, dask_ref("p1"))
        wanted = payload_pb2.Value(inline=payload_pb2.Payload(metadata={"encoding": "x"}))
        wanted.items.extend([dask_ref("p1"), dask_ref("gone")])
        reading = asyncio.ensure_future(h.exports.readable(wanted))
        await asyncio.sleep(0)  # let it ask the owner
        assert [m.export_value.payload_id for m in to_bridge] == ["p1"]
        assert not reading.done()
        h.exports.on_exported(bridge, exported("p1"))
        await asyncio.wait_for(reading, 5)
        return wanted

    value = asyncio.run(scenario())
    assert value.items[0] == INLINE
    # Nobody holds "gone": it stays a Dask ref (the client says it cannot read it).
    assert value.items[1].ref.payload_id == "gone"


def test_exports_asked_on_a_stream_that_was_replaced_are_asked_again() -> None:
    h = Harness()
    first, to_first = session("bridge-1", worker_id="bridge")
    plain, _ = session("plain")
    h.exports.connected(first)
    h.exports.record(first, dask_ref("p1"))
    waiting = pending("r/b", dask_ref("p1"))
    assert h.exports.prepare(plain, waiting) is False
    assert len(to_first) == 1
    again, to_again = session("bridge-2", worker_id="bridge")
    h.exports.connected(again)  # before the old stream's end was noticed
    h.exports.forget(first)  # a no-op now: the worker is connected again
    assert [m.export_value.payload_id for m in to_again] == ["p1"]
    h.exports.on_exported(again, exported("p1"))
    assert [p for _, p in h.sent] == [waiting] and h.failed == []
