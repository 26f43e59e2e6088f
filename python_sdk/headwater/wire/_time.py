"""Seconds (floats, as the engine keeps time) <-> protobuf Duration and Timestamp."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Protocol

from google.protobuf import duration_pb2, timestamp_pb2

from ._limits import TIMESTAMP_RANGE


class _SecondsNanos(Protocol):
    seconds: int
    nanos: int


_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|[smhdw])")


#: The longest duration a person may give (100 years): longer ones overflowed the
#: times computed from them (``runs list --since 1e300`` was a traceback).
MAX_GIVEN_DURATION = 100 * 365.25 * 86400
#: The largest count a person may give (a protobuf int32).
MAX_COUNT = 2**31 - 1


def parse_duration(text: str, *, unit: bool = False) -> float:
    """``90``, ``500ms``, ``30s``, ``5m``, ``1h``, ``1h30m``, ``2d``, ``1w`` -> seconds
    (> 0); ValueError naming what a duration looks like. ``unit``: a bare number is
    refused (what deletes data by age: "30" meant for days deleted nearly every run)."""
    raw = text.strip().lower()
    try:
        seconds = float(raw)
    except ValueError:
        parts = _PART.findall(raw)
        if not parts or "".join(n + u for n, u in parts) != raw:
            such = "500ms, 30s" if unit else "90, 500ms, 30s"
            raise ValueError(
                f"expects a duration such as {such}, 5m, 1h, 1h30m or 30d, got {text!r}"
            ) from None
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    else:
        if unit and seconds > 0:
            raise ValueError(
                f"needs a unit: {text.strip()!r} could be seconds or days; give e.g. "
                "30d, 12h or 90s"
            )
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"must be a positive duration, got {text!r}")
    if seconds > MAX_GIVEN_DURATION:
        raise ValueError(f"must be at most 100 years, got {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """Seconds in the short form ``parse_duration`` reads: ``1h30m``, ``10s``, ``1.5s``,
    ``500ms``, ``2d3h`` (to the millisecond)."""
    if seconds < 1:
        return f"{round(seconds * 1000, 3):g}ms"
    parts = []
    rest = seconds
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        count = int(rest // size)
        if count:
            parts.append(f"{count}{unit}")
            rest -= count * size
    rest = round(rest, 3)
    if rest or not parts:
        parts.append(f"{rest:g}s")
    return "".join(parts)


def valid_timestamp(message: _SecondsNanos) -> bool:
    """Whether a Timestamp a peer sent is one (a time converting it back would not
    refuse): seconds within TIMESTAMP_RANGE, nanos within a second."""
    low, high = TIMESTAMP_RANGE
    return low <= message.seconds <= high and 0 <= message.nanos < 1_000_000_000


def parse_rate(text: str) -> tuple[int, float]:
    """``10/s``, ``100/m``, ``5/10s``, ``1000/h`` -> (count, period in seconds): a rate
    limit's form; ValueError naming what a rate looks like."""
    count, sep, per = text.strip().partition("/")
    per = per.strip()
    try:
        n = int(count)
        period = parse_duration(per if per[:1].isdigit() else f"1{per}")
    except ValueError:
        n, period = 0, 0.0
    if not sep or not per or not 1 <= n <= MAX_COUNT or period <= 0:
        raise ValueError(f"expects a rate COUNT/PERIOD such as 10/s, 100/m or 5/10s, got {text!r}")
    return n, period


def duration(seconds: float) -> duration_pb2.Duration:
    """A Duration message for a number of seconds."""
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    """A Timestamp message for seconds since the epoch."""
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(round(seconds * 1e9))
    return ts


def seconds(message: _SecondsNanos) -> float:
    """Seconds of a Duration, or seconds since the epoch of a Timestamp."""
    return float(message.seconds) + float(message.nanos) / 1e9


def to_datetime(message: _SecondsNanos) -> datetime:
    """A Timestamp message as an aware UTC datetime."""
    return datetime.fromtimestamp(seconds(message), UTC)


# A scheduled run's idempotency key names its fire time (docs/schedules.md): the
# server makes it, and a client reads the fire time back from it.


def fire_key(schedule_id: str, fire_time: float) -> str:
    """The idempotency key of the run a schedule creates for one fire time."""
    return f"schedule/{schedule_id}/{fire_text(fire_time)}"


def fire_text(fire_time: float) -> str:
    """A fire time in UTC to the millisecond: ``2026-12-05T06:00:00.000Z``."""
    ms = round(fire_time * 1000)
    stamp = datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{ms % 1000:03d}Z"


def fire_time_of(key: str) -> float | None:
    """The fire time a scheduled run's idempotency key names (``fire_key``'s inverse);
    None for a key ``fire_key`` did not make."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != "schedule" or not parts[2].endswith("Z"):
        return None
    try:
        stamp, ms = parts[2][:-1].rsplit(".", 1)
        whole = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
        return whole.timestamp() + int(ms) / 1000
    except ValueError:
        return None
