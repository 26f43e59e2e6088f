"""The pieces that let people see runs, tested alone: value summaries, waiting
reasons, task output capture, and paging through a run's logs."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from headwater.v1 import payload_pb2
from headwater.wire import ENCODING_KEY
from headwater_runtime.execution import task_output
from headwater_runtime.server._dispatch import WorkerSession
from headwater_runtime.server._previews import (
    PREVIEW_KEY,
    bounded,
    preview,
    summarize,
    upload_metadata,
    value_size,
)
from headwater_runtime.server._waiting import waiting_reason
from headwater_runtime.store import LogRow, SQLiteStore, WriteBatch


def inline(
    data: bytes, encoding: str = "json", items: list[payload_pb2.Value] = ()
) -> payload_pb2.Value:  # type: ignore[assignment]
    payload = payload_pb2.Payload(data=data, metadata={ENCODING_KEY: encoding})
    return payload_pb2.Value(inline=payload, items=items)


def test_values_are_described_without_being_decoded() -> None:
    text = inline(json.dumps("x" * 1000).encode())
    assert value_size(text) == 1002
    assert preview(text).startswith('"xxx') and len(preview(text)) == 200
    assert preview(inline(b"\x80\x04pickled", "pickle")) == ""  # never unpickled
    listed = inline(
        b"", "headwater.list", [inline(b"1"), inline(b'{"a": 2}'), inline(b"3"), inline(b"4")]
    )
    assert preview(listed) == '[1, {"a": 2}, 3, … 1 more]'
    assert value_size(listed) == 1 + 8 + 1 + 1
    keyed = inline(b'["rows", "name"]', "headwater.dict", [inline(b"[1, 2]"), inline(b'"t"')])
    assert preview(keyed) == '{"rows": [1, 2], "name": "t"}'
    ref = payload_pb2.Value(
        ref=payload_pb2.PayloadRef(
            payload_id="p", size_bytes=5 << 20, metadata={ENCODING_KEY: "json"}
        )
    )
    assert summarize(ref).size_bytes == 5 << 20 and summarize(ref).preview == ""
    spaced = inline(b"[1," + b" " * 1000 + b"2]")  # cut, though short once collapsed
    assert preview(spaced) == "[1,…"
    assert preview(inline(b"[1, 2]")) == "[1, 2]"
    small, summary = bounded(inline(b"42"))
    assert small is not None and not summary.omitted
    large, summary = bounded(inline(json.dumps("y" * 20_000).encode()))
    assert large is None and summary.omitted and summary.size_bytes == 20_002


def test_a_value_stored_by_reference_keeps_the_preview_made_at_upload() -> None:
    # 2-byte characters: the 799 bytes end in the middle of one
    data = json.dumps(["é" * 300_000], ensure_ascii=False).encode()
    metadata = upload_metadata({ENCODING_KEY: "json", PREVIEW_KEY: "forged"}, data[:799], len(data))
    made = metadata[PREVIEW_KEY]
    assert made == '["' + "é" * 197 + "…"  # no U+FFFD for the half character
    ref = payload_pb2.Value(
        ref=payload_pb2.PayloadRef(payload_id="p", size_bytes=len(data), metadata=metadata)
    )
    assert summarize(ref).preview == made
    listed = inline(b"", "headwater.list", [ref, ref])  # elements cut again, still marked
    assert preview(listed) == "[" + ", ".join(['["' + "é" * 63 + "…"] * 2) + "]"
    whole = upload_metadata({ENCODING_KEY: "json"}, b"[1, 2]", 6)
    assert whole[PREVIEW_KEY] == "[1, 2]"  # all of it: not marked as cut
    assert upload_metadata({ENCODING_KEY: "pickle", PREVIEW_KEY: "x"}, b"\x80", 1) == {
        ENCODING_KEY: "pickle"
    }
    unbounded = ref.ref.metadata
    unbounded[PREVIEW_KEY] = "y" * 10_000  # whatever an uploader claims, it stays bounded
    assert len(preview(ref)) == 200 and preview(ref).endswith("…")


def session(
    name: str, capabilities: set[str], labels: dict[str, str], slots: int = 1
) -> WorkerSession:
    return WorkerSession(name, name, name, frozenset(capabilities), labels, slots, lambda _: None)


def test_a_waiting_task_says_which_capability_or_label_is_missing() -> None:
    assert waiting_reason([], "etl.load", {}) == "waiting: no connected worker offers etl.load"
    cpu = session("cpu", {"etl.load"}, {"gpu": "false"})
    assert (
        waiting_reason([cpu], "etl.load", {"gpu": "true", "zone": "eu"})
        == "waiting: no connected worker offers etl.load (labels gpu=true, zone=eu)"
    )
    gpu = session("gpu", {"etl.load"}, {"gpu": "true", "zone": "eu"})
    assert (
        waiting_reason([cpu, gpu], "etl.load", {"gpu": "true"})
        == "waiting for a free slot: 1 connected worker offers etl.load, all busy"
    )
    assert "2 connected workers offer" in waiting_reason([cpu, gpu], "etl.load", {})


def test_task_output_is_captured_per_thread_and_still_printed(capsys: object) -> None:
    captured: dict[str, list[tuple[str, str, str]]] = {"a": [], "b": []}
    barrier = threading.Barrier(2)

    def work(name: str) -> None:
        sink = lambda level, logger, message, at: captured[name].append((level, logger, message))  # noqa: E731
        with task_output(sink):
            barrier.wait(5)
            print(f"hello from {name}")
            print("partial", end="")  # a line without its newline: kept until a record
            sys.stderr.write(f"careful {name}\n")
            logging.getLogger("job").warning("logged by %s", name)  # ...comes after it
            print("tail", end="")  # ...or the end
            barrier.wait(5)

    threads = [threading.Thread(target=work, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    print("not a task's line")
    for name in "ab":
        assert captured[name] == [
            ("INFO", "stdout", f"hello from {name}"),
            ("WARNING", "stderr", f"careful {name}"),
            ("INFO", "stdout", "partial"),  # (it came after the record, on a server)
            ("WARNING", "job", f"logged by {name}"),
            ("INFO", "stdout", "tail"),
        ]
    out = capsys.readouterr()  # type: ignore[attr-defined]
    assert "hello from a" in out.out and "not a task's line" in out.out  # teed, not swallowed
    assert "careful b" in out.err


def test_a_line_printed_in_parts_has_the_time_it_began(monkeypatch: Any) -> None:
    """A line printed without its newline and sent before a log record (or at the end)
    was stamped when it was sent: after the record it came before (a re-check)."""
    import headwater_runtime.execution as execution

    now = [100.0]
    monkeypatch.setattr(execution, "time", SimpleNamespace(time=lambda: now[0]))
    got: list[tuple[str, float]] = []
    with task_output(lambda level, logger, message, at: got.append((message, at))):
        print("a", end="")
        now[0] = 200.0
        print("b")  # ends the line begun at 100
        print("c", end="")
        now[0] = 300.0
    assert got == [("ab", 100.0), ("c", 200.0)]


def test_a_run_with_100k_log_lines_pages_through_them(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "hw.db"))
    try:
        batch = WriteBatch()
        batch.logs = [
            LogRow(
                "run", f"step[{i % 7}]" if i % 3 else "load", 1, float(i), "INFO", "t", f"line {i}"
            )
            for i in range(100_000)
        ]
        store.commit(batch)
        seen, after, pages = [], 0, 0
        while True:
            page = store.logs("run", after=after, limit=5000)
            if not page:
                break
            pages += 1
            assert len(page) <= 5000
            seen.extend(r.message for r in page)
            after = page[-1].seq
        assert pages == 20 and seen == [f"line {i}" for i in range(100_000)]
        mapped = store.logs("run", task_id="step", limit=10)
        assert [r.key for r in mapped][:3] == ["step[1]", "step[2]", "step[4]"]
        assert all(r.key == "load" for r in store.logs("run", key="load", limit=100))
        assert store.logs("other") == []
    finally:
        store.close()


def test_basic_config_after_a_first_run_keeps_info_records() -> None:
    """The router a run puts on the root logger stayed there, so a notebook's
    ``logging.basicConfig(level=logging.INFO)`` after its first run did nothing: the
    INFO records docs/semantics.md says it keeps were not (a notebook trial). A fresh
    interpreter: this changes the process's logging."""
    script = (
        "import logging\n"
        "from headwater import flow, task\n"
        "log = logging.getLogger('mytask')\n"
        "@task\n"
        "def t(i: int) -> int:\n"
        "    log.info('info %s', i)\n"
        "    log.warning('warn %s', i)\n"
        "    return i\n"
        "@flow\n"
        "def f() -> int:\n"
        "    return t(1)\n"
        "first = f.run()\n"
        "print([r.message for r in first.logs], logging.root.handlers)\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "second = f.run()\n"
        "print([r.message for r in second.logs], len(logging.root.handlers))\n"
    )
    done = _in_a_fresh_interpreter(script)
    assert done.stdout.splitlines() == ["['warn 1'] []", "['info 1', 'warn 1'] 1"]
    assert "INFO:mytask:info 1" in done.stderr  # basicConfig's handler has it too


