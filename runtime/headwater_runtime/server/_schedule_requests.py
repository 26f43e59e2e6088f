"""Schedules on a server: requests and fires, with the store work off the event loop.

The scheduler (``_schedules``) keeps the loop's state: which schedules are enabled and
when each fires next. What reads or writes the store runs on the store's threads
(``StoreIO``): a request's checks on a reader thread, its write on the writer thread
(after the writes before it; a pause or resume reads the schedule there too), and only
then the scheduler's state changes, on the loop.
A fire creates its run through ``RunCreation.create``, as a client's CreateFlowRun does:
a large scheduled flow is built and stored without holding up the loop (it ran on the
loop, stalling every client and worker for as long as the run took to store, and
waiting there for the writer thread's transaction to end).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from headwater.v1 import run_pb2
from headwater.wire import GraphBuildNeeded, GraphError, ParameterError, fire_key, fire_text
from headwater_runtime.store import Conflict, NotFound, ScheduleRow, Store

from ._builds import BuildUnavailable, NoBuilder
from ._io import to_its_end
from ._schedules import Scheduler, advance, identity, shown, shown_message

if TYPE_CHECKING:
    from ._core import ServerCore

log = logging.getLogger("headwater.scheduler")

#: Seconds before a fire that failed for the server's own reasons (the store) is tried
#: again.
FIRE_RETRY = 1.0


def _put_unless_identical(
    scheduler: Scheduler, msg: run_pb2.Schedule, under_way: float | None
) -> tuple[ScheduleRow | None, run_pb2.Schedule, str]:
    """On the writer thread: the stored schedule identical to ``msg`` (``identity``),
    else None once ``msg`` is stored; then also the schedule stored (``msg``, or what
    replaced the schedule of its name: ``Scheduler.succeeding``, given the fire time
    ``under_way`` of that schedule's fire under way) and the id of the one it replaced
    (""). Conflict when the name is another flow's schedule's."""
    store = scheduler.store
    same = identity(msg)
    for row in store.list_schedules(msg.flow_name):
        if identity(run_pb2.Schedule.FromString(row.body)) == same:
            return row, msg, ""
    replaced = ""
    if msg.name:
        for row in store.list_schedules():
            old = run_pb2.Schedule.FromString(row.body)
            if old.name != msg.name:
                continue
            if old.flow_name != msg.flow_name:
                raise Conflict(
                    f"schedule name {msg.name!r} is taken by schedule {old.id} of flow "
                    f"{old.flow_name!r}: delete that schedule or choose another name"
                )
            msg, replaced = scheduler.succeeding(old, msg, under_way), old.id
            break
    store.put_schedule(scheduler.row_of(msg), replaces=replaced)
    return None, msg, replaced


class AmbiguousScheduleId(ValueError):
    """A schedule id prefix that several schedules share."""


class ScheduleRequests:
    """Creates, pauses, resumes and deletes schedules, and fires them, for a server.

    Args:
        core: the server.
    """

    def __init__(self, core: ServerCore) -> None:
        self.core = core
        self.scheduler = core.schedules
        self.scheduler.launch = self.fire

    async def create(self, request: run_pb2.Schedule) -> tuple[run_pb2.Schedule, bool, str]:
        """Create a schedule; one whose values need a graph built (a value-dependent
        flow) is checked by having a worker build it, and keeps the converted values.
        Returns it, True and the id of the schedule of the same name (and flow) it
        replaced ("" when none: ``Scheduler.succeeding``); or, when an identical
        schedule exists (``identity``), that one as it is (paused or not), False and "":
        a deploy script run twice made two schedules, and every fire ran the flow
        twice."""
        core, creation = self.core, self.core.creation
        try:
            msg = await core.io.read(self.scheduler.check, request)
        except GraphBuildNeeded:
            if request.flow_version:
                raise
            msg = await self._check_built(request)
        except NotFound:
            if request.flow_version or not creation.has_builder(request.flow_name):
                raise
            msg = await self._check_built(request)
        existing, stored, replaced = await to_its_end(self._store(msg), "creating a schedule")
        if existing is not None:
            return shown(existing), False, ""
        return shown_message(stored), True, replaced

    async def _store(
        self, msg: run_pb2.Schedule
    ) -> tuple[ScheduleRow | None, run_pb2.Schedule, str]:
        """Store a schedule, then fire it (or not, when paused) from now on: both, even
        when the caller goes away meanwhile (``to_its_end``). An identical schedule
        stored already is returned instead (looked up and stored in one call on the
        writer thread, so two identical creates at once make one). The schedule of the
        same name, if any, is not fired meanwhile (``Scheduler.hold``) and is replaced
        in the same transaction."""
        scheduler = self.scheduler
        under_way = scheduler.hold(msg.name) if msg.name else None
        try:
            existing, stored, replaced = await self.core.io.write(
                _put_unless_identical, scheduler, msg, under_way
            )
            if existing is None:
                if replaced:
                    scheduler.forget(replaced)
                scheduler.remember(stored)
        finally:
            if msg.name:
                scheduler.release(msg.name)
            self.core.touch()  # the timer loop re-reads the next fire time
        return existing, stored, replaced

    async def _check_built(self, request: run_pb2.Schedule) -> run_pb2.Schedule:
        given = {name: request.parameters[name] for name in request.parameters}
        version, converted = await self.core.creation.build(request.flow_name, given)
        checked = run_pb2.Schedule()
        checked.CopyFrom(request)
        checked.ClearField("parameters")
        for name, value in converted.items():
            checked.parameters[name].CopyFrom(value)
        return await self.core.io.read(self.scheduler.check, checked, version)

    async def resolve(self, schedule_id: str) -> str:
        """The id of the schedule with this id, this name, or this unique prefix of its
        id (in any case), as the CLI and a run's HTTP routes take it; NotFound or
        AmbiguousScheduleId (naming the matches) otherwise."""
        return await self.core.io.read(_resolve, self.core.store, schedule_id)

    async def filter_id(self, schedule_id: str) -> str:
        """The schedule id a listing of runs filters by: ``resolve``'s, or the id as
        given when no schedule has it (a deleted schedule's runs are still listed by
        its whole id); AmbiguousScheduleId as ``resolve``."""
        try:
            return await self.resolve(schedule_id)
        except NotFound:
            return schedule_id.lower()  # (ids are lower-case hex)

    async def delete(self, schedule_id: str) -> None:
        """Delete a schedule (NotFound when unknown); the runs it created are kept."""

        async def delete() -> None:
            await self.core.io.write(self.core.store.delete_schedule, schedule_id)
            self.scheduler.forget(schedule_id)
            self.core.touch()

        await to_its_end(delete(), "deleting a schedule", (NotFound,))

    async def set_enabled(self, schedule_id: str, enabled: bool) -> run_pb2.Schedule:
        """Pause or resume a schedule (NotFound when unknown); see
        ``Scheduler.toggled``."""
        core, scheduler = self.core, self.scheduler

        async def toggled() -> run_pb2.Schedule:
            # Read and written in one go on the writer thread, after the writes before.
            row, msg = await core.io.write(scheduler.store_toggled, schedule_id, enabled)
            if msg is None:
                return shown(row)
            scheduler.remember(msg)
            core.touch()  # the timer loop re-reads the next fire time
            return shown_message(msg)

        return await to_its_end(toggled(), "pausing or resuming a schedule", (NotFound,))

    # ------------------------------------------------------------------- fires

    def fire(self, msg: run_pb2.Schedule, fire_time: float, row: ScheduleRow) -> None:
        """``Scheduler.launch``: create the run of one fire (``row``: the schedule
        advanced past it, stored in the same transaction as the run)."""
        self.core.creation.spawn(self._fire(msg, fire_time, row))

    async def _fire(self, msg: run_pb2.Schedule, fire_time: float, row: ScheduleRow) -> None:
        core, creation, scheduler = self.core, self.core.creation, self.scheduler
        params = {name: msg.parameters[name] for name in msg.parameters}
        key = fire_key(msg.id, fire_time)
        try:
            try:
                await creation.create(msg.flow_name, msg.flow_version, params, key, schedule=row)
            except GraphBuildNeeded:
                # A value-dependent flow: a worker builds its graph for these values
                # (even for a pinned version, whose graph was built for other ones).
                version, converted = await creation.build(msg.flow_name, params)
                await creation.create(msg.flow_name, version, converted, key, schedule=row)
        except NoBuilder as exc:
            log.warning("schedule %s waits to fire at %s: %s", msg.id, fire_time, exc)
            creation.await_builder(msg.flow_name, lambda: self._fire(msg, fire_time, row))
            return
        except BuildUnavailable as exc:
            # The worker left or was slow: ask again a moment later (at once, a builder
            # that kept leaving as soon as it was asked had the scheduler spin).
            self._failed(msg, fire_time, exc)
            return
        except (ParameterError, GraphError, NotFound, Conflict) as exc:
            # The latest version of the flow no longer accepts these values (or the
            # pinned version vanished): this fire cannot run. Skipped, not retried
            # for ever; the server log says why.
            scheduler.skipped(msg, f"its fire at {fire_text(fire_time)} cannot run: {exc}")
            try:
                await core.io.write(advance, core.store, row)
            except Exception as store_exc:
                self._failed(msg, fire_time, store_exc)
                return
        except Exception as exc:  # the store's trouble (disk full): the same fire later
            self._failed(msg, fire_time, exc)
            return
        scheduler.fired(msg, row)
        core.touch()

    def _failed(self, msg: run_pb2.Schedule, fire_time: float, exc: Exception) -> None:
        log.warning(
            "schedule %s could not fire at %s (%s); trying again in %gs",
            msg.id,
            fire_time,
            exc,
            FIRE_RETRY,
        )

        def again() -> None:
            self.scheduler.retry(msg)
            self.core.touch()

        asyncio.get_running_loop().call_later(FIRE_RETRY, again)


def _resolve(store: Store, schedule_id: str) -> str:
    try:
        return store.get_schedule(schedule_id).id
    except NotFound:
        rows = store.list_schedules()
        for row in rows:  # (a name: few schedules have one, and parsing is cheap)
            if schedule_id and run_pb2.Schedule.FromString(row.body).name == schedule_id:
                return row.id
        prefix = schedule_id.lower()
        found = [r.id for r in rows if prefix and r.id.startswith(prefix)]
        if len(found) == 1:
            return found[0]
        if not found:
            raise
        shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
        raise AmbiguousScheduleId(
            f"schedule id prefix {schedule_id!r} matches several schedules ({shown}): give "
            "more of the id"
        ) from None


__all__ = ["AmbiguousScheduleId", "ScheduleRequests"]
