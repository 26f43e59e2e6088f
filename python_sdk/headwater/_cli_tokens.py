"""``headwater tokens create|list|revoke``: named credentials with roles.

Offline (``--db``) the command works on the server's database directly, which is how
the first admin credential is made; a running server sees the change within a second.
Online (``--server``) it asks the server, as an admin.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

from headwater.wire import ENV_DB, ENV_SERVER, Role

from ._access_info import CredentialInfo
from ._cli_connect import add_tls_args, connect, open_database
from ._cli_remote import local_time
from ._cli_render import nothing_listed
from ._errors import CommandError, UsageError

EXIT_OK = 0
#: Who audit entries and ``tokens list`` say created a credential made with ``--db``.
OFFLINE = "offline"


def _listed(credentials: list[CredentialInfo], revoked_too: bool) -> int:
    """``tokens list``: one credential a line (or a line on stderr saying none)."""
    if not credentials:
        nothing_listed("credentials" if revoked_too else "valid credentials (revoked ones: --all)")
    for info in credentials:
        print(_line(info))
    return EXIT_OK


def _line(c: CredentialInfo) -> str:
    what = f"subject {c.subject!r}" if c.subject else "token"
    revoked = f"  REVOKED {local_time(c.revoked_at)}" if c.revoked_at else ""
    return (
        f"{c.name:20} {c.role:8} {what}  created {local_time(c.created_at)} "
        f"by {c.created_by}{revoked}"
    )


def cmd_tokens(args: argparse.Namespace) -> int:
    """Create, list or revoke credentials, offline (--db) or online (--server)."""
    if args.action == "create":
        if not args.name or not args.role:
            raise UsageError("'tokens create' needs --name NAME and --role ROLE")
        try:
            Role.parse(args.role)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if args.action == "revoke" and not args.name:
        raise UsageError("'tokens revoke' needs the credential's NAME")
    db = args.db
    address = args.server or os.environ.get(ENV_SERVER)
    if db is None and not address:
        db = os.environ.get(ENV_DB)
    if db is None and not address:
        raise UsageError(
            "give --db DB (the server's database, offline) or --server HOST:PORT (as an admin)"
        )
    if db is not None:
        return _offline(args, db)
    assert address is not None
    with connect(args, address) as client:
        if args.action == "create":
            info, token = client.create_token(args.name, args.role, subject=args.subject or "")
            return _created(info, token)
        if args.action == "list":
            return _listed(client.list_tokens(include_revoked=args.all), args.all)
        print(f"revoked {_line(client.revoke_token(args.name))}")
        return EXIT_OK


def _created(info: CredentialInfo, token: str) -> int:
    if token:
        print(
            f"created credential {info.name!r} (role {info.role}); its token follows, "
            "shown only this once:",
            file=sys.stderr,
        )
        print(token)
    else:
        print(
            f"created credential {info.name!r} (role {info.role}) for client certificates "
            f"with subject {info.subject!r}",
            file=sys.stderr,  # stdout carries only a token, for TOKEN=$(headwater tokens ...)
        )
    return EXIT_OK


def _offline(args: argparse.Namespace, db: str) -> int:
    from headwater_runtime.store import StoreUnavailable

    store = open_database(db, create=args.action == "create")  # the first admin: a new db
    try:
        return _offline_action(args, store)
    except StoreUnavailable as exc:  # one line, not a traceback (a read-only file: a user trial)
        where = getattr(store, "where", db)  # (a URL without its password)
        raise CommandError(f"could not change the credentials in {where}: {exc}") from None
    finally:
        store.close()


def _offline_action(args: argparse.Namespace, store: Any) -> int:
    """``tokens create``, ``list`` or ``revoke`` on an open database."""
    from headwater_runtime.server import new_credential
    from headwater_runtime.store import AuditRow, Conflict, NotFound

    now = time.time()
    if args.action == "create":
        try:
            row, token = new_credential(
                args.name, args.role, subject=args.subject or "", created_by=OFFLINE, now=now
            )
            store.add_credential(row)
        except (ValueError, Conflict) as exc:
            raise UsageError(str(exc)) from None
        store.add_audit(AuditRow(now, OFFLINE, "credential.create", "credential", row.name))
        return _created(_info(row), token)
    if args.action == "list":
        return _listed(
            [_info(r) for r in store.list_credentials(include_revoked=args.all)], args.all
        )
    try:
        row = store.revoke_credential(args.name, now)
    except NotFound as exc:
        raise UsageError(str(exc)) from None
    store.add_audit(AuditRow(now, OFFLINE, "credential.revoke", "credential", row.name))
    print(f"revoked {_line(_info(row))}")
    return EXIT_OK


def _info(row: Any) -> CredentialInfo:
    """A stored credential as the client's CredentialInfo."""

    def when(t: float | None) -> datetime | None:
        return None if t is None else datetime.fromtimestamp(t, UTC)

    created = when(row.created_at)
    assert created is not None
    return CredentialInfo(
        row.name, row.role, row.subject, created, row.created_by, when(row.revoked_at)
    )


def add_tokens_command(sub: Any) -> None:
    """Add ``headwater tokens`` and its flags to the CLI's subcommands."""
    tokens = sub.add_parser(
        "tokens",
        help="create, list or revoke named credentials with roles",
        description="Manage a server's credentials: each has a name (recorded in the audit "
        "log as who did what) and a role: admin, operator, viewer or worker "
        "(docs/security.md). 'create' prints the token once, on stdout. With --db it works "
        "offline on the server's database (how the first admin is made); with --server it "
        "asks the server, with an admin credential. A running server sees changes at once "
        "(online) or within a second (offline).",
    )
    tokens.add_argument("action", choices=["create", "list", "revoke"])
    tokens.add_argument("name_arg", nargs="?", metavar="NAME", help="revoke: the credential")
    tokens.add_argument("--name", default=None, help="create: a unique name, e.g. ci or worker-1")
    tokens.add_argument("--role", default=None, help="create: admin, operator, viewer or worker")
    tokens.add_argument(
        "--subject",
        default=None,
        help="create: a client certificate subject (e.g. 'CN=worker-1') that stands in for "
        "a token under mutual TLS; no token is made",
    )
    tokens.add_argument("--all", action="store_true", help="list: include revoked credentials")
    tokens.add_argument(
        "--db",
        default=None,
        help="the server's database (a SQLite path or a postgresql:// URL): work "
        "offline (or HEADWATER_DB)",
    )
    tokens.add_argument(
        "--server",
        default=None,
        help="HOST:PORT, or several comma-separated (or HEADWATER_SERVER)",
    )
    tokens.add_argument("--token", default=None, help="an admin's token (or HEADWATER_TOKEN)")
    add_tls_args(tokens)
    tokens.set_defaults(func=_dispatch, late_positional="name_arg")


def _dispatch(args: argparse.Namespace) -> int:
    if args.action == "revoke":
        args.name = args.name or args.name_arg
    return cmd_tokens(args)
