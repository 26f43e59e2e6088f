"""OpenTelemetry tracing: every flow run is a trace (see docs/tracing.md).

Hosts observe the pure engine (``RunTracer``); workers open an ``execute`` span under
the attempt span named by ``Assignment.trace_context``; CLI entry points install the
exporters from the standard OTEL_* variables (``configure_tracing``).

OpenTelemetry is optional (``headwater[otel]``): public names, listed in
``__init__.pyi``, load lazily, and nothing imports OpenTelemetry unless tracing is on.
"""

from headwater.wire.lazy import attach_stub

__getattr__, __dir__, __all__ = attach_stub(__name__, __file__)
