"""Reading runs for people and scripts: shared by the gRPC API and the HTTP API.

Store queries run on reader threads, payload writes (results moved out of an answer
to fit) on the writer thread; what only the event loop knows (why a task run waits)
is added on the loop. Every answer fits in one message, however large the run's
results: listings describe large results (``_previews``), and a result asked for on
its own has its large parts stored as payloads and sent by reference.
"""

from __future__ import annotations

import asyncio
import string
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from headwater.v1 import control_plane_pb2, payload_pb2, run_pb2
from headwater.wire import (
    ENCODING_KEY,
    MESSAGE_BUDGET,
    STRUCTURAL,
    TERMINAL_FLOW_STATES,
    FlowRunState,
    split_task_run_id,
    task_run_id,
    timestamp,
)
from headwater_runtime.store import (
    AuditRow,
    FlowRunRow,
    LateRow,
    LogRow,
    NotFound,
    RunAttemptRow,
)

from ._convert import flow_run_message, task_run_from_row
from ._core import ServerCore
from ._notices import drain
from ._ops_core import flow_run_extras, run_facts
from ._queries import as_one, failed_task_ids, flow_result
from ._slices import length_delimited
from ._spill import spill_value

_TERMINAL = {s.value for s in TERMINAL_FLOW_STATES}
#: Largest answer carrying one result; larger parts go by reference.
ANSWER_BUDGET = MESSAGE_BUDGET
#: Log records per page when the caller does not say.
LOG_PAGE = 1000
#: The most records one ListTaskRunLogs answer carries (page_size 0: as many as fit).
LOG_PAGE_MAX = 10_000
#: About the most bytes of log records in one answer (a client's default limit is 4 MiB).
LOG_ANSWER_BYTES = 3 << 20
#: Results moved to the store for an answer, remembered so that asking again stores
#: nothing new (by the serialized value's bytes' identity: its stored value id).
_SPILLED_KEPT = 64


class AmbiguousRunId(ValueError):
    """A run id prefix that several runs share."""


def _without_elements(value: payload_pb2.Value) -> payload_pb2.Value:
    """A result as a client decodes it: a split result's separately sent elements
    are copies of the value's parts, so an answer leaves them out."""
    copy = payload_pb2.Value()
    copy.CopyFrom(value)
    stack = [copy]
    while stack:
        item = stack.pop()
        kind = item.WhichOneof("kind")
        encoding = (
            item.inline.metadata.get(ENCODING_KEY, "")
            if kind == "inline"
            else item.ref.metadata.get(ENCODING_KEY, "")
        )
        if encoding in STRUCTURAL and kind == "inline":
            stack.extend(item.items)
        else:
            del item.items[:]
    return copy


def log_entry(log: LogRow) -> run_pb2.LogEntry:
    """A stored log record as the contract's LogEntry."""
    entry = run_pb2.LogEntry(
        task_run_id=task_run_id(log.flow_run_id, log.key),
        attempt=log.attempt,
        level=log.level,
        logger=log.logger,
        message=log.message,
    )
    entry.timestamp.CopyFrom(timestamp(log.at))
    return entry


def log_pages(rows: list[LogRow]) -> Iterator[tuple[list[run_pb2.LogEntry], int]]:
    """Log records as entries, in answers of about LOG_ANSWER_BYTES at most (one record
    more than that alone is an answer of its own), each with its last record's
    position: a page of records can be far larger than a client takes in one message
    (66 MB of one attempt's logs in one answer, a user trial)."""
    budget = LOG_ANSWER_BYTES
    page: list[run_pb2.LogEntry] = []
    size = last = 0
    for row in rows:
        entry = log_entry(row)
        length = entry.ByteSize()
        if page and size + length > budget:
            yield page, last
            page, size = [], 0
        page.append(entry)
        size += length
        last = row.seq
    if page:
        yield page, last


#: Audit entries GetFlowRun shows with a run (the latest).
AUDIT_SHOWN = 1000
#: Task runs (and journal entries) of a run whose GetFlowRun answer with its task runs
#: is made on the event loop; a larger run's is encoded on the reader thread, a task
#: run at a time (a 200,000-task run's 34 MB answer held every other client ~1 s, and
#: four at once took the server to 2.2 GB, a user trial).
VIEW_ON_LOOP = 5_000
#: The field number of GetFlowRunResponse.task_runs (encoded one by one, ``_encoded``).
_TASK_RUNS = control_plane_pb2.GetFlowRunResponse.DESCRIPTOR.fields_by_name["task_runs"].number


_Parts = tuple[payload_pb2.Value | None, list[RunAttemptRow], LateRow | None, list[str]]


