"""Webhook receivers over HTTP (httpx). Implements ``WebhookSender``.

One ``httpx.AsyncClient`` with explicit timeouts (connect at most 3 s, and the whole
exchange bounded by ``timeout``) and pool limits. Redirects are never followed: a 3xx is the
receiver's answer (counted as ``rejected``), and following it would send a signed event
somewhere nobody configured. At most 64 KiB of an answer is read, then dropped unlogged.
Nothing here logs the body or the headers (the signature); httpx's own loggers stay at
WARNING because they log full URLs, which may carry a receiver's credentials.
"""

from __future__ import annotations

import asyncio
import logging

import httpx

from broker.adapters import tls
from broker.errors import WebhookUnreachable

logging.getLogger("httpx").setLevel(logging.WARNING)
logging.getLogger("httpcore").setLevel(logging.WARNING)

_MAX_ANSWER_BYTES = 64 * 1024


class HttpWebhookSender:
    def __init__(
        self,
        *,
        timeout: float,
        ca_bundle: str = "",
        max_connections: int = 64,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._timeout = timeout
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(3.0, timeout)),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            follow_redirects=False,
            headers={"User-Agent": "hubspot-token-broker-webhooks"},
            transport=transport,
            verify=tls.verify(ca_bundle),
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        try:
            # httpx bounds each phase; this bounds the whole exchange (a slow-drip answer).
            async with (
                asyncio.timeout(self._timeout),
                self._client.stream("POST", url, content=body, headers=headers) as response,
            ):
                # Read a small answer to completion so the connection can be reused; a large
                # one is cut short (the connection is then closed instead).
                received = 0
                async for chunk in response.aiter_raw():
                    received += len(chunk)
                    if received > _MAX_ANSWER_BYTES:
                        break
                return response.status_code
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise WebhookUnreachable("timeout") from exc
        except httpx.ConnectError as exc:
            raise WebhookUnreachable("connect") from exc
        except httpx.TransportError as exc:
            raise WebhookUnreachable("transport") from exc
        except httpx.InvalidURL as exc:
            raise WebhookUnreachable("invalid_url") from exc
