"""Span names and attribute keys shared by every Headwater process (and the Node worker).

They are part of the observable contract: docs/tracing.md lists them, dashboards and
queries are written against them. Add, never rename.
"""

from __future__ import annotations

#: Instrumentation scope of every Headwater span.
TRACER_NAME = "headwater"

FLOW_NAME = "headwater.flow.name"
FLOW_RUN_ID = "headwater.flow_run.id"
TASK_NAME = "headwater.task.name"
TASK_TYPE = "headwater.task_type"
TASK_RUN_ID = "headwater.task_run.id"
ATTEMPT = "headwater.attempt"
MAP_INDEX = "headwater.map_index"
STATE = "headwater.state"
MESSAGE = "headwater.message"
CACHE_HIT = "headwater.cache_hit"
CACHE_KEY = "headwater.cache_key"
RESUMED = "headwater.resumed"
#: The run attempt of a flow span: 2 and up for a run retried from its failure.
FLOW_RUN_ATTEMPT = "headwater.flow_run.attempt"
WORKER_NAME = "headwater.worker.name"
RETRY_DELAY = "headwater.retry.delay"
RETRY_NUMBER = "headwater.retry.number"

#: Span events.
EVENT_RETRY = "headwater.retry"
EVENT_CACHE_HIT = "headwater.cache_hit"
EVENT_STARTED = "headwater.started"
EVENT_LOST = "headwater.worker_lost"
EVENT_GIVEN_BACK = "headwater.given_back"
EVENT_INTERRUPTED = "headwater.interrupted"

#: The wire format of trace context in CreateFlowRunRequest and Assignment is W3C
#: (traceparent, tracestate) whatever OTEL_PROPAGATORS says: workers in any language
#: read exactly these keys (see ``_spans.w3c``).


def flow_span_name(flow_name: str) -> str:
    """``flow <name>``: the span of a whole flow run."""
    return f"flow {flow_name}"


def task_span_name(task_name: str) -> str:
    """``task <name>``: the span of one attempt, on the host that drives the run."""
    return f"task {task_name}"


def execute_span_name(task_name: str) -> str:
    """``execute <name>``: a worker's span for running an attempt (a child of the task
    span)."""
    return f"execute {task_name}"
