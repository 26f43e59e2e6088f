"""Trigger evaluation and retry delays: small pure functions the engine calls."""

from __future__ import annotations

import enum
import zlib
from collections.abc import Iterable

from headwater.wire import FAILURE_STATES, RetrySpec, TaskRunState, Trigger


class Verdict(enum.Enum):
    """What a trigger says about a task whose upstreams have all finished."""

    RUN = "run"
    SKIP = "skip"
    FAIL = "fail"


_SUCCESS = frozenset({TaskRunState.SUCCESS, TaskRunState.CACHED, TaskRunState.MAPPED})
_SKIPPED = TaskRunState.SKIPPED


class Tally:
    """The final states of a task's upstream runs, counted: what a trigger looks at.

    A mapped task's children share their whole upstreams: the engine counts those once
    per expansion and adds each child's own element-wise upstreams to a copy
    (``plus``), so that 100,000 children of a task with a mapped whole upstream do not
    each go over that upstream's 100,000 states.
    """

    __slots__ = ("failed", "failures", "skipped", "succeeded", "total")

    def __init__(self) -> None:
        self.failed = self.skipped = self.succeeded = self.total = 0
        #: The failure states seen (for the message of a trigger that did not pass).
        self.failures: set[TaskRunState] = set()

    @classmethod
    def of(cls, states: Iterable[TaskRunState]) -> Tally:
        """The tally of these states."""
        tally = cls()
        tally.add(states)
        return tally

    def add(self, states: Iterable[TaskRunState]) -> None:
        """Count these states too."""
        for state in states:
            self.total += 1
            if state in FAILURE_STATES:
                self.failed += 1
                self.failures.add(state)
            elif state is _SKIPPED:
                self.skipped += 1
            else:
                self.succeeded += 1

    def __str__(self) -> str:
        """``2 succeeded, 1 failed (TIMED_OUT)``: what a trigger message says."""
        parts = [f"{self.succeeded} succeeded"] if self.succeeded else []
        if self.failed:
            names = ", ".join(sorted(s.name for s in self.failures))
            parts.append(f"{self.failed} failed ({names})")
        if self.skipped:
            parts.append(f"{self.skipped} skipped")
        return ", ".join(parts) or "none"

    def plus(self, states: Iterable[TaskRunState]) -> Tally:
        """A new tally: this one and these states."""
        tally = Tally()
        tally.failed, tally.skipped = self.failed, self.skipped
        tally.succeeded, tally.total = self.succeeded, self.total
        tally.failures = set(self.failures)
        tally.add(states)
        return tally


def evaluate_trigger(trigger: Trigger, states: Iterable[TaskRunState] | Tally) -> Verdict:
    """Apply a trigger to the final states of a task's upstream runs (or their tally).

    SKIPPED counts as success, except that the default trigger (all_successful) skips
    a task when an upstream was skipped: skips propagate down a branch unless a
    trigger says otherwise. A task with no upstreams always runs.
    """
    tally = states if isinstance(states, Tally) else Tally.of(states)
    failed, skipped, succeeded, total = tally.failed, tally.skipped, tally.succeeded, tally.total
    if total == 0 or trigger is Trigger.ALL_FINISHED:
        return Verdict.RUN
    if trigger is Trigger.ALL_SUCCESSFUL:
        if failed:
            return Verdict.FAIL
        return Verdict.SKIP if skipped else Verdict.RUN
    if trigger is Trigger.NONE_FAILED:
        return Verdict.FAIL if failed else Verdict.RUN
    if trigger is Trigger.ALL_FAILED:
        return Verdict.RUN if failed == total else Verdict.FAIL
    if trigger is Trigger.ANY_FAILED:
        return Verdict.RUN if failed else Verdict.FAIL
    if trigger is Trigger.ANY_SUCCESSFUL:
        if succeeded:
            return Verdict.RUN
        return Verdict.SKIP if skipped == total else Verdict.FAIL
    raise AssertionError(f"unknown trigger {trigger!r}")


#: The delay rule of runs started now (``retry_delay``'s ``rule``; journaled with START).
DELAY_RULE = 1


def retry_delay(
    policy: RetrySpec, retry_number: int, key: str, seed: str = "", rule: int = DELAY_RULE
) -> float:
    """Seconds to wait before retry ``retry_number`` (1-based) of run ``key``.

    delay * backoff ** (n - 1), capped by max_delay, then spread by jitter. The jitter
    factor is derived from a hash of (seed, key, n) rather than a random generator, so
    the engine stays deterministic: replaying the same events gives the same decisions.
    ``seed`` (the flow run's id) spreads the retries of different runs of one flow:
    without it they all retried at the same moments. ``rule`` 1: a jittered delay past
    max_delay is reflected below it (never past the cap, and retries at the cap still
    come apart); 0 (runs journaled before it): capped again, so about half of the
    retries at the cap came at the cap itself (a user trial).
    """
    base = policy.delay * (policy.backoff ** (retry_number - 1) if policy.backoff > 0 else 1.0)
    if policy.max_delay is not None:
        base = min(base, policy.max_delay)
    if policy.jitter > 0 and base > 0:
        text = f"{seed}/{key}#{retry_number}" if seed else f"{key}#{retry_number}"
        unit = zlib.crc32(text.encode()) / 0xFFFFFFFF  # [0, 1]
        base *= 1.0 + policy.jitter * (2.0 * unit - 1.0)
        if policy.max_delay is not None and base > policy.max_delay:
            base = 2.0 * policy.max_delay - base if rule >= 1 else policy.max_delay
    return max(0.0, base)
