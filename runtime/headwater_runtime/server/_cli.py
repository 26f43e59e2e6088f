"""``headwater server``: argument parsing (heavy imports happen only when it runs)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from headwater.wire import LIMIT_SPECS, Limits, limit_flag, limit_variable, parse_duration


def add_server_command(sub: Any) -> None:
    """Add ``headwater server`` and its flags to the CLI's subcommands."""
    server = sub.add_parser(
        "server",
        help="run the control plane (gRPC API, worker gateway, SQLite or PostgreSQL store)",
        description="Run the Headwater control plane. Prints 'headwater server listening on "
        "HOST:PORT' once it serves, then 'headwater web UI on http://HOST:PORT/': the web "
        "UI and its JSON API (docs/http-api.md) on the HTTP port. Unfinished flow runs in "
        "the database are resumed once it listens (calls for a run wait until it is "
        "replayed), and it says so when all are ('headwater server resumed N unfinished "
        "flow runs in S s: ...'). Calls need a "
        "credential once --token is given, client certificates are required, or any "
        "credential exists in the database "
        "(docs/security.md). SIGHUP re-reads the TLS certificate without dropping workers. "
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
        "--http-port",
        type=_port_or_off,
        default=None,
        help="port of the web UI and JSON API (default: the gRPC port + 1, 50052; a free "
        "port when --port is 0; off: none, as --no-http; or HEADWATER_HTTP_PORT)",
    )
    server.add_argument(
        "--no-http",
        action="store_true",
        help="serve no web UI and HTTP API (or HEADWATER_HTTP_PORT=off)",
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
        "--host and the bound port, or HEADWATER_ADVERTISE)",
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
        "they end, e.g. 30d or 12h, forget workers gone for as long, and delete flow "
        "builds (VERSION@DIGEST) no run or schedule has used for as long (or "
        "HEADWATER_RETENTION; default: keep forever); checked when the server starts and "
        "every 10 minutes",
    )
    server.add_argument(
        "--dask-release-after",
        default=None,
        metavar="DURATION",
        help="how long a finished run's values held by Dask bridge workers stay in their "
        "clusters (clients can read them, a retry reuses them), e.g. 10m or 0 (or "
        "HEADWATER_DASK_RELEASE_AFTER; default 5m); a run's result stays until the run "
        "is pruned",
    )
    server.add_argument(
        "--stop-timeout",
        default=None,
        metavar="DURATION",
        help="the longest a stop may take after SIGTERM or SIGINT (a database that does not "
        "answer): then the server writes every thread's stack and exits with status 1; a "
        "second signal exits at once (or HEADWATER_STOP_TIMEOUT; default 30s)",
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
    server.add_argument(
        "--log-level",
        default=None,
        type=str.lower,
        choices=("debug", "info", "warning", "error"),
        help="what the server logs on stderr, each record with its time, level and "
        "logger (or HEADWATER_LOG_LEVEL; default info)",
    )
    server.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="TOML configuration file (or HEADWATER_CONFIG): settings, limits, webhooks; "
        "flags win over environment variables, which win over the file (docs/operations.md)",
    )
    server.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics on http://HOST:PORT/metrics (or HEADWATER_METRICS_PORT; "
        "0 picks a free port; default: not served)",
    )
    server.add_argument(
        "--heartbeat-interval",
        default=None,
        metavar="DURATION",
        help="how often workers send heartbeats (or HEADWATER_HEARTBEAT_INTERVAL; default 5s)",
    )
    server.add_argument(
        "--heartbeat-timeout",
        default=None,
        metavar="DURATION",
        help="how long a silent worker keeps its attempts before they are dispatched again "
        "(or HEADWATER_HEARTBEAT_TIMEOUT; default 20s)",
    )
    server.add_argument(
        "--late-after",
        default=None,
        metavar="DURATION",
        help="mark a run late when no task run of it started this long after it was created "
        "(or HEADWATER_LATE_AFTER; default 1m; 0: never)",
    )
    server.add_argument(
        "--forget-workers-after",
        default=None,
        metavar="DURATION",
        help="list a worker that left (offline) this long after its last message, then forget "
        "its record (or HEADWATER_FORGET_WORKERS_AFTER; default 7d; 0: never)",
    )
    server.add_argument(
        "--ui-url",
        default=None,
        metavar="URL",
        help="the web UI's base URL, for links to runs in webhook bodies (or HEADWATER_UI_URL)",
    )
    server.set_defaults(func=run_server)


_UNSET: Any = object()


def _port_or_off(text: str) -> int | bool:
    """``--http-port``: a port, or False for "off" (as HEADWATER_HTTP_PORT=off and the
    file's ``http_port = "off"`` take it: the flag refused it)."""
    if text.strip().lower() == "off":
        return False
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port 0..65535 or off, got {text!r}") from None


def _duration(flag: str, text: str | None, *, optional: bool, unit: bool = False) -> Any:
    """A duration flag's seconds (_UNSET when not given; 0 for "0" if ``optional``;
    ``unit``: a bare number refused); ValueError naming the flag."""
    if text is None:
        return _UNSET
    if optional and text.strip().lower() in ("0", "off", "never"):
        return 0.0
    try:
        return parse_duration(text, unit=unit)
    except ValueError as exc:
        raise ValueError(f"{flag} {exc}{' (or 0)' if optional else ''}") from None


