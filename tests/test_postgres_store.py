"""What only the PostgreSQL store has: schema migrations, the leader lease and the
epoch that fences every write. (tests/test_store.py runs the common tests on it.)"""

from __future__ import annotations

import contextlib
import math
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from pg_cluster import TempPostgres

from headwater_runtime.store import (
    Conflict,
    Delivery,
    Fenced,
    FlowRunRow,
    Lease,
    LimitRow,
    LogRow,
    PostgresStore,
    RunEvent,
    SchemaTooNew,
    StoreNotFound,
    StoreUnavailable,
    TaskRunRow,
    WriteBatch,
    _postgres_batch,
    open_store,
)
from headwater_runtime.store._postgres_schema import MIGRATIONS, PG_SCHEMA_VERSION, migrate


@pytest.fixture
def url(postgres: TempPostgres) -> str:
    return postgres.schema_url()


@pytest.fixture
def store(url: str) -> Iterator[PostgresStore]:
    s = PostgresStore(url)
    yield s
    s.close()


def versions(store: PostgresStore) -> list[int]:
    with store.connection() as conn:
        return [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]


def test_a_new_database_gets_every_migration_once(url: str) -> None:
    first = PostgresStore(url)
    assert versions(first) == [m.version for m in MIGRATIONS]
    first.close()
    again = PostgresStore(url)  # opening again applies nothing
    assert versions(again) == [m.version for m in MIGRATIONS]
    again.close()


