"""The server's bookkeeping of values held by Dask bridge workers (server/_exports.py):
who holds what, holding assignments until the owner exported their inputs, reusing an
export, and failing attempts whose input is lost."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from headwater.v1 import payload_pb2, worker_pb2
from headwater.wire import FailureInfo
from headwater_runtime.server._dispatch import WorkerSession
from headwater_runtime.server._exports import DaskExports
from headwater_runtime.server._io import StoreIO
from headwater_runtime.server._limits import Limits
from headwater_runtime.server._reports import WorkerReports
from headwater_runtime.server._result_refs import EXPORT
from headwater_runtime.server._runs import PendingAssignment
from headwater_runtime.store import SQLiteStore


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
    h.exports.record(bridge, result, "run")
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
    h.exports.record(bridge, dask_ref("p1"), "run")
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
    h.exports.record(first, dask_ref("p1"), "run")
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


def test_a_bridges_values_are_bound_to_its_credential_not_only_its_worker_id() -> None:
    """A session of another credential that gives a bridge's worker id is not its
    holder: it is not asked to export the bridge's values, nor sent them as its own (a
    user trial answered the export with its own value, and the run took it)."""
    h = Harness()
    bridge, _ = session("bridge-1", worker_id="bridge")
    bridge.credential = "pool-a"
    plain, _ = session("plain")
    h.exports.connected(bridge)
    h.exports.record(bridge, dask_ref("p1"), "run")
    h.exports.forget(bridge)  # the stream broke
    impostor, to_impostor = session("evil", worker_id="bridge")
    impostor.credential = "pool-b"
    h.exports.connected(impostor)
    taken = pending("r/a", dask_ref("p1"))
    assert h.exports.prepare(impostor, taken) is False  # not its value: the holder is away
    assert h.failed[-1][0] is taken and h.sent == []
    assert not any(m.HasField("export_value") for m in to_impostor)
    again, to_again = session("bridge-2", worker_id="bridge")
    again.credential = "pool-a"
    h.exports.connected(again)  # the bridge itself, back
    waiting = pending("r/b", dask_ref("p1"))
    assert h.exports.prepare(plain, waiting) is False
    h.exports.on_exported(impostor, exported("p1"))  # unasked: changes nothing
    assert h.sent == []
    asked = [m.export_value.payload_id for m in to_again if m.HasField("export_value")]
    assert asked == ["p1"] and not any(m.HasField("export_value") for m in to_impostor)
    h.exports.on_exported(again, exported("p1"))
    assert [p for _, p in h.sent] == [waiting]


def test_an_export_error_fails_the_waiting_attempts() -> None:
    h = Harness()
    bridge, _ = session("bridge")
    plain, _ = session("plain")
    h.exports.record(bridge, dask_ref("p1"), "run")
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
        h.exports.record(bridge, dask_ref("p1"), "run")
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
    h.exports.record(first, dask_ref("p1"), "run")
    waiting = pending("r/b", dask_ref("p1"))
    assert h.exports.prepare(plain, waiting) is False
    assert len(to_first) == 1
    again, to_again = session("bridge-2", worker_id="bridge")
    h.exports.connected(again)  # before the old stream's end was noticed
    h.exports.forget(first)  # a no-op now: the worker is connected again
    assert [m.export_value.payload_id for m in to_again] == ["p1"]
    h.exports.on_exported(again, exported("p1"))
    assert [p for _, p in h.sent] == [waiting] and h.failed == []


# Releasing (feature "release-values") ------------------------------------------------


def releasing(name: str) -> tuple[WorkerSession, list[worker_pb2.ConnectResponse]]:
    """A bridge session whose Hello lists "release-values"."""
    s, sent = session(name)
    s.features = frozenset({"release-values"})
    return s, sent


def releasing_harness(
    release_after: float,
) -> tuple[Harness, WorkerSession, list[worker_pb2.ConnectResponse]]:
    """A Harness releasing ``release_after`` seconds after a run ends, with a bridge
    connected (its first greeting already taken from what it was sent)."""
    h = Harness()
    h.exports.release_after = release_after
    bridge, sent = releasing("bridge")
    h.exports.connected(bridge)
    sent.clear()
    return h, bridge, sent


def released(sent: list[worker_pb2.ConnectResponse]) -> list[list[str] | str]:
    """The ReleaseValues a session got, in order ("all" for ReleaseValues.all)."""
    out: list[list[str] | str] = []
    for msg in sent:
        if msg.HasField("release_values"):
            r = msg.release_values
            out.append("all" if r.all else sorted(r.payload_ids))
    return out


def split_result(base: str, n: int) -> payload_pb2.Value:
    value = dask_ref(base)
    value.items.extend(dask_ref(f"{base}-{i}") for i in range(n))
    return value


def test_a_bridge_new_to_the_server_lets_go_of_everything_and_one_back_gets_what_it_missed() -> (
    None
):
    h = Harness()
    h.exports.release_after = 0.0
    bridge, sent = releasing("bridge")
    h.exports.connected(bridge)
    assert released(sent) == ["all"], "this server has no record of what it held before"
    h.exports.record(bridge, dask_ref("p1"), "r1")
    h.exports.forget(bridge)  # the stream broke
    h.exports.run_ended("r1", None, now=10.0)
    h.exports.expire(10.0)
    assert released(sent) == ["all"], "not sent to a session that is gone"
    again, sent_again = releasing("bridge")
    h.exports.connected(again)
    assert released(sent_again) == [["p1"]], "what was released meanwhile, not 'all'"
    h.exports.forget(again)
    third, sent_third = releasing("bridge")
    h.exports.connected(third)
    assert released(sent_third) == [], "told once"


def test_a_runs_values_go_after_the_release_time_and_its_result_when_the_run_is_pruned() -> None:
    h, bridge, sent = releasing_harness(60.0)
    plain, _ = session("plain")
    h.exports.record(bridge, split_result("rows", 2), "r1")
    h.exports.record(bridge, dask_ref("total"), "r1")
    h.exports.record(bridge, dask_ref("other"), "r2")  # another run, still going
    h.exports.run_ended("r1", dask_ref("total"), now=100.0)
    assert h.exports.next_release_at == 160.0
    h.exports.expire(159.9)
    assert released(sent) == []
    assert h.exports.prepare(plain, pending("r1/late", dask_ref("rows"))) is False, "still held"
    h.exports.expire(160.0)
    assert released(sent) == [["rows", "rows-0", "rows-1"]]
    assert not h.exports.available(dask_ref("rows"))
    assert h.exports.available(dask_ref("total")), "the run's result stays"
    assert h.exports.available(dask_ref("other"))
    # A consumer of a released value fails as unavailable rather than waiting.
    gone = pending("r1/retry", dask_ref("rows-1"))
    assert h.exports.prepare(plain, gone) is False
    assert h.failed[-1][0] is gone and h.failed[-1][1].type == "headwater.ValueUnavailable"
    h.exports.pruned(ended_before=100.0)
    assert released(sent) == [["rows", "rows-0", "rows-1"]], "ended at 100: not before it"
    h.exports.pruned(ended_before=100.5)
    assert released(sent)[-1] == ["total"]
    assert h.exports.next_release_at is None
    assert set(h.exports.owners) == {"other"}, "the server forgets released values too"


def test_a_retried_run_keeps_its_values_until_it_ends_again() -> None:
    h, bridge, sent = releasing_harness(5.0)
    h.exports.record(bridge, dask_ref("a"), "r1")
    h.exports.run_ended("r1", None, now=0.0)  # FAILED
    h.exports.run_reopened("r1")  # runs retry, within the release time
    h.exports.expire(100.0)
    assert released(sent) == [], "the retry still needs them"
    h.exports.record(bridge, dask_ref("b"), "r1")
    h.exports.run_ended("r1", None, now=200.0)
    h.exports.expire(205.0)
    assert released(sent) == [["a", "b"]]


def test_a_value_a_cache_entry_names_stays_until_the_entry_expires() -> None:
    h, bridge, sent = releasing_harness(0.0)
    h.exports.record(bridge, dask_ref("cached"), "r1")
    h.exports.record(bridge, dask_ref("plain"), "r1")
    h.exports.pin("key-1", dask_ref("cached"), expires_at=50.0)
    h.exports.run_ended("r1", None, now=10.0)
    h.exports.expire(10.0)
    assert released(sent) == [["plain"]]
    assert h.exports.available(dask_ref("cached"))
    assert h.exports.next_release_at == 50.0
    h.exports.expire(50.0)
    assert released(sent)[-1] == ["cached"]
    assert not h.exports.available(dask_ref("cached")), "a later lookup is a miss"
    # A pin replaced by another value under the same key lets go of the first value.
    h.exports.record(bridge, dask_ref("v1"), "r2")
    h.exports.record(bridge, dask_ref("v2"), "r2")
    h.exports.pin("key-2", dask_ref("v1"), expires_at=None)
    h.exports.run_ended("r2", None, now=60.0)
    h.exports.expire(60.0)
    assert released(sent)[-1] == ["v2"]
    h.exports.pin("key-2", dask_ref("v2"), expires_at=None)  # (v2 is gone: nothing kept)
    assert released(sent)[-1] == ["v1"]


def test_a_worker_without_the_feature_is_sent_nothing_but_the_server_forgets() -> None:
    h = Harness()
    h.exports.release_after = 0.0
    bridge, sent = session("old-bridge")  # its Hello does not list release-values
    h.exports.connected(bridge)
    h.exports.record(bridge, dask_ref("p1"), "r1")
    h.exports.run_ended("r1", None, now=0.0)
    h.exports.expire(0.0)
    assert released(sent) == []
    assert h.exports.owners == {}


def test_releases_to_a_bridge_that_stays_away_are_bounded() -> None:
    import headwater_runtime.server._exports as exports_module

    h = Harness()
    h.exports.release_after = 0.0
    bridge, _ = releasing("bridge")
    h.exports.connected(bridge)
    limit = exports_module.UNSENT_LIMIT
    h.exports.record(bridge, split_result("big", limit), "r1")
    h.exports.forget(bridge)
    h.exports.run_ended("r1", None, now=0.0)
    h.exports.expire(0.0)
    back, sent = releasing("bridge")
    h.exports.connected(back)
    assert released(sent) == ["all"], "too many to list: it lets go of everything instead"


def test_a_restarted_server_knows_who_holds_the_values_of_the_runs_it_resumes() -> None:
    """Each Dask ref is stored with its holder; a restarted server rebuilds ownership
    from the runs it resumes, waits for the holder to reconnect (rather than failing
    their consumers at once), and tells the bridge to keep exactly those values."""
    before = Harness()
    bridge, _ = releasing("bridge")
    result = split_result("rows", 2)
    before.exports.record(bridge, result, "r1")
    assert {
        r.metadata["headwater.holder"] for r in [result.ref, *(i.ref for i in result.items)]
    } == {"bridge"}, "the holder is written into the refs the server stores"
    # The server restarts: a new DaskExports resumes r1 from its stored results.
    h = Harness()
    h.exports.recovering = True
    h.exports.await_holders_until = 20.0
    h.exports.recover("r1", [result, INLINE, None])
    h.exports.recover("r2", [INLINE])  # a run without Dask values
    plain, _ = session("plain")
    consumer = pending("r1/use", dask_ref("rows-1"))
    assert h.exports.prepare(plain, consumer) is False, "waits for the holder"
    assert h.failed == []
    back, sent = releasing("bridge")
    h.exports.connected(back)
    assert [m.export_value.payload_id for m in sent if m.HasField("export_value")] == ["rows-1"]
    assert released(sent) == [], "told what to keep once every run is resumed"
    h.exports.recovered()
    ((keep,),) = [[m.release_values] for m in sent if m.HasField("release_values")]
    assert keep.all and sorted(keep.keep) == ["rows", "rows-0", "rows-1"]
    h.exports.on_exported(back, exported("rows-1"))
    assert [p for _, p in h.sent] == [consumer]
    # A holder that never comes back: its consumers fail once the window closes.
    h.exports.recover("r3", [dask_ref_held("gone", "other-bridge")])
    stuck = pending("r3/use", dask_ref("gone"))
    assert h.exports.prepare(plain, stuck) is False
    h.exports.expire(19.0)
    assert h.failed == []
    h.exports.expire(20.0)
    assert h.failed[-1][0] is stuck and "did not reconnect" in h.failed[-1][1].message
    late = pending("r3/late", dask_ref("gone"))
    assert h.exports.prepare(plain, late) is False and h.failed[-1][0] is late


def dask_ref_held(payload_id: str, holder: str) -> payload_pb2.Value:
    value = dask_ref(payload_id)
    value.ref.metadata["headwater.holder"] = holder
    return value


def test_a_long_keep_list_comes_in_several_messages_the_last_with_all(
    monkeypatch: Any,
) -> None:
    import headwater_runtime.server._exports as exports_module

    monkeypatch.setattr(exports_module, "RELEASE_CHUNK", 2)
    h = Harness()
    h.exports.recover("r1", [dask_ref_held(f"v{i}", "bridge") for i in range(5)])
    bridge, sent = releasing("bridge")
    h.exports.connected(bridge)
    messages = [m.release_values for m in sent if m.HasField("release_values")]
    assert [(m.all, list(m.keep)) for m in messages] == [
        (False, ["v0", "v1"]),
        (False, ["v2", "v3"]),
        (True, ["v4"]),
    ]


def test_an_export_whose_value_references_a_payload_not_stored_fails_the_waiting(
    tmp_path: Path,
) -> None:
    """A bridge's ValueExported is looked up as a result is (WorkerReports.look_up_refs):
    an exported value that references a payload the store does not hold is not used
    (readers and downstream workers got NOT_FOUND later, a user trial); the attempts
    waiting for it fail, saying why."""
    store = SQLiteStore(str(tmp_path / "hw.db"))
    io = StoreIO()
    core = SimpleNamespace(io=io, store=store, settings=SimpleNamespace(limits=Limits()))
    h = Harness()
    bridge, _ = session("bridge")
    plain, _ = session("plain")
    h.exports.record(bridge, dask_ref("p1"), "run")
    h.exports.record(bridge, dask_ref("p2"), "run")
    kept = store.put_payload(iter([b"42"]), {"encoding": "json"}, 2)
    dangling = payload_pb2.Value(ref=payload_pb2.PayloadRef(payload_id="gone"))
    good = payload_pb2.Value(ref=payload_pb2.PayloadRef(payload_id=kept.id))
    answers = [
        worker_pb2.ConnectRequest(value_exported=exported("p1", dangling)),
        worker_pb2.ConnectRequest(value_exported=exported("p2", good)),
    ]
    try:
        asyncio.run(WorkerReports.look_up_refs(core, bridge, answers))  # type: ignore[arg-type]
    finally:
        io.close()
        store.close()
    assert set(bridge.ref_problems) == {("p1", EXPORT)}
    first, second = pending("r/b", dask_ref("p1")), pending("r/c", dask_ref("p2"))
    assert h.exports.prepare(plain, first) is False and h.exports.prepare(plain, second) is False
    for answer in answers:
        h.exports.on_exported(bridge, answer.value_exported)
    ((failed, failure),) = h.failed
    assert failed is first
    assert "exported a value that references payload 'gone', which is not stored" in (
        failure.message
    )
    assert "p1" not in h.exports.exported and h.exports.exported["p2"] == good
    assert [p for _, p in h.sent] == [second] and bridge.ref_problems == {}
