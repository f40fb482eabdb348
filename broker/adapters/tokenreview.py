"""Kubernetes TokenReview: the cluster's API server says whether a caller's service-account
token is valid (``POST /apis/authentication.k8s.io/v1/tokenreviews``).

The alternative to JWKS verification for Kubernetes issuers (an issuer entry with
``tokenreview_url`` instead of ``jwks_url``). What it adds: the API server also checks that
the token's service account, and the pod it is bound to, still exist — a token stops working
when its pod is deleted, not only at its expiry. What it costs: one API server call per
token not yet cached (verified tokens are cached by
:class:`~broker.core.callers.CallerService`), so what strangers can spend is bounded per
replica, while the workloads already verified here keep their reviews:

* tokens never authenticated on this replica share a budget (``rate`` per second, two
  seconds of burst; beyond: 429 ``auth_throttled``). Any token whose unverified ``iss`` is
  the cluster's reaches this point, forged or not;
* a token the API server authenticated before is re-reviewed (once its cache entry runs
  out) outside that budget: only its holder can present it, so a flood of forged tokens
  never throttles a running workload;
* a token the API server refused is refused from memory for ``DENIED_SECONDS`` (keyed by
  its SHA-256, bounded), so repeating one costs no review.

The broker authenticates to the API server with its own projected service-account token
(``token_file``, re-read on every review: kubelet rotates it) and needs the
``system:auth-delegator`` ClusterRole (the chart binds it when this mode is configured).
The reviewed token is sent only in the request body, never in a URL or a log line.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from pathlib import Path

import httpx

from broker import metrics
from broker.core.limits import Budget, Remembered
from broker.errors import Unauthenticated, UpstreamError

_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
#: How long a token the API server refused is refused without asking again.
DENIED_SECONDS = 60.0
#: Tokens remembered as authenticated before; beyond it the memory starts over.
PASSED_MAX = 10_000


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
        self._budget = Budget(rate)
        self._passed: set[str] = set()
        self._denied = Remembered(DENIED_SECONDS)

    async def close(self) -> None:
        await self._client.aclose()

    async def review(self, token: str) -> str:
        """The token's username (``system:serviceaccount:NAMESPACE:NAME``) when the API
        server authenticates it for our audience; else :class:`Unauthenticated`."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        if digest in self._denied:
            raise reject_workload_token(metrics.AuthFailure.JWT_TOKENREVIEW_DENIED)
        if digest not in self._passed:
            self._take()
        try:
            username = await self._review(token)
        except Unauthenticated:
            self._denied.add(digest)
            self._passed.discard(digest)
            raise
        if len(self._passed) >= PASSED_MAX:  # tokens rotate: drop the lot, not memory
            self._passed.clear()
        self._passed.add(digest)
        return username

    async def _review(self, token: str) -> str:
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
            metrics.backend_failed("kubernetes", "tokenreview")
            raise UpstreamError(
                "the Kubernetes API server did not answer the token review",
                code="identity_provider_unavailable",
            ) from exc
        if response.status_code != 201 and response.status_code != 200:
            # 401/403: the broker's own token or RBAC (system:auth-delegator) is wrong.
            metrics.backend_failed("kubernetes", "tokenreview")
            raise UpstreamError(
                f"the Kubernetes API server refused the token review ({response.status_code})",
                code="identity_provider_unavailable",
            )
        status = response.json().get("status") or {}
        if not status.get("authenticated"):
            raise reject_workload_token(metrics.AuthFailure.JWT_TOKENREVIEW_DENIED)
        if self._audience not in (status.get("audiences") or ()):
            raise reject_workload_token(metrics.AuthFailure.JWT_WRONG_AUDIENCE)
        username = (status.get("user") or {}).get("username")
        if not isinstance(username, str) or not username:
            raise reject_workload_token(metrics.AuthFailure.JWT_TOKENREVIEW_DENIED)
        return username

    def _take(self) -> None:
        self._budget.spend(
            time.monotonic(),
            "too many workload tokens to review on this replica; retry later",
            code="auth_throttled",
            counted=metrics.CALLER_AUTH_FAILURES.labels(metrics.AuthFailure.THROTTLED),
        )


def reject_workload_token(reason: metrics.AuthFailure) -> Unauthenticated:
    """Count a rejected workload token and make its 401 (the reason, in words, says why)."""
    metrics.auth_failed(reason)
    words = reason.removeprefix("jwt_").replace("_", " ")
    return Unauthenticated(f"the workload token was rejected ({words})")
