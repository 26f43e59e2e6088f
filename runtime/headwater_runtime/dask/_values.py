"""ValueOps over results held in a Dask cluster (futures), without gathering them.

A task's result is the Dask future of its attempt. Parts of it (an element to map
over, ``result["key"]``) are described lazily as a ``Part`` and taken inside the
downstream task on the worker (see ``_remote.run_attempt``), so neither the value nor
the part passes through the orchestrator. Only the length of a value to map over is
computed, by a tiny task in the cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from distributed import Client, Future

from headwater_runtime.engine import PYTHON_VALUES, At, Step, ValueOps

from ._remote import length_of

Path = tuple[Step, ...]


@dataclass(frozen=True, slots=True)
class Part:
    """The part of the value of ``future`` at ``path`` (taken in the cluster)."""

    future: Future[Any]
    path: Path


def locate(value: Any) -> tuple[Future[Any], Path] | None:
    """(future, path) when ``value`` lives in the cluster, else None."""
    if isinstance(value, Future):
        return value, ()
    if isinstance(value, Part):
        return value.future, value.path
    return None


def holds_remote(value: Any, depth: int = 0) -> bool:
    """Whether a value built by the engine (lists, tuples, dicts) contains a future."""
    if isinstance(value, Future | Part):
        return True
    if depth > 8:
        return False
    if isinstance(value, list | tuple):
        return any(holds_remote(v, depth + 1) for v in value)
    if isinstance(value, Mapping):
        return any(holds_remote(v, depth + 1) for v in value.values())
    return False


class DaskValues:
    """ValueOps whose values may be futures of ``client`` (or Parts of them).

    Args:
        client: the client of the cluster that holds the futures.
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self._lengths: dict[tuple[str, Path], int | None] = {}

    def length(self, value: Any) -> int | None:
        """The length of a value to map over; for a future (or Part), computed by a
        small task in the cluster, once per future and path."""
        where = locate(value)
        if where is None:
            return PYTHON_VALUES.length(value)
        future, path = where
        known = (str(future.key), path)
        if known not in self._lengths:
            n = self.client.submit(length_of, future, path, pure=False).result()
            self._lengths[known] = n
        return self._lengths[known]

    def item(self, value: Any, index: int) -> Any:
        """Element ``index``: a Part for a value in the cluster (nothing is fetched),
        taken by position as ``PythonValues.item`` takes it (a pandas Series by
        position, not by its labels: mapping over a Series indexed 2, 1, 0 paired the
        children with its elements reversed, a user trial)."""
        where = locate(value)
        if where is None:
            return PYTHON_VALUES.item(value, index)
        return self.select(value, (At(index),))

    def select(self, value: Any, path: Path) -> Any:
        """The part at ``path``: a Part for a value in the cluster, taken later on the
        worker that runs the downstream task."""
        where = locate(value)
        if where is None:
            return PYTHON_VALUES.select(value, path)
        future, base = where
        return Part(future, base + tuple(path))

    def make_list(self, items: list[Any], is_tuple: bool) -> Any:
        """The items (futures included) as a list, or a tuple when ``is_tuple``."""
        return tuple(items) if is_tuple else items

    def make_dict(self, entries: dict[str, Any]) -> Any:
        """The entries themselves (Dask resolves futures inside them on the worker)."""
        return entries

    def describe(self, value: Any) -> str:
        """What a value is, for messages: a value held in the cluster is not fetched
        to find out."""
        where = locate(value)
        if where is None:
            return PYTHON_VALUES.describe(value)
        _, path = where
        part = "".join(f"[{p!r}]" for p in path)
        return f"the result{part} held in the Dask cluster"


def _dask_values_implement_value_ops(values: DaskValues) -> ValueOps:
    """Never called: mypy checks here that DaskValues has every ValueOps method."""
    return values
