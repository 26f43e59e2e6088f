"""Caching decisions: CheckCache first, hits are CACHED, misses run and are written."""

from __future__ import annotations

from engine_helpers import (
    Driver,
    S,
    check_engines,  # noqa: F401  (autouse fixture)
    flow,
    task,
)

from headwater.wire import CacheSpec, Const, FlowRunState, RetrySpec
from headwater_runtime.engine import (
    CacheChecked,
    CacheEntry,
    CancelRequested,
    CheckCache,
    RunTask,
    TaskSucceeded,
    WriteCache,
)

HOUR = 3600.0


def test_a_cached_task_is_checked_before_it_is_dispatched() -> None:
    obj = ["input"]
    d = Driver(flow(task("a", inputs={"x": Const(obj)}, cache=CacheSpec(expiry=HOUR))))
    (check,) = d.last
    assert isinstance(check, CheckCache)
    assert check.run.key == "a"
    assert check.inputs == {"x": obj} and check.inputs["x"] is obj
    assert d.state("a") is S.SCHEDULED
    assert d.engine.in_flight == 0, "a cache check holds no slot"


def test_cache_hit_is_cached_with_the_value_and_nothing_runs() -> None:
    value = {"rows": 3}
    d = Driver(flow(task("a", cache=CacheSpec(expiry=HOUR)), task("b", "a")))
    d.cache("a", "key-1", CacheEntry(value, d.clock.now() + 10))
    run = d.runs["a"]
    assert run.states == [S.PENDING, S.SCHEDULED, S.CACHED]
    assert run.result is value
    assert run.attempts == [] and run.attempt == 0
    assert "key-1" in run.history[-1].message
    assert d.dispatched() == ["b"], "only the downstream task runs"
    assert d.inputs("b")["a"] is value
    d.succeed("b")
    assert d.engine.state is FlowRunState.SUCCESS
    assert not [c for c in d.log if isinstance(c, WriteCache)], "a hit is not written back"


def test_entry_without_expiry_is_a_hit() -> None:
    d = Driver(flow(task("a", cache=CacheSpec())))
    d.cache("a", "k", CacheEntry("v", None))
    assert d.state("a") is S.CACHED


def test_cache_miss_runs_the_task_then_writes_with_expiry_from_completion() -> None:
    d = Driver(flow(task("a", inputs={"x": Const(1)}, cache=CacheSpec(expiry=60))))
    d.cache("a", "key-1", None)
    assert d.dispatched() == ["a"]
    assert d.inputs("a") == {"x": 1}
    d.clock.advance(7)
    commands = d.succeed("a", "fresh")
    writes = [c for c in commands if isinstance(c, WriteCache)]
    assert len(writes) == 1
    write = writes[0]
    assert write.run.key == "a" and write.cache_key == "key-1" and write.value == "fresh"
    assert write.expires_at == d.clock.now() + 60
    assert d.state("a") is S.SUCCESS


def test_cache_without_expiry_writes_entries_that_never_expire() -> None:
    d = Driver(flow(task("a", cache=CacheSpec())))
    d.cache("a", "k", None)
    (write,) = d.cache_writes(d.succeed("a", 1))
    assert write.expires_at is None


def test_expired_entry_is_a_miss() -> None:
    d = Driver(flow(task("a", cache=CacheSpec(expiry=60))))
    d.cache("a", "k", CacheEntry("stale", d.clock.now() - 1))
    assert d.state("a") is S.RUNNING
    assert d.dispatched() == ["a"]
    (write,) = d.cache_writes(d.succeed("a", "new"))
    assert write.value == "new"


def test_entry_expiring_exactly_now_is_a_miss() -> None:
    d = Driver(flow(task("a", cache=CacheSpec(expiry=60))))
    d.cache("a", "k", CacheEntry("stale", d.clock.now()))
    assert d.state("a") is S.RUNNING


def test_no_cache_key_means_no_write() -> None:
    d = Driver(flow(task("a", cache=CacheSpec(expiry=60))))
    d.cache("a", "", None)
    assert d.cache_writes(d.succeed("a", 1)) == []


def test_failure_and_skip_are_not_cached() -> None:
    d = Driver(flow(task("a", cache=CacheSpec()), task("b", cache=CacheSpec())))
    d.cache("a", "ka", None)
    d.cache("b", "kb", None)
    d.fail("a")
    d.skip("b")
    assert not [c for c in d.log if isinstance(c, WriteCache)]


def test_retries_do_not_check_the_cache_again_but_the_success_is_written() -> None:
    d = Driver(flow(task("a", cache=CacheSpec(expiry=5), retry=RetrySpec(max_retries=1))))
    d.cache("a", "k", None)
    commands = d.fail("a")
    assert [type(c) for c in commands] == [RunTask]
    (write,) = d.cache_writes(d.succeed("a", "second"))
    assert write.cache_key == "k" and write.value == "second"


def test_lost_worker_does_not_check_the_cache_again() -> None:
    d = Driver(flow(task("a", cache=CacheSpec())))
    d.cache("a", "k", None)
    commands = d.lose("a")
    assert [type(c) for c in commands] == [RunTask]


