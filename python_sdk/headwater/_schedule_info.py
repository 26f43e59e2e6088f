"""``ScheduleInfo``: a schedule as the server reports it (no protobuf in the public API)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from headwater.v1 import payload_pb2, run_pb2
from headwater.wire import duration, format_duration, seconds, to_datetime

from ._durations import to_seconds


@dataclass
class ScheduleInfo:
    """A schedule on a server: it creates runs of ``flow_name`` every ``every`` or at
    the times of ``cron`` (read in ``timezone``), with ``parameters``. ``name``: the
    name it was given ("" when none), unique on the server."""

    id: str
    flow_name: str
    flow_version: str
    every: timedelta | None
    cron: str
    timezone: str
    paused: bool
    catchup: bool
    next_run_at: datetime | None
    created_at: datetime | None
    name: str = ""
    _parameters: dict[str, payload_pb2.Value] = field(
        default_factory=dict, repr=False, compare=False
    )
    _decode: Callable[[payload_pb2.Value], Any] | None = field(
        default=None, repr=False, compare=False
    )

    @property
    def parameters(self) -> dict[str, Any]:
        """The parameters each run gets (decoded on access)."""
        decode = self._decode
        if decode is None:
            return {}
        return {name: decode(value) for name, value in self._parameters.items()}

    @property
    def spec(self) -> str:
        """The timing as one human-readable phrase, e.g. ``every 1h30m`` (as
        ``--every`` takes it) or ``cron '0 2 * * *' (Europe/Berlin)``."""
        if self.every is not None:
            return f"every {format_duration(self.every.total_seconds())}"
        zone = "" if self.timezone == "UTC" else f" ({self.timezone})"
        return f"cron {self.cron!r}{zone}"


def _time(msg: run_pb2.Schedule, name: Literal["next_run_at", "created_at"]) -> datetime | None:
    if not msg.HasField(name):
        return None
    return to_datetime(getattr(msg, name))


def schedule_info(
    msg: run_pb2.Schedule, decode: Callable[[payload_pb2.Value], Any] | None
) -> ScheduleInfo:
    """A ScheduleInfo from a Schedule message; ``decode`` turns its parameters into
    Python values when they are read (None: no parameters are shown)."""
    every = None
    if msg.WhichOneof("spec") == "interval":
        every = timedelta(seconds=seconds(msg.interval))
    return ScheduleInfo(
        id=msg.id,
        flow_name=msg.flow_name,
        flow_version=msg.flow_version,
        every=every,
        cron=msg.cron,
        timezone=msg.timezone or "UTC",
        paused=not msg.enabled,
        catchup=msg.catchup,
        next_run_at=_time(msg, "next_run_at"),
        created_at=_time(msg, "created_at"),
        name=msg.name,
        _parameters=dict(msg.parameters),
        _decode=decode,
    )


def schedule_message(
    flow_name: str,
    version: str,
    every: float | timedelta | None,
    cron: str | None,
    parameters: dict[str, payload_pb2.Value],
    timezone: str,
    paused: bool,
    catchup: bool,
    name: str = "",
) -> run_pb2.Schedule:
    """The Schedule to create; ValueError unless exactly one of every and cron is given
    (the server checks the rest: interval > 0, cron syntax, time zone)."""
    if (every is None) == (cron is None):
        raise ValueError("give a schedule exactly one of every=... or cron=...")
    msg = run_pb2.Schedule(
        flow_name=flow_name,
        flow_version=version,
        parameters=parameters,
        enabled=not paused,
        timezone=timezone,
        catchup=catchup,
        name=name,
    )
    if cron is not None:
        msg.cron = cron
    else:
        interval = to_seconds(every, "every", positive=True)
        assert interval is not None
        msg.interval.CopyFrom(duration(interval))
    return msg
