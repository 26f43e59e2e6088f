"""The store's credentials and audit tables (SQLite): names unique among valid
credentials, revocation, the generation counter a server polls, audit entries kept
with their run and pruned with it."""

from __future__ import annotations

from pathlib import Path

import pytest

from headwater.wire import FlowRunState
from headwater_runtime.server import hash_token, new_credential
from headwater_runtime.store import AuditRow, Conflict, FlowRunRow, NotFound, SQLiteStore


def test_credentials_are_stored_hashed_unique_and_revocable(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "hw.db")
    generation = store.credentials_generation()
    row, token = new_credential("ci", "operator", created_by="root", now=10.0)
    store.add_credential(row)
    assert row.secret_hash == hash_token(token) and token not in row.secret_hash
    assert store.credentials_generation() > generation
    with pytest.raises(Conflict, match="a valid credential is already called 'ci'"):
        store.add_credential(new_credential("ci", "viewer", created_by="root", now=11.0)[0])
    cert, none = new_credential("w1", "worker", subject="CN=w1", created_by="root", now=12.0)
    assert none == "" and cert.secret_hash == ""
    store.add_credential(cert)
    with pytest.raises(Conflict, match=r"\('w1'\) already has the subject 'CN=w1'"):
        store.add_credential(
            new_credential("w2", "worker", subject="CN=w1", created_by="r", now=13)[0]
        )
    revoked = store.revoke_credential("ci", 20.0)
    assert revoked.revoked_at == 20.0 and revoked.role == "operator"
    with pytest.raises(NotFound, match="no valid credential is called 'ci'"):
        store.revoke_credential("ci", 21.0)
    assert [c.name for c in store.list_credentials()] == ["w1"]
    assert [c.name for c in store.list_credentials(include_revoked=True)] == ["ci", "w1"]
    # The name is free again once its credential is revoked.
    store.add_credential(new_credential("ci", "viewer", created_by="root", now=30.0)[0])
    with pytest.raises(ValueError, match="unknown role 'boss'"):
        new_credential("x", "boss", created_by="root", now=1.0)
    store.close()


def test_audit_entries_newest_first_by_object(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "hw.db")
    store.add_audit(AuditRow(1.0, "op", "run", "flow_run", "r1", "etl:1"))
    store.add_audit(AuditRow(2.0, "op", "deploy", "flow", "etl:2"))
    store.add_audit(AuditRow(3.0, "admin", "cancel", "flow_run", "r1", "why"))
    assert [a.action for a in store.audit_entries("flow_run", "r1")] == ["cancel", "run"]
    assert [a.object_id for a in store.audit_entries(limit=2)] == ["r1", "etl:2"]
    assert [a.actor for a in store.audit_entries("flow")] == ["op"]
    # Pruning a finished run deletes its entries, and only its.
    ended = FlowRunRow("r1", "etl", "1", FlowRunState.SUCCESS.value, 1.0, ended_at=2.0)
    store.create_flow_run(ended)
    assert store.prune(5.0, 10.0, grace=0.0).runs == 1
    assert store.audit_entries("flow_run", "r1") == []
    assert [a.action for a in store.audit_entries()] == ["deploy"]
    store.close()
