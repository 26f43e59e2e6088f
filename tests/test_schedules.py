"""The scheduler on a real SQLite file with a fake clock: exactly one run per fire time
across crashes, catch-up policy, pause/resume/delete, validation."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
from test_run_manager import Clock, FakeDispatch, drain, pipeline, total, value_of

from headwater import flow
from headwater.v1 import run_pb2
from headwater.wire import FlowRunState, ParameterError, fire_key
from headwater_runtime.server._runs import RunManager
from headwater_runtime.server._schedule_times import ScheduleError
from headwater_runtime.server._schedules import Scheduler, advance
from headwater_runtime.store import FlowRunRow, NotFound, ScheduleRow, SQLiteStore


class Server:
    """The parts of a server the scheduler touches, on one database file."""

    def __init__(self, path: Path, now: float) -> None:
        self.clock = Clock()
        self.clock.t = now
        self.store = SQLiteStore(path)
        self.dispatch = FakeDispatch()
        self.runs = RunManager(self.store, self.dispatch, self.clock)
        self.scheduler = Scheduler(self.store, self.runs, self.clock)

    def start(self) -> None:
        """What ServerCore.start does: recover runs, load schedules."""
        self.runs.recover()
        self.scheduler.load()
        self.runs.flush()

    def tick(self, now: float) -> int:
        """One pass of the timer loop at ``now``."""
        self.clock.t = now
        fired = self.scheduler.fire_due()
        self.runs.flush()
        return fired

    def scheduled_runs(self, schedule_id: str) -> list[FlowRunRow]:
        rows = self.store.list_flow_runs(limit=1000)
        return sorted((r for r in rows if r.schedule_id == schedule_id), key=lambda r: r.id)

    def keys(self, schedule_id: str) -> list[str]:
        return sorted(r.idempotency_key for r in self.scheduled_runs(schedule_id))


def every(seconds: float, *, catchup: bool = False, **params: int) -> run_pb2.Schedule:
    msg = run_pb2.Schedule(
        flow_name="pipeline",
        enabled=True,
        catchup=catchup,
        parameters={k: value_of(v) for k, v in params.items()},
    )
    msg.interval.FromSeconds(int(seconds))
    return msg


def next_run_at(store: SQLiteStore, schedule_id: str) -> float | None:
    return store.get_schedule(schedule_id).next_run_at


def test_a_crash_neither_skips_nor_doubles_a_fire(tmp_path: Path) -> None:
    path = tmp_path / "hw.db"
    server = Server(path, now=1_000.0)
    server.runs.register_flow(pipeline.compile())
    sid = server.scheduler.create(every(60, n=2)).id
    assert server.tick(1_059.0) == 0
    # Fire 1060, then die before the tick that journals the run's start is committed.
    server.clock.t = 1_060.0
    assert server.scheduler.fire_due() == 1
    server.store.close()

    # Restart at 1130: 1120 was missed while down; 1180 is not due yet.
    server = Server(path, now=1_130.0)
    server.start()
    assert server.keys(sid) == [fire_key(sid, 1_060.0)]
    stale = server.store.get_schedule(sid)  # still due at 1120
    assert stale.next_run_at == 1_120.0
    assert server.tick(1_130.0) == 1
    assert next_run_at(server.store, sid) == 1_180.0
    drain(server.runs, server.dispatch)
    runs = server.scheduled_runs(sid)
    assert sorted(r.idempotency_key for r in runs) == [
        fire_key(sid, 1_060.0),
        fire_key(sid, 1_120.0),
    ]
    # Both ran to the end, the first one too although its start was never journaled.
    assert [r.state for r in runs] == [FlowRunState.SUCCESS.value] * 2
    server.store.close()

    # Even a schedule row that lost its advance would not double the fire: the run's
    # idempotency key finds the run already created.
    server = Server(path, now=1_130.0)
    server.store.put_schedule(stale)
    server.start()
    assert server.tick(1_130.0) == 1
    assert len(server.scheduled_runs(sid)) == 2
    assert next_run_at(server.store, sid) == 1_180.0
    server.store.close()


def test_after_downtime_only_the_latest_time_fires_unless_catchup(tmp_path: Path) -> None:
    path = tmp_path / "hw.db"
    server = Server(path, now=1_000.0)
    server.runs.register_flow(pipeline.compile())
    latest = server.scheduler.create(every(60, n=1)).id
    catchup = server.scheduler.create(every(60, catchup=True, n=1)).id
    server.store.close()  # down from 1000 to 1330: 1060..1300 missed

    server = Server(path, now=1_330.0)
    server.start()
    assert server.tick(1_330.0) == 6
    assert server.keys(latest) == [fire_key(latest, 1_300.0)]
    assert server.keys(catchup) == sorted(fire_key(catchup, 1_060.0 + 60 * i) for i in range(5))
    assert next_run_at(server.store, latest) == next_run_at(server.store, catchup) == 1_360.0
    server.store.close()


def test_pause_resume_and_delete(tmp_path: Path) -> None:
    server = Server(tmp_path / "hw.db", now=1_000.0)
    server.runs.register_flow(pipeline.compile())
    sid = server.scheduler.create(every(60)).id
    assert server.scheduler.next_fire_at == 1_060.0
    paused = server.scheduler.set_enabled(sid, False)
    assert not paused.enabled and server.scheduler.next_fire_at is None
    assert server.tick(1_200.0) == 0
    # Resuming does not fire the times missed while paused; the phase is kept.
    resumed = server.scheduler.set_enabled(sid, True)
    assert resumed.enabled and server.scheduler.next_fire_at == 1_240.0
    assert server.tick(1_239.0) == 0
    assert server.tick(1_240.0) == 1
    assert server.keys(sid) == [fire_key(sid, 1_240.0)]
    assert server.scheduler.next_fire_at == 1_300.0  # the timer loop's next wake-up
    assert [s.id for s in server.scheduler.list()] == [sid]
    server.scheduler.delete(sid)
    assert server.scheduler.next_fire_at is None
    assert server.tick(1_400.0) == 0
    assert server.scheduler.list() == []
    assert len(server.scheduled_runs(sid)) == 1  # its runs are kept
    with pytest.raises(NotFound, match=f"schedule '{sid}' does not exist"):
        server.scheduler.delete(sid)
    with pytest.raises(NotFound):
        server.scheduler.set_enabled(sid, True)
    server.store.close()


def test_a_schedule_created_paused_does_not_fire_until_resumed(tmp_path: Path) -> None:
    server = Server(tmp_path / "hw.db", now=1_000.0)
    server.runs.register_flow(pipeline.compile())
    msg = every(60)
    msg.enabled = False
    sid = server.scheduler.create(msg).id
    assert server.tick(5_000.0) == 0
    server.scheduler.set_enabled(sid, True)
    assert server.tick(5_040.0) == 1
    server.store.close()


def test_bad_schedules_are_refused(tmp_path: Path) -> None:
    server = Server(tmp_path / "hw.db", now=1_000.0)
    server.runs.register_flow(pipeline.compile())
    create = server.scheduler.create
    with pytest.raises(NotFound, match="flow 'nope' is not registered"):
        create(run_pb2.Schedule(flow_name="nope", cron="* * * * *"))
    with pytest.raises(NotFound, match="version '9'"):
        create(run_pb2.Schedule(flow_name="pipeline", flow_version="9", cron="* * * * *"))
    with pytest.raises(ParameterError, match="'zzz'"):
        create(every(60, zzz=1))
    with pytest.raises(ScheduleError, match="interval must be positive"):
        create(every(0))
    with pytest.raises(ScheduleError, match="interval or a cron"):
        create(run_pb2.Schedule(flow_name="pipeline"))
    with pytest.raises(ScheduleError, match="flow_name is required"):
        create(run_pb2.Schedule(cron="* * * * *"))
    assert server.store.list_schedules() == []
    server.store.close()


@flow
def no_params() -> int:
    return total([1, 2])


def test_a_fire_the_latest_flow_version_refuses_is_skipped_not_retried(tmp_path: Path) -> None:
    server = Server(tmp_path / "hw.db", now=1_000.0)
    server.runs.register_flow(pipeline.compile())
    sid = server.scheduler.create(every(60, n=2)).id
    # A new version of "pipeline" without the parameter n.
    graph = no_params.compile()
    graph.name = "pipeline"
    server.runs.register_flow(graph)
    assert server.tick(1_060.0) == 1
    assert server.scheduled_runs(sid) == []
    assert next_run_at(server.store, sid) == 1_120.0
    server.store.close()


def test_a_schedule_does_not_fire_again_while_its_fire_is_under_way(tmp_path: Path) -> None:
    """On a server a fire stores its run off the event loop (``launch``), so it ends
    after ``fire_due`` returns: until it does, the schedule is not fired again, and a
    pause meanwhile stands when it ends."""
    server = Server(tmp_path / "hw.db", now=1_000.0)
    server.runs.register_flow(pipeline.compile())
    sid = server.scheduler.create(every(60, catchup=True, n=1)).id
    launched: list[tuple[run_pb2.Schedule, float, ScheduleRow]] = []
    server.scheduler.launch = lambda msg, at, row: launched.append((msg, at, row))
    assert server.tick(1_130.0) == 1  # 1060 and 1120 are due: the first goes
    assert server.tick(1_131.0) == 0 and server.scheduler.next_fire_at is None
    msg, at, row = launched.pop()
    assert at == 1_060.0 and row.next_run_at == 1_120.0
    server.scheduler.fired(msg, row)
    assert server.scheduler.next_fire_at == 1_120.0
    assert server.tick(1_131.0) == 1  # then the second
    msg, at, row = launched.pop()
    assert (at, row.next_run_at) == (1_120.0, 1_180.0)
    server.scheduler.set_enabled(sid, False)
    server.scheduler.fired(msg, row)
    assert server.scheduler.next_fire_at is None
    assert server.tick(2_000.0) == 0 and launched == []
    server.store.close()


def test_a_skipped_fire_does_not_bring_back_a_deleted_or_paused_schedule(
    tmp_path: Path,
) -> None:
    """A fire that cannot run stores its schedule advanced past it; such a fire may have
    waited long for a graph build, and storing the row as it was resumed a schedule
    paused meanwhile (in the store: it fired again after a restart) or brought back a
    deleted one."""
    server = Server(tmp_path / "hw.db", now=1_000.0)
    server.runs.register_flow(pipeline.compile())
    sid = server.scheduler.create(every(60, n=1)).id
    advanced = dataclasses.replace(server.store.get_schedule(sid), next_run_at=1_120.0)
    advance(server.store, advanced)
    assert server.store.get_schedule(sid) == advanced
    server.scheduler.set_enabled(sid, False)
    paused = server.store.get_schedule(sid)
    advance(server.store, dataclasses.replace(advanced, next_run_at=1_180.0))
    assert server.store.get_schedule(sid) == paused and not paused.enabled
    server.scheduler.delete(sid)
    advance(server.store, advanced)
    assert server.store.list_schedules() == []
    server.store.close()


def replace(server: Server, request: run_pb2.Schedule) -> tuple[run_pb2.Schedule, str]:
    """What a server's CreateSchedule does with a named schedule (ScheduleRequests),
    in this thread: hold the schedule of that name, store the new one replacing it,
    then fire the new one from now on."""
    from headwater_runtime.server._schedule_requests import _put_unless_identical

    scheduler = server.scheduler
    under_way = scheduler.hold(request.name)
    msg = scheduler.check(request)
    existing, stored, replaced = _put_unless_identical(scheduler, msg, under_way)
    assert existing is None
    scheduler.forget(replaced)
    scheduler.remember(stored)
    scheduler.release(request.name)
    return stored, replaced


def named(name: str, seconds: float, **params: int) -> run_pb2.Schedule:
    msg = every(seconds, **params)
    msg.name = name
    return msg


def test_a_named_schedule_replaced_while_it_fires_neither_skips_nor_doubles_a_time(
    tmp_path: Path,
) -> None:
    """A deploy replaces the schedule "hourly" (same name, same timing, other
    parameters) while the old one's fire of 1060 is under way (its run not stored yet,
    the stored next time still 1060): that fire makes its run with the old parameters
    and the new schedule fires from 1120 on. Taking the stored next time alone, the new
    one fired 1060 a second time."""
    server = Server(tmp_path / "hw.db", now=1_000.0)
    server.runs.register_flow(pipeline.compile())
    old = server.scheduler.create(named("hourly", 60, n=1)).id
    launched: list[tuple[run_pb2.Schedule, float, ScheduleRow]] = []
    server.scheduler.launch = lambda msg, at, row: launched.append((msg, at, row))
    assert server.tick(1_060.0) == 1  # under way
    assert next_run_at(server.store, old) == 1_060.0

    new, replaced = replace(server, named("hourly", 60, n=2))
    assert replaced == old and new.id != old
    assert [r.id for r in server.store.list_schedules()] == [new.id]
    assert next_run_at(server.store, new.id) == 1_120.0
    server.scheduler.launch = server.scheduler.fire_here
    server.scheduler.fire_here(*launched.pop())  # the old one's fire ends
    assert [r.id for r in server.store.list_schedules()] == [new.id]  # not brought back
    assert server.tick(1_061.0) == 0
    assert server.tick(1_120.0) == 1 and server.tick(1_180.0) == 1
    drain(server.runs, server.dispatch)
    assert server.keys(old) == [fire_key(old, 1_060.0)]
    assert server.keys(new.id) == [fire_key(new.id, 1_120.0), fire_key(new.id, 1_180.0)]
    (first,) = server.scheduled_runs(old)
    assert run_pb2.FlowRun.FromString(first.parameters).parameters["n"] == value_of(1)
    for run in server.scheduled_runs(new.id):
        assert run_pb2.FlowRun.FromString(run.parameters).parameters["n"] == value_of(2)
    server.store.close()


def test_a_held_name_does_not_fire_until_released(tmp_path: Path) -> None:
    """While a replacement is being stored (off the loop on a server), no schedule of
    its name fires: a fire launched in between would make its run while the
    replacement, which keeps the stored next time, fired that time again; so would the
    schedule another replacement of that name, under way at once, stores meanwhile.
    Released when the replacement was stored or not (a refusal, a full disk), the
    schedule of that name fires again."""
    server = Server(tmp_path / "hw.db", now=1_000.0)
    scheduler = server.scheduler
    server.runs.register_flow(pipeline.compile())
    sid = scheduler.create(named("hourly", 60, n=1)).id
    other = scheduler.create(named("other", 60, n=1)).id
    assert scheduler.hold("hourly") is None and scheduler.hold("hourly") is None  # two
    assert scheduler.next_fire_at == 1_060.0  # ("other")
    assert server.tick(1_060.0) == 1 and server.keys(other) == [fire_key(other, 1_060.0)]
    scheduler.release("hourly")
    assert server.tick(1_060.0) == 0 and scheduler.next_fire_at == 1_120.0  # one left
    scheduler.release("hourly")
    assert scheduler.next_fire_at == 1_060.0
    assert server.tick(1_060.0) == 1
    assert server.keys(sid) == [fire_key(sid, 1_060.0)]
    server.store.close()


def test_a_named_schedule_keeps_its_pause_and_with_another_timing_starts_from_now(
    tmp_path: Path,
) -> None:
    server = Server(tmp_path / "hw.db", now=1_000.0)
    server.runs.register_flow(pipeline.compile())
    first = server.scheduler.create(named("hourly", 60, n=1))
    server.clock.t = 1_030.0
    same, _ = replace(server, named("hourly", 60, n=2))
    assert (same.created_at, same.next_run_at) == (first.created_at, first.next_run_at)
    server.scheduler.set_enabled(same.id, False)  # an operator pauses it
    paused, _ = replace(server, named("hourly", 60, n=3))
    assert not paused.enabled and server.tick(1_060.0) == 0
    server.scheduler.set_enabled(paused.id, True)
    other, replaced = replace(server, named("hourly", 3600, n=3))  # another timing
    assert replaced == paused.id and other.enabled
    assert (other.created_at.seconds, other.next_run_at.seconds) == (1_060, 1_060 + 3600)
    assert server.tick(1_120.0) == 0 and server.tick(4_660.0) == 1
    server.store.close()


def test_a_skipped_fire_is_logged_with_its_time_readable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's line about a fire it skipped names the fire time as a UTC time,
    as run keys do (it said "its fire at 1796450074.239", a user trial)."""
    server = Server(tmp_path / "hw.db", now=1_000.0)
    server.runs.register_flow(pipeline.compile())
    sid = server.scheduler.create(every(60, n=1)).id

    def gone(*args: object, **kwargs: object) -> None:
        raise NotFound("flow 'pipeline' does not exist")

    monkeypatch.setattr(server.runs, "create_run", gone)
    with caplog.at_level(logging.WARNING, "headwater"):
        server.tick(1_061.5)
    said = [r.getMessage() for r in caplog.records if "skipped a fire" in r.getMessage()]
    assert said == [
        f"schedule {sid} skipped a fire: its fire at 1970-01-01T00:17:40.000Z cannot run: "
        "flow 'pipeline' does not exist"
    ]
    assert server.scheduled_runs(sid) == []
    server.store.close()
