"""Identifiers that cross the wire.

A task run's id is ``"{flow run id}/{key}"``: the key is unique within its flow run
(the task id, with ``[i]`` for mapped child i), and flow run ids never contain ``/``.
"""

from __future__ import annotations

import re

#: Separates the flow run id from the task run's key in a task run id.
TASK_RUN_ID_SEPARATOR = "/"


def task_run_id(flow_run_id: str, key: str) -> str:
    """The globally unique id of the task run ``key`` of a flow run."""
    return f"{flow_run_id}{TASK_RUN_ID_SEPARATOR}{key}"


def split_task_run_id(value: str) -> tuple[str, str]:
    """``(flow run id, key)`` of a task run id; ValueError names a malformed one."""
    run_id, sep, key = value.partition(TASK_RUN_ID_SEPARATOR)
    if not sep or not run_id or not key:
        raise ValueError(f"malformed task run id {value!r} (expected FLOW_RUN_ID/KEY)")
    return run_id, key


def child_key(task_id: str, index: int) -> str:
    """The key of child ``index`` of a mapped task."""
    return f"{task_id}[{index}]"


_CHILD_KEY = re.compile(r"(.+)\[(\d+)\]")


def split_child_key(key: str) -> tuple[str, int] | None:
    """``(task id, index)`` when ``key`` has the form of a mapped task's child key
    (``child_key``), else None."""
    match = _CHILD_KEY.fullmatch(key)
    return (match.group(1), int(match.group(2))) if match else None


#: The longest name (of a worker, a credential) a server accepts.
MAX_NAME = 200
#: Unicode's bidirectional controls (embeddings, overrides, isolates: U+202A-U+202E,
#: U+2066-U+2069): one reorders what a terminal or a page shows after it (U+202E shows
#: "exe.txt" for "txt.exe"). Names and ids refuse them as they refuse control characters.
BIDI_CONTROLS = (*range(0x202A, 0x202F), *range(0x2066, 0x206A))
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f" + "".join(map(chr, BIDI_CONTROLS)) + "]")
#: Control characters (C0 but tab and newline, DEL, C1) as Python escapes, and the
#: bidirectional controls as ``\\uNNNN``: text from tasks, workers and callers (log
#: lines, error messages, names) is shown with them made visible, so an escape sequence
#: cannot recolour or rewrite a terminal and an override cannot reorder a line (the
#: CLI, and the server's own HTML pages; the web UI's script does the same).
_ESCAPES = {
    code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0)) if code not in (9, 10)
}
_ESCAPES.update({code: f"\\u{code:04x}" for code in BIDI_CONTROLS})


def printable(text: str) -> str:
    """``text`` with its control characters but tab and newline written as ``\\xNN``,
    and bidirectional controls as ``\\uNNNN``."""
    return text if text.isprintable() else text.translate(_ESCAPES)


def control_character(value: str) -> str | None:
    """The first control character (or bidirectional control) in ``value`` (None: it
    has none): names and ids are shown in terminals, where one (a newline, an escape
    sequence, a right-to-left override) could forge what an operator reads."""
    found = _CONTROL.search(value)
    return None if found is None else found.group()


def check_name(what: str, value: str) -> str:
    """``value`` when it can serve as ``what``'s name (shown in lists, terminals and
    audit lines): not empty, at most MAX_NAME characters, no control characters (an
    escape sequence or a newline in a name could forge what an operator reads).
    ValueError names the problem."""
    if not value:
        raise ValueError(f"{what} must not be empty")
    if len(value) > MAX_NAME:
        raise ValueError(f"{what} is {len(value)} characters long (at most {MAX_NAME})")
    if control_character(value) is not None:
        raise ValueError(f"{what} {value[:40]!r} must not contain control characters")
    return value
