"""Triggers against every mix of upstream outcomes, trigger-failed chains, skips."""

from __future__ import annotations

import pytest
from engine_helpers import (
    Driver,
    S,
    check_engines,  # noqa: F401  (autouse fixture)
    failure,
    flow,
    task,
)

from headwater.wire import CacheSpec, FlowRunState, RetrySpec, Trigger
from headwater_runtime.engine import CacheEntry, Verdict, evaluate_trigger

T = Trigger
RUN, SKIP, FAIL = Verdict.RUN, Verdict.SKIP, Verdict.FAIL

# Upstream outcome mixes: S succeeded, F failed, K skipped.
COMBOS = ["S", "F", "K", "SS", "SF", "SK", "FK", "FF", "KK", "SFK"]
# The semantics table (docs/semantics.md), spelled out per combination, in COMBOS order:
# R runs, K is skipped, T is TRIGGER_FAILED.
EXPECTED = {
    T.ALL_SUCCESSFUL: "R T K R T K T T K T",
    T.ALL_FINISHED: "R R R R R R R R R R",
    T.ALL_FAILED: "T R T T T T T R T T",
    T.ANY_SUCCESSFUL: "R T K R R R T T K R",
    T.ANY_FAILED: "T R T T R T R R T R",
    T.NONE_FAILED: "R T R R T R T T R T",
}
LETTER = {"R": RUN, "K": SKIP, "T": FAIL}
CASES = [
    (trigger, combo, LETTER[verdict])
    for trigger, row in EXPECTED.items()
    for combo, verdict in zip(COMBOS, row.split(), strict=True)
]
IDS = [f"{trigger.value}-{combo}" for trigger, combo, _ in CASES]

STATE_OF = {"S": S.SUCCESS, "F": S.FAILED, "K": S.SKIPPED}


def test_table_covers_every_trigger() -> None:
    assert set(EXPECTED) == set(Trigger)


@pytest.mark.parametrize(("trigger", "combo", "verdict"), CASES, ids=IDS)
def test_evaluate_trigger(trigger: Trigger, combo: str, verdict: Verdict) -> None:
    assert evaluate_trigger(trigger, [STATE_OF[c] for c in combo]) is verdict


@pytest.mark.parametrize("trigger", list(Trigger))
def test_a_task_without_upstreams_always_runs(trigger: Trigger) -> None:
    assert evaluate_trigger(trigger, []) is RUN
    d = Driver(flow(task("a", trigger=trigger)))
    assert d.dispatched() == ["a"]


@pytest.mark.parametrize("state", [S.FAILED, S.TIMED_OUT, S.TRIGGER_FAILED, S.CANCELLED])
def test_every_failure_state_counts_as_failed(state: S) -> None:
    for trigger, row in EXPECTED.items():
        expected = LETTER[row.split()[COMBOS.index("SF")]]
        assert evaluate_trigger(trigger, [S.SUCCESS, state]) is expected, trigger


@pytest.mark.parametrize("state", [S.SUCCESS, S.CACHED, S.MAPPED])
def test_every_success_state_counts_as_succeeded(state: S) -> None:
    for trigger, row in EXPECTED.items():
        expected = LETTER[row.split()[COMBOS.index("SK")]]
        assert evaluate_trigger(trigger, [state, S.SKIPPED]) is expected, trigger


@pytest.mark.parametrize(("trigger", "combo", "verdict"), CASES, ids=IDS)
def test_engine_applies_the_trigger(trigger: Trigger, combo: str, verdict: Verdict) -> None:
    ups = [f"u{i}" for i in range(len(combo))]
    d = Driver(flow(*(task(u) for u in ups), task("d", *ups, trigger=trigger)))
    assert sorted(d.dispatched()) == ups
    for u, outcome in zip(ups, combo, strict=True):
        assert d.state("d") is S.PENDING, "d waits for every upstream"
        if outcome == "S":
            d.succeed(u, u.upper())
        elif outcome == "F":
            d.fail(u)
        else:
            d.skip(u)
    run = d.runs["d"]
    if verdict is RUN:
        assert d.dispatched() == ["d"]
        expected = {u: (u.upper() if o == "S" else None) for u, o in zip(ups, combo, strict=True)}
        assert d.inputs("d") == expected
        d.succeed("d")
    elif verdict is SKIP:
        assert run.states == [S.PENDING, S.SKIPPED]
        assert run.attempts == []
    else:
        assert run.states == [S.PENDING, S.TRIGGER_FAILED]
        assert run.failure is not None
        assert run.failure.type == "headwater.TriggerFailed"
        assert run.failure.retryable is False
        assert trigger.value in run.failure.message
    assert d.engine.finished


def test_timed_out_upstream_counts_as_failed() -> None:
    d = Driver(flow(task("a", timeout=5), task("f", "a", trigger=Trigger.ANY_FAILED)))
    d.tick(5)
    assert d.state("a") is S.TIMED_OUT
    assert d.dispatched() == ["f"]


def test_trigger_failed_upstream_counts_as_failed() -> None:
    g = flow(task("a"), task("b", "a"), task("f", "b", trigger=Trigger.ALL_FAILED))
    d = Driver(g)
    d.fail("a")
    assert d.state("b") is S.TRIGGER_FAILED
    assert d.dispatched() == ["f"]


def test_cached_upstream_counts_as_succeeded() -> None:
    d = Driver(flow(task("a", cache=CacheSpec()), task("b", "a")))
    d.cache("a", "key", CacheEntry(41, None))
    assert d.state("a") is S.CACHED
    assert d.dispatched() == ["b"]
    assert d.inputs("b") == {"a": 41}


