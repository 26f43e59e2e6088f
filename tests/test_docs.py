"""Every ```python block of README.md and docs/*.md runs (docs/tutorial.md says how).

The blocks of one document run in order in one namespace, like a script (named
``__main__``), in a temporary directory that is on ``sys.path``. The info string after
``python`` says more:

- ``file=NAME.py``: not run; written to the directory, for later blocks (and workers)
  to import;
- ``server``: needs a server. The document's blocks then run with a real
  ``headwater server`` and a ``headwater worker`` (subprocesses, as in the end-to-end
  tests) serving the document's ``file=`` modules and ``examples/etl.py``, and
  ``HEADWATER_SERVER`` set to its address;
- ``skip``: a deliberate fragment, not run. Each one is reported as a skipped test
  (``-ra`` lists them) and pinned in ``SKIPPED`` below, so they stay rare.

A ``print(...)  # TEXT`` line promises what it prints, and the reader believes it: its
first output must be TEXT, or TEXT with an explanation after a colon (``# [7, 8]: the
second run ...``) or before one (``# runs embedded: 30``); ``...`` in TEXT stands for
anything (``# SUCCESS 12 @...``).
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from e2e_helpers import Cluster, start_server, start_worker

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python([^\n]*)\n(.*?)^```", re.S | re.M)
#: A line that prints and says in a comment what it prints.
PRINTS = re.compile(r"^\s*print\(.*\)\s+#\s*(?P<said>.+?)\s*$")

#: The deliberate fragments (document, index of the block in it): keep this short.
SKIPPED = {("docs/dask.md", 1)}


class Block(NamedTuple):
    doc: str
    index: int
    info: str
    code: str
    line: int


def blocks(path: Path) -> list[Block]:
    text = path.read_text()
    rel = str(path.relative_to(ROOT))
    return [
        Block(rel, i, m.group(1).strip(), m.group(2), text.count("\n", 0, m.start()) + 2)
        for i, m in enumerate(BLOCK.finditer(text))
    ]


ALL = [b for path in DOCS for b in blocks(path)]
RUNNABLE_DOCS = sorted({b.doc for b in ALL if b.info != "skip"})


def test_blocks_are_found_and_only_the_pinned_ones_are_skipped() -> None:
    assert {b.doc for b in ALL} >= {"README.md", "docs/tutorial.md", "docs/flows.md"}
    assert {(b.doc, b.index) for b in ALL if b.info == "skip"} == SKIPPED
    kinds = {b.info.split("=")[0] for b in ALL}
    assert kinds <= {"", "file", "server", "skip"}, kinds


@pytest.mark.parametrize(
    "block",
    [b for b in ALL if b.info == "skip"],
    ids=lambda b: f"{b.doc}:{b.line}",
)
def test_skipped_block(block: Block) -> None:
    pytest.skip(f"{block.doc}:{block.line} is marked ```python skip (a fragment)")


@pytest.fixture
def server_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[Cluster | None]:
    doc: str = request.node.callspec.params["doc"]
    mine = [b for b in ALL if b.doc == doc]
    for b in mine:
        if b.info.startswith("file="):
            (tmp_path / b.info.split("=", 1)[1]).write_text(b.code)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    monkeypatch.syspath_prepend(str(tmp_path))
    if not any(b.info == "server" for b in mine):
        yield None
        return
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
    }
    procs = Cluster(env)
    try:
        _, address = start_server(procs, tmp_path / "hw.db")
        modules = [str(tmp_path / b.info.split("=", 1)[1]) for b in mine if "=" in b.info]
        extra = [arg for m in modules for arg in ("--module", m)]
        start_worker(procs, address, "docs", *extra, module=str(ROOT / "examples" / "etl.py"))
        monkeypatch.setenv("HEADWATER_SERVER", address)
        yield procs
    finally:
        procs.stop()


def says(comment: str, printed: str) -> bool:
    """Whether ``printed`` is what the comment after a ``print(...)`` says it prints."""
    pattern = ".*".join(re.escape(part) for part in comment.split("..."))
    return bool(
        re.fullmatch(pattern, printed)
        or comment.startswith(f"{printed}:")
        or comment.endswith(f": {printed}")
    )


def test_says_is_strict() -> None:
    assert says("SUCCESS 30", "SUCCESS 30") and says("[7, 8]: reused", "[7, 8]")
    assert says("runs embedded: 30", "30") and says("SUCCESS 12 @...", "SUCCESS 12 @3f2a")
    assert not says("SUCCESS 615.0", "SUCCESS 609.0") and not says("runs embedded: 30", "3")


@pytest.mark.parametrize("doc", RUNNABLE_DOCS)
def test_doc_runs(doc: str, server_env: Cluster | None) -> None:
    printed: dict[int, list[str]] = {}  # by line of the document
    lock = threading.Lock()

    def recording_print(*args: Any, **kwargs: Any) -> None:
        frame = sys._getframe(1)
        if frame.f_code.co_filename == str(ROOT / doc):
            text = kwargs.get("sep", " ").join(str(a) for a in args)
            with lock:
                printed.setdefault(frame.f_lineno, []).append(text)
        print(*args, **kwargs)

    namespace: dict[str, object] = {"__name__": "__main__", "print": recording_print}
    modules_before = set(sys.modules)
    try:
        for b in (b for b in ALL if b.doc == doc):
            if b.info in ("skip",) or b.info.startswith("file="):
                continue
            code = compile("\n" * (b.line - 1) + b.code, str(ROOT / b.doc), "exec")
            exec(code, namespace)
            for offset, source in enumerate(b.code.splitlines()):
                said = PRINTS.match(source)
                if said is None:
                    continue
                line = b.line + offset
                out = printed.get(line, [])
                assert out, f"{doc}:{line}: this print(...) did not run"
                assert says(said["said"], out[0]), (
                    f"{doc}:{line}: the comment says it prints {said['said']!r}, "
                    f"it printed {out[0]!r}"
                )
    finally:
        # Modules a document wrote (shop.py) must not leak into the next document.
        for name in set(sys.modules) - modules_before:
            module = sys.modules[name]
            if str(getattr(module, "__file__", "") or "").startswith(os.getcwd()):
                del sys.modules[name]
