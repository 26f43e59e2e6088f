"""The server's settings from one TOML file, the environment and flags.

``headwater server --config headwater.toml`` (or ``HEADWATER_CONFIG``). Each setting
comes from, in this order of precedence: a command-line flag, a ``HEADWATER_*``
environment variable, the file, the default (``ServerSettings``). docs/operations.md
shows a whole file; every key is optional, and an unknown key or a bad value is an
error naming the file, the key and what it expects.

    [server]
    host = "0.0.0.0"            # HEADWATER_HOST, --host
    port = 50051                # HEADWATER_PORT, --port
    metrics_port = 9464         # HEADWATER_METRICS_PORT, --metrics-port
    db = "/var/lib/headwater/headwater.db"   # HEADWATER_DB, --db (or postgresql://...)
    token = "..."               # HEADWATER_TOKEN, --token
    retention = "30d"           # HEADWATER_RETENTION, --retention
    heartbeat_interval = "5s"   # HEADWATER_HEARTBEAT_INTERVAL, --heartbeat-interval
    heartbeat_timeout = "20s"   # HEADWATER_HEARTBEAT_TIMEOUT, --heartbeat-timeout
    late_after = "1m"           # HEADWATER_LATE_AFTER, --late-after ("0": never late)
    forget_workers_after = "7d" # HEADWATER_FORGET_WORKERS_AFTER, --forget-workers-after
    ui_url = "http://headwater.example:8080"  # HEADWATER_UI_URL, --ui-url
    http_port = 8080            # HEADWATER_HTTP_PORT, --http-port ("off": no web UI)
    tls_cert = "/etc/headwater/server.crt"    # HEADWATER_TLS_CERT, --tls-cert
    tls_key = "/etc/headwater/server.key"     # HEADWATER_TLS_KEY, --tls-key
    tls_client_ca = "/etc/headwater/ca.pem"   # HEADWATER_TLS_CLIENT_CA, --tls-client-ca
    payload_dir = "/var/lib/headwater/payloads"  # HEADWATER_PAYLOAD_DIR, --payload-dir
    lease = "10s"               # HEADWATER_LEASE, --lease (with PostgreSQL)
    log_level = "info"          # HEADWATER_LOG_LEVEL, --log-level
    dask_release_after = "5m"   # HEADWATER_DASK_RELEASE_AFTER, --dask-release-after
    stop_timeout = "30s"        # HEADWATER_STOP_TIMEOUT, --stop-timeout

The size limits on what peers send (docs/limits.md) come from ``HEADWATER_MAX_*``
variables and ``--max-*`` flags (``limits_from_env``), not from the file.

    [limits.db]                 # set at every start (as `headwater limits set db ...`)
    concurrency = 3
    rate = "10/s"

    [[webhooks]]                # created at start unless an identical one exists
    url = "https://hooks.example/headwater"
    flows = ["etl"]
    states = ["FAILED", "CANCELLED"]
    late = true
    secret = "..."

    [webhook_delivery]
    max_attempts = 10
    backoff = "1s"
    backoff_max = "5m"
    timeout = "10s"
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from headwater.wire import (
    ENV_ADVERTISE,
    ENV_CONFIG,
    ENV_DASK_RELEASE_AFTER,
    ENV_DB,
    ENV_FORGET_WORKERS_AFTER,
    ENV_HEARTBEAT_INTERVAL,
    ENV_HEARTBEAT_TIMEOUT,
    ENV_HOST,
    ENV_HTTP_PORT,
    ENV_LATE_AFTER,
    ENV_LEASE,
    ENV_LOG_LEVEL,
    ENV_METRICS_PORT,
    ENV_PAYLOAD_DIR,
    ENV_PORT,
    ENV_RETENTION,
    ENV_STOP_TIMEOUT,
    ENV_TLS_CERT,
    ENV_TLS_CLIENT_CA,
    ENV_TLS_KEY,
    ENV_TOKEN,
    ENV_UI_URL,
    LIMIT_SPECS,
    FlowRunState,
    Limits,
    limit_variable,
    parse_duration,
    parse_rate,
)
from headwater_runtime.store import LimitRow, WebhookRow

from ._core import ServerSettings


class ConfigError(ValueError):
    """A configuration file, variable or flag that cannot be used; one line naming it."""


def _whole(value: Any) -> int | None:
    """``value`` as an int (a TOML integer or its text), else None (a float too: 2.7
    was read as 2)."""
    if isinstance(value, bool | float):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _port(text: Any) -> int:
    port = _whole(text)
    if port is None or not 0 <= port <= 65535:
        raise ValueError(f"must be a port 0..65535, got {text!r}")
    return port


def _seconds(text: Any) -> float:
    return parse_duration(str(text))


def _age(text: Any) -> float:
    """A duration after which data is deleted: with a unit (``--retention 30``, read as
    seconds, deleted almost every finished run at the server's start)."""
    return parse_duration(str(text), unit=True)


def _optional_seconds(text: Any) -> float:
    """A duration, or 0 for 0 / "0" / "off" / "never" (turned off)."""
    if str(text).strip().lower() in ("0", "off", "never"):
        return 0.0
    try:
        return _seconds(text)
    except ValueError as exc:  # ("must be a positive duration" read as if 0 were not taken)
        raise ValueError(f"{exc} (or 0)") from None


def _http_port(text: Any) -> int | bool:
    """A port for the web UI, or False for "off"."""
    return False if str(text).strip().lower() == "off" else _port(text)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {value!r}")
    return value


def web_address(value: Any) -> str:
    """An http(s) URL (the web UI's address, put in links): ``javascript:...`` or a
    URL with a space was taken and put in every webhook body (a user trial)."""
    text = _text(value).strip()
    if not text:
        return text
    import urllib.parse

    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc or any(c.isspace() for c in text):
        raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
    return text


#: The levels ``log_level`` accepts.
LOG_LEVELS = ("debug", "info", "warning", "error")


def _log_level(value: Any) -> str:
    level = str(value).strip().lower()
    if level not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return level


def _count(value: Any) -> int:
    count = _whole(value)
    if count is None or count < 1:
        raise ValueError(f"must be a whole number >= 1, got {value!r}")
    return count


#: Settings with an environment variable: (ServerSettings field, variable, parser).
ENVIRONMENT: tuple[tuple[str, str, Callable[[Any], Any]], ...] = (
    ("host", ENV_HOST, _text),
    ("port", ENV_PORT, _port),
    ("metrics_port", ENV_METRICS_PORT, _port),
    ("db", ENV_DB, _text),
    ("token", ENV_TOKEN, _text),
    ("retention", ENV_RETENTION, _age),
    ("heartbeat_interval", ENV_HEARTBEAT_INTERVAL, _seconds),
    ("heartbeat_timeout", ENV_HEARTBEAT_TIMEOUT, _seconds),
    ("late_after", ENV_LATE_AFTER, _optional_seconds),
    ("forget_workers_after", ENV_FORGET_WORKERS_AFTER, _optional_seconds),
    ("ui_url", ENV_UI_URL, web_address),
    ("http_port", ENV_HTTP_PORT, _http_port),
    ("tls_cert", ENV_TLS_CERT, _text),
    ("tls_key", ENV_TLS_KEY, _text),
    ("tls_client_ca", ENV_TLS_CLIENT_CA, _text),
    ("payload_dir", ENV_PAYLOAD_DIR, _text),
    ("lease", ENV_LEASE, _seconds),
    ("advertise", ENV_ADVERTISE, _text),
    ("log_level", ENV_LOG_LEVEL, _log_level),
    ("dask_release_after", ENV_DASK_RELEASE_AFTER, _optional_seconds),
    ("stop_timeout", ENV_STOP_TIMEOUT, _seconds),
)
_SERVER_KEYS = {field: parse for field, _, parse in ENVIRONMENT}
_DELIVERY_KEYS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "max_attempts": ("webhook_max_attempts", _count),
    "backoff": ("webhook_backoff", _seconds),
    "backoff_max": ("webhook_backoff_max", _seconds),
    "timeout": ("webhook_timeout", _seconds),
}


