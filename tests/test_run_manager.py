"""The server's run manager: runs driven durably, effects after commit, crash recovery.

A fake dispatcher collects assignments and a tiny in-test "worker" evaluates them, so
these tests exercise the manager, the journal and the store without a network.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from headwater import flow, task, unmapped
from headwater.v1 import journal_pb2, payload_pb2, worker_pb2
from headwater.wire import (
    EncodedValue,
    FailureInfo,
    FlowRunState,
    GraphError,
    ParameterError,
    TaskRunState,
    decode,
    decode_value,
    encode,
    failure_to_proto,
)
from headwater_runtime.engine import (
    ENGINE_VERSION,
    EVENT,
    START,
    JournalEntry,
    TaskFailed,
    TaskLost,
    TaskSkipped,
    TaskStarted,
    TaskSucceeded,
)
from headwater_runtime.server import _flows as flows_module
from headwater_runtime.server._assignments import QueuedAttempts
from headwater_runtime.server._gc import SMALL_RELEASE, release_later
from headwater_runtime.server._gc import _releaser as releasing
from headwater_runtime.server._journal import Values, decode_entry, encode_entry
from headwater_runtime.server._queries import flow_result, task_result
from headwater_runtime.server._runs import PendingAssignment, RunManager, split_task_run_id
from headwater_runtime.server._values import LENGTH_KEY
from headwater_runtime.store import NotFound, RunEvent, Store, open_store


@task
def numbers(n: int) -> list[int]:
    return list(range(n))


@task(retries=1)
def scale(x: int, factor: int) -> int:
    return x * factor


@task
def total(values: list[int]) -> int:
    return sum(values)


@flow
def pipeline(n: int = 3, factor: int = 10) -> dict[str, Any]:
    scaled = scale.map(numbers(n), unmapped(factor))
    return {"scaled": scaled, "total": total(scaled)}


FUNCTIONS = {t.task_type: t.fn for t in (numbers, scale, total)}


class Clock:
    def __init__(self) -> None:
        self.t = 1_000.0

    def now(self) -> float:
        return self.t


class FakeDispatch:
    def __init__(self) -> None:
        self.submitted: list[PendingAssignment] = []
        self.cancelled: list[tuple[str, str, int, str]] = []

    def submit(self, pending: PendingAssignment) -> None:
        self.submitted.append(pending)

    def cancel(self, flow_run_id: str, task_run_id: str, attempt: int, reason: str) -> None:
        self.cancelled.append((flow_run_id, task_run_id, attempt, reason))

    def submit_many(self, flow_run_id: str, by_type: dict[str, list[PendingAssignment]]) -> None:
        for pendings in by_type.values():
            self.submitted.extend(pendings)

    def submit_queued(self, queued: QueuedAttempts) -> None:
        self.submit_many(queued.flow_run_id, dict(queued.by_type))

    def cancel_many(
        self, flow_run_id: str, cancels: dict[tuple[str, int], str], *, whole_run: bool = False
    ) -> None:
        self.cancelled.extend((flow_run_id, *t, why) for t, why in cancels.items())


def value_of(obj: Any, split: bool = False) -> payload_pb2.Value:
    encoded = encode(obj)
    metadata = dict(encoded.metadata)
    items = []
    if split:
        metadata[LENGTH_KEY] = str(len(obj))
        items = [value_of(x) for x in obj]
    return payload_pb2.Value(
        inline=payload_pb2.Payload(data=encoded.data, metadata=metadata), items=items
    )


def decode_input(msg: worker_pb2.InputValue) -> Any:
    kind = msg.WhichOneof("kind")
    if kind == "list":
        items = [decode_input(i) for i in msg.list.items]
        out: Any = tuple(items) if msg.list.tuple else items
    elif kind == "map":
        out = {e.key: decode_input(e.value) for e in msg.map.entries}
    else:
        p = msg.value.inline
        out = decode(EncodedValue(bytes(p.data), dict(p.metadata)))
    for part in msg.path:
        out = out[part.key if part.WhichOneof("selector") == "key" else part.index]
    return out


def work(manager: RunManager, pending: PendingAssignment, fail: bool = False) -> None:
    """Run one assignment the way a worker would and report the outcome."""
    a = pending.assignment
    run_id, key = split_task_run_id(a.token.task_run_id)
    manager.handle(run_id, TaskStarted(key, a.token.attempt))
    if fail:
        failure = FailureInfo("builtins.OSError", "flaky")
        manager.handle(run_id, TaskFailed(key, a.token.attempt, failure))
        return
    args = {name: decode_input(v) for name, v in a.inputs.items()}
    result = FUNCTIONS[a.task_type](**args)
    manager.handle(run_id, TaskSucceeded(key, a.token.attempt, value_of(result, a.split_result)))


def drain(manager: RunManager, dispatch: FakeDispatch, fail_first: set[str] = frozenset()) -> None:
    failed: set[str] = set()
    for _ in range(100):
        manager.flush()
        if not dispatch.submitted:
            return
        pending = dispatch.submitted.pop(0)
        key = pending.assignment.token.task_run_id
        should_fail = key.split("/")[1] in fail_first and key not in failed
        failed.add(key)
        work(manager, pending, fail=should_fail)
    raise AssertionError("did not settle")


@pytest.fixture
def store(db: str) -> Iterator[Store]:
    """The run manager's store: SQLite and PostgreSQL (every test runs on both)."""
    s = open_store(db)
    yield s
    s.close()


