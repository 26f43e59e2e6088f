"""Opening the store a ``--db`` value names: a SQLite path or a PostgreSQL URL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ._base import Store

#: URL schemes that select the PostgreSQL store.
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(db: str) -> bool:
    """Whether ``db`` is a PostgreSQL URL (anything else is a SQLite path)."""
    return db.startswith(POSTGRES_SCHEMES)


class MissingDriver(ImportError):
    """A PostgreSQL URL was given, and the ``postgres`` extra is not installed."""


class StoreNotFound(FileNotFoundError):
    """``open_store(existing=True)`` of a store that is not there: a SQLite file that
    does not exist (or is empty), a PostgreSQL database without Headwater's schema.
    The commands beside a server report it as a usage error (a mistyped --db)."""


def open_store(
    db: str,
    *,
    payload_dir: str | Path | None = None,
    clock: Callable[[], float] | None = None,
    existing: bool = False,
    migrate: bool = True,
    server: str | None = None,
) -> Store:
    """The store ``db`` names: ``postgresql://...`` opens (and migrates) a PostgreSQL
    database, anything else is a SQLite file. ``payload_dir`` keeps new payloads'
    bytes in that directory instead of the database; ``clock`` (seconds since the
    epoch) dates payloads, for tests. ``existing``: a SQLite file that does not exist
    is refused (StoreNotFound, as is an empty file), not created (commands that work on a server's
    database: a mistyped path is not a new, empty one), and a database of another
    schema version is refused, not migrated (RuntimeError). ``migrate=False``: a
    database of another schema version is refused, but one that has none yet (a new
    SQLite file, a PostgreSQL database without the schema) is made. ``server``: opened
    by a server process (``Store.claim``'s holder): a SQLite file is claimed before it is
    read or migrated, and one of an older schema that another process has open is
    refused, not migrated under it. Another URL scheme than postgresql:// is a
    ValueError."""
    if not db.strip():
        raise ValueError("--db is empty: give a SQLite file path or a postgresql:// URL")
    if "://" in db and not is_postgres(db):
        scheme = db.split("://", 1)[0]
        raise ValueError(
            f"--db {db!r}: {scheme}:// databases are not supported (give a SQLite file "
            "path or a postgresql:// URL)"
        )
    if existing and not is_postgres(db):
        path = Path(db).expanduser()
        if not path.is_file():
            raise StoreNotFound(f"no Headwater database at {db} (check --db or $HEADWATER_DB)")
        if path.stat().st_size == 0:
            raise StoreNotFound(f"no Headwater database at {db} (the file is empty)")
    if is_postgres(db):
        try:
            from ._postgres import PostgresStore
        except ImportError as exc:
            raise MissingDriver(
                f"a PostgreSQL --db needs the 'postgres' extra ({exc.name} is not installed): "
                "pip install 'headwater[postgres]'",
                name=exc.name,
            ) from None
        return PostgresStore(
            db,
            payload_dir=payload_dir,
            clock=clock,
            migrate_schema=migrate and not existing,
            new_schema=not existing,
        )
    from ._sqlite import SQLiteStore

    path = Path(db).expanduser()
    blank = not path.exists() or (path.is_file() and path.stat().st_size == 0)
    return SQLiteStore(
        db,
        payload_dir=payload_dir,
        clock=clock,
        migrate_schema=not existing and (migrate or blank),
        server=server,
    )
