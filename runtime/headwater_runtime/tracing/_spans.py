"""Small helpers over the OpenTelemetry API used by every Headwater span source."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from importlib import metadata

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NoOpTracer, Span, Status, StatusCode, Tracer

from ._names import TRACER_NAME, W3C


def active_tracer() -> Tracer | None:
    """Headwater's tracer when the application has a real TracerProvider, else None.

    Hosts call this once per flow run (or once per worker): when it returns None they
    skip every tracing call, so tracing off costs one ``is None`` test per task run.
    """
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    tracer = provider.get_tracer(TRACER_NAME, _version())
    # The SDK hands out a NoOpTracer when OTEL_SDK_DISABLED=true.
    return None if isinstance(tracer, NoOpTracer) else tracer


@functools.cache
def _version() -> str:
    try:
        return metadata.version("headwater")
    except metadata.PackageNotFoundError:
        return ""


def inject(span: Span | None = None) -> dict[str, str]:
    """W3C trace context of ``span`` (default: the current span); empty without one."""
    carrier: dict[str, str] = {}
    context = trace.set_span_in_context(span) if span is not None else None
    W3C.inject(carrier, context=context)
    return carrier


def extract(carrier: Mapping[str, str]) -> Context:
    """A context whose parent is the span named by a W3C carrier (empty: no parent)."""
    return W3C.extract(dict(carrier))


def record_failure(span: Span, type_: str, message: str, stacktrace: str, *, error: bool) -> None:
    """An ``exception`` event with the standard attributes (and ERROR status if asked).

    Failures often come from another process or language, so the event is built from
    the reported type/message/stack trace rather than from a live exception.
    """
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
