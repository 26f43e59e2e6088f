"""When schedules fire: pure fire-time arithmetic (no store, no clock reads).

Times are epoch seconds (floats) on whole milliseconds. An interval schedule fires at
``anchor + k * every`` (the anchor is its creation time), so fire times never drift
however late the server wakes up. A cron schedule fires at the times its five-field
expression names, read as wall-clock times in its IANA time zone (UTC by default):
when clocks spring forward, a time that does not exist fires at the first valid time
after it; when they fall back, a set time of day that occurs twice fires once (the
first occurrence), and an expression whose minute or hour field starts with ``*``
(hourly or more often) fires in both occurrences of the hour, keeping its pace: cron's
own rule.

Catch-up after downtime: by default only the most recent missed fire time creates a
run; with ``catchup`` every missed time does, oldest first, at most ``MAX_FIRES_PER_TICK``
per call so one call stays bounded (the rest fire on the next calls).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

#: Most fire times one ``due_fires`` call returns (catch-up stays bounded per tick).
MAX_FIRES_PER_TICK = 100


class ScheduleError(ValueError):
    """A schedule's timing is malformed (bad cron, interval <= 0, unknown time zone)."""


@dataclass(frozen=True, slots=True)
class Timing:
    """When a schedule fires: exactly one of ``every`` (seconds) and ``cron``."""

    every: float | None = None
    cron: str = ""
    timezone: str = "UTC"
    catchup: bool = False

    def zone(self) -> ZoneInfo:
        """The time zone a cron expression is read in."""
        return ZoneInfo(self.timezone)


#: The longest interval (100 years, as a duration a person gives): a longer one (up to
#: a Duration's 10,000 years was taken) put the first fire past 9999-12-31, which no
#: Timestamp holds, and CreateSchedule failed with UNKNOWN (a hostile trial).
MAX_INTERVAL = 100 * 365.25 * 86400


#: Names the zone database answers to that name no place's time.
_NOT_PLACES = frozenset({"localtime", "factory", "posixrules"})


def make_timing(
    every: float | None, cron: str, timezone: str = "", catchup: bool = False, *, new: bool = True
) -> Timing:
    """Validate and build a Timing; ScheduleError names the problem. ``new`` False: a
    stored schedule, held to the rules it was created under (an interval under 1 ms
    fires every 1 ms; a time zone beside an interval changes nothing)."""
    zone_name = timezone or "UTC"
    try:
        ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(
            f"unknown time zone {zone_name!r}; use an IANA name such as 'UTC' or 'Europe/Berlin'"
        ) from None
    if new and zone_name.lower() in _NOT_PLACES:  # (files in the zone database, taken)
        why = (
            " ('localtime' is whatever the server's machine is set to)"
            if zone_name.lower() == "localtime"
            else ""
        )
        raise ScheduleError(
            f"time zone {zone_name!r} is not a place's time zone{why}; use an IANA name "
            "such as 'UTC' or 'Europe/Berlin'"
        )
    if every is not None and cron:
        raise ScheduleError("a schedule has either an interval or a cron expression, not both")
    if new and every is not None and zone_name != "UTC":  # (taken, it changed nothing)
        raise ScheduleError(
            f"time zone {zone_name!r} is for cron schedules: an interval counts from the "
            "schedule's creation, in any zone (leave the time zone out)"
        )
    if every is not None:
        if not math.isfinite(every) or every <= 0:
            raise ScheduleError(f"schedule interval must be positive, got {every} seconds")
        if every > MAX_INTERVAL:
            raise ScheduleError(
                f"schedule interval must be at most {MAX_INTERVAL:.0f} seconds (100 years), "
                f"got {every:g}"
            )
        if every < (0.001 if new else 0.0005):  # (0.5 ms was taken, fired every 1 ms)
            raise ScheduleError(f"schedule interval must be at least 1 ms, got {every:g} seconds")
        # Milliseconds, like fire times (see _snap).
        return Timing(every=round(every, 3), timezone=zone_name, catchup=catchup)
    if not cron:
        raise ScheduleError("a schedule needs an interval or a cron expression")
    fields = cron.split()
    if len(fields) != 5:
        raise ScheduleError(
            f"cron expression {cron!r} must have five fields "
            "(minute hour day-of-month month day-of-week)"
        )
    try:
        it = croniter(cron, datetime(2000, 1, 1, tzinfo=UTC))
    except (CroniterError, ValueError, KeyError) as exc:
        raise ScheduleError(f"invalid cron expression {cron!r}: {exc}") from None
    try:
        it.get_next(datetime)
    except CroniterError:  # e.g. "0 0 30 2 *": February 30th
        raise ScheduleError(f"cron expression {cron!r} never fires (no such date)") from None
    return Timing(cron=" ".join(fields), timezone=zone_name, catchup=catchup)