def test_an_older_database_is_migrated_forward_keeping_its_rows(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        assert migrate(conn, "test", MIGRATIONS[:1]) == [1]
        conn.execute(
            "INSERT INTO run_events (flow_run_id, seq, at, kind, body, value_id) "
            "VALUES ('r', 1, 1.0, 'run_started', '', '')"
        )
    store = PostgresStore(url)
    assert versions(store) == list(range(1, PG_SCHEMA_VERSION + 1))
    assert [e.kind for e in store.events("r")] == ["run_started"]
    store.close()


def test_commands_beside_a_server_neither_create_nor_migrate_a_schema(url: str) -> None:
    """prune and tokens open with existing=True: an empty schema is no database (a dry
    run made the whole schema), an older one is refused, not migrated."""
    import psycopg

    with pytest.raises(StoreNotFound, match=r"no Headwater database at .*no Headwater schema"):
        open_store(url, existing=True)
    with psycopg.connect(url, autocommit=True) as conn:
        assert migrate(conn, "test", MIGRATIONS[:1]) == [1]
    with pytest.raises(RuntimeError, match=r"has schema version 1, and this Headwater uses"):
        open_store(url, existing=True)
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone() == (1,)
    open_store(url).close()  # a server migrates it
    open_store(url, existing=True).close()


def test_tokens_create_makes_a_new_schema_and_never_migrates_one(
    postgres: TempPostgres,
) -> None:
    """open_store(migrate=False), as ``headwater tokens create`` opens: a database with
    no schema gets the whole schema; an older one is refused and left at its version
    (its older server keeps running on it); a newer one is refused as newer, not with
    advice to start a server of this version on it (which would refuse it too)."""
    import psycopg

    new = postgres.schema_url()
    open_store(new, migrate=False).close()
    with psycopg.connect(new, autocommit=True) as conn:
        got = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]
    assert got == [m.version for m in MIGRATIONS]

    older = postgres.schema_url()
    with psycopg.connect(older, autocommit=True) as conn:
        assert migrate(conn, "test", MIGRATIONS[:1]) == [1]
    with pytest.raises(RuntimeError) as refused:
        open_store(older, migrate=False)
    assert "has schema version 1, and this Headwater uses" in str(refused.value)
    assert "start a server of this version on it, which migrates it" in str(refused.value)
    with psycopg.connect(older, autocommit=True) as conn:
        assert conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone() == (1,)

    with psycopg.connect(new, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations (version, description) VALUES (99, 'x')")
    for existing in (True, False):
        with pytest.raises(RuntimeError) as newer:
            open_store(new, existing=existing, migrate=False)
        assert "has schema version 99" in str(newer.value)
        assert "migrated by a newer Headwater; use that version on it" in str(newer.value)
        assert "which migrates it" not in str(newer.value)


def test_a_version_2_database_gets_child_links_credentials_and_audit(url: str) -> None:
    """Migration 3 (issues 13 and 17): a run stored before it reads back as a run with
    no parent, and the new tables work at once."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        assert migrate(conn, "test", MIGRATIONS[:2]) == [1, 2]
        conn.execute(
            "INSERT INTO flow_runs (id, flow_name, flow_version, state, created_at, "
            "parameters, result, message, trace_context, schedule_id, engine_version) "
            "VALUES ('old', 'etl', '1', 3, 1.0, '', '', '', '{}', '', '')"
        )
    store = PostgresStore(url)
    assert versions(store) == list(range(1, PG_SCHEMA_VERSION + 1))
    old = store.get_flow_run("old")
    assert (old.parent_flow_run_id, old.parent_task_key, old.parent_attempt) == ("", "", 0)
    assert store.child_flow_runs("old") == [] and store.flow_run_ids("ol") == ["old"]
    assert store.credentials_generation() == 0 and store.audit_entries() == []
    store.close()


def test_a_version_3_database_gets_the_operations_tables(url: str) -> None:
    """Migration 4 (issue 15): a run stored before it (state 4: SUCCESS) has no attempts
    and no late mark, is pruned like any other, and the new tables work at once."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        assert migrate(conn, "test", MIGRATIONS[:3]) == [1, 2, 3]
        conn.execute(
            "INSERT INTO flow_runs (id, flow_name, flow_version, state, created_at, "
            "parameters, result, message, trace_context, schedule_id, engine_version, "
            "ended_at) VALUES ('old', 'etl', '1', 4, 1.0, '', '', '', '{}', '', '1', 2.0)"
        )
    store = PostgresStore(url)
    assert versions(store) == list(range(1, PG_SCHEMA_VERSION + 1))
    assert store.run_attempts("old") == [] and store.late_runs(["old"]) == {}
    store.put_limit(LimitRow("db", 3))
    assert store.list_limits() == [LimitRow("db", 3)]
    assert store.prune(10.0, now=10.0, grace=0).runs == 1
    store.close()


def test_a_version_4_database_keeps_its_payloads_and_deliveries_with_no_known_owner(
    url: str,
) -> None:
    """Migration 5: each payload's uploader; migration 6: each delivered attempt's
    holder. One stored before has none (None: nobody knows), is read as before, and
    new ones record theirs."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        assert migrate(conn, "test", MIGRATIONS[:4]) == [1, 2, 3, 4]
        conn.execute(
            "INSERT INTO payloads (id, size, metadata, sha256, created_at) "
            "VALUES ('old', 3, '{\"encoding\": \"json\"}', '', 1.0)"
        )
        conn.execute("INSERT INTO payload_chunks (id, idx, data) VALUES ('old', 0, '[1]')")
        conn.execute(
            "INSERT INTO task_runs (flow_run_id, key, task_id, map_index, state, attempt, "
            "updated_at, worker_id, cache_key, result_id, delivered) "
            "VALUES ('r0', 't', 't', -1, 2, 1, 1.0, 'w', '', '', 1)"
        )
    store = PostgresStore(url)
    assert store.delivered("r0") == {"t": Delivery(1, "w", None)}
    assert versions(store) == list(range(1, PG_SCHEMA_VERSION + 1))
    assert store.payload_meta("old").uploader is None
    assert b"".join(store.read_payload("old")) == b"[1]"
    new = store.put_payload(iter([b"[2]"]), {"encoding": "json"}, 3, uploader="w1")
    assert store.payload_meta(new.id).uploader == "w1"
    batch = WriteBatch()
    row = TaskRunRow("r0", "t", "t", -1, 2, 2, 2.0, "w", delivered=2, holder="pool/w")
    batch.task_runs[("r0", "t")] = row
    store.commit(batch)
    assert store.delivered("r0") == {"t": Delivery(2, "w", "pool/w")}
    store.close()


def test_a_database_newer_than_the_server_is_refused_and_left_alone(url: str) -> None:
    PostgresStore(url).close()
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations (version, description) VALUES (99, 'x')")
    with pytest.raises(SchemaTooNew, match=r"schema version 99, newer than the \d+ this server"):
        PostgresStore(url)
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone() == (99,)


def test_servers_starting_together_migrate_once(url: str) -> None:
    stores: list[Any] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            stores.append(PostgresStore(url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(stores) == 3
    assert versions(stores[0]) == [m.version for m in MIGRATIONS]
    for s in stores:
        s.close()


def test_a_table_of_another_program_with_one_of_our_names_is_one_clear_error(
    postgres: TempPostgres,
) -> None:
    """A schema already holding a table named like one of Headwater's: the store says
    it could not set up its tables (it did connect) and why, and keeps nothing."""
    import psycopg

    url = postgres.schema_url()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE credentials (who TEXT)")
    with pytest.raises(RuntimeError) as refused:
        PostgresStore(url)
    text = str(refused.value)
    assert text.startswith("cannot set up Headwater's tables in the database ")
    assert 'relation "credentials" already exists' in text and "connect" not in text
    with psycopg.connect(url, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        ).fetchall()
    assert tables == [("credentials",)]


@pytest.mark.parametrize(
    "theirs",
    [
        "version bigint PRIMARY KEY, dirty boolean NOT NULL DEFAULT false",  # golang-migrate
        "version varchar PRIMARY KEY",  # Rails
    ],
)
def test_another_programs_schema_migrations_table_is_refused_by_name(
    postgres: TempPostgres, theirs: str
) -> None:
    """Other migration tools name their table schema_migrations too: its versions are
    not Headwater's. It was read as "migrated by a newer Headwater" (version
    20230101120000) or failed with a type error; now it is named, and nothing is kept."""
    import psycopg

    url = postgres.schema_url()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE schema_migrations ({theirs})")
        conn.execute("INSERT INTO schema_migrations (version) VALUES ('20230101120000')")
    for migrate_schema in (True, False):
        with pytest.raises(RuntimeError) as refused:
            PostgresStore(url, migrate_schema=migrate_schema)
        assert "has a table schema_migrations that is not Headwater's" in str(refused.value)
        assert "newer" not in str(refused.value)
    with psycopg.connect(url, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        ).fetchall()
    assert tables == [("schema_migrations",)]


def test_tokens_create_says_when_it_made_the_tables(postgres: TempPostgres) -> None:
    """``headwater tokens create`` on a PostgreSQL database without Headwater's tables
    says it made them (as it says so of a new SQLite file); the next one says nothing."""
    import subprocess
    import sys

    url = postgres.schema_url()
    # (The commands that only read or prune find no database there: a usage error, exit
    # 2, as for a missing SQLite file; it was 1.)
    for reader in (["tokens", "list"], ["prune", "--dry-run"]):
        found = subprocess.run(
            [sys.executable, "-m", "headwater", *reader, "--db", url],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert found.returncode == 2, found.stderr
        assert "no Headwater database at postgresql://" in found.stderr
    command = [sys.executable, "-m", "headwater", "tokens", "create", "--db", url, "--role"]
    first = subprocess.run(
        [*command, "admin", "--name", "a"], capture_output=True, text=True, timeout=120
    )
    assert first.returncode == 0 and first.stdout.startswith("hwt_"), first.stderr
    assert "headwater: created Headwater's tables in the database postgresql://" in first.stderr
    second = subprocess.run(
        [*command, "admin", "--name", "b"], capture_output=True, text=True, timeout=120
    )
    assert second.returncode == 0 and "tables" not in second.stderr, second.stderr


def test_a_role_without_privileges_on_the_tables_is_told_so_in_one_line(
    postgres: TempPostgres,
) -> None:
    """A role that may not read Headwater's existing tables was told "no Headwater
    schema" (prune, tokens: information_schema hides such tables), and a server then
    failed creating them ("already exists"); PostgreSQL's own message came with the
    statement and a caret, three lines. Now one line says permission was denied."""
    import psycopg

    url = postgres.schema_url()
    PostgresStore(url).close()  # the tables, made by their owner
    role, schema = f"hw_{uuid.uuid4().hex[:8]}", url.rsplit("%3D", 1)[1]
    with psycopg.connect(postgres.url, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
        admin.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"')
    theirs = url.replace("postgresql://postgres@", f"postgresql://{role}@")
    for beside_a_server in (False, True):  # (a server; prune and tokens)
        with pytest.raises(RuntimeError) as info:
            PostgresStore(theirs, migrate_schema=not beside_a_server)
        said = str(info.value)
        assert "\n" not in said, said
        denied = "table schema_migrations" if beside_a_server else "schema"
        assert f"permission denied for {denied}" in said, said
        assert "needs privileges on them" in said


def test_a_password_never_appears_in_messages() -> None:
    from headwater_runtime.store._postgres import redact

    assert redact("postgresql://hw:s3cret@db:5432/hw") == "postgresql://hw:***@db:5432/hw"
    assert redact("postgresql://hw@db/hw") == "postgresql://hw@db/hw"
    # libpq's password parameter in the query string (a user trial: it was printed).
    assert (
        redact("postgresql://hw@db/hw?password=s3cret&options=-csearch_path%3Dx")
        == "postgresql://hw@db/hw?password=***&options=-csearch_path%3Dx"
    )
    assert redact("postgresql:///hw?host=/tmp&Password=s3cret") == (
        "postgresql:///hw?host=/tmp&Password=***"
    )
    # A multi-host URL keeps its hosts (it was refused: "Port could not be cast").
    assert (
        redact("postgresql://hw:s3cret@a:5432,b:5433/hw") == "postgresql://hw:***@a:5432,b:5433/hw"
    )
    assert redact("postgresql://hw:p@ss@db/hw") == "postgresql://hw:***@db/hw"


def test_a_wrong_password_in_the_query_string_is_not_printed(postgres: TempPostgres) -> None:
    url = f"postgresql://nobody_here@127.0.0.1:{postgres.port}/postgres?password=Wr0ngPw99"
    with pytest.raises(RuntimeError) as refused:
        PostgresStore(url + "&connect_timeout=5")
    assert "Wr0ngPw99" not in str(refused.value)
    assert "password=***" in str(refused.value)


def test_an_unreachable_database_is_one_clear_error(postgres: TempPostgres) -> None:
    with pytest.raises(RuntimeError, match="cannot connect to the database"):
        PostgresStore("postgresql://postgres@127.0.0.1:1/nope?connect_timeout=2")


def test_a_read_over_a_connection_the_database_ended_says_it_could_not_read(
    store: PostgresStore, postgres: TempPostgres
) -> None:
    """PostgreSQL ending the pool's connections (a restart, an administrator) makes the
    next read fail as StoreUnavailable saying it could not *read* (the server answers
    UNAVAILABLE: tests/test_durability.py); the pool connects again for the one after."""
    import psycopg

    assert store.list_flow_runs() == []
    with psycopg.connect(postgres.url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )
    deadline = time.monotonic() + 30
    failures = []
    while time.monotonic() < deadline:
        try:
            store.list_flow_runs()
        except StoreUnavailable as exc:
            failures.append(str(exc))
            continue
        break
    else:
        raise AssertionError(f"the store never read again: {failures[-1:]}")
    assert failures, "no read met an ended connection"
    assert all(f.startswith("cannot read from the database: ") for f in failures), failures


def test_a_call_that_cannot_get_a_connection_soon_is_unavailable(url: str) -> None:
    """While the database is away (or every pooled connection is busy) a call waited
    psycopg_pool's 30 s for a connection, longer than a client's deadline: clients
    read a bare "Deadline Exceeded" instead of the server's UNAVAILABLE saying the
    database cannot be used. It now waits ``connection_wait`` (5 s by default)."""
    store = PostgresStore(url, pool_size=1, connection_wait=0.2)
    try:
        # The only connection, held:
        with store.connection(), pytest.raises(StoreUnavailable) as info:
            store.list_flow_runs()
        assert str(info.value).startswith("cannot read from the database: ")
        assert "couldn't get a connection after 0.20 sec" in str(info.value)
        assert store.list_flow_runs() == []  # (and reads once one is free)
    finally:
        store.close()


# ---------------------------------------------------------------- lease and fencing


def batch(run_id: str, seq: int) -> WriteBatch:
    b = WriteBatch()
    b.events.append(RunEvent(run_id, seq, float(seq), "attempt_started", b"x"))
    return b


def expired(lease: Lease) -> None:
    """Poll (with a deadline) until the lease has run out."""
    deadline = time.monotonic() + 30
    while lease.read().remaining >= 0:
        assert time.monotonic() < deadline, "the lease never expired"
        time.sleep(0.01)


def test_one_server_leads_and_the_lease_names_it(url: str) -> None:
    a, b = PostgresStore(url), PostgresStore(url)
    lease_a = Lease(a, "A", "127.0.0.1:1", 30)
    lease_b = Lease(b, "B", "127.0.0.1:2", 30)
    assert lease_a.acquire() == 1 and a.epoch == 1
    assert lease_b.acquire() is None and b.epoch is None  # A's lease has not expired
    state = lease_b.read()
    assert (state.holder, state.address, state.epoch) == ("A", "127.0.0.1:1", 1)
    assert 0 < state.remaining <= 30
    assert lease_a.renew()
    lease_a.release()  # a clean stop: B may take over at once
    assert lease_b.read().remaining == -math.inf  # (it failed: -infinity - now)
    assert lease_b.acquire() == 2
    assert not lease_a.renew()  # A lost it
    a.close()
    b.close()


def test_a_renewal_still_waiting_when_its_server_steps_down_renews_nothing(url: str) -> None:
    """A leader steps down when its lease could not be renewed for a whole period (the
    database was away); its last renewal, still waiting for a connection, got one when
    the database came back and extended the lease: the same server, starting again as
    a standby, then waited a whole further period for its own old lease (a trial)."""
    store = PostgresStore(url)
    lease = Lease(store, "A", "127.0.0.1:1", 30)
    assert lease.acquire() == 1
    real, gate = store.connection, threading.Event()

    def expires_at() -> Any:
        with real() as conn:
            return conn.execute("SELECT expires_at FROM leader_lease").fetchone()[0]

    @contextlib.contextmanager
    def waiting(timeout: float | None = None) -> Iterator[Any]:
        gate.wait(30)  # (as for a connection while the database is away)
        with real(timeout=timeout) as conn:
            yield conn

    before = expires_at()
    renewed: list[bool] = []
    with mock.patch.object(store, "connection", waiting):
        renewal = threading.Thread(target=lambda: renewed.append(lease.renew()))
        renewal.start()
        lease.given_up = True  # the server stepped down meanwhile (Leadership.give_up)
        gate.set()
        renewal.join(30)
    assert renewed == [False]
    assert expires_at() == before  # the lease still runs out when it would have
    assert lease.renew() is False  # (and so does any later one)
    store.close()


def test_of_two_standbys_only_one_takes_over(url: str) -> None:
    stores = [PostgresStore(url) for _ in range(4)]
    leases = [Lease(s, f"S{i}", f"h:{i}", 30) for i, s in enumerate(stores)]
    won: list[int | None] = [None] * 4
    barrier = threading.Barrier(4)

    def take(i: int) -> None:
        barrier.wait()
        won[i] = leases[i].acquire()

    threads = [threading.Thread(target=take, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(w for w in won if w is not None) == [1]
    for s in stores:
        s.close()


def test_writes_of_a_server_that_lost_the_lead_are_refused_and_nothing_lands(url: str) -> None:
    old, new = PostgresStore(url), PostgresStore(url)
    lease_old, lease_new = Lease(old, "old", "h:1", 0.05), Lease(new, "new", "h:2", 30)
    assert lease_old.acquire() == 1
    old.create_flow_run(FlowRunRow("r1", "etl", "1", 1, 1.0))
    old.commit(batch("r1", 1))
    # The old leader stalls past its lease; the standby takes over (epoch 2).
    expired(lease_new)
    assert lease_new.acquire() == 2
    # Everything the old leader tries now is refused in its own transaction.
    with pytest.raises(Fenced, match="lease epoch 1, and the lease is now at epoch 2"):
        old.commit(batch("r1", 2))
    with pytest.raises(Fenced):
        old.create_flow_run(FlowRunRow("r2", "etl", "1", 1, 2.0))
    with pytest.raises(Fenced):
        old.put_payload(iter([b"x"]), {"encoding": "json"}, 1)
    with pytest.raises(Fenced):
        old.put_flow("f", "d", b"g", "", 1.0)
    # A batch large enough to be several statements (one transaction) is refused whole.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_postgres_batch, "STATEMENT_ROWS", 2)
        large = WriteBatch(events=[RunEvent("r1", s, 2.0, "e", b"") for s in range(10, 17)])
        with pytest.raises(Fenced):
            old.commit(large)
    assert [e.seq for e in new.events("r1")] == [1]
    assert [r.id for r in new.list_flow_runs()] == ["r1"]
    # The new leader writes, and its journal rows carry its epoch.
    new.commit(batch("r1", 2))
    with new.connection() as conn:
        rows = conn.execute("SELECT seq, epoch FROM run_events ORDER BY seq").fetchall()
    assert rows == [(1, 1), (2, 2)]
    old.close()
    new.close()


def test_a_commit_statement_names_only_the_tables_its_batch_writes_and_still_fences(
    url: str,
) -> None:
    log = LogRow("r1", "t", 1, 1.0, "INFO", "user", "hello")
    query, args = _postgres_batch.statement(
        _postgres_batch.parameters(WriteBatch(logs=[log]), 1, 1)
    )
    assert "INSERT INTO logs" in query and "run_events" not in query and "task_runs" not in query
    assert args[0] == 1 and len(args) == 2 and "$2::jsonb" in query and "$3" not in query
    # A batch with rows for several tables numbers its placeholders in order.
    both = WriteBatch(logs=[log], events=[RunEvent("r1", 1, 1.0, "e", b"")])
    query, args = _postgres_batch.statement(_postgres_batch.parameters(both, 1, 7))
    assert len(args) == 4 and args[3] == 7 and "$3::jsonb" in query and "$4::int8" in query
    old, new = PostgresStore(url), PostgresStore(url)
    lease_old, lease_new = Lease(old, "old", "h:1", 0.05), Lease(new, "new", "h:2", 30)
    assert lease_old.acquire() == 1
    old.create_flow_run(FlowRunRow("r1", "etl", "1", 1, 1.0))
    old.commit(WriteBatch(logs=[log]))
    assert [r.message for r in new.logs("r1")] == ["hello"]
    expired(lease_new)
    assert lease_new.acquire() == 2
    # The old leader's writes are refused whichever tables they touch.
    for refused in (WriteBatch(logs=[log]), both):
        with pytest.raises(Fenced):
            old.commit(refused)
    assert [r.message for r in new.logs("r1")] == ["hello"]
    assert new.events("r1") == []
    old.close()
    new.close()


def test_a_takeover_waits_for_a_commit_under_way_then_fences_the_next(url: str) -> None:
    """The commit holds the lease row FOR SHARE; the takeover's UPDATE waits for it."""
    old, new = PostgresStore(url), PostgresStore(url)
    Lease(old, "old", "h:1", 0.01).acquire()
    old.create_flow_run(FlowRunRow("r1", "etl", "1", 1, 1.0))
    expired(Lease(new, "new", "h:2", 30))
    with old.connection() as conn, conn.transaction():
        conn.execute("SELECT epoch FROM leader_lease WHERE id = 1 FOR SHARE")
        taker = Lease(new, "new", "h:2", 30)
        result: list[int | None] = []
        thread = threading.Thread(target=lambda: result.append(taker.acquire()))
        thread.start()
        thread.join(0.5)
        assert thread.is_alive(), "the takeover must wait for the commit under way"
    thread.join(30)
    assert result == [2]
    with pytest.raises(Fenced):
        old.commit(batch("r1", 1))
    old.close()
    new.close()


