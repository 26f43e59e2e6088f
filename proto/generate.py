"""Generate the Python code of the wire contract: ``make proto``.

    .venv-oldest/bin/python proto/generate.py OUT_DIR

writes ``OUT_DIR/headwater/v1/*_pb2.py``, ``*_pb2.pyi``, ``*_pb2_grpc.py`` and
``*_pb2_grpc.pyi`` from ``proto/headwater/v1/*.proto``.

A development tool, not part of any package: it runs in the pinned oldest-versions venv
(``requirements/oldest.txt``), never in the main one. The generator's version decides
which runtimes the generated code accepts: grpcio-tools 1.62.3 bundles protoc 25, whose
``_pb2.py`` and ``_pb2_grpc.py`` carry no runtime version check, so they load with every
protobuf and grpcio from the floors in pyproject.toml up to the newest. mypy-protobuf
3.6.0 (the newest release that runs on protobuf 4) writes the typed ``.pyi`` stubs,
including the gRPC stubs and servicers. ``tests/test_generated_code.py`` runs this
script into a temporary directory and compares the result byte for byte.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_PACKAGE_DIR = PROTO_ROOT / "headwater" / "v1"


def proto_files() -> list[Path]:
    """The contract's .proto files, sorted for a stable generator invocation."""
    return sorted(PROTO_PACKAGE_DIR.glob("*.proto"))


def generate(out_dir: Path) -> None:
    """Write the generated modules and their stubs under ``out_dir/headwater/v1``."""
    from grpc_tools import protoc  # only in the oldest-versions venv

    bin_dir = Path(sys.executable).parent
    plugins = {name: bin_dir / f"protoc-gen-{name}" for name in ("mypy", "mypy_grpc")}
    missing = [str(path) for path in plugins.values() if not path.exists()]
    if missing:
        raise SystemExit(f"mypy-protobuf is not installed here ({', '.join(missing)})")
    well_known = resources.files("grpc_tools") / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        *[f"--plugin=protoc-gen-{name}={path}" for name, path in plugins.items()],
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out=quiet:{out_dir}",
        f"--mypy_grpc_out=quiet:{out_dir}",
        *[str(p.relative_to(PROTO_ROOT)) for p in proto_files()],
    ]
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python proto/generate.py OUT_DIR", file=sys.stderr)
        return 2
    generate(Path(argv[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
