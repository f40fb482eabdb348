"""Kubernetes TokenReview: the cluster's API server says whether a caller's service-account
token is valid (``POST /apis/authentication.k8s.io/v1/tokenreviews``).

The alternative to JWKS verification for Kubernetes issuers (an issuer entry with
``tokenreview_url`` instead of ``jwks_url``). What it adds: the API server also checks that
the token's service account, and the pod it is bound to, still exist — a token stops working
when its pod is deleted, not only at its expiry. What it costs: one API server call per
token not yet cached (verified tokens are cached by
:class:`~broker.core.callers.CallerService`), so reviews are limited per replica
(``rate`` per second, two seconds of burst; beyond: 429 ``auth_throttled``).

The broker authenticates to the API server with its own projected service-account token
(``token_file``, re-read on every review: kubelet rotates it) and needs the
``system:auth-delegator`` ClusterRole (the chart binds it when this mode is configured).
The reviewed token is sent only in the request body, never in a URL or a log line.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

import httpx

from broker import metrics
from broker.errors import RateLimitedCaller, Unauthenticated, UpstreamError

_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"


class TokenReviewer:
    def __init__(
        self,
        url: str,
        *,
        audience: str,
        verify: ssl.SSLContext | bool,
        token_file: str | None,
        timeout: float = 5.0,
        rate: float = 50.0,
    ) -> None:
        self._audience = audience
        self._token_file = token_file
        self._client = httpx.AsyncClient(base_url=url, timeout=timeout, verify=verify)
        self._rate = rate
        self._burst = max(1.0, 2 * rate)
        self._tokens = self._burst
        self._stamp = time.monotonic()

    async def close(self) -> None:
        await self._client.aclose()

    async def review(self, token: str) -> str:
        """The token's username (``system:serviceaccount:NAMESPACE:NAME``) when the API
        server authenticates it for our audience; else :class:`Unauthenticated`."""
        self._take()
        headers = {"Content-Type": "application/json"}
        if self._token_file:
            own = await asyncio.to_thread(Path(self._token_file).read_text)
            headers["Authorization"] = f"Bearer {own.strip()}"
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [self._audience]},
        }
        try:
            response = await self._client.post(_PATH, json=body, headers=headers)
        except httpx.HTTPError as exc:
            metrics.BACKEND_ERRORS.labels("kubernetes", "tokenreview").inc()
            raise UpstreamError(
                "the Kubernetes API server did not answer the token review",
                code="identity_provider_unavailable",
            ) from exc
        if response.status_code != 201 and response.status_code != 200:
            # 401/403: the broker's own token or RBAC (system:auth-delegator) is wrong.
            metrics.BACKEND_ERRORS.labels("kubernetes", "tokenreview").inc()
            raise UpstreamError(
                f"the Kubernetes API server refused the token review ({response.status_code})",
                code="identity_provider_unavailable",
            )
        status = response.json().get("status") or {}
        if not status.get("authenticated"):
            raise _reject("tokenreview_denied")
        if self._audience not in (status.get("audiences") or ()):
            raise _reject("wrong_audience")
        username = (status.get("user") or {}).get("username")
        if not isinstance(username, str) or not username:
            raise _reject("tokenreview_denied")
        return username

    def _take(self) -> None:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens < 1:
            metrics.CALLER_AUTH_FAILURES.labels("throttled").inc()
            raise RateLimitedCaller(
                "too many workload tokens to review on this replica; retry later",
                retry_after=(1 - self._tokens) / self._rate,
                code="auth_throttled",
            )
        self._tokens -= 1


def _reject(reason: str) -> Unauthenticated:
    metrics.CALLER_AUTH_FAILURES.labels(f"jwt_{reason}").inc()
    return Unauthenticated(f"the workload token was rejected ({reason.replace('_', ' ')})")
