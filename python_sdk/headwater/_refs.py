"""Compile-time references: what task calls return inside a flow function.

Inside a flow, ``extract()`` does not run anything; it returns a TaskRef that stands
for the result. Refs can be passed to other tasks, indexed (``ref["rows"]``), and
returned from the flow. Using one as a real value (``if ref:``, ``for x in ref``) is a
mistake that raises a TypeError saying what to do instead.
"""

from __future__ import annotations

from typing import Any, NoReturn


class Ref:
    """Base of compile-time references."""

    __slots__ = ()

    def _describe(self) -> str:
        raise NotImplementedError

    def _misuse(self, what: str) -> NoReturn:
        raise TypeError(
            f"{self._describe()} is a reference while the flow is being compiled, so it "
            f"cannot be {what}; pass it to a task (or use headwater.case for branching)"
        )

    def __bool__(self) -> bool:
        self._misuse("used as a condition")

    def __iter__(self) -> NoReturn:
        self._misuse("iterated or unpacked (index it, e.g. ref[0], or use task.map)")

    def __len__(self) -> int:
        self._misuse("measured with len()")

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other


class TaskRef(Ref):
    """The (future) result of a task call in a flow, or a part of it.

    Args:
        node_id: the id of the task call's node in the graph.
        mapped: whether the call was ``task.map(...)`` (the result is a list).
        path: the keys and indexes selecting a part of the result (``ref["rows"][0]``).
    """

    __slots__ = ("mapped", "node_id", "path")

    def __init__(self, node_id: str, mapped: bool, path: tuple[str | int, ...] = ()) -> None:
        self.node_id = node_id
        self.mapped = mapped
        self.path = path

    def __getitem__(self, key: str | int) -> TaskRef:
        if not isinstance(key, str | int) or isinstance(key, bool):
            raise TypeError(f"a task result can be indexed by str or int, not {key!r}")
        return TaskRef(self.node_id, self.mapped, (*self.path, key))

    def _describe(self) -> str:
        return f"the result of task {self.node_id!r}"

    def __repr__(self) -> str:
        path = "".join(f"[{p!r}]" for p in self.path)
        return f"<TaskRef {self.node_id}{path}>"


class ParamRef(Ref):
    """A flow parameter.

    Args:
        name: the parameter's name in the flow function's signature.
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def _describe(self) -> str:
        return f"flow parameter {self.name!r}"

    def __repr__(self) -> str:
        return f"<ParamRef {self.name}>"


class unmapped:
    """Mark an argument of ``task.map(...)`` as passed whole to every child.

    Args:
        value: the argument (a list is not iterated over).
    """

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def contains_ref(value: Any, depth: int = 0) -> bool:
    """Whether a value is, or holds in a list/tuple/dict, a compile-time reference."""
    if isinstance(value, Ref):
        return True
    if depth > 50:
        return False
    if isinstance(value, list | tuple | set | frozenset):
        return any(contains_ref(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return any(contains_ref(v, depth + 1) for v in value.values())
    return False
