"""Run a module as on a bare ``pip install headwater`` (no extras installed).

``python tests/bare_python.py MODULE ARGS...`` makes every package that only the
``server``, ``dask``, ``otel`` and ``postgres`` extras bring fail to import (or only
those named in ``HW_BARE_BLOCK``, comma-separated), then runs MODULE as ``__main__``
(like ``python -m``). Tests use it to prove the bare install is enough
to run flows embedded, submit them to a server and run a Python worker.
"""

from __future__ import annotations

import importlib.abc
import os
import runpy
import sys

#: Top-level packages that come only with an extra.
EXTRAS_ONLY = (
    "dask",
    "distributed",
    "opentelemetry",
    "croniter",
    "grpc_health",
    "grpc_reflection",
    "psycopg",
    "psycopg_pool",
)
BLOCKED = (
    tuple(os.environ["HW_BARE_BLOCK"].split(",")) if "HW_BARE_BLOCK" in os.environ else EXTRAS_ONLY
)


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: object, target: object = None) -> None:
        if fullname.split(".", 1)[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {fullname!r} (bare install)", name=fullname)
        return None


if __name__ == "__main__":
    sys.meta_path.insert(0, _Blocker())
    module = sys.argv[1]
    sys.argv = [module, *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
