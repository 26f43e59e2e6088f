"""The server's metrics: task run transitions are queued on the event loop and counted
by the timer loop's sample and by every scrape, each exactly once."""

from __future__ import annotations

import threading

from headwater.wire import TaskRunState
from headwater_runtime.server._metrics import ServerMetrics

S = TaskRunState


def _value(metrics: ServerMetrics, name: str, labels: dict[str, str] | None = None) -> float:
    found = metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if found is None else found


def test_a_scrape_counts_every_transition_queued_before_it() -> None:
    metrics = ServerMetrics(lambda: {})
    metrics.transition(S.RUNNING, S.SCHEDULED, 0.25)
    metrics.transition(S.SUCCESS, S.RUNNING, 1.0)
    metrics.transition(S.SCHEDULED, S.PENDING, 0.0)  # neither started nor ended
    text = metrics.render()[0].decode()
    assert "headwater_task_runs_started_total 1.0" in text
    assert 'headwater_task_runs_finished_total{state="SUCCESS"} 1.0' in text
    assert "headwater_ready_to_start_seconds_count 1.0" in text
    assert _value(metrics, "headwater_ready_to_start_seconds_sum") == 0.25
    metrics.render()  # counted once, not again
    assert _value(metrics, "headwater_task_runs_started_total") == 1


def test_the_timer_loops_sample_counts_queued_transitions_too() -> None:
    metrics = ServerMetrics(lambda: {})
    metrics.transition(S.FAILED, S.RUNNING, 0.5)
    metrics.sample({}, {}, 0)
    labels = {"state": "FAILED"}
    assert _value(metrics, "headwater_task_runs_finished_total", labels) == 1


def test_transitions_counted_from_two_threads_at_once_are_each_counted_once() -> None:
    metrics = ServerMetrics(lambda: {})
    for _ in range(20_000):
        metrics.transition(S.RUNNING, S.SCHEDULED, 0.0)
    threads = [threading.Thread(target=metrics.count_transitions) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    metrics.count_transitions()
    assert _value(metrics, "headwater_task_runs_started_total") == 20_000
    assert _value(metrics, "headwater_ready_to_start_seconds_count") == 20_000
