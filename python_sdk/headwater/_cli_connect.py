"""Connection flags shared by the commands that talk to a server: TLS and mTLS."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headwater.wire import MAX_COUNT, TLSConfigError, TLSSettings

from ._client import Client

if TYPE_CHECKING:
    from headwater_runtime.store import Store
from ._errors import CommandError, Unreachable, UsageError


def add_connection_args(parser: Any, default: Any = None) -> None:
    """Add --server, --token and the TLS flags to a command that talks to a server
    (``default``: what a flag not given leaves; ``argparse.SUPPRESS``: nothing)."""
    parser.add_argument(
        "--server",
        default=default,
        help="HOST:PORT, or several comma-separated (or HEADWATER_SERVER)",
    )
    parser.add_argument("--token", default=default, help="bearer token (or HEADWATER_TOKEN)")
    add_tls_args(parser, default)


def add_tls_args(parser: Any, default: Any = None) -> None:
    """Add --tls, --tls-ca, --tls-cert and --tls-key to a command (``default``: what a
    flag not given leaves; ``argparse.SUPPRESS``: nothing)."""
    parser.add_argument(
        "--tls",
        action="store_true",
        default=default,
        help="speak TLS, verifying the server with the system's roots (or HEADWATER_TLS=1)",
    )
    parser.add_argument(
        "--tls-ca",
        default=default,
        metavar="FILE",
        help="speak TLS, verifying the server with this CA certificate (PEM; or HEADWATER_TLS_CA)",
    )
    parser.add_argument(
        "--tls-cert",
        default=default,
        metavar="FILE",
        help="client certificate (PEM) for a server that requires one (mutual TLS; or "
        "HEADWATER_TLS_CERT)",
    )
    parser.add_argument(
        "--tls-key",
        default=default,
        metavar="FILE",
        help="the client certificate's private key (PEM; or HEADWATER_TLS_KEY)",
    )


def tls_from_args(args: argparse.Namespace) -> TLSSettings:
    """The TLS settings of a command: its flags, then the HEADWATER_TLS* variables."""
    tls = TLSSettings.from_env(
        enabled=getattr(args, "tls", None),
        ca=getattr(args, "tls_ca", None),
        cert=getattr(args, "tls_cert", None),
        key=getattr(args, "tls_key", None),
    )
    if bool(tls.cert) != bool(tls.key):
        raise UsageError("a client certificate needs both --tls-cert and --tls-key")
    return tls


def open_database(db: str, payload_dir: str | None = None, *, create: bool = False) -> Store:
    """The database of a server, for the commands that work on it directly (``prune``,
    ``tokens``): a path that does not exist (unless ``create``: then it is created,
    and stderr says so), or a URL scheme that is not supported, is a UsageError (a
    typo must not silently make an empty database); one that cannot be opened or
    reached, a CommandError. One line either way."""
    from headwater_runtime.store import (
        MissingDriver,
        StoreNotFound,
        StoreUnreachable,
        is_postgres,
        open_store,
    )

    path = Path(db).expanduser()
    new = create and not is_postgres(db) and (not path.exists() or path.stat().st_size == 0)
    # Only a new database gets the schema: one of another schema version is refused, as
    # by prune, never migrated (``tokens create`` migrated it under the older server
    # that runs on it, which then refused to start).
    try:
        store = open_store(db, payload_dir=payload_dir, existing=not create, migrate=False)
    except (MissingDriver, StoreNotFound, ValueError) as exc:
        raise UsageError(str(exc)) from None
    except StoreUnreachable as exc:  # (exit 3, try again: it exited 1, a trial)
        raise Unreachable(" ".join(line.strip() for line in str(exc).splitlines())) from None
    except RuntimeError as exc:  # cannot open (not a database), cannot connect
        raise CommandError(" ".join(line.strip() for line in str(exc).splitlines())) from None
    if new:
        print(f"headwater: created a new database at {db}", file=sys.stderr)
    elif getattr(store, "created", False):  # PostgreSQL: the schema was made now
        where = getattr(store, "where", db)
        print(f"headwater: created Headwater's tables in the database {where}", file=sys.stderr)
    return store


def connect(args: argparse.Namespace, address: str) -> Client:
    """A Client for a command's --server, --token and TLS flags."""
    tls = tls_from_args(args)
    try:
        return Client(
            address,
            token=getattr(args, "token", None),
            tls=tls.enabled,
            tls_ca=tls.ca,
            tls_cert=tls.cert,
            tls_key=tls.key,
        )
    except (TLSConfigError, ValueError) as exc:  # ValueError: an address not HOST:PORT
        raise UsageError(str(exc)) from None


def at_least_one(text: str) -> int:
    """A whole number >= 1 (argparse type: a bad one exits 2 naming the flag)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    if value > MAX_COUNT:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_COUNT:,}, got {value}")
    return value
