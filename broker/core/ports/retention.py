"""Retention: what old rows are deleted, in bounded batches."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Protocol


class RetentionStore(Protocol):
    """Deletes expired rows for :mod:`broker.core.retention`, on the database clock.

    Each ``delete_*`` call deletes at most ``limit`` rows in one short statement and
    returns how many it deleted; the caller loops until a call comes back short, so no
    statement holds row locks for long. Deleting is idempotent and safe to run next to
    serving replicas; :meth:`exclusively` only keeps replicas from doing the same work.
    """

    def exclusively(self) -> AbstractAsyncContextManager[bool]:
        """Try, without waiting, to become the one sweeper across every replica (a
        PostgreSQL advisory lock). Yields False at once when another holds it; otherwise
        True, holding it until the block exits (or the connection drops)."""
        ...

    async def delete_audit_events(self, *, older_than_days: int, limit: int) -> int:
        """Audit events older than ``older_than_days`` days."""
        ...

    async def delete_delivered_events(
        self, *, older_than_days: int, limit: int, unsent_too: bool = False
    ) -> int:
        """Outbox events older than ``older_than_days`` days that were fanned out and
        acknowledged by every receiver (with their delivery rows). Never an event with an
        unacknowledged delivery; one not fanned out yet only with ``unsent_too`` (webhooks
        are off, so nothing will ever send it)."""
        ...

    async def delete_spent_journal(self, *, older_than_hours: int, limit: int) -> int:
        """Journal rows older than ``older_than_hours`` hours that are applied, or
        superseded (``base_version`` below the portal's current version)."""
        ...

    async def delete_revoked_journal(self, *, limit: int) -> int:
        """Every journal row of a portal whose state is ``revoked``, whatever its age."""
        ...
