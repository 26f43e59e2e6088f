"""Durable state of the control plane, behind a narrow interface (SQLite by default)."""

from ._base import (
    CacheRow,
    Conflict,
    FlowRunRow,
    FlowVersion,
    LogRow,
    NotFound,
    PayloadMeta,
    PayloadUpload,
    RunEvent,
    ScheduleRow,
    StateRow,
    Store,
    TaskRunRow,
    WriteBatch,
)
from ._sqlite import PayloadWriter, SQLiteStore

__all__ = [
    "CacheRow",
    "Conflict",
    "FlowRunRow",
    "FlowVersion",
    "LogRow",
    "NotFound",
    "PayloadMeta",
    "PayloadUpload",
    "PayloadWriter",
    "RunEvent",
    "SQLiteStore",
    "ScheduleRow",
    "StateRow",
    "Store",
    "TaskRunRow",
    "WriteBatch",
]


def _sqlite_store_implements_the_interface(store: SQLiteStore) -> Store:
    """Never called: mypy checks here that SQLiteStore satisfies the Store protocol."""
    return store
