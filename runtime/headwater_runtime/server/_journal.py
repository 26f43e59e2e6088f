"""The journal's storage format: engine inputs <-> ``headwater.v1.JournalEntry``, and
value handles <-> ``StoredValue`` (docs/durability.md).

Every value a worker reports is stored once, in the store's value table, keyed by the
SHA-256 of its serialized ``Value``; journal entries, task run projections, cache
entries and flow results reference it by that id. ``Values`` gathers the rows a batch
must write and resolves ids back to values when a run is read or replayed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from headwater.v1 import journal_pb2, payload_pb2
from headwater.wire import (
    EncodedValue,
    failure_from_proto,
    failure_to_proto,
    path_from_proto,
    path_to_proto,
)
from headwater_runtime.engine import (
    EVENT,
    START,
    TIMERS,
    CacheChecked,
    CacheEntry,
    CancelRequested,
    JournalEntry,
    RunRetried,
    TaskFailed,
    TaskLost,
    TaskSkipped,
    TaskStarted,
    TaskSucceeded,
)
from headwater_runtime.store import RunEvent, ValueRow

from ._values import Composite, Selected

#: The JournalEntry format this server writes and reads.
FORMAT = 1


class JournalFormatError(ValueError):
    """A stored journal entry this server cannot read (another format, or corrupt)."""


def value_id(data: bytes) -> str:
    """The id of a stored value: the SHA-256 of its serialized Value message."""
    return hashlib.sha256(data).hexdigest()


def payload_refs(value: payload_pb2.Value) -> Iterator[payload_pb2.PayloadRef]:
    """The references to stored payloads a value holds (not those a Dask cluster
    holds), at any depth."""
    if value.WhichOneof("kind") == "ref" and not value.ref.location:
        yield value.ref
    for item in value.items:
        yield from payload_refs(item)


def payload_ids(value: payload_pb2.Value) -> Iterator[str]:
    """Stored payloads a value references (kept while the value is)."""
    return (ref.payload_id for ref in payload_refs(value))


class Values:
    """Stored values: the rows a batch must write, and values by id once read."""

    def __init__(self) -> None:
        self.rows: dict[str, ValueRow] = {}
        # The last value added and its id: a task's result is added twice in a row,
        # by its journal entry and by its task run's row (serializing and hashing it
        # once is enough).
        self._last: tuple[payload_pb2.Value, str] | None = None

    def add(self, value: payload_pb2.Value) -> str:
        """Store ``value`` (once per id per batch); its id."""
        last = self._last
        if last is not None and last[0] is value:
            return last[1]
        data = value.SerializeToString(deterministic=True)
        ident = value_id(data)
        if ident not in self.rows:
            self.rows[ident] = ValueRow(ident, data, tuple(dict.fromkeys(payload_ids(value))))
        self._last = (value, ident)
        return ident

    def take(self) -> dict[str, ValueRow]:
        """The rows gathered since the last take."""
        rows, self.rows = self.rows, {}
        self._last = None  # (its row is in those rows: the next batch adds it again)
        return rows


def to_stored(handle: Any, values: Values) -> journal_pb2.StoredValue:
    """A server value handle as a StoredValue, its values added to ``values``."""
    if handle is None:
        return journal_pb2.StoredValue(none=True)
    if isinstance(handle, payload_pb2.Value):
        return journal_pb2.StoredValue(value_id=values.add(handle))
    if isinstance(handle, EncodedValue):
        return journal_pb2.StoredValue(
            constant=payload_pb2.Payload(data=handle.data, metadata=handle.metadata)
        )
    if isinstance(handle, Selected):
        select = journal_pb2.StoredSelect(
            base=to_stored(handle.base, values), path=path_to_proto(handle.path)
        )
        return journal_pb2.StoredValue(select=select)
    if isinstance(handle, Composite):
        items = [to_stored(item, values) for item in handle.items]
        if handle.kind == "dict":
            stored = journal_pb2.StoredDict(keys=list(handle.keys), values=items)
            return journal_pb2.StoredValue(dict=stored)
        return journal_pb2.StoredValue(
            list=journal_pb2.StoredList(items=items, tuple=handle.kind == "tuple")
        )
    raise TypeError(f"not a value handle: {type(handle).__name__}")


def stored_ids(stored: journal_pb2.StoredValue) -> Iterator[str]:
    """The value ids a StoredValue references."""
    kind = stored.WhichOneof("kind")
    if kind == "value_id":
        yield stored.value_id
    elif kind == "list":
        for item in stored.list.items:
            yield from stored_ids(item)
    elif kind == "dict":
        for item in stored.dict.values:
            yield from stored_ids(item)
    elif kind == "select":
        yield from stored_ids(stored.select.base)


def from_stored(stored: journal_pb2.StoredValue, loaded: Mapping[str, bytes]) -> Any:
    """The handle a StoredValue stands for, with values taken from ``loaded`` (by id);
    JournalFormatError names a value that is missing."""
    kind = stored.WhichOneof("kind")
    if kind == "value_id":
        data = loaded.get(stored.value_id)
        if data is None:
            raise JournalFormatError(f"stored value {stored.value_id} is missing")
        return payload_pb2.Value.FromString(data)
    if kind == "constant":
        return EncodedValue(bytes(stored.constant.data), dict(stored.constant.metadata))
    if kind == "select":
        base = from_stored(stored.select.base, loaded)
        return Selected(base, path_from_proto(stored.select.path))
    if kind == "list":
        items = tuple(from_stored(i, loaded) for i in stored.list.items)
        return Composite("tuple" if stored.list.tuple else "list", items)
    if kind == "dict":
        items = tuple(from_stored(v, loaded) for v in stored.dict.values)
        return Composite("dict", items, tuple(stored.dict.keys))
    return None


def encode_entry(flow_run_id: str, seq: int, entry: JournalEntry, values: Values) -> RunEvent:
    """A journal entry as a stored RunEvent (its value added to ``values``)."""
    msg = journal_pb2.JournalEntry(format=FORMAT, at=entry.at)
    value = ""
    event = entry.event
    if entry.kind == START:
        msg.run_started.SetInParent()
        msg.run_started.jitter_seed = entry.seed
        msg.run_started.delay_rule = entry.delay_rule
    elif entry.kind == TIMERS:
        msg.timers_fired.SetInParent()
    elif isinstance(event, TaskSucceeded):
        # Set in place (the hot path: one per task): building an AttemptSucceeded and
        # a StoredValue to copy in cost as much as the rest of the entry.
        succeeded = msg.attempt_succeeded
        succeeded.key = event.key
        succeeded.attempt = event.attempt
        if isinstance(event.value, payload_pb2.Value):
            value = succeeded.value.value_id = values.add(event.value)
        else:
            stored = to_stored(event.value, values)
            value = stored.value_id
            succeeded.value.CopyFrom(stored)
        succeeded.cache_key = event.cache_key
        succeeded.cached = event.cached
        if event.started_at is not None:
            succeeded.started_at = event.started_at
        if event.ended_at is not None:
            succeeded.ended_at = event.ended_at
    elif isinstance(event, TaskStarted):
        msg.attempt_started.CopyFrom(
            journal_pb2.AttemptStarted(key=event.key, attempt=event.attempt, started_at=event.at)
        )
    elif isinstance(event, TaskFailed):
        msg.attempt_failed.CopyFrom(
            journal_pb2.AttemptFailed(
                key=event.key,
                attempt=event.attempt,
                failure=failure_to_proto(event.failure),
                timed_out=event.failure.timed_out,
                never_started=event.never_started,
                started_at=event.started_at,
                ended_at=event.ended_at,
            )
        )
    elif isinstance(event, TaskSkipped):
        msg.attempt_skipped.CopyFrom(
            journal_pb2.AttemptSkipped(
                key=event.key,
                attempt=event.attempt,
                reason=event.reason,
                started_at=event.started_at,
                ended_at=event.ended_at,
            )
        )
    elif isinstance(event, TaskLost):
        msg.attempt_lost.CopyFrom(
            journal_pb2.AttemptLost(
                key=event.key,
                attempt=event.attempt,
                reason=event.reason,
                given_back=event.given_back,
            )
        )
    elif isinstance(event, CacheChecked):
        checked = journal_pb2.CacheChecked(key=event.key, cache_key=event.cache_key)
        if event.entry is not None:
            checked.hit = True
            checked.value.CopyFrom(to_stored(event.entry.value, values))
            value = checked.value.value_id
            if event.entry.expires_at is not None:
                checked.expires_at = event.entry.expires_at
        msg.cache_checked.CopyFrom(checked)
    elif isinstance(event, CancelRequested):
        msg.cancel_requested.CopyFrom(journal_pb2.CancelRequested(reason=event.reason))
    elif isinstance(event, RunRetried):
        msg.run_retried.CopyFrom(journal_pb2.RunRetried(reason=event.reason))
    else:
        raise TypeError(f"cannot journal {entry!r}")
    kind = msg.WhichOneof("input") or ""
    return RunEvent(flow_run_id, seq, entry.at, kind, msg.SerializeToString(), value)


def entry_value_ids(rows: Iterable[RunEvent]) -> list[str]:
    """The stored values a journal references (to load before decoding it)."""
    return [row.value_id for row in rows if row.value_id]


def decode_entry(row: RunEvent, loaded: Mapping[str, bytes]) -> JournalEntry:
    """Inverse of encode_entry; JournalFormatError names what this server cannot read."""
    try:
        msg = journal_pb2.JournalEntry.FromString(row.body)
    except Exception as exc:
        raise JournalFormatError(
            f"journal entry {row.seq} of flow run {row.flow_run_id} is not a JournalEntry "
            f"({type(exc).__name__})"
        ) from None
    if msg.format != FORMAT:
        raise JournalFormatError(
            f"journal entry {row.seq} of flow run {row.flow_run_id} has format "
            f"{msg.format}; this server reads format {FORMAT}"
        )
    which = msg.WhichOneof("input")
    event: Any
    if which == "run_started":
        started = msg.run_started
        return JournalEntry(START, msg.at, seed=started.jitter_seed, delay_rule=started.delay_rule)
    if which == "timers_fired":
        return JournalEntry(TIMERS, msg.at)
    if which == "attempt_started":
        b = msg.attempt_started
        event = TaskStarted(b.key, b.attempt, _started(b))
    elif which == "attempt_succeeded":
        s = msg.attempt_succeeded
        value = from_stored(s.value, loaded)
        event = TaskSucceeded(
            s.key, s.attempt, value, s.cache_key, s.cached, _started(s), _ended(s)
        )
    elif which == "attempt_failed":
        f = msg.attempt_failed
        failure = failure_from_proto(f.failure, f.timed_out)
        # An entry written before engine version 3 has no never_started (False): it
        # replays as it was decided then (the attempt started).
        event = TaskFailed(f.key, f.attempt, failure, f.never_started, _started(f), _ended(f))
    elif which == "attempt_skipped":
        k = msg.attempt_skipped
        event = TaskSkipped(k.key, k.attempt, k.reason, _started(k), _ended(k))
    elif which == "attempt_lost":
        lost = msg.attempt_lost
        event = TaskLost(lost.key, lost.attempt, lost.reason, given_back=lost.given_back)
    elif which == "cache_checked":
        c = msg.cache_checked
        entry = None
        if c.hit:
            expires = c.expires_at if c.HasField("expires_at") else None
            entry = CacheEntry(from_stored(c.value, loaded), expires)
        event = CacheChecked(c.key, c.cache_key, entry)
    elif which == "cancel_requested":
        event = CancelRequested(msg.cancel_requested.reason)
    elif which == "run_retried":
        event = RunRetried(msg.run_retried.reason)
    else:
        raise JournalFormatError(
            f"journal entry {row.seq} of flow run {row.flow_run_id} has no input"
        )
    return JournalEntry(EVENT, msg.at, event)


def _started(entry: Any) -> float | None:
    """An attempt entry's ``started_at`` (None when unset: an older entry, or a worker
    that did not say)."""
    return float(entry.started_at) if entry.HasField("started_at") else None


def _ended(entry: Any) -> float | None:
    """An outcome entry's ``ended_at`` (None when unset: an entry before engine version
    7, or a worker that did not say)."""
    return float(entry.ended_at) if entry.HasField("ended_at") else None
