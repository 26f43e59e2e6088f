"""What "the code of a task" is (python_sdk/headwater/_code.py, docs/flows.md "No stale
code"): its source as imported, the helpers of its module it calls, the constants it
reads; code_version replaces all of it."""

from __future__ import annotations

import sys
import textwrap
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from headwater import flow, remote_task, task
from headwater._builtins import BUILTIN_TASKS
from headwater._loader import load_file

MODULE = """
from headwater import flow, task

RATE = {rate}

def helper(x):
    return x {op} 1

@task
def priced(x: int) -> float:
    return helper(x) * RATE

@task
def other(x: int) -> int:
    return x

@flow
def pricing(x: int = 1) -> float:
    return priced(x)
"""


@pytest.fixture
def load(tmp_path: Path) -> Iterator[Callable[..., ModuleType]]:
    """Write ``digests_mod.py`` with the given edits and import it (fresh each time)."""

    def write_and_load(rate: float = 1.5, op: str = "+", extra: str = "") -> ModuleType:
        path = tmp_path / "digests_mod.py"
        path.write_text(textwrap.dedent(MODULE).format(rate=rate, op=op) + extra)
        return load_file(str(path))

    yield write_and_load
    sys.modules.pop("digests_mod", None)


def test_the_same_code_has_the_same_digest(load: Callable[..., ModuleType]) -> None:
    first = load().priced.code_digest
    assert first == load().priced.code_digest
    assert len(first) == 16


def test_editing_the_task_a_helper_or_a_constant_changes_the_digest(
    load: Callable[..., ModuleType],
) -> None:
    base = load()
    assert load(op="-").priced.code_digest != base.priced.code_digest  # the helper
    assert load(rate=2.5).priced.code_digest != base.priced.code_digest  # a constant
    # A task that uses neither keeps its digest.
    assert load(op="-", rate=2.5).other.code_digest == base.other.code_digest
    # Code elsewhere in the file is not the task's code.
    assert load(extra="\n# a comment\n").priced.code_digest == base.priced.code_digest


def test_the_digest_is_of_the_code_as_imported_not_of_the_file_now(
    load: Callable[..., ModuleType], tmp_path: Path
) -> None:
    before = load().priced.code_digest
    module = load()  # imported; its digest is computed on first use, below
    (tmp_path / "digests_mod.py").write_text(
        textwrap.dedent(MODULE).format(rate=9.0, op="*")
    )  # edited after the import, digest not yet computed
    assert module.priced.code_digest == before


def test_the_digest_follows_names_set_again_and_holds_no_other_value(
    load: Callable[..., ModuleType],
) -> None:
    """Set again in the process (a later notebook cell), a constant or a helper is
    part of the digest from then on; a name read that is neither (a DataFrame) does not
    count and is not kept alive by the digest."""
    module = load()
    base = module.priced.code_digest
    module.RATE = 2.5
    assert module.priced.code_digest == load(rate=2.5).priced.code_digest != base
    module.RATE = 1.5
    assert module.priced.code_digest == base
    module.helper = lambda x: x - 1
    changed = module.priced.code_digest
    assert changed != base and module.other.code_digest == load().other.code_digest

    class Table:  # neither a constant nor a function: not part of the code
        pass

    module.RATE = Table()
    held = weakref.ref(module.RATE)
    without = module.priced.code_digest
    module.RATE = Table()
    assert module.priced.code_digest == without
    assert held() is None


def test_code_version_names_the_code() -> None:
    @task(code_version="2024-06")
    def versioned(x: int) -> int:
        return x

    @task(code_version="2024-06")
    def rewritten(x: int) -> int:
        return x * 100

    assert versioned.code_digest == rewritten.code_digest == "v:2024-06"
    with pytest.raises(TypeError, match="code_version must be a str"):
        task(code_version=1)(lambda x: x)  # type: ignore[arg-type]


def test_built_in_and_remote_tasks_have_no_digest() -> None:
    assert [t.code_digest for t in BUILTIN_TASKS] == ["", ""]
    assert remote_task("images.resize").code_digest == ""


def test_graphs_carry_the_digests_and_flows_have_one(load: Callable[..., ModuleType]) -> None:
    module = load()
    message = module.pricing.compile()
    (node,) = message.tasks
    assert node.code_digest == module.priced.code_digest
    assert module.pricing.code_digest and module.pricing.code_digest != node.code_digest

    @flow
    def nested() -> int:
        return module.other(1)

    assert nested.graph().tasks[0].code_digest == module.other.code_digest