def test_a_leader_stalled_in_a_commit_cannot_block_a_takeover(url: str) -> None:
    """A leader paused mid-commit (SIGSTOP, a frozen VM) holds the lease row FOR SHARE:
    PostgreSQL ends its idle transaction after ``stalled_transaction_timeout``, the
    standby takes over, and nothing the stalled commit wrote is stored."""
    import psycopg

    old = PostgresStore(url, stalled_transaction_timeout=0.5)
    new = PostgresStore(url)
    Lease(old, "old", "h:1", 0.01).acquire()
    old.create_flow_run(FlowRunRow("r1", "etl", "1", 1, 1.0))
    expired(Lease(new, "new", "h:2", 30))
    result: list[int | None] = []
    taker = Lease(new, "new", "h:2", 30)
    with pytest.raises(psycopg.Error), old.connection() as conn, conn.transaction():
        conn.execute("SELECT epoch FROM leader_lease WHERE id = 1 FOR SHARE")
        conn.execute("UPDATE flow_runs SET message = 'stalled' WHERE id = 'r1'")
        # The leader stalls here: it sends nothing more on this transaction.
        thread = threading.Thread(target=lambda: result.append(taker.acquire()))
        thread.start()
        thread.join(30)
        assert result == [2], "the standby took over while the leader was stalled"
    assert new.get_flow_run("r1").message == ""
    old.close()
    new.close()


