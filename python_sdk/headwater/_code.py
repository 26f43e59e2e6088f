"""The code of a task (or a flow) and its digest: how a server tells stale workers apart.

A graph records, for every task, the digest of the code the SDK that built it had; a
worker reports the digests of the code it loaded; the server gives a task only to
workers whose digest for it is the same (docs/flows.md, "No stale code").

"The code" of a function is:

- its source text, from its first decorator line to its last line (nested functions,
  lambdas and comprehensions included), as the file read when the function was
  defined: a file edited after the import does not change the digest of the loaded
  code, which is the point;
- the same for the plain functions of its own module that it calls by name
  (recursively), so that editing a helper counts as editing the task;
- the values of the module-level constants and closure variables it reads (None,
  bools, numbers, strings, bytes, and tuples or frozensets of them), so ``RATE = 1.5``
  next to the task is part of it.

The digest is worked out on first use and again whenever one of the names it read
names another object (``RATE = 2.0`` run in a later notebook cell, a helper defined
again): a digest taken once for good kept an edited helper's cached results.

Not part of it: other modules and libraries, classes, data files, the options of the
decorator beyond its source line. Where no source exists (a function typed into a
REPL), the bytecode stands in, which differs between Python versions. ``code_version``
replaces all of this with a name the author chooses (``"v:" + code_version``): the code
then counts as unchanged as long as the name is.
"""

from __future__ import annotations

import inspect
import linecache
import marshal
import types
from collections.abc import Callable, Sequence
from typing import Any

#: Hex digits kept of the SHA-256 (an identity, not a security measure).
DIGEST_LENGTH = 16
#: Prefix of a digest given by the author (``@task(code_version=...)``).
VERSION_PREFIX = "v:"

_CONSTANT_TYPES = (type(None), bool, int, float, complex, str, bytes)


class SourceSnapshot:
    """The lines of a function's file as they were when the function was defined.

    Taken when ``@task``/``@flow`` runs (the module is being imported); the digest is
    computed from it later, on first use, when every helper of the module exists.

    Args:
        fn: the function.
    """

    __slots__ = ("_digest", "_reads", "code", "filename", "fn", "lines")

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = inspect.unwrap(fn)
        code = getattr(self.fn, "__code__", None)
        self.code: types.CodeType | None = code if isinstance(code, types.CodeType) else None
        self.filename = self.code.co_filename if self.code is not None else ""
        self.lines: Sequence[str] = ()
        if self.filename and not self.filename.startswith("<"):
            linecache.checkcache(self.filename)  # a re-imported, edited module: reread it
            # getlines returns the cached list; linecache replaces (never edits) it when
            # it rereads the file, so keeping it keeps this moment's text.
            self.lines = linecache.getlines(self.filename, getattr(self.fn, "__globals__", None))
        self._digest = ""
        self._reads: list[_Read] = []

    def digest(self) -> str:
        """The function's code digest ("" for a callable without Python code); the
        last one again while every name it read still names the same object."""
        if self.code is None:
            return ""
        if self._digest and all(read.same() for read in self._reads):
            return self._digest
        import hashlib  # on first digest, not at import: ~4 ms of OpenSSL (issue 18)

        h = hashlib.sha256()
        reads: list[_Read] = []
        _add_function(h, self.fn, self.code, self.lines, set(), reads)
        self._digest, self._reads = h.hexdigest()[:DIGEST_LENGTH], reads
        return self._digest


_MISSING = object()
#: Seen: an object the digest does not depend on (neither a constant nor a function of
#: the module): only that it stays such an object matters, and it is not held on to
#: (a large DataFrame a task reads by name stays collectable when the name moves on).
_OTHER = object()


def _counts(value: Any, module: str | None) -> bool:
    """Whether a digest depends on this value of a name it read."""
    if isinstance(value, types.FunctionType):
        return value.__module__ == module
    return _constant(value)


