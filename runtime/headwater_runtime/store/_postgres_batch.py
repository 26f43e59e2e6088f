"""A commit's ``WriteBatch`` as one PostgreSQL statement.

Every table the batch writes is one data-modifying CTE of a single statement (tables
it has no rows for are left out of it), and every table's rows travel as one JSON
array of row arrays (bytes as hex): a whole commit is one statement, one parameter
per table and one round trip, whether it holds one row or 100,000. psycopg adapts a
JSON string in one step where it would inspect every element of eleven typed arrays,
which cost ~0.4 ms of this process's CPU per small commit and most of a one-task
run's latency. The array is read as ``jsonb``, parsed once: as ``json``, every ``->>``
re-parsed its row's text, one column at a time (a commit of 18 finished tasks took
3.3 ms of PostgreSQL's time against 2.3 ms now; benchmarks/README.md, tenth session).

The statement fences itself: it takes the lease row ``FOR SHARE`` and writes only
when the lease's epoch is the one this server leads with (``fence``); it returns the
epoch it saw, and ``write_batch`` raises ``Fenced`` when that is another. A new
leader's takeover waits for the share lock, so no write of an old leader lands after
the takeover. Run outside a transaction the statement is its own (all or nothing);
inside ``create_flow_run``'s transaction it is one of its statements.

PostgreSQL text cannot hold NUL characters: text fields that contain one (a log line
with binary garbage) are stored with U+FFFD in its place rather than failing the
whole commit, which would hold back every run behind it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
from collections.abc import Callable, Sequence
from itertools import islice
from operator import attrgetter
from typing import Any

import psycopg

from ._base import AuditRow, Fenced, FlowRunRow, WriteBatch
from ._postgres_rows import FLOW_RUN_COLS, flow_run_values

Conn = psycopg.Connection[tuple[Any, ...]]


def _cols(types: str) -> str:
    """``r->>0, (r->>1)::int4, ...`` for the column types given (``t`` text, ``i``
    int4, ``b`` int8, ``f`` float8, ``x`` bytea from hex)."""
    out = []
    for i, kind in enumerate(types):
        text = f"r->>{i}"
        out.append(
            {
                "t": text,
                "i": f"({text})::int4",
                "b": f"({text})::int8",
                "f": f"({text})::float8",
                "x": f"decode({text}, 'hex')",
            }[kind]
        )
    return ", ".join(out)


def _rows(param: int) -> str:
    """A table's rows from its JSON parameter, numbered in the order given (``n``)."""
    return (
        f"FROM jsonb_array_elements(${param}::jsonb) WITH ORDINALITY AS u(r, n) "
        "WHERE EXISTS (SELECT FROM go)"
    )


#: The statement's head and tail: the lease row, taken ``FOR SHARE``, and ``go``, a row
#: only when the lease is at the fence epoch ($1; NULL: unfenced). Every write reads
#: ``go``, so a fenced-out statement writes nothing and returns the epoch it saw.
_HEAD = """WITH lease AS (SELECT epoch, address FROM leader_lease WHERE id = 1 FOR SHARE),
go AS (SELECT FROM lease WHERE $1::int8 IS NULL OR epoch = $1::int8)"""
_TAIL = "SELECT epoch, address FROM lease"

