"""Small helpers over the OpenTelemetry API used by every Headwater span source.

OpenTelemetry is optional (``headwater[otel]``). Nothing here imports it until a
process has imported it itself: an application that never did cannot have installed
a TracerProvider, so tracing is off and costs one dictionary lookup per run.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .names import TRACER_NAME

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

_API = "opentelemetry.trace"


def active_tracer() -> Tracer | None:
    """Headwater's tracer when the application has a real TracerProvider, else None.

    Hosts call this once per flow run (or once per worker): when it returns None they
    skip every tracing call, so tracing off costs one ``is None`` test per task run.
    """
    if _API not in sys.modules:
        return None
    from opentelemetry import trace
    from opentelemetry.trace import NoOpTracer

    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    tracer = provider.get_tracer(TRACER_NAME, _version())
    # The SDK hands out a NoOpTracer when OTEL_SDK_DISABLED=true.
    return None if isinstance(tracer, NoOpTracer) else tracer


@functools.cache
def _version() -> str:
    from importlib import metadata  # ~20 ms of imports (email, zipfile): only when tracing

    try:
        return metadata.version("headwater")
    except metadata.PackageNotFoundError:
        return ""


@functools.cache
def w3c() -> Any:
    """The W3C trace-context propagator (the wire format, whatever OTEL_PROPAGATORS
    says: workers in any language read exactly ``traceparent`` and ``tracestate``)."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator()


def inject(span: Span | None = None) -> dict[str, str]:
    """W3C trace context of ``span`` (default: the current span); empty without one."""
    if span is None and _API not in sys.modules:
        return {}  # OpenTelemetry was never imported: there is no current span
    from opentelemetry import trace

    carrier: dict[str, str] = {}
    context = trace.set_span_in_context(span) if span is not None else None
    w3c().inject(carrier, context=context)
    return carrier


def extract(carrier: Mapping[str, str]) -> Context:
    """A context whose parent is the span named by a W3C carrier (empty: no parent)."""
    context: Context = w3c().extract(dict(carrier))
    return context


def record_failure(span: Span, type_: str, message: str, stacktrace: str, *, error: bool) -> None:
    """An ``exception`` event with the standard attributes (and ERROR status if asked).

    Failures often come from another process or language, so the event is built from
    the reported type/message/stack trace rather than from a live exception.
    """
    from opentelemetry.trace import Status, StatusCode

    span.add_event(
        "exception",
        {
            "exception.type": type_,
            "exception.message": message,
            "exception.stacktrace": stacktrace,
        },
    )
    if error:
        span.set_status(Status(StatusCode.ERROR, f"{type_}: {message}" if message else type_))


@contextlib.contextmanager
def cli_span(name: str) -> Iterator[Callable[[str], None]]:
    """A span around a CLI command when tracing is on (nothing otherwise), so the flow
    span a server opens for the command's run becomes its child. It gives a function
    that marks the span failed with a description (the run did not succeed: the span
    said UNSET for a FAILED run, a user trial); a no-op when tracing is off."""
    tracer = active_tracer()
    if tracer is None:
        yield _no_outcome
        return
    from opentelemetry.trace import Status, StatusCode

    with tracer.start_as_current_span(name) as span:
        yield lambda description: span.set_status(Status(StatusCode.ERROR, description))


def _no_outcome(_description: str) -> None:
    pass


def current_context() -> Context:
    """The OpenTelemetry context current in this thread (call only when tracing is on:
    it imports OpenTelemetry)."""
    from opentelemetry import context

    return context.get_current()
