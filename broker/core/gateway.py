"""The HubSpot gateway (DESIGN.md, "HubSpot gateway"): a caller's request to HubSpot's API,
sent with the portal's token, which never leaves the broker.

Authorization: the caller must be allowed the portal (its apps and hub_ids, as for the token
route) *and* the HubSpot path (:attr:`Caller.hubspot_paths`: prefixes, none by default);
``tokens:read`` is not needed, nor does it grant anything here. The token comes from
:class:`~broker.core.tokens.TokenService` like the token route's, so whatever it serves
(OAuth or private-app tokens) and whatever it refuses (a revoked, quarantined or re-auth
portal: every replica within a second of the invalidation) holds here too.

A 401 from HubSpot to the token we sent: the token may have died early (revoked at HubSpot,
rotated). Once per request: the portal's row is read again (another replica may hold a newer
token), and when it still holds the same token, a forced refresh through the protocol
(:meth:`PortalOperations.force_refresh`: the lease, the journal, the invalidation of every
replica; at most one per portal per ten seconds), then the request is sent once more. Only
a request whose body is held whole can be sent again; a streamed one gets HubSpot's 401.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import KW_ONLY, dataclass

import structlog

from broker import metrics_gateway
from broker.config import Settings
from broker.core.budget import PortalBudget
from broker.core.models import Caller, IssuedToken, PortalKey
from broker.core.operations import PortalOperations
from broker.core.ports.hubspot_api import ApiRequest, ApiResponse, HubSpotApi
from broker.core.tokens import TokenService
from broker.errors import BrokerError, Forbidden, InvalidRequest

log = structlog.get_logger(__name__)

#: Seconds of life the token sent must have left: the request and its answer fit in it.
_MIN_TTL = 60


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Gateway:
    settings: Settings
    _: KW_ONLY
    tokens: TokenService
    operations: PortalOperations
    api: HubSpotApi
    budget: PortalBudget

    @property
    def _min_ttl(self) -> int:
        return min(_MIN_TTL, self.settings.min_ttl_max)

    def authorize(self, caller: Caller, key: PortalKey, path: str) -> None:
        """Raises :class:`Forbidden` unless ``caller`` may call ``path`` on the portal, and
        :class:`InvalidRequest` for a ``.`` or ``..`` segment (a server resolving it would
        take the request outside the prefix it was granted for)."""
        if not caller.may_access(key.app, key.hub_id):
            raise Forbidden(f"caller {caller.name!r} may not use portal {key}")
        if any(segment in (".", "..") for segment in path.split("/")):
            raise InvalidRequest(f"the HubSpot path {path!r} has a '.' or '..' segment")
        if not caller.may_call(path):
            raise Forbidden(
                f"caller {caller.name!r} may not call HubSpot path {path!r} through the gateway",
                code="hubspot_path_forbidden",
            )

    @asynccontextmanager
    async def forward(
        self, caller: Caller, key: PortalKey, request: ApiRequest
    ) -> AsyncIterator[ApiResponse]:
        """HubSpot's answer to ``request`` for the portal ``key``, within the portal's
        budget, its body still to read (closed on exit)."""
        self.authorize(caller, key, request.path)
        issued = await self.tokens.get_token(caller, key, self._min_ttl, role=None)
        response = await self._send(caller, key, request, issued)
        if response.status == 401 and request.replayable:
            try:
                again = await self._after_401(caller, key, issued)
            except BaseException:
                await response.close()
                raise
            if again is not None:
                await response.close()
                metrics_gateway.GATEWAY_RETRIED_401.inc()
                response = await self._send(caller, key, request, again)
        try:
            yield response
        finally:
            await response.close()

    async def _send(
        self, caller: Caller, key: PortalKey, request: ApiRequest, token: IssuedToken
    ) -> ApiResponse:
        """One request to HubSpot, within the portal's budget."""
        async with self.budget.slot(caller, key) as slot:
            sent = time.monotonic()
            response = await self.api.send(request, token.access_token)
            metrics_gateway.GATEWAY_SECONDS.observe(time.monotonic() - sent)
            slot.saw(response.status, response.headers)
        return response

    async def _after_401(
        self, caller: Caller, key: PortalKey, sent: IssuedToken
    ) -> IssuedToken | None:
        """A token other than ``sent`` for the portal (a newer row, else a forced refresh),
        or None when there is none to try (refreshed moments ago, or refreshing failed)."""
        self.tokens.invalidate(key)  # this replica reads the row again
        found = await self.tokens.get_token(caller, key, self._min_ttl, role=None)
        if found.entry.token != sent.entry.token:
            return found
        try:
            await self.operations.force_refresh(key, actor=f"gateway:{caller.name}")
        except BrokerError as exc:
            log.info("gateway.refresh_after_401_skipped", portal=str(key), error=exc.code)
            return None
        found = await self.tokens.get_token(caller, key, self._min_ttl, role=None)
        return None if found.entry.token == sent.entry.token else found
