"""Retention of value-dependent builds (store/_builds.py), on both stores: a prune with
a cut-off deletes the builds (``VERSION@DIGEST12``) no run and no schedule uses and
none has used since the cut-off, keeps every other flow version, and a run or schedule
is never stored naming a build a prune deleted."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from test_run_manager import Clock, FakeDispatch
from test_value_dependent_server import built, sized, sized_symbolic

from headwater.v1 import payload_pb2, run_pb2
from headwater.wire import FlowRunState, is_build_version
from headwater_runtime.server import RunManager
from headwater_runtime.store import NotFound, ScheduleRow, Store, open_store

HOUR = 3600.0


def register(manager: RunManager, n: int) -> tuple[str, dict[str, payload_pb2.Value]]:
    msg, values = built(sized, n=n)
    version, _ = manager.register_flow(msg)
    assert is_build_version(version)
    return version, values


def schedule_of(version: str) -> ScheduleRow:
    msg = run_pb2.Schedule(id=f"s-{version}", flow_name="sized", flow_version=version)
    msg.interval.FromSeconds(3600)
    return ScheduleRow(msg.id, "sized", msg.SerializeToString(), None, False)


def versions(store: Store) -> set[str]:
    return {v for name, vs in store.list_flows() for v in vs if name == "sized"}


@pytest.fixture
def world(db: str) -> Any:
    clock = Clock()
    store = open_store(db, clock=clock.now)
    manager = RunManager(store, FakeDispatch(), clock)
    yield clock, store, manager
    store.close()


def test_a_prune_deletes_the_builds_nothing_uses(world: Any) -> None:
    clock, store, manager = world
    numbered, _ = manager.register_flow(sized_symbolic.compile())
    ended, ended_values = register(manager, 1)
    running, running_values = register(manager, 2)
    scheduled, _ = register(manager, 3)
    unused, _ = register(manager, 4)
    done, _ = manager.create_run("sized", ended, ended_values)
    manager.cancel(done.id, "over")
    manager.flush()
    assert store.get_flow_run(done.id).state == FlowRunState.CANCELLED.value
    live, _ = manager.create_run("sized", running, running_values)
    manager.flush()
    store.put_schedule(schedule_of(scheduled))
    clock.t += HOUR
    # Registered again since the cut-off: used, though no run has it yet.
    fresh, _ = register(manager, 5)
    clock.t += HOUR
    again, _ = register(manager, 5)
    assert again == fresh
    cut_off = clock.now() - 60  # after every registration but the fifth build's second

    dry = store.prune(cut_off, clock.now(), grace=0, dry_run=True)
    assert (dry.runs, dry.builds) == (1, 2), dry
    assert len(versions(store)) == 6
    report = store.prune(cut_off, clock.now(), grace=0)
    assert (report.runs, report.builds) == (1, 2), report
    assert versions(store) == {numbered, running, scheduled, fresh}
    with pytest.raises(NotFound, match=r"within the run retention period is deleted"):
        store.get_flow("sized", unused)
    # What keeps the others still does: a second prune deletes nothing more.
    assert store.prune(cut_off, clock.now(), grace=0).builds == 0
    assert store.get_flow_run(live.id).state == FlowRunState.RUNNING.value


def test_no_run_or_schedule_is_stored_with_a_deleted_build(world: Any) -> None:
    """The server still has the graph in memory (a ``headwater prune`` beside it, or
    its own prune not done yet): the store refuses the run, and stores nothing."""
    clock, store, manager = world
    version, values = register(manager, 2)
    clock.t += HOUR
    assert store.prune(clock.now() - 60, clock.now(), grace=0).builds == 1
    assert manager.cached_graph("sized", version) is not None
    with pytest.raises(NotFound, match=r"version '@[0-9a-f]{12}' is not registered: a build"):
        manager.create_run("sized", version, values)
    assert store.list_flow_runs() == []
    with pytest.raises(NotFound, match="is not registered: a build"):
        store.put_schedule(schedule_of(version))
    assert store.list_schedules() == []
    manager.forget_graphs([("sized", version)])
    assert manager.cached_graph("sized", version) is None
    # The flow's code registers it again: runs as before.
    assert register(manager, 2)[0] == version
    row, created = manager.create_run("sized", version, values)
    assert created and store.get_flow_run(row.id).flow_version == version


def test_a_run_created_while_a_prune_looks_keeps_its_build(world: Any) -> None:
    """The race the protocol closes: the prune has read which builds are in use, then a
    run is stored with an old build, then the prune deletes. Storing the run marked the
    build used, so the delete (which checks that mark again) leaves it."""
    clock, store, manager = world
    version, values = register(manager, 2)
    clock.t += HOUR
    pruning = store.pruning(clock.now() - 60, clock.now(), grace=0)
    in_use = pruning._db.read(pruning._builds_in_use)
    assert in_use is not None and ("sized", version) not in in_use
    row, _ = manager.create_run("sized", version, values)  # between the read and the delete
    manager.flush()
    pruning._db.write(lambda conn: pruning._delete_builds(conn, in_use, [("", "")]))
    assert pruning.builds_deleted == []
    assert store.get_flow("sized", version).version == version
    assert store.get_flow_run(row.id).flow_version == version


def test_without_a_cut_off_no_build_goes(world: Any) -> None:
    clock, store, manager = world
    version, _ = register(manager, 2)
    clock.t += 1_000 * HOUR
    report = store.prune(None, clock.now(), grace=0)
    assert report.builds == 0 and version in versions(store)


def test_many_builds_go_in_batches(world: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from headwater_runtime.store import _prune

    monkeypatch.setattr(_prune, "ROW_BATCH", 3)
    clock, store, manager = world
    built_versions = [register(manager, n)[0] for n in range(1, 9)]
    kept = built_versions[4]
    store.put_schedule(schedule_of(kept))
    clock.t += HOUR
    pruning = store.pruning(clock.now() - 60, clock.now(), grace=0)
    report = pruning.run()
    assert report.builds == 7
    assert sorted(pruning.builds_deleted) == sorted(
        ("sized", v) for v in built_versions if v != kept
    )
    assert versions(store) == {kept}


def test_a_servers_prune_lets_go_of_the_graphs_it_deleted(db: str) -> None:
    """The server's own prune: the graphs of the builds it deleted leave its memory,
    and a run pinned to one is refused (NotFound), not run from the cache."""
    from test_durability import served

    store = open_store(db)

    async def scenario() -> None:
        async with served(store) as running:
            core = running.core
            msg, values = built(sized, n=2)
            version, _ = await core.register_flow(msg)
            assert core.runs.cached_graph("sized", version) is not None
            await asyncio.sleep(0.05)
            report = await core.prune(0.01, grace=0)
            assert report.builds == 1
            assert core.runs.cached_graph("sized", version) is None
            with pytest.raises(NotFound, match="is not registered: a build"):
                await core.create_run("sized", version, values)

    try:
        asyncio.run(scenario())
    finally:
        store.close()
