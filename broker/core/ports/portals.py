"""Portals in Postgres: their rows, installs, states and the Postgres fallback of invalidations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from broker.core.models import (
    PortalKey,
    PortalRecord,
    PortalState,
)
from broker.core.ports.revocations import PendingRevocation


@dataclass(frozen=True, slots=True)
class EncryptedGrant:
    """A token response encrypted for one portal; what the database stores."""

    refresh_ct: str
    access_ct: str
    expires_at: datetime
    #: When the proactive refresher should renew it (about 2/3 of the lifetime, jittered).
    refresh_after: datetime
    #: The access token's audit fingerprint (``Keyring.fingerprint``); None: not made.
    access_fp: str | None = None


@dataclass(frozen=True, slots=True)
class RevokedPortal:
    """A local revocation: the portal's row after it, and the upstream revoke it owes (None
    when the portal was already revoked or held no refresh token)."""

    record: PortalRecord
    pending: PendingRevocation | None


@dataclass(frozen=True, slots=True)
class StoppedPortals:
    """Portals that stopped serving tokens (or whose private-app token changed) in a window,
    and the database time to pass next."""

    keys: list[PortalKey]
    until: datetime


class PortalRepository(Protocol):
    """Portals (one row per grant) in Postgres. Every time comparison uses the database clock."""

    async def get_portal(self, key: PortalKey) -> PortalRecord | None: ...

    async def get_portals(self, keys: Sequence[PortalKey]) -> list[PortalRecord]:
        """The portals among ``keys`` that exist, in one round trip, in no given order."""
        ...

    async def db_now(self) -> datetime:
        """The database clock."""
        ...

    async def list_portals(
        self, *, app: str | None = None, state: PortalState | None = None, limit: int = 100
    ) -> list[PortalRecord]: ...

    async def install(
        self,
        key: PortalKey,
        grant: EncryptedGrant,
        *,
        hub_domain: str | None,
        scopes: Sequence[str],
        actor: str,
    ) -> PortalRecord:
        """Insert the grant or replace a previous one of the same identity (re-install),
        making it ``active`` (a ``quarantined`` portal stays quarantined: only an operator
        releases it); bumps ``version``; writes the audit and outbox events in the same
        transaction."""
        ...

    async def count_by_state(self) -> dict[str, int]: ...

    async def revoke(self, key: PortalKey, *, reason: str, actor: str) -> RevokedPortal | None:
        """Local revocation in one transaction (idempotent): state ``revoked``, tokens
        shredded (the portal's columns and every ``token_journal`` row of the portal), the
        refresh token's ciphertext queued for the upstream revoke."""
        ...

    async def set_state(
        self, key: PortalKey, state: PortalState, *, allowed_from: Sequence[PortalState]
    ) -> PortalRecord | None: ...

    async def flag(self, key: PortalKey, error_code: str) -> None:
        """Record a problem with the stored data (e.g. a ciphertext that does not decrypt)
        as the portal's last error, with a ``portal.flagged`` event the first time."""
        ...

    async def stopped_since(self, since: datetime | None) -> StoppedPortals:
        """Portals that stopped serving tokens (any non-serving state) or whose private-app
        token changed after ``since``, and the database time to pass next; the fallback when
        invalidations are missed."""
        ...

    async def ping(self) -> None: ...