def test_trigger_failed_chain_propagates_and_names_the_root_cause() -> None:
    g = flow(
        task("a"),
        task("b", "a"),
        task("c", "b"),
        task("d", "c", retry=RetrySpec(max_retries=3)),
        task("cleanup", "d", trigger=Trigger.ALL_FINISHED),
    )
    d = Driver(g)
    d.fail("a", failure(message="root"))
    for key in ("b", "c", "d"):
        assert d.states(key) == [S.PENDING, S.TRIGGER_FAILED]
        assert d.runs[key].attempts == []
    message = d.failure_message("b")
    assert "all_successful" in message and "FAILED" in message
    assert "TRIGGER_FAILED" in d.failure_message("c")
    assert d.dispatched() == ["cleanup"], "all_finished still runs at the end of the chain"
    assert d.inputs("cleanup") == {"d": None}
    d.succeed("cleanup")
    assert d.engine.state is FlowRunState.FAILED
    failed = d.engine.failed_runs()
    assert failed[0].key == "a" and failed[0].state is S.FAILED
    assert [f.key for f in failed] == ["a", "b", "c", "d"]


def test_any_failed_without_failures_says_what_the_upstreams_did() -> None:
    d = Driver(flow(task("a"), task("alert", "a", trigger=Trigger.ANY_FAILED)))
    d.succeed("a")
    assert d.state("alert") is S.TRIGGER_FAILED
    assert "(upstream task runs: 1 succeeded)" in d.failure_message("alert")


def test_all_failed_runs_after_failures_and_gets_none_inputs() -> None:
    d = Driver(flow(task("a"), task("b"), task("h", "a", "b", trigger=Trigger.ALL_FAILED)))
    d.fail("a")
    d.fail("b", failure(timed_out=True))
    assert d.dispatched() == ["h"]
    assert d.inputs("h") == {"a": None, "b": None}


# ------------------------------------------------------------------------- skips


def test_skip_propagates_down_a_chain_of_default_triggers() -> None:
    d = Driver(flow(task("a"), task("b", "a"), task("c", "b")))
    d.skip("a", "nothing new")
    assert d.runs["a"].history[-1].message == "nothing new"
    assert d.runs["a"].attempts[0].outcome is S.SKIPPED
    for key in ("b", "c"):
        assert d.states(key) == [S.PENDING, S.SKIPPED]
        assert "skipped" in d.runs[key].history[-1].message
    assert d.engine.state is FlowRunState.SUCCESS, "skips count as success for the flow"


@pytest.mark.parametrize("trigger", [Trigger.NONE_FAILED, Trigger.ALL_FINISHED])
def test_permissive_triggers_run_after_a_skip(trigger: Trigger) -> None:
    d = Driver(flow(task("a"), task("b"), task("c", "a", "b", trigger=trigger), task("d", "c")))
    d.skip("a")
    d.succeed("b", 2)
    assert d.dispatched() == ["c"]
    assert d.inputs("c") == {"a": None, "b": 2}
    d.succeed("c", 3)
    assert d.dispatched() == ["d"], "the branch continues normally after c ran"
    d.succeed("d")
    assert d.engine.state is FlowRunState.SUCCESS


def test_any_successful_merges_a_skipped_branch_and_a_taken_one() -> None:
    g = flow(
        task("yes"),
        task("no"),
        task("left", "yes"),
        task("right", "no"),
        task("merge", "left", "right", trigger=Trigger.ANY_SUCCESSFUL),
        task("after", "merge"),
    )
    d = Driver(g)
    d.succeed("yes", True)
    d.skip("no")
    assert d.state("right") is S.SKIPPED
    d.succeed("left", "L")
    assert d.inputs("merge") == {"left": "L", "right": None}
    d.succeed("merge", "L")
    assert d.inputs("after") == {"merge": "L"}


def test_any_successful_skips_when_every_branch_skipped() -> None:
    d = Driver(flow(task("a"), task("b"), task("m", "a", "b", trigger=Trigger.ANY_SUCCESSFUL)))
    d.skip("a")
    d.skip("b")
    assert d.state("m") is S.SKIPPED


def test_skip_only_affects_its_own_branch() -> None:
    d = Driver(flow(task("a"), task("b"), task("a2", "a"), task("b2", "b")))
    d.skip("a")
    d.succeed("b", 1)
    assert d.state("a2") is S.SKIPPED
    assert d.dispatched() == ["b2"]


def test_skip_is_final_even_with_retries_left() -> None:
    d = Driver(flow(task("a", retry=RetrySpec(max_retries=3))))
    d.skip("a")
    assert d.states("a") == [S.PENDING, S.SCHEDULED, S.RUNNING, S.SKIPPED]


def test_a_trigger_that_did_not_pass_counts_every_upstream_state() -> None:
    """The message said "upstream states: none failed" for any_failed over successes,
    and "FAILED" for all_failed over one success and one failure (as if all failed)."""
    g = flow(
        task("a"),
        task("b"),
        task("c"),
        task("alert", "a", "b", trigger=Trigger.ANY_FAILED),
        task("all", "a", "c", trigger=Trigger.ALL_FAILED),
    )
    d = Driver(g)
    d.succeed("a", 1)
    d.succeed("b", 2)
    d.fail("c", failure(retryable=False))
    alert, both = d.failure_message("alert"), d.failure_message("all")
    assert alert == "trigger any_failed did not pass (upstream task runs: 2 succeeded)"
    assert (
        both
        == "trigger all_failed did not pass (upstream task runs: 1 succeeded, 1 failed (FAILED))"
    )
