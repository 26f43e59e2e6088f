"""Every public definition in hand-written code has a docstring (the API reference is
generated from them: docs/build_api.py).

Hand-written code is every module under python_sdk/headwater except the generated
headwater.v1, and every module under runtime/headwater_runtime. Public means: a module;
a module-level function or class whose name does not start with "_" (in private
``_module.py`` files too: that is where the public names live); a method, property or
nested class of such a class whose name does not start with "_"; and an ``__init__``
that takes arguments when its class's docstring has no ``Args:`` section. ``@overload``
stubs and property setters are skipped (the implementation and the getter carry the
docstring).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "python_sdk" / "headwater", ROOT / "runtime" / "headwater_runtime"]
GENERATED = ROOT / "python_sdk" / "headwater" / "v1"

Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
SKIPPED_DECORATORS = {"overload", "setter", "deleter"}


def hand_written_modules() -> list[Path]:
    """Every hand-written .py file of the SDK and the runtime."""
    return sorted(
        path
        for source in SOURCES
        for path in source.rglob("*.py")
        if not path.is_relative_to(GENERATED)
    )


def _definitions(body: list[ast.stmt]) -> Iterator[Definition]:
    """Definitions in a body, including those under ``if``/``try``/``with`` (e.g.
    ``if TYPE_CHECKING:``), but not those nested in functions."""
    for node in body:
        if isinstance(node, Definition):
            yield node
        elif isinstance(node, ast.If):
            yield from _definitions(node.body)
            yield from _definitions(node.orelse)
        elif isinstance(node, ast.Try):
            for handler in node.handlers:
                yield from _definitions(handler.body)
            yield from _definitions(node.body + node.orelse + node.finalbody)
        elif isinstance(node, ast.With):
            yield from _definitions(node.body)


def _skipped(node: Definition) -> bool:
    for decorator in node.decorator_list:
        name = decorator.attr if isinstance(decorator, ast.Attribute) else None
        if isinstance(decorator, ast.Name):
            name = decorator.id
        if name in SKIPPED_DECORATORS:
            return True
    return False


def _init_needs_docstring(init: ast.FunctionDef | ast.AsyncFunctionDef, cls: ast.ClassDef) -> bool:
    arguments = init.args
    takes_arguments = bool(
        arguments.args[1:] or arguments.kwonlyargs or arguments.vararg or arguments.kwarg
    )
    return takes_arguments and "Args:" not in (ast.get_docstring(cls) or "")


def _class_members(cls: ast.ClassDef, qualname: str) -> Iterator[tuple[Definition, str]]:
    for node in _definitions(cls.body):
        if _skipped(node):
            continue
        name = f"{qualname}.{node.name}"
        if node.name == "__init__" and not isinstance(node, ast.ClassDef):
            if _init_needs_docstring(node, cls):
                yield node, name
        elif not node.name.startswith("_"):
            yield node, name
            if isinstance(node, ast.ClassDef):
                yield from _class_members(node, name)


def public_definitions(tree: ast.Module) -> Iterator[tuple[Definition, str]]:
    """``(node, qualified name)`` for every definition that needs a docstring."""
    for node in _definitions(tree.body):
        if node.name.startswith("_") or _skipped(node):
            continue
        yield node, node.name
        if isinstance(node, ast.ClassDef):
            yield from _class_members(node, node.name)


def undocumented(source: str, filename: str) -> list[str]:
    """``file:line name`` for the module and every public definition without a docstring."""
    tree = ast.parse(source, filename)
    missing = [] if ast.get_docstring(tree) else [f"{filename}:1 (module docstring)"]
    missing += [
        f"{filename}:{node.lineno} {name}"
        for node, name in public_definitions(tree)
        if not ast.get_docstring(node)
    ]
    return missing


def test_every_public_definition_has_a_docstring() -> None:
    missing: list[str] = []
    for path in hand_written_modules():
        missing += undocumented(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    listing = "\n".join(missing)
    assert not missing, f"{len(missing)} public definition(s) without a docstring:\n{listing}"


def test_the_walk_covers_the_sdk_the_contract_and_the_runtime() -> None:
    relative = {path.relative_to(ROOT).as_posix() for path in hand_written_modules()}
    assert "python_sdk/headwater/_client.py" in relative
    assert "python_sdk/headwater/wire/_graph.py" in relative
    assert "runtime/headwater_runtime/engine/_machine.py" in relative
    assert not any(path.startswith("python_sdk/headwater/v1/") for path in relative)


SAMPLE = '''
"""A module."""
from typing import overload

def documented() -> None:
    """Yes."""

def bare() -> None:
    pass

def _private() -> None:
    pass

@overload
def over(x: int) -> int: ...
def over(x: object) -> object:
    """The implementation."""
    return x

if True:
    class Guarded:
        pass

class Thing:
    """A thing."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __repr__(self) -> str:
        return "Thing"

    def method(self) -> None:
        pass

    @property
    def value(self) -> int:
        return 1

    @value.setter
    def value(self, new: int) -> None:
        pass

    async def stream(self) -> None:
        """Documented."""

    class Inner:
        def deep(self) -> None:
            pass

class Described:
    """Described.

    Args:
        size: how big.
    """

    def __init__(self, size: int) -> None:
        self.size = size

class _Hidden:
    def method(self) -> None:
        pass
'''


def test_the_check_reports_each_missing_docstring_by_line() -> None:
    assert undocumented(SAMPLE, "sample.py") == [
        "sample.py:8 bare",
        "sample.py:21 Guarded",
        "sample.py:27 Thing.__init__",
        "sample.py:33 Thing.method",
        "sample.py:37 Thing.value",
        "sample.py:47 Thing.Inner",
        "sample.py:48 Thing.Inner.deep",
    ]


def test_a_module_without_a_docstring_is_reported() -> None:
    assert undocumented("def f() -> None:\n    '''Yes.'''\n", "bare.py") == [
        "bare.py:1 (module docstring)"
    ]
