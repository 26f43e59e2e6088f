"""Secure channels for clients and workers, and one clear line when a connection fails.

gRPC reports a failed TLS handshake, or a plaintext client talking to a TLS server, as
UNAVAILABLE with a generic text ("Socket closed", "Ssl handshake failed"). When a call
fails that way, ``explain_unreachable`` repeats the handshake with Python's ``ssl``
module (bounded by a short timeout) to say what is wrong and how to fix it: the server
speaks TLS and the client did not, a certificate failed verification (and why: expired,
unknown CA, wrong host), or the server wants a client certificate.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from ._settings import ENV_TLS, ENV_TLS_CA, TLSSettings

#: How long the diagnosing handshake may take.
PROBE_TIMEOUT = 3.0


class TLSConfigError(ValueError):
    """A TLS setting names a file that cannot be used (one line naming it)."""


def read_pem(path: str, what: str) -> bytes:
    """The bytes of a PEM file; TLSConfigError naming the flag when it cannot be read."""
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise TLSConfigError(f"cannot read the {what} {path!r}: {exc.strerror}") from None
    if b"-----BEGIN" not in data:
        raise TLSConfigError(f"the {what} {path!r} is not a PEM file")
    return data


def channel_credentials(tls: TLSSettings) -> grpc.ChannelCredentials:
    """gRPC channel credentials for ``tls`` (the system roots when it names no CA)."""
    if bool(tls.cert) != bool(tls.key):
        raise TLSConfigError("a client certificate needs both --tls-cert and --tls-key")
    root = read_pem(tls.ca, "CA certificate (--tls-ca)") if tls.ca else None
    key = read_pem(tls.key, "private key (--tls-key)") if tls.key else None
    chain = read_pem(tls.cert, "certificate (--tls-cert)") if tls.cert else None
    if tls.cert and tls.key:
        _check_pair(tls.cert, tls.key)
    return grpc.ssl_channel_credentials(
        root_certificates=root, private_key=key, certificate_chain=chain
    )


def _check_pair(cert: str, key: str) -> None:
    """TLSConfigError when a client certificate and key cannot be used together: gRPC
    took them, logged its own lines at every connection attempt, and the command read
    the server as unreachable (exit 3; a worker retried for ever: a user trial). Both
    files were read as PEM (``read_pem``) first."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(str(Path(cert).expanduser()), str(Path(key).expanduser()))
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        raise TLSConfigError(
            f"the certificate {cert!r} (--tls-cert) and the key {key!r} (--tls-key) cannot "
            f"be used together ({reason}): the key must be the certificate's"
        ) from None


def open_channel(
    address: str, tls: TLSSettings, options: Sequence[tuple[str, Any]] = ()
) -> grpc.Channel:
    """A synchronous channel to ``address``: TLS when ``tls.on``, else plaintext."""
    if not tls.on:
        return grpc.insecure_channel(address, options=list(options))
    return grpc.secure_channel(address, channel_credentials(tls), options=list(options))


def open_aio_channel(
    address: str, tls: TLSSettings, options: Sequence[tuple[str, Any]] = ()
) -> grpc.aio.Channel:
    """An asyncio channel to ``address``: TLS when ``tls.on``, else plaintext."""
    if not tls.on:
        return grpc.aio.insecure_channel(address, options=list(options))
    return grpc.aio.secure_channel(address, channel_credentials(tls), options=list(options))


def _host_port(address: str) -> tuple[str, int] | None:
    target = address.removeprefix("dns:///").removeprefix("ipv4:").removeprefix("ipv6:")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def _client_context(tls: TLSSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(Path(tls.ca).expanduser()) if tls.ca else None)
    if tls.cert and tls.key:
        context.load_cert_chain(str(Path(tls.cert).expanduser()), str(Path(tls.key).expanduser()))
    context.set_alpn_protocols(["h2"])
    return context


def explain_unreachable(address: str, tls: TLSSettings) -> str | None:
    """Why a call to ``address`` could not connect, as one line with the fix; None when
    the cause is not a TLS mismatch or a certificate (e.g. nothing listens there)."""
    where = _host_port(address)
    if where is None:
        return None
    host, port = where
    try:
        raw = socket.create_connection((host, port), timeout=PROBE_TIMEOUT)
    except OSError:
        return None  # not a TLS problem: the caller's generic message fits
    with raw:
        if not tls.on:
            return _probe_plaintext(raw, address, host)
        try:
            context = _client_context(tls)
        except (OSError, ssl.SSLError) as exc:
            return f"cannot use the TLS files given for {address}: {exc}"
        return _probe_tls(raw, context, address, host, tls)


def _probe_plaintext(raw: socket.socket, address: str, host: str) -> str | None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with context.wrap_socket(raw, server_hostname=host):
            pass
    except (OSError, ssl.SSLError):
        return None  # it does not speak TLS either
    return (
        f"the server at {address} speaks TLS: pass --tls-ca FILE with the CA that signed "
        f"its certificate (or --tls for the system's roots; {ENV_TLS_CA} / {ENV_TLS}=1; "
        "in Python Client(tls_ca=...) or Client(tls=True))"
    )


def _probe_tls(
    raw: socket.socket, context: ssl.SSLContext, address: str, host: str, tls: TLSSettings
) -> str | None:
    try:
        with context.wrap_socket(raw, server_hostname=host) as secure:
            # Under TLS 1.3 a server refuses a client certificate (or its absence) after
            # the handshake: gRPC's closes the connection at once, where it would
            # otherwise start HTTP/2 by sending its settings.
            secure.settimeout(PROBE_TIMEOUT)
            try:
                if secure.recv(1):
                    return None
            except TimeoutError:
                return None
            return _refused_certificate(address, tls)
    except ssl.SSLCertVerificationError as exc:
        # (A name or address the certificate does not carry is the certificate's to fix,
        # not --tls-ca's: a user trial followed the hint in vain.)
        fix = (
            "the server's certificate must name the host or IP address clients dial "
            "(subjectAltName)"
            if "mismatch" in (exc.verify_message or "").lower()
            else "check --tls-ca"
        )
        return (
            f"the certificate of the server at {address} failed verification "
            f"(certificate verify failed: {exc.verify_message}); {fix}"
        )
    except ssl.SSLError as exc:
        reason = (exc.reason or str(exc)).lower()
        if "wrong_version_number" in reason or "record_layer" in reason or "http" in reason:
            return _plaintext_server(address)
        if "certificate" in reason or "unknown_ca" in reason or "handshake_failure" in reason:
            return _refused_certificate(address, tls)
        return f"the TLS handshake with {address} failed: {exc.reason or exc}"
    except (ConnectionResetError, BrokenPipeError, EOFError):
        return _plaintext_server(address)
    except OSError:
        return None
    return None


def _refused_certificate(address: str, tls: TLSSettings) -> str:
    if not tls.cert:
        return (
            f"the server at {address} requires a client certificate (mutual TLS): pass "
            "--tls-cert and --tls-key"
        )
    return (
        f"the server at {address} refused this client certificate ({tls.cert}): it is "
        "expired, or not signed by a CA the server trusts (--tls-client-ca)"
    )


def _plaintext_server(address: str) -> str:
    return (
        f"the server at {address} does not speak TLS: drop --tls/--tls-ca, or start the "
        "server with --tls-cert and --tls-key"
    )
