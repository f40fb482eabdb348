"""The refresh protocol's writes in Postgres: leases, intents, the journal, the fenced commit
(see the lease contract in :mod:`broker.core.ports`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from broker.core.models import Intent, Lease, PortalKey, PortalRecord, PortalState
from broker.core.ports.portals import EncryptedGrant


@dataclass(frozen=True, slots=True)
class DueLease:
    """A portal whose proactive refresh time has come, and the lease claiming it."""

    key: PortalKey
    lease: Lease


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """An answered journal row not applied yet: its id and the response it holds."""

    id: int
    grant: EncryptedGrant


class LeaseRepository(Protocol):
    """Refresh leases and what a holder writes under one. Every time is the database clock."""

    async def claim_lease(
        self,
        portal_id: int,
        owner: str,
        *,
        lease_seconds: float,
        min_ttl: float,
        ignore_backoff: bool,
    ) -> Lease | None:
        """Take the refresh lease if the portal serves tokens, no live lease exists and the
        access token has less than ``min_ttl`` seconds left (and, unless
        ``ignore_backoff``, its backoff has passed). ``None``: not granted, re-read."""
        ...

    async def claim_due(self, owner: str, *, limit: int, lease_seconds: float) -> list[DueLease]:
        """Leases for portals whose proactive refresh time has come (``SKIP LOCKED``)."""
        ...

    async def intend(self, lease: Lease, *, window: float) -> Intent:
        """Record, before HubSpot is called, that a call is about to be sent (portal, epoch,
        owner, base version, sent_at), in one statement serialized per portal, and only if
        the lease is still held, no answered journal row from this version (or later) waits
        to be applied, and no call from this version (or later) sent less than ``window``
        seconds ago is unanswered (its outcome unknown: a second call must wait for it)."""
        ...

    async def forget_intent(self, intent_id: int) -> None:
        """HubSpot answered without a token (an error), or the call never went out."""
        ...

    async def journal(self, lease: Lease, grant: EncryptedGrant, intent_id: int | None) -> int:
        """Append the response to the journal before the fenced commit, and drop the call's
        intent (answered) in the same statement; not fenced."""
        ...

    async def commit_refresh(
        self, lease: Lease, grant: EncryptedGrant, journal_id: int
    ) -> PortalRecord | None:
        """The fenced write. ``None`` when fenced out (the epoch or owner moved on)."""
        ...

    async def apply_late(
        self, lease: Lease, grant: EncryptedGrant, journal_id: int
    ) -> PortalRecord | None:
        """A fenced-out holder's journaled response, applied when it is still the newest: the
        row is at ``lease.version`` (no token stored since), no lease is held, and its state
        is active, refresh_failing or needs_reauth (healed to active). None otherwise."""
        ...

    async def heal_from_journal(self, limit: int) -> list[PortalRecord]:
        """Portals marked ``needs_reauth`` that hold an answered, unapplied journal row from
        their current version (a late response): apply the newest such row; the healed."""
        ...

    async def newer_journal_entry(self, lease: Lease) -> JournalEntry | None:
        """An unapplied journal entry written after the version this lease read."""
        ...

    async def record_failure(
        self, lease: Lease, *, failure_class: str, state: PortalState | None, retry_in: float
    ) -> bool:
        """Fenced: note the failure, set the state (``None``: leave it) and the next attempt,
        release the lease. False when fenced out (the lease moved on): nothing was written."""
        ...

    async def release_lease(self, lease: Lease) -> None: ...