#: The statement's writes, one data-modifying CTE per table: the positions (in the
#: tuple ``parameters`` returns) of the parameters each one takes, its JSON rows
#: first, and its text for the placeholders given. A statement holds only the parts
#: whose rows are not empty: PostgreSQL starts every node of a plan, and locks every
#: table and index it names, on each execution; the empty parts of a one-task run's
#: commits were ~20 % of their PostgreSQL time (mean 0.33 ms -> 0.26 ms).
_PARTS: tuple[tuple[tuple[int, ...], Callable[[list[int]], str]], ...] = (
    ((1,), lambda p: f"""values_ AS (INSERT INTO run_values (id, data, size)
    SELECT {_cols("txb")} {_rows(p[0])} ON CONFLICT (id) DO NOTHING)"""),
    ((2,), lambda p: f"""refs_ AS (INSERT INTO payload_refs (owner, payload_id)
    SELECT {_cols("tt")} {_rows(p[0])} ON CONFLICT DO NOTHING)"""),
    ((3,), lambda p: f"""runs_ AS (UPDATE flow_runs AS f SET flow_name=r->>1,
    flow_version=r->>2, state=(r->>3)::int4, created_at=(r->>4)::float8,
    parameters=decode(r->>5, 'hex'), idempotency_key=r->>6, started_at=(r->>7)::float8,
    ended_at=(r->>8)::float8, result=decode(r->>9, 'hex'), message=r->>10,
    trace_context=r->>11, schedule_id=r->>12, engine_version=r->>13,
    parent_flow_run_id=r->>14, parent_task_key=r->>15, parent_attempt=(r->>16)::int4
    FROM jsonb_array_elements(${p[0]}::jsonb) AS u(r)
    WHERE f.id = r->>0 AND EXISTS (SELECT FROM go))"""),
    ((4,), lambda p: f"""tasks_ AS (INSERT INTO task_runs (flow_run_id, key, task_id,
    map_index, state, attempt, updated_at, worker_id, cache_key, result_id, delivered,
    holder)
    SELECT {_cols("tttiiiftttit")} {_rows(p[0])} ORDER BY n
    ON CONFLICT (flow_run_id, key) DO UPDATE SET task_id=EXCLUDED.task_id,
    map_index=EXCLUDED.map_index, state=EXCLUDED.state, attempt=EXCLUDED.attempt,
    updated_at=EXCLUDED.updated_at, worker_id=EXCLUDED.worker_id,
    cache_key=EXCLUDED.cache_key, result_id=EXCLUDED.result_id,
    delivered=EXCLUDED.delivered, holder=EXCLUDED.holder)"""),
    ((5,), lambda p: f"""states_ AS (INSERT INTO task_run_states (flow_run_id, key, seq,
    state, at, attempt, message, failure)
    SELECT {_cols("ttiifitx")} {_rows(p[0])} ORDER BY n)"""),
    ((6,), lambda p: f"""logs_ AS (INSERT INTO logs (flow_run_id, key, attempt, at, level,
    logger, message)
    SELECT {_cols("ttifttt")} {_rows(p[0])} ORDER BY n)"""),
    ((7,), lambda p: f"""cache_ AS (INSERT INTO cache_entries (key, value_id, expires_at)
    SELECT {_cols("ttf")} {_rows(p[0])}
    ON CONFLICT (key) DO UPDATE SET value_id=EXCLUDED.value_id,
    expires_at=EXCLUDED.expires_at)"""),
    ((8,), lambda p: f"""attempts_ AS (INSERT INTO run_attempts (flow_run_id, attempt,
    started_at, state, ended_at, message)
    SELECT {_cols("tifift")} {_rows(p[0])}
    ON CONFLICT (flow_run_id, attempt) DO UPDATE SET started_at=EXCLUDED.started_at,
    state=EXCLUDED.state, ended_at=EXCLUDED.ended_at, message=EXCLUDED.message)"""),
    ((9,), lambda p: f"""late_ AS (INSERT INTO late_runs (flow_run_id, at, reason)
    SELECT {_cols("tft")} {_rows(p[0])}
    ON CONFLICT (flow_run_id) DO UPDATE SET at=EXCLUDED.at, reason=EXCLUDED.reason)"""),
    ((10,), lambda p: f"""outbox_ AS (INSERT INTO webhook_outbox (webhook_id, body,
    attempts, next_at, created_at, last_error)
    SELECT {_cols("txifft")} {_rows(p[0])}
    AND EXISTS (SELECT 1 FROM webhooks w WHERE w.id = r->>0) ORDER BY n)"""),
    ((12, 11), lambda p: f"""events_ AS (INSERT INTO run_events (flow_run_id, seq, at,
    kind, body, value_id, epoch)
    SELECT {_cols("tbftxt")}, ${p[1]}::int8 {_rows(p[0])})"""),
    ((13,), lambda p: f"""new_run_ AS (INSERT INTO flow_runs ({FLOW_RUN_COLS})
    SELECT {_cols("tttifxtffxtttttti")} {_rows(p[0])})"""),
    ((14,), lambda p: f"""audit_ AS (INSERT INTO audit (at, actor, action, object_kind,
    object_id, detail)
    SELECT {_cols("fttttt")} {_rows(p[0])})"""),
)  # fmt: skip


