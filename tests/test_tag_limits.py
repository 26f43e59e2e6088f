"""Concurrency and rate limits by tag in the dispatcher (leases, waiting, rates with a
fake clock), drained workers, late-run bookkeeping, and rate parsing."""

from __future__ import annotations

import pytest
from test_dispatcher import Worker

from headwater.v1 import worker_pb2
from headwater.wire import TaskRunState, parse_rate
from headwater_runtime.server._dispatch import Dispatcher
from headwater_runtime.server._late import LateRuns, late_reason
from headwater_runtime.server._runs import PendingAssignment
from headwater_runtime.server._tag_limits import TagLimits
from headwater_runtime.store import LimitRow


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def tagged(run: str, key: str, *tags: str, attempt: int = 1) -> PendingAssignment:
    token = worker_pb2.FencingToken(task_run_id=f"{run}/{key}", attempt=attempt)
    return PendingAssignment(run, "m.t", {}, worker_pb2.Assignment(token=token), tags=tags)


def setup(*limits: LimitRow, slots: int = 10) -> tuple[Dispatcher, Worker, Clock]:
    clock = Clock()
    d = Dispatcher(on_lost=lambda *a: None, limits=TagLimits(clock))
    for row in limits:
        d.limits.set(row)
    w = Worker("w", slots, {"m.t"})
    d.connect(w.session)
    return d, w, clock


def test_at_most_n_attempts_with_a_tag_run_and_a_released_lease_lets_the_next_one_in() -> None:
    d, w, _ = setup(LimitRow("db", concurrency=2))
    for i in range(5):
        d.submit(tagged("r", f"q[{i}]", "db"))
    d.submit(tagged("r", "free"))  # untagged: not held back by the limit
    assert w.assigned() == ["r/q[0]", "r/q[1]", "r/free"]
    assert d.limits.running("db") == 2 and d.limits.waiting("db") == 3
    waiting = d.queued("r")
    assert [d.waiting_reason(p) for p in waiting] == ["waiting on limit db (2/2)"] * 3
    d.finished(("r/q[0]", 1))
    assert w.assigned()[-1] == "r/q[2]" and d.limits.running("db") == 2
    d.disconnect("w")  # the worker is lost: its leases end
    assert d.limits.running("db") == 0
    w2 = Worker("w2", 10, {"m.t"})
    d.connect(w2.session)
    assert w2.assigned() == ["r/q[3]", "r/q[4]"]


def test_while_a_restarted_server_resumes_its_runs_limited_attempts_wait() -> None:
    """Attempts workers held at a crash get their leases back only as their own run is
    resumed: until every run is, attempts under a concurrency limit wait (others go),
    and then as many as the limit allows go."""
    d, w, _ = setup(LimitRow("db", concurrency=2))
    d.limits.resuming = True
    for i in range(3):
        d.submit(tagged("small", f"q[{i}]", "db"))
    d.submit(tagged("small", "free"))
    assert w.assigned() == ["small/free"]
    reason = "waiting on limit db: the server is resuming its runs after a restart"
    assert {d.waiting_reason(p) for p in d.queued("small")} == {reason}
    d.limits.acquire(("large/held", 1), ("db",))  # a held attempt's lease comes back
    d.requeue(d.limits.resumed_all())
    assert w.assigned() == ["small/free", "small/q[0]"]  # 2 at once: held + one
    assert d.waiting_reason(d.queued("small")[0]) == "waiting on limit db (2/2)"


def test_the_limit_counts_across_flow_runs_and_every_tag_of_a_task() -> None:
    d, w, _ = setup(LimitRow("db", concurrency=1), LimitRow("api", concurrency=2))
    d.submit(tagged("a", "x", "db", "api"))
    d.submit(tagged("b", "y", "db"))
    d.submit(tagged("c", "z", "api"))
    d.submit(tagged("c", "zz", "api"))
    assert sorted(w.assigned()) == ["a/x", "c/z"]
    assert d.waiting_reason(d.queued("b")[0]) == "waiting on limit db (1/1)"
    assert d.waiting_reason(d.queued("c")[0]) == "waiting on limit api (2/2)"


