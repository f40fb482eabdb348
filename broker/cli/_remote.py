"""The commands' operations as calls to a running broker's management API.

Credentials: a caller key (``BROKER_CALLER_KEY``, or ``--key-file``/``BROKER_CALLER_KEY_FILE``)
or a workload JWT (``--jwt-file``/``BROKER_JWT_FILE``, e.g. a projected service-account
token, read on every run since it rotates), sent as ``Authorization: Bearer``. Never an
argument: it would show in ``ps`` and the shell history. TLS: the public CAs plus
``BROKER_CA_BUNDLE``, or exactly ``--cacert``.

A problem+json answer becomes a :class:`RemoteError` with the broker's ``code`` and
``detail``, so a command fails as it would locally (exit 1, ``error (code): detail``); no
answer at all is ``broker_unreachable``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from broker.adapters.tls import verify
from broker.cli._ops import Operations, Progress, View
from broker.errors import ConfigError, RemoteError

#: Ciphertexts per rewrap request; the command loops until done (resumable as locally).
REWRAP_CHUNK = 2000


@dataclass(frozen=True)
class Remote:
    url: str
    credential: str
    verify: Any
    timeout: float


def remote_from(
    url: str, *, key_file: str | None, jwt_file: str | None, cacert: str | None, timeout: float
) -> Remote:
    """Where and who, from the options and the environment; ConfigError when incomplete."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError([f"--url/BROKER_URL must be an http(s) URL, not {url!r}"])
    key_file = key_file or os.environ.get("BROKER_CALLER_KEY_FILE")
    jwt_file = jwt_file or os.environ.get("BROKER_JWT_FILE")
    key = os.environ.get("BROKER_CALLER_KEY", "").strip()
    chosen = [c for c in (key_file, jwt_file, key) if c]
    if len(chosen) != 1:
        raise ConfigError(
            [
                "a remote broker needs one credential: BROKER_CALLER_KEY, --key-file "
                "(BROKER_CALLER_KEY_FILE) or --jwt-file (BROKER_JWT_FILE)"
            ]
        )
    path = key_file or jwt_file
    if path:
        try:
            with open(path) as handle:
                key = handle.read().strip()
        except OSError as exc:
            raise ConfigError([f"cannot read the credential file {path}"]) from exc
    if not key:
        raise ConfigError(["the credential is empty"])
    bundle = os.environ.get("BROKER_CA_BUNDLE", "")
    return Remote(url.rstrip("/"), key, verify(bundle, cacert), timeout)