def test_a_graph_not_cached_is_read_back_a_slice_at_a_time(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a restart the graph of a registered flow is decoded from the store in
    slices (a large one in one C call would hold the GIL, and so the event loop), into
    the same graph the registering server built."""
    registered = RunManager(store, FakeDispatch(), Clock())
    version, _ = registered.register_flow(pipeline.compile())
    sliced: list[int] = []
    real = flows_module.parse_in_slices

    def spy(cls: Any, data: bytes) -> Any:
        sliced.append(len(data))
        return real(cls, data)

    monkeypatch.setattr(flows_module, "parse_in_slices", spy)
    restarted = RunManager(store, FakeDispatch(), Clock())  # nothing cached
    assert restarted.graph("pipeline", version) == registered.graph("pipeline", version)
    assert sliced == [len(store.get_flow("pipeline", version).graph)]
    restarted.graph("pipeline", version)
    assert len(sliced) == 1  # cached from then on


def test_a_flow_version_known_already_is_not_read_from_the_store_again(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registered version never changes: a run of one this server has seen costs no
    store read; the latest version, or one unknown here, is looked up."""
    manager = RunManager(store, FakeDispatch(), Clock())
    version, _ = manager.register_flow(pipeline.compile())
    reads: list[str] = []
    real = store.get_flow

    def counted(name: str, version: str = "") -> Any:
        reads.append(version)
        return real(name, version)

    monkeypatch.setattr(store, "get_flow", counted)
    manager.create_run("pipeline", version, {})
    manager.create_run("pipeline", version, {})
    assert reads == []
    manager.create_run("pipeline", "", {})  # the latest: only the store knows it
    assert reads == [""]
    with pytest.raises(NotFound):
        manager.graph("pipeline", "9")
    assert reads == ["", "9"]


def test_a_flow_runs_to_success_and_its_result_is_stored(store: Store) -> None:
    dispatch = FakeDispatch()
    manager = RunManager(store, dispatch, Clock())
    version, created = manager.register_flow(pipeline.compile())
    assert (version, created) == ("1", True)
    assert manager.register_flow(pipeline.compile()) == ("1", False)

    row, created = manager.create_run("pipeline", "", {"n": value_of(4)})
    assert created and row.state == FlowRunState.RUNNING.value
    # The run's start was stored with its row, before its first attempt left.
    assert [e.kind for e in store.events(row.id)] == ["run_started"]
    assert [p.assignment.task_type for p in dispatch.submitted] == [numbers.task_type]
    drain(manager, dispatch, fail_first={"scale[2]"})

    stored = store.get_flow_run(row.id)
    assert stored.state == FlowRunState.SUCCESS.value
    result = decode_value(flow_result(store, stored))
    assert result == {"scaled": [0, 10, 20, 30], "total": 60}
    states = [r.state for r in store.task_run_history(row.id, "scale[2]")]
    assert states[-3:] == [2, 3, 5]  # SCHEDULED, RUNNING, SUCCESS
    assert 4 in states  # RETRYING after the injected failure
    assert row.id not in manager.runs  # finished runs leave memory


def test_mapping_needs_split_results_and_asks_for_them(store: Store) -> None:
    dispatch = FakeDispatch()
    manager = RunManager(store, dispatch, Clock())
    manager.register_flow(pipeline.compile())
    manager.create_run("pipeline", "", {})
    manager.flush()
    (first,) = dispatch.submitted
    assert first.assignment.task_type.endswith("numbers")
    assert first.assignment.split_result is True
    assert json.loads(first.assignment.inputs["n"].value.inline.data) == 3


@task
def table(n: int) -> dict[str, Any]:
    return {"name": "t", "rows": list(range(n)), "cols": ["a"]}


FUNCTIONS[table.task_type] = table.fn


@flow
def over_rows(n: int = 3) -> dict[str, Any]:
    t = table(n)
    return {"scaled": scale.map(t["rows"], unmapped(2)), "rows": total(t["rows"])}


@flow
def over_rows_and_cols(n: int = 3) -> list[Any]:
    t = table(n)
    return [scale.map(t["rows"], unmapped(2)), scale.map(t["cols"], unmapped(2))]


def test_mapping_over_a_part_asks_the_worker_to_split_that_part(store: Store) -> None:
    dispatch = FakeDispatch()
    manager = RunManager(store, dispatch, Clock())
    manager.register_flow(over_rows.compile())
    row, _ = manager.create_run("over_rows", "", {})
    manager.flush()
    (first,) = dispatch.submitted
    a = first.assignment
    assert a.split_result and [p.key for p in a.split_path] == ["rows"]
    # The worker splits result["rows"] and says so in the metadata.
    whole = value_of({"name": "t", "rows": [0, 1, 2], "cols": ["a"]})
    whole.inline.metadata.update({LENGTH_KEY: "3", "headwater.split_path": '["rows"]'})
    whole.items.extend(value_of(x) for x in (0, 1, 2))
    run_id, key = split_task_run_id(a.token.task_run_id)
    dispatch.submitted.clear()
    manager.handle(run_id, TaskSucceeded(key, a.token.attempt, whole))
    manager.flush()
    children = [p for p in dispatch.submitted if p.assignment.task_type.endswith("scale")]
    reducer = next(p for p in dispatch.submitted if p.assignment.task_type.endswith("total"))
    assert [decode_input(c.assignment.inputs["x"]) for c in children] == [0, 1, 2]
    # A consumer of the part gets the whole value and a path, without the elements.
    rows = reducer.assignment.inputs["values"]
    assert not rows.value.items and decode_input(rows) == [0, 1, 2]
    drain(manager, dispatch)
    result = decode_value(flow_result(store, store.get_flow_run(row.id)))
    assert result == {"scaled": [0, 2, 4], "rows": 3}


def test_mapping_over_two_parts_of_one_result_is_refused_everywhere(store: Store) -> None:
    """One graph rule, one message: refused when compiled (embedded) and when a
    hand-written FlowGraph that breaks it is registered on a server."""
    message = r"only one part of a result can be mapped over"
    with pytest.raises(GraphError, match=message) as embedded:
        over_rows_and_cols.compile()
    # The same graph written by hand (e.g. another language's SDK): map over "cols" too.
    msg = over_rows.compile()
    second = msg.tasks.add()
    second.CopyFrom(next(t for t in msg.tasks if t.HasField("map")))
    second.id = "scale-2"
    second.inputs["x"].task_output.path[0].key = "cols"
    manager = RunManager(store, FakeDispatch(), Clock())
    with pytest.raises(GraphError, match=message) as served:
        manager.register_flow(msg)
    assert str(served.value).split(":", 1)[1] == str(embedded.value).split(":", 1)[1]
    with pytest.raises(NotFound):
        store.get_flow("over_rows", "")


def test_idempotency_key_and_bad_parameters(store: Store) -> None:
    manager = RunManager(store, FakeDispatch(), Clock())
    manager.register_flow(pipeline.compile())
    a, created_a = manager.create_run("pipeline", "", {}, idempotency_key="nightly-1")
    b, created_b = manager.create_run("pipeline", "", {}, idempotency_key="nightly-1")
    assert (created_a, created_b, a.id) == (True, False, b.id)
    with pytest.raises(ParameterError, match="'nope'"):
        manager.create_run("pipeline", "", {"nope": value_of(1)})
    with pytest.raises(NotFound, match="'missing'"):
        manager.create_run("missing", "", {})


def test_a_crash_loses_nothing_committed_and_reruns_nothing_that_succeeded(db: str) -> None:
    """After a restart, attempts a worker was handed wait for it (and are lost only if
    nobody claims them); attempts that never reached a worker are sent again at once,
    as the same attempt: no loss is counted against them."""
    store = open_store(db)
    dispatch = FakeDispatch()
    manager = RunManager(store, dispatch, Clock())
    manager.register_flow(pipeline.compile())
    row, _ = manager.create_run("pipeline", "", {"n": value_of(4)})
    manager.flush()
    work(manager, dispatch.submitted.pop(0))  # numbers succeeds
    manager.flush()
    work(manager, dispatch.submitted.pop(0))  # scale[0] succeeds and is committed
    manager.flush()
    in_flight = {p.assignment.token.task_run_id.split("/")[1]: p for p in dispatch.submitted}
    assert sorted(in_flight) == ["scale[1]", "scale[2]", "scale[3]"]
    held = in_flight["scale[3]"].token  # handed to a worker, and that is recorded
    manager.delivered(row.id, held[0], held[1], "worker-a", "worker-a")
    manager.flush()
    work(manager, in_flight["scale[1]"])  # scale[1] succeeds but is never committed
    store.close()  # the server dies here (no flush)

    store = open_store(db)
    dispatch = FakeDispatch()
    manager = RunManager(store, dispatch, Clock())
    found = manager.recover()
    assert [t.split("/")[1] for _, t, _ in found.held] == ["scale[3]"]
    assert sorted(t.split("/")[1] for _, t, _ in found.resent) == ["scale[1]", "scale[2]"]
    engine = manager.runs[row.id].engine
    assert engine.runs["scale[0]"].state.name == "SUCCESS"
    # Nobody claims the held attempt within the heartbeat window: the server reports
    # it lost (a worker that held it is gone), which dispatches a second attempt.
    from headwater_runtime.engine import TaskLost

    for run_id, task_run, attempt in found.held:
        manager.handle(run_id, TaskLost(task_run.split("/")[1], attempt))
    drain(manager, dispatch)
    assert store.get_flow_run(row.id).state == FlowRunState.SUCCESS.value
    attempts = {r.key: r.attempt for r in store.task_runs(row.id)}
    assert attempts["scale[0]"] == 1  # never run again
    assert attempts["scale[1]"] == 1 and attempts["scale[2]"] == 1  # resent, not lost
    assert attempts["scale[3]"] == 2
    result = decode_value(flow_result(store, store.get_flow_run(row.id)))
    assert result == {"scaled": [0, 10, 20, 30], "total": 60}
    store.close()


def test_cancel_cancels_in_flight_attempts_after_commit(store: Store) -> None:
    dispatch = FakeDispatch()
    manager = RunManager(store, dispatch, Clock())
    manager.register_flow(pipeline.compile())
    row, _ = manager.create_run("pipeline", "", {})
    manager.flush()
    manager.cancel(row.id, "user asked")
    assert dispatch.cancelled == []
    manager.flush()
    assert [c[1].split("/")[1] for c in dispatch.cancelled] == ["numbers"]
    assert store.get_flow_run(row.id).state == FlowRunState.CANCELLED.value


def test_a_large_run_is_cancelled_aside_and_calls_for_it_wait_until_it_rejoins(
    store: Store,
) -> None:
    """The server cancels a large run on a reader thread (set_aside, cancel_aside,
    rejoin): meanwhile nothing of it is visible or sent, calls for it wait and an
    outcome is refused as stale; once it rejoins, its writes join the open batch,
    listeners are told, and the calls that waited are carried out in order."""
    dispatch = FakeDispatch()
    manager = RunManager(store, dispatch, Clock())
    manager.collector.large = 1  # every run counts as large
    manager.register_flow(pipeline.compile())
    row, _ = manager.create_run("pipeline", "", {})
    manager.flush()
    assert [p.task_type for p in dispatch.submitted] == ["test_run_manager.numbers"]
    journal = len(store.events(row.id))
    told: list[tuple[str, Any]] = []
    ended: list[dict[TaskRunState, int]] = []
    manager.listeners.append(lambda run_id, run: told.append((run_id, run)))
    manager.ended_listeners.append(lambda counts: ended.append(dict(counts)))
    active = manager.set_aside(row.id)
    assert active is not None
    assert manager.set_aside(row.id) is None  # aside already
    thread = threading.Thread(target=manager.cancel_aside, args=(active, "user asked"))
    thread.start()
    thread.join(30)
    assert manager.handle(row.id, TaskStarted("numbers", 1)) == []  # waits to rejoin
    late = TaskSucceeded("numbers", 1, value_of([1, 2, 3]))
    (refused,) = manager.handle(row.id, late)  # an outcome: stale whatever the cancel does
    assert refused.reason.endswith("'numbers': the flow run is being cancelled")
    manager.flush()
    assert dispatch.cancelled == [] and told == [] and ended == []
    assert store.get_flow_run(row.id).state == FlowRunState.RUNNING.value
    manager.rejoin(active)
    assert told[0] == (row.id, None)
    manager.flush()
    assert [c[1].split("/")[1] for c in dispatch.cancelled] == ["numbers"]
    assert store.get_flow_run(row.id).state == FlowRunState.CANCELLED.value
    cancelled = [r for r in store.task_runs(row.id) if r.state == TaskRunState.CANCELLED.value]
    assert ended == [{TaskRunState.CANCELLED: len(cancelled)}] and cancelled
    # The cancel, then the report that waited (ignored by then: the run is over).
    assert len(store.events(row.id)) == journal + 2
    assert manager.handle(row.id, late)[0].reason.endswith("the flow run ended CANCELLED")


def test_a_wide_result_is_applied_aside_and_outcomes_that_come_meanwhile_wait(
    store: Store,
) -> None:
    """A result with many elements is applied on a reader thread (set_aside with
    expanding, handle_aside, rejoin): the run becomes large; an outcome of another
    attempt that comes meanwhile is not refused (nothing is being cancelled) but waits,
    and is applied once the run rejoins; the children are written with the rejoin."""
    dispatch = FakeDispatch()
    manager = RunManager(store, dispatch, Clock())
    manager.register_flow(pipeline.compile())
    row, _ = manager.create_run("pipeline", "", {"n": value_of(4)})
    manager.flush()
    assert len(dispatch.submitted) == 1  # numbers
    dispatch.submitted.clear()
    active = manager.set_aside(row.id, expanding=10_000)
    assert active is not None and active.large, "a small graph, large once it expands"
    assert manager.set_aside(row.id, expanding=10_000) is None  # aside already
    result = TaskSucceeded("numbers", 1, value_of([0, 1, 2, 3], split=True))
    ignored: list[Any] = []
    thread = threading.Thread(
        target=lambda: ignored.extend(manager.handle_aside(active, result, 4))
    )
    thread.start()
    thread.join(30)
    assert ignored == []
    # A second report of the same attempt meanwhile: it waits (and is then stale).
    assert manager.handle(row.id, TaskSucceeded("numbers", 1, value_of([9], split=True))) == []
    manager.flush()
    assert dispatch.submitted == [], "nothing of it leaves before it rejoins"
    assert not [r for r in store.task_runs(row.id) if r.key.startswith("scale[")]
    manager.rejoin(active)
    manager.flush()
    assert sorted(p.token[0].split("/")[1] for p in dispatch.submitted) == [
        f"scale[{i}]" for i in range(4)
    ]
    children = [r for r in store.task_runs(row.id) if r.key.startswith("scale[")]
    assert len(children) == 4
    drain(manager, dispatch)
    assert store.get_flow_run(row.id).state == FlowRunState.SUCCESS.value
    assert decode_value(flow_result(store, store.get_flow_run(row.id)))["total"] == 60


def test_large_containers_are_emptied_on_the_releasing_thread_small_ones_where_they_are() -> None:
    """A committed batch of more than SMALL_RELEASE rows is freed item by item on the
    releasing thread (the event loop keeps the GIL every switch interval); a small one
    is not handed over (waking that thread per commit cost more than freeing it)."""
    large = {i: object() for i in range(SMALL_RELEASE + 1)}
    small = [object() for _ in range(10)]
    release_later([large, None])
    release_later([small])
    releasing().submit(lambda: None).result(30)  # what it was given is done
    assert large == {}
    assert len(small) == 10


def test_when_the_last_large_run_ends_its_large_graph_leaves_the_cache(store: Store) -> None:
    """Once no large run is live, large graphs leave the cache on the releasing thread
    (everything frozen then goes back to the collector, which would otherwise scan a
    100,000-task graph at every full collection); the next run reads it back."""
    dispatch = FakeDispatch()
    manager = RunManager(store, dispatch, Clock())
    manager.collector.large = 1  # every run and graph counts as large
    version, _ = manager.register_flow(pipeline.compile())
    row, _ = manager.create_run("pipeline", "", {"n": value_of(2)})
    assert ("pipeline", version) in manager._graphs
    drain(manager, dispatch)
    assert store.get_flow_run(row.id).state == FlowRunState.SUCCESS.value
    releasing().submit(lambda: None).result(30)  # what it was given is done
    assert ("pipeline", version) not in manager._graphs
    assert manager.collector.unfrozen == 1
    again, _ = manager.create_run("pipeline", "", {"n": value_of(3)})
    drain(manager, dispatch)
    assert decode_value(flow_result(store, store.get_flow_run(again.id)))["total"] == 30


def test_a_batch_put_back_after_a_failed_commit_keeps_the_values_it_references(
    store: Store,
) -> None:
    """A batch whose commit failed is put back in front of what happens next; the
    values its journal entries reference must be committed with it (they were once
    dropped at the next detach, leaving entries that point at no value)."""
    dispatch = FakeDispatch()
    manager = RunManager(store, dispatch, Clock())
    manager.register_flow(pipeline.compile())
    row, _ = manager.create_run("pipeline", "", {"n": value_of(2)})
    work(manager, dispatch.submitted.pop(0))  # numbers: a result with its elements
    batch, effects = manager.detach()
    assert batch.values, "the result's value is in the batch"
    manager.reattach(batch, effects)  # as the commit pipeline does when a commit fails
    manager.cancel(row.id, "something else happened before the retry")
    manager.flush()
    value, state = task_result(store, row.id, "numbers")
    assert (decode_value(value), state) == ([0, 1], TaskRunState.SUCCESS)


@task(timeout=5)
def slow() -> int:
    return 1


@flow
def slow_flow() -> int:
    return slow()


def test_a_report_after_the_run_ended_names_the_stale_attempt(store: Store) -> None:
    """The Ack reason of a late report: the same words whether the run's engine is
    still in memory or the run has ended and left it (then the store answers)."""
    dispatch, clock = FakeDispatch(), Clock()
    manager = RunManager(store, dispatch, clock)
    manager.register_flow(slow_flow.compile())
    row, _ = manager.create_run("slow_flow", "", {})
    manager.flush()
    token = dispatch.submitted[0].assignment.token
    assert manager.handle(row.id, TaskStarted("slow", token.attempt)) == []
    clock.t += 5
    manager.fire_timers()
    late = TaskSucceeded("slow", 1, value_of(1))
    expected = (
        "stale attempt 1 of task run 'slow': the attempt timed out; the flow run ended FAILED"
    )
    (in_memory,) = manager.handle(row.id, late)
    assert in_memory.reason == expected
    manager.flush()
    assert dispatch.cancelled == [(row.id, token.task_run_id, 1, "timed out")]
    assert row.id not in manager.runs
    (from_store,) = manager.handle(row.id, late)
    assert from_store.reason == expected
    (unknown,) = manager.handle(row.id, TaskSucceeded("nope", 1, value_of(1)))
    assert unknown.reason == "unknown task run 'nope'"
    (gone,) = manager.handle("no-such-run", late)
    assert gone.reason == "unknown flow run 'no-such-run'"


def test_a_report_after_a_cancel_names_the_stale_attempt(store: Store) -> None:
    dispatch = FakeDispatch()
    manager = RunManager(store, dispatch, Clock())
    manager.register_flow(pipeline.compile())
    row, _ = manager.create_run("pipeline", "", {})
    manager.flush()
    manager.cancel(row.id, "user asked")
    late = TaskSucceeded("numbers", 1, value_of([1]))
    expected = (
        "stale attempt 1 of task run 'numbers': the attempt was cancelled; "
        "the flow run ended CANCELLED"
    )
    assert [i.reason for i in manager.handle(row.id, late)] == [expected]
    manager.flush()
    assert [i.reason for i in manager.handle(row.id, late)] == [expected]


# A task no worker offers, beside one that runs: the run goes on after the first fails.
@task(schedule_to_start_timeout=5)
def unserved() -> int:
    return 1


@task
def served() -> int:
    return 2


@flow
def half_served() -> list[int]:
    return [unserved(), served()]


FUNCTIONS[served.task_type] = served.fn


START_TIMEOUT = FailureInfo(
    "headwater.ScheduleToStartTimeout", "no worker started it", retryable=False
)


def _start_half_served(manager: RunManager, dispatch: FakeDispatch) -> tuple[str, int]:
    manager.register_flow(half_served.compile())
    row, _ = manager.create_run("half_served", "", {})
    manager.flush()
    (pending,) = [p for p in dispatch.submitted if p.assignment.task_type == unserved.task_type]
    dispatch.submitted.remove(pending)
    assert pending.start_timeout == 5  # the server fails it once that has passed
    return row.id, pending.token[1]


def _stored_states(store: Store, run_id: str, key: str) -> list[str]:
    return [TaskRunState(r.state).name for r in store.task_run_history(run_id, key)]


def test_an_attempt_no_worker_started_fails_from_scheduled_and_replays_so(db: str) -> None:
    """What the server does when a schedule_to_start_timeout expires: the history reads
    SCHEDULED > FAILED (no RUNNING), in the store and after a restart's replay."""
    store = open_store(db)
    dispatch = FakeDispatch()
    manager = RunManager(store, dispatch, Clock())
    run_id, attempt = _start_half_served(manager, dispatch)
    event = TaskFailed("unserved", attempt, START_TIMEOUT, never_started=True)
    assert manager.handle(run_id, event) == []
    manager.flush()
    assert _stored_states(store, run_id, "unserved") == ["SCHEDULED", "FAILED"]
    (stored,) = [r for r in store.task_runs(run_id) if r.key == "unserved"]
    assert stored.attempt == 1
    assert store.events(run_id)[-1].kind == "attempt_failed"
    store.close()  # a restart, with "served" still in flight

    store = open_store(db)
    dispatch = FakeDispatch()
    manager = RunManager(store, dispatch, Clock())
    manager.recover()
    engine = manager.runs[run_id].engine
    run = engine.runs["unserved"]
    assert run.states == [TaskRunState.PENDING, TaskRunState.SCHEDULED, TaskRunState.FAILED]
    assert run.attempts == [] and run.failure == START_TIMEOUT
    engine.validate()
    drain(manager, dispatch)
    assert store.get_flow_run(run_id).state == FlowRunState.FAILED.value
    assert _stored_states(store, run_id, "unserved") == ["SCHEDULED", "FAILED"]
    store.close()


def test_a_journal_of_the_older_engine_replays_its_start_timeout_as_it_was(db: str) -> None:
    """Before engine version 3 the server reported the timeout as an ordinary failure
    (the engine then marked the attempt RUNNING first): such a journal replays to the
    history it stored, and the run goes on."""
    store = open_store(db)
    dispatch = FakeDispatch()
    manager = RunManager(store, dispatch, Clock())
    run_id, attempt = _start_half_served(manager, dispatch)
    manager.handle(run_id, TaskFailed("unserved", attempt, START_TIMEOUT))  # as it was
    manager.flush()
    assert _stored_states(store, run_id, "unserved") == ["SCHEDULED", "RUNNING", "FAILED"]
    store.close()

    store = open_store(db)
    dispatch = FakeDispatch()
    manager = RunManager(store, dispatch, Clock())
    manager.recover()
    run = manager.runs[run_id].engine.runs["unserved"]
    assert [s.name for s in run.states] == ["PENDING", "SCHEDULED", "RUNNING", "FAILED"]
    drain(manager, dispatch)
    assert store.get_flow_run(run_id).state == FlowRunState.FAILED.value
    assert _stored_states(store, run_id, "unserved") == ["SCHEDULED", "RUNNING", "FAILED"]
    store.close()


def test_a_start_timeout_marks_a_run_of_an_older_engine_with_the_current_one(
    store: Store,
) -> None:
    """An older server could not replay the new entry to the same history, so the run
    takes the current engine version (as a retry does)."""
    dispatch = FakeDispatch()
    manager = RunManager(store, dispatch, Clock())
    run_id, attempt = _start_half_served(manager, dispatch)
    manager.runs[run_id].row.engine_version = "2"  # resumed from a version 2 journal
    manager.handle(run_id, TaskFailed("unserved", attempt, START_TIMEOUT, never_started=True))
    manager.flush()
    assert store.get_flow_run(run_id).engine_version == ENGINE_VERSION


def test_a_give_back_marks_a_run_of_an_older_engine_with_the_current_one(
    store: Store,
) -> None:
    """Engine 5 counted a give-back as a loss: it would replay such a journal to
    another history, so the run takes the current engine version."""
    dispatch = FakeDispatch()
    manager = RunManager(store, dispatch, Clock())
    run_id, attempt = _start_half_served(manager, dispatch)
    manager.runs[run_id].row.engine_version = "5"  # resumed from a version 5 journal
    manager.handle(run_id, TaskLost("unserved", attempt, "stopping", given_back=True))
    manager.flush()
    assert store.get_flow_run(run_id).engine_version == ENGINE_VERSION == "8"


def test_an_entry_written_before_give_backs_existed_reads_as_a_loss() -> None:
    old = journal_pb2.JournalEntry(format=1, at=3.0)
    old.attempt_lost.CopyFrom(journal_pb2.AttemptLost(key="a", attempt=2, reason="gone"))
    row = RunEvent("run-1", 4, 3.0, "attempt_lost", old.SerializeToString(), "")
    assert decode_entry(row, {}).event == TaskLost("a", 2, "gone", given_back=False)


def test_an_entry_written_before_never_started_existed_reads_as_started() -> None:
    old = journal_pb2.JournalEntry(format=1, at=3.0)
    old.attempt_failed.CopyFrom(
        journal_pb2.AttemptFailed(
            key="a", attempt=1, failure=failure_to_proto(START_TIMEOUT), timed_out=False
        )
    )
    row = RunEvent("run-1", 4, 3.0, "attempt_failed", old.SerializeToString(), "")
    entry = decode_entry(row, {})
    assert isinstance(entry.event, TaskFailed)
    assert entry.event.never_started is False
    assert entry.event.failure.type == START_TIMEOUT.type


@pytest.mark.parametrize(
    "event",
    [
        TaskFailed("a", 1, START_TIMEOUT, never_started=True),
        TaskSucceeded("a", 2, value_of([1, 2], split=True)),
        TaskSucceeded("a", 1, value_of("v"), cache_key="t|v=|c=|key=day=1", cached=True),
        TaskSucceeded("a", 1, value_of("v"), cache_key="t|v=|c=|key=day=1"),
        TaskFailed("a", 3, FailureInfo("builtins.OSError", "flaky", retryable=False)),
        TaskLost("a", 2, "the worker stopped", given_back=True),
        TaskLost("a", 2),
        TaskStarted("a", 1, 11.25),
        TaskStarted("a", 2),
        TaskSucceeded("a", 1, value_of("v"), started_at=11.5),
        TaskFailed("a", 3, FailureInfo("builtins.OSError", "flaky"), started_at=11.75),
        TaskSkipped("a", 1, "nothing to do", started_at=12.0),
        TaskSucceeded("a", 1, value_of("v"), started_at=11.5, ended_at=12.25),
        TaskFailed("a", 3, FailureInfo("builtins.OSError", "flaky"), ended_at=12.0),
        TaskSkipped("a", 1, "nothing to do", ended_at=12.5),
    ],
)
def test_journal_entries_round_trip_through_the_store_encoding(event: Any) -> None:
    entry = JournalEntry(EVENT, 12.5, event)
    values = Values()
    row = encode_entry("run-1", 7, entry, values)
    stored = {v.id: v.data for v in values.take().values()}
    assert decode_entry(row, stored) == entry
    if isinstance(event, TaskSucceeded):  # the value is stored once, by reference
        assert row.value_id in stored and event.value.SerializeToString() not in row.body


def test_a_value_added_again_after_a_batch_was_taken_is_written_with_the_next_batch() -> None:
    """A result is added twice in a row (journal entry, task run row) and serialized
    once; the next batch still gets its row when the same value comes again after the
    last batch was taken (a retried commit, a cache hit handing out the same value)."""
    values, value = Values(), value_of([1, 2])
    first = values.add(value)
    assert values.add(value) == first and len(values.rows) == 1
    assert set(values.take()) == {first}
    assert values.add(value) == first and set(values.take()) == {first}
    other = value_of("v")
    assert values.add(other) != first and values.add(value) == first
    assert len(values.take()) == 2


@pytest.mark.parametrize(
    ("seed", "rule"), [("0f3a9c", 1), ("0f3a9c", 0), ("", 0)], ids=["now", "v7", "older"]
)
def test_a_run_start_keeps_its_jitter_seed_through_the_store_encoding(seed: str, rule: int) -> None:
    entry = JournalEntry(START, 3.0, seed=seed, delay_rule=rule)
    row = encode_entry("run-1", 0, entry, Values())
    assert decode_entry(row, {}) == entry


def test_an_assignment_with_too_many_inline_inputs_gets_references(store: Store) -> None:
    """Five 1 MiB inline results feed one reduce: more than a 4 MiB message can carry, so
    the server stores the largest ones and sends references to their identical bytes."""
    dispatch = FakeDispatch()
    manager = RunManager(store, dispatch, Clock())
    manager.register_flow(pipeline.compile())
    manager.create_run("pipeline", "", {"n": value_of(5)})
    manager.flush()
    work(manager, dispatch.submitted.pop(0))  # numbers: split into 5 elements
    manager.flush()
    big = {}
    for pending in list(dispatch.submitted):
        a = pending.assignment
        run_id, key = split_task_run_id(a.token.task_run_id)
        text = f'"{key}:' + "x" * (1 << 20) + '"'
        value = payload_pb2.Value(
            inline=payload_pb2.Payload(data=text.encode(), metadata={"encoding": "json"})
        )
        big[key] = text.encode()
        manager.handle(run_id, TaskSucceeded(key, a.token.attempt, value))
    dispatch.submitted.clear()
    manager.flush()
    (reduce,) = [p for p in dispatch.submitted if p.assignment.task_type.endswith("total")]
    msg = reduce.assignment
    assert msg.ByteSize() <= 3 << 20
    items = msg.inputs["values"].list.items
    refs = [i.value.ref for i in items if i.value.WhichOneof("kind") == "ref"]
    assert len(refs) >= 2 and len(items) == 5
    for i, item in enumerate(items):
        value = item.value
        data = (
            b"".join(store.read_payload(value.ref.payload_id))
            if value.WhichOneof("kind") == "ref"
            else value.inline.data
        )
        assert data == big[f"scale[{i}]"]
        if value.WhichOneof("kind") == "ref":
            assert value.ref.metadata["encoding"] == "json" and value.ref.size_bytes == len(data)


@task(cache_for=3600)
def cached_rows(n: int) -> list[int]:
    return list(range(n))


FUNCTIONS[cached_rows.task_type] = cached_rows.fn


@flow
def rows_whole(n: int = 3) -> int:
    return total(cached_rows(n))


@flow
def rows_mapped(n: int = 3) -> list[int]:
    return scale.map(cached_rows(n), unmapped(2))


def test_a_cached_result_stored_whole_is_no_hit_for_a_run_that_maps_over_it(
    store: Store,
) -> None:
    """The server maps over a value's elements: a result cached by a run that used it
    whole has none, so a run mapping over the same task runs it again, and its split
    result, cached in turn, serves both kinds of run. A hit on the whole one failed
    the map ("the result is not a sequence")."""
    manager = RunManager(store, dispatch := FakeDispatch(), Clock())
    manager.register_flow(rows_whole.compile())
    manager.register_flow(rows_mapped.compile())

    def run(flow_name: str) -> tuple[Any, dict[str, TaskRunState]]:
        row, _ = manager.create_run(flow_name, "", {})
        drain(manager, dispatch)
        final = store.get_flow_run(row.id)
        assert FlowRunState(final.state) is FlowRunState.SUCCESS, final.message
        states = {t.key: TaskRunState(t.state) for t in store.task_runs(row.id)}
        return decode_value(flow_result(store, final)), states

    result, states = run("rows_whole")
    assert (result, states["cached_rows"]) == (3, TaskRunState.SUCCESS)
    result, states = run("rows_mapped")
    assert (result, states["cached_rows"]) == ([0, 2, 4], TaskRunState.SUCCESS)  # ran again
    result, states = run("rows_mapped")
    assert (result, states["cached_rows"]) == ([0, 2, 4], TaskRunState.CACHED)
    assert run("rows_whole")[1]["cached_rows"] is TaskRunState.CACHED


def test_a_cached_value_held_by_a_dask_bridge_stays_held_and_is_a_miss_once_gone(
    store: Store,
) -> None:
    """A bridge's result that a cache entry names is not released with its run (the
    entry would serve a value no one holds); once nothing holds it (the bridge went
    away, or the entry expired and it was released), a lookup is a miss and the task
    runs again, where a hit failed every consumer with ValueUnavailable."""
    from headwater_runtime.server._dispatch import WorkerSession
    from headwater_runtime.server._exports import DaskExports

    clock = Clock()
    manager = RunManager(store, dispatch := FakeDispatch(), clock)
    manager.register_flow(rows_whole.compile())
    exports = DaskExports(send=lambda s, p: None, fail=lambda p, f: None, release_after=0.0)
    exports.watch(manager)
    sent: list[worker_pb2.ConnectResponse] = []
    bridge = WorkerSession("b", "bridge", "bridge", frozenset(), {}, 2, sent.append)
    bridge.features = frozenset({"release-values"})
    exports.connected(bridge)
    refs = iter(f"dask-{i}" for i in range(10))

    def run() -> dict[str, TaskRunState]:
        row, _ = manager.create_run("rows_whole", "", {})
        for _ in range(10):
            manager.flush()
            if not dispatch.submitted:
                break
            a = dispatch.submitted.pop(0).assignment
            run_id, key = split_task_run_id(a.token.task_run_id)
            manager.handle(run_id, TaskStarted(key, a.token.attempt))
            if key == "cached_rows":  # the bridge keeps the rows in its cluster
                held = payload_pb2.PayloadRef(payload_id=next(refs), location="dask")
                value = payload_pb2.Value(ref=held)
                exports.record(bridge, value, run_id)
            else:
                value = value_of(3)
            manager.handle(run_id, TaskSucceeded(key, a.token.attempt, value))
        manager.flush()
        assert FlowRunState(store.get_flow_run(row.id).state) is FlowRunState.SUCCESS
        return {t.key: TaskRunState(t.state) for t in store.task_runs(row.id)}

    def released() -> list[str]:
        return [
            i for m in sent if m.HasField("release_values") for i in m.release_values.payload_ids
        ]

    assert run()["cached_rows"] is TaskRunState.SUCCESS
    exports.expire(clock.now())
    assert released() == [], "the cache entry names dask-0: kept"
    assert run()["cached_rows"] is TaskRunState.CACHED
    exports.forget(bridge)  # the bridge went away: nobody holds dask-0
    assert run()["cached_rows"] is TaskRunState.SUCCESS, "a miss: it ran again"
    exports.connected(bridge)
    # dask-1 replaced dask-0 in the entry: dask-0 went (told once the bridge is back).
    assert released() == ["dask-0"]
    clock.t += 3600  # the entry naming dask-1 expires
    exports.expire(clock.now())
    assert released() == ["dask-0", "dask-1"]


def test_a_mapped_tasks_list_is_read_only_once_every_element_ended(store: Store) -> None:
    """A user trial: Client.task_result of a map still running read [None, None, None],
    like results; map_index -2 read the whole list."""
    from headwater_runtime.server._queries import NoResult

    dispatch = FakeDispatch()
    manager = RunManager(store, dispatch, Clock())
    manager.register_flow(pipeline.compile())
    row, _ = manager.create_run("pipeline", "", {"n": value_of(3)})
    manager.flush()
    work(manager, dispatch.submitted.pop(0))  # numbers: the map is made
    manager.flush()
    with pytest.raises(NoResult) as going:
        task_result(store, row.id, "scale")
    assert str(going.value) == (
        "task 'scale' has no result yet: 3 of its 3 elements have not ended (scale[0]: SCHEDULED)"
    )
    with pytest.raises(NotFound, match="task 'scale' has no element -2"):
        task_result(store, row.id, "scale", -2)
    drain(manager, dispatch)
    value, _ = task_result(store, row.id, "scale")
    assert decode_value(value) == [0, 10, 20]