def settings(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config: str | None = None,
) -> ServerSettings:
    """ServerSettings from flags (values that are None are not given), then the
    environment (a variable a flag overrides is not read), then the configuration file
    (``config``, else HEADWATER_CONFIG), then the defaults. ConfigError names what is
    wrong."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = config or env.get(ENV_CONFIG) or None
    if path:
        values.update(load_file(path))
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    if given.get("http") is False:  # --no-http overrides the HTTP port's variable too
        given.setdefault("http_port", False)
    for field, variable, parse in ENVIRONMENT:
        raw = env.get(variable)
        # (A variable a flag overrides is not read: HEADWATER_RETENTION=30 refused
        # `--retention 30d`, the flag meant to put it right, a user trial.)
        if raw and field not in given:
            values[field] = _parsed(parse, raw, f"environment variable {variable}")
    values.update(given)
    if values.get("http_port") is False:  # "off"
        values["http"], values["http_port"] = False, None
    if "limits" not in values:
        values["limits"] = limits_from_env(env)
    chosen = dataclasses.replace(ServerSettings(), **values)
    if chosen.heartbeat_interval >= chosen.heartbeat_timeout:
        # Workers beat at the interval: a timeout no longer than it drops every
        # worker between two beats, and every task outliving it fails as lost.
        raise ConfigError(
            f"heartbeat_interval ({chosen.heartbeat_interval:g}s) must be shorter than "
            f"heartbeat_timeout ({chosen.heartbeat_timeout:g}s): workers would be dropped "
            "between two heartbeats"
        )
    return chosen


def limits_from_env(environ: Mapping[str, str] | None = None, **overrides: int | None) -> Limits:
    """Default limits, then HEADWATER_MAX_* variables, then explicit values (flags);
    ValueError names a variable that is not a whole number, or a limit out of range."""
    source = os.environ if environ is None else environ
    values: dict[str, int] = {}
    for spec in LIMIT_SPECS:
        name = limit_variable(spec.name)
        raw = source.get(name, "").strip()
        if raw and overrides.get(spec.name) is None:  # (a flag overrides it: not read)
            try:
                values[spec.name] = int(raw)
            except ValueError:
                raise ValueError(f"{name} must be a whole number, got {raw!r}") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Limits(**values)


def _parsed(parse: Callable[[Any], Any], raw: Any, where: str) -> Any:
    try:
        return parse(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_file(path: str) -> dict[str, Any]:
    """The ServerSettings values a configuration file sets (ConfigError naming the
    file and key for anything it cannot use)."""
    try:
        doc = tomllib.loads(Path(path).expanduser().read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from None
    where = f"configuration file {path}"
    values: dict[str, Any] = {}
    unknown = sorted(set(doc) - {"server", "limits", "webhooks", "webhook_delivery"})
    if unknown:
        raise ConfigError(
            f"{where}: unknown table [{unknown[0]}]; the tables are [server], "
            "[limits.TAG], [[webhooks]] and [webhook_delivery]"
        )
    for key, raw in _table(doc, "server", where).items():
        parse = _SERVER_KEYS.get(key)
        if parse is None:
            known = ", ".join(sorted(_SERVER_KEYS))
            raise ConfigError(f"{where}: unknown key [server] {key}; the keys are {known}")
        values[key] = _parsed(parse, raw, f"{where}: [server] {key}")
    for key, raw in _table(doc, "webhook_delivery", where).items():
        if key not in _DELIVERY_KEYS:
            known = ", ".join(sorted(_DELIVERY_KEYS))
            raise ConfigError(
                f"{where}: unknown key [webhook_delivery] {key}; the keys are {known}"
            )
        field, parse = _DELIVERY_KEYS[key]
        values[field] = _parsed(parse, raw, f"{where}: [webhook_delivery] {key}")
    limits = _table(doc, "limits", where)
    if limits:
        values["tag_limits"] = tuple(_limit(tag, spec, where) for tag, spec in limits.items())
    hooks = doc.get("webhooks", [])
    if not isinstance(hooks, list):
        raise ConfigError(f"{where}: webhooks must be an array of tables: [[webhooks]]")
    if hooks:
        values["webhooks"] = tuple(_webhook(i, spec, where) for i, spec in enumerate(hooks))
    return values


def _table(doc: Mapping[str, Any], name: str, where: str) -> dict[str, Any]:
    table = doc.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: {name} must be a table: [{name}]")
    return table


def _limit(tag: str, spec: Any, where: str) -> LimitRow:
    here = f"{where}: [limits.{tag}]"
    if not isinstance(spec, dict) or not set(spec) <= {"concurrency", "rate"} or not spec:
        raise ConfigError(f'{here} takes concurrency = N and/or rate = "COUNT/PERIOD"')
    concurrency = (
        _parsed(_count, spec["concurrency"], f"{here} concurrency")
        if ("concurrency" in spec)
        else 0
    )
    count, period = (0, 0.0)
    if "rate" in spec:
        count, period = _parsed(lambda r: parse_rate(_text(r)), spec["rate"], f"{here} rate")
    return LimitRow(tag, concurrency, count, period)


def _webhook(index: int, spec: Any, where: str) -> WebhookRow:
    here = f"{where}: [[webhooks]] #{index + 1}"
    known = {"url", "flows", "states", "late", "secret"}
    if not isinstance(spec, dict) or "url" not in spec or not set(spec) <= known:
        raise ConfigError(f"{here} takes url (required), flows, states, late and secret")
    for key in ("flows", "states"):  # a string would be read letter by letter
        value = spec.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{here}: {key} must be a list of strings, got {value!r}")
    if not isinstance(spec.get("late", False), bool):
        raise ConfigError(f"{here}: late must be true or false, got {spec['late']!r}")
    if not isinstance(spec.get("secret", ""), str):
        raise ConfigError(f"{here}: secret must be a string, got {spec['secret']!r}")
    from ._webhooks import EVENT_STATES, WebhookError, check_url

    states = []
    names = ", ".join(s.name for s in EVENT_STATES)
    for name in spec.get("states", []):
        state = FlowRunState.__members__.get(str(name).upper())
        if state not in EVENT_STATES:
            raise ConfigError(f"{here}: {name!r} is not a state a webhook fires for ({names})")
        states.append(state.value)

    url = _parsed(_text, spec["url"], f"{here} url")
    try:
        check_url(url)
    except WebhookError as exc:
        raise ConfigError(f"{here}: {exc}") from None
    return WebhookRow(
        id="",
        url=url,
        flow_names=tuple(str(f) for f in spec.get("flows", [])),
        states=tuple(states),
        late=bool(spec.get("late", False)),
        secret=str(spec.get("secret", "")),
    )
