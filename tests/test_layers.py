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


def _is_id(node: ast.expr) -> bool:
    """An expression that names a run or task run id (``run_id``, ``row.id``, ...)."""
    text = ast.unparse(node)
    return text == "id" or text.endswith((".id", "run_id"))


def _hand_made_task_run_ids(path: Path) -> list[str]:
    """f"{flow_run_id}/{key}" built, or a task run id split on "/", by hand."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr) and len(node.values) == 3:
            left, sep, _ = node.values
            if (
                isinstance(left, ast.FormattedValue)
                and isinstance(sep, ast.Constant)
                and sep.value == "/"
                and _is_id(left.value)
            ):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} builds {ast.unparse(node)}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("split", "rsplit", "partition", "rpartition")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and node.args[0].value == "/"
            and _is_id(node.func.value)
        ):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} splits {ast.unparse(node)}")
    return found


def test_task_run_ids_are_built_and_split_only_by_the_contract() -> None:
    """One definition of the FLOW_RUN_ID/KEY format (headwater.wire: task_run_id,
    split_task_run_id); a second spelling elsewhere drifts from it."""
    ids = ROOT / "python_sdk" / "headwater" / "wire" / "_ids.py"
    offenders = [
        problem
        for folder in SOURCES
        for path in sorted(folder.rglob("*.py"))
        if path != ids and "/v1/" not in str(path)
        for problem in _hand_made_task_run_ids(path)
    ]
    assert not offenders, "use headwater.wire.task_run_id / split_task_run_id:\n" + "\n".join(
        offenders
    )
