"""Serialising journal entries (engine inputs) for the store.

Journal bodies are JSON; value handles inside them are serialised InputValue trees
(base64), so a replayed run gets back exactly the handles it had.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from headwater.v1 import worker_pb2
from headwater.wire import failure_from_dict, failure_to_dict
from headwater_runtime.engine import (
    EVENT,
    START,
    TIMERS,
    CacheChecked,
    CacheEntry,
    CancelRequested,
    JournalEntry,
    TaskFailed,
    TaskLost,
    TaskSkipped,
    TaskStarted,
    TaskSucceeded,
)
from headwater_runtime.store import RunEvent

from ._values import from_input_value, to_input_value


def encode_handle(handle: Any) -> str:
    """A value handle as text for a journal body (a base64 InputValue)."""
    return base64.b64encode(to_input_value(handle).SerializeToString()).decode()


def decode_handle(text: str) -> Any:
    """Inverse of encode_handle."""
    return from_input_value(worker_pb2.InputValue.FromString(base64.b64decode(text)))


def encode_entry(flow_run_id: str, seq: int, entry: JournalEntry) -> RunEvent:
    """A journal entry as a stored RunEvent."""
    body: dict[str, Any] = {}
    kind = entry.kind
    event = entry.event
    if entry.kind == EVENT:
        assert event is not None
        kind = type(event).__name__
        if isinstance(event, CancelRequested):
            body = {"reason": event.reason}
        else:
            body = {"key": event.key}
            if isinstance(event, CacheChecked):
                body["cache_key"] = event.cache_key
                if event.entry is not None:
                    body["value"] = encode_handle(event.entry.value)
                    body["expires_at"] = event.entry.expires_at
            else:
                body["attempt"] = event.attempt
            if isinstance(event, TaskSucceeded):
                body["value"] = encode_handle(event.value)
                if event.cache_key:
                    body["cache_key"] = event.cache_key
                if event.cached:
                    body["cached"] = True
            elif isinstance(event, TaskFailed):
                body["failure"] = failure_to_dict(event.failure)
            elif isinstance(event, TaskSkipped):
                body["reason"] = event.reason
    return RunEvent(flow_run_id, seq, entry.at, kind, json.dumps(body).encode())


def decode_entry(row: RunEvent) -> JournalEntry:
    """Inverse of encode_entry."""
    if row.kind in (START, TIMERS):
        return JournalEntry(row.kind, row.at)
    b = json.loads(row.body)
    event: Any
    if row.kind == "CancelRequested":
        event = CancelRequested(b["reason"])
    elif row.kind == "CacheChecked":
        entry = None
        if "value" in b:
            entry = CacheEntry(decode_handle(b["value"]), b["expires_at"])
        event = CacheChecked(b["key"], b["cache_key"], entry)
    elif row.kind == "TaskStarted":
        event = TaskStarted(b["key"], b["attempt"])
    elif row.kind == "TaskSucceeded":
        event = TaskSucceeded(
            b["key"],
            b["attempt"],
            decode_handle(b["value"]),
            b.get("cache_key", ""),
            b.get("cached", False),
        )
    elif row.kind == "TaskFailed":
        event = TaskFailed(b["key"], b["attempt"], failure_from_dict(b["failure"]))
    elif row.kind == "TaskSkipped":
        event = TaskSkipped(b["key"], b["attempt"], b["reason"])
    elif row.kind == "TaskLost":
        event = TaskLost(b["key"], b["attempt"])
    else:
        raise ValueError(f"unknown journal entry kind {row.kind!r}")
    return JournalEntry(EVENT, row.at, event)
