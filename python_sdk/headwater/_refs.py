"""Compile-time references: what task calls (and, at first, parameters) are in a flow body.

Inside a flow, ``extract()`` does not run anything; it returns a TaskRef that stands
for the result. Refs can be passed to other tasks (alone or inside lists, tuples and
dicts), indexed (``ref["rows"]``, ``ref[0]``), given to ``wait_for``, ``case`` and
``merge``, and returned from the flow. Anything that needs the value itself (text,
truth, length, iteration, numbers, comparison, hashing, attributes) raises a
FlowDefinitionError naming the task, the flow line and what to do instead: the value
does not exist until the task has run, and the text of a reference must never reach a
task.

A ParamRef stands for a flow parameter during the *symbolic* compile (docs/flows.md):
any concrete use of it raises the private ``NeedsValues`` signal, and the compiler
builds the graph again with the run's actual parameter values.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

from ._errors import FlowDefinitionError

if TYPE_CHECKING:
    from ._compiler import _Context

_SDK_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_STDLIB_DIR = os.path.abspath(sysconfig.get_paths()["stdlib"]) + os.sep


class NeedsValues(BaseException):
    """Private signal: the flow body used a parameter as a value.

    A BaseException so that a flow body's ``except Exception`` does not swallow it; the
    compiler also records the use on its context, so a swallowed signal still leads to
    a compile with values.
    """


class RefusedInLogging(BaseException):
    """Private signal: a task result was given to ``logging`` in the flow body (its
    message is formatted by a handler). A BaseException so that the handler, which
    catches every Exception to print "--- Logging error ---" with a traceback and go
    on, lets it through: the compiler then raises the refusal it recorded
    (``_Context.misuse``) and nothing else is printed."""


def _in_logging() -> bool:
    """Whether the use being refused happens while ``logging`` formats a record's
    message (``LogRecord.getMessage``: ``msg % args`` or ``str(msg)``)."""
    logging = sys.modules.get("logging")
    if logging is None:
        return False
    formatting = logging.LogRecord.getMessage.__code__
    frame: FrameType | None = sys._getframe(2)
    for _ in range(4):  # (_misuse <- the dunder method <- [C] <- getMessage)
        if frame is None:
            return False
        if frame.f_code is formatting:
            return True
        frame = frame.f_back
    return False


def _context() -> _Context | None:
    from ._compiler import current_context

    return current_context()


def _show(path: str, line: int) -> str:
    cell = _notebook_cell(path)
    if cell:  # (a notebook cell's file is a temporary name nobody knows: IPython's way)
        return f"{cell}, line {line}"
    rel = os.path.relpath(path) if os.path.isabs(path) else path
    return f"{path if rel.startswith('..') else rel}:{line}"


def _notebook_cell(path: str) -> str:
    """``Cell In[7]`` for the file IPython compiled cell 7 into ("" elsewhere)."""
    ipython = sys.modules.get("IPython")
    shell = getattr(ipython, "get_ipython", lambda: None)() if ipython is not None else None
    cells = getattr(getattr(shell, "compile", None), "_filename_map", None)
    number = cells.get(path) if isinstance(cells, dict) else None
    return f"Cell In[{number}]" if isinstance(number, int) else ""


def flow_location(ctx: _Context | None, skip: int = 2) -> str:
    """``file:line`` of the flow body line running now, and of the user's helper
    function when the use happened inside one (``... (in helper at file:line)``)."""
    frame: FrameType | None = sys._getframe(skip)
    innermost: FrameType | None = None
    body: FrameType | None = None
    while frame is not None:
        file = os.path.abspath(frame.f_code.co_filename)
        if ctx is not None and frame.f_code is ctx.code:
            body = frame
            break
        if innermost is None and not file.startswith((_SDK_DIR, _STDLIB_DIR)):
            innermost = frame
        frame = frame.f_back
    where = body or innermost
    if where is None:
        return "an unknown line"
    text = _show(where.f_code.co_filename, where.f_lineno)
    if body is not None and innermost is not None:
        text += (
            f" (in {innermost.f_code.co_name}() at "
            f"{_show(innermost.f_code.co_filename, innermost.f_lineno)})"
        )
    return text


# What each concrete use is called in messages, and what to do instead.
_TEXT = (
    "turned into text (str(), repr(), format() or an f-string)",
    "pass it to a task and build the text inside that task",
)
_BYTES = ("turned into bytes (bytes())", "pass it to a task and build the bytes inside that task")
_UNPACK = (
    "asked for its keys (`**ref` or `ref.keys()`)",
    "pass it to a task whole, or index the parts you need (ref['key'])",
)
_BOOL = (
    "used as a condition (if/while/and/or/not)",
    "branch at run time with `with case(ref, value):` blocks and merge(), or decide inside a task",
)
_SIZE = (
    "measured with len()",
    "compute the length inside a task, or process each element with task.map(ref)",
)
_ITER = (
    "iterated or unpacked",
    "process each element with task.map(ref), index one part (ref[0], ref['key']), "
    "or loop inside a task",
)
_NUMBER = ("converted to a number or an index", "pass it to a task that does the arithmetic")
_MATH = ("used in arithmetic", "pass it to a task that does the arithmetic")
_COMPARE = (
    "compared",
    "compare inside a task, or branch at run time with `with case(ref, value):`",
)
_HASH = (
    "hashed (a dict key or a set member)",
    "use task results as dict values or list items, or build the dict inside a task",
)
_CHANGE = (
    "changed in place (an item or an attribute set or deleted)",
    "pass it to a task that returns the changed value",
)
_ATTR = (
    "read as an attribute",
    "index it (ref['key']) or read the attribute inside a task",
)
_CALL = ("called", "pass it to a task that calls it")


def _binary(use: tuple[str, str]) -> Any:
    def method(self: Ref, _other: Any) -> NoReturn:
        self._misuse(use)

    return method


def _unary(use: tuple[str, str]) -> Any:
    def method(self: Ref, *_args: Any) -> NoReturn:
        self._misuse(use)

    return method


class Ref:
    """Base of compile-time references: every concrete use goes through ``_misuse``."""

    __slots__ = ()

    def _misuse(self, use: tuple[str, str]) -> NoReturn:
        raise NotImplementedError

    __bool__ = _unary(_BOOL)
    __len__ = _unary(_SIZE)
    __iter__ = _unary(_ITER)
    __reversed__ = _unary(_ITER)
    __contains__ = _binary(_ITER)
    __str__ = _unary(_TEXT)
    __format__ = _binary(_TEXT)
    __bytes__ = _unary(_BYTES)
    __fspath__ = _unary(_TEXT)
    __index__ = _unary(_NUMBER)
    __int__ = _unary(_NUMBER)
    __float__ = _unary(_NUMBER)
    __complex__ = _unary(_NUMBER)
    __round__ = _unary(_NUMBER)
    __trunc__ = _unary(_NUMBER)
    __floor__ = _unary(_NUMBER)
    __ceil__ = _unary(_NUMBER)
    __hash__ = _unary(_HASH)
    __eq__ = _binary(_COMPARE)
    __ne__ = _binary(_COMPARE)
    __lt__ = _binary(_COMPARE)
    __le__ = _binary(_COMPARE)
    __gt__ = _binary(_COMPARE)
    __ge__ = _binary(_COMPARE)
    __neg__ = _unary(_MATH)
    __pos__ = _unary(_MATH)
    __abs__ = _unary(_MATH)
    __invert__ = _unary(_MATH)
    __call__ = _unary(_CALL)
    __setitem__ = _unary(_CHANGE)
    __delitem__ = _binary(_CHANGE)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):  # (its own slots)
            object.__setattr__(self, name, value)
        else:
            self._misuse(_CHANGE)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)  # protocol probes (copy, pickle, numpy) see "none"
        # ``{**ref}`` and ``f(**ref)`` ask for ``keys`` (it said "read as an attribute")
        self._misuse(_UNPACK if name == "keys" else _ATTR)


_OPERATORS = ("add", "sub", "mul", "matmul", "truediv", "floordiv", "mod", "divmod", "pow")
for _op in (*_OPERATORS, "lshift", "rshift", "and", "xor", "or"):
    for _name in (f"__{_op}__", f"__r{_op}__", f"__i{_op}__"):
        setattr(Ref, _name, _binary(_MATH))


class TaskRef(Ref):
    """The (future) result of a task call in a flow, or a part of it.

    ``task.map(...)`` returns one standing for the list of the children's results.

    Args:
        node_id: the id of the task call's node in the graph.
        mapped: whether the call was ``task.map(...)`` (the result is a list).
        path: the keys and indexes selecting a part of the result (``ref["rows"][0]``).
    """

    __slots__ = ("_mapped", "_node_id", "_path")

    def __init__(self, node_id: str, mapped: bool, path: tuple[str | int, ...] = ()) -> None:
        self._node_id = node_id
        self._mapped = mapped
        self._path = path

    def __getitem__(self, key: str | int) -> TaskRef:
        if not isinstance(key, str | int) or isinstance(key, bool):
            kind = "a task result" if isinstance(key, Ref) else repr(key)
            raise FlowDefinitionError(
                f"{self._describe()} can be indexed by a str or an int known while the flow "
                f"is built, not by {kind}; select the part inside a task"
            )
        return TaskRef(self._node_id, self._mapped, (*self._path, key))

    def _describe(self) -> str:
        part = "".join(f"[{p!r}]" for p in self._path)
        if self._mapped and not self._path:
            return f"the results of mapped task {self._node_id!r}"
        return f"the result of task {self._node_id!r}" + (f" (part {part})" if part else "")

    def _misuse(self, use: tuple[str, str]) -> NoReturn:
        ctx = _context()
        flow = f"flow {ctx.flow_name!r}, " if ctx is not None else ""
        what, fix = use
        error = FlowDefinitionError(
            f"{flow}{flow_location(ctx, 3)}: {self._describe()} cannot be {what} while the "
            f"flow is being built: the task has not run yet. Instead, {fix}"
        )
        if ctx is not None and ctx.misuse is None:
            ctx.misuse = error  # (raised after the body even if the body catches it)
        if ctx is not None and _in_logging():
            raise RefusedInLogging from None
        raise error

    def __repr__(self) -> str:
        if _context() is not None:  # f"{ref!r}" would hand a task the reference's text
            self._misuse(_TEXT)
        part = "".join(f"[{p!r}]" for p in self._path)
        return f"<TaskRef {self._node_id}{part}>"


class ParamRef(Ref):
    """A flow parameter during the symbolic compile: any concrete use is a signal.

    Args:
        name: the parameter's name in the flow function's signature.
    """

    __slots__ = ("_param",)

    def __init__(self, name: str) -> None:
        self._param = name

    def _misuse(self, use: tuple[str, str]) -> NoReturn:
        ctx = _context()
        if ctx is None or not ctx.symbolic:
            raise FlowDefinitionError(
                f"flow parameter {self._param!r} was kept from a flow body and {use[0]} "
                "later; use the parameter only inside the flow function"
            )
        if ctx.value_use is None:
            ctx.value_use = (self._param, use[0], flow_location(ctx, 3))
        raise NeedsValues(self._param)

    def __repr__(self) -> str:
        self._misuse(_TEXT)

    def __getitem__(self, key: Any) -> NoReturn:
        self._misuse(("indexed", ""))

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        # isinstance(param, X) on a parameter is a concrete use too.
        ctx = _context()
        if ctx is not None and ctx.symbolic:
            self._misuse(("inspected with isinstance()", ""))
        return ParamRef

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        self._misuse(("copied or pickled", ""))


class unmapped:
    """Mark an argument of ``task.map(...)`` as passed whole to every child.

    Args:
        value: the argument (a list is not iterated over).
    """

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def is_ref(value: Any) -> bool:
    """Whether a value is a compile-time reference (never triggers a ParamRef signal)."""
    return isinstance(value, Ref)


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