class _Read:
    """One name a digest read: a module global, a closure cell or a function's code,
    and what it named then (``same()``: it still names that, for the digest)."""

    __slots__ = ("key", "module", "place", "seen")

    def __init__(
        self, place: Any, key: str, value: Any, module: str | None = None, exact: bool = False
    ) -> None:
        self.place, self.key, self.module = place, key, module
        exact = exact or value is _MISSING or _counts(value, module)
        self.seen = value if exact else _OTHER

    def same(self) -> bool:
        place, key = self.place, self.key
        if key == "":  # a closure cell
            try:
                now = place.cell_contents
            except ValueError:
                now = _MISSING
        elif isinstance(place, dict):
            now = place.get(key, _MISSING)
        else:
            now = getattr(place, key, _MISSING)
        if self.seen is _OTHER:
            return now is not _MISSING and not _counts(now, self.module)
        return now is self.seen


def code_digest(fn: Callable[..., Any], code_version: str = "") -> str:
    """The digest of a function's code now (see the module docstring)."""
    if code_version:
        return VERSION_PREFIX + code_version
    return SourceSnapshot(fn).digest()


def _last_line(code: types.CodeType) -> int:
    last = code.co_firstlineno
    for _, _, line in code.co_lines():
        if line is not None and line > last:
            last = line
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            last = max(last, _last_line(const))
    return last


def _names(code: types.CodeType, out: dict[str, None]) -> dict[str, None]:
    for name in code.co_names:
        out[name] = None
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _names(const, out)
    return out


def _constant(value: Any, depth: int = 0) -> bool:
    if isinstance(value, _CONSTANT_TYPES):
        return True
    if isinstance(value, tuple | frozenset) and depth < 3 and len(value) <= 1000:
        return all(_constant(v, depth + 1) for v in value)
    return False


def _add_function(
    h: Any,
    fn: Any,
    code: types.CodeType,
    lines: Sequence[str],
    seen: set[types.CodeType],
    reads: list[_Read],
) -> None:
    seen.add(code)
    # (%autoreload puts the edited code into the function objects it has)
    reads.append(_Read(fn, "__code__", getattr(fn, "__code__", _MISSING), exact=True))
    first, last = code.co_firstlineno, _last_line(code)
    source = lines[first - 1 : last] if lines and last <= len(lines) else ()
    if source:
        h.update(b"source\0" + "".join(source).encode())
    else:
        h.update(b"bytecode\0" + marshal.dumps(code.replace(co_filename="", co_name="")))
    module_globals: dict[str, Any] = getattr(fn, "__globals__", {})
    module = getattr(fn, "__module__", None)
    for name in _names(code, {}):
        value = module_globals.get(name, _MISSING)
        reads.append(_Read(module_globals, name, value, module))
        if value is _MISSING:
            continue
        if _constant(value):
            h.update(f"global {name}={value!r}\n".encode())
        elif (
            isinstance(value, types.FunctionType)
            and value.__module__ == module
            and value.__code__ not in seen
        ):
            h.update(f"calls {name}\n".encode())
            same_file = value.__code__.co_filename == code.co_filename
            helper_lines = lines if same_file else linecache.getlines(value.__code__.co_filename)
            _add_function(h, value, value.__code__, helper_lines, seen, reads)
    for name, cell in zip(code.co_freevars, getattr(fn, "__closure__", None) or (), strict=False):
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            reads.append(_Read(cell, "", _MISSING))
            continue
        reads.append(_Read(cell, "", value))
        if _constant(value):
            h.update(f"closure {name}={value!r}\n".encode())


def defined_in_a_class(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` is a function written in a class body (its qualified name is
    ``Class.method``), not a bound method."""
    qualname = getattr(fn, "__qualname__", "")
    return (
        inspect.isfunction(fn)
        and "." in qualname
        and not qualname.endswith(">." + getattr(fn, "__name__", ""))
    )


__all__ = ["DIGEST_LENGTH", "VERSION_PREFIX", "SourceSnapshot", "code_digest", "defined_in_a_class"]
