"""Durable state of the control plane, behind a narrow interface (SQLite by default,
PostgreSQL for several servers: ``open_store("postgresql://...")``).

The PostgreSQL names (``PostgresStore``, ``Lease``, ...) load on first use, so that
importing the store does not need the ``postgres`` extra."""

from typing import TYPE_CHECKING, Any

from ._base import (
    AuditRow,
    CacheRow,
    Conflict,
    CredentialRow,
    Delivery,
    Fenced,
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
    StoreUnreachable,
    TaskRunRow,
    ValueRow,
    WriteBatch,
)
from ._open import MissingDriver, StoreNotFound, is_postgres, open_store
from ._ops import (
    DeliveryCounts,
    DeliveryRow,
    DrainRow,
    LateRow,
    LimitRow,
    OpsStore,
    OpsWrites,
    RunAttemptRow,
    WebhookRow,
    WorkerRow,
)
from ._payloads import ChunkSink, DirectoryBlobs, PayloadWriter
from ._prune import Pruning
from ._sqlite import SQLiteStore
from ._sqlite_schema import SCHEMA_VERSION

__all__ = [
    "PG_SCHEMA_VERSION",
    "SCHEMA_VERSION",
    "AuditRow",
    "CacheRow",
    "ChunkSink",
    "Conflict",
    "CredentialRow",
    "Delivery",
    "DeliveryCounts",
    "DeliveryRow",
    "DirectoryBlobs",
    "DrainRow",
    "Fenced",
    "FlowRunRow",
    "FlowVersion",
    "LateRow",
    "Lease",
    "LeaseState",
    "LimitRow",
    "LogRow",
    "MissingDriver",
    "NotFound",
    "OpsStore",
    "OpsWrites",
    "PayloadMeta",
    "PayloadUpload",
    "PayloadWriter",
    "PostgresStore",
    "PruneReport",
    "Pruning",
    "RunAttemptRow",
    "RunEvent",
    "SQLiteStore",
    "ScheduleRow",
    "SchemaTooNew",
    "StateRow",
    "Store",
    "StoreNotFound",
    "StoreUnavailable",
    "StoreUnreachable",
    "TaskRunRow",
    "ValueRow",
    "WebhookRow",
    "WorkerRow",
    "WriteBatch",
    "is_postgres",
    "open_store",
]

if TYPE_CHECKING:
    from ._postgres import PostgresStore
    from ._postgres_lease import Lease, LeaseState
    from ._postgres_schema import PG_SCHEMA_VERSION, SchemaTooNew

_LAZY = {
    "PostgresStore": "._postgres",
    "Lease": "._postgres_lease",
    "LeaseState": "._postgres_lease",
    "PG_SCHEMA_VERSION": "._postgres_schema",
    "SchemaTooNew": "._postgres_schema",
}


def __getattr__(name: str) -> Any:
    """The PostgreSQL names, imported on first use (they need psycopg)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def _sqlite_store_implements_the_interface(store: SQLiteStore) -> Store:
    """Never called: mypy checks here that SQLiteStore satisfies the Store protocol."""
    return store


def _postgres_store_implements_the_interface(store: "PostgresStore") -> Store:
    """Never called: mypy checks here that PostgresStore satisfies the Store protocol."""
    return store
