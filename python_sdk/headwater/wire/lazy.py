"""Lazy re-exports for package ``__init__`` modules (the ``attach_stub`` pattern of
Scientific Python's SPEC 1).

A package lists its public names once, in its ``__init__.pyi`` stub, as
``from ._module import Name as Name``: type checkers read that stub, and at run time
``attach_stub`` parses the same imports so that each name is imported from its
private module on first access. Importing a package therefore costs only what is
used: ``import headwater.v1.worker_pb2`` does not load the SDK, and an embedded run
does not load gRPC or protobuf.
"""

from __future__ import annotations

import ast
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def stub_exports(init_file: str) -> dict[str, tuple[str, str]]:
    """``{name: (module, attribute)}`` for every ``from module import attribute as
    name`` in the package's ``__init__.pyi`` next to ``init_file`` (relative or
    absolute; ``from . import _mod as name`` exports the submodule: attribute "")."""
    stub = Path(init_file).with_suffix(".pyi")
    tree = ast.parse(stub.read_text(encoding="utf-8"), str(stub))
    where: dict[str, tuple[str, str]] = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            for alias in node.names:
                if node.module is None:  # from . import _submodule as name
                    where[alias.asname or alias.name] = (base + alias.name, "")
                else:
                    where[alias.asname or alias.name] = (base, alias.name)
    return where


def attach_stub(
    package: str, init_file: str
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``__getattr__``, ``__dir__`` and ``__all__`` for ``package``, from its stub."""
    where = stub_exports(init_file)

    def __getattr__(name: str) -> Any:
        found = where.get(name)
        if found is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, attribute = found
        imported = importlib.import_module(module, package)
        value = getattr(imported, attribute) if attribute else imported
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__, sorted(where)
