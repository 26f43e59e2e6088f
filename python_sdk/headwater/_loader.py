"""Loading flows from files and modules, the way the CLI and workers name them."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from ._flow import Flow


class LoadError(Exception):
    """A file, module or flow could not be loaded; the message says which and why."""


def load_file(path: str) -> ModuleType:
    """Import a Python file under its file stem (so task types read ``stem.func``, the
    same as ``--module stem`` on a worker). Its folder is put on sys.path first.

    A file inside a package (its folder has an ``__init__.py``, and so on up) is
    imported under its dotted name instead, from the folder above the top package:
    ``pkg/jobs.py`` is ``pkg.jobs``, as ``from pkg.jobs import ...`` in a client names
    its tasks, so a worker started with either form runs the tasks the client sends."""
    file = Path(path)
    if file.is_dir():
        raise LoadError(f"{path} is a folder: give a Python file (.py) in it")
    if not file.is_file():
        raise LoadError(f"no such file: {path}")
    if file.suffix != ".py":
        raise LoadError(f"{path} is not a Python file (.py)")
    dotted = _package_name(file.resolve())
    if dotted is not None:
        return _load_in_package(path, *dotted)
    name = file.stem
    _check_name(path, name, file.resolve())
    folder = str(file.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise LoadError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    setattr(module, _LOADED, True)
    previous = sys.modules.get(name)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        if previous is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = previous
        if isinstance(exc, Exception):
            raise LoadError(f"cannot import {path}: {type(exc).__name__}: {exc}") from exc
        raise
    return module


#: Set on the modules ``load_file`` imported: another file of the same name may replace
#: one (a test's, a notebook's), not a module imported otherwise.
_LOADED = "__headwater_loaded__"


def _check_name(path: str, name: str, file: Path) -> None:
    """LoadError for a file whose module name is taken: a module of Python's standard
    library (``random.py``, ``types.py``), or one imported (not by ``load_file``) from
    another file (``grpc.py``). Imported under that name, it replaced the module
    everything else imports (grpc failed in a worker serving ``types.py``: "module
    'types' has no attribute 'TracebackType'")."""
    rename = "rename the file (its tasks' types are named after it)"
    if name in sys.stdlib_module_names:
        raise LoadError(f"{path} is named like the standard library's module {name!r}: {rename}")
    taken = sys.modules.get(name)
    if taken is None or getattr(taken, _LOADED, False):  # (a file loaded here before)
        return
    where = getattr(taken, "__file__", None)
    if where is None or Path(where).resolve() != file:
        raise LoadError(
            f"{path} is named like the module {name!r} already imported "
            f"{f'from {where}' if where else '(built in)'}: {rename}"
        )


def _package_name(file: Path) -> tuple[str, str] | None:
    """(dotted module name, folder to import it from) of a file inside a package, or
    None for a file that is not in one."""
    parts = [] if file.stem == "__init__" else [file.stem]
    folder = file.parent
    while (folder / "__init__.py").is_file() and folder.parent != folder:
        parts.insert(0, folder.name)
        folder = folder.parent
    if folder == file.parent:
        return None
    return ".".join(parts), str(folder)


def _load_in_package(path: str, name: str, root: str) -> ModuleType:
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        return importlib.import_module(name)
    except Exception as exc:
        raise LoadError(f"cannot import {path} (as {name}): {type(exc).__name__}: {exc}") from exc


def load_module(name: str) -> ModuleType:
    """Import a module by dotted name; LoadError if it does not exist."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise LoadError(f"no module named {name!r} (is it on PYTHONPATH?)") from None
        raise


def find_flow(module: ModuleType, name: str | None, origin: str) -> Flow[..., Any]:
    """The flow named ``name`` in a module, or its only flow when no name is given."""
    flows = {attr: obj for attr, obj in vars(module).items() if isinstance(obj, Flow)}
    if name is not None:
        if name in flows:
            return flows[name]
        by_flow_name = [f for f in flows.values() if f.name == name]
        if len(by_flow_name) == 1:
            return by_flow_name[0]
        raise LoadError(
            f"{origin} has no flow {name!r} (flows: {', '.join(sorted(flows)) or 'none'})"
        )
    # Without a name: the one flow the module defines. Another name for it (``main =
    # my_flow``) is the same flow, and a flow imported to be called as a subflow is not
    # the module's own (each made "defines several flows"); only a module that
    # defines none picks from those it imports.
    distinct = list({id(f): f for f in flows.values()}.values())
    own = [f for f in distinct if getattr(f.fn, "__module__", None) == module.__name__]
    candidates = own or distinct
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise LoadError(f"{origin} defines no @flow")
    names = sorted(_name_in(flows, f) for f in candidates)
    raise LoadError(
        f"{origin} defines several flows ({', '.join(names)}); pick one with {origin}:NAME"
    )


def _name_in(flows: dict[str, Flow[..., Any]], wanted: Flow[..., Any]) -> str:
    """The module's name for a flow: the flow's own name when the module uses it."""
    names = [attr for attr, f in flows.items() if f is wanted]
    return wanted.name if wanted.name in names else min(names)


def modules_from_cwd() -> None:
    """Like ``python -m``: find modules in the current directory (the CLI's commands
    that take a module name, a worker's ``--module`` and a flow target alike)."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())


def load_flow(target: str) -> Flow[..., Any]:
    """``path/to/file.py[:FLOW]`` or ``package.module[:FLOW]`` (a module found from the
    current directory too, as ``python -m`` finds it)."""
    location, _, name = target.partition(":")
    if location.endswith(".py") or "/" in location:
        module = load_file(location)
    else:
        modules_from_cwd()
        module = load_module(location)
    return find_flow(module, name or None, location)
