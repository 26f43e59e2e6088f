"""Installing OpenTelemetry tracing from the standard OTEL_* environment variables.

Only the CLI entry points (``headwater server``, ``worker``, ``run``) call this: a
library must not install a global TracerProvider behind the application's back.
Applications that install their own provider get Headwater's spans through it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Values of OTEL_TRACES_EXPORTER Headwater understands.
EXPORTERS = ("otlp", "console")
#: Values of OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL Headwater understands.
PROTOCOLS = ("grpc", "http/protobuf")


class TracingConfigError(ValueError):
    """An OTEL_* variable has a value Headwater cannot use; one line naming it."""


@dataclass(frozen=True)
class TracingSettings:
    """What to trace to, read once from the environment at a CLI entry point.

    Attributes:
        exporters: ``otlp`` and/or ``console``; empty means tracing off.
        protocol: OTLP transport (``grpc`` like the Python SDK's default, or
            ``http/protobuf``); endpoint, headers and timeouts are read by the
            exporter itself from the standard OTEL_EXPORTER_OTLP_* variables.
        disabled: OTEL_SDK_DISABLED=true turns everything off.
        service_name: ``service.name`` unless OTEL_SERVICE_NAME or
            OTEL_RESOURCE_ATTRIBUTES set one.
    """

    exporters: tuple[str, ...] = ()
    protocol: str = "grpc"
    disabled: bool = False
    service_name: str = "headwater"

    @property
    def active(self) -> bool:
        """Whether anything is exported (an exporter is set and the SDK not disabled)."""
        return bool(self.exporters) and not self.disabled


def tracing_settings_from_env(
    environ: Mapping[str, str] | None = None, *, service_name: str = "headwater"
) -> TracingSettings:
    """Parse the OTEL_* variables; TracingConfigError names a bad one."""
    env = os.environ if environ is None else environ
    raw = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    names = [part.strip() for part in raw.split(",") if part.strip()]
    unknown = [name for name in names if name not in (*EXPORTERS, "none")]
    if unknown:
        raise TracingConfigError(
            f"OTEL_TRACES_EXPORTER: unsupported exporter {unknown[0]!r} "
            f"(Headwater supports {', '.join(EXPORTERS)} or none)"
        )
    if "none" in names and len(names) > 1:
        raise TracingConfigError(
            f"OTEL_TRACES_EXPORTER: 'none' cannot be combined with other exporters ({raw!r})"
        )
    exporters = tuple(dict.fromkeys(name for name in names if name != "none"))
    # (The variable the value came from is the one named: the error named the general
    # one when only the traces one was set, a user trial.)
    variable = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
    protocol = env.get(variable, "")
    if not protocol:
        variable = "OTEL_EXPORTER_OTLP_PROTOCOL"
        protocol = env.get(variable, "")
    protocol = protocol.strip().lower() or "grpc"
    if protocol not in PROTOCOLS:
        raise TracingConfigError(
            f"{variable}: unsupported protocol {protocol!r} "
            f"(Headwater supports {', '.join(PROTOCOLS)})"
        )
    disabled = env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    return TracingSettings(exporters, protocol, disabled, service_name)


@dataclass
class Tracing:
    """Tracing as installed by ``configure_tracing``; ``shutdown()`` flushes it."""

    provider: Any = None
    instrumentors: list[Any] = field(default_factory=list)

    def shutdown(self) -> None:
        """Export what is buffered and stop (call on every exit path)."""
        for instrumentor in self.instrumentors:
            instrumentor.uninstrument()
        self.instrumentors.clear()
        if self.provider is not None:
            self.provider.shutdown()
            self.provider = None


def configure_tracing(settings: TracingSettings) -> Tracing:
    """Install a global TracerProvider with the configured exporters and instrument
    gRPC; a no-op when tracing is off or the process already has a provider."""
    if not settings.active:
        return Tracing()
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise TracingConfigError(
            f"OTEL_TRACES_EXPORTER={','.join(settings.exporters)} needs the OpenTelemetry "
            "SDK, which is not installed: pip install 'headwater[otel]' (or unset "
            "OTEL_TRACES_EXPORTER)"
        ) from None
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        # Someone (opentelemetry-instrument, the application) installed one already.
        return Tracing(instrumentors=_instrument_grpc())
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: settings.service_name}))
    provider = TracerProvider(resource=resource)
    for name in settings.exporters:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name, settings.protocol)))
    trace.set_tracer_provider(provider)
    return Tracing(provider, _instrument_grpc())


def _exporter(name: str, protocol: str) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        # stderr: `headwater run` prints the flow's result on stdout.
        return ConsoleSpanExporter(out=sys.stderr)
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HTTPSpanExporter,
    )

    return HTTPSpanExporter()


def _instrument_grpc() -> list[Any]:
    """Trace unary and short streaming RPCs (context travels in metadata). The worker's
    Connect stream lives as long as the worker, so it is left out: assignments carry
    their own trace context. Health checks and reflection are noise."""
    from opentelemetry.instrumentation.grpc import (
        GrpcAioInstrumentorServer,
        GrpcInstrumentorClient,
        filters,
    )

    wanted = filters.negate(
        filters.any_of(
            filters.method_name("Connect"),
            filters.health_check(),
            filters.service_prefix("grpc.reflection"),
        )
    )
    # opentelemetry-instrumentation-grpc's constructors carry no annotations.
    instrumentors: list[Any] = [
        GrpcInstrumentorClient(filter_=wanted),  # type: ignore[no-untyped-call]
        GrpcAioInstrumentorServer(filter_=wanted),  # type: ignore[no-untyped-call]
    ]
    for instrumentor in instrumentors:
        instrumentor.instrument()
    return instrumentors
