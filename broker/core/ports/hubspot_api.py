"""HubSpot's API host, as the gateway forwards to it (``/v1/portals/{hub_id}/hubspot/...``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

Headers = Sequence[tuple[bytes, bytes]]

#: Never forwarded either way (RFC 9110 7.6.1), and the caller's credentials and cookies.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
#: Not forwarded to HubSpot: the caller's credentials and cookies, and what httpx sets.
REQUEST_DROPPED = HOP_BY_HOP | {b"authorization", b"cookie", b"host", b"x-request-id"}
#: Not forwarded to the caller: cookies HubSpot sets are HubSpot's business.
RESPONSE_DROPPED = HOP_BY_HOP | {b"set-cookie", b"set-cookie2"}


def without(headers: Headers, dropped: frozenset[bytes]) -> list[tuple[bytes, bytes]]:
    """``headers`` without the ``dropped`` names and those the ``Connection`` header lists."""
    listed = {
        name.strip().lower()
        for key, value in headers
        if key.lower() == b"connection"
        for name in value.split(b",")
    }
    return [(k, v) for k, v in headers if (low := k.lower()) not in dropped and low not in listed]


@dataclass(frozen=True, slots=True)
class ApiRequest:
    """One request to forward: ``path`` absolute (``/crm/v3/...``), ``query`` the raw query
    string to send (the broker's own parameters already taken out), ``headers`` the
    caller's minus hop-by-hop ones, its credentials and cookies. ``body`` is bytes (held
    whole, so the request can be sent again after a refresh) or a stream (sent once)."""

    method: str
    path: str
    query: bytes
    headers: Headers
    body: bytes | AsyncIterator[bytes] = field(default=b"", repr=False)

    @property
    def replayable(self) -> bool:
        return isinstance(self.body, bytes)


class ApiResponse(Protocol):
    """HubSpot's answer, its body not read yet: ``status``, ``headers`` as sent (minus
    hop-by-hop ones and cookies), ``chunks()`` the body as it arrives. ``close()`` must be
    called whatever happens (it returns the connection, or drops it)."""

    status: int
    headers: Headers

    def chunks(self) -> AsyncIterator[bytes]: ...

    async def close(self) -> None: ...


class HubSpotApi(Protocol):
    async def send(self, request: ApiRequest, token: str) -> ApiResponse:
        """Send ``request`` with ``Authorization: Bearer <token>`` to the API host and
        return once the answer's headers arrived. Raises
        :class:`~broker.errors.GatewayTimeout` when they did not within the gateway's
        timeout, :class:`~broker.errors.GatewayUpstreamError` when no answer came. Sends
        again only an idempotent request (GET, HEAD, PUT, DELETE, OPTIONS) held whole whose
        connection failed before any answer (a keep-alive connection closed by HubSpot).
        ``token`` is never logged."""
        ...
