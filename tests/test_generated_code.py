"""The committed generated code must be exactly what `make proto` produces."""

from __future__ import annotations

import filecmp
from pathlib import Path

from headwater_runtime._protogen import REPO_ROOT, generate

COMMITTED = REPO_ROOT / "python_sdk" / "headwater" / "v1"


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    generate(tmp_path)
    fresh = tmp_path / "headwater" / "v1"
    generated = sorted(p.name for p in fresh.iterdir())
    committed = sorted(
        p.name for p in COMMITTED.iterdir() if p.name != "__init__.py" and p.is_file()
    )
    assert generated == committed, "run `make proto`: the set of generated files changed"
    stale = [
        name for name in generated if not filecmp.cmp(fresh / name, COMMITTED / name, shallow=False)
    ]
    assert not stale, f"run `make proto`: stale generated files {stale}"
