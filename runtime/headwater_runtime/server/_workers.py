"""Which workers the server knows, and draining them (ListWorkers, DrainWorker).

Connected workers are the dispatcher's sessions; every worker ever connected is also
recorded in the store by name (its latest session: capabilities, labels, slots,
version, last message), so ``headwater workers list`` shows it offline after it left
and after a server restart. Records are written off the event loop, in the background
(``flush``), with the time of the worker's last message.

A drain is kept in the store by worker name until it is lifted (ResumeWorker), so it
outlasts reconnects and server restarts: a drained session gets no new attempts (its
free slots count as zero) and, when its Hello lists the ``drain`` feature, a ``Drain``
message telling it whether to exit once idle. A drain that asked the worker to exit is
lifted when a session of that name ends holding no attempt: it did what it was asked,
and the next worker started under that name takes work.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
from collections.abc import Callable, Iterable
from typing import Any

from headwater.v1 import operations_pb2, worker_pb2
from headwater.wire import DRAIN, timestamp
from headwater_runtime.store import DrainRow, Store, WorkerRow

from ._dispatch import Dispatcher, WorkerSession

log = logging.getLogger("headwater.server")


def _place(name: str, online: dict[str, WorkerSession]) -> tuple[bool, str]:
    """A worker's place in a listing: online ones first, then by name."""
    return name not in online, name


def _page_token(key: tuple[bool, str]) -> str:
    """A ListWorkers page token: the last worker's place (``1:`` offline, then its name)."""
    return f"{int(key[0])}:{key[1]}"


def _page_key(token: str) -> tuple[bool, str]:
    if token[:2] not in ("0:", "1:"):
        raise ValueError(f"page_token {token!r} is not one this server gave")
    return token[0] == "1", token[2:]


def _version(hello: worker_pb2.Hello) -> str:
    return hello.runtime.sdk_version


