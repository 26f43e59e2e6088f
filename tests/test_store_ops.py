"""The stores' day-two operations tables (store/_ops.py), the same tests on SQLite and
PostgreSQL: run attempts and late marks written with a commit, limits, workers and
drains, webhooks and their delivery outbox, and prune of the per-run rows."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from headwater.wire import FlowRunState
from headwater_runtime.store import (
    DeliveryCounts,
    DeliveryRow,
    DrainRow,
    FlowRunRow,
    LateRow,
    LimitRow,
    NotFound,
    RunAttemptRow,
    Store,
    WebhookRow,
    WorkerRow,
    WriteBatch,
    open_store,
)

FAILED = FlowRunState.FAILED.value
RUNNING = FlowRunState.RUNNING.value
SUCCESS = FlowRunState.SUCCESS.value


@pytest.fixture
def store(db: str) -> Iterator[Any]:
    s = open_store(db)
    yield s
    s.close()


def test_attempts_and_late_marks_are_written_with_the_commit_the_last_given_winning(
    db: str,
) -> None:
    store = open_store(db)
    store.create_flow_run(FlowRunRow("r1", "etl", "1", RUNNING, 1.0))
    batch = WriteBatch()
    # One tick can start an attempt and end it: the row is written once, as last given.
    batch.ops.run_attempts += [
        RunAttemptRow("r1", 1, 1.0, RUNNING),
        RunAttemptRow("r1", 1, 1.0, FAILED, 2.0, "boom"),
    ]
    batch.ops.late += [LateRow("r1", 1.5, "no worker"), LateRow("r1", 1.6, "waiting")]
    assert batch
    store.commit(batch)
    later = WriteBatch()
    later.ops.run_attempts.append(RunAttemptRow("r1", 2, 3.0, RUNNING))
    store.commit(later)
    store.close()

    store = open_store(db)  # it survives a reopen
    assert store.run_attempts("r1") == [
        RunAttemptRow("r1", 1, 1.0, FAILED, 2.0, "boom"),
        RunAttemptRow("r1", 2, 3.0, RUNNING),
    ]
    assert store.run_attempts("nope") == []
    assert store.late_runs(["r1", "nope"]) == {"r1": LateRow("r1", 1.6, "waiting")}
    assert store.late_runs([]) == {}
    assert store.count_flow_runs() == {RUNNING: 1}
    store.close()


def test_limits_are_set_replaced_listed_and_deleted(store: Store) -> None:
    store.put_limit(LimitRow("web", 0, 10, 1.0))
    store.put_limit(LimitRow("db", 3))
    store.put_limit(LimitRow("db", 2, 5, 60.0))
    assert store.list_limits() == [LimitRow("db", 2, 5, 60.0), LimitRow("web", 0, 10, 1.0)]
    store.delete_limit("db")
    assert store.list_limits() == [LimitRow("web", 0, 10, 1.0)]
    with pytest.raises(NotFound, match="tag 'db' has no limit"):
        store.delete_limit("db")


def test_workers_and_drains_are_kept_by_name(store: Store) -> None:
    first = WorkerRow("w", "id1", ("m.a", "m.b"), {"zone": "eu"}, 4, "1.0", "python", "h", 1.0, 2.0)
    store.put_worker(first)
    later = dataclasses.replace(first, worker_id="id2", labels={}, last_seen=9.0)
    store.put_worker(later)
    store.put_worker(dataclasses.replace(first, name="a"))
    assert store.list_workers() == [dataclasses.replace(first, name="a"), later]
    store.put_drain(DrainRow("w", False, 1.0))
    store.put_drain(DrainRow("w", True, 2.0))
    store.put_drain(DrainRow("v", False, 3.0))
    assert store.list_drains() == [DrainRow("v", False, 3.0), DrainRow("w", True, 2.0)]
    store.delete_drain("w")
    store.delete_drain("nobody")  # nothing happens
    assert store.list_drains() == [DrainRow("v", False, 3.0)]


def test_webhook_deliveries_wait_in_the_outbox_are_retried_and_given_up(store: Store) -> None:
    hook = WebhookRow("h1", "http://x/h", ("etl",), (FAILED, SUCCESS), True, "s", 5.0)
    store.put_webhook(hook)
    store.put_webhook(WebhookRow("h0", "http://y/h", created_at=1.0))
    assert store.list_webhooks() == [WebhookRow("h0", "http://y/h", created_at=1.0), hook]
    batch = WriteBatch()
    batch.ops.deliveries += [
        DeliveryRow("h1", b'{"n": 1}', 10.0, 1.0),
        DeliveryRow("h1", b'{"n": 2}', 10.0, 2.0),
        DeliveryRow("gone", b"{}", 10.0, 3.0),  # its webhook was deleted: not stored
        DeliveryRow("h0", b"{}", 20.0, 4.0),
    ]
    store.commit(batch)
    assert store.next_delivery_at() == 10.0
    # Each webhook's oldest due delivery (one webhook's backlog never hides another's)
    (first,) = store.due_deliveries(15.0, 10)
    assert (first.webhook_id, first.body) == ("h1", b'{"n": 1}')
    assert [(d.webhook_id, d.body) for d in store.due_deliveries(25.0, 10)] == [
        ("h1", b'{"n": 1}'),
        ("h0", b"{}"),
    ]
    assert store.due_deliveries(25.0, 1) == [first]
    store.delivery_done(first.id)
    (second,) = store.due_deliveries(15.0, 10)
    assert second.body == b'{"n": 2}' and first.id < second.id
    store.delivery_failed(second.id, 1, 30.0, "HTTP 500")
    assert [d.webhook_id for d in store.due_deliveries(25.0, 10)] == ["h0"]
    due = [first, second]
    assert store.delivery_counts() == {
        "h1": DeliveryCounts(1, 0, "HTTP 500"),
        "h0": DeliveryCounts(1, 0, ""),
    }
    store.delivery_failed(due[1].id, 2, None, "HTTP 503")  # given up: kept, counted
    assert store.delivery_counts()["h1"] == DeliveryCounts(0, 1, "HTTP 503")
    assert [d.webhook_id for d in store.due_deliveries(1e9, 10)] == ["h0"]
    store.delete_webhook("h0")
    assert store.next_delivery_at() is None
    assert store.delivery_counts() == {"h1": DeliveryCounts(0, 1, "HTTP 503")}
    with pytest.raises(NotFound, match="'h0' does not exist"):
        store.delete_webhook("h0")


def test_retention_deletes_the_deliveries_given_up_before_its_cut_off(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A receiver gone for good left a given-up delivery per state change for ever; a
    prune with a cut-off deletes those made before it (in batches), and keeps the ones
    still tried and the ones given up since."""
    from headwater_runtime.store import _prune

    monkeypatch.setattr(_prune, "ROW_BATCH", 2)
    store.put_webhook(WebhookRow("h1", "http://x/h", created_at=1.0))
    batch = WriteBatch()
    batch.ops.deliveries += [DeliveryRow("h1", b"{}", 10.0, at) for at in (1, 2, 3, 4, 5, 50)]
    store.commit(batch)
    (oldest,) = store.due_deliveries(1e9, 10)  # (one per webhook at a time)
    ids = list(range(oldest.id, oldest.id + 6))  # (one commit: numbered in a row)
    for delivery_id in ids[:3] + ids[5:]:  # given up: three old ones and the newest
        store.delivery_failed(delivery_id, 10, None, "HTTP 410")
    store.delivery_failed(ids[3], 3, 60.0, "HTTP 503")  # old, still tried
    assert store.delivery_counts()["h1"] == DeliveryCounts(2, 4, "HTTP 410")
    assert store.prune(20.0, now=100.0, grace=0, dry_run=True).deliveries == 3
    assert store.prune(None, now=100.0, grace=0).deliveries == 0  # no cut-off: kept
    assert store.prune(20.0, now=100.0, grace=0).deliveries == 3
    assert store.delivery_counts()["h1"] == DeliveryCounts(2, 1, "HTTP 410")


