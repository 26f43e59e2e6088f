"""The server's certificate: TLS for the gRPC port (and the HTTP port), reloaded on
SIGHUP without dropping connections.

gRPC's dynamic server credentials ask for the certificate configuration at every new
handshake; ``ServerTLS`` answers with a new one after ``reload()`` and with "no
change" otherwise. Connections already open (workers' streams) keep the session they
negotiated, so renewing a certificate drops no worker. The HTTP side gets an
``ssl.SSLContext`` whose certificate ``reload()`` replaces the same way.
"""

from __future__ import annotations

import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

from headwater.wire import TLSConfigError, read_pem


@dataclass(frozen=True)
class ServerTLSFiles:
    """Where the server's certificate, key and (for mutual TLS) client CA are."""

    cert: str
    key: str
    client_ca: str | None = None


class ServerTLS:
    """The server's TLS credentials, read from files and re-read by ``reload()``.

    Args:
        files: the PEM files; read now (TLSConfigError when one cannot be used).
    """

    def __init__(self, files: ServerTLSFiles) -> None:
        self.files = files
        self._lock = threading.Lock()
        self._config = self._read()
        self._changed = False
        self._contexts: list[ssl.SSLContext] = []

    def _read(self) -> grpc.ServerCertificateConfiguration:
        key = read_pem(self.files.key, "private key (--tls-key)")
        cert = read_pem(self.files.cert, "certificate (--tls-cert)")
        client_ca = (
            read_pem(self.files.client_ca, "client CA (--tls-client-ca)")
            if self.files.client_ca
            else None
        )
        # Check that the pair matches before gRPC is handed it: gRPC would only fail
        # handshakes later, with nothing in the log.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(
                str(Path(self.files.cert).expanduser()), str(Path(self.files.key).expanduser())
            )
        except (ssl.SSLError, OSError) as exc:
            raise TLSConfigError(
                f"the certificate {self.files.cert!r} and key {self.files.key!r} cannot be "
                f"used together: {exc}"
            ) from None
        return grpc.ssl_server_certificate_configuration([(key, cert)], client_ca)

    @property
    def requires_client_certificates(self) -> bool:
        """Whether clients must present a certificate (mutual TLS)."""
        return self.files.client_ca is not None

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials for ``add_secure_port`` that pick up ``reload()``."""
        return grpc.dynamic_ssl_server_credentials(
            self._config,
            self._fetch,  # type: ignore[arg-type]  # None means "no change" (gRPC's docs)
            require_client_authentication=self.requires_client_certificates,
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # Called by gRPC at each handshake: None keeps the current configuration.
        with self._lock:
            if not self._changed:
                return None
            self._changed = False
            return self._config

    def reload(self) -> None:
        """Read the files again; new handshakes use them, open connections stay.
        TLSConfigError (the old certificate stays in use) when they cannot be used."""
        config = self._read()
        with self._lock:
            self._config, self._changed = config, True
            contexts = list(self._contexts)
        for context in contexts:
            self._load(context)

    def ssl_context(self) -> ssl.SSLContext:
        """An SSLContext for the HTTP port with the same certificate (and client CA),
        kept up to date by ``reload()``."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._load(context)
        if self.files.client_ca:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(str(Path(self.files.client_ca).expanduser()))
        with self._lock:
            self._contexts.append(context)
        return context

    def _load(self, context: ssl.SSLContext) -> None:
        context.load_cert_chain(
            str(Path(self.files.cert).expanduser()), str(Path(self.files.key).expanduser())
        )
