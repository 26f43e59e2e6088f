"""Values held by Dask bridge workers, and exporting them to other workers.

A Dask bridge worker reports results as ``PayloadRef(location="dask", payload_id=...)``:
the value stays in its Dask cluster. An assignment sent to that same bridge carries the
ref as is (the bridge hands the future to Dask). Before an assignment whose inputs hold
such a ref goes to *another* worker, the owner is asked to export it (``ExportValue``);
its answer (``ValueExported``: an ordinary inline value or control-plane ref) replaces
the ref in the assignment, and is remembered for later consumers. Then the assignment
is sent. Results a client asks for (``readable``) are exported the same way. If the
owner is gone (or cannot export), the attempt fails: re-running the upstream task to
rebuild the value is not implemented.

Releasing (to bridges whose Hello lists "release-values"): a run's values are let go
of ``release_after`` seconds after the run ends (a retry in that time keeps them),
except the values in its result, which go when the run is pruned; a value a cache
entry points at stays until the entry expires.

Across a restart (or a change of leader): each Dask ref a bridge reports is stored with
its holder (``headwater.holder``, the bridge's worker id, prefixed with its credential's
name when the server checks credentials: ``WorkerSession.holder``; added here), so the runs a
restarted server resumes know who holds their values (``recover``), and use them once
the bridge (the same process) reconnects. A bridge's first session with a server
process is told, once the runs are resumed, to let go of everything else it held
(``ReleaseValues.all`` with ``keep``): values of finished runs, results included, which
this server has no record of.

Bookkeeping only: sending and failing go through the callbacks given.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from headwater.v1 import payload_pb2, worker_pb2
from headwater.wire import (
    DASK_LOCATION,
    HOLDER_KEY,
    RELEASE_VALUES,
    UNEXPORTABLE_KEY,
    FailureInfo,
    FlowRunState,
    cut_text,
)

from ._assignments import PendingAssignment
from ._dispatch import WorkerSession
from ._result_refs import EXPORT
from ._values import to_result_value

if TYPE_CHECKING:
    from headwater_runtime.engine import FlowRunEngine
    from headwater_runtime.store import FlowRunRow

    from ._runs import RunManager

#: Longest a client's request waits for a bridge to export a result (seconds).
READ_TIMEOUT = 60.0
#: Default for how long a finished run's values stay held (``ServerSettings``).
RELEASE_AFTER = 300.0
#: Most payload ids in one ReleaseValues message (~40 bytes each).
RELEASE_CHUNK = 10_000
#: Most releases kept for a bridge that is away; beyond, it is told to let go of
#: everything when it comes back (a bridge that never does costs no more than this).
UNSENT_LIMIT = 100_000


def _refs_in_value(value: payload_pb2.Value) -> Iterator[payload_pb2.PayloadRef]:
    if value.WhichOneof("kind") == "ref" and value.ref.location == DASK_LOCATION:
        yield value.ref
    for item in value.items:
        yield from _refs_in_value(item)


def _values_in_input(msg: worker_pb2.InputValue) -> Iterator[payload_pb2.Value]:
    kind = msg.WhichOneof("kind")
    if kind == "value":
        yield msg.value
    elif kind == "list":
        for item in msg.list.items:
            yield from _values_in_input(item)
    elif kind == "map":
        for entry in msg.map.entries:
            yield from _values_in_input(entry.value)


def _chunks(payload_ids: list[str]) -> list[list[str]]:
    """``payload_ids`` in lists of at most RELEASE_CHUNK (one ReleaseValues each)."""
    return [payload_ids[i : i + RELEASE_CHUNK] for i in range(0, len(payload_ids), RELEASE_CHUNK)]


def dask_ids(value: object) -> set[str]:
    """The payload ids of the Dask refs in a value (none when it is not a Value whose
    top is a Dask ref: only a bridge's own results hold them)."""
    if not isinstance(value, payload_pb2.Value) or value.WhichOneof("kind") != "ref":
        return set()
    if value.ref.location != DASK_LOCATION:
        return set()
    return {ref.payload_id for ref in _refs_in_value(value)}


def dask_values(assignment: worker_pb2.Assignment) -> list[payload_pb2.Value]:
    """Every Value of an assignment's inputs that is (or holds) a Dask ref."""
    found = []
    for name in assignment.inputs:
        for value in _values_in_input(assignment.inputs[name]):
            if any(True for _ in _refs_in_value(value)):
                found.append(value)
    return found


@dataclass(eq=False)
class _Held:
    session: WorkerSession
    pending: PendingAssignment
    waiting: set[str] = field(default_factory=set)


class DaskExports:
    """Tracks who holds which Dask value; holds assignments until their inputs are
    exported.

    Args:
        send: send an assignment to its session now (it already counts against slots).
        fail: fail a held attempt (the dispatcher must also free its slot).
        release_after: seconds a finished run's values stay held (see the module
            docstring).
    """

    def __init__(
        self,
        send: Callable[[WorkerSession, PendingAssignment], None],
        fail: Callable[[PendingAssignment, FailureInfo], None],
        release_after: float = RELEASE_AFTER,
    ) -> None:
        self._send = send
        self._fail = fail
        self.release_after = release_after
        self.owners: dict[str, str] = {}  # payload id -> its holder (WorkerSession.holder)
        self._run_of: dict[str, str] = {}  # payload id -> the flow run that made it
        self._of_run: dict[str, set[str]] = {}  # flow run id -> payload ids still held
        self._kept: dict[str, tuple[set[str], float]] = {}  # ended run -> result ids, end
        self._due: list[tuple[float, str]] = []  # (release at, flow run id), a heap
        self._ending: dict[str, float] = {}  # ended run -> when its values go
        self._pins: dict[str, tuple[set[str], float | None]] = {}  # cache key -> ids, expiry
        self._pin_due: list[tuple[float, str]] = []  # (expiry, cache key), a heap
        self._pinned: Counter[str] = Counter()  # payload id -> cache entries naming it
        self._releasing: set[str] = set()  # worker ids whose Hello lists release-values
        self._known: set[str] = set()  # worker ids that had a session with this server
        self._unsent: dict[str, list[str]] = {}  # worker id -> releases for its return
        #: While the server resumes its runs: bridges new to it wait to be told what to
        #: keep until every run's values are known (``recovered``).
        self.recovering = False
        self._greet_later: list[WorkerSession] = []
        #: Until then (a restarted server: its heartbeat timeout), an input whose
        #: holder has not reconnected yet waits for it instead of failing.
        self.await_holders_until: float | None = None
        self._ask_later: dict[str, set[str]] = {}  # away worker id -> exports to ask
        #: Holders recovered as a plain worker id (``_adopt_plain``).
        self._plain: set[str] = set()
        self._live: dict[str, WorkerSession] = {}  # worker id -> its current session
        self.exported: dict[str, payload_pb2.Value] = {}
        #: Why a value could not be exported, by payload id (its holder said so): a
        #: client reading it is told this (UNEXPORTABLE_KEY), not that its holder is gone.
        self.unexportable: dict[str, str] = {}
        self._held: list[_Held] = []
        self._asked: set[str] = set()
        self._readers: dict[str, list[asyncio.Future[None]]] = {}

    def connected(self, session: WorkerSession) -> None:
        """A worker (re)connected: a bridge keeps its values across reconnects. Exports
        asked on its previous stream (if that one has not ended yet) are asked again."""
        if session.worker_id in self._plain and session.holder != session.worker_id:
            self._adopt_plain(session)
        previous = self._live.get(session.holder)
        self._live[session.holder] = session
        self._greet(session)
        for payload_id in sorted(self._ask_later.pop(session.holder, ())):
            request = worker_pb2.ExportValue(payload_id=payload_id)  # waited for it
            session.send(worker_pb2.ConnectResponse(export_value=request))
        if previous is None or previous is session:
            return
        for payload_id in sorted(self._asked):
            if self.owners.get(payload_id) == session.holder:
                request = worker_pb2.ExportValue(payload_id=payload_id)
                session.send(worker_pb2.ConnectResponse(export_value=request))

    def _adopt_plain(self, session: WorkerSession) -> None:
        """Values a restarted server recovered with a holder stored before holders named
        the credential (a plain worker id, from a server of an earlier version) go to
        the first session of that worker id, as they did then."""
        plain, holder = session.worker_id, session.holder
        self._plain.discard(plain)
        for payload_id, owner in self.owners.items():
            if owner == plain:
                self.owners[payload_id] = holder
        asked = self._ask_later.pop(plain, None)
        if asked:
            self._ask_later.setdefault(holder, set()).update(asked)

    def _owner(self, payload_id: str) -> WorkerSession | None:
        """The connected session holding a value, if any."""
        worker_id = self.owners.get(payload_id)
        return None if worker_id is None else self._live.get(worker_id)

    def _greet(self, session: WorkerSession) -> None:
        """After a session's Welcome: a bridge new to this server process lets go of
        what it held before; one coming back gets the releases made while it was away."""
        worker_id = session.holder
        if RELEASE_VALUES not in session.features:
            return
        self._releasing.add(worker_id)
        if worker_id in self._known:
            self._tell(session, self._unsent.pop(worker_id, []))
        elif self.recovering:
            self._greet_later.append(session)
        else:
            self._known.add(worker_id)
            keep = sorted(pid for pid, holder in self.owners.items() if holder == worker_id)
            chunks = _chunks(keep) or [[]]
            for i, chunk in enumerate(chunks):
                last = i == len(chunks) - 1
                release = worker_pb2.ReleaseValues(all=last, keep=chunk)
                session.send(worker_pb2.ConnectResponse(release_values=release))

    def recover(self, flow_run_id: str, values: Iterable[object]) -> None:
        """A resumed run's task results: the Dask values among them (each stored with
        its holder) are held for it again, by the same bridges."""
        held = self._of_run.setdefault(flow_run_id, set())
        for value in values:
            if not dask_ids(value):
                continue
            assert isinstance(value, payload_pb2.Value)
            for ref in _refs_in_value(value):
                holder = ref.metadata.get(HOLDER_KEY)
                if holder:
                    self.owners[ref.payload_id] = holder
                    if "/" not in holder:  # (no credential in it: ``_adopt_plain``)
                        self._plain.add(holder)
                    self._run_of[ref.payload_id] = flow_run_id
                    held.add(ref.payload_id)
        if not held:
            del self._of_run[flow_run_id]

    def recovered(self) -> None:
        """Every run is resumed: bridges that came meanwhile are told what to keep."""
        self.recovering = False
        waiting, self._greet_later = self._greet_later, []
        for session in waiting:
            if self._live.get(session.holder) is session:  # (still connected)
                self._greet(session)

    def record(self, session: WorkerSession, result: payload_pb2.Value, flow_run_id: str) -> None:
        """A worker reported a result for a task of ``flow_run_id``: remember which
        Dask refs in it it holds, and for which run."""
        if result.WhichOneof("kind") != "ref" or result.ref.location != DASK_LOCATION:
            # Only a Dask bridge holds Dask values, and what it reports is itself a
            # held ref: nothing to look into (a 100,000-element inline result took
            # ~70 ms of the event loop to walk). A Dask ref inside anything else has
            # no holder, and an attempt that needs it fails as unavailable.
            return
        self._known.add(session.holder)
        held = self._of_run.setdefault(flow_run_id, set())
        for ref in _refs_in_value(result):
            ref.metadata[HOLDER_KEY] = session.holder  # stored with the result
            self.owners[ref.payload_id] = session.holder
            self._run_of[ref.payload_id] = flow_run_id
            held.add(ref.payload_id)
            self._live.setdefault(session.holder, session)

    # Releasing ----------------------------------------------------------------------

    def watch(self, runs: RunManager) -> None:
        """Follow ``runs``: ended and retried runs, cache writes, cache lookups."""
        runs.flow_listeners.append(self._flow_changed)
        runs.cache_written = self.pin
        runs.value_available = self.available

    def _flow_changed(self, row: FlowRunRow, engine: FlowRunEngine) -> None:
        if row.id not in self._of_run:
            return  # the common case: no value of the run is held by a bridge
        state = FlowRunState(row.state)
        if not state.is_terminal:
            self.run_reopened(row.id)
            return
        result = None
        if state is FlowRunState.SUCCESS and engine.result is not None:
            result = to_result_value(engine.result)
        self.run_ended(row.id, result, row.ended_at or 0.0)

    def run_ended(self, flow_run_id: str, result: object, now: float) -> None:
        """A run ended (``result``: its result value, None unless it succeeded): its
        values go ``release_after`` seconds from ``now``, those in its result when the
        run is pruned."""
        if flow_run_id not in self._of_run:
            return
        self._kept[flow_run_id] = (dask_ids(result) if result is not None else set(), now)
        due = now + self.release_after
        self._ending[flow_run_id] = due
        heapq.heappush(self._due, (due, flow_run_id))

    def run_reopened(self, flow_run_id: str) -> None:
        """An ended run was retried: its values stay until it ends again."""
        self._ending.pop(flow_run_id, None)
        self._kept.pop(flow_run_id, None)

    @property
    def next_release_at(self) -> float | None:
        """When ``expire`` next has something to release (None: nothing is due)."""
        due = [heap[0][0] for heap in (self._due, self._pin_due) if heap]
        if self.await_holders_until is not None:
            due.append(self.await_holders_until)
        return min(due, default=None)

    def expire(self, now: float) -> None:
        """Release the values of runs whose time is up and of expired cache entries;
        fail what waits for holders that did not come back to a restarted server."""
        if self.await_holders_until is not None and self.await_holders_until <= now:
            self.await_holders_until = None
            away, self._ask_later = self._ask_later, {}
            for payload_ids in away.values():
                self._asked -= payload_ids
                why = "the Dask bridge worker holding it did not reconnect after a restart"
                self._fail_waiting(payload_ids, why)
        while self._due and self._due[0][0] <= now:
            due, flow_run_id = heapq.heappop(self._due)
            if self._ending.get(flow_run_id) != due:
                continue  # retried since (or released already)
            del self._ending[flow_run_id]
            kept = self._kept.get(flow_run_id, (set(), now))[0]
            held = self._of_run.pop(flow_run_id, set())
            if held & kept:
                self._of_run[flow_run_id] = held & kept  # released when the run is pruned
            else:
                self._kept.pop(flow_run_id, None)
            self._release(held - kept)
        while self._pin_due and self._pin_due[0][0] <= now:
            at, key = heapq.heappop(self._pin_due)
            pinned = self._pins.get(key)
            if pinned is not None and pinned[1] == at:  # (not replaced since)
                self._unpin(key)

    def pruned(self, ended_before: float) -> None:
        """Runs that ended before ``ended_before`` were deleted: release what they hold."""
        gone = [run for run, (_, ended) in self._kept.items() if ended < ended_before]
        for flow_run_id in gone:
            del self._kept[flow_run_id]
            self._ending.pop(flow_run_id, None)
            self._release(self._of_run.pop(flow_run_id, set()))

    def pin(self, cache_key: str, value: object, expires_at: float | None) -> None:
        """A cache entry now points at ``value``: the Dask values in it stay until the
        entry expires (or another value replaces it)."""
        ids = dask_ids(value)
        if cache_key in self._pins:
            self._unpin(cache_key)
        if ids:
            self._pins[cache_key] = (ids, expires_at)
            self._pinned.update(ids)
            if expires_at is not None:
                heapq.heappush(self._pin_due, (expires_at, cache_key))

    def _unpin(self, cache_key: str) -> None:
        ids, _ = self._pins.pop(cache_key)
        self._pinned.subtract(ids)
        free = set()
        for payload_id in ids:
            if self._pinned[payload_id] <= 0:
                del self._pinned[payload_id]
                run = self._run_of.get(payload_id)
                if run is None or payload_id not in self._of_run.get(run, ()):
                    free.add(payload_id)  # its run let go of it already
        self._release(free)

    def available(self, value: object) -> bool:
        """Whether every Dask value in ``value`` can still be read (a cache entry
        naming one that is not is a miss)."""
        return all(pid in self.exported or self._owner(pid) is not None for pid in dask_ids(value))

    def _release(self, payload_ids: Iterable[str]) -> None:
        by_worker: dict[str, list[str]] = {}
        for payload_id in payload_ids:
            if self._pinned.get(payload_id, 0) > 0:
                continue  # a cache entry still names it (released when it expires)
            self._run_of.pop(payload_id, None)
            self.exported.pop(payload_id, None)
            self.unexportable.pop(payload_id, None)
            worker_id = self.owners.pop(payload_id, None)
            if worker_id is not None and worker_id in self._releasing:
                by_worker.setdefault(worker_id, []).append(payload_id)
        for worker_id, ids in by_worker.items():
            session = self._live.get(worker_id)
            if session is None:  # told when it comes back (same server process)
                unsent = self._unsent.setdefault(worker_id, [])
                unsent.extend(ids)
                if len(unsent) > UNSENT_LIMIT:
                    del self._unsent[worker_id]
                    self._known.discard(worker_id)  # ReleaseValues.all when it is back
            else:
                self._tell(session, ids)

    @staticmethod
    def _tell(session: WorkerSession, payload_ids: list[str]) -> None:
        for chunk in _chunks(payload_ids):
            release = worker_pb2.ReleaseValues(payload_ids=chunk)
            session.send(worker_pb2.ConnectResponse(release_values=release))

    def prepare(self, session: WorkerSession, pending: PendingAssignment) -> bool:
        """Before ``pending`` goes to ``session``: True to send it now; False when it is
        held until its inputs are exported (or was failed: an input is lost)."""
        values = pending.dask_values
        if values is None:
            values = dask_values(pending.assignment)
        if not values:
            return True  # the common case: no input is held in a Dask cluster
        lost = self._lost_input(values)
        if lost is not None:
            self._fail(pending, _unavailable(f"no connected worker holds value {lost!r}"))
            return False
        waiting: set[str] = set()
        for value in values:
            self._substitute(session, value, waiting)
        if not waiting:
            return True
        for payload_id in waiting - self._asked:
            self._asked.add(payload_id)
            request = worker_pb2.ExportValue(payload_id=payload_id)
            owner = self._owner(payload_id)
            if owner is None:  # a restarted server: asked once its holder is back
                self._ask_later.setdefault(self.owners[payload_id], set()).add(payload_id)
            else:
                owner.send(worker_pb2.ConnectResponse(export_value=request))
        self._held.append(_Held(session, pending, waiting))
        return False

    def _lost_input(self, values: list[payload_pb2.Value]) -> str | None:
        awaiting = self.await_holders_until is not None
        for value in values:
            for ref in _refs_in_value(value):
                pid = ref.payload_id
                if pid not in self.exported and self._owner(pid) is None:
                    if awaiting and pid in self.owners:
                        continue  # its holder may still reconnect to this restarted server
                    return pid
        return None

    def _substitute(
        self, session: WorkerSession, value: payload_pb2.Value, waiting: set[str]
    ) -> None:
        """Replace exported refs in ``value`` (in place); note the ones still missing."""
        if value.WhichOneof("kind") == "ref" and value.ref.location == DASK_LOCATION:
            payload_id = value.ref.payload_id
            if self._owner(payload_id) is session:
                pass  # the owner gets its own ref: it hands the future to Dask
            elif payload_id in self.exported:
                items = list(value.items)
                value.CopyFrom(self.exported[payload_id])
                del value.items[:]
                value.items.extend(items)
            else:
                waiting.add(payload_id)
        for item in value.items:
            self._substitute(session, item, waiting)

    async def readable(self, value: payload_pb2.Value) -> None:
        """Make the Dask refs in a value a client asked for readable (in place): ask
        their owners to export them and wait (at most READ_TIMEOUT seconds). Refs that
        cannot be exported stay as they are (the client then says it cannot read them)."""
        missing = {ref.payload_id for ref in _refs_in_value(value)} - set(self.exported)
        waits: list[asyncio.Future[None]] = []
        loop = asyncio.get_running_loop()
        for payload_id in missing:
            owner = self._owner(payload_id)
            if owner is None:
                continue
            future: asyncio.Future[None] = loop.create_future()
            self._readers.setdefault(payload_id, []).append(future)
            waits.append(future)
            if payload_id not in self._asked:
                self._asked.add(payload_id)
                request = worker_pb2.ExportValue(payload_id=payload_id)
                owner.send(worker_pb2.ConnectResponse(export_value=request))
        if waits:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits), READ_TIMEOUT)
        self._replace_exported(value)

    def _replace_exported(self, value: payload_pb2.Value) -> None:
        if value.WhichOneof("kind") == "ref" and value.ref.payload_id in self.exported:
            items = list(value.items)
            value.CopyFrom(self.exported[value.ref.payload_id])
            del value.items[:]
            value.items.extend(items)
        elif value.WhichOneof("kind") == "ref" and value.ref.payload_id in self.unexportable:
            value.ref.metadata[UNEXPORTABLE_KEY] = self.unexportable[value.ref.payload_id]
        for item in value.items:
            self._replace_exported(item)

    def _wake_readers(self, payload_ids: set[str]) -> None:
        for payload_id in payload_ids:
            for future in self._readers.pop(payload_id, []):
                if not future.done():
                    future.set_result(None)

    def on_exported(self, session: WorkerSession, msg: worker_pb2.ValueExported) -> None:
        """The owner answered: complete (or fail) the assignments waiting for it."""
        payload_id = msg.payload_id
        problems = session.ref_problems.pop((payload_id, EXPORT), None)  # (look_up_refs)
        if self._owner(payload_id) is not session:
            return
        self._asked.discard(payload_id)
        worker = f"the Dask bridge worker {session.name!r}"
        why = ""
        if msg.HasField("error"):
            why = f"{worker} could not export a value: {msg.error.message}"
            said = f"{msg.error.type}: {msg.error.message}" if msg.error.type else msg.error.message
            self.unexportable[payload_id] = cut_text(f"{worker} could not export it: {said}", 1000)
        elif problems:
            why = f"{worker} exported a value that {problems[0][1]}"
        else:
            self.exported[payload_id] = msg.value
        self._wake_readers({payload_id})
        if why:
            self._fail_waiting({payload_id}, why)
            return
        ready: list[_Held] = []
        for held in self._held:
            if payload_id in held.waiting:
                held.waiting.discard(payload_id)
                if not held.waiting:
                    ready.append(held)
        for held in ready:
            self._held.remove(held)
            if self.prepare(held.session, held.pending):
                self._send(held.session, held.pending)

    def forget(self, session: WorkerSession) -> None:
        """A worker's session ended: the values it holds cannot be read until it
        reconnects (same worker id); attempts waiting for them fail now."""
        if self._live.get(session.holder) is not session:
            return
        del self._live[session.holder]
        lost = {pid for pid, worker in self.owners.items() if worker == session.holder}
        self._asked -= lost
        # Assignments held for this worker itself: its slots are gone with it, and
        # the dispatcher reports those attempts lost.
        self._held = [h for h in self._held if h.session is not session]
        self._fail_waiting(lost, f"the Dask bridge worker {session.name!r} holding it is gone")
        self._wake_readers(lost)

    def _fail_waiting(self, payload_ids: set[str], why: str) -> None:
        failed = [h for h in self._held if h.waiting & payload_ids]
        for held in failed:
            self._held.remove(held)
            self._fail(held.pending, _unavailable(why))


def _unavailable(why: str) -> FailureInfo:
    return FailureInfo(
        type="headwater.ValueUnavailable",
        message=f"an input of this task is held in a Dask cluster and cannot be read: {why} "
        "(re-running the task that produced it is not implemented)",
        retryable=False,
    )
