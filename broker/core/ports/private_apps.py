"""Private apps: their static tokens in Vault KV v2 and their portal rows in Postgres."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from broker.config import Secret
from broker.core.models import App, PortalKey, PortalRecord


class PrivateTokenStore(Protocol):
    """A private app's access token (Vault KV v2, beside the app client secrets). Read on a
    cache miss only (:class:`~broker.core.tokens.TokenService` caches it); never cached here,
    so a rotation is seen by the next read."""

    async def private_app_token(self, key: PortalKey) -> Secret:
        """Raises :class:`~broker.errors.NotFound` (``portal_not_found``) when none is stored."""
        ...

    async def put_private_app_token(self, key: PortalKey, token: Secret) -> None:
        """Store ``token`` as the portal's one token (check-and-set, no lost update)."""
        ...

    async def delete_private_app_token(self, key: PortalKey) -> None:
        """Destroy every stored version (idempotent): nothing is left to undelete."""
        ...


class PrivatePortals(Protocol):
    """The Postgres side of private apps: an app of kind ``private`` bound to one hub, and
    its one portal row (``token_kind = 'private_app'``: no ciphertext, never refreshed)."""

    async def save_private_app(self, slug: str, hub_id: int) -> App | None:
        """Insert the private app bound to ``hub_id``, or keep it if it is already that;
        None when ``slug`` is an OAuth app or a private app of another hub."""
        ...

    async def put_private_portal(
        self, key: PortalKey, *, scopes: Sequence[str], fingerprint: str | None, actor: str
    ) -> PortalRecord:
        """Insert the portal, or take a new token for it: ``active`` again (a quarantine
        stays), ``version`` bumped; the ``portal.installed`` event in the same transaction."""
        ...

    async def rotate_private_portal(
        self, key: PortalKey, *, fingerprint: str | None, old_expires_in: int | None
    ) -> PortalRecord | None:
        """Record a rotation (``version`` bumped, ``previous_expires_at`` = now plus
        ``old_expires_in`` on the database clock, or NULL); None unless the portal is a
        private app's and not revoked."""
        ...
