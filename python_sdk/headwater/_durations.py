"""Durations accept seconds (int or float) or a datetime.timedelta."""

from __future__ import annotations

from datetime import timedelta


def to_seconds(
    value: float | timedelta | None, what: str, *, positive: bool = False
) -> float | None:
    """Seconds as a float, or None. ``what`` names the option in error messages."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError(
            f"{what} must be a number of seconds or a datetime.timedelta, "
            f"not {type(value).__name__}"
        )
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise ValueError(f"{what} must be finite, got {value!r}")
    if seconds < 0 or (positive and seconds == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{what} must be {bound} seconds, got {value!r}")
    return seconds
