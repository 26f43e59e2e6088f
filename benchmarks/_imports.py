"""``import`` workload: what ``from headwater import flow, task`` costs a new process.

Measured as a user's installed copy runs it: the package's bytecode is compiled first
(into a temporary ``PYTHONPYCACHEPREFIX``, so the checkout is left as it is; pip
compiles it at install time, and a checkout run with PYTHONDONTWRITEBYTECODE=1 would
otherwise compile every module on every import). Then, alternately, a bare
interpreter start (``python -c pass``) and one that imports the embedded API and
checks that neither gRPC nor protobuf came with it; the figure is the smallest import
run minus the smallest bare start (the least disturbed by other load).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
IMPORT = (
    "from headwater import flow, task\n"
    "import sys\n"
    "assert 'grpc' not in sys.modules and 'google.protobuf' not in sys.modules, 'gRPC loaded'\n"
)


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    runs = int(spec["params"]["runs"])
    with tempfile.TemporaryDirectory(prefix="headwater-pyc-") as prefix:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = prefix
        subprocess.run(
            [sys.executable, "-c", _COMPILE, str(ROOT / "python_sdk"), str(ROOT / "runtime")],
            env=env,
            check=True,
        )
        bare: list[float] = []
        imported: list[float] = []
        for _ in range(runs):
            for code, out in (("pass", bare), (IMPORT, imported)):
                start = time.perf_counter()
                subprocess.run([sys.executable, "-c", code], env=env, check=True)
                out.append(time.perf_counter() - start)
    return {
        "system": "import",
        "kind": "import",
        "params": spec["params"],
        "tasks": 0,
        "label": f"min of {runs}",
        "walls": [min(imported) - min(bare)],
        "bare_s": min(bare),
        "import_s": min(imported),
        "compiles": [],
        "check": 0,
        "peak_mb": 0.0,
        "pool": 0,
    }


_COMPILE = (
    "import compileall, sys\nfor d in sys.argv[1:]:\n    compileall.compile_dir(d, quiet=1)\n"
)
__all__ = ["measure"]
