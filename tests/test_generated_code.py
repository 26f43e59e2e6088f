"""The committed generated code must be exactly what `make proto` produces."""

from __future__ import annotations

import filecmp
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
COMMITTED = REPO_ROOT / "python_sdk" / "headwater" / "v1"
GENERATOR = REPO_ROOT / "proto" / "generate.py"
# The pinned generator lives in the oldest-versions venv (requirements/oldest.txt).
GENERATOR_PYTHON = REPO_ROOT / ".venv-oldest" / "bin" / "python"


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    assert GENERATOR_PYTHON.exists(), "no generator venv: run `make .venv-oldest/.installed`"
    done = subprocess.run(
        [str(GENERATOR_PYTHON), str(GENERATOR), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    fresh = tmp_path / "headwater" / "v1"
    generated = sorted(p.name for p in fresh.iterdir())
    committed = sorted(
        p.name for p in COMMITTED.iterdir() if p.name != "__init__.py" and p.is_file()
    )
    assert generated == committed, "run `make proto`: the set of generated files changed"
    assert any(name.endswith("_pb2_grpc.pyi") for name in generated), "no typed gRPC stubs"
    stale = [
        name for name in generated if not filecmp.cmp(fresh / name, COMMITTED / name, shallow=False)
    ]
    assert not stale, f"run `make proto`: stale generated files {stale}"
