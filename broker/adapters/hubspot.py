"""HubSpot OAuth adapter. Implements ``OAuthProvider``.

HTTP through :class:`~broker.adapters.hubspot_http.HubSpotHttp` (the lean keep-alive client
shared with Vault, httpx behind an egress proxy). Retries: only a request that never reached
HubSpot (no connection) is retried, once; 5xx, 429 and timeouts surface to the refresh
engine, which backs off per portal. ``invalid_grant`` is never retried.

Every answer is classified into the failure classes of DESIGN.md (see ``_classify``). Tokens
travel only in form bodies, never in URLs (v1 apps introspect through the versioned endpoint
for that reason), and httpx's own loggers are kept at WARNING (they log full URLs).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Iterator, Sequence
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import httpx

from broker import metrics
from broker.adapters.hubspot_http import HubSpotHttp, NoAnswer, NotSent, Reply
from broker.config import Secret, Settings
from broker.core.models import App, TokenGrant, TokenInfo
from broker.core.tasks import cancel_and_wait
from broker.errors import (
    AppMisconfigured,
    BrokerError,
    GrantDead,
    HubSpotError,
    HubSpotRateLimited,
    HubSpotUnavailable,
    InstallFailed,
)

T = TypeVar("T")

_GRANT_DEAD = {"BAD_REFRESH_TOKEN", "BAD_HUB"}
_APP_BAD = {"BAD_CLIENT_ID", "BAD_CLIENT_SECRET"}
_INSTALL_BAD = {
    "BAD_AUTH_CODE",
    "EXPIRED_AUTH_CODE",
    "MISMATCH_REDIRECT_URI_AUTH_CODE",
    "BAD_REDIRECT_URI",
    "BAD_CODE_VERIFIER",
}


async def pause_tolerant(call: Awaitable[T], seconds: float, tick: float = 0.1) -> T:
    """Await ``call`` for about ``seconds`` of *running* time, else cancel it and raise
    TimeoutError.

    A plain timeout measures wall time, so a process paused (SIGSTOP, a VM freeze, a long GC)
    while HubSpot answers wakes up to an expired timer and throws away a response that is
    already in its socket buffer — with refresh-token rotation, the only live token. This
    watchdog counts ticks instead: a pause costs one tick, and the buffered answer is read."""
    task = asyncio.ensure_future(call)
    for _ in range(max(1, math.ceil(seconds / tick))):
        done, _ = await asyncio.wait({task}, timeout=tick)
        if done:
            return task.result()
    await cancel_and_wait(task)
    raise TimeoutError(f"no answer within {seconds:g} s")


@contextlib.contextmanager
def _upstream_errors(endpoint: str) -> Iterator[None]:
    try:
        yield
    except (NotSent, NoAnswer, TimeoutError) as exc:
        metrics.UPSTREAM_REQUESTS.labels(endpoint, "error").inc()
        raise HubSpotUnavailable(
            f"no answer from HubSpot ({type(exc).__name__})", outcome_unknown=True
        ) from exc


def _retry_after(response: Reply) -> float | None:
    raw = response.retry_after
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None  # HTTP-date form: not used by HubSpot; fall back to our own backoff


def _token_form(app: App, secret: Secret, token: str, hint: str) -> dict[str, str]:
    """The form of a revocation and of an introspection: the app's credentials and the
    token with its type hint (RFC 7009, RFC 7662)."""
    return {
        "client_id": app.client_id,
        "client_secret": secret.get(),
        "token": token,
        "token_type_hint": hint,
    }


def _classify(response: Reply, *, grant_type: str) -> HubSpotError | InstallFailed:
    """Map a non-200 answer of the token endpoint to the broker's failure classes."""
    status = response.status_code
    try:
        body: dict[str, Any] = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    hs_status = str(body.get("status") or "")
    error = str(body.get("error") or "")
    detail = f"HubSpot answered {status} {hs_status or error or ''}".strip()
    kwargs: dict[str, Any] = {"hubspot_status": hs_status or error or None, "http_status": status}
    if status == 429:
        return HubSpotRateLimited(detail, retry_after=_retry_after(response), **kwargs)
    if status >= 500 or status in (423, 477, 408):
        retry = _retry_after(response)
        if status == 423:
            retry = max(retry or 0.0, 2.0)  # "locked": wait at least 2 s
        return HubSpotUnavailable(detail, retry_after=retry, **kwargs)
    if hs_status in _APP_BAD or error == "invalid_client":
        return AppMisconfigured(detail, **kwargs)
    if grant_type == "refresh_token" and (
        hs_status in _GRANT_DEAD or error in ("invalid_grant", "access_denied")
    ):
        return GrantDead(detail, **kwargs)
    if grant_type == "authorization_code" and (
        hs_status in _INSTALL_BAD or error == "invalid_grant"
    ):
        return InstallFailed(
            f"HubSpot rejected the authorization code ({hs_status or error})",
            code="install_code_rejected",
        )
    # An answer we do not understand is never taken as proof that a grant is dead.
    return HubSpotUnavailable(detail, **kwargs)


