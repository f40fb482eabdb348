"""Install-link test support: links signed past the minting checks, their claims, the
failure page, and the portal count."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx

from broker.app import open_admin
from broker.config import Settings
from broker.core.install_links import LinkClaims


def portal_count(settings: Settings) -> int:
    async def count() -> int:
        conn = await asyncpg.connect(settings.database_url.get())
        try:
            return int(await conn.fetchval("SELECT count(*) FROM portals"))
        finally:
            await conn.close()

    return asyncio.run(count())


def sign(settings: Settings, claims: LinkClaims) -> str:
    """A link token signed with the deployment's real link key and stored as minted links
    are, bypassing the minting checks (the TTL cap, the origin check, the app lookup)."""

    async def run() -> str:
        async with open_admin(settings) as svc:
            token = await svc.install_links.signer.sign(claims)
        conn = await asyncpg.connect(settings.database_url.get())
        try:
            await conn.execute(
                """INSERT INTO install_links (id, app, hub_id, return_to, created_by, expires_at)
                   VALUES ($1, $2, $3, $4, 'test', to_timestamp($5))""",
                claims.id,
                claims.app,
                claims.hub_id,
                claims.return_to,
                claims.exp,
            )
        finally:
            await conn.close()
        return token

    return asyncio.run(run())


def claims(app: str, exp: int, return_to: str | None = None, **more: Any) -> LinkClaims:
    """Link claims issued now with a fresh id."""
    return LinkClaims(f"il_{secrets.token_hex(6)}", app, int(time.time()), exp, return_to, **more)


def assert_failed(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert "Installation failed" in response.text
    assert f"<code>{code}</code>" in response.text


def token_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["link"][0]
