"""The audit trail: events appended in batches, searched by operators."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from broker.core.models import (
    PortalKey,
)


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One audit trail row (never a token or a secret: fingerprints only)."""

    id: int
    at: datetime
    actor: str
    action: str
    app: str | None
    hub_id: int | None
    user_id: int | None
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """What an audit search matches; every field ``None`` matches everything. ``apps`` and
    ``hub_ids`` are the searcher's scope: an event outside them (or naming no app, or no
    hub, when they are set) is not returned."""

    hub_id: int | None = None
    actor: str | None = None
    action: str | None = None
    app: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    apps: frozenset[str] | None = None
    hub_ids: frozenset[int] | None = None


@dataclass(frozen=True, slots=True)
class AuditPosition:
    """A place in the newest-first order (the keyset (at, id)): a page continues with the
    events strictly older than it."""

    at: datetime
    id: int


class AuditSink(Protocol):
    """Append-only audit trail. Never given a token or a secret: fingerprints only."""

    def record(
        self, action: str, *, actor: str, key: PortalKey | None = None, **detail: object
    ) -> None:
        """Queue an event; written in batches off the hot path. Without a ``key``, a string
        ``app`` detail names the event's app (searches scoped to apps find it)."""
        ...

    def issued(
        self,
        actor: str,
        key: PortalKey,
        *,
        fingerprint: str,
        min_ttl: int,
        remaining_ttl: int,
        refreshed: bool,
    ) -> None:
        """A token was served. Identical issues (same caller, portal, token, ``min_ttl`` and
        ``refreshed``) within one flush window become one ``token.issued`` event with a
        ``count`` and the lowest ``remaining_ttl``: the hot path may serve thousands a second."""
        ...

    async def most_requested(self, *, within_seconds: float, limit: int) -> list[PortalKey]:
        """The portals whose tokens were served most in the last ``within_seconds`` (from
        ``token.issued`` events), most requested first."""
        ...

    async def search(
        self, match: AuditFilter, *, after: AuditPosition | None, limit: int
    ) -> list[AuditEvent]:
        """Newest first by (at, id); only events strictly older than ``after`` when given,
        so pages neither repeat nor skip an event already stored when the first page was
        read, however many are written meanwhile."""
        ...
