"""Shared fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.test.globals_test import reset_trace_globals

from headwater_runtime.embedded import PROCESS_CACHE


@pytest.fixture(autouse=True)
def _fresh_process_cache() -> None:
    """Each test starts with an empty embedded result cache."""
    PROCESS_CACHE.clear()


@pytest.fixture(autouse=True)
def _no_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests do not inherit the developer's OTEL_* settings (an exporter configured in
    the shell would make CLI tests install a global TracerProvider)."""
    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def span_exporter() -> Iterator[InMemorySpanExporter]:
    """A global TracerProvider exporting to memory for this test only (as an
    application with its own provider would install it)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    reset_trace_globals()
    trace.set_tracer_provider(provider)
    yield exporter
    provider.shutdown()
    reset_trace_globals()