def test_prune_deletes_a_runs_attempts_and_late_mark_with_it(store: Store) -> None:
    for run_id, state, ended in (("old", SUCCESS, 1.0), ("live", RUNNING, None)):
        store.create_flow_run(FlowRunRow(run_id, "etl", "1", RUNNING, 0.5))
        batch = WriteBatch()
        batch.flow_runs[run_id] = FlowRunRow(run_id, "etl", "1", state, 0.5, ended_at=ended)
        batch.ops.run_attempts.append(RunAttemptRow(run_id, 1, 0.5, state, ended))
        batch.ops.late.append(LateRow(run_id, 0.7, "no worker"))
        store.commit(batch)
    assert store.prune(10.0, now=10.0, grace=0, dry_run=True).runs == 1
    assert store.run_attempts("old") != []
    assert store.prune(10.0, now=10.0, grace=0).runs == 1
    assert store.run_attempts("old") == [] and store.late_runs(["old"]) == {}
    assert len(store.run_attempts("live")) == 1 and set(store.late_runs(["live"])) == {"live"}


def test_a_prune_with_a_cut_off_forgets_workers_gone_since_before_it(store: Store) -> None:
    """A worker is recorded by name, and a worker started without --name is named
    host-pid: every start added a record that ``workers list`` showed for ever. A prune
    with a cut-off forgets the workers last heard from before it (a dry run counts
    them); one without (no --older-than, no retention) keeps them. Drains stay, and so
    does a drained worker's record until its drain is lifted."""

    def worker(name: str, last_seen: float) -> WorkerRow:
        return WorkerRow(name, f"id-{name}", ("etl.extract",), {}, 2, "0.1.0", "python",
                         "host", 1.0, last_seen)  # fmt: skip

    store.put_worker(worker("host-100", 5.0))
    store.put_worker(worker("host-101", 5.0))
    store.put_worker(worker("host-102", 50.0))
    store.put_drain(DrainRow("host-101", exit_when_idle=False, at=4.0))
    assert store.prune(None, now=100.0, grace=0).workers == 0
    assert store.prune(10.0, now=100.0, grace=0, dry_run=True).workers == 1
    assert [w.name for w in store.list_workers()] == ["host-100", "host-101", "host-102"]
    assert store.prune(10.0, now=100.0, grace=0).workers == 1
    # A drained worker's record stays while the drain does (listed, and liftable).
    assert [w.name for w in store.list_workers()] == ["host-101", "host-102"]
    assert [d.name for d in store.list_drains()] == ["host-101"]
    store.delete_drain("host-101")
    assert store.prune(10.0, now=100.0, grace=0).workers == 1
    assert [w.name for w in store.list_workers()] == ["host-102"]