def test_a_limit_set_while_tasks_run_counts_them_and_deleting_it_lets_all_in() -> None:
    d, w, _ = setup()
    d.submit(tagged("r", "a", "db"))
    d.submit(tagged("r", "b", "db"))
    d.requeue(d.limits.set(LimitRow("db", concurrency=1)))
    d.submit(tagged("r", "c", "db"))
    assert w.assigned() == ["r/a", "r/b"], "two already run: the third waits"
    d.finished(("r/a", 1))
    assert w.assigned() == ["r/a", "r/b"], "still one running, the limit is one"
    d.requeue(d.limits.delete("db"))
    assert w.assigned() == ["r/a", "r/b", "r/c"]


def test_a_waiting_attempt_that_is_cancelled_or_adopted_leaves_the_queue() -> None:
    d, w, _ = setup(LimitRow("db", concurrency=1))
    for key in ("a", "b", "c"):
        d.submit(tagged("r", key, "db"))
    d.cancel("r", "r/b", 1, "stop")
    assert d.take_pending(("r/c", 1)) is not None
    d.finished(("r/a", 1))
    assert w.assigned() == ["r/a"] and d.limits.waiting("db") == 0


def test_a_rate_limit_spaces_starts_by_its_window() -> None:
    d, w, clock = setup(LimitRow("api", rate=2, rate_period=10.0))
    for i in range(5):
        d.submit(tagged("r", f"c[{i}]", "api"))
        d.finished((f"r/c[{i}]", 1))  # short calls: only the rate holds them back
    assert w.assigned() == ["r/c[0]", "r/c[1]"]
    assert d.waiting_reason(d.queued("r")[0]) == "waiting on rate limit api (2 per 10s)"
    assert d.limits.next_wake_at == 110.0
    clock.t = 109.0
    assert d.limits.due() == []
    clock.t = 110.0
    d.requeue(d.limits.due())
    assert w.assigned()[2:] == ["r/c[2]", "r/c[3]"]


def test_a_drained_worker_gets_nothing_new_and_says_why() -> None:
    d, w, _ = setup()
    w.session.draining = True
    d.submit(tagged("r", "a"))
    assert w.assigned() == []
    assert d.waiting_reason(d.queued("r")[0]) == "waiting: every worker offering m.t is drained"
    w.session.draining = False
    d.pump()
    assert w.assigned() == ["r/a"]


def test_late_runs_are_due_once_unless_a_task_starts_first() -> None:
    late = LateRuns(5.0)
    late.created("a", 100.0)
    late.created("b", 100.0)
    late.started("b", TaskRunState.SCHEDULED)  # ready is not started
    late.created("c", 101.0)
    late.started("c", TaskRunState.RUNNING)
    late.started("a", TaskRunState.MAPPED)  # a map's expansion is not a start either
    assert late.next_at == 105.0
    assert late.due(104.9) == []
    assert sorted(late.due(105.0)) == ["a", "b"]
    assert late.due(200.0) == [] and late.next_at is None
    off = LateRuns(0.0)
    off.created("x", 0.0)
    assert off.due(1e9) == []
    assert late_reason([]) == "no task run is ready to run yet"
    assert late_reason(["waiting on limit db (3/3)", "other"]) == "waiting on limit db (3/3)"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("10/s", (10, 1.0)), ("100/m", (100, 60.0)), ("5/10s", (5, 10.0)), ("1/1h30m", (1, 5400.0))],
)
def test_rates_read_as_count_per_period(text: str, expected: tuple[int, float]) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize("text", ["10", "0/s", "x/s", "10/", "10/never", "-1/s"])
def test_a_bad_rate_says_what_a_rate_looks_like(text: str) -> None:
    with pytest.raises(ValueError, match="COUNT/PERIOD such as 10/s"):
        parse_rate(text)
