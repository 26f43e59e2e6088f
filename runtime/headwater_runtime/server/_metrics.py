"""The server's Prometheus metrics (prometheus-client), and ``/metrics``.

Each server has its own registry (several servers may share a process in tests):

- ``headwater_flow_runs{state}`` (gauge): flow runs in the store by state, counted when
  scraped;
- ``headwater_task_runs_started_total`` (counter): attempts that began executing
  (``rate()`` of it: task runs started per second);
- ``headwater_task_runs_finished_total{state}`` (counter): task runs that reached a
  terminal state;
- ``headwater_queue_depth{capability}`` (gauge): attempts ready and not yet handed to a
  worker, by task type;
- ``headwater_limit_waiting{tag}`` (gauge): attempts waiting on a concurrency or rate
  limit;
- ``headwater_ready_to_start_seconds`` (histogram): from SCHEDULED (ready) to RUNNING
  (a worker began it);
- ``headwater_workers_online`` (gauge): connected worker sessions;
- ``headwater_commit_seconds`` (histogram): one commit of the run state (a transaction);
- ``headwater_webhook_deliveries_total{outcome}`` (counter): webhook POSTs, ok or failed;
- ``headwater_late_runs_total`` (counter): flow runs marked late.

Counters and histograms are updated as things happen, except task run transitions:
the event loop queues those (two per task), and they are counted into their counter
and histogram by the server's timer loop (at least twice a second) and by every
scrape before it renders, so a scrape never misses one. Gauges of in-memory state are
set by the timer loop too, and the
flow run counts are read from the store by the scrape itself (on the metrics port's
thread, or a store reader thread for the web UI's).

``/metrics`` is served by the web UI's HTTP server (to a viewer's credential, HTTPS
with TLS: server/http/_pages.py), and on ``metrics_port`` by a small HTTP server of its
own without credentials (``MetricsServer``), for scrapers that cannot send a token.
"""

from __future__ import annotations

import http.server
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from headwater.wire import FlowRunState, TaskRunState

log = logging.getLogger("headwater.server")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)


class _FlowRunCounts(Collector):
    """``headwater_flow_runs{state}``, counted in the store when scraped."""

    def __init__(self, count: Callable[[], Mapping[int, int]]) -> None:
        self.count = count

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "headwater_flow_runs", "Flow runs in the store by state.", labels=["state"]
        )
        counts = self.count()
        for state in FlowRunState:
            family.add_metric([state.name], counts.get(state.value, 0))
        yield family


class ServerMetrics:
    """One server's metrics (see the module docstring).

    Args:
        count_flow_runs: flow runs per state value (called from the scraping thread).
    """

    def __init__(self, count_flow_runs: Callable[[], Mapping[int, int]]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.started = Counter(
            "headwater_task_runs_started", "Task run attempts that began executing.", registry=r
        )
        self.finished = Counter(
            "headwater_task_runs_finished",
            "Task runs that reached a terminal state, by state.",
            ["state"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "headwater_queue_depth",
            "Attempts ready and not yet handed to a worker, by capability (task type).",
            ["capability"],
            registry=r,
        )
        self.limit_waiting = Gauge(
            "headwater_limit_waiting",
            "Attempts waiting on a concurrency or rate limit, by tag.",
            ["tag"],
            registry=r,
        )
        self.ready_to_start = Histogram(
            "headwater_ready_to_start_seconds",
            "Seconds from a task run being ready (SCHEDULED) to running (RUNNING).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.workers_online = Gauge(
            "headwater_workers_online", "Connected worker sessions.", registry=r
        )
        self.commit_seconds = Histogram(
            "headwater_commit_seconds",
            "Seconds one commit of the run state took (one transaction).",
            buckets=_COMMIT_BUCKETS,
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "headwater_webhook_deliveries",
            "Webhook POSTs by outcome (ok, failed).",
            ["outcome"],
            registry=r,
        )
        self.late_runs = Counter("headwater_late_runs", "Flow runs marked late.", registry=r)
        r.register(_FlowRunCounts(count_flow_runs))
        self._finished: dict[TaskRunState, Any] = {}
        self._transitions: deque[tuple[TaskRunState, TaskRunState, float]] = deque()
        self._capabilities: set[str] = set()
        self._tags: set[str] = set()

    def transition(self, state: TaskRunState, previous: TaskRunState, waited: float) -> None:
        """A task run changed state; ``waited``: seconds in its previous state. Queued
        (one deque append on the event loop, where prometheus-client's locked updates
        cost ~5 µs per task) and counted by ``count_transitions``."""
        if state is TaskRunState.RUNNING or state.is_terminal:
            self._transitions.append((state, previous, waited))

    def count_transitions(self) -> None:
        """Count the queued transitions into the metrics (any thread: each is taken
        from the queue once)."""
        queued = self._transitions
        started = 0
        finished: dict[TaskRunState, int] = {}
        observe = self.ready_to_start.observe
        while queued:
            try:
                state, previous, waited = queued.popleft()
            except IndexError:  # another thread took the last one
                break
            if state is TaskRunState.RUNNING:
                started += 1
                if previous is TaskRunState.SCHEDULED:
                    observe(max(0.0, waited))
            else:
                finished[state] = finished.get(state, 0) + 1
        if started:
            self.started.inc(started)
        for state, count in finished.items():
            self.finished_in(state).inc(count)

    def ended(self, counts: Mapping[TaskRunState, int]) -> None:
        """Task runs ended in bulk (a run started or cancelled off the event loop)."""
        for state, count in counts.items():
            self.finished_in(state).inc(count)

    def finished_in(self, state: TaskRunState) -> Any:
        """The ``finished`` counter of one terminal state (looked up once: ``labels()``
        costs more than the increment, and cancelling a large run counts 100,000)."""
        child = self._finished.get(state)
        if child is None:
            child = self._finished[state] = self.finished.labels(state.name)
        return child

    def sample(self, depth: Mapping[str, int], waiting: Mapping[str, int], online: int) -> None:
        """Set the gauges of in-memory state, and count the queued transitions (from
        the server's timer loop)."""
        self.count_transitions()
        for capability in self._capabilities - depth.keys():
            self.queue_depth.labels(capability).set(0)
        for capability, n in depth.items():
            self.queue_depth.labels(capability).set(n)
        self._capabilities |= depth.keys()
        for tag in self._tags - waiting.keys():
            self.limit_waiting.labels(tag).set(0)
        for tag, n in waiting.items():
            self.limit_waiting.labels(tag).set(n)
        self._tags |= waiting.keys()
        self.workers_online.set(online)

    def render(self) -> tuple[bytes, str]:
        """The metrics in the Prometheus text format, and its content type."""
        self.count_transitions()
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsServer:
    """Serves ``GET /metrics`` on its own port, from a thread.

    Args:
        metrics: what to serve.
        host: interface to bind.
        port: port (0 picks a free one; ``port`` then says which).
    """

    def __init__(self, metrics: ServerMetrics, host: str, port: int) -> None:
        render = metrics.render

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "only /metrics is served here")
                    return
                try:
                    data, content_type = render()
                except Exception as exc:  # e.g. the store cannot be read right now
                    self.send_error(503, f"metrics unavailable: {exc}")
                    return
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass  # scrapes every few seconds would flood the server's log

        self.httpd = http.server.ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="headwater-metrics", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)