def test_a_record_is_kept_once_when_another_stream_wraps_the_tee() -> None:
    """Jupyter puts a stream of its own around sys.stderr (our stand-in included) from
    a notebook's second cell on: logging's last-resort line came back through it and
    was kept a second time, as a 'stderr' line (a notebook trial). A fresh interpreter:
    this changes the process's streams."""
    script = (
        "import logging, sys\n"
        "from headwater import flow, task\n"
        "log = logging.getLogger('mytask')\n"
        "class Wrapper:\n"
        "    def __init__(self, inner): self.inner = inner\n"
        "    def write(self, text): return self.inner.write(text)\n"
        "    def flush(self): self.inner.flush()\n"
        "@task\n"
        "def t(i: int) -> int:\n"
        "    log.warning('warn %s', i)\n"
        "    print('printed', i, file=sys.stderr)\n"
        "    return i\n"
        "@flow\n"
        "def f() -> int:\n"
        "    return t(1)\n"
        "first = f.run()\n"
        "sys.stderr = Wrapper(sys.stderr)  # the next cell's\n"
        "second = f.run()\n"
        "for run in (first, second):\n"
        "    print([(r.logger, r.message) for r in run.logs])\n"
    )
    done = _in_a_fresh_interpreter(script)
    once = "[('mytask', 'warn 1'), ('stderr', 'printed 1')]"
    assert done.stdout.splitlines() == [once, once]


def _in_a_fresh_interpreter(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
