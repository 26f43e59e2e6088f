"""Connection flags shared by the commands that talk to a server: TLS and mTLS."""

from __future__ import annotations

import argparse
from typing import Any

from headwater.wire import TLSConfigError, TLSSettings

from ._client import Client
from ._errors import UsageError


def add_tls_args(parser: Any) -> None:
    """Add --tls, --tls-ca, --tls-cert and --tls-key to a command."""
    parser.add_argument(
        "--tls",
        action="store_true",
        default=None,
        help="speak TLS, verifying the server with the system's roots (or HEADWATER_TLS=1)",
    )
    parser.add_argument(
        "--tls-ca",
        default=None,
        metavar="FILE",
        help="speak TLS, verifying the server with this CA certificate (PEM; or HEADWATER_TLS_CA)",
    )
    parser.add_argument(
        "--tls-cert",
        default=None,
        metavar="FILE",
        help="client certificate (PEM) for a server that requires one (mutual TLS; or "
        "HEADWATER_TLS_CERT)",
    )
    parser.add_argument(
        "--tls-key",
        default=None,
        metavar="FILE",
        help="the client certificate's private key (PEM; or HEADWATER_TLS_KEY)",
    )


def tls_from_args(args: argparse.Namespace) -> TLSSettings:
    """The TLS settings of a command: its flags, then the HEADWATER_TLS* variables."""
    tls = TLSSettings.from_env(
        enabled=getattr(args, "tls", None),
        ca=getattr(args, "tls_ca", None),
        cert=getattr(args, "tls_cert", None),
        key=getattr(args, "tls_key", None),
    )
    if bool(tls.cert) != bool(tls.key):
        raise UsageError("a client certificate needs both --tls-cert and --tls-key")
    return tls


def connect(args: argparse.Namespace, address: str) -> Client:
    """A Client for a command's --server, --token and TLS flags."""
    tls = tls_from_args(args)
    try:
        return Client(
            address,
            token=getattr(args, "token", None),
            tls=tls.enabled,
            tls_ca=tls.ca,
            tls_cert=tls.cert,
            tls_key=tls.key,
        )
    except TLSConfigError as exc:
        raise UsageError(str(exc)) from None
