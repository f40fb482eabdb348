"""Revocations owed to HubSpot, retried until it confirms; and private apps' tokens owed a
destroy in Vault KV, retried until Vault confirms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from broker.core.models import PortalKey


@dataclass(frozen=True, slots=True)
class PendingRevocation:
    """A refresh token owed an upstream revoke (its ciphertext), and the attempts so far.
    ``refresh_ct`` None: the portal is a private app's, its token owed a destroy in Vault."""

    id: int
    key: PortalKey
    refresh_ct: str | None
    attempts: int


class RevocationQueue(Protocol):
    """The queue of upstream revocations (refresh token ciphertexts), claimed for 60 s."""

    async def due_revocations(self, limit: int) -> list[PendingRevocation]:
        """The revocations due now, each claimed for 60 s."""
        ...

    async def revocation_done(self, pending_id: int) -> None: ...

    async def revocation_failed(self, pending_id: int, error: str, retry_in: float) -> None: ...
