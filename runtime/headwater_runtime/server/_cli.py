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
        help="run the control plane (gRPC API, worker gateway, SQLite store)",
        description="Run the Headwater control plane. Prints 'headwater server listening on "
        "HOST:PORT' once bound. Unfinished flow runs in the database are resumed. Calls need "
        "a credential once --token is given, client certificates are required, or any "
        "credential exists in the database (docs/security.md). SIGHUP re-reads the TLS "
        "certificate without dropping workers. "
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
        help="SQLite database path (default ~/.headwater/headwater.db, or HEADWATER_DB)",
    )
    server.add_argument(
        "--token",
        default=None,
        help="an admin credential: calls may send 'authorization: Bearer TOKEN' (or "
        "HEADWATER_TOKEN); more credentials, with roles: headwater tokens create",
    )
    server.add_argument(
        "--tls-cert",
        default=None,
        metavar="FILE",
        help="serve TLS with this certificate (PEM; or HEADWATER_TLS_CERT); re-read on SIGHUP",
    )
    server.add_argument(
        "--tls-key",
        default=None,
        metavar="FILE",
        help="the certificate's private key (PEM; or HEADWATER_TLS_KEY)",
    )
    server.add_argument(
        "--tls-client-ca",
        default=None,
        metavar="FILE",
        help="mutual TLS: require client certificates signed by this CA (PEM; or "
        "HEADWATER_TLS_CLIENT_CA); a certificate's subject can stand in for a token "
        "(headwater tokens create --subject)",
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
    try:
        retention = None if args.retention is None else parse_duration(args.retention)
        settings = settings_from_env(
            host=args.host,
            port=args.port,
            db=args.db,
            token=args.token,
            retention=retention,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_client_ca=args.tls_client_ca,
        )
    except ValueError as exc:
        print(f"headwater: error: --retention (or HEADWATER_RETENTION) {exc}", file=sys.stderr)
        return 2
    try:
        # Before the gRPC server exists: its instrumentation hooks server creation.
        tracing = configure_tracing(tracing_settings_from_env(service_name="headwater-server"))
    except TracingConfigError as exc:
        print(f"headwater: error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve_forever(settings))
    except ValueError as exc:  # TLSConfigError: a certificate file that cannot be used
        print(f"headwater: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as exc:
        print(f"headwater: error: {exc}", file=sys.stderr)
        return 1
    finally:
        tracing.shutdown()  # SIGTERM ends serve_forever normally: spans are flushed
    return 0
