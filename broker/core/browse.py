"""What the operator page reads: portals found by text, state and app a page at a time, one
portal, and its timeline (its audit events). Each read is limited to the portals the asking
caller may manage, inside the query, so a page is never cut short by rows hidden after it.
Nothing here returns a token, a ciphertext or a secret (the page shows
:func:`broker.core.admin.portal_view` of a record, and audit events hold none)."""

from __future__ import annotations

from dataclasses import replace

from broker.core.models import Caller, PortalKey, PortalRecord
from broker.core.ports import (
    PortalPage,
    PortalQuery,
    PortalRepository,
    PortalSearch,
    PortalTimeline,
    TimelineCursor,
    TimelinePage,
)
from broker.errors import Forbidden, NotFound


class PortalBrowser:
    def __init__(
        self, *, portals: PortalRepository, search: PortalSearch, timeline: PortalTimeline
    ) -> None:
        self._portals = portals
        self._search = search
        self._timeline = timeline

    async def search(self, caller: Caller, query: PortalQuery) -> PortalPage:
        return await self._search.search(replace(query, apps=caller.apps, hub_ids=caller.hub_ids))

    async def portal(self, caller: Caller, key: PortalKey) -> PortalRecord:
        self._check(caller, key)
        record = await self._portals.get_portal(key)
        if record is None:
            raise NotFound(f"no portal {key}", code="portal_not_found")
        return record

    async def timeline(
        self,
        caller: Caller,
        key: PortalKey,
        *,
        before: TimelineCursor | None,
        limit: int,
        issues: bool,
    ) -> TimelinePage:
        self._check(caller, key)
        return await self._timeline.timeline(key, before=before, limit=limit, issues=issues)

    @staticmethod
    def _check(caller: Caller, key: PortalKey) -> None:
        if not caller.may_access(key.app, key.hub_id):
            raise Forbidden(f"caller {caller.name!r} may not manage portal {key}")
