"""Headwater on Dask (``headwater[dask]``): the embedded DaskExecutor, the code it runs
on Dask workers, and the pieces the SDK's Dask bridge worker shares with it."""

from ._executor import (
    DASK_UNAVAILABLE,
    DaskExecutor,
    client_closed,
    closed_client_ignored,
    cluster_declares,
    connect_client,
    interrupt_everywhere,
    materialize,
    split_inputs,
)
from ._remote import Outcome, compute_cache_key, length_of, run_attempt, select
from ._values import DaskValues, Part, holds_remote

__all__ = [
    "DASK_UNAVAILABLE",
    "DaskExecutor",
    "DaskValues",
    "Outcome",
    "Part",
    "client_closed",
    "closed_client_ignored",
    "cluster_declares",
    "compute_cache_key",
    "connect_client",
    "holds_remote",
    "interrupt_everywhere",
    "length_of",
    "materialize",
    "run_attempt",
    "select",
    "split_inputs",
]
