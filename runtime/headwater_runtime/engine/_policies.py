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


def evaluate_trigger(trigger: Trigger, states: Iterable[TaskRunState]) -> Verdict:
    """Apply a trigger to the final states of a task's upstream runs.

    SKIPPED counts as success, except that the default trigger (all_successful) skips
    a task when an upstream was skipped: skips propagate down a branch unless a
    trigger says otherwise. A task with no upstreams always runs.
    """
    failed = skipped = succeeded = total = 0
    for state in states:
        total += 1
        if state in FAILURE_STATES:
            failed += 1
        elif state is _SKIPPED:
            skipped += 1
        else:
            succeeded += 1
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


def retry_delay(policy: RetrySpec, retry_number: int, key: str) -> float:
    """Seconds to wait before retry ``retry_number`` (1-based) of run ``key``.

    delay * backoff ** (n - 1), capped by max_delay, then spread by jitter. The jitter
    factor is derived from a hash of (key, n) rather than a random generator, so the
    engine stays deterministic: replaying the same events gives the same decisions.
    """
    base = policy.delay * (policy.backoff ** (retry_number - 1) if policy.backoff > 0 else 1.0)
    if policy.max_delay is not None:
        base = min(base, policy.max_delay)
    if policy.jitter > 0 and base > 0:
        unit = zlib.crc32(f"{key}#{retry_number}".encode()) / 0xFFFFFFFF  # [0, 1]
        base *= 1.0 + policy.jitter * (2.0 * unit - 1.0)
        if policy.max_delay is not None:
            base = min(base, policy.max_delay)
    return max(0.0, base)
