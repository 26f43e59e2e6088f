"""``headwater server``: argument parsing (heavy imports happen only when it runs)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from headwater.wire import LIMIT_SPECS, Limits, limit_flag, limit_variable, parse_duration


def add_server_command(sub: Any) -> None:
    """Add ``headwater server`` and its flags to the CLI's subcommands."""
    server = sub.add_parser(
        "server",
        help="run the control plane (gRPC API, worker gateway, SQLite store)",
        description="Run the Headwater control plane. Prints 'headwater server listening on "
        "HOST:PORT' once bound, then 'headwater web UI on http://HOST:PORT/': the web UI "
        "and its JSON API (docs/http-api.md) on the HTTP port. Unfinished flow runs in "
        "the database are resumed. Calls need a credential once --token is given, client "
        "certificates are required, or any credential exists in the database "
        "(docs/security.md). SIGHUP re-reads the TLS certificate without dropping workers. "
        "OTEL_TRACES_EXPORTER=otlp|console exports every flow run as a trace, with the "
        "standard OTEL_* variables (docs/tracing.md).",
    )
    server.add_argument("--host", default=None, help="interface to bind (default 127.0.0.1)")
    server.add_argument(
        "--port", type=int, default=None, help="port (default 50051; 0 picks a free port)"
    )
    server.add_argument(
        "--http-port",
        type=int,
        default=None,
        help="port of the web UI and JSON API (default: the gRPC port + 1, 50052; a free "
        "port when --port is 0; or HEADWATER_HTTP_PORT)",
    )
    server.add_argument(
        "--no-http",
        action="store_true",
        help="serve no web UI and HTTP API (or HEADWATER_HTTP_PORT=off)",
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
    limits = server.add_argument_group(
        "limits",
        "the most the server accepts of each size a peer can state; a request over one is "
        "refused with RESOURCE_EXHAUSTED naming it (docs/limits.md)",
    )
    defaults = Limits()
    for spec in LIMIT_SPECS:
        limits.add_argument(
            limit_flag(spec.name),
            type=int,
            default=None,
            metavar="BYTES" if spec.unit == "bytes" else "N",
            help=f"{spec.meaning} (or {limit_variable(spec.name)}; default "
            f"{getattr(defaults, spec.name):,})",
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
        from ._app import limits_from_env, serve_forever, settings_from_env
    except ImportError as exc:  # grpcio-health-checking, grpcio-reflection, croniter
        print(
            f"headwater: error: the server needs the 'server' extra ({exc.name} is not "
            "installed): pip install 'headwater[server]'",
            file=sys.stderr,
        )
        return 2

    for flag, value in (("--port", args.port), ("--http-port", args.http_port)):
        if value is not None and not 0 <= value <= 65535:
            print(f"headwater: error: {flag} must be 0..65535, got {value}", file=sys.stderr)
            return 2
    try:
        retention = None if args.retention is None else parse_duration(args.retention)
    except ValueError as exc:
        print(f"headwater: error: --retention (or HEADWATER_RETENTION) {exc}", file=sys.stderr)
        return 2
    try:
        limits = limits_from_env(**{s.name: getattr(args, s.name) for s in LIMIT_SPECS})
        settings = settings_from_env(
            host=args.host,
            port=args.port,
            db=args.db,
            token=args.token,
            retention=retention,
            limits=limits,
            http_port=args.http_port,
            http=False if args.no_http else None,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_client_ca=args.tls_client_ca,
        )
    except ValueError as exc:
        print(f"headwater: error: {exc}", file=sys.stderr)
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