def test_a_leader_stuck_inside_a_statement_is_ended_once_its_lease_runs_out(url: str) -> None:
    """A leader paused between two messages of one statement batch is not idle in
    transaction, so PostgreSQL's timeout never ends it (modelled by a session without
    that timeout): the standby's takeover waits a bounded time for the lease row, ends
    the sessions that lock it once the lease has run out, and leads at the next try.
    A leader whose lease has not run out is never touched."""
    import psycopg

    old, new = PostgresStore(url), PostgresStore(url)
    # 5 s: the first takeover below waits 1 s for the lock well within the lease.
    assert Lease(old, "old", "h:1", 5).acquire() == 1
    taker = Lease(new, "new", "h:2", 30)
    stuck = psycopg.connect(url)  # no idle-in-transaction timeout, like mid-pipeline
    try:
        stuck.execute("SELECT epoch FROM leader_lease WHERE id = 1 FOR SHARE")
        assert taker.acquire() is None  # the lease runs: the lock holder is left alone
        assert stuck.execute("SELECT 1").fetchone() == (1,)
        expired(taker)  # the leader renews no more
        assert taker.acquire() is None  # waited for the lock, then ended its holder
        with pytest.raises(psycopg.OperationalError):
            stuck.execute("SELECT 1")
        assert taker.acquire() == 2
    finally:
        stuck.close()
    with pytest.raises(Fenced):
        old.commit(batch("r1", 1))
    old.close()
    new.close()


