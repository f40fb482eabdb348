"""The operator page's reads: portal search and a portal's timeline."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from broker.core.models import (
    PortalKey,
    PortalRecord,
    PortalState,
)


@dataclass(frozen=True, slots=True)
class PortalQuery:
    """What the operator page asks for: filters, the caller's scope, and one page of it.

    ``text`` matches a Hub ID by prefix or a hub domain by substring (case-insensitive).
    ``apps``/``hub_ids`` are the asking caller's scope (``None``: all), applied in the query
    so a page is never short because rows were hidden after it was cut. ``after`` and
    ``before`` are keyset cursors (the key of the row next to the page), at most one."""

    text: str | None = None
    state: PortalState | None = None
    app: str | None = None
    apps: frozenset[str] | None = None
    hub_ids: frozenset[int] | None = None
    after: PortalKey | None = None
    before: PortalKey | None = None
    limit: int = 50


@dataclass(frozen=True, slots=True)
class PortalPage:
    """One page of portals in the stable order (app, Hub ID, user ID), and counts of every
    portal matching the query's text, app and scope per state (its ``state`` aside)."""

    portals: tuple[PortalRecord, ...]
    #: Cursors for the neighbouring pages; ``None`` when there is none that way.
    previous: PortalKey | None
    next: PortalKey | None
    by_state: dict[PortalState, int]


class PortalSearch(Protocol):
    """The operator page's portal list (read only, never a ciphertext shown)."""

    async def search(self, query: PortalQuery) -> PortalPage: ...


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One event of a portal: an audit event, or a failure transition from the outbox
    (``outbox``). Neither ever holds a token or a secret."""

    id: int
    at: datetime
    actor: str
    action: str
    detail: dict[str, object]
    outbox: bool = False

    def cursor(self) -> TimelineCursor:
        return TimelineCursor(self.at, self.outbox, self.id)


@dataclass(frozen=True, slots=True)
class TimelineCursor:
    """Where an older page of a timeline starts: strictly after (``at``, ``outbox``, ``id``)
    in the timeline's order, which is that triple descending."""

    at: datetime
    outbox: bool
    id: int


@dataclass(frozen=True, slots=True)
class TimelinePage:
    entries: tuple[TimelineEntry, ...]
    #: The cursor of the next (older) page; ``None`` at the oldest event kept.
    older: TimelineCursor | None


class PortalTimeline(Protocol):
    """A portal's history, newest first: its audit events, and the failure transitions that
    only the outbox records (``portal.refresh_failing``, ``portal.flagged``,
    ``portal.recovered``), each kept as long as retention keeps its table."""

    async def timeline(
        self, key: PortalKey, *, before: TimelineCursor | None, limit: int, issues: bool
    ) -> TimelinePage:
        """``issues``: include the ``token.issued`` tallies (many: one per caller, token
        and flush window); without it they are left out by an index that skips them."""
        ...