def _json(response: Reply) -> dict[str, Any]:
    """A 200's body; one that is not a JSON object may still mean a refresh happened."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise HubSpotUnavailable("HubSpot sent a malformed token response", outcome_unknown=True)
    return body


def _grant(body: dict[str, Any]) -> TokenGrant:
    try:
        return TokenGrant(
            access_token=str(body["access_token"]),
            refresh_token=str(body["refresh_token"]),
            expires_in=int(body["expires_in"]),
            hub_id=int(body["hub_id"]),
            user_id=None if body.get("user_id") is None else int(body["user_id"]),
            scopes=tuple(str(s) for s in body.get("scopes") or ()),
        )
    except (KeyError, TypeError, ValueError) as exc:
        # A 200 whose body does not parse: a refresh may have happened all the same.
        raise HubSpotUnavailable(
            "HubSpot sent a malformed token response", outcome_unknown=True
        ) from exc


class HubSpotOAuth:
    def __init__(self, settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None):
        self._timeout = settings.hubspot_timeout
        self._app_host = settings.hubspot_app_url.rstrip("/")
        self._http = HubSpotHttp(settings, transport=transport)

    async def close(self) -> None:
        await self._http.close()

    def authorize_url(self, app: App, *, state: str, code_challenge: str, redirect_uri: str) -> str:
        query = {
            "client_id": app.client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(app.scopes),
            "state": state,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
        }
        if app.optional_scopes:
            query["optional_scope"] = " ".join(app.optional_scopes)
        # HubSpot wants spaces as %20, not '+'.
        return f"{self._app_host}/oauth/authorize?{urlencode(query, quote_via=quote)}"

    async def _post(self, endpoint: str, path: str, form: dict[str, str]) -> Reply:
        for attempt in (1, 2):
            try:
                response = await pause_tolerant(self._http.send("POST", path, form), self._timeout)
            except NotSent as exc:
                metrics.UPSTREAM_REQUESTS.labels(endpoint, "error").inc()
                if attempt == 1:
                    continue  # never reached HubSpot: safe to send once more
                raise HubSpotUnavailable("cannot connect to HubSpot") from exc
            except (NoAnswer, TimeoutError) as exc:
                metrics.UPSTREAM_REQUESTS.labels(endpoint, "error").inc()
                raise HubSpotUnavailable(
                    f"no answer from HubSpot ({type(exc).__name__})", outcome_unknown=True
                ) from exc
            metrics.UPSTREAM_REQUESTS.labels(endpoint, str(response.status_code)).inc()
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    async def exchange_code(
        self, app: App, secret: Secret, *, code: str, code_verifier: str | None
    ) -> TokenGrant:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": app.redirect_uri,
            "client_id": app.client_id,
            "client_secret": secret.get(),
        }
        if code_verifier is not None:
            form["code_verifier"] = code_verifier
        response = await self._post("token", f"/oauth/{app.api_version}/token", form)
        if response.status_code != 200:
            raise _classify(response, grant_type="authorization_code")
        return _grant(_json(response))

    async def refresh(self, app: App, secrets: Sequence[Secret], refresh_token: str) -> TokenGrant:
        last: AppMisconfigured | None = None
        for secret in secrets:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": refresh_token,
                "client_id": app.client_id,
                "client_secret": secret.get(),
            }
            response = await self._post("token", f"/oauth/{app.api_version}/token", form)
            if response.status_code == 200:
                return _grant(_json(response))
            error = _classify(response, grant_type="refresh_token")
            if not isinstance(error, AppMisconfigured) or error.hubspot_status == "BAD_CLIENT_ID":
                raise error
            last = error  # a rotated-out secret: try the next one
        raise last or AppMisconfigured("the app has no client secret")

    async def revoke(self, app: App, secrets: Sequence[Secret], refresh_token: str) -> None:
        if app.api_version == "v1":
            # Legacy apps: HubSpot's v1 API takes the token in the path (the only place a
            # token goes into a URL; httpx's loggers stay at WARNING, ours never log URLs).
            with _upstream_errors("revoke"):
                response = await pause_tolerant(
                    self._http.send("DELETE", f"/oauth/v1/refresh-tokens/{quote(refresh_token)}"),
                    self._timeout,
                )
            metrics.UPSTREAM_REQUESTS.labels("revoke", str(response.status_code)).inc()
            if response.status_code in (200, 204, 404):
                return
            error = _classify(response, grant_type="revoke")
            raise error
        last: BrokerError | None = None
        for secret in secrets:
            form = _token_form(app, secret, refresh_token, "refresh_token")
            response = await self._post("revoke", f"/oauth/{app.api_version}/token/revoke", form)
            if response.status_code in (200, 204):
                return
            last = _classify(response, grant_type="revoke")
            if not isinstance(last, AppMisconfigured):
                break
        assert last is not None
        raise last

    async def introspect(self, app: App, secret: Secret, access_token: str) -> TokenInfo:
        version = "2026-03" if app.api_version == "v1" else app.api_version
        form = _token_form(app, secret, access_token, "access_token")
        response = await self._post("introspect", f"/oauth/{version}/token/introspect", form)
        if response.status_code != 200:
            raise _classify(response, grant_type="introspect")
        body = response.json()
        if not body.get("active"):
            raise HubSpotUnavailable("HubSpot reports the new access token as inactive")
        return TokenInfo(
            hub_id=int(body["hub_id"]),
            hub_domain=body.get("hub_domain"),
            user=body.get("user"),
            user_id=None if body.get("user_id") is None else int(body["user_id"]),
            scopes=tuple(body.get("scopes") or ()),
        )
