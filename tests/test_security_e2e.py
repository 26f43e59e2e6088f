"""Security end to end with real subprocesses: a server with mutual TLS, a Python and a
Node.js worker that authenticate with a client certificate mapped to the worker role,
large values moving through the payload service under worker least privilege, the
certificate renewed with SIGHUP while the workers stay connected (the web UI's HTTPS
port, mutual TLS too, takes the new certificate with it), and named tokens
created, used and revoked with ``headwater tokens`` (offline and online)."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import ssl
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from e2e_helpers import BOUND, NODE_WORKER, Cluster, node_worker_args, poll, start_server
from tls_certs import Certs, make_certs

from headwater import Client, ServerError
from headwater._loader import load_file
from headwater.wire import FlowRunState

pytestmark = pytest.mark.e2e

FLOWS = """
import hashlib
from headwater import flow, remote_task, task

digest = remote_task("blob.digest", parameters=["data"])
nobody = remote_task("no.such.worker")

@task
def make_blob(mib: float) -> bytes:
    return bytes(i % 251 for i in range(int(mib * (1 << 20))))

@task
def check(blob: bytes, report: dict) -> list:
    return [report["sha256"] == hashlib.sha256(blob).hexdigest(), report["size"]]

@flow
def big(mib: float = 1.5) -> list:
    blob = make_blob(mib)
    return check(blob, digest(blob))

@flow
def stuck() -> None:
    nobody()
"""


def headwater(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a short ``headwater`` command to its end."""
    return subprocess.run(
        [sys.executable, "-m", "headwater._cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=BOUND,
        check=False,
    )


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "sec_flows.py").write_text(textwrap.dedent(FLOWS))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
    return {**clean, "PYTHONPATH": os.pathsep.join([str(tmp_path), clean.get("PYTHONPATH", "")])}


@pytest.fixture
def cluster(env: dict[str, str]) -> Iterator[Cluster]:
    procs = Cluster(env)
    yield procs
    procs.stop()


def create_token(db: str | Path, role: str, name: str, env: dict[str, str], *extra: str) -> str:
    done = headwater(
        "tokens", "create", "--db", str(db), "--role", role, "--name", name, *extra, env=env
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def https_status(port: int, path: str, ca: str, client: Any, token: str | None = None) -> int:
    """GET ``path`` on the web UI's HTTPS port (with a client certificate when given)."""
    context = ssl.create_default_context(cafile=ca)
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=BOUND)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_mutual_tls_workers_large_values_and_a_certificate_renewed_on_sighup(
    tmp_path: Path, env: dict[str, str], cluster: Cluster
) -> None:
    certs: Certs = make_certs(tmp_path / "certs")
    # The server's files, replaced later by a certificate from another CA.
    served = Path(tmp_path / "served")
    served.mkdir()
    shutil.copy(certs.server.cert, served / "server.crt")
    shutil.copy(certs.server.key, served / "server.key")
    db = tmp_path / "hw.db"
    admin = create_token(db, "admin", "ops", env)
    assert admin.startswith("hwt_")
    subject = create_token(db, "worker", "worker-1", env, "--subject", "CN=worker-1")
    assert subject == ""  # a certificate credential has no token

    server = cluster(
        "server", "--port", "0", "--db", str(db),
        "--tls-cert", str(served / "server.crt"), "--tls-key", str(served / "server.key"),
        "--tls-client-ca", certs.client_ca,
    )  # fmt: skip
    address = server.wait_line("headwater server listening on").rsplit(" ", 1)[1]
    ui = server.wait_line("headwater web UI on").rsplit(" ", 1)[1]
    assert ui.startswith("https://127.0.0.1:")  # the same certificate serves the web UI
    ui_port = int(ui.rstrip("/").rsplit(":", 1)[1])
    assert https_status(ui_port, "/healthz", certs.ca, certs.viewer_client) == 200
    with pytest.raises((ssl.SSLError, OSError)):  # mutual TLS on the HTTP port too
        https_status(ui_port, "/healthz", certs.ca, None)
    assert https_status(ui_port, "/api/runs", certs.ca, certs.viewer_client, admin) == 200
    assert https_status(ui_port, "/api/runs", certs.ca, certs.viewer_client) == 401
    tls_flags = [
        "--tls-ca",
        certs.ca,
        "--tls-cert",
        certs.client.cert,
        "--tls-key",
        certs.client.key,
    ]
    python = cluster(
        "worker", "--server", address, "--module", "sec_flows", "--name", "py", *tls_flags
    )
    python.wait_line("connected to")
    node_env = {
        "HEADWATER_TLS_CA": certs.ca,
        "HEADWATER_TLS_CERT": certs.client.cert,
        "HEADWATER_TLS_KEY": certs.client.key,
    }
    node = cluster.spawn(node_worker_args(address, "node", "--slots", "1"), "stderr", node_env)
    node.wait_line("connected to")
    flows: Any = load_file(str(tmp_path / "sec_flows.py"))

    def client(ca: str) -> Client:
        # The server wants a client certificate from everyone; the token is the credential.
        pair = certs.viewer_client
        return Client(address, token=admin, tls_ca=ca, tls_cert=pair.cert, tls_key=pair.key)

    # 1.5 MiB out of Python, into Node and back: every worker download is of an input
    # of an attempt it holds (worker least privilege), and both workers' uploads work.
    with client(certs.ca) as ops:
        final = ops.wait(ops.run(flows.big, {"mib": 1.5}).id)
        assert final.state is FlowRunState.SUCCESS, final.message
        assert final.result == [True, int(1.5 * (1 << 20))]
        first_run = final.id

    # The CLI shows who ran it.
    shown = headwater("runs", "show", first_run, "--server", address, "--token", admin,
                      "--tls-ca", certs.ca, "--tls-cert", certs.viewer_client.cert,
                      "--tls-key", certs.viewer_client.key, env=env)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "run by ops (big:1)" in shown.stdout

    # Renew the certificate (now from another CA) and tell the server with SIGHUP.
    shutil.copy(certs.other_server.cert, served / "server.crt")
    shutil.copy(certs.other_server.key, served / "server.key")
    server.popen.send_signal(signal.SIGHUP)

    def renewed() -> bool:
        try:
            with client(certs.other_ca) as fresh:
                fresh.server_info()
            return True
        except ServerError:
            return False

    poll(renewed, "new connections to see the renewed certificate")
    poll(
        lambda: any(
            "SIGHUP: reloaded the TLS certificate" in x for x in server.other + server.lines
        ),
        "the server to say it reloaded the certificate",
    )
    # The web UI's HTTPS port took the new certificate with the same SIGHUP.
    assert https_status(ui_port, "/healthz", certs.other_ca, certs.viewer_client) == 200
    with pytest.raises(ssl.SSLCertVerificationError):
        https_status(ui_port, "/healthz", certs.ca, certs.viewer_client)
    with client(certs.ca) as stale, pytest.raises(ServerError, match="certificate verify failed"):
        stale.server_info()
    # The workers kept their streams (they trust only the old CA: a reconnect would fail)
    # and still run tasks.
    with client(certs.other_ca) as ops:
        final = ops.wait(ops.run(flows.big, {"mib": 1.2}).id)
        assert final.state is FlowRunState.SUCCESS, final.message
    for worker in (python, node):
        lines = [*worker.lines, *worker.other]
        assert not [
            line for line in lines if "lost the connection" in line or "reconnect" in line
        ], lines


