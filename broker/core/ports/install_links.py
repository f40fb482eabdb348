"""Install links: minted, listed, revoked, redeemed once."""

from __future__ import annotations

from typing import Protocol

from broker.core.models import (
    InstallLinkRecord,
)


class InstallLinkStore(Protocol):
    """Minted install links (never the link token: its id and what it allows)."""

    async def add(self, link: InstallLinkRecord) -> None: ...

    async def get(self, link_id: str) -> InstallLinkRecord | None: ...

    async def find(self, *, app: str | None, include_inactive: bool) -> list[InstallLinkRecord]:
        """Newest first; without ``include_inactive`` only unexpired, unrevoked links."""
        ...

    async def revoke(self, link_id: str, *, actor: str) -> InstallLinkRecord | None:
        """Mark it revoked (idempotent: the first revocation is kept); None when unknown."""
        ...