def _snap(t: float) -> float:
    """Fire times sit on whole milliseconds. A time read back from the store (a
    nanosecond Timestamp) is within a microsecond of what was written (a float near
    1.7e9 has 0.24 us steps), far from a rounding boundary: so it gives the same
    idempotency key after a restart as before it."""
    return round(t, 3)


def _repeated(t: float, zone: ZoneInfo) -> bool:
    """Whether ``t`` is the second occurrence of its wall-clock time (clocks fell back
    and that time happens again: ``fold`` 1)."""
    return datetime.fromtimestamp(t, zone).fold == 1


def _by_the_clock(timing: Timing) -> bool:
    """Whether the expression fires at set times of day (its minute and hour fields
    name them), so that a wall-clock time happening twice fires once; an expression
    whose minute or hour field starts with ``*`` fires as often as hourly, and keeps
    its pace in the repeated hour (both occurrences), as cron does."""
    minute, hour = timing.cron.split()[:2]
    return not (minute.startswith("*") or hour.startswith("*"))


def _skipped(timing: Timing, t: float, zone: ZoneInfo) -> bool:
    return _repeated(t, zone) and _by_the_clock(timing)


def _cron_after(timing: Timing, t: float) -> float:
    """The first cron fire time strictly after ``t`` (see ``_by_the_clock`` for the
    hour clocks fall back over: a set time fires at its first occurrence only, whatever
    fired before; ``0,30 2 * * *`` fired four times that night, as did a schedule
    resumed or created between the two occurrences: a trial)."""
    zone = timing.zone()
    it = croniter(timing.cron, datetime.fromtimestamp(t, zone))
    while True:
        nxt: float = it.get_next(datetime).timestamp()
        if nxt > t and not _skipped(timing, nxt, zone):
            return nxt


def _cron_at_or_before(timing: Timing, t: float) -> float:
    """The last cron fire time at or before ``t`` (never a skipped second occurrence)."""
    zone = timing.zone()
    it = croniter(timing.cron, datetime.fromtimestamp(t, zone))
    prev: float = it.get_prev(datetime).timestamp()
    while _skipped(timing, prev, zone):
        prev = it.get_prev(datetime).timestamp()
    nxt = _cron_after(timing, prev)
    return nxt if nxt <= t else prev


def first_fire(timing: Timing, now: float) -> float:
    """The first fire time of a schedule created (or resumed) at ``now``."""
    if timing.every is not None:
        return _snap(now + timing.every)
    return _cron_after(timing, now)


def next_fire(timing: Timing, fired: float) -> float:
    """The fire time after ``fired`` (a fire time of this schedule)."""
    if timing.every is not None:
        return _snap(fired + timing.every)
    return _cron_after(timing, fired)


def resume_fire(timing: Timing, next_run_at: float, now: float) -> float:
    """The first fire time after ``now`` for a schedule resumed after a pause: an
    interval schedule keeps its phase (anchor), a cron schedule its expression."""
    if timing.every is None:
        return _cron_after(timing, now)
    if next_run_at > now:
        return next_run_at
    steps = math.floor((now - next_run_at) / timing.every) + 1
    return _snap(next_run_at + steps * timing.every)


def due_fires(timing: Timing, next_run_at: float, now: float) -> tuple[list[float], float]:
    """The fire times to create runs for at ``now``, and the new ``next_run_at``.

    Nothing is due before ``next_run_at``. Without catch-up only the most recent due
    time fires; with it, every due time from ``next_run_at`` on (at most
    MAX_FIRES_PER_TICK; the returned next time is then still due)."""
    if next_run_at > now:
        return [], next_run_at
    if not timing.catchup:
        if timing.every is not None:
            steps = math.floor((now - next_run_at) / timing.every)
            latest = _snap(next_run_at + steps * timing.every)
        else:
            latest = max(next_run_at, _cron_at_or_before(timing, now))
        return [latest], next_fire(timing, latest)
    fires: list[float] = []
    at = next_run_at
    while at <= now and len(fires) < MAX_FIRES_PER_TICK:
        fires.append(at)
        at = next_fire(timing, at)
    return fires, at
