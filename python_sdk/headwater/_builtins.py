"""Built-in tasks the SDK inserts for conditionals. Every Python worker registers
them, so flows using ``case``/``merge`` run on any server with a Python worker."""

from __future__ import annotations

from typing import Any

from headwater_runtime.execution import Skip

from ._task import task


@task(name="case", task_type="headwater.case")
def case_check(value: Any, expected: Any) -> bool:
    """Pass when the value equals the expected one; otherwise skip the branch."""
    if value != expected:
        raise Skip(f"case: {value!r} != {expected!r}")
    return True


@task(name="merge", task_type="headwater.merge", trigger="any_successful")
def merge_task(branches: list[Any]) -> Any:
    """The first branch result that is not None (skipped branches give None)."""
    return next((b for b in branches if b is not None), None)


BUILTIN_TASKS = (case_check, merge_task)
for _builtin in BUILTIN_TASKS:
    # Part of Headwater itself, not of the user's code: never compared.
    _builtin._digest = ""
