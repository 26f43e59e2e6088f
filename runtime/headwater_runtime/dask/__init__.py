"""Headwater on Dask: the embedded DaskExecutor (and the code it runs on workers)."""

from ._executor import DaskExecutor
from ._remote import Outcome
from ._values import DaskValues, Part

__all__ = ["DaskExecutor", "DaskValues", "Outcome", "Part"]