class WorkerRegistry:
    """Known workers and drains (see the module docstring).

    Args:
        store: where workers and drains are recorded.
        dispatcher: the connected sessions.
        clock: seconds since the epoch.
    """

    def __init__(self, store: Store, dispatcher: Dispatcher, clock: Callable[[], float]) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.clock = clock
        self.known: dict[str, WorkerRow] = {}
        #: Moves when a name is added to ``known`` or taken out (``page``'s order).
        self._names = 0
        self._order: tuple[Any, list[tuple[bool, str]]] | None = None
        self.drains: dict[str, DrainRow] = {}
        self._dirty: set[str] = set()

    def load(self) -> None:
        """Read the recorded workers and drains (at start, off the loop)."""
        self.known = {w.name: w for w in self.store.list_workers()}
        self._names += 1
        self.drains = {d.name: d for d in self.store.list_drains()}

    # ------------------------------------------------------------------ sessions

    def connected(self, session: WorkerSession, hello: worker_pb2.Hello) -> None:
        """A session began: record it, and drain it if its name is drained."""
        now = self.clock()
        session.hello = hello
        session.connected_at = now
        self._record(session)
        drain = self.drains.get(session.name)
        if drain is not None:
            self._apply(session, drain)

    def disconnected(self, session: WorkerSession) -> DrainRow | None:
        """A session ended: record when it was last heard of. Returns the drain to lift
        (one that asked the worker to exit, now done), if any."""
        self._record(session)
        drain = self.drains.get(session.name)
        others = any(s.name == session.name for s in self.dispatcher.sessions.values())
        if drain is not None and drain.exit_when_idle and not session.running and not others:
            del self.drains[session.name]
            log.info("worker %s exited after its drain; the drain is lifted", session.name)
            return drain
        return None

    def seen(self) -> None:
        """Mark every connected worker's record for the next ``flush`` (its last
        message time moves)."""
        self._dirty.update(s.name for s in self.dispatcher.sessions.values())

    def _record(self, session: WorkerSession) -> None:
        hello = session.hello or worker_pb2.Hello()
        self._names += session.name not in self.known
        self.known[session.name] = WorkerRow(
            name=session.name,
            worker_id=session.worker_id,
            capabilities=tuple(sorted(session.capabilities)),
            labels=dict(session.labels),
            slots=session.slots,
            version=_version(hello),
            language=hello.runtime.language,
            hostname=hello.runtime.hostname,
            connected_at=session.connected_at,
            last_seen=session.last_seen,
        )
        self._dirty.add(session.name)

    def forget(self, before: float) -> None:
        """Let go of what a prune deleted: the records of workers not connected now
        nor drained, last heard from before ``before`` (store/_prune.py)."""
        connected = {s.name for s in self.dispatcher.sessions.values()}
        for name, row in list(self.known.items()):
            if name in connected or name in self._dirty or name in self.drains:
                continue  # (a drained worker's record stays while drained, as stored)
            if row.last_seen < before:
                del self.known[name]
                self._names += 1

    def put_back(self, rows: list[WorkerRow]) -> None:
        """Records ``take_dirty`` gave that could not be stored: taken again next time."""
        self._dirty.update(row.name for row in rows)

    def take_dirty(self) -> list[WorkerRow]:
        """Records changed since the last call (to write in the background)."""
        rows = []
        for name in self._dirty:
            live = [s for s in self.dispatcher.sessions.values() if s.name == name]
            if live:
                self._record_quietly(live[-1])
            row = self.known.get(name)
            if row is not None:
                rows.append(row)
        self._dirty.clear()
        return rows

    def _record_quietly(self, session: WorkerSession) -> None:
        row = self.known.get(session.name)
        if row is not None and row.worker_id == session.worker_id:
            self.known[session.name] = dataclasses.replace(row, last_seen=session.last_seen)

    # -------------------------------------------------------------------- drains

    def drain(self, name: str, exit_when_idle: bool) -> DrainRow:
        """Drain the workers of ``name`` (KeyError when none is known by that name)."""
        if name not in self.known and not self._sessions(name):
            raise KeyError(name)
        row = DrainRow(name, exit_when_idle, self.clock())
        self.drains[name] = row
        for session in self._sessions(name):
            self._apply(session, row)
        return row

    def resume(self, name: str) -> None:
        """Lift the drain of ``name`` (KeyError when no worker is known by that name
        and none is drained: a drain outlasts the record of a worker forgotten after
        ``forget_workers_after``, and must still be liftable)."""
        if name not in self.known and name not in self.drains and not self._sessions(name):
            raise KeyError(name)
        was = self.drains.pop(name, None)
        for session in self._sessions(name):
            session.draining = False
            if was is not None and _understands_drain(session):
                session.send(_drain_message(exit_when_idle=False, cancelled=True))
        self.dispatcher.pump()

    def _apply(self, session: WorkerSession, row: DrainRow) -> None:
        session.draining = True
        if _understands_drain(session):
            session.send(_drain_message(exit_when_idle=row.exit_when_idle))

    def _sessions(self, name: str) -> list[WorkerSession]:
        return [s for s in self.dispatcher.sessions.values() if s.name == name]

    # -------------------------------------------------------------------- listing

    def infos(self, names: Iterable[str] | None = None) -> list[operations_pb2.WorkerInfo]:
        """Workers as WorkerInfo messages: online first, then by name (only ``names``
        when given)."""
        online = self._online()
        known = self.known.keys() | online.keys()
        chosen = known if names is None else known & set(names)
        return [self._info(n, online.get(n)) for _, n in sorted(_place(n, online) for n in chosen)]

    def page(
        self, after: str, size: int, *, online_only: bool = False
    ) -> tuple[list[operations_pb2.WorkerInfo], str]:
        """At most ``size`` workers in ``infos`` order after the page token ``after``
        ("" from the start), and the token of the page after them ("" at the end).
        ValueError for a token this registry does not give."""
        start = _page_key(after) if after else None
        online = self._online()
        # The order is kept while the names and who is online stay the same: reading
        # 100,000 records page by page sorted them 100 times (20 s for `workers list`).
        shape = (self._names, frozenset(online), online_only)
        if self._order is None or self._order[0] != shape:
            names = set(online) if online_only else self.known.keys() | online.keys()
            self._order = (shape, sorted(_place(name, online) for name in names))
        keys = self._order[1]
        first = 0 if start is None else bisect.bisect_right(keys, start)
        chosen = keys[first : first + size]
        infos = [self._info(name, online.get(name)) for _, name in chosen]
        return infos, _page_token(chosen[-1]) if first + size < len(keys) else ""

    def _online(self) -> dict[str, WorkerSession]:
        """The connected sessions by name (the latest session of a name wins)."""
        return {session.name: session for session in self.dispatcher.sessions.values()}

    def _info(self, name: str, session: WorkerSession | None) -> operations_pb2.WorkerInfo:
        drain = self.drains.get(name)
        info = operations_pb2.WorkerInfo(
            name=name,
            online=session is not None,
            draining=drain is not None,
            exit_when_idle=drain is not None and drain.exit_when_idle,
        )
        if session is not None:
            hello = session.hello or worker_pb2.Hello()
            info.worker_id = session.worker_id
            info.capabilities.extend(sorted(session.capabilities))
            info.labels.update(session.labels)
            info.slots_used = len(session.running)
            info.slots = session.slots
            info.version = _version(hello)
            info.language = hello.runtime.language
            info.hostname = hello.runtime.hostname
            info.last_heartbeat.CopyFrom(timestamp(session.last_seen))
            info.connected_at.CopyFrom(timestamp(session.connected_at))
            return info
        row = self.known[name]
        info.worker_id = row.worker_id
        info.capabilities.extend(row.capabilities)
        info.labels.update(row.labels)
        info.slots = row.slots
        info.version = row.version
        info.language = row.language
        info.hostname = row.hostname
        info.last_heartbeat.CopyFrom(timestamp(row.last_seen))
        info.connected_at.CopyFrom(timestamp(row.connected_at))
        return info


def _understands_drain(session: WorkerSession) -> bool:
    return session.hello is not None and DRAIN in session.hello.features


def _drain_message(*, exit_when_idle: bool, cancelled: bool = False) -> worker_pb2.ConnectResponse:
    return worker_pb2.ConnectResponse(
        drain=worker_pb2.Drain(exit_when_idle=exit_when_idle, cancelled=cancelled)
    )