@functools.lru_cache(maxsize=256)
def _statement(parts: tuple[int, ...]) -> str:
    """The statement writing the ``_PARTS`` given (by position), with PostgreSQL's own
    placeholders in the order ``statement`` gives the arguments (it is run by a
    ``RawCursor``; psycopg prepares it on a connection's fifth use)."""
    ctes, number = [_HEAD], 2
    for i in parts:
        positions, text = _PARTS[i]
        ctes.append(text(list(range(number, number + len(positions)))))
        number += len(positions)
    return ",\n".join(ctes) + "\n" + _TAIL


def statement(params: tuple[Any, ...]) -> tuple[str, list[Any]]:
    """The statement for ``parameters``' output, with its arguments: the fence epoch,
    then the parameters of each part that has rows to write."""
    parts = tuple(i for i, (at, _) in enumerate(_PARTS) if params[at[0]] != _EMPTY)
    args = [params[0]]
    for i in parts:
        args.extend(params[at] for at in _PARTS[i][0])
    return _statement(parts), args


_EVENT = attrgetter("flow_run_id", "seq", "at", "kind", "body", "value_id")
_TASK_RUN = attrgetter(
    "flow_run_id", "key", "task_id", "map_index", "state", "attempt", "updated_at",
    "worker_id", "cache_key", "result_id", "delivered", "holder",
)  # fmt: skip
_STATE = attrgetter("flow_run_id", "key", "seq", "state", "at", "attempt", "message", "failure")
_LOG = attrgetter("flow_run_id", "key", "attempt", "at", "level", "logger", "message")
_CACHE = attrgetter("key", "value_id", "expires_at")
_ATTEMPT = attrgetter("flow_run_id", "attempt", "started_at", "state", "ended_at", "message")
_LATE = attrgetter("flow_run_id", "at", "reason")
_AUDIT = attrgetter("at", "actor", "action", "object_kind", "object_id", "detail")
_DELIVERY = attrgetter("webhook_id", "body", "attempts", "next_at", "created_at", "last_error")

_EMPTY = "[]"


def _value_row(v: Any) -> tuple[Any, ...]:
    return (v.id, v.data, len(v.data))


def _run_row(r: FlowRunRow) -> tuple[Any, ...]:
    return (r.id, *flow_run_values(r))


#: Rows encoded per ``json.dumps`` call: one call over 100,000 rows holds the GIL
#: for ~130 ms (the event loop waits that long); 1,000 rows take ~1.3 ms.
SLICE = 1_000


def _dumps(rows: list[Any]) -> str:
    return json.dumps(rows, separators=(",", ":"), default=bytes.hex)


def _json(rows: Sequence[Any], get: Callable[[Any], Any] | None = None) -> str:
    """Rows (tuples, or objects turned into tuples by ``get``) as one JSON array,
    bytes as hex, encoded a slice at a time; NUL characters in text become U+FFFD
    (PostgreSQL text cannot hold them), floats without a JSON number strings."""
    if not rows:
        return _EMPTY
    parts = []
    for start in range(0, len(rows), SLICE):
        chunk = rows[start : start + SLICE]
        part = _dumps(list(map(get, chunk)) if get is not None else list(chunk))
        if "\\u0000" in part or "Infinity" in part or "NaN" in part:
            # Rare: NULs (PostgreSQL text cannot hold them) or a float JSON has no
            # number for (PostgreSQL reads "Infinity" as a float8, not as JSON).
            part = _dumps([[_cleaned(v) for v in row] for row in json.loads(part)])
        parts.append(part[1:-1])
    return "[" + ",".join(parts) + "]"


