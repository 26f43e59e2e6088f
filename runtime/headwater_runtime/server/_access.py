"""Who is calling: named credentials (tokens or certificate subjects) and their roles.

The server keeps every credential in memory (token hashes and certificate subjects to
names and roles) and checks each call against it. Changes made through the server
(``AccessService``) apply at once; changes made by another process (``headwater
tokens revoke --db``) are seen within ``POLL_INTERVAL`` (the store's credentials
generation is read that often), and a call with a credential the server has not read
has them re-read first when that generation moved (``refresh``: a token just made
with ``tokens create --db`` works on its first call). Tokens are 256 random bits, so a
plain SHA-256 is an adequate hash: a slow password hash protects guessable secrets,
and these are not.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass

from headwater.wire import Role, check_name
from headwater_runtime.store import CredentialRow, Store

from ._io import StoreIO

log = logging.getLogger("headwater.server")

#: A call with an unknown credential has the credentials re-read when another process
#: changed them, at most this often (seconds): a token just made with ``tokens create
#: --db`` was refused for up to POLL_INTERVAL (a user trial), and unknown tokens must
#: not make the server read its store at their own pace.
REFRESH_EVERY = 0.05
#: How often a server looks for credential changes made by another process.
POLL_INTERVAL = 1.0
#: Prefix of generated tokens (lets secret scanners recognise them).
TOKEN_PREFIX = "hwt_"
#: The name audit entries give the ``--token`` shortcut credential.
SERVER_TOKEN_NAME = "server-token"
#: Who calls on a server with no credentials at all (everything is open).
ANONYMOUS_NAME = "anonymous"
#: Names audit lines give callers that are no credential: none may be called so.
RESERVED_NAMES = frozenset({SERVER_TOKEN_NAME, ANONYMOUS_NAME, "offline"})


@dataclass(frozen=True, slots=True)
class Caller:
    """The credential a call was made with."""

    name: str
    role: Role


#: The caller of the RPC being served (set by the auth interceptor for the call's task).
#: Caller is frozen, so one shared default is safe.
ANONYMOUS = Caller(ANONYMOUS_NAME, Role.ADMIN)
CALLER: ContextVar[Caller] = ContextVar("headwater_caller", default=ANONYMOUS)


def uploader_name(caller: Caller) -> str:
    """The name a payload ``caller`` uploads is stored with: its credential's, or ""
    on a server that checks no credential (a credential named "anonymous", created
    later, must not own what was uploaded then)."""
    return "" if caller is ANONYMOUS else caller.name


class Refused(Exception):
    """A call's credential is missing, unknown or revoked (UNAUTHENTICATED)."""


class Unknown(Refused):
    """A token or certificate subject this server has not read (yet: another process
    may just have created it, ``AccessControl.refresh``)."""


