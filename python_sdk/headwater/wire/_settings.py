"""Environment variables every Headwater process reads, named once.

Entry points (the CLI, ``Client``, ``Worker``, ``headwater server``) build their
settings from defaults, then these variables, then their own flags or arguments; code
below them is handed the result and never reads the environment itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

#: ``HOST:PORT`` of the control plane (clients, workers, the CLI); several servers
#: sharing one PostgreSQL database as ``HOST:PORT,HOST:PORT`` (the leader is found).
ENV_SERVER = "HEADWATER_SERVER"
#: Bearer token: required by a server started with it, sent by clients and workers.
ENV_TOKEN = "HEADWATER_TOKEN"
#: The server's database: a SQLite path, or a ``postgresql://`` URL.
ENV_DB = "HEADWATER_DB"
#: How long the server keeps finished runs (a duration such as 30d; unset: forever).
ENV_RETENTION = "HEADWATER_RETENTION"
#: A directory for payload bytes instead of the database (e.g. a shared mount).
ENV_PAYLOAD_DIR = "HEADWATER_PAYLOAD_DIR"
#: How long a leader's lease lasts (servers sharing a PostgreSQL database), e.g. 10s.
ENV_LEASE = "HEADWATER_LEASE"
#: The address standbys name as the leader while this server leads (HOST:PORT).
ENV_ADVERTISE = "HEADWATER_ADVERTISE"
#: The server's HTTP port (web UI and JSON API), or ``off``.
ENV_HTTP_PORT = "HEADWATER_HTTP_PORT"
#: Clients and workers: "1" to speak TLS and verify the server with the system roots.
ENV_TLS = "HEADWATER_TLS"
#: Clients and workers: the CA certificate (PEM) that signed the server's certificate.
ENV_TLS_CA = "HEADWATER_TLS_CA"
#: The certificate (PEM) a process presents: the server's own, or a client's for mTLS.
ENV_TLS_CERT = "HEADWATER_TLS_CERT"
#: The private key (PEM) of HEADWATER_TLS_CERT.
ENV_TLS_KEY = "HEADWATER_TLS_KEY"
#: The server: require client certificates signed by this CA (mutual TLS).
ENV_TLS_CLIENT_CA = "HEADWATER_TLS_CLIENT_CA"
# The server's other settings (runtime/headwater_runtime/server/_config.py reads them).
#: The server's TOML configuration file.
ENV_CONFIG = "HEADWATER_CONFIG"
#: The interface the server binds.
ENV_HOST = "HEADWATER_HOST"
#: The server's gRPC port.
ENV_PORT = "HEADWATER_PORT"
#: The port of the server's /metrics (Prometheus).
ENV_METRICS_PORT = "HEADWATER_METRICS_PORT"
#: How often workers send heartbeats.
ENV_HEARTBEAT_INTERVAL = "HEADWATER_HEARTBEAT_INTERVAL"
#: How long the server waits for a silent worker before its attempts count as lost.
ENV_HEARTBEAT_TIMEOUT = "HEADWATER_HEARTBEAT_TIMEOUT"
#: When a run that has not started counts as late.
ENV_LATE_AFTER = "HEADWATER_LATE_AFTER"
#: How long the server remembers a worker that left (its record in ``workers list``).
ENV_FORGET_WORKERS_AFTER = "HEADWATER_FORGET_WORKERS_AFTER"
#: The web UI's base URL (links in webhook bodies).
ENV_UI_URL = "HEADWATER_UI_URL"
#: What the server logs: debug, info, warning or error.
ENV_LOG_LEVEL = "HEADWATER_LOG_LEVEL"
#: How long a finished run's values stay held by Dask bridge workers.
ENV_DASK_RELEASE_AFTER = "HEADWATER_DASK_RELEASE_AFTER"
#: How long ``headwater server`` may take to stop after SIGTERM or SIGINT.
ENV_STOP_TIMEOUT = "HEADWATER_STOP_TIMEOUT"

#: Every variable above with what it sets (the README's table is checked against it).
VARIABLES: dict[str, str] = {
    ENV_SERVER: "HOST:PORT of the control plane, for clients, workers and the CLI's server "
    "commands (several, comma-separated: the leader among them is found); `headwater run` "
    "runs embedded unless given `--server`",
    ENV_TOKEN: "bearer token the server requires (an admin credential) and clients and "
    "workers send",
    ENV_DB: "the server's database: a SQLite path or a postgresql:// URL",
    ENV_RETENTION: "how long the server keeps finished runs, e.g. 30d (default: forever)",
    ENV_PAYLOAD_DIR: "a directory for payload bytes instead of the database (default: none)",
    ENV_LEASE: "how long a leader's lease lasts with PostgreSQL, e.g. 10s (default 10s)",
    ENV_ADVERTISE: "with PostgreSQL: the HOST:PORT standbys name as the leader while this "
    "server leads (default: the host and the bound port)",
    ENV_HTTP_PORT: "the server's web UI port, or off (default: the gRPC port + 1)",
    ENV_TLS: "clients and workers: `1` to speak TLS, verifying the server with the "
    "system's root certificates",
    ENV_TLS_CA: "clients and workers: speak TLS, verifying the server with this CA "
    "certificate (PEM file)",
    ENV_TLS_CERT: "the server: its certificate (PEM file; serves TLS); clients and "
    "workers: the certificate they present for mutual TLS",
    ENV_TLS_KEY: "the private key (PEM file) of `HEADWATER_TLS_CERT`",
    ENV_TLS_CLIENT_CA: "the server: require client certificates signed by this CA (mutual TLS)",
    ENV_CONFIG: "the server's TOML configuration file (docs/operations.md)",
    ENV_HOST: "the interface the server binds (default 127.0.0.1)",
    ENV_PORT: "the server's gRPC port (default 50051)",
    ENV_METRICS_PORT: "the port of the server's /metrics for Prometheus (default: not served)",
    ENV_HEARTBEAT_INTERVAL: "how often workers send heartbeats (default 5s)",
    ENV_HEARTBEAT_TIMEOUT: "how long a silent worker keeps its attempts (default 20s)",
    ENV_LATE_AFTER: "when a run that has not started is marked late (default 1m; 0: never)",
    ENV_FORGET_WORKERS_AFTER: "how long the server lists a worker that left before it "
    "forgets it (default 7d; 0: never)",
    ENV_UI_URL: "the web UI's base URL, for links to runs in webhook bodies",
    ENV_LOG_LEVEL: "what the server logs (stderr): debug, info, warning or error (default info)",
    ENV_DASK_RELEASE_AFTER: "how long a finished run's values stay held by Dask bridge "
    "workers, e.g. 10m or 0 (default 5m; its result's: until the run is pruned)",
    ENV_STOP_TIMEOUT: "the longest the server takes to stop after SIGTERM or SIGINT; then it "
    "exits with status 1, writing every thread's stack (default 30s)",
}

_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True, slots=True)
class TLSSettings:
    """How a client or worker secures its connection (all None/False: plaintext).

    ``enabled`` with no ``ca`` verifies the server against the system's roots; ``cert``
    and ``key`` are the client certificate presented to a server that requires one.
    """

    enabled: bool = False
    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    @property
    def on(self) -> bool:
        """Whether to speak TLS (asked for, or implied by a CA or a client certificate)."""
        return self.enabled or bool(self.ca or self.cert)

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        enabled: bool | None = None,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
    ) -> TLSSettings:
        """Explicit values first, then HEADWATER_TLS, _CA, _CERT and _KEY."""
        env = os.environ if environ is None else environ
        return cls(
            enabled=enabled if enabled is not None else env.get(ENV_TLS, "").lower() in _TRUE,
            ca=ca or env.get(ENV_TLS_CA) or None,
            cert=cert or env.get(ENV_TLS_CERT) or None,
            key=key or env.get(ENV_TLS_KEY) or None,
        )


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """Where a client or worker connects, with which credential, and how (TLS)."""

    server: str | None = None
    token: str | None = None
    tls: TLSSettings = TLSSettings()

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        server: str | None = None,
        token: str | None = None,
        tls: TLSSettings | None = None,
    ) -> ConnectionSettings:
        """Explicit values first, then HEADWATER_SERVER / HEADWATER_TOKEN / HEADWATER_TLS*."""
        env = os.environ if environ is None else environ
        return cls(
            server=server or env.get(ENV_SERVER) or None,
            token=token if token is not None else (env.get(ENV_TOKEN) or None),
            tls=tls if tls is not None else TLSSettings.from_env(env),
        )

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """gRPC call metadata carrying the token (empty without one)."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()