def _cleaned(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def parameters(
    batch: WriteBatch,
    fence: int | None,
    epoch: int,
    new_run: FlowRunRow | None = None,
    audit: AuditRow | None = None,
) -> tuple[Any, ...]:
    """The statement's parameters for a batch (and a new run with its audit entry)."""
    values = list(batch.values.values())
    refs = [(f"value:{v.id}", p) for v in values for p in v.payload_ids]
    runs = list(batch.flow_runs.values())
    new = _EMPTY
    if new_run is not None:
        refs += [(f"run:{new_run.id}", p) for p in new_run.payload_ids]
        # The new row and an update of it cannot both be in one statement (its parts
        # see the same snapshot): a run that changed in its first batch is inserted
        # as it is at the end of the batch.
        latest = batch.flow_runs.get(new_run.id, new_run)
        runs = [r for r in runs if r.id != new_run.id]
        new = _json([latest], _run_row)
    ops = batch.ops
    # One statement cannot write a row twice: rows given twice in a batch (an attempt
    # that started and ended in one tick) are written once, as last given.
    cache = list({c.key: c for c in batch.cache}.values())
    attempts = list({(a.flow_run_id, a.attempt): a for a in ops.run_attempts}.values())
    late = list({m.flow_run_id: m for m in ops.late}.values())
    return (
        fence,
        _json(values, _value_row),
        _json(refs),
        _json(runs, _run_row),
        _json(list(batch.task_runs.values()), _TASK_RUN),
        _json(batch.states, _STATE),
        _json(batch.logs, _LOG),
        _json(cache, _CACHE),
        _json(attempts, _ATTEMPT),
        _json(late, _LATE),
        _json(ops.deliveries, _DELIVERY),
        epoch,
        _json(batch.events, _EVENT),
        new,
        _json([audit], _AUDIT) if audit is not None else _EMPTY,
    )


#: Most rows of one table in one statement. A larger batch (a 100,000-task run's
#: start or cancel) is written as several statements in one transaction: one
#: statement's JSON text is then ~1 MB, where joining and encoding ~9 MB took single
#: C calls of 5-17 ms, which the event loop waited for.
STATEMENT_ROWS = 10_000


def write_batch(
    conn: Conn,
    batch: WriteBatch,
    fence: int | None,
    new_run: FlowRunRow | None = None,
    audit: AuditRow | None = None,
) -> None:
    """Write a batch in one statement (with a new run's row and audit entry, if
    given), or a large one as several in one transaction, fenced by ``fence`` (the
    epoch this server leads with; None: unfenced); raises ``Fenced`` (nothing
    written) when the lease has moved on."""
    cursor = psycopg.RawCursor(conn)
    parts = _split(batch)
    # One statement is its own transaction; several share one.
    with conn.transaction() if len(parts) > 1 else contextlib.nullcontext():
        for part in parts:
            query, args = statement(parameters(part, fence, fence or 0, new_run, audit))
            check_lease(fence, cursor.execute(query, args).fetchone())
            new_run = audit = None  # with the first statement only


def _split(batch: WriteBatch) -> list[WriteBatch]:
    """The batch itself, or (when a table has more than ``STATEMENT_ROWS`` rows) the
    batches to write one after another: the first holds the small tables whole (flow
    runs, cache, operations rows: each deduplicated within one statement) and the
    first slice of each large one; the others, the next slices."""
    n = STATEMENT_ROWS
    sizes = (len(batch.events), len(batch.task_runs), len(batch.states), len(batch.logs))
    if max(*sizes, len(batch.values)) <= n:
        return [batch]
    # Dict items a slice at a time: a list of 100,000 item tuples made at once would
    # itself set off collections.
    task_runs, values = iter(batch.task_runs.items()), iter(batch.values.items())
    parts = []
    for start in range(0, max(*sizes, len(batch.values)), n):
        end = start + n
        part = WriteBatch(
            events=batch.events[start:end],
            task_runs=dict(islice(task_runs, n)),
            states=batch.states[start:end],
            logs=batch.logs[start:end],
            values=dict(islice(values, n)),
        )
        if start == 0:
            part.flow_runs, part.cache, part.ops = batch.flow_runs, batch.cache, batch.ops
        parts.append(part)
    return parts


def check_lease(fence: int | None, row: tuple[Any, ...] | None) -> None:
    """Raise ``Fenced`` unless the lease row read (epoch, address) is at ``fence``."""
    if fence is None:
        return
    if row is None or int(row[0]) != fence:
        current, leader = (0, "") if row is None else (int(row[0]), str(row[1]))
        raise Fenced(
            f"this server led with lease epoch {fence}, and the lease is now at "
            f"epoch {current} (leader {leader or 'unknown'}): its writes are refused"
        )
