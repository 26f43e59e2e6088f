"""Build the HTML API reference from the docstrings: ``make docs``.

The tool is pdoc rather than MkDocs + mkdocstrings: pdoc documents the modules as
imported, so the lazy packages' ``__all__`` (computed at run time from their
``__init__.pyi`` by ``headwater.wire.lazy.attach_stub``) is exactly what it shows,
whereas mkdocstrings reads the source statically and would have to be taught that
pattern. It is also one small dependency (Jinja2, markdown2, Pygments) with no
configuration file or theme to keep, and it builds in seconds.

The build fails (exit 1) on any warning, and on any public name (a package's
``__all__``) that is missing from its package's page.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import warnings
from pathlib import Path

# The user-facing API: the SDK, the contract helpers, and the runtime packages people
# embed or extend. Private modules (``_*.py``) are documented through these pages.
MODULES = [
    "headwater",
    "headwater.wire",
    "headwater.wire.lazy",
    "headwater_runtime.engine",
    "headwater_runtime.embedded",
    "headwater_runtime.execution",
    "headwater_runtime.store",
    "headwater_runtime.tracing",
    "headwater_runtime.tracing.names",
    "headwater_runtime.dask",
    "headwater_runtime.server",
]

# pdoc cannot resolve postponed annotations in a NamedTuple's constructor, whose
# generated ``__new__`` has no module globals (pdoc issue #765, open): it warns, and
# shows the annotation as written. Only that warning is tolerated, and only for
# NamedTuple classes.
_NAMEDTUPLE_ANNOTATION = re.compile(r"Error parsing type annotation .* for ([\w.]+)\.__init__\. ")


def public_names(module_name: str) -> list[str]:
    """The module's ``__all__``, with every lazily exported name imported.

    pdoc looks names up in the module's ``__dict__``; a lazy package puts a name there
    only on first access, so each one is accessed here first.
    """
    module = importlib.import_module(module_name)
    names: list[str] = list(getattr(module, "__all__", []))
    for name in names:
        getattr(module, name)
    return names


def show_mixed_in_methods() -> None:
    """Put ``Client``'s operations methods on its page.

    They come from a mixin in a private module (``headwater._client_ops``), and pdoc
    leaves out inherited members of classes it does not document: ``set_limit``,
    ``list_workers``, the webhooks... were missing from the reference. Copied onto
    ``Client`` in this process only (the docs build), they are documented as its own.
    """
    from headwater import Client
    from headwater._client_ops import OperationsClient

    for name, member in vars(OperationsClient).items():
        if not name.startswith("_") and name not in vars(Client):
            setattr(Client, name, member)


def _is_namedtuple_warning(message: str) -> bool:
    found = _NAMEDTUPLE_ANNOTATION.search(message)
    if found is None:
        return False
    module_name, _, class_name = found.group(1).rpartition(".")
    cls = getattr(sys.modules.get(module_name), class_name, None)
    return isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields")


def missing_from_pages(output: Path, exported: dict[str, list[str]]) -> list[str]:
    """``module.name`` for every exported name that has no entry on its module's page."""
    missing = []
    for module_name, names in exported.items():
        page = (output / (module_name.replace(".", "/") + ".html")).read_text(encoding="utf-8")
        missing += [f"{module_name}.{n}" for n in names if f'id="{n}"' not in page]
    return missing


def build(output: Path) -> list[str]:
    """Write the reference into ``output``; return the problems (empty when it is good)."""
    import pdoc
    import pdoc.render

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exported = {name: public_names(name) for name in MODULES}
        show_mixed_in_methods()
        pdoc.render.configure(docformat="google", show_source=False)
        pdoc.pdoc(*MODULES, output_directory=output)
    problems = [
        f"warning: {w.message} ({w.filename}:{w.lineno})"
        for w in caught
        if not _is_namedtuple_warning(str(w.message))
    ]
    problems += [f"not in the reference: {n}" for n in missing_from_pages(output, exported)]
    return problems


def main(argv: list[str] | None = None) -> int:
    """Command line: build into OUTPUT, print any problem, exit 1 if there was one."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="directory to write the HTML into")
    args = parser.parse_args(argv)
    problems = build(args.output)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"API reference: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"API reference: {args.output / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