def test_named_tokens_roles_audit_and_revocation_without_restart(
    tmp_path: Path, env: dict[str, str], cluster: Cluster, db: str
) -> None:
    # ``db``: SQLite and PostgreSQL (``headwater tokens --db`` works on either).
    admin = create_token(db, "admin", "root", env)
    _, address = start_server(cluster, db)
    online = ["--server", address, "--token", admin]

    def create(role: str, name: str) -> str:
        done = headwater("tokens", "create", "--role", role, "--name", name, *online, env=env)
        assert done.returncode == 0, done.stderr
        assert "shown only this once" in done.stderr
        return done.stdout.strip()

    operator, viewer, worker = (
        create("operator", "op"),
        create("viewer", "v"),
        create("worker", "w"),
    )
    listed = headwater("tokens", "list", *online, env=env)
    assert [line.split()[:2] for line in listed.stdout.splitlines()] == [
        ["root", "admin"], ["op", "operator"], ["v", "viewer"], ["w", "worker"],
    ]  # fmt: skip
    assert "sha" not in listed.stdout and admin not in listed.stdout  # secrets never shown
    # A viewer may not create tokens, nor cancel.
    denied = headwater("tokens", "create", "--role", "admin", "--name", "x", "--server", address,
                       "--token", viewer, env=env)  # fmt: skip
    assert denied.returncode == 2  # (a refusal, as README says: 1 is "the run failed")
    anonymous = headwater("runs", "list", "--server", address, env=env)
    assert anonymous.returncode == 2 and "refused the credential" in anonymous.stderr
    assert (
        "credential 'v' (role viewer) may not call AccessService/CreateCredential" in denied.stderr
    )

    flows: Any = load_file(str(tmp_path / "sec_flows.py"))
    with Client(address, token=operator) as op:
        run = op.run(flows.stuck)  # no worker serves it: it waits
        op.cancel(run.id, "not needed")
        audit = op.get(run.id).audit
    assert [(a.action, a.actor, a.detail) for a in audit] == [
        ("run", "op", "stuck:1"),
        ("cancel", "op", "not needed"),
    ]
    shown = headwater("runs", "show", run.id, "--server", address, "--token", viewer, env=env)
    assert "run by op (stuck:1)" in shown.stdout and "cancel by op (not needed)" in shown.stdout
    cancel = headwater("runs", "cancel", run.id, "--server", address, "--token", viewer, env=env)
    assert cancel.returncode == 2 and "PERMISSION" not in cancel.stderr
    assert (
        "credential 'v' (role viewer) may not call ControlPlaneService/CancelFlowRun"
        in cancel.stderr
    )

    # A worker with a worker token connects; revoking the token online ends its stream,
    # and its reconnect is refused for good.
    python = cluster("worker", "--server", address, "--module", "sec_flows", "--name", "w1",
                     "--token", worker)  # fmt: skip
    python.wait_line("connected to")
    revoked = headwater("tokens", "revoke", "w", *online, env=env)
    assert revoked.returncode == 0 and "REVOKED" in revoked.stdout
    assert python.wait() == 2  # (refused for good, as a refused request)
    python.wait_line("the token of credential 'w' was revoked")

    # Revoked offline, on the database, while the server runs: refused within a second.
    assert headwater("tokens", "revoke", "v", "--db", str(db), env=env).returncode == 0

    def refused() -> bool:
        try:
            with Client(address, token=viewer) as v:
                v.list_runs()
            return False
        except ServerError as exc:
            assert exc.code == grpc.StatusCode.UNAUTHENTICATED
            return "the token of credential 'v' was revoked" in str(exc)

    poll(refused, "the offline revocation to reach the server")
    everything = headwater("tokens", "list", "--all", "--db", str(db), env=env)
    assert sum("REVOKED" in line for line in everything.stdout.splitlines()) == 2
    assert NODE_WORKER.is_dir()
