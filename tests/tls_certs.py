"""Certificates made for the TLS tests (trustme): a CA, the server's certificate for
127.0.0.1 and localhost, client certificates, and the bad ones (another CA, expired)."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class Pair:
    """A certificate and its key, as PEM files."""

    cert: str
    key: str


@dataclass(frozen=True)
class Certs:
    """Every file a TLS test needs."""

    ca: str  # the CA that signs the server's (and the clients') certificates
    server: Pair
    other_ca: str  # a CA that signed nothing here
    other_server: Pair  # signed by other_ca
    expired_server: Pair  # signed by ca, expired yesterday
    elsewhere_server: Pair  # signed by ca, for another host only (not 127.0.0.1)
    client_ca: str
    client: Pair  # CN=worker-1, signed by client_ca
    viewer_client: Pair  # CN=viewer-1, signed by client_ca
    unmapped_client: Pair  # CN=stranger, signed by client_ca
    foreign_client: Pair  # CN=worker-1, signed by other_ca
    expired_client: Pair  # CN=worker-1, signed by client_ca, expired


def _pair(cert: trustme.LeafCert, folder: Path, name: str) -> Pair:
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    return Pair(str(cert_path), str(key_path))


def make_certs(folder: Path) -> Certs:
    """Write the certificates into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, other, clients = trustme.CA(), trustme.CA(), trustme.CA()
    for authority, name in ((ca, "ca"), (other, "other-ca"), (clients, "client-ca")):
        authority.cert_pem.write_to_path(str(folder / f"{name}.pem"))
    now = datetime.datetime.now(datetime.UTC)
    past = now - datetime.timedelta(days=30)
    yesterday = now - datetime.timedelta(days=1)
    hosts = ("127.0.0.1", "localhost")
    return Certs(
        ca=str(folder / "ca.pem"),
        server=_pair(ca.issue_cert(*hosts), folder, "server"),
        other_ca=str(folder / "other-ca.pem"),
        other_server=_pair(other.issue_cert(*hosts), folder, "other-server"),
        expired_server=_pair(
            ca.issue_cert(*hosts, not_before=past, not_after=yesterday), folder, "expired"
        ),
        elsewhere_server=_pair(ca.issue_cert("elsewhere.example"), folder, "elsewhere"),
        client_ca=str(folder / "client-ca.pem"),
        client=_pair(clients.issue_cert(common_name="worker-1"), folder, "client"),
        viewer_client=_pair(clients.issue_cert(common_name="viewer-1"), folder, "viewer"),
        unmapped_client=_pair(clients.issue_cert(common_name="stranger"), folder, "stranger"),
        foreign_client=_pair(other.issue_cert(common_name="worker-1"), folder, "foreign"),
        expired_client=_pair(
            clients.issue_cert(common_name="worker-1", not_before=past, not_after=yesterday),
            folder,
            "expired-client",
        ),
    )