def test_a_prune_forgets_workers_by_its_own_cut_off_without_run_retention(store: Store) -> None:
    """A server's forget_workers_after (7 days by default) forgets the workers gone for
    that long with no run retention (``workers_before``); with both cut-offs the later
    one forgets (the shorter period), and a dry run counts without deleting."""

    def worker(name: str, last_seen: float) -> WorkerRow:
        return WorkerRow(name, f"id-{name}", ("etl.extract",), {}, 2, "0.1.0", "python",
                         "host", 1.0, last_seen)  # fmt: skip

    for name, seen in (("a", 5.0), ("b", 50.0), ("c", 90.0)):
        store.put_worker(worker(name, seen))
    dry = store.pruning(None, 100.0, grace=0, dry_run=True, workers_before=60.0).run()
    assert dry.workers == 2 and len(store.list_workers()) == 3
    assert store.pruning(None, 100.0, grace=0, workers_before=10.0).run().workers == 1
    assert [w.name for w in store.list_workers()] == ["b", "c"]
    # Runs kept 80 s, workers 40 s: the workers' cut-off (60) is the later one.
    assert store.pruning(20.0, 100.0, grace=0, workers_before=60.0).run().workers == 1
    assert [w.name for w in store.list_workers()] == ["c"]
    # Runs kept 5 s, workers 40 s: the runs' cut-off (95) forgets "c" as before.
    assert store.pruning(95.0, 100.0, grace=0, workers_before=60.0).run().workers == 1
    assert store.list_workers() == []


def test_prune_deletes_a_child_run_only_with_its_parent(store: Store) -> None:
    """Retention deleted the finished children of a running parent (its subflow node
    then named a run that no longer existed); a child goes with its parent, down the
    generations."""
    family = (
        ("running", "", RUNNING, None),  # a parent still running...
        ("child", "running", SUCCESS, 1.0),  # ...its finished child...
        ("grandchild", "child", SUCCESS, 1.0),  # ...and that child's child
        ("done", "", SUCCESS, 2.0),  # a finished parent
        ("done.child", "done", SUCCESS, 1.0),  # goes with it
        ("orphan", "gone", SUCCESS, 1.0),  # its parent was pruned before: goes
    )
    for run_id, parent, state, ended in family:
        store.create_flow_run(
            FlowRunRow(run_id, "etl", "1", RUNNING, 0.5, parent_flow_run_id=parent)
        )
        batch = WriteBatch()
        batch.flow_runs[run_id] = FlowRunRow(
            run_id, "etl", "1", state, 0.5, ended_at=ended, parent_flow_run_id=parent
        )
        store.commit(batch)
    assert store.prune(10.0, now=10.0, grace=0).runs == 3
    for kept in ("running", "child", "grandchild"):
        assert store.get_flow_run(kept).id == kept
    for gone in ("done", "done.child", "orphan"):
        with pytest.raises(NotFound):
            store.get_flow_run(gone)