def test_taking_the_lead_sweeps_uploads_a_dead_leader_left(url: str) -> None:
    from headwater.wire import CHUNK_SIZE

    dead = PostgresStore(url)
    writer = dead.begin_payload({"encoding": "json"}, CHUNK_SIZE * 2)
    writer.write(b"a" * CHUNK_SIZE)  # one chunk stored, then the leader dies
    dead.close()
    new = PostgresStore(url)
    assert new.stats()["payload_chunks"] == 1
    new.sweep_uploads()
    assert new.stats()["payload_chunks"] == 0
    new.close()


def test_a_run_created_meanwhile_with_the_same_idempotency_key_is_returned(url: str) -> None:
    """Creations run concurrently on PostgreSQL (``concurrent_writes``): a run with the
    same key inserted between this creation's lookup and its insert is returned (or
    refused as a Conflict with other parameters), not a unique-key error."""
    import psycopg

    store = PostgresStore(url)
    assert store.concurrent_writes
    for key, parameters, expect_conflict in (("k1", b"", False), ("k2", b"x", True)):
        other = psycopg.connect(url)  # a transaction of its own, left open for now
        other.execute(
            "INSERT INTO flow_runs (id, flow_name, flow_version, state, created_at, "
            "parameters, idempotency_key, result, message, trace_context, schedule_id, "
            "engine_version) VALUES (%s, 'etl', '1', 1, 1.0, %s, %s, '', '', '{}', '', '')",
            (f"first-{key}", parameters, key),
        )
        outcome: dict[str, Any] = {}

        def create(key: str = key, outcome: dict[str, Any] = outcome) -> None:
            try:
                outcome["value"] = store.create_flow_run(
                    FlowRunRow(f"second-{key}", "etl", "1", 1, 2.0, idempotency_key=key)
                )
            except Exception as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=create)
        thread.start()
        # The creation's lookup missed the uncommitted run; its insert now waits on the
        # key's index until that transaction ends.
        deadline = time.monotonic() + 30
        with psycopg.connect(url, autocommit=True) as watcher:
            while not watcher.execute("SELECT 1 FROM pg_locks WHERE NOT granted").fetchone():
                assert time.monotonic() < deadline, "the creation never waited on the key"
                time.sleep(0.01)
        other.commit()
        other.close()
        thread.join(30)
        if expect_conflict:
            assert isinstance(outcome.get("error"), Conflict), outcome
            assert f"first-{key}" in str(outcome["error"])
        else:
            row, created = outcome["value"]
            assert (row.id, created) == (f"first-{key}", False)
        assert [r.id for r in store.list_flow_runs() if r.idempotency_key == key] == [
            f"first-{key}"
        ]
    store.close()