def _assemble(row: FlowRunRow, parts: _Parts) -> run_pb2.FlowRun:
    result, attempts, late, failed = parts
    message = flow_run_message(row, result)
    flow_run_extras(message, attempts, late)  # run attempts, the late mark: _ops_core.py
    message.failed_task_ids.extend(failed)
    return message


def new_run_message(row: FlowRunRow) -> run_pb2.FlowRun:
    """The FlowRun of a run this call has just created: no result, its first run
    attempt, not late; nothing to read."""
    return _assemble(row, (None, [], None, []))


class RunReads:
    """Queries of runs, task runs, results and logs over a ServerCore.

    Args:
        core: the server's state.
    """

    def __init__(self, core: ServerCore) -> None:
        self.core = core
        self.store = core.store
        self.io = core.io
        self._spilled: OrderedDict[bytes, payload_pb2.Value] = OrderedDict()
        self._large = asyncio.Semaphore(1)  # large runs' encoded views (``view``)

    # ------------------------------------------------------------------ runs

    def _resolve(self, run_id: str) -> FlowRunRow:
        """A run by id, or by a prefix of its id that no other run has, in either case
        (reader thread)."""
        try:
            return self.store.get_flow_run(run_id)
        except NotFound:
            if not run_id:
                raise
            # (Ids are lowercase hex: `runs show B54E`, copied from somewhere that
            # upper-cased it, found nothing, a user trial.)
            hexadecimal = run_id.isascii() and all(c in string.hexdigits for c in run_id)
            found = self.store.flow_run_ids(run_id.lower() if hexadecimal else run_id, limit=4)
            if not found:
                raise
            if len(found) > 1:
                shown = ", ".join(found[:3])
                raise AmbiguousRunId(
                    f"flow run id prefix {run_id!r} matches several runs ({shown}"
                    f"{', ...' if len(found) > 3 else ''}): give more of the id"
                ) from None
            return self.store.get_flow_run(found[0])

    async def flow_run(self, run_id: str) -> FlowRunRow:
        """A run's row by id or unique id prefix (NotFound, AmbiguousRunId)."""
        return await self.io.read(self._resolve, run_id)

    def _parts(self, row: FlowRunRow) -> tuple[FlowRunRow, _Parts]:
        """What a run's FlowRun needs besides its row (reader thread): its result, run
        attempts, late mark and, when it failed, its failed tasks; with the row they
        go with (``as_one``: a FAILED run's is read again with them)."""
        return as_one(self.store, row, self._read_parts)

    def _read_parts(self, row: FlowRunRow) -> _Parts:
        result = flow_result(self.store, row) if row.result else None
        return (result, *run_facts(self.store, row.id), failed_task_ids(self.store, row))

    async def message(self, row: FlowRunRow) -> run_pb2.FlowRun:
        """A run as the contract's FlowRun (a large result described, not carried;
        its run attempts and late mark), read in one reader-thread call."""
        return self._said(_assemble(*await self.io.read(self._parts, row)))

    async def messages(self, rows: list[FlowRunRow]) -> list[run_pb2.FlowRun]:
        """``message`` of several runs (a page of ListFlowRuns), in one reader call."""
        parts = await self.io.read(lambda: [self._parts(row) for row in rows])
        return [self._said(_assemble(*part)) for part in parts]

    def _said(self, message: run_pb2.FlowRun) -> run_pb2.FlowRun:
        """A run this server did not resume says why in its last history entry, the
        run's message (``ServerCore.not_resumed_message``)."""
        said = self.core.not_resumed_message(message.id, message.state)
        if said is not None:
            entry = message.history.add(state=message.state, message=said)
            entry.timestamp.CopyFrom(timestamp(self.core.started_at))
        return message

    async def view(
        self, run_id: str, *, task_runs: bool = False
    ) -> tuple[FlowRunRow, run_pb2.FlowRun, list[AuditRow], list[run_pb2.TaskRun], bytes]:
        """A run by id or unique id prefix, its FlowRun, its latest audit entries
        (newest first) and, with ``task_runs``, its task runs (``task_runs`` below), in
        one reader-thread call: a client polling GetFlowRun costs one thread hand-off
        per poll, not four. With its task runs, the run is read in one snapshot of the
        store: its row and its task runs are of the same commit (read one after the
        other, a SUCCESS row could come with task runs still RUNNING). A run of more
        than VIEW_ON_LOOP task runs (and journal entries) has them encoded on the
        reader thread, one at a time, as GetFlowRunResponse.task_runs (the last item;
        the list is then empty), one such run at a time."""

        def read() -> tuple[FlowRunRow, _Parts, list[AuditRow], list[run_pb2.TaskRun]] | str:
            if not task_runs:
                row, parts = self._parts(self._resolve(run_id))
                return row, parts, self.store.audit_entries("flow_run", row.id, AUDIT_SHOWN), []
            with self.store.snapshot():
                row = self._resolve(run_id)
                if self.store.run_sizes([row.id]).get(row.id, 0) > VIEW_ON_LOOP:
                    return row.id  # (large: ``_encoded``)
                parts = self._read_parts(row)
                runs = self._task_runs(row.id)
                return row, parts, self.store.audit_entries("flow_run", row.id, AUDIT_SHOWN), runs

        found = await self.io.read(read)
        if isinstance(found, str):
            async with self._large:  # each holds all of its rows meanwhile
                # (The server's own state, on the loop: a part at a time.)
                reasons = await self.core.waiting_in_turns(found)
                return await self._encoded(found, reasons)
        row, parts, entries, runs = found
        self._with_waiting(row.id, runs)
        return row, self._said(_assemble(row, parts)), entries, runs, b""

    async def _encoded(
        self, run_id: str, reasons: Mapping[str, str]
    ) -> tuple[FlowRunRow, run_pb2.FlowRun, list[AuditRow], list[run_pb2.TaskRun], bytes]:
        """``view`` of a large run with its task runs encoded (see ``view``)."""

        def read() -> tuple[FlowRunRow, _Parts, list[AuditRow], bytes]:
            with self.store.snapshot():
                row = self.store.get_flow_run(run_id)
                parts = self._read_parts(row)
                encoded = bytearray()
                for task_run in self._task_run_messages(row.id):
                    why = reasons.get(task_run.id)
                    if why:
                        task_run.waiting = why
                    encoded += length_delimited(_TASK_RUNS, task_run.SerializeToString())
                audit = self.store.audit_entries("flow_run", row.id, AUDIT_SHOWN)
                return row, parts, audit, bytes(encoded)

        row, parts, entries, encoded = await self.io.read(read)
        return row, self._said(_assemble(row, parts)), entries, [], encoded

    def _task_runs(self, flow_run_id: str) -> list[run_pb2.TaskRun]:
        """A run's task runs with their history (failures included) and results
        (large ones described), on a reader thread."""
        return list(self._task_run_messages(flow_run_id))

    def _task_run_messages(self, flow_run_id: str) -> Iterator[run_pb2.TaskRun]:
        """``_task_runs``, one at a time."""
        history: dict[str, list[Any]] = {}
        for entry in self.store.task_run_history(flow_run_id):
            history.setdefault(entry.key, []).append(entry)
        children: dict[str, list[str]] = {}
        for child in self.store.child_flow_runs(flow_run_id):
            children.setdefault(child.parent_task_key, []).append(child.id)
        rows = self.store.task_runs(flow_run_id)
        values = self.store.get_values(r.result_id for r in rows if r.result_id)
        for r in rows:
            task_run = task_run_from_row(r, history.get(r.key, []), values)
            task_run.child_flow_run_ids.extend(children.get(r.key, ()))
            yield task_run

    async def task_runs(self, flow_run_id: str) -> list[run_pb2.TaskRun]:
        """A run's task runs, each waiting one saying why it waits (``waiting``)."""
        task_runs = await self.io.read(self._task_runs, flow_run_id)
        self._with_waiting(flow_run_id, task_runs)
        return task_runs

    def _with_waiting(self, flow_run_id: str, task_runs: list[run_pb2.TaskRun]) -> None:
        """Say why each waiting task run waits (on the loop: the server's own state)."""
        if not task_runs:
            return
        reasons = self.core.waiting(flow_run_id)
        for task_run in task_runs:
            reason = reasons.get(task_run.id)
            if reason:
                task_run.waiting = reason

    # --------------------------------------------------------------- results

    async def answer(self, value: payload_pb2.Value) -> payload_pb2.Value:
        """A result as one answer may carry it: its large parts stored as payloads and
        sent by reference (remembered, so asking again stores nothing new)."""
        value = _without_elements(value)
        if value.ByteSize() <= ANSWER_BUDGET:
            return value
        key = value.SerializeToString(deterministic=True)
        known = self._spilled.get(key)
        if known is not None:
            self._spilled.move_to_end(key)
            return known
        await self.io.write(spill_value, value, self.store, ANSWER_BUDGET)
        self._spilled[key] = value
        while len(self._spilled) > _SPILLED_KEPT:
            self._spilled.popitem(last=False)
        return value

    async def flow_result(self, run_id: str) -> payload_pb2.Value:
        """A finished run's result, fitting in one answer (NotFound when it has none)."""
        row = await self.flow_run(run_id)
        value = await self.io.read(flow_result, self.store, row) if row.result else None
        if value is None:
            raise NotFound(f"flow run {row.id!r} has no result (state {_state_name(row)})")
        await self.core.exports.readable(value)  # values still held in a Dask cluster
        return await self.answer(value)

    # ------------------------------------------------------------------ logs

    async def check_task(self, row: FlowRunRow, task_id: str, task_run: str = "") -> None:
        """NotFound unless ``task_id`` ("": any) is a task of the run's graph, and a
        task run key ``task_run`` ("": any) names one of its tasks, with an index only
        if that task is mapped: a filter by a misspelt task, or by ``noisy[0]`` of a task
        that is not mapped, would answer nothing, as if it had no logs or runs."""
        key = split_task_run_id(task_run)[1] if "/" in task_run else task_run
        node, _, index = key.partition("[")
        if not task_id and not key:
            return
        _, graph = await self.io.read(self.core.runs.graph, row.flow_name, row.flow_version)
        tasks = {t.id: t for t in graph.tasks}
        ids = list(tasks)
        shown = ", ".join(ids[:10]) + (", ..." if len(ids) > 10 else "")
        for wanted in (task_id, node):
            if wanted and wanted not in tasks:
                raise NotFound(f"flow run {row.id!r} has no task {wanted!r} (its tasks: {shown})")
        if index and not tasks[node].mapped:
            raise NotFound(
                f"task {node!r} of flow run {row.id!r} is not mapped: its task run is "
                f"{node!r}, not {key!r}"
            )
        if index and not await self.io.read(self.store.count_task_runs, row.id, key=key):
            # An element past the map's end (``speak[9]`` of three) was answered "no log
            # records", as if it had run quietly (a user trial). Before the map is made
            # (a run still going) its elements may yet come.
            made = await self.io.read(self.store.count_task_runs, row.id, task_id=node) - 1
            if made > 0 or row.state in _TERMINAL:
                elements = (
                    f"{made} elements ({node}[0] to {node}[{made - 1}])"
                    if made > 0
                    else "no elements"
                )
                raise NotFound(f"task {node!r} of flow run {row.id!r} has {elements}: no {key!r}")

    async def logs(
        self,
        flow_run_id: str,
        *,
        task_run: str = "",
        task_id: str = "",
        after: int = 0,
        limit: int = 0,
    ) -> list[LogRow]:
        """A page of a run's log records (one task run's, given its id or key; one task
        node's with its mapped children, given ``task_id``) after position ``after``."""
        key = ""
        if task_run:
            key = split_task_run_id(task_run)[1] if "/" in task_run else task_run
        return await self.io.read(
            self.store.logs, flow_run_id, key, after=after, limit=limit, task_id=task_id
        )

    async def follow_logs(
        self, flow_run_id: str, *, task_id: str = "", after: int = 0
    ) -> AsyncIterator[list[LogRow]]:
        """Pages of a run's log records: those stored after ``after``, then new ones as
        commits store them, until the run has ended and every record was read."""
        notices = self.core.notices
        logged = notices.subscribe_logs(flow_run_id)  # before the first read
        changed = notices.subscribe_runs()
        try:
            while True:
                row = await self.io.read(self.store.get_flow_run, flow_run_id)
                ended = row.state in _TERMINAL
                while True:
                    page = await self.logs(
                        flow_run_id, task_id=task_id, after=after, limit=LOG_PAGE
                    )
                    if not page:
                        break
                    after = page[-1].seq
                    yield page
                if ended:
                    return
                # Wake on new records, or on a change of the run (its last records are
                # stored with or before the commit that ends it).
                while flow_run_id not in await _first(logged, changed):
                    pass
                drain(logged, set())
        finally:
            notices.unsubscribe(logged)
            notices.unsubscribe(changed)


async def _first(*queues: asyncio.Queue[set[str]]) -> set[str]:
    """The next note of any of the queues (the others are left as they are)."""
    getters = [asyncio.ensure_future(q.get()) for q in queues]
    try:
        done, _ = await asyncio.wait(getters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for getter in getters:
            getter.cancel()
    merged: set[str] = set()
    for getter in done:
        if not getter.cancelled():
            merged |= getter.result()
    return merged


def _state_name(row: FlowRunRow) -> str:
    return FlowRunState(row.state).name


__all__ = ["ANSWER_BUDGET", "LOG_PAGE", "AmbiguousRunId", "RunReads", "log_entry"]
