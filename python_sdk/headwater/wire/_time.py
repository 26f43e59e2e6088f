"""Seconds (floats, as the engine keeps time) <-> protobuf Duration and Timestamp."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol

from google.protobuf import duration_pb2, timestamp_pb2


class _SecondsNanos(Protocol):
    seconds: int
    nanos: int


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
