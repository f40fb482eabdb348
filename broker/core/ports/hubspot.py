"""HubSpot's OAuth endpoints."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from broker.config import Secret
from broker.core.models import (
    App,
    TokenGrant,
    TokenInfo,
)


class OAuthProvider(Protocol):
    """HubSpot's OAuth endpoints.

    Raises :class:`~broker.errors.GrantDead`, :class:`~broker.errors.AppMisconfigured`,
    :class:`~broker.errors.HubSpotRateLimited`, :class:`~broker.errors.HubSpotUnavailable`,
    or :class:`~broker.errors.InstallFailed` (code exchange only). Never retries
    ``invalid_grant``.
    """

    def authorize_url(
        self, app: App, *, state: str, code_challenge: str, redirect_uri: str
    ) -> str: ...

    async def exchange_code(
        self, app: App, secret: Secret, *, code: str, code_verifier: str | None
    ) -> TokenGrant: ...

    async def refresh(self, app: App, secrets: Sequence[Secret], refresh_token: str) -> TokenGrant:
        """Refresh with the first secret HubSpot accepts (secret rotation)."""
        ...

    async def introspect(self, app: App, secret: Secret, access_token: str) -> TokenInfo: ...

    async def revoke(self, app: App, secrets: Sequence[Secret], refresh_token: str) -> None:
        """Revoke a refresh token at HubSpot (the app's API version). Succeeds whether or
        not HubSpot knew the token; raises the HubSpot error classes otherwise."""
        ...