def _url(flag: str, text: str | None) -> str | None:
    """A URL flag, checked as the file's and the environment's are (ValueError naming
    the flag)."""
    if text is None:
        return None
    from ._config import web_address

    try:
        return web_address(text)
    except ValueError as exc:
        raise ValueError(f"{flag} {exc}") from None


#: Seconds a thread holds the GIL before another that waits for it gets it (sys). At
#: 0.2 ms rather than 1 ms, other clients' round trips while a 100,000-task graph was
#: registered went from p50 3.1-3.3 / p99 9.9 ms to p50 1.4-1.5 / p99 6.1-6.5 ms
#: (``server-loop``, alternate runs), with no cost to throughput that the runs could
#: tell apart (server CPU per fan-out task: a median of 385 µs against 449 µs over three
#: pairs each, on a noisy machine).
SWITCH_INTERVAL = 0.0002


def _missing_folder(db: str) -> str:
    """Why a SQLite ``db`` cannot be made ("" when it can): a database named by hand is
    made only in a folder that exists (``--db /nonexistent-dir/x.db`` made the folders
    and served an empty database: a typo looked like a clean start, a user trial); the
    default's folder is made as needed."""
    from pathlib import Path

    from ._core import ServerSettings

    if db in (":memory:", ServerSettings.db):
        return ""
    folder = Path(db).expanduser().parent
    if folder.is_dir():
        return ""
    return (
        f"the folder of --db {db} does not exist ({folder}): create it first, or fix the "
        "path (a new database is made only in a folder that exists)"
    )


def run_server(args: argparse.Namespace) -> int:
    """``headwater server``: serve until SIGINT/SIGTERM; the exit code (2 when the
    ``server`` extra is missing or a flag or OTEL_* variable is wrong)."""
    from headwater_runtime.tracing import (
        TracingConfigError,
        configure_tracing,
        tracing_settings_from_env,
    )

    # Heavy requests (a 100,000-task graph to check, a run to build) run on reader and
    # writer threads; the event loop serving everyone else gets the GIL back from them
    # after this long, rather than after CPython's default 5 ms.
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        from ._app import serve_forever, settings_from_env
        from ._config import ConfigError, limits_from_env
    except ImportError as exc:  # grpcio-health-checking, grpcio-reflection, croniter
        print(
            f"headwater: error: the server needs the 'server' extra ({exc.name} is not "
            "installed): pip install 'headwater[server]'",
            file=sys.stderr,
        )
        return 2

    for flag, port in (
        ("--port", args.port),
        ("--http-port", args.http_port),
        ("--metrics-port", args.metrics_port),
    ):
        if port is not None and not 0 <= port <= 65535:
            print(f"headwater: error: {flag} must be 0..65535, got {port}", file=sys.stderr)
            return 2
    try:
        durations = {
            # (--retention 30, read as seconds, deleted almost every finished run)
            field: _duration(
                flag, getattr(args, field), optional=optional, unit=field == "retention"
            )
            for field, flag, optional in (
                ("retention", "--retention", False),
                ("heartbeat_interval", "--heartbeat-interval", False),
                ("heartbeat_timeout", "--heartbeat-timeout", False),
                ("late_after", "--late-after", True),
                ("forget_workers_after", "--forget-workers-after", True),
                ("lease", "--lease", False),
                ("dask_release_after", "--dask-release-after", True),
                ("stop_timeout", "--stop-timeout", False),
            )
        }
        settings = settings_from_env(
            config=args.config,
            host=args.host,
            port=args.port,
            db=args.db,
            token=args.token,
            payload_dir=args.payload_dir,
            advertise=args.advertise,
            metrics_port=args.metrics_port,
            ui_url=_url("--ui-url", args.ui_url),
            limits=limits_from_env(**{s.name: getattr(args, s.name) for s in LIMIT_SPECS}),
            http_port=args.http_port,
            http=False if args.no_http else None,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_client_ca=args.tls_client_ca,
            log_level=args.log_level,
            **{k: v for k, v in durations.items() if v is not _UNSET},
        )
    except (ConfigError, ValueError) as exc:
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
    else:
        missing = _missing_folder(settings.db)
        if missing:
            print(f"headwater: error: {missing}", file=sys.stderr)
            return 2
    try:
        # Before the gRPC server exists: its instrumentation hooks server creation.
        tracing = configure_tracing(tracing_settings_from_env(service_name="headwater-server"))
    except TracingConfigError as exc:
        print(f"headwater: error: {exc}", file=sys.stderr)
        return 2
    # Only now, every setting checked: a refused start leaves the process's logging as
    # it found it (the CLI's own tests call it in-process).
    configure_logging(settings.log_level)
    try:
        status = asyncio.run(serve_forever(settings))
    except ValueError as exc:  # TLSConfigError: a certificate file that cannot be used
        print(f"headwater: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as exc:
        print(f"headwater: error: {exc}", file=sys.stderr)
        return 1
    finally:
        tracing.shutdown()  # SIGTERM ends serve_forever normally: spans are flushed
    return status  # (1: it stopped with state it could not store)


def configure_logging(level: str) -> None:
    """Log records on stderr with their time, level and logger: Headwater's from
    ``level`` up (debug, info, warning, error), other libraries' from warning up."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("headwater").setLevel(level.upper())
