"""Durable state of the control plane, behind a narrow interface (SQLite by default)."""

from ._base import (
    AuditRow,
    CacheRow,
    Conflict,
    CredentialRow,
    FlowRunRow,
    FlowVersion,
    LogRow,
    NotFound,
    PayloadMeta,
    PayloadUpload,
    PruneReport,
    RunEvent,
    ScheduleRow,
    StateRow,
    Store,
    StoreUnavailable,
    TaskRunRow,
    ValueRow,
    WriteBatch,
)
from ._sqlite import SQLiteStore
from ._sqlite_payloads import PayloadWriter
from ._sqlite_schema import SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION",
    "AuditRow",
    "CacheRow",
    "Conflict",
    "CredentialRow",
    "FlowRunRow",
    "FlowVersion",
    "LogRow",
    "NotFound",
    "PayloadMeta",
    "PayloadUpload",
    "PayloadWriter",
    "PruneReport",
    "RunEvent",
    "SQLiteStore",
    "ScheduleRow",
    "StateRow",
    "Store",
    "StoreUnavailable",
    "TaskRunRow",
    "ValueRow",
    "WriteBatch",
]


def _sqlite_store_implements_the_interface(store: SQLiteStore) -> Store:
    """Never called: mypy checks here that SQLiteStore satisfies the Store protocol."""
    return store