def test_cache_answer_without_a_pending_check_is_ignored() -> None:
    d = Driver(flow(task("a", cache=CacheSpec()), task("b")))
    d.cache("a", "k", None)
    assert d.state("a") is S.RUNNING
    (ignored,) = d.ignored(d.cache("a", "k", CacheEntry("v", None)))
    assert "no cache check pending" in ignored.reason
    assert d.state("a") is S.RUNNING
    (ignored,) = d.ignored(d.cache("b", "k", CacheEntry("v", None)))
    assert d.state("b") is S.RUNNING
    (ignored,) = d.ignored(d.send(CacheChecked("nope", "k", None)))
    assert "unknown task run" in ignored.reason


def test_each_mapped_child_checks_the_cache_with_its_element() -> None:
    g = flow(task("m", inputs={"x": Const([1, 2, 3])}, mapped=["x"], cache=CacheSpec()))
    d = Driver(g)
    checks = d.cache_checks()
    assert [(c.run.key, c.inputs) for c in checks] == [
        ("m[0]", {"x": 1}),
        ("m[1]", {"x": 2}),
        ("m[2]", {"x": 3}),
    ]
    d.cache("m[0]", "k1", CacheEntry("one", None))
    d.cache("m[1]", "k2", None)
    d.cache("m[2]", "k3", CacheEntry("three", None))
    assert [d.state(f"m[{i}]") for i in range(3)] == [S.CACHED, S.RUNNING, S.CACHED]
    d.succeed("m[1]", "two")
    assert d.engine.state is FlowRunState.SUCCESS
    assert [c.result for c in d.runs["m"].children or []] == ["one", "two", "three"]


def test_cache_hits_do_not_use_concurrency_slots() -> None:
    g = flow(*(task(f"t{i}", cache=CacheSpec()) for i in range(4)), task("slow"))
    d = Driver(g, max_concurrency=1)
    assert d.dispatched() == ["slow"]
    for i in range(4):
        d.cache(f"t{i}", f"k{i}", CacheEntry(i, None))
    assert all(d.state(f"t{i}") is S.CACHED for i in range(4))
    d.succeed("slow")
    assert d.engine.state is FlowRunState.SUCCESS


def test_cache_miss_waits_for_a_free_slot() -> None:
    d = Driver(flow(task("slow"), task("a", cache=CacheSpec())), max_concurrency=1)
    d.cache("a", "k", None)
    assert d.dispatched() == [] and d.state("a") is S.SCHEDULED
    d.succeed("slow")
    assert d.dispatched() == ["a"]


def test_a_key_derived_by_the_worker_is_written_and_its_hit_ends_the_attempt_cached() -> None:
    fn_cache = CacheSpec(expiry=HOUR, by_function=True)
    d = Driver(flow(task("a", cache=fn_cache), task("b", "a")))
    d.cache("a", "", None)  # the host cannot derive it: the worker will
    d.started("a")
    d.send(TaskSucceeded("a", 1, "fresh", cache_key="k-from-worker"))
    (write,) = d.of_type(WriteCache)
    assert write.cache_key == "k-from-worker" and write.value == "fresh"

    hit = Driver(flow(task("a", cache=fn_cache), task("b", "a")))
    hit.cache("a", "", None)
    hit.started("a")
    hit.send(TaskSucceeded("a", 1, "stored", cache_key="k-from-worker", cached=True))
    assert hit.states("a") == [S.PENDING, S.SCHEDULED, S.RUNNING, S.CACHED]
    assert "k-from-worker" in hit.runs["a"].history[-1].message
    assert hit.dispatched() == ["b"] and hit.engine.in_flight == 1, "a's slot is free"
    assert hit.inputs("b")["a"] == "stored"
    assert not hit.of_type(WriteCache), "a hit is not written back"


def test_a_check_still_waiting_for_its_outcome_is_made_again_when_asked() -> None:
    """A host that looks a cache up after the event that asked for it (a server, off its
    event loop) and stopped before the outcome was journaled has the check made again
    (``pending_cache_checks``, after a replay): without it the task run waited for good.
    Once checked, or no longer waiting (the run was cancelled), nothing is made again."""
    obj = ["input"]
    d = Driver(
        flow(
            task("a", inputs={"x": Const(obj)}, cache=CacheSpec(expiry=HOUR)),
            task("b", inputs={"x": Const(2)}, cache=CacheSpec(expiry=HOUR)),
        )
    )
    assert sorted(c.run.key for c in d.last if isinstance(c, CheckCache)) == ["a", "b"]
    again = d.engine.pending_cache_checks()
    assert [(c.run.key, c.inputs) for c in again] == [("a", {"x": obj}), ("b", {"x": 2})]
    assert d.state("a") is S.SCHEDULED and d.engine.in_flight == 0  # (it changed nothing)
    d.cache("a", "key-a", None)
    assert [c.run.key for c in d.engine.pending_cache_checks()] == ["b"]
    d.engine.handle(CancelRequested("stop"))
    assert d.engine.pending_cache_checks() == []
