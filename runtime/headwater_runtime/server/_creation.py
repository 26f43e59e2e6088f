"""Creating runs whose graph a worker may have to build, and starting subflow children.

Every path that creates a run on the server goes through ``RunCreation.create``: a
client's CreateFlowRun (by name or after registering the graph), a schedule's fire and
a subflow node's child. When the stored graph cannot serve the run's values (a
value-dependent flow built for other values, or a flow never registered), a worker
that offers the flow builds one (``_builds``), which is registered and run with the
values as the worker converted them. Without such a worker:

- a client's request fails at once (FAILED_PRECONDITION, saying which worker to start);
- a subflow node's attempt waits, with the reason in its task run's ``waiting``, and
  a schedule's fire waits, until a worker that offers the flow connects.

A pinned version (``flow_version``) is never replaced by a build: other values for a
pinned value-dependent graph are refused as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from headwater.v1 import payload_pb2
from headwater.wire import FailureInfo, FlowRunState, GraphBuildNeeded, GraphError, ParameterError
from headwater_runtime.engine import TaskFailed, TaskStarted
from headwater_runtime.store import AuditRow, Conflict, FlowRunRow, NotFound, ScheduleRow, Store

from ._access import CALLER
from ._builds import BuildUnavailable, Built, GraphBuilds, NoBuilder
from ._children import SubflowStart, subflow_event
from ._dispatch import stored_payloads
from ._gc import release_later
from ._io import to_its_end
from ._queries import flow_result
from ._result_refs import Reader, stored_problems

if TYPE_CHECKING:
    from ._core import ServerCore
    from ._dispatch import WorkerSession
    from ._runs import PreparedRun

log = logging.getLogger("headwater.server")

#: The most tasks (``GraphSpec.weight``) of a run built on the SQLite writer thread, in
#: one hop with its storing (~35 µs each here: a few ms during which no commit runs).
SMALL_RUN = 100

_STORING = "storing a new run and starting it"
#: What a creation may end in that is the request's fault, not the server's: not
#: logged as a failure when its caller went away (``to_its_end``).
_REFUSED = (GraphBuildNeeded, NotFound, ParameterError, GraphError, Conflict)

#: Work to do again once a worker that offers the flow connects.
Retry = Callable[[], Coroutine[Any, Any, None]]


class RunCreation:
    """Creates runs (building graphs on workers when needed) for a ServerCore.

    Args:
        core: the server.
        build_timeout: seconds a worker has to build a graph.
    """

    def __init__(self, core: ServerCore, build_timeout: float) -> None:
        self.core = core
        self.builds = GraphBuilds(build_timeout, core.settings.limits.max_graph_tasks)
        #: Why a subflow node's attempt waits, by (parent run id, task run key).
        self.waiting: dict[tuple[str, str], str] = {}
        # Work that waits for a worker offering a flow, by flow name.
        self._awaiting: dict[str, list[Retry]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # ---------------------------------------------------------------- creating

    async def create(
        self,
        flow_name: str,
        flow_version: str,
        parameters: Mapping[str, payload_pb2.Value],
        idempotency_key: str = "",
        trace_context: Mapping[str, str] | None = None,
        *,
        parent: tuple[str, str, int] | None = None,
        build_missing: bool = False,
        schedule: ScheduleRow | None = None,
    ) -> tuple[FlowRunRow, bool]:
        """Create and start a run (see the module docstring); durable when it returns.
        ``build_missing``: a flow that is not registered is built by a worker that
        offers it (NoBuilder when none does) rather than NOT_FOUND. ``schedule``: the
        schedule that fired the run, advanced past this fire, stored in the same
        transaction (``Store.create_flow_run``)."""
        core = self.core
        # (Only the latest version is built again for new code: a version asked for by
        # name is run as it was built.)
        offered = None if flow_version else self.offered(flow_name)
        # Built and stored by one thread, one hop fewer than building on a reader thread
        # and storing on the writer thread: a reader thread when the store takes
        # concurrent writes (PostgreSQL); the writer thread for a small graph this
        # server holds (SQLite), whose building holds up the commits only briefly. When
        # the graph must be built or looked up first, the general path below does it.
        if parent is None and (
            core.store.concurrent_writes or self._small(flow_name, flow_version)
        ):
            on = core.io.read if core.store.concurrent_writes else core.io.write
            with contextlib.suppress(GraphBuildNeeded, NotFound):
                caller = CALLER.get().name
                stored = on(
                    self._prepare_and_store,
                    caller,
                    flow_name,
                    flow_version,
                    parameters,
                    idempotency_key,
                    trace_context,
                    schedule,
                    offered,
                )
                return await to_its_end(self._adopt_when(stored), _STORING, _REFUSED)
        prepared = await self._prepare(
            flow_name,
            flow_version,
            parameters,
            idempotency_key,
            trace_context,
            parent,
            build_missing or self.has_builder(flow_name),
            schedule,
            offered,
        )
        audit = _audit(core, CALLER.get().name, prepared, schedule)

        async def store_and_adopt() -> tuple[FlowRunRow, bool]:
            try:
                row, created = await core.io.write(
                    _store_run, core.store, prepared, audit, schedule
                )
            except BaseException:
                core.runs.discard(prepared)
                raise
            return await self._adopt((prepared, row, created))

        return await to_its_end(store_and_adopt(), _STORING, _REFUSED)

    async def _adopt_when(
        self, stored: Awaitable[tuple[PreparedRun, FlowRunRow, bool]]
    ) -> tuple[FlowRunRow, bool]:
        return await self._adopt(await stored)

    def _small(self, flow_name: str, flow_version: str) -> bool:
        graph = self.core.runs.cached_graph(flow_name, flow_version)
        return graph is not None and graph.weight() <= SMALL_RUN

    def _prepare_and_store(
        self,
        caller: str,
        flow_name: str,
        flow_version: str,
        parameters: Mapping[str, payload_pb2.Value],
        idempotency_key: str,
        trace_context: Mapping[str, str] | None,
        schedule: ScheduleRow | None,
        offered: frozenset[str] | None,
    ) -> tuple[PreparedRun, FlowRunRow, bool]:
        """On a reader thread (a store with ``concurrent_writes``) or the writer
        thread (a small run): build a run and store it; GraphBuildNeeded or NotFound
        before anything is stored."""
        core = self.core
        prepared = core.runs.prepare_run(
            flow_name,
            flow_version,
            parameters,
            idempotency_key,
            trace_context,
            schedule=schedule,
            offered=offered,
        )
        audit = _audit(core, caller, prepared, schedule)
        try:
            row, created = _store_run(core.store, prepared, audit, schedule)
        except BaseException:
            core.runs.discard(prepared)
            raise
        return prepared, row, created

    async def _adopt(self, stored: tuple[PreparedRun, FlowRunRow, bool]) -> tuple[FlowRunRow, bool]:
        prepared, row, created = stored
        if created:
            # The caller gets the row as stored: adopting the run hands the row itself to
            # the run manager, which changes it as the run goes on, before each change is
            # committed (a fast run can end before the caller resumes).
            stored_row = copy.copy(row)
            self.core.runs.adopt(prepared)
            self.core.touch()
            # Let the worker streams send what adopting the run handed them (its first
            # assignments) before this call answers: their tasks start ~0.3 ms sooner.
            await asyncio.sleep(0)
            return stored_row, created
        self.core.runs.discard(prepared)
        return row, created

    async def _prepare(
        self,
        flow_name: str,
        flow_version: str,
        parameters: Mapping[str, payload_pb2.Value],
        idempotency_key: str,
        trace_context: Mapping[str, str] | None,
        parent: tuple[str, str, int] | None,
        build_missing: bool,
        schedule: ScheduleRow | None,
        offered: frozenset[str] | None,
    ) -> PreparedRun:
        core = self.core
        prepare = core.runs.prepare_run
        try:
            return await core.io.read(
                prepare, flow_name, flow_version, parameters, idempotency_key, trace_context,
                parent=parent, schedule=schedule, offered=offered,
            )  # fmt: skip
        except GraphBuildNeeded:
            if flow_version:
                raise
        except NotFound:
            if flow_version or not build_missing:
                raise
        version, converted = await self.build(flow_name, parameters)
        return await core.io.read(
            prepare, flow_name, version, converted, idempotency_key, trace_context,
            parent=parent, schedule=schedule,
        )  # fmt: skip

    def offered(self, flow_name: str) -> frozenset[str]:
        """The code digest of the flow the builder asked next offers (the worker that
        can build it connected last: after a deploy, the newest code); empty when none
        is connected."""
        sessions = self.core.dispatcher.sessions.values()
        builders = self.builds.builders(sessions, flow_name)
        return frozenset({builders[0].flows[flow_name]}) if builders else frozenset()

    def has_builder(self, flow_name: str) -> bool:
        """Whether a connected worker can build the flow's graph now."""
        return bool(self.builds.builders(self.core.dispatcher.sessions.values(), flow_name))

    async def build(
        self, flow_name: str, parameters: Mapping[str, payload_pb2.Value]
    ) -> tuple[str, dict[str, payload_pb2.Value]]:
        """Have a worker build the flow's graph for these values and register it: the
        stored version and the values as the worker converted them."""
        sessions = self.core.dispatcher.sessions.values()
        built = await self.builds.build(sessions, flow_name, parameters)
        if built.restricted_to is not None:
            await self._check_built_refs(built, parameters)
        version, _ = await self.core.register_flow(built.graph)
        log.info("worker %s built flow %s as version %s", built.worker, flow_name, version)
        return version, built.parameters

    async def _check_built_refs(self, built: Built, given: Mapping[str, payload_pb2.Value]) -> None:
        """GraphError when a worker-only builder's converted parameters reference a
        payload it may not read (besides its uploads and its held attempts' inputs, the
        payloads of the values it was given), one not stored, or one with another size
        or hash: as for a result (server/_result_refs.py)."""
        assert built.restricted_to is not None
        core = self.core
        allowed = core.dispatcher.held_inputs(built.restricted_to)
        reader = Reader(built.restricted_to, allowed | stored_payloads(given.values()))
        by_name = {(name, 0): value for name, value in built.parameters.items()}
        problems = await core.io.read(stored_problems, core.store, {}, by_name, reader)
        for (name, _), said in sorted(problems.items()):
            raise GraphError(
                f"worker {built.worker!r} converted parameter {name!r} of flow "
                f"{built.graph.name!r} into a value that {said[0][1]}"
            )

    # ---------------------------------------------------------------- waiting

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` on the loop; ``stop`` cancels it."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def await_builder(self, flow_name: str, retry: Retry) -> None:
        """Run ``retry`` once a worker that can build ``flow_name``'s graph connects."""
        self._awaiting.setdefault(flow_name, []).append(retry)

    def connected(self, session: WorkerSession) -> None:
        """A worker connected: what waited for a worker offering its flows goes on."""
        for flow_name in session.flows:
            if not self.builds.builders([session], flow_name):
                continue
            for retry in self._awaiting.pop(flow_name, []):
                self.spawn(retry())

    async def stop(self) -> None:
        """Cancel the builds and starts under way (the server stops)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---------------------------------------------------------------- subflows

    def start_subflow(self, start: SubflowStart) -> None:
        """Start the child flow run of a dispatched subflow node (after the commit)."""
        self.spawn(self._start_subflow(start))

    async def _start_subflow(self, start: SubflowStart) -> None:
        core, runs = self.core, self.core.runs
        where = (start.parent_id, start.key)
        if not runs.parent_running(start.parent_id, start.key, start.attempt):
            self.waiting.pop(where, None)
            return
        try:
            row, created = await self._child(start)
        except NoBuilder as exc:
            self.waiting[where] = (
                f"waiting for a worker that offers flow {start.flow_name!r} to build its "
                f"graph for the subflow's parameter values ({exc.flow_name!r} is not offered "
                "by any connected worker: start one with the flow's module)"
            )
            self.await_builder(start.flow_name, lambda: self._start_subflow(start))
            return
        except (ParameterError, GraphError, NotFound, Conflict, BuildUnavailable) as exc:
            self.waiting.pop(where, None)
            failure = FailureInfo(
                type=f"headwater.{type(exc).__name__}",
                message=f"could not start subflow {start.flow_name!r}: {exc}",
                retryable=isinstance(exc, BuildUnavailable),
            )
            runs.handle(start.parent_id, TaskFailed(start.key, start.attempt, failure))
            core.touch()
            return
        self.waiting.pop(where, None)
        if runs.parent_running(start.parent_id, start.key, start.attempt):
            runs.handle(start.parent_id, TaskStarted(start.key, start.attempt))
            if not created and FlowRunState(row.state).is_terminal:
                # Started before a restart and ended since: report how it ended.
                result = await core.io.read(flow_result, core.store, row)
                event = subflow_event(row, result, core.settings.limits)
                runs.handle(start.parent_id, event)
        core.touch()

    async def _child(self, start: SubflowStart) -> tuple[FlowRunRow, bool]:
        """The child run of a subflow node's attempt: the one created before (a
        restart repeats the start), or a new one."""
        core = self.core
        for row in await core.io.read(core.store.child_flow_runs, start.parent_id):
            if row.idempotency_key == start.idempotency_key:
                return row, False
        return await self.create(
            start.flow_name,
            start.flow_version,
            start.parameters,
            start.idempotency_key,
            start.trace_context,
            parent=(start.parent_id, start.key, start.attempt),
            build_missing=True,
        )

    def reasons(self, flow_run_id: str) -> dict[str, Any]:
        """Why subflow nodes of a run wait, by task run key."""
        return {key: why for (run_id, key), why in self.waiting.items() if run_id == flow_run_id}


__all__ = ["RunCreation"]


def _audit(
    core: ServerCore, caller: str, prepared: PreparedRun, schedule: ScheduleRow | None
) -> AuditRow | None:
    """Who created the run: stored with it, in the same transaction (none for a
    schedule's fire: the run records its schedule, whose creation is audited)."""
    if schedule is not None:
        return None
    row = prepared.row
    detail = f"{row.flow_name}:{row.flow_version}"
    return AuditRow(core.clock.now(), caller, "run", "flow_run", row.id, detail)


def _store_run(
    store: Store, prepared: PreparedRun, audit: AuditRow | None, schedule: ScheduleRow | None
) -> tuple[FlowRunRow, bool]:
    """Store a prepared run (its row, start, audit entry and the schedule that fired it
    in one transaction), then let go of its batch's rows (a large run's on the
    releasing thread, not the event loop's to free: ``release_later``)."""
    try:
        return store.create_flow_run(prepared.row, schedule, prepared.batch, audit)
    finally:
        release_later(prepared.batch.take_rows())
