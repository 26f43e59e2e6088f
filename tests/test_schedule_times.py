"""Fire-time arithmetic of schedules: intervals, cron in a time zone, catch-up."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from headwater.wire import fire_key
from headwater_runtime.server._schedule_times import (
    MAX_FIRES_PER_TICK,
    ScheduleError,
    due_fires,
    first_fire,
    make_timing,
    next_fire,
    resume_fire,
)


def at(text: str) -> float:
    """Epoch seconds of a UTC ``YYYY-MM-DD HH:MM[:SS]``."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


@pytest.mark.parametrize(
    ("every", "cron", "zone", "fragment"),
    [
        (0.0, "", "", "interval must be positive, got 0.0"),
        (-5.0, "", "", "interval must be positive"),
        (float("nan"), "", "", "interval must be positive"),
        (0.0004, "", "", "interval must be at least 1 ms"),
        # (taken, shown as 0:00:00.000500 and fired every 1 ms: a user trial)
        (0.0005, "", "", "interval must be at least 1 ms, got 0.0005 seconds"),
        (0.000999, "", "", "interval must be at least 1 ms"),
        (3e11, "", "", "interval must be at most 3155760000 seconds (100 years), got 3e+11"),
        (None, "", "", "needs an interval or a cron"),
        (60.0, "* * * * *", "", "not both"),
        (None, "* * * * * *", "", "must have five fields"),
        (None, "*/5 * * *", "", "must have five fields"),
        (None, "61 * * * *", "", "invalid cron expression '61 * * * *'"),
        (None, "* * * * mon-funday", "", "invalid cron expression"),
        (None, "* * * * *", "Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
        # (taken: the server machine's zone, and a zone that is no place's; a trial)
        (None, "* * * * *", "localtime", "time zone 'localtime' is not a place's time zone"),
        (None, "* * * * *", "Factory", "time zone 'Factory' is not a place's time zone"),
        # (taken and stored with an interval, where it changed nothing: a user trial)
        (10.0, "", "Europe/Berlin", "time zone 'Europe/Berlin' is for cron schedules"),
    ],
)
def test_malformed_timing_is_refused_with_a_message_naming_the_problem(
    every: float | None, cron: str, zone: str, fragment: str
) -> None:
    with pytest.raises(ScheduleError) as info:
        make_timing(every, cron, zone)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)  # one line


def test_interval_fires_on_its_anchor_grid_and_nothing_before_due() -> None:
    timing = make_timing(60.0, "")
    created = 1_000.0
    first = first_fire(timing, created)
    assert first == 1_060.0
    assert due_fires(timing, first, 1_059.999) == ([], 1_060.0)
    assert due_fires(timing, first, 1_060.0) == ([1_060.0], 1_120.0)
    # Woken late: the fire still happens once, and the grid does not drift.
    assert due_fires(timing, first, 1_075.0) == ([1_060.0], 1_120.0)


def test_after_downtime_only_the_most_recent_missed_time_fires_by_default() -> None:
    timing = make_timing(60.0, "")
    # Down from before 1060 until 1300: 1060..1300 were missed (5 times).
    fires, after = due_fires(timing, 1_060.0, 1_300.0)
    assert fires == [1_300.0]
    assert after == 1_360.0
    fires, after = due_fires(timing, 1_060.0, 1_330.0)
    assert (fires, after) == ([1_300.0], 1_360.0)


def test_catchup_fires_every_missed_time_oldest_first_and_bounded_per_call() -> None:
    timing = make_timing(60.0, "", catchup=True)
    assert due_fires(timing, 1_060.0, 1_330.0) == (
        [1_060.0, 1_120.0, 1_180.0, 1_240.0, 1_300.0],
        1_360.0,
    )
    # A very long outage: at most MAX_FIRES_PER_TICK now, and the rest stay due.
    fires, after = due_fires(timing, 0.0, 60.0 * 10 * MAX_FIRES_PER_TICK)
    assert len(fires) == MAX_FIRES_PER_TICK
    assert fires == [60.0 * i for i in range(MAX_FIRES_PER_TICK)]
    assert after == 60.0 * MAX_FIRES_PER_TICK
    more, _ = due_fires(timing, after, 60.0 * 10 * MAX_FIRES_PER_TICK)
    assert more[0] == after  # nothing skipped between calls


