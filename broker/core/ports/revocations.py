"""Revocations owed to HubSpot, retried until it confirms."""

from __future__ import annotations

from typing import Protocol

from broker.core.models import PortalKey


class RevocationQueue(Protocol):
    """The queue of upstream revocations (refresh token ciphertexts), claimed for 60 s."""

    async def due_revocations(self, limit: int) -> list[tuple[int, PortalKey, str, int]]:
        """(pending id, portal, refresh ciphertext, attempts), claimed for 60 s."""
        ...

    async def revocation_done(self, pending_id: int) -> None: ...

    async def revocation_failed(self, pending_id: int, error: str, retry_in: float) -> None: ...
