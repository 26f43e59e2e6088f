"""The scheduler: stores schedules and creates their flow runs when they are due.

Exactly once per fire time, across crashes: each fire creates its run with an
idempotency key derived from (schedule id, fire time), in the same transaction that
advances the schedule's ``next_run_at`` (``Store.create_flow_run(row, schedule)``).
A server killed before that commit fires the same time again after a restart (no
skip); one killed after it finds the schedule already advanced (no double), and even
a stale ``next_run_at`` would only find the existing run under the same key.

ServerCore calls ``fire_due()`` from its timer loop; this module holds no gRPC code.
Fire-time arithmetic lives in ``_schedule_times``.

The state here (the enabled schedules and their next fire times) is the event loop's;
the store work is not. ``fire_due`` hands each fire to ``launch``, which creates its run
and then calls ``fired`` (or ``skip``): on a server that is ``ScheduleRequests.fire``
(server/_schedule_requests.py), which stores the run on the writer thread (after having
a worker build its graph when its values need one: a value-dependent flow,
docs/flows.md); by default, ``fire_here`` creates it in the calling thread. A schedule
does not fire again while one of its fires is under way. Creating, pausing and deleting
come in steps for the same reason: ``check``/``toggled`` (store reads),
``row_of`` (what to store), ``remember``/``forget`` (the loop's state); ``create``,
``set_enabled`` and ``delete`` do all of it in the calling thread.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping

from headwater.v1 import payload_pb2, run_pb2
from headwater.wire import (
    GraphBuildNeeded,
    ParameterError,
    check_name,
    fire_key,
    fire_text,
    seconds,
    timestamp,
)
from headwater_runtime.engine import Clock
from headwater_runtime.store import Conflict, NotFound, ScheduleRow, Store

from ._params import check_refs, param_payload_ids
from ._runs import RunManager
from ._schedule_times import (
    MAX_FIRES_PER_TICK,
    ScheduleError,
    Timing,
    due_fires,
    first_fire,
    make_timing,
    next_fire,
    resume_fire,
)

log = logging.getLogger("headwater.scheduler")


def timing_of(msg: run_pb2.Schedule, *, new: bool = False) -> Timing:
    """The validated timing of a Schedule message (ScheduleError when malformed);
    ``new``: one being created (a stored one keeps the rules it was created under)."""
    spec = msg.WhichOneof("spec")
    every: float | None = None
    if spec == "interval":
        every = seconds(msg.interval)
    cron = msg.cron if spec == "cron" else ""
    return make_timing(every, cron, msg.timezone, msg.catchup, new=new)


def _set_time(msg: run_pb2.Schedule, field: str, at: float) -> None:
    getattr(msg, field).CopyFrom(timestamp(at))


class Scheduler:
    """Creates, lists, pauses and fires schedules (one per server, on its event loop).

    Args:
        store: where schedules are kept.
        runs: creates the runs schedules fire.
        clock: the time source.
    """

    def __init__(self, store: Store, runs: RunManager, clock: Clock) -> None:
        self.store = store
        self.runs = runs
        self.clock = clock
        # id -> (message, timing) of enabled schedules, and the earliest next fire
        # time among them: the loop asks on every wake-up (many per second on a busy
        # server), so an idle answer costs neither a query nor a scan.
        self._active: dict[str, tuple[run_pb2.Schedule, Timing]] = {}
        #: Names whose schedule is not fired while one of that name is being stored to
        #: replace it (``hold``), and how many such replacements are under way.
        self._holding: dict[str, int] = {}
        self._next_at: float | None = None
        #: Schedules with a fire under way, and its fire time (not fired again until it
        #: is done).
        self.firing: dict[str, float] = {}
        #: Creates the run of one fire, then calls ``fired`` or ``skip``: (schedule, fire
        #: time, the schedule row advanced past that fire). The server's stores the run
        #: off the event loop (ScheduleRequests.fire).
        self.launch: Callable[[run_pb2.Schedule, float, ScheduleRow], None] = self.fire_here

    def load(self) -> None:
        """Read the enabled schedules from the store (at server start)."""
        self._active.clear()
        for row in self.store.list_schedules():
            msg = run_pb2.Schedule.FromString(row.body)
            if param_payload_ids(msg.parameters):
                # Stored by a server that recorded no references for it: record them
                # now, before a prune collects the payloads.
                self.store.put_schedule(self.row_of(msg))
            if row.enabled and row.next_run_at is not None:
                self._active[row.id] = (msg, timing_of(msg))
        self._update_next()

    @property
    def next_fire_at(self) -> float | None:
        """The earliest next fire time of an enabled schedule (None when none)."""
        return self._next_at

    def _update_next(self) -> None:
        times = (_next_at(m) for m, _ in self._active.values() if self._may_fire(m))
        self._next_at = min(times, default=None)

    # ------------------------------------------------------------------ requests

    def create(self, request: run_pb2.Schedule, built_version: str = "") -> run_pb2.Schedule:
        """Validate and store a new schedule, in this thread (see ``check``)."""
        msg = self.check(request, built_version)
        self.store.put_schedule(self.row_of(msg))
        self.remember(msg)
        return shown_message(msg)

    def check(self, request: run_pb2.Schedule, built_version: str = "") -> run_pb2.Schedule:
        """A new schedule made from a request: validated (it reads the store), not
        stored. NotFound for an unknown flow (or version), ScheduleError for bad timing,
        ParameterError for bad parameters, GraphBuildNeeded when its values need a graph
        built (the server then has a worker build one and checks against it:
        ``built_version``)."""
        if not request.flow_name:
            raise ScheduleError("flow_name is required")
        if request.name:
            try:
                check_name("a schedule's name", request.name)
            except ValueError as exc:
                raise ScheduleError(str(exc)) from None
        timing = timing_of(request, new=True)
        version, graph = self.runs.graph(request.flow_name, built_version or request.flow_version)
        self.runs.check_params(graph, version, request.parameters)
        check_refs(self.store, request.flow_name, request.parameters)  # once, not per fire
        now = round(self.clock.now(), 3)  # the anchor, on the millisecond grid of fires
        msg = run_pb2.Schedule()
        msg.CopyFrom(request)
        msg.id = uuid.uuid4().hex
        msg.timezone = timing.timezone
        if timing.cron:
            msg.cron = timing.cron
        _set_time(msg, "created_at", now)
        _set_time(msg, "next_run_at", first_fire(timing, now))
        return msg

    def list(self, flow_name: str = "") -> list[run_pb2.Schedule]:
        """Every stored schedule, paused ones included (only ``flow_name``'s if given)."""
        return [shown(r) for r in self.store.list_schedules(flow_name)]

    def delete(self, schedule_id: str) -> None:
        """Remove a schedule (NotFound when unknown), in this thread; runs it created
        are kept."""
        self.store.delete_schedule(schedule_id)
        self.forget(schedule_id)

    def set_enabled(self, schedule_id: str, enabled: bool) -> run_pb2.Schedule:
        """Pause or resume, in this thread (see ``toggled``)."""
        row, msg = self.store_toggled(schedule_id, enabled)
        if msg is None:
            return shown(row)
        self.remember(msg)
        return shown_message(msg)

    def store_toggled(
        self, schedule_id: str, enabled: bool
    ) -> tuple[ScheduleRow, run_pb2.Schedule | None]:
        """Read a schedule and store it paused or resumed (``toggled``), in one go in
        this thread (the store's writer thread on a server: read elsewhere, a delete
        between the read and the write was undone); the row read, and the schedule
        stored (None when it already was so). The loop's state is left to
        ``remember``."""
        row = self.store.get_schedule(schedule_id)
        msg = self.toggled(row, enabled)
        if msg is not None:
            self.store.put_schedule(self.row_of(msg))
        return row, msg

    def toggled(self, row: ScheduleRow, enabled: bool) -> run_pb2.Schedule | None:
        """A stored schedule paused or resumed (None when it already is). Resuming does
        not catch up the times missed while paused: the next fire is the first one
        after now."""
        msg = run_pb2.Schedule.FromString(row.body)
        if msg.enabled == enabled:
            return None
        msg.enabled = enabled
        if enabled:
            timing = timing_of(msg)
            _set_time(msg, "next_run_at", resume_fire(timing, _next_at(msg), self.clock.now()))
        return msg

    def succeeding(
        self, old: run_pb2.Schedule, new: run_pb2.Schedule, under_way: float | None
    ) -> run_pb2.Schedule:
        """``new`` (checked, not stored) made to replace ``old``, the stored schedule of
        its name: it keeps ``old``'s pause, and with the same timing (interval or cron,
        and time zone) ``old``'s anchor and next fire time, past the fire of ``old``
        under way at ``under_way`` if any (that fire still makes its run): no fire
        time is skipped or made twice. With another timing it starts from now, as a new
        schedule does."""
        msg = run_pb2.Schedule()
        msg.CopyFrom(new)
        msg.enabled = old.enabled
        before, after = timing_of(old), timing_of(new)
        if (before.every, before.cron, before.timezone) == (
            after.every,
            after.cron,
            after.timezone,
        ):
            msg.created_at.CopyFrom(old.created_at)
            next_at = _next_at(old)
            if under_way is not None and next_at <= under_way:
                next_at = next_fire(after, under_way)
            _set_time(msg, "next_run_at", next_at)
        return msg

    def hold(self, name: str) -> float | None:
        """Fire no schedule named ``name`` until ``release``: one of that name is about
        to be stored to replace it. On the loop, before the replacement is stored: a
        fire launched in between would make its run while the replacement, which keeps
        the stored next time, fired the same time again (so would the schedule a
        replacement of that name under way at once stores meanwhile). Returns the fire
        time of the enabled schedule of that name's fire under way (None when none)."""
        self._holding[name] = self._holding.get(name, 0) + 1
        self._update_next()
        for schedule_id, (msg, _) in self._active.items():
            if msg.name == name:
                return self.firing.get(schedule_id)
        return None

    def release(self, name: str) -> None:
        """A replacement of ``name`` (``hold``) was stored, or not: its schedule fires
        again (what was stored meanwhile is in ``_active`` by then)."""
        left = self._holding[name] - 1
        if left:
            self._holding[name] = left
        else:
            del self._holding[name]
        self._update_next()

    def _may_fire(self, msg: run_pb2.Schedule) -> bool:
        return msg.id not in self.firing and not (msg.name and msg.name in self._holding)

    def remember(self, msg: run_pb2.Schedule) -> None:
        """A schedule was stored as ``msg`` (new, paused or resumed): fire it from now
        on when enabled, not when paused."""
        if msg.enabled:
            self._active[msg.id] = (msg, timing_of(msg))
        else:
            self._active.pop(msg.id, None)
        self._update_next()

    def forget(self, schedule_id: str) -> None:
        """A schedule was deleted (or replaced)."""
        self._active.pop(schedule_id, None)
        self._update_next()

    @staticmethod
    def row_of(msg: run_pb2.Schedule) -> ScheduleRow:
        """The store's row of a schedule message."""
        body = msg.SerializeToString(deterministic=True)
        # The payloads its parameters reference are the schedule's as long as it is
        # (prune collected them: every fire after failed to download its parameter).
        refs = param_payload_ids(msg.parameters)
        return ScheduleRow(msg.id, msg.flow_name, body, _next_at(msg), msg.enabled, refs)

    # ------------------------------------------------------------------- firing

    def fire_due(self) -> int:
        """Launch the fires of every schedule that is due now, the earliest first, one
        at a time per schedule (the next once ``fired``: at once when ``launch`` works
        in this thread, at most MAX_FIRES_PER_TICK per schedule); returns how many were
        launched."""
        now = self.clock.now()
        if self._next_at is None or self._next_at > now:
            return 0
        launched = 0
        for msg, timing in list(self._active.values()):
            for _ in range(MAX_FIRES_PER_TICK):
                if not self._may_fire(msg) or self._active.get(msg.id, (None,))[0] is not msg:
                    break
                next_at = _next_at(msg)
                if next_at > now:
                    break
                fires, after = due_fires(timing, next_at, now)
                upcoming = fires[1] if len(fires) > 1 else after
                advanced = run_pb2.Schedule()
                advanced.CopyFrom(msg)
                _set_time(advanced, "next_run_at", upcoming)
                self.firing[msg.id] = fires[0]
                launched += 1
                self.launch(msg, fires[0], self.row_of(advanced))
        self._update_next()
        return launched

    def fire_here(self, msg: run_pb2.Schedule, fire_time: float, row: ScheduleRow) -> None:
        """``launch`` in this thread: create the run of one fire time, storing ``row``
        (the schedule advanced past it) in the same transaction; a fire that cannot
        run is skipped (``skip``)."""
        try:
            self.runs.create_run(
                msg.flow_name,
                msg.flow_version,
                _params(msg.parameters),
                fire_key(msg.id, fire_time),
                schedule=row,
            )
        except (GraphBuildNeeded, NotFound, ParameterError, Conflict) as exc:
            self.skip(msg, row, f"its fire at {fire_text(fire_time)} cannot run: {exc}")
            return
        except BaseException:
            self.firing.pop(msg.id, None)  # not advanced: fired again at the next tick
            raise
        self.fired(msg, row)

    def fired(self, msg: run_pb2.Schedule, row: ScheduleRow) -> None:
        """A fire of ``msg`` is done: its run created with ``row`` (the schedule
        advanced past it) in one transaction, or skipped. It fires again from the
        stored time, unless it was paused, resumed or deleted meanwhile (then what that
        stored stands)."""
        self.firing.pop(msg.id, None)
        active = self._active.get(msg.id)
        if active is not None and active[0] is msg:
            msg.next_run_at.CopyFrom(run_pb2.Schedule.FromString(row.body).next_run_at)
        self._update_next()

    def retry(self, msg: run_pb2.Schedule) -> None:
        """A fire failed for the server's own reasons (the store): it fires again."""
        self.firing.pop(msg.id, None)
        self._update_next()

    def skip(self, msg: run_pb2.Schedule, row: ScheduleRow, why: str) -> None:
        """A fire cannot run (the flow refuses its values, or is gone), in this
        thread: store the schedule advanced past it (``advance``), say why in the
        server log, and fire again (the next time). Skipped, not retried for ever."""
        self.skipped(msg, why)
        advance(self.store, row)
        self.fired(msg, row)

    @staticmethod
    def skipped(msg: run_pb2.Schedule, why: str) -> None:
        """Say in the server log why a fire of ``msg`` was skipped."""
        log.warning("schedule %s skipped a fire: %s", msg.id, why)


def advance(store: Store, row: ScheduleRow) -> None:
    """Store a schedule advanced past a skipped fire, unless it was deleted, paused or
    resumed meanwhile (a fire may wait long for a graph build: storing the row as it was
    brought back a schedule deleted meanwhile, resumed one paused, or put back the time
    of one paused and resumed)."""
    try:
        stored = store.get_schedule(row.id)
    except NotFound:
        return
    before, after = stored.next_run_at, row.next_run_at
    if stored.enabled and (before is None or after is None or before < after):
        store.put_schedule(row)


def identity(msg: run_pb2.Schedule) -> bytes:
    """What makes two schedules the same: all the caller chose (flow, version, timing,
    time zone, parameters, catch-up, name); not the id, the times the server sets, nor
    whether it is paused (a deploy re-creating its schedules keeps a pause an
    operator made)."""
    same = run_pb2.Schedule()
    same.CopyFrom(msg)
    for field in ("id", "enabled", "next_run_at", "created_at"):
        same.ClearField(field)
    return same.SerializeToString(deterministic=True)


def shown(row: ScheduleRow) -> run_pb2.Schedule:
    """A stored schedule as callers see it (``shown_message``)."""
    return shown_message(run_pb2.Schedule.FromString(row.body))


def shown_message(msg: run_pb2.Schedule) -> run_pb2.Schedule:
    """The schedule as callers see it: a paused one has no next run (its stored time
    passed while it was paused, and resuming fires at the first time after now)."""
    if not msg.enabled:
        msg.ClearField("next_run_at")
    return msg


def _next_at(msg: run_pb2.Schedule) -> float:
    return seconds(msg.next_run_at)


def _params(parameters: Mapping[str, payload_pb2.Value]) -> dict[str, payload_pb2.Value]:
    return {name: parameters[name] for name in parameters}
