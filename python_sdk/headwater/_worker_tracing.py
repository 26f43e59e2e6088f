"""The worker's ``execute <task>`` span: a child of the attempt span whose W3C context
the control plane put in the assignment, so one trace crosses the process boundary."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Tracer

from headwater.v1 import worker_pb2
from headwater_runtime.tracing import extract, record_failure
from headwater_runtime.tracing import names as n


def task_name(assignment: worker_pb2.Assignment) -> str:
    """The task's name as the attempt span has it: mapped child i's assignment is named
    ``name[i]``; span names stay low-cardinality and ``headwater.map_index`` says i."""
    suffix = f"[{assignment.map_index}]"
    if assignment.map_index >= 0 and assignment.task_name.endswith(suffix):
        return assignment.task_name[: -len(suffix)]
    return assignment.task_name


def execute_traced(
    tracer: Tracer,
    assignment: worker_pb2.Assignment,
    worker_name: str,
    run: Callable[[], worker_pb2.ConnectRequest | None],
) -> worker_pb2.ConnectRequest | None:
    """Call ``run`` (decode inputs, run the task, encode its result) inside the span;
    the outcome it returns decides the span's status."""
    name = task_name(assignment)
    attributes: dict[str, Any] = {
        n.TASK_NAME: name,
        n.TASK_TYPE: assignment.task_type,
        n.TASK_RUN_ID: assignment.token.task_run_id,
        n.ATTEMPT: assignment.token.attempt,
        n.FLOW_RUN_ID: assignment.flow_run_id,
        n.WORKER_NAME: worker_name,
    }
    if assignment.map_index >= 0:
        attributes[n.MAP_INDEX] = assignment.map_index
    span = tracer.start_span(
        n.execute_span_name(name),
        context=extract(assignment.trace_context),
        attributes=attributes,
    )
    # Current while the task runs: spans the task's own code makes nest under it.
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        outcome = run()
        if outcome is None:  # a cache hit the server recorded: the task did not run
            span.set_attribute(n.CACHE_HIT, True)
            return None
        kind = outcome.WhichOneof("message")
        if kind == "failure":
            failure = outcome.failure.failure
            record_failure(span, failure.type, failure.message, failure.stack_trace, error=True)
        elif kind == "skipped":
            span.set_attribute(n.MESSAGE, outcome.skipped.reason)
        return outcome
    except BaseException:
        # TaskInterrupted: cancelled, timed out or abandoned; whoever did it reports it.
        span.add_event(n.EVENT_INTERRUPTED)
        raise
    finally:
        otel_context.detach(token)
        span.end()
