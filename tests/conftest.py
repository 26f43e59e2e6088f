"""Shared fixtures."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from _backends import THREADS, Backend

from headwater_runtime.embedded import PROCESS_CACHE


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
