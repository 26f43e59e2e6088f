"""TLS and mutual TLS against an in-process server, with certificates made here: the
right CA works; a plaintext client, a wrong CA, an expired certificate, a missing or
foreign client certificate fail with UNAVAILABLE and a line that says why; a client
certificate's subject stands in for a token, with its role."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from tls_certs import Certs, make_certs

from headwater import Client, ServerError
from headwater._cli import build_parser, main
from headwater.wire import TLSConfigError
from headwater_runtime.server import new_credential, start_server
from headwater_runtime.server._core import ServerSettings
from headwater_runtime.store import SQLiteStore

ADMIN = "admin-token"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def serve(tmp_path: Path, body: Callable[[str], Any], **settings: Any) -> Any:
    """Run ``body(address)`` in a thread (it makes blocking Client calls) while an
    in-process server with ``settings`` serves."""

    async def main() -> Any:
        running = await start_server(
            ServerSettings(port=0, db=str(tmp_path / "hw.db"), token=ADMIN, **settings)
        )
        try:
            return await asyncio.wait_for(asyncio.to_thread(body, f"127.0.0.1:{running.port}"), 60)
        finally:
            await asyncio.wait_for(running.stop(None), 30)

    return asyncio.run(main())


def refusal(call: Callable[[], Awaitable[Any] | Any]) -> ServerError:
    with pytest.raises(ServerError) as caught:
        call()
    return caught.value


def tls_server(certs: Certs, cert: Any = None) -> dict[str, Any]:
    pair = cert or certs.server
    return {"tls_cert": pair.cert, "tls_key": pair.key}


def test_a_client_with_the_ca_speaks_tls(tmp_path: Path, certs: Certs) -> None:
    def body(address: str) -> None:
        with Client(address, token=ADMIN, tls_ca=certs.ca) as client:
            assert client.server_info()["protocol_version"] == 1
            assert client.list_runs() == []

    serve(tmp_path, body, **tls_server(certs))


def test_a_plaintext_client_is_told_the_server_speaks_tls(tmp_path: Path, certs: Certs) -> None:
    def body(address: str) -> None:
        with Client(address, token=ADMIN) as client:
            error = refusal(client.server_info)
        assert error.code == grpc.StatusCode.UNAVAILABLE
        assert f"the server at {address} speaks TLS: pass --tls-ca FILE" in str(error)
        # and what a Client's user gives instead (a user trial)
        assert "in Python Client(tls_ca=...) or Client(tls=True))" in str(error)

    serve(tmp_path, body, **tls_server(certs))


def test_the_server_command_does_not_log_grpcs_own_lines_for_failed_handshakes(
    tmp_path: Path, certs: Certs
) -> None:
    """gRPC's core printed ``I... Handshake failed`` on stderr for every plaintext
    client, whatever --log-level said (the command now sets GRPC_VERBOSITY=ERROR
    before grpc loads, unless the environment sets it)."""
    env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
    tls = ["--tls-cert", certs.server.cert, "--tls-key", certs.server.key]
    where = ["--port", "0", "--no-http", "--db", str(tmp_path / "hw.db")]
    server = subprocess.Popen(
        [sys.executable, "-m", "headwater._cli", "server", *where, *tls],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()  # bounded: the test's timeout
        address = line.split("listening on ", 1)[1].split()[0]
        with (
            grpc.insecure_channel(address) as channel,
            contextlib.suppress(grpc.FutureTimeoutError),
        ):
            grpc.channel_ready_future(channel).result(timeout=1.0)
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    # (The oldest supported grpcio logs the failure as an error, "E...": that stays.)
    informational = [x for x in err.splitlines() if x.startswith("I") and "Handshake" in x]
    assert not informational, err


def test_a_tls_client_is_told_the_server_is_plaintext(tmp_path: Path, certs: Certs) -> None:
    def body(address: str) -> None:
        with Client(address, token=ADMIN, tls_ca=certs.ca) as client:
            error = refusal(client.server_info)
        assert error.code == grpc.StatusCode.UNAVAILABLE
        assert f"the server at {address} does not speak TLS" in str(error)

    serve(tmp_path, body)


def test_the_node_worker_is_told_of_a_tls_mismatch_as_the_python_one(
    tmp_path: Path, certs: Certs
) -> None:
    """The Node.js worker names the flag to pass when it speaks plaintext to a TLS
    server, or TLS to a plaintext one; it said "Failed to connect" with an empty note,
    or "wrong version number", retrying for good (a trial)."""
    from e2e_helpers import node_worker_args

    def told(address: str, *flags: str) -> str:
        node = subprocess.Popen(
            node_worker_args(address, "mismatched", *flags),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert node.stderr is not None
            return node.stderr.readline()  # its first "cannot connect" line (bounded)
        finally:
            node.kill()
            node.communicate(timeout=30)

    def plaintext_worker(address: str) -> None:
        line = told(address)
        assert f"cannot connect to {address} (the server at {address} speaks TLS: pass" in line
        assert "--tls-ca FILE" in line, line

    def tls_worker(address: str) -> None:
        line = told(address, "--tls-ca", certs.ca)
        assert f"(the server at {address} does not speak TLS: drop --tls/--tls-ca" in line, line

    serve(tmp_path, plaintext_worker, **tls_server(certs))
    serve(tmp_path, tls_worker)


def test_a_certificate_from_another_ca_is_refused(tmp_path: Path, certs: Certs) -> None:
    def body(address: str) -> None:
        with Client(address, token=ADMIN, tls_ca=certs.other_ca) as client:
            error = refusal(client.server_info)
        assert error.code == grpc.StatusCode.UNAVAILABLE
        assert "certificate verify failed: unable to get local issuer certificate" in str(error)

    serve(tmp_path, body, **tls_server(certs))


def test_a_certificate_for_another_host_says_what_to_fix(tmp_path: Path, certs: Certs) -> None:
    """A certificate without the dialled address in its subjectAltName: the fix is the
    certificate, not --tls-ca (the hint a user trial followed in vain)."""

    def body(address: str) -> None:
        with Client(address, token=ADMIN, tls_ca=certs.ca) as client:
            error = refusal(client.server_info)
        assert error.code == grpc.StatusCode.UNAVAILABLE
        assert "IP address mismatch" in str(error), str(error)
        assert (
            "the server's certificate must name the host or IP address clients dial "
            "(subjectAltName)" in str(error)
        )
        assert "check --tls-ca" not in str(error)

    serve(tmp_path, body, **tls_server(certs, certs.elsewhere_server))


def test_tls_without_a_ca_verifies_the_server_with_the_system_roots(
    tmp_path: Path, certs: Certs
) -> None:
    # The test CA is in no system store: --tls alone must refuse this server.
    def body(address: str) -> None:
        with Client(address, token=ADMIN, tls=True) as client:
            assert client.tls.on and client.tls.ca is None
            error = refusal(client.server_info)
        assert error.code == grpc.StatusCode.UNAVAILABLE
        assert "certificate verify failed" in str(error)

    serve(tmp_path, body, **tls_server(certs))


def test_an_expired_server_certificate_is_refused(tmp_path: Path, certs: Certs) -> None:
    def body(address: str) -> None:
        with Client(address, token=ADMIN, tls_ca=certs.ca) as client:
            error = refusal(client.server_info)
        assert error.code == grpc.StatusCode.UNAVAILABLE
        assert "certificate verify failed: certificate has expired" in str(error)

    serve(tmp_path, body, **tls_server(certs, certs.expired_server))


def test_unusable_tls_files_are_one_line_errors(tmp_path: Path, certs: Certs) -> None:
    with pytest.raises(TLSConfigError, match="cannot read the CA certificate"):
        Client("127.0.0.1:1", tls_ca=str(tmp_path / "missing.pem"))
    with pytest.raises(TLSConfigError, match="needs both --tls-cert and --tls-key"):
        Client("127.0.0.1:1", tls_cert=certs.client.cert)
    mismatched = {"tls_cert": certs.server.cert, "tls_key": certs.other_server.key}
    with pytest.raises(TLSConfigError, match="cannot be used together"):
        serve(tmp_path, lambda address: None, **mismatched)
    # A client's pair too: gRPC took it, logged its own lines at each attempt, and the
    # server read as unreachable (exit 3; a worker retried for ever: a user trial).
    with pytest.raises(TLSConfigError) as refused:
        Client(
            "127.0.0.1:1",
            tls_ca=certs.ca,
            tls_cert=certs.client.cert,
            tls_key=certs.other_server.key,
        )
    assert str(refused.value) == (
        f"the certificate {certs.client.cert!r} (--tls-cert) and the key "
        f"{certs.other_server.key!r} (--tls-key) cannot be used together "
        "(KEY_VALUES_MISMATCH): the key must be the certificate's"
    )


# ------------------------------------------------------------------- mutual TLS


def mutual(tmp_path: Path, certs: Certs) -> dict[str, Any]:
    """Settings for a server that requires client certificates, with CN=worker-1
    mapped to the worker role and CN=viewer-1 to viewer."""
    store = SQLiteStore(tmp_path / "hw.db")
    for name, role, subject in (
        ("worker-1", "worker", "CN=worker-1"),
        ("viewer-1", "viewer", "CN=viewer-1"),
    ):
        row, token = new_credential(name, role, subject=subject, created_by="test", now=time.time())
        assert token == ""  # a certificate credential has no token
        store.add_credential(row)
    store.close()
    return {**tls_server(certs), "tls_client_ca": certs.client_ca}


def test_mutual_tls_refuses_a_client_without_a_certificate(tmp_path: Path, certs: Certs) -> None:
    def body(address: str) -> None:
        with Client(address, token=ADMIN, tls_ca=certs.ca) as client:
            error = refusal(client.server_info)
        assert error.code == grpc.StatusCode.UNAVAILABLE
        assert "requires a client certificate (mutual TLS): pass --tls-cert and --tls-key" in str(
            error
        )

    serve(tmp_path, body, **mutual(tmp_path, certs))


@pytest.mark.parametrize("which", ["foreign_client", "expired_client"])
def test_mutual_tls_refuses_a_foreign_or_expired_client_certificate(
    tmp_path: Path, certs: Certs, which: str
) -> None:
    pair = getattr(certs, which)

    def body(address: str) -> None:
        with Client(
            address, token=ADMIN, tls_ca=certs.ca, tls_cert=pair.cert, tls_key=pair.key
        ) as client:
            error = refusal(client.server_info)
        assert error.code == grpc.StatusCode.UNAVAILABLE
        assert "refused this client certificate" in str(error)

    serve(tmp_path, body, **mutual(tmp_path, certs))


def test_a_certificate_subject_stands_in_for_a_token_with_its_role(
    tmp_path: Path, certs: Certs
) -> None:
    def client(pair: Any, token: str | None = None) -> Client:
        return Client(
            address_of[0], token=token, tls_ca=certs.ca, tls_cert=pair.cert, tls_key=pair.key
        )

    address_of: list[str] = []

    def body(address: str) -> None:
        address_of.append(address)
        with client(certs.viewer_client) as viewer:
            assert viewer.list_runs() == []  # the viewer role reads
            error = refusal(lambda: viewer.cancel("nope"))
            assert error.code == grpc.StatusCode.PERMISSION_DENIED
            assert "credential 'viewer-1' (role viewer) may not call" in str(error)
        with client(certs.client) as worker:
            error = refusal(worker.list_runs)  # the worker role does not read runs
            assert error.code == grpc.StatusCode.PERMISSION_DENIED
            assert "credential 'worker-1' (role worker)" in str(error)
        with client(certs.unmapped_client) as stranger:
            error = refusal(stranger.list_runs)
            assert error.code == grpc.StatusCode.UNAUTHENTICATED
            assert "subject 'CN=stranger" in str(error) and "is not mapped" in str(error)
        # A token, when one is sent, is the credential (the certificate only opens TLS).
        with client(certs.unmapped_client, token=ADMIN) as admin:
            assert admin.list_runs() == []

    serve(tmp_path, body, **mutual(tmp_path, certs))


def _commands(parser: argparse.ArgumentParser, path: str = "headwater") -> Any:
    """Every command and subcommand of the CLI, with its name."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, f"{path} {name}")


def test_every_command_that_talks_to_a_server_takes_the_tls_flags() -> None:
    tls_flags = {"--tls", "--tls-ca", "--tls-cert", "--tls-key"}
    missing = [
        name
        for name, parser in _commands(build_parser())
        if "--server" in parser._option_string_actions
        and not tls_flags <= set(parser._option_string_actions)
    ]
    assert not missing, f"commands with --server but without the TLS flags: {missing}"


def test_the_operations_commands_speak_tls_with_tls_ca(
    tmp_path: Path, certs: Certs, capsys: pytest.CaptureFixture[str]
) -> None:
    def cli(*argv: str) -> object:
        try:
            return main(list(argv))
        except SystemExit as exit_:  # a flag argparse does not know
            return exit_.code

    def body(address: str) -> list[object]:
        common = ["--server", address, "--token", ADMIN, "--tls-ca", certs.ca]
        return [
            cli("limits", "set", "db", "--concurrency", "2", *common),
            cli("limits", "list", *common),
            cli("workers", "list", *common),
            cli("webhooks", "list", *common),
        ]

    assert serve(tmp_path, body, **tls_server(certs)) == [0, 0, 0, 0]
    assert "db  concurrency 2" in capsys.readouterr().out