def test_cron_in_utc_fires_on_its_times_and_catches_up_only_the_latest() -> None:
    timing = make_timing(None, "*/5  * * * *")
    assert timing.cron == "*/5 * * * *" and timing.timezone == "UTC"
    first = first_fire(timing, at("2026-11-25 10:02:30"))
    assert utc(first) == "2026-11-25 10:05:00"
    # A fire time is "after" strictly: created exactly at 10:05 -> first fire 10:10.
    assert utc(first_fire(timing, at("2026-11-25 10:05"))) == "2026-11-25 10:10:00"
    fires, after = due_fires(timing, first, at("2026-11-25 10:05"))
    assert [utc(f) for f in fires] == ["2026-11-25 10:05:00"]
    assert utc(after) == "2026-11-25 10:10:00"
    fires, after = due_fires(timing, first, at("2026-11-25 10:17:59"))
    assert [utc(f) for f in fires] == ["2026-11-25 10:15:00"]
    assert utc(after) == "2026-11-25 10:20:00"
    # Exactly on a fire time after downtime: that time is the most recent one.
    fires, _ = due_fires(timing, first, at("2026-11-25 10:20"))
    assert [utc(f) for f in fires] == ["2026-11-25 10:20:00"]
    catching = make_timing(None, "*/5 * * * *", catchup=True)
    fires, after = due_fires(catching, first, at("2026-11-25 10:17:59"))
    assert [utc(f) for f in fires] == [
        "2026-11-25 10:05:00",
        "2026-11-25 10:10:00",
        "2026-11-25 10:15:00",
    ]


def test_cron_in_a_time_zone_follows_the_wall_clock_across_dst() -> None:
    # 09:00 in New York is 14:00 UTC in winter and 13:00 UTC after 8 March 2026.
    timing = make_timing(None, "0 9 * * *", "America/New_York")
    t = first_fire(timing, at("2026-03-06 12:00"))
    seen = []
    for _ in range(4):
        seen.append(utc(t))
        t = next_fire(timing, t)
    assert seen == [
        "2026-03-06 14:00:00",
        "2026-03-07 14:00:00",
        "2026-03-08 13:00:00",
        "2026-03-09 13:00:00",
    ]


def test_cron_wall_clock_times_skipped_or_repeated_by_dst_fire_once() -> None:
    timing = make_timing(None, "30 2 * * *", "Europe/Berlin")
    # Spring forward (29 March 2026): 02:30 does not exist; it fires at 03:00 CEST.
    t = first_fire(timing, at("2026-03-28 12:00"))
    assert utc(t) == "2026-03-29 01:00:00"
    assert utc(next_fire(timing, t)) == "2026-03-30 00:30:00"
    # Fall back (25 October 2026): 02:30 happens twice; only the first one fires.
    t = first_fire(timing, at("2026-10-24 12:00"))
    assert utc(t) == "2026-10-25 00:30:00"
    assert utc(next_fire(timing, t)) == "2026-10-26 01:30:00"


def _fires(timing: Any, start: float, n: int) -> list[str]:
    zone = ZoneInfo(timing.timezone)
    t, out = first_fire(timing, start), []
    for _ in range(n):
        out.append(datetime.fromtimestamp(t, zone).strftime("%d %H:%M%z"))
        t = next_fire(timing, t)
    return out


