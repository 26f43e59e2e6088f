"""Durable state of the control plane, behind a narrow interface (SQLite by default)."""

from ._base import (
    CacheRow,
    Conflict,
    FlowRunRow,
    FlowVersion,
    LogRow,
    NotFound,
    PayloadMeta,
    RunEvent,
    ScheduleRow,
    StateRow,
    Store,
    TaskRunRow,
    WriteBatch,
)
from ._sqlite import SQLiteStore

__all__ = [
    "CacheRow",
    "Conflict",
    "FlowRunRow",
    "FlowVersion",
    "LogRow",
    "NotFound",
    "PayloadMeta",
    "RunEvent",
    "SQLiteStore",
    "ScheduleRow",
    "StateRow",
    "Store",
    "TaskRunRow",
    "WriteBatch",
]
