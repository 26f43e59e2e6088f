"""How the engine handles values without knowing what they are.

The engine never inspects results itself: to map over a result it asks for its length
and items, to select ``result["rows"]`` it asks for a selection, and to hand a reduce
task the results of a mapped task it asks for a list. Embedded hosts pass live Python
objects (PythonValues); the server passes payload handles it never decodes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class At:
    """A step of a path into a value that takes the element at a position, as mapping
    over the value does (``PythonValues.item``: by position for a pandas Series); a
    plain ``str`` or ``int`` step indexes the value with ``[]``, as ``result["rows"]``
    or ``result[0]`` in a flow body does. Hosts that take a part of a value later, where
    it lives (Dask), describe an element to map over with it."""

    index: int

    def __repr__(self) -> str:
        return repr(self.index)


#: One step of a path into a value (``ValueOps.select``).
Step = str | int | At


class ValueOps(Protocol):
    """Operations on opaque values that the engine needs."""

    def length(self, value: Any) -> int | None:
        """Number of elements to map over, or None when the value is not a sequence."""
        ...

    def item(self, value: Any, index: int) -> Any:
        """Element ``index`` of a sequence value."""
        ...

    def select(self, value: Any, path: tuple[str | int, ...]) -> Any:
        """Part of a value; raises LookupError or TypeError when the path does not fit."""
        ...

    def make_list(self, items: list[Any], is_tuple: bool) -> Any:
        """A list (or tuple) of values."""
        ...

    def make_dict(self, entries: dict[str, Any]) -> Any:
        """A string-keyed dict of values."""
        ...

    def describe(self, value: Any) -> str:
        """What the value is, for error messages (e.g. its type name)."""
        ...


class PythonValues:
    """ValueOps over live Python objects (embedded hosts). No copies are made."""

    def length(self, value: Any) -> int | None:
        """``len(value)`` for anything indexable with a length, except str, bytes and
        mappings; None otherwise."""
        # Strings and mappings are refused: mapping over characters or keys is a classic
        # bug. Anything else with a length and indexing maps (lists, tuples, ranges,
        # numpy arrays); sets and generators do not, as they have no stable order.
        if isinstance(value, str | bytes | bytearray | Mapping):
            return None
        if hasattr(value, "columns") and hasattr(value, "iloc"):
            return None  # a DataFrame: its length counts rows, its [i] picks a column
        if hasattr(value, "__len__") and hasattr(value, "__getitem__"):
            try:
                return len(value)
            except TypeError:  # one with no length after all (a 0-d numpy array)
                return None
        return None

    def item(self, value: Any, index: int) -> Any:
        """``value[index]`` (by position for a pandas Series, whose [i] is a label)."""
        iloc = getattr(value, "iloc", None)
        return value[index] if iloc is None else iloc[index]

    def select(self, value: Any, path: tuple[Step, ...]) -> Any:
        """``value[path[0]][path[1]]...``, an ``At`` step as ``item``."""
        for part in path:
            value = self.item(value, part.index) if isinstance(part, At) else value[part]
        return value

    def make_list(self, items: list[Any], is_tuple: bool) -> Any:
        """The items as a list, or a tuple when ``is_tuple``."""
        return tuple(items) if is_tuple else items

    def make_dict(self, entries: dict[str, Any]) -> Any:
        """The entries themselves (already a dict)."""
        return entries

    def describe(self, value: Any) -> str:
        """The value's type name."""
        return type(value).__name__


PYTHON_VALUES = PythonValues()