def test_set_times_in_the_repeated_hour_fire_once_and_frequent_ones_keep_their_pace() -> None:
    """Fall back in Berlin (25 October 2026, 03:00 CEST -> 02:00 CET). Only a repeat of
    the fire just before was skipped: ``0,30 2 * * *`` fired four times that night, as
    did a schedule created or resumed between the two 02:30s (a trial). A set time of
    day fires at its first occurrence; a minute or hour field starting with ``*`` fires
    in both occurrences of the hour (cron's rule: it keeps its pace, no hour's gap)."""
    berlin = "Europe/Berlin"
    before = at("2026-10-24 23:00")  # 01:00 CEST on the 25th
    assert _fires(make_timing(None, "0,30 2 * * *", berlin), before, 4) == [
        "25 02:00+0200",
        "25 02:30+0200",
        "26 02:00+0100",
        "26 02:30+0100",
    ]
    second_half_hour = at("2026-10-25 00:35")  # 02:35 CEST: between the two 02:30s
    assert _fires(make_timing(None, "30 2 * * *", berlin), second_half_hour, 1) == ["26 02:30+0100"]
    assert utc(resume_fire(make_timing(None, "30 2 * * *", berlin), before, second_half_hour)) == (
        "2026-10-26 01:30:00"
    )
    assert _fires(make_timing(None, "*/30 * * * *", berlin), before, 7) == [
        "25 01:30+0200",
        "25 02:00+0200",
        "25 02:30+0200",
        "25 02:00+0100",
        "25 02:30+0100",
        "25 03:00+0100",
        "25 03:30+0100",
    ]
    assert _fires(make_timing(None, "*/20 1 * * *", "America/New_York"), at("2026-11-01 04:30"), 6)[
        -3:
    ] == ["01 01:00-0500", "01 01:20-0500", "01 01:40-0500"]
    # Without catch-up after an outage over the night, the fire is the first 02:30.
    timing = make_timing(None, "30 2 * * *", berlin)
    fires, _ = due_fires(timing, at("2026-10-25 00:30"), at("2026-10-25 01:45"))
    assert [utc(t) for t in fires] == ["2026-10-25 00:30:00"]
    catchup = make_timing(None, "0,30 2 * * *", berlin, catchup=True)
    fires, after = due_fires(catchup, first_fire(catchup, before), at("2026-10-25 03:00"))
    assert [utc(t) for t in fires] == ["2026-10-25 00:00:00", "2026-10-25 00:30:00"]
    assert utc(after) == "2026-10-26 01:00:00"


def test_resume_keeps_an_interval_phase_and_skips_the_paused_times() -> None:
    timing = make_timing(60.0, "")
    assert resume_fire(timing, 1_060.0, 1_000.0) == 1_060.0  # not yet due: unchanged
    assert resume_fire(timing, 1_060.0, 1_250.0) == 1_300.0
    assert resume_fire(timing, 1_060.0, 1_300.0) == 1_360.0  # strictly after now
    cron = make_timing(None, "0 * * * *")
    assert utc(resume_fire(cron, at("2026-01-01 01:00"), at("2026-01-01 05:30"))) == (
        "2026-01-01 06:00:00"
    )


def test_fire_keys_are_stable_and_distinct_per_schedule_and_time() -> None:
    assert fire_key("s1", at("2026-11-25 10:05")) == "schedule/s1/2026-11-25T10:05:00.000Z"
    assert fire_key("s1", 1_060.2) == "schedule/s1/1970-01-01T00:17:40.200Z"
    keys = {fire_key(s, t) for s in ("s1", "s2") for t in (1_060.0, 1_060.001, 1_120.0)}
    assert len(keys) == 6


def _through_the_store(t: float) -> float:
    """What a time becomes after being stored (nanosecond Timestamp) and read back."""
    stamp = Timestamp()
    stamp.FromNanoseconds(round(t * 1e9))
    return stamp.ToNanoseconds() / 1e9


@pytest.mark.parametrize("every", [0.2, 1 / 3, 0.0015, 3600.000000001])
def test_a_fire_time_read_back_from_the_store_gives_the_same_key(every: float) -> None:
    # After a crash the next fire time is read back from the store, not from memory:
    # its idempotency key must be the one the crashed server would have used.
    timing = make_timing(every, "", catchup=True)
    for i in range(500):
        created = 1_764_000_000.0 + i * 0.000_031_7  # arbitrary sub-millisecond anchors
        first = first_fire(timing, created)
        fires, after = due_fires(timing, first, first + 3 * every)
        for fire in [*fires, after]:
            assert fire_key("s", _through_the_store(fire)) == fire_key("s", fire)
        reread, _ = due_fires(timing, _through_the_store(fires[1]), first + 3 * every)
        assert [fire_key("s", f) for f in reread] == [fire_key("s", f) for f in fires[1:]]


def test_a_stored_schedule_keeps_the_rules_it_was_created_under() -> None:
    """Refused now when created, a time zone beside an interval and an interval under
    1 ms were taken before: a schedule stored so still loads (a server that refused it
    would not start), firing as it did."""
    assert make_timing(10.0, "", "Europe/Berlin", new=False).every == 10.0
    assert make_timing(0.0005, "", "", new=False).every == 0.001
    with pytest.raises(ScheduleError, match="is for cron schedules"):
        make_timing(10.0, "", "Europe/Berlin")
