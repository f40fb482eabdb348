"""The operator page's portal list and portal timelines in PostgreSQL (implements
``PortalSearch`` and ``PortalTimeline``).

Pages are keyset pages in the order of the unique index ``portals_identity`` (app, Hub ID,
user ID), so a page deep in a large table costs what the first one does and a portal never
shows twice or goes missing between pages while others are installed. The text search (a
Hub ID prefix or a domain substring) and the state counts scan the rows the other filters
leave; that is cheap at the sizes a broker serves (a count of 100,000 rows takes
milliseconds) and needs no extension such as ``pg_trgm``.

Timelines read ``audit_events`` and the failure transitions of ``events`` (the outbox)
newest first, each through a partial index of migration 0013: without the token issues (by
far the most numerous audit events), and only the failure types of the outbox.
"""

from __future__ import annotations

from typing import Any

from broker.adapters.postgres.pool import Database
from broker.adapters.postgres.rows import PORTAL_COLUMNS, portal_of
from broker.core.models import PortalKey, PortalState
from broker.core.ports import (
    PortalPage,
    PortalQuery,
    TimelineCursor,
    TimelineEntry,
    TimelinePage,
)

_ORDER_KEY = "(app, hub_id, COALESCE(user_id, 0))"


class _Args:
    """Positional parameters for a statement composed from constants: ``add`` returns the
    placeholder of a value, so values never enter the SQL text."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def add(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def _filters(query: PortalQuery, args: _Args) -> list[str]:
    """Every condition but the state and the cursor (what the state counts share)."""
    conditions = []
    if query.app is not None:
        conditions.append(f"app = {args.add(query.app)}")
    if query.apps is not None:
        conditions.append(f"app = ANY({args.add(sorted(query.apps))}::text[])")
    if query.hub_ids is not None:
        conditions.append(f"hub_id = ANY({args.add(sorted(query.hub_ids))}::bigint[])")
    if query.text:
        text = args.add(query.text.lower())
        conditions.append(
            f"(starts_with(hub_id::text, {text}) OR strpos(lower(hub_domain), {text}) > 0)"
        )
    return conditions


def _where(conditions: list[str]) -> str:
    return f"WHERE {' AND '.join(conditions)}" if conditions else ""


class PostgresPortalSearch:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def search(self, query: PortalQuery) -> PortalPage:
        if query.after is not None and query.before is not None:
            raise ValueError("a page has one cursor: after or before")
        args = _Args()
        conditions = _filters(query, args)
        counted = await self._db.fetch(
            f"SELECT state, count(*) AS n FROM portals {_where(conditions)} GROUP BY state",
            *args.values,
        )
        if query.state is not None:
            conditions.append(f"state = {args.add(query.state.value)}")
        cursor = query.after or query.before
        backwards = query.before is not None
        if cursor is not None:
            app, hub, user = (
                args.add(cursor.app),
                args.add(cursor.hub_id),
                args.add(cursor.user_id or 0),
            )
            mark = f"({app}::text, {hub}::bigint, {user}::bigint)"
            conditions.append(f"{_ORDER_KEY} {'<' if backwards else '>'} {mark}")
        direction = "DESC" if backwards else "ASC"
        rows = await self._db.fetch(
            f"""SELECT {PORTAL_COLUMNS} FROM portals {_where(conditions)}
                ORDER BY app {direction}, hub_id {direction}, COALESCE(user_id, 0) {direction}
                LIMIT {args.add(query.limit + 1)}""",
            *args.values,
        )
        more = len(rows) > query.limit
        records = [portal_of(r) for r in rows[: query.limit]]
        if backwards:
            records.reverse()
        first = records[0].key if records else None
        last = records[-1].key if records else None
        if backwards:  # rows before this page exist when the query found more than a page
            previous, following = (first if more else None), last
        else:
            previous, following = (first if query.after else None), (last if more else None)
        return PortalPage(
            tuple(records),
            previous=previous,
            next=following,
            by_state={PortalState(r["state"]): r["n"] for r in counted},
        )


_PORTAL = "hub_id = $1 AND app = $2 AND COALESCE(user_id, 0) = COALESCE($3::bigint, 0)"
_AUDIT = f"""SELECT id, at, actor, action, detail, false AS outbox FROM audit_events
    WHERE {_PORTAL}"""
#: The partial index ``audit_events_portal_timeline`` (0013) names this very predicate.
_NO_ISSUES = " AND action <> 'token.issued'"
#: Failure transitions are outbox events only (the refresher does not audit them); the
#: partial index ``events_portal_failures`` (0013) names this very predicate. The other
#: portal events of the outbox repeat audit events.
_FAILURES = f"""SELECT id, at, 'broker' AS actor, type AS action, payload AS detail,
        true AS outbox
    FROM events WHERE {_PORTAL}
      AND type IN ('portal.refresh_failing', 'portal.flagged', 'portal.recovered')"""
#: Strictly older than the cursor in the order (at, outbox, id) descending; ``at <= $5``
#: lets the index range start at the cursor.
_BEFORE = " AND at <= $5 AND (at, {outbox}, id) < ($5::timestamptz, $6::boolean, $7::bigint)"
_NEWEST = " ORDER BY at DESC, id DESC LIMIT $4"


class PostgresPortalTimeline:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def timeline(
        self, key: PortalKey, *, before: TimelineCursor | None, limit: int, issues: bool
    ) -> TimelinePage:
        audit = _AUDIT + ("" if issues else _NO_ISSUES)
        failures = _FAILURES
        args: list[Any] = [key.hub_id, key.app, key.user_id, limit + 1]
        if before is not None:
            audit += _BEFORE.format(outbox="false")
            failures += _BEFORE.format(outbox="true")
            args += [before.at, before.outbox, before.id]
        rows = await self._db.fetch(
            f"""SELECT * FROM (({audit}{_NEWEST}) UNION ALL ({failures}{_NEWEST})) AS timeline
                ORDER BY at DESC, outbox DESC, id DESC LIMIT $4""",
            *args,
        )
        entries = tuple(
            TimelineEntry(
                r["id"], r["at"], r["actor"], r["action"], dict(r["detail"] or {}), r["outbox"]
            )
            for r in rows[:limit]
        )
        older = entries[-1].cursor() if len(rows) > limit else None
        return TimelinePage(entries, older)
