"""The scheduler: stores schedules and creates their flow runs when they are due.

Exactly once per fire time, across crashes: each fire creates its run with an
idempotency key derived from (schedule id, fire time), in the same transaction that
advances the schedule's ``next_run_at`` (``Store.create_flow_run(row, schedule)``).
A server killed before that commit fires the same time again after a restart (no
skip); one killed after it finds the schedule already advanced (no double), and even
a stale ``next_run_at`` would only find the existing run under the same key.

ServerCore calls ``fire_due()`` from its timer loop; this module holds no gRPC code.
Fire-time arithmetic lives in ``_schedule_times``.

A fire whose flow needs its graph built for the schedule's values (a value-dependent
flow, docs/flows.md) is handed to ``build`` (the server core, which has a worker build
it and then calls ``fired``); the schedule does not fire again meanwhile, and waits,
not skips, while no worker can build it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping

from headwater.v1 import payload_pb2, run_pb2
from headwater.wire import GraphBuildNeeded, ParameterError, seconds, timestamp
from headwater_runtime.engine import Clock
from headwater_runtime.store import NotFound, ScheduleRow, Store

from ._params import check_refs, param_payload_ids
from ._runs import RunManager
from ._schedule_times import (
    ScheduleError,
    Timing,
    due_fires,
    fire_key,
    first_fire,
    make_timing,
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
        self._next_at: float | None = None
        #: Schedules whose due fire waits for a graph to be built (not fired meanwhile).
        self.building: set[str] = set()
        #: Has a worker build the graph of a fire, then calls ``fired`` (the core sets it):
        #: (schedule, fire time, the schedule row advanced past that fire).
        self.build: Callable[[run_pb2.Schedule, float, ScheduleRow], None] | None = None

    def load(self) -> None:
        """Read the enabled schedules from the store (at server start)."""
        self._active.clear()
        for row in self.store.list_schedules():
            msg = run_pb2.Schedule.FromString(row.body)
            if param_payload_ids(msg.parameters):
                # Stored by a server that recorded no references for it: record them
                # now, before a prune collects the payloads.
                self.store.put_schedule(self._row(msg))
            if row.enabled and row.next_run_at is not None:
                self._active[row.id] = (msg, timing_of(msg))
        self._update_next()

    @property
    def next_fire_at(self) -> float | None:
        """The earliest next fire time of an enabled schedule (None when none)."""
        return self._next_at

    def _update_next(self) -> None:
        times = (_next_at(m) for m, _ in self._active.values() if m.id not in self.building)
        self._next_at = min(times, default=None)

    # ------------------------------------------------------------------ requests

    def create(self, request: run_pb2.Schedule, built_version: str = "") -> run_pb2.Schedule:
        """Validate and store a new schedule. NotFound for an unknown flow (or
        version), ScheduleError for bad timing, ParameterError for bad parameters,
        GraphBuildNeeded when its values need a graph built (the core then has a worker
        build one and checks against it: ``built_version``)."""
        if not request.flow_name:
            raise ScheduleError("flow_name is required")
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
        self._store(msg, timing)
        return _shown(msg)

    def list(self, flow_name: str = "") -> list[run_pb2.Schedule]:
        """Every stored schedule, paused ones included (only ``flow_name``'s if given)."""
        return [
            _shown(run_pb2.Schedule.FromString(r.body))
            for r in self.store.list_schedules(flow_name)
        ]

    def delete(self, schedule_id: str) -> None:
        """Remove a schedule (NotFound when unknown); runs it created are kept."""
        self.store.delete_schedule(schedule_id)
        self._active.pop(schedule_id, None)
        self._update_next()

    def set_enabled(self, schedule_id: str, enabled: bool) -> run_pb2.Schedule:
        """Pause or resume. Resuming does not catch up the times missed while paused:
        the next fire is the first one after now."""
        msg = run_pb2.Schedule.FromString(self.store.get_schedule(schedule_id).body)
        if msg.enabled == enabled:
            return _shown(msg)
        timing = timing_of(msg)
        msg.enabled = enabled
        if enabled:
            _set_time(msg, "next_run_at", resume_fire(timing, _next_at(msg), self.clock.now()))
        self._store(msg, timing)
        return _shown(msg)

    def _store(self, msg: run_pb2.Schedule, timing: Timing) -> None:
        self.store.put_schedule(self._row(msg))
        if msg.enabled:
            self._active[msg.id] = (msg, timing)
        else:
            self._active.pop(msg.id, None)
        self._update_next()

    @staticmethod
    def _row(msg: run_pb2.Schedule) -> ScheduleRow:
        body = msg.SerializeToString(deterministic=True)
        # The payloads its parameters reference are the schedule's as long as it is
        # (prune collected them: every fire after failed to download its parameter).
        refs = param_payload_ids(msg.parameters)
        return ScheduleRow(msg.id, msg.flow_name, body, _next_at(msg), msg.enabled, refs)

    # ------------------------------------------------------------------- firing

    def fire_due(self) -> int:
        """Create the runs of every schedule that is due now; returns how many fires
        were handled (runs created, found already created, or skipped)."""
        now = self.clock.now()
        if self._next_at is None or self._next_at > now:
            return 0
        handled = 0
        for msg, timing in list(self._active.values()):
            next_at = _next_at(msg)
            if next_at > now or msg.id in self.building:
                continue
            fires, after = due_fires(timing, next_at, now)
            for i, fire_time in enumerate(fires):
                upcoming = fires[i + 1] if i + 1 < len(fires) else after
                handled += 1
                if not self._fire(msg, fire_time, upcoming):
                    break  # waits for its graph: later fires come after this one
        self._update_next()
        return handled

    def _fire(self, msg: run_pb2.Schedule, fire_time: float, upcoming: float) -> bool:
        """Create the run of one fire time, storing ``upcoming`` as the next fire time
        in the same transaction; the cached message advances only once that is done.
        False: the fire waits for its graph to be built (``build``)."""
        advanced = run_pb2.Schedule()
        advanced.CopyFrom(msg)
        _set_time(advanced, "next_run_at", upcoming)
        row = self._row(advanced)
        try:
            self.runs.create_run(
                msg.flow_name,
                msg.flow_version,
                _params(msg.parameters),
                fire_key(msg.id, fire_time),
                schedule=row,
            )
        except GraphBuildNeeded as exc:
            if self.build is not None:
                self.building.add(msg.id)
                self.build(msg, fire_time, row)
                return False
            log.warning("schedule %s skipped its fire at %s: %s", msg.id, fire_time, exc)
            self.store.put_schedule(row)
        except (NotFound, ParameterError) as exc:
            # The latest version of the flow no longer accepts these parameters (or
            # the pinned version vanished): this fire cannot run. Skip it rather than
            # retry it forever, and say why in the server log.
            log.warning("schedule %s skipped its fire at %s: %s", msg.id, fire_time, exc)
            self.store.put_schedule(row)
        msg.next_run_at.CopyFrom(advanced.next_run_at)
        return True

    def fired(self, schedule_id: str, row: ScheduleRow) -> None:
        """A fire handed to ``build`` is done (its run created with ``row``, the
        schedule advanced past it, in one transaction; or skipped): fire again."""
        self.building.discard(schedule_id)
        active = self._active.get(schedule_id)
        if active is not None:
            active[0].next_run_at.CopyFrom(run_pb2.Schedule.FromString(row.body).next_run_at)
        self._update_next()

    def skip(self, row: ScheduleRow, why: str) -> None:
        """A fire handed to ``build`` cannot run (its values do not fit the flow): store
        the schedule advanced past it, and say why in the server log."""
        log.warning("schedule %s skipped a fire: %s", row.id, why)
        self.store.put_schedule(row)
        self.fired(row.id, row)


def _shown(msg: run_pb2.Schedule) -> run_pb2.Schedule:
    """The schedule as callers see it: a paused one has no next run (its stored time
    passed while it was paused, and resuming fires at the first time after now)."""
    if not msg.enabled:
        msg.ClearField("next_run_at")
    return msg


def _next_at(msg: run_pb2.Schedule) -> float:
    return seconds(msg.next_run_at)


def _params(parameters: Mapping[str, payload_pb2.Value]) -> dict[str, payload_pb2.Value]:
    return {name: parameters[name] for name in parameters}
