"""OpenTelemetry tracing: every flow run is a trace (see docs/tracing.md).

Hosts observe the pure engine (``RunTracer``); workers open an ``execute`` span under
the attempt span named by ``Assignment.trace_context``; CLI entry points install the
exporters from the standard OTEL_* variables (``configure_tracing``).
"""

from . import _names as names
from ._config import (
    EXPORTERS,
    PROTOCOLS,
    Tracing,
    TracingConfigError,
    TracingSettings,
    configure_tracing,
    tracing_settings_from_env,
)
from ._names import TRACER_NAME
from ._runs import RunTracer, in_span
from ._spans import active_tracer, extract, inject, record_failure

__all__ = [
    "EXPORTERS",
    "PROTOCOLS",
    "TRACER_NAME",
    "RunTracer",
    "Tracing",
    "TracingConfigError",
    "TracingSettings",
    "active_tracer",
    "configure_tracing",
    "extract",
    "in_span",
    "inject",
    "names",
    "record_failure",
    "tracing_settings_from_env",
]
