"""``headwater prune``: delete old finished runs and unreferenced data from a database."""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from headwater.wire import ENV_DB, ENV_PAYLOAD_DIR, parse_duration

from ._errors import CommandError, UsageError

EXIT_OK = 0
#: The database pruned when neither --db nor HEADWATER_DB names one.
DEFAULT_DB = "~/.headwater/headwater.db"
#: Unreferenced payloads younger than this are kept (an upload on its way to a result).
DEFAULT_GRACE = "1d"


def cmd_prune(args: argparse.Namespace) -> int:
    """Prune the database and print what went (or would go)."""
    from ._cli_connect import open_database

    # An empty --db is refused by name (as by tokens and server), not the default
    # database: a script's unset variable must not prune another database.
    db = args.db if args.db is not None else os.environ.get(ENV_DB) or DEFAULT_DB
    try:  # (a bare number is refused: "30" meant for days deleted nearly every run)
        older_than = None if args.older_than is None else parse_duration(args.older_than, unit=True)
    except ValueError as exc:
        raise UsageError(f"--older-than {exc}") from None
    try:
        grace = parse_duration(args.payload_grace)
    except ValueError as exc:
        raise UsageError(f"--payload-grace {exc}") from None
    payload_dir = args.payload_dir or os.environ.get(ENV_PAYLOAD_DIR) or None
    from headwater_runtime.store import StoreUnavailable

    store = open_database(db, payload_dir)
    try:
        now = time.time()
        before = None if older_than is None else now - older_than
        report = store.prune(before, now, grace=grace, dry_run=args.dry_run)
    except StoreUnavailable as exc:  # one line, not a traceback (a user trial)
        hint = (
            ": pruning writes to the database's log before it frees anything, so it needs "
            "some free space itself; free some first (--dry-run needs none)"
            if exc.full
            else ""
        )
        where = getattr(store, "where", db)  # (a URL without its password)
        raise CommandError(f"could not prune {where}: {exc}{hint}") from None
    finally:
        store.close()
    verb = "would delete" if report.dry_run else "deleted"
    print(
        f"{verb} {report.runs} finished run(s) ({report.journal_entries} journal entries, "
        f"{report.task_runs} task runs, {report.logs} log records), {report.values} "
        f"value(s), {report.payloads} payload(s) ({report.payload_bytes} bytes), "
        f"{report.cache_entries} expired cache entr{'y' if report.cache_entries == 1 else 'ies'}"
        + (
            f", {report.workers} worker record(s) not heard from since the cut-off, "
            f"{report.builds} flow build(s) (VERSION@DIGEST) unused since the cut-off, "
            f"{report.deliveries} webhook deliveries given up before the cut-off"
            if older_than is not None
            else ""
        )
    )
    if report.payloads_kept:
        print(
            f"kept {report.payloads_kept} unreferenced payload(s) whose bytes are in a payload "
            "directory: give the server's --payload-dir to delete them and their files"
        )
    if report.payloads_waiting:
        print(
            f"{'would keep' if report.dry_run else 'kept'} {report.payloads_waiting} "
            f"unreferenced payload(s) ({report.payload_bytes_waiting} bytes) younger than "
            f"--payload-grace {args.payload_grace}: an upload may be on its way to a result; "
            "a later prune deletes them"
        )
    if report.give_back_stopped:
        print(
            f"stopped giving space back to the file system ({report.give_back_stopped}): "
            "new data reuses it, and the next prune gives back the rest"
        )
    if not report.dry_run:
        where = getattr(store, "where", db) + (f" and {payload_dir}" if payload_dir else "")
        print(f"reclaimed {report.bytes_reclaimed} bytes of {where}")
    return EXIT_OK


def add_prune_command(sub: Any) -> None:
    """Add ``headwater prune`` to the CLI."""
    prune = sub.add_parser(
        "prune",
        help="delete old finished runs and data nothing references from a server's database",
        description="Delete finished flow runs that ended more than --older-than ago, with "
        "their journal, task runs, logs and values, the records of workers not heard "
        "from since, and the flow builds (VERSION@DIGEST graphs of value-dependent flows) "
        "no run or schedule uses and none has used since, and webhook deliveries given "
        "up before; expired cache entries; and "
        "stored payloads and values no run, cache entry or schedule references. Then "
        "give the space back to the file system (SQLite) or VACUUM it for reuse "
        "(PostgreSQL). Safe while the server runs (it only touches finished runs, and "
        "payloads older than --payload-grace). It deletes in short transactions, so the "
        "server's writes go in between; --dry-run only reads. A server started with "
        "--retention does this on its own.",
    )
    prune.add_argument(
        "--db",
        default=None,
        help="the server's database: a SQLite path or a postgresql:// URL (default "
        "~/.headwater/headwater.db, or HEADWATER_DB)",
    )
    prune.add_argument(
        "--payload-dir",
        default=None,
        metavar="DIR",
        help="the server's --payload-dir, whose files of deleted payloads are removed too "
        "(or HEADWATER_PAYLOAD_DIR)",
    )
    prune.add_argument(
        "--older-than",
        default=None,
        metavar="DURATION",
        help="delete finished runs that ended more than this long ago, e.g. 30d or 12h, "
        "forget workers not heard from for as long, and delete flow builds unused for as "
        "long (default: delete no run, only unreferenced data)",
    )
    prune.add_argument(
        "--payload-grace",
        default=DEFAULT_GRACE,
        metavar="DURATION",
        help=f"keep unreferenced payloads younger than this (default {DEFAULT_GRACE}). "
        "A large result is uploaded before its run references it: a grace shorter than "
        "your longest task deletes results on their way while runs are going",
    )
    prune.add_argument(
        "--dry-run", action="store_true", help="count what would be deleted; delete nothing"
    )
    prune.set_defaults(func=cmd_prune)
