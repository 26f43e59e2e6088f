"""Shared fixtures."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from _backends import THREADS, Backend
from pg_cluster import STORES, TempPostgres, database_for, temp_postgres

from headwater_runtime.embedded import PROCESS_CACHE


def pytest_configure(config: pytest.Config) -> None:
    """A test run launched as a background job of a shell without job control (``cmd
    &`` in a script or a CI step) starts with SIGINT ignored, and so does every process
    it starts: the Ctrl-C tests then interrupt nothing. Each test process (pytest-xdist
    workers too) takes Python's usual handler instead, and the processes the tests start
    get the default disposition, as from a terminal."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # pytest-xdist's scheduler (in the controlling process, which collects nothing)
    # would otherwise put files with the most tests first: see SLOW_FILES.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


# Seconds each slow test file took in one process (`pytest --durations=0`, summed by
# file, 2026-12-03; files under 10 s are left out). With `--dist loadfile` a file runs
# whole on one process, so a long file started last keeps the whole run waiting while
# the other processes idle: these start first, longest first (the rest follow, most
# tests first, as pytest-xdist orders them). Refresh the figures when a file's time
# changes much; a wrong figure only costs time, never a result.
SLOW_FILES = {
    "test_e2e_server.py": 131,
    "test_benchmarks_smoke.py": 113,
    "test_e2e_operations.py": 80,
    "test_browser.py": 68,
    "test_e2e_dask_bridge.py": 51,
    "test_cli_runs.py": 47,
    "test_cli.py": 44,
    "test_e2e_failover.py": 43,
    "test_faults.py": 38,
    "test_e2e_subflows.py": 32,
    "test_tracing_e2e.py": 31,
    "test_worker_stop.py": 28,
    "test_worker.py": 23,
    "test_security_e2e.py": 22,
    "test_e2e_message_limit.py": 22,
    "test_e2e_polyglot.py": 20,
    "test_durability.py": 17,
    "test_e2e_flow_values.py": 15,
    "test_docs.py": 15,
    "test_operations_server.py": 14,
    "test_e2e_dask_cluster.py": 14,
    "test_fuzz.py": 12,
    "test_packaging.py": 12,
    "test_api_reference.py": 11,
    "test_postgres_store.py": 11,
    "test_server_protocol.py": 11,
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order the test files slowest first (SLOW_FILES), then by how many tests they
    hold; each file's tests keep their order. pytest-xdist's own reordering is turned off
    in pytest_configure, so that this is the order its processes take files in."""
    counts: dict[str, int] = {}
    for item in items:
        counts[item.path.name] = counts.get(item.path.name, 0) + 1
    items.sort(key=lambda item: (-SLOW_FILES.get(item.path.name, 0), -counts[item.path.name]))


if TYPE_CHECKING:
    # OpenTelemetry is an extra: `make test-oldest` runs without it.
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


@pytest.fixture(scope="session")
def postgres() -> Iterator[TempPostgres]:
    """One real PostgreSQL server for the whole session (tests get a schema each).

    In CI (CI=true) a missing PostgreSQL or psycopg fails the test; elsewhere the
    test is skipped, saying what to install."""
    import pg_cluster

    missing = ""
    if not pg_cluster.available():
        missing = "PostgreSQL is not installed (apt-get install postgresql, or make setup)"
    else:
        try:
            import psycopg  # noqa: F401
            import psycopg_pool  # noqa: F401
        except ImportError:
            missing = "psycopg is not installed (pip install 'headwater[postgres]')"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing}: the PostgreSQL tests must run in CI")
        pytest.skip(f"{missing}; skipped outside CI")
    with temp_postgres() as server:
        yield server


@pytest.fixture(params=STORES)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The ``--db`` of a server under test, once per store (SQLite, PostgreSQL)."""
    return database_for(request, request.param, tmp_path)


@pytest.fixture(autouse=True)
def _fresh_process_cache() -> None:
    """Each test starts with an empty embedded result cache."""
    PROCESS_CACHE.clear()


@pytest.fixture(scope="session")
def dask_client() -> Iterator[Any]:
    """One real LocalCluster for the session: 2 worker processes x 2 threads."""
    import _backends
    import cloudpickle
    from distributed import Client, LocalCluster

    # Test helpers are not importable on the workers: ship them by value.
    cloudpickle.register_pickle_by_value(_backends)
    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=2,
        processes=True,
        dashboard_address=":0",  # None still binds 8787 (health routes)
        silence_logs=logging.CRITICAL,
    )
    client = Client(cluster, set_as_default=False)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


@pytest.fixture(params=["threads", "dask"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each behavioural test runs on the thread pool and on the Dask cluster."""
    if request.param == "threads":
        return THREADS
    from headwater_runtime.dask import DaskExecutor

    client = request.getfixturevalue("dask_client")
    return Backend("dask", lambda _threads: DaskExecutor(client=client))


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
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.test.globals_test import reset_trace_globals

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    reset_trace_globals()
    trace.set_tracer_provider(provider)
    yield exporter
    provider.shutdown()
    reset_trace_globals()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The fault suite's figures (tests/test_faults.py), when it ran."""
    from fault_helpers import FIGURES, format_figures

    if FIGURES:
        terminalreporter.section("fault suite figures")
        for line in format_figures(FIGURES):
            terminalreporter.write_line(line)