def hash_token(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_credential(
    name: str, role: Role | str, *, subject: str = "", created_by: str, now: float
) -> tuple[CredentialRow, str]:
    """A credential row and its token ("" for a certificate credential)."""
    role = role if isinstance(role, Role) else Role.parse(role)
    name = name.strip()
    if not name:
        raise ValueError("a credential needs a --name")
    check_name("a credential's name", name)
    if name in RESERVED_NAMES:
        raise ValueError(f"{name!r} is reserved (audit lines use it for the server): pick another")
    token = "" if subject else TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = CredentialRow(
        name=name,
        role=role.value,
        secret_hash=hash_token(token) if token else "",
        subject=subject.strip(),
        created_at=now,
        created_by=created_by,
    )
    return row, token


def _first(values: Mapping[str, Iterable[bytes]], key: str) -> str:
    for value in values.get(key, ()):
        return value.decode() if isinstance(value, bytes) else str(value)
    return ""


class AccessControl:
    """The server's credentials in memory, and the check of one call's credential.

    Args:
        store: where credentials are kept (None: only ``admin_token``).
        io: the store's threads (required with a store).
        admin_token: the ``--token`` shortcut: one admin credential, not stored.
        client_certificates: the server requires client certificates (mutual TLS), so
            credentials are always checked even when none are stored.
    """

    def __init__(
        self,
        store: Store | None = None,
        io: StoreIO | None = None,
        admin_token: str | None = None,
        *,
        client_certificates: bool = False,
    ) -> None:
        if admin_token is not None and not admin_token:
            raise ValueError("the server token must not be empty")
        self.store = store
        self.io = io
        self._admin = f"Bearer {admin_token}".encode() if admin_token else None
        self._client_certificates = client_certificates
        self._tokens: dict[str, CredentialRow] = {}
        self._subjects: dict[str, CredentialRow] = {}
        self._revoked: dict[str, CredentialRow] = {}
        #: A credential was ever stored (revoked ones count): checking stays on.
        self._stored = False
        self._generation = -1
        self._poller: asyncio.Task[None] | None = None
        self._refreshing = asyncio.Lock()
        self._refreshed_at = -REFRESH_EVERY  # (time.monotonic() of the last look)
        self._told_shared = ""  # the credential the server token was last said to be
        #: Called on the event loop after every reload with the names of the valid
        #: credentials (the server ends worker streams of revoked ones).
        self.on_change: Callable[[frozenset[str]], None] | None = None

    def valid_names(self) -> frozenset[str]:
        """Names of the credentials that are valid now (the built-in ones too:
        ``anonymous`` only while the server is open, see ``enabled``)."""
        names = {row.name for row in (*self._tokens.values(), *self._subjects.values())}
        names.add(SERVER_TOKEN_NAME)
        if not self.enabled:
            names.add(ANONYMOUS_NAME)
        return frozenset(names)

    @property
    def enabled(self) -> bool:
        """Whether calls need a credential: a --token, client certificates, or any
        stored credential, revoked ones too (a server with none of these is open, as
        before roles). Revoking the last valid credential does not open the server:
        it then refuses every call until a credential is created."""
        return bool(self._admin or self._client_certificates or self._stored)

    def load(self) -> None:
        """Read every credential from the store (on a store thread)."""
        if self.store is None:
            return
        generation = self.store.credentials_generation()
        tokens: dict[str, CredentialRow] = {}
        subjects: dict[str, CredentialRow] = {}
        revoked: dict[str, CredentialRow] = {}
        stored = False
        for row in self.store.list_credentials(include_revoked=True):
            stored = True
            if row.revoked_at is not None:
                if row.secret_hash:
                    revoked[row.secret_hash] = row
            elif row.subject:
                subjects[row.subject] = row
            else:
                tokens[row.secret_hash] = row
        self._tokens, self._subjects, self._revoked = tokens, subjects, revoked
        self._stored = self._stored or stored  # (once on, never off: see ``enabled``)
        self._generation = generation
        self._tell_shared()

    def _tell_shared(self) -> None:
        """Say once when the server token is a stored credential's token too: calls
        with it are that credential's (``_token``), not ``server-token``'s."""
        if self._admin is None:
            return
        digest = hashlib.sha256(self._admin.partition(b" ")[2]).hexdigest()
        row = self._tokens.get(digest) or self._revoked.get(digest)
        if row is not None and row.name != self._told_shared:
            log.warning(
                "the server's --token (or HEADWATER_TOKEN) is the token of credential %r: "
                "calls with it act as that credential, with its role%s",
                row.name,
                ", and refused: it was revoked" if row.revoked_at is not None else "",
            )
        self._told_shared = "" if row is None else row.name

    async def start(self) -> None:
        """Load the credentials and start watching for changes by other processes."""
        if self.store is None or self.io is None:
            return
        await self.io.read(self.load)
        self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def stop(self) -> None:
        """Stop watching for changes."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller

    async def _poll(self) -> None:
        assert self.store is not None and self.io is not None
        failing = False
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            try:
                await self._reload_if_changed()
            except Exception as exc:  # the database is away: one line, not one a second
                if not failing:
                    log.warning("could not re-read credentials (%s); trying again", exc)
                failing = True
            else:
                if failing:
                    log.warning("credentials re-read again")
                failing = False

    async def refresh(self) -> None:
        """Re-read the credentials if another process changed them (a call came with an
        unknown one), unless that was looked at less than REFRESH_EVERY ago; a store
        that cannot be read leaves them as they are (the poll says so)."""
        if self.store is None or self.io is None:
            return
        async with self._refreshing:
            now = time.monotonic()
            if now - self._refreshed_at < REFRESH_EVERY:
                return
            self._refreshed_at = now
            with contextlib.suppress(Exception):
                await self._reload_if_changed()

    async def _reload_if_changed(self) -> None:
        """Re-read the credentials when the store's generation moved (another process
        changed them)."""
        assert self.store is not None and self.io is not None
        if await self.io.read(self.store.credentials_generation) != self._generation:
            await self.reload()

    async def reload(self) -> None:
        """Re-read the credentials now (after a change made through this server)."""
        if self.io is not None:
            await self.io.read(self.load)
        if self.on_change is not None:
            self.on_change(self.valid_names())

    def authenticate(
        self,
        metadata: Iterable[tuple[str, str | bytes]] | None,
        peer: Mapping[str, Iterable[bytes]],
    ) -> Caller:
        """The caller of a call with this metadata and TLS peer (``auth_context()``);
        Refused (with the reason) when it has no valid credential."""
        for key, value in metadata or ():
            if key == "authorization":
                # (An HTTP header's bytes that are not UTF-8 come as surrogates: back to
                # the bytes sent, which then match no token. Encoded strictly, a 500.)
                raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
                return self._token(bytes(raw))
        subject = _first(peer, "x509_subject")
        if subject:
            common_name = _first(peer, "x509_common_name")
            row = self._subjects.get(subject) or self._subjects.get(f"CN={common_name}")
            if row is None:
                raise Unknown(
                    f"client certificate subject {subject!r} is not mapped to a credential "
                    f"(headwater tokens create --subject {subject!r} --role ROLE --name NAME)"
                )
            return Caller(row.name, Role(row.role))
        raise Refused(
            "missing token: send metadata 'authorization: Bearer <token>' "
            "(or a client certificate mapped to a role)"
        )

    def _token(self, given: bytes) -> Caller:
        scheme, _, token = given.partition(b" ")
        if scheme == b"Bearer" and token:
            # A stored credential's token is that credential, also when it is the
            # server's --token too (a shell that exported a credential's token as
            # HEADWATER_TOKEN for the CLI started the server with it, a user trial: the
            # audit named server-token, and revoking the credential refused nothing).
            digest = hashlib.sha256(token).hexdigest()
            row = self._tokens.get(digest)
            if row is not None:
                return Caller(row.name, Role(row.role))
            revoked = self._revoked.get(digest)
            if revoked is not None:
                raise Refused(f"the token of credential {revoked.name!r} was revoked")
        if self._admin is not None and hmac.compare_digest(given, self._admin):
            return Caller(SERVER_TOKEN_NAME, Role.ADMIN)
        if scheme != b"Bearer" or not token:
            raise Refused("invalid authorization metadata: expected 'Bearer <token>'")
        raise Unknown("invalid token")
