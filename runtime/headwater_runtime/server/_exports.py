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

Bookkeeping only: sending and failing go through the callbacks given.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from headwater.v1 import payload_pb2, worker_pb2
from headwater.wire import DASK_LOCATION, FailureInfo

from ._assignments import PendingAssignment
from ._dispatch import WorkerSession

#: Longest a client's request waits for a bridge to export a result (seconds).
READ_TIMEOUT = 60.0


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
    """

    def __init__(
        self,
        send: Callable[[WorkerSession, PendingAssignment], None],
        fail: Callable[[PendingAssignment, FailureInfo], None],
    ) -> None:
        self._send = send
        self._fail = fail
        self.owners: dict[str, str] = {}  # payload id -> worker id of its holder
        self._live: dict[str, WorkerSession] = {}  # worker id -> its current session
        self.exported: dict[str, payload_pb2.Value] = {}
        self._held: list[_Held] = []
        self._asked: set[str] = set()
        self._readers: dict[str, list[asyncio.Future[None]]] = {}

    def connected(self, session: WorkerSession) -> None:
        """A worker (re)connected: a bridge keeps its values across reconnects. Exports
        asked on its previous stream (if that one has not ended yet) are asked again."""
        previous = self._live.get(session.worker_id)
        self._live[session.worker_id] = session
        if previous is None or previous is session:
            return
        for payload_id in sorted(self._asked):
            if self.owners.get(payload_id) == session.worker_id:
                request = worker_pb2.ExportValue(payload_id=payload_id)
                session.send(worker_pb2.ConnectResponse(export_value=request))

    def _owner(self, payload_id: str) -> WorkerSession | None:
        """The connected session holding a value, if any."""
        worker_id = self.owners.get(payload_id)
        return None if worker_id is None else self._live.get(worker_id)

    def record(self, session: WorkerSession, result: payload_pb2.Value) -> None:
        """A worker reported a result: remember which Dask refs in it it holds."""
        if result.WhichOneof("kind") != "ref" or result.ref.location != DASK_LOCATION:
            # Only a Dask bridge holds Dask values, and what it reports is itself a
            # held ref: nothing to look into (a 100,000-element inline result took
            # ~70 ms of the event loop to walk). A Dask ref inside anything else has
            # no holder, and an attempt that needs it fails as unavailable.
            return
        for ref in _refs_in_value(result):
            self.owners[ref.payload_id] = session.worker_id
            self._live.setdefault(session.worker_id, session)

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
            assert owner is not None  # checked by _lost_input
            owner.send(worker_pb2.ConnectResponse(export_value=request))
        self._held.append(_Held(session, pending, waiting))
        return False

    def _lost_input(self, values: list[payload_pb2.Value]) -> str | None:
        for value in values:
            for ref in _refs_in_value(value):
                pid = ref.payload_id
                if pid not in self.exported and self._owner(pid) is None:
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
        if self._owner(payload_id) is not session:
            return
        self._asked.discard(payload_id)
        if not msg.HasField("error"):
            self.exported[payload_id] = msg.value
        self._wake_readers({payload_id})
        if msg.HasField("error"):
            why = f"the Dask bridge worker {session.name!r} could not export a value: "
            why += msg.error.message
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
        if self._live.get(session.worker_id) is not session:
            return
        del self._live[session.worker_id]
        lost = {pid for pid, worker in self.owners.items() if worker == session.worker_id}
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
