"""Who is calling: workload identities, operator sign-in, callers and their keys."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from broker.core.models import (
    Caller,
    StoredCallerKey,
)


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified workload identity: who the issuer says the caller is, until when."""

    issuer: str
    subject: str
    expires_at: datetime


class IdentityVerifier(Protocol):
    async def verify(self, token: str) -> Identity:
        """Raises :class:`~broker.errors.Unauthenticated` for any token it cannot trust."""
        ...


@dataclass(frozen=True, slots=True)
class SsoIdentity:
    """A person an OpenID Provider vouched for in a verified ID token."""

    subject: str
    #: The ``email`` claim, unless the IdP says it is not verified (``email_verified``).
    email: str | None
    #: The groups claim (``BROKER_OIDC_GROUPS_CLAIM``); empty when absent.
    groups: frozenset[str]


class IdentityProvider(Protocol):
    """An OpenID Provider for operator sign-in (the authorization code flow with PKCE).

    Contract: :meth:`sign_in` returns only for an ID token whose signature verifies with a
    key of the issuer's JWKS under an allow-listed asymmetric algorithm, whose ``iss`` is
    the configured issuer, whose ``aud`` holds the client id (and ``azp``, when present or
    when there are several audiences, is the client id), that has not expired, and whose
    ``nonce`` is the one given. It never logs or returns the code, the verifier, the client
    secret or a token. Refusals are :class:`~broker.errors.SsoFailed` (``sso_code_rejected``,
    ``sso_id_token_invalid``); the issuer not answering is
    :class:`~broker.errors.IdentityProviderUnavailable`. Nothing is retried: a code is
    single-use."""

    @property
    def issuer(self) -> str: ...

    async def authorization_url(
        self, *, redirect_uri: str, state: str, nonce: str, code_challenge: str
    ) -> str:
        """Where to send the browser (S256 code challenge; discovery fetched as needed)."""
        ...

    async def sign_in(
        self, code: str, *, redirect_uri: str, verifier: str, nonce: str
    ) -> SsoIdentity:
        """Exchange ``code`` (with the PKCE ``verifier``) and verify the ID token."""
        ...


@dataclass(frozen=True, slots=True)
class ChangedCallers:
    """Callers changed (or gone) in a window, and the database time to pass next."""

    ids: set[int]
    until: datetime


class CallerRepository(Protocol):
    async def create(
        self,
        caller: Caller,
        key_id: str | None,
        key_hash: str | None,
        expires_at: datetime | None,
        identity: tuple[str, str] | None = None,
    ) -> Caller:
        """Raises :class:`~broker.errors.Conflict` when the name or identity is taken."""
        ...

    async def by_identity(self, issuer: str, subject: str) -> Caller | None: ...

    async def by_name(self, name: str) -> Caller | None: ...

    async def rotate_key(
        self, name: str, key_id: str, key_hash: str, overlap_seconds: float
    ) -> Caller | None:
        """Install a new key; the current one stays valid for ``overlap_seconds``."""
        ...

    async def by_key_id(self, key_id: str) -> StoredCallerKey | None:
        """The key ``key_id`` (current, or previous while its overlap lasts), or None.
        Disabled and expired callers are returned too."""
        ...

    async def set_gateway(
        self, name: str, hubspot_paths: Collection[str], gateway_weight: int
    ) -> Caller | None:
        """Set what ``name`` may call through the gateway; None when no caller has it."""
        ...

    async def list(self) -> list[Caller]: ...

    async def disable(self, name: str) -> int | None:
        """Disable an enabled caller; its id, or None when no enabled caller has ``name``."""
        ...

    async def changed_since(self, since: datetime | None, known: Collection[int]) -> ChangedCallers:
        """Ids of callers created or changed after ``since`` (keys, grants, expiry,
        disabling; not ``last_used_at``), plus those of ``known`` that no longer exist, and
        the database time to pass next. The fallback when caller invalidations are missed:
        with ``since`` None it only returns the time."""
        ...

    async def touch(self, caller_ids: Sequence[int]) -> None:
        """Record last use (batched, off the hot path)."""
        ...
