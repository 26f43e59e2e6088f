"""Layering beyond what import-linter's contracts can say (pyproject.toml
[tool.importlinter]): the contract package is used through its public names only."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "python_sdk" / "headwater", ROOT / "runtime", ROOT / "benchmarks"]


def _private_wire_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            if name.startswith("headwater.wire._"):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
    return found


def test_only_the_contract_package_imports_its_private_modules() -> None:
    wire = ROOT / "python_sdk" / "headwater" / "wire"
    offenders = [
        problem
        for folder in SOURCES
        for path in sorted(folder.rglob("*.py"))
        if wire not in path.parents and "/v1/" not in str(path)
        for problem in _private_wire_imports(path)
    ]
    assert not offenders, "use headwater.wire's public names:\n" + "\n".join(offenders)