class RemoteOperations(Operations):
    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def _call(
        self, method: str, path: str, *, json: Any = None, params: View | None = None
    ) -> Any:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = await self._client.request(method, path, json=json, params=query)
        except httpx.HTTPError as exc:
            raise RemoteError(
                0, "broker_unreachable", f"no answer from the broker ({type(exc).__name__})"
            ) from exc
        if response.is_success:
            try:
                return response.json()
            except ValueError as exc:  # a proxy's page, say
                raise RemoteError(
                    response.status_code,
                    "invalid_response",
                    "the broker answered a success without JSON (is --url the broker?)",
                ) from exc
        try:
            problem = response.json()
            code, detail = str(problem["code"]), str(problem["detail"])
        except (ValueError, KeyError, TypeError):
            code, detail = f"http_{response.status_code}", "the broker answered without a problem"
        raise RemoteError(response.status_code, code, detail)

    async def apps_list(self) -> list[View]:
        found: list[View] = (await self._call("GET", "/v1/admin/apps"))["apps"]
        return found

    async def app_put(self, slug: str, spec: View, client_secret: str | None) -> View:
        body = {**spec, **({} if client_secret is None else {"client_secret": client_secret})}
        found: View = await self._call("PUT", f"/v1/admin/apps/{_seg(slug)}", json=body)
        return found

    async def app_retire(self, slug: str, *, retired: bool) -> View:
        verb = "retire" if retired else "unretire"
        found: View = await self._call("POST", f"/v1/admin/apps/{_seg(slug)}/{verb}")
        return found

    async def private_app(self, action: str, slug: str, hub_id: int, body: View) -> View:
        path = f"/v1/admin/apps/{_seg(slug)}/private/{hub_id}"
        if action == "add":
            found: View = await self._call("PUT", path, json=body)
        elif action == "rotate":
            found = await self._call("POST", f"{path}/rotate", json=body)
        else:
            found = await self._call("DELETE", path)
        return found

    async def callers_create(self, spec: View) -> View:
        found: View = await self._call("POST", "/v1/admin/callers", json=spec)
        return found

    async def callers_list(self) -> list[View]:
        found: list[View] = (await self._call("GET", "/v1/admin/callers"))["callers"]
        return found

    async def caller_rotate(self, name: str, *, overlap_seconds: float) -> View:
        body = {"overlap_seconds": overlap_seconds}
        found: View = await self._call("POST", f"/v1/admin/callers/{_seg(name)}/rotate", json=body)
        return found

    async def caller_disable(self, name: str) -> View:
        found: View = await self._call("POST", f"/v1/admin/callers/{_seg(name)}/disable")
        return found

    async def caller_gateway(self, name: str, *, hubspot_paths: list[str], weight: int) -> View:
        body = {"hubspot_paths": hubspot_paths, "gateway_weight": weight}
        found: View = await self._call("POST", f"/v1/admin/callers/{_seg(name)}/gateway", json=body)
        return found

    async def portals_list(self, *, app: str | None, state: str | None, limit: int) -> list[View]:
        params = {"app": app, "state": state, "limit": limit}
        found: list[View] = (await self._call("GET", "/v1/admin/portals", params=params))["portals"]
        return found

    async def portal(
        self, action: str, app: str | None, hub_id: int, user_id: int | None, body: View | None
    ) -> View:
        path = f"/v1/admin/portals/{hub_id}"
        params = {"app": app, "user_id": user_id}
        if action == "show":
            found: View = await self._call("GET", path, params=params)
        else:
            found = await self._call("POST", f"{path}/{action}", params=params, json=body)
        return found

    async def app_install_link(self, slug: str, *, ttl: int | None, return_to: str | None) -> View:
        body = {k: v for k, v in {"ttl": ttl, "return_to": return_to}.items() if v is not None}
        path = f"/v1/admin/apps/{_seg(slug)}/install-links"
        found: View = await self._call("POST", path, json=body or None)
        return found

    async def links_list(self, *, app: str | None, include_inactive: bool) -> list[View]:
        params = {"app": app, "all": "true" if include_inactive else None}
        found: list[View] = (await self._call("GET", "/v1/admin/install-links", params=params))[
            "links"
        ]
        return found

    async def link_revoke(self, link_id: str) -> View:
        found: View = await self._call("POST", f"/v1/admin/install-links/{_seg(link_id)}/revoke")
        return found

    async def audit(self, query: View) -> View:
        found: View = await self._call("GET", "/v1/admin/audit", params=query)
        return found

    async def webhook_events(self, query: View) -> View:
        found: View = await self._call("GET", "/v1/admin/webhooks/events", params=query)
        return found

    async def redeliver(self, event_id: int, endpoint: str | None) -> View:
        body = None if endpoint is None else {"endpoint": endpoint}
        path = f"/v1/admin/webhooks/events/{event_id}/redeliver"
        found: View = await self._call("POST", path, json=body)
        return found

    async def transit_status(self) -> View:
        found: View = await self._call("GET", "/v1/admin/keys/transit")
        return found

    async def transit_rewrap(
        self, *, batch: int, limit: int | None, retire: bool, progress: Progress
    ) -> View:
        """In chunks of :data:`REWRAP_CHUNK`, as long as each makes progress; then the
        retirement, only if nothing old is left and nothing failed (as locally)."""
        total: View = {}
        done = failed = 0
        while limit is None or done < limit:
            chunk = REWRAP_CHUNK if limit is None else min(REWRAP_CHUNK, limit - done)
            body = {"batch": batch, "limit": chunk}
            report: View = await self._call("POST", "/v1/admin/keys/transit/rewrap", json=body)
            moved = report["rewrapped"] + report["skipped"]
            done += moved
            failed += report["failed"]
            total = {
                **report,
                "rewrapped": total.get("rewrapped", 0) + report["rewrapped"],
                "skipped": total.get("skipped", 0) + report["skipped"],
                "failed": failed,
            }
            progress(total)
            if moved < chunk or report["remaining"] == 0:
                break
        if retire and total.get("remaining") == 0 and failed == 0:
            body = {"limit": 0, "retire": True}
            report = await self._call("POST", "/v1/admin/keys/transit/rewrap", json=body)
            total["min_decryption_version"] = report["min_decryption_version"]
        return total

    async def signing_status(self) -> list[View]:
        found: list[View] = (await self._call("GET", "/v1/admin/keys/signing"))["keys"]
        return found

    async def signing_rotate(self, purposes: list[str], *, overlap_seconds: float) -> list[View]:
        body = {"purposes": purposes, "overlap_seconds": overlap_seconds}
        found: list[View] = (await self._call("POST", "/v1/admin/keys/signing/rotate", json=body))[
            "keys"
        ]
        return found

    async def retention_sweep(self) -> View:
        found: View = await self._call("POST", "/v1/admin/retention/sweep")
        return found


def _seg(value: str) -> str:
    """One path segment, whatever the argument holds."""
    return quote(value, safe="")


@asynccontextmanager
async def remote(where: Remote) -> AsyncIterator[Operations]:
    headers = {"Authorization": f"Bearer {where.credential}", "User-Agent": "broker-cli"}
    async with httpx.AsyncClient(
        base_url=where.url, headers=headers, verify=where.verify, timeout=where.timeout
    ) as client:
        yield RemoteOperations(client)
