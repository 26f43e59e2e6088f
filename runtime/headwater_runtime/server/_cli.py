"""``headwater server``: argument parsing (heavy imports happen only when it runs)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from headwater.wire import parse_duration


def add_server_command(sub: Any) -> None:
    """Add ``headwater server`` and its flags to the CLI's subcommands."""
    server = sub.add_parser(
        "server",
        help="run the control plane (gRPC API, worker gateway, SQLite or PostgreSQL store)",
        description="Run the Headwater control plane. Prints 'headwater server listening on "
        "HOST:PORT' once it serves. Unfinished flow runs in the database are resumed. "
        "Several servers can share one PostgreSQL database: one leads, the others stand "
        "by (printing 'headwater server standing by on HOST:PORT: the leader is ...') and "
        "take over within --lease when it stops (docs/deployment.md). "
        "OTEL_TRACES_EXPORTER=otlp|console exports every flow run as a trace, with the "
        "standard OTEL_* variables (docs/tracing.md).",
    )
    server.add_argument("--host", default=None, help="interface to bind (default 127.0.0.1)")
    server.add_argument(
        "--port", type=int, default=None, help="port (default 50051; 0 picks a free port)"
    )
    server.add_argument(
        "--db",
        default=None,
        help="SQLite database path, or a PostgreSQL URL postgresql://USER@HOST[:PORT]/DB "
        "(needs 'headwater[postgres]'; the schema is created and migrated at start) "
        "(default ~/.headwater/headwater.db, or HEADWATER_DB)",
    )
    server.add_argument(
        "--payload-dir",
        default=None,
        metavar="DIR",
        help="keep the bytes of large payloads as files in DIR (e.g. a mount every server "
        "sees) instead of the database (or HEADWATER_PAYLOAD_DIR)",
    )
    server.add_argument(
        "--lease",
        default=None,
        metavar="DURATION",
        help="with PostgreSQL: how long the leader's lease lasts; a standby takes over at "
        "most this long after the leader stops (default 10s, or HEADWATER_LEASE)",
    )
    server.add_argument(
        "--advertise",
        default=None,
        metavar="HOST:PORT",
        help="the address standbys name as the leader while this server leads (default: "
        "--host and the bound port)",
    )
    server.add_argument(
        "--token",
        default=None,
        help="require 'authorization: Bearer TOKEN' on every call (or HEADWATER_TOKEN)",
    )
    server.add_argument(
        "--retention",
        default=None,
        metavar="DURATION",
        help="delete finished runs (with their journal, logs and values) this long after "
        "they end, e.g. 30d or 12h (or HEADWATER_RETENTION; default: keep forever)",
    )
    server.set_defaults(func=run_server)


def run_server(args: argparse.Namespace) -> int:
    """``headwater server``: serve until SIGINT/SIGTERM; the exit code (2 when the
    ``server`` extra is missing or a flag or OTEL_* variable is wrong)."""
    from headwater_runtime.tracing import (
        TracingConfigError,
        configure_tracing,
        tracing_settings_from_env,
    )

    try:
        from ._app import serve_forever, settings_from_env
    except ImportError as exc:  # grpcio-health-checking, grpcio-reflection, croniter
        print(
            f"headwater: error: the server needs the 'server' extra ({exc.name} is not "
            "installed): pip install 'headwater[server]'",
            file=sys.stderr,
        )
        return 2

    if args.port is not None and not 0 <= args.port <= 65535:
        print(f"headwater: error: --port must be 0..65535, got {args.port}", file=sys.stderr)
        return 2
    durations: dict[str, float | None] = {}
    for flag, text in (("retention", args.retention), ("lease", args.lease)):
        try:
            durations[flag] = None if text is None else parse_duration(text)
        except ValueError as exc:
            print(f"headwater: error: --{flag} {exc}", file=sys.stderr)
            return 2
    try:
        settings = settings_from_env(
            host=args.host,
            port=args.port,
            db=args.db,
            token=args.token,
            retention=durations["retention"],
            payload_dir=args.payload_dir,
            lease=durations["lease"],
            advertise=args.advertise,
        )
    except ValueError as exc:  # HEADWATER_RETENTION or HEADWATER_LEASE
        print(f"headwater: error: {exc}", file=sys.stderr)
        return 2
    from headwater_runtime.store import is_postgres

    if is_postgres(settings.db):
        try:
            import psycopg  # noqa: F401
            import psycopg_pool  # noqa: F401
        except ImportError as exc:
            print(
                f"headwater: error: a PostgreSQL --db needs the 'postgres' extra ({exc.name} "
                "is not installed): pip install 'headwater[postgres]'",
                file=sys.stderr,
            )
            return 2
    try:
        # Before the gRPC server exists: its instrumentation hooks server creation.
        tracing = configure_tracing(tracing_settings_from_env(service_name="headwater-server"))
    except TracingConfigError as exc:
        print(f"headwater: error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve_forever(settings))
    except (OSError, RuntimeError) as exc:
        print(f"headwater: error: {exc}", file=sys.stderr)
        return 1
    finally:
        tracing.shutdown()  # SIGTERM ends serve_forever normally: spans are flushed
    return 0
