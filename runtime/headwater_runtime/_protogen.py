"""Regenerate the Python code for the wire contract (``make proto``).

Development tool: needs the ``dev`` extra (grpcio-tools). The freshness test runs the
same function into a temporary directory and compares the output with the committed
files, so ``make proto`` and the check can never drift apart.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "proto"
PROTO_PACKAGE_DIR = PROTO_ROOT / "headwater" / "v1"


def proto_files() -> list[Path]:
    """The contract's .proto files, sorted for a stable generator invocation."""
    return sorted(PROTO_PACKAGE_DIR.glob("*.proto"))


def generate(out_dir: Path) -> None:
    """Write ``headwater/v1/*_pb2.py``, ``*_pb2_grpc.py`` and ``*.pyi`` under out_dir."""
    from grpc_tools import protoc  # dev dependency, imported only here

    well_known = resources.files("grpc_tools") / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p.relative_to(PROTO_ROOT)) for p in proto_files()],
    ]
    code = protoc.main(args)
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code}")


def main(argv: list[str]) -> int:
    """``python -m headwater_runtime._protogen OUT_DIR``: generate into OUT_DIR."""
    if len(argv) != 1:
        print("usage: python -m headwater_runtime._protogen OUT_DIR", file=sys.stderr)
        return 2
    generate(Path(argv[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
