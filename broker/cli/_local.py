"""The commands' operations run in this process, on the backends (``open_admin``)."""

from __future__ import annotations

import getpass
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import asdict
from datetime import datetime
from typing import Any

from broker.cli._ops import Operations, Progress, View
from broker.config import Secret, Settings
from broker.core.admin import app_view, caller_view, link_view, portal_view
from broker.core.audit import event_view
from broker.core.models import DEFAULT_API_VERSION, App, PortalKey
from broker.core.ports import AuditFilter, EventFilter
from broker.core.signing import KeyStatus, Purpose, status_view
from broker.errors import ConfigError
from broker.web.services import Services


def actor() -> str:
    """Who runs this command, for the audit trail: ``cli:`` and the OS login name (an
    attribution aid, not an authentication: the management API records authenticated
    callers)."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no name for this uid (a bare container)
        return "cli"


def _time(raw: Any) -> datetime | None:
    return None if raw is None else datetime.fromisoformat(raw)


def signing_views(statuses: list[KeyStatus]) -> list[View]:
    return [status_view(s) for s in statuses]


class LocalOperations(Operations):
    def __init__(self, settings: Settings, stack: AsyncExitStack) -> None:
        self._settings = settings
        self._stack = stack
        self._services: Services | None = None

    async def _svc(self) -> Services:
        """Opened on first use: ``retention sweep`` needs only PostgreSQL."""
        if self._services is None:
            from broker.app import open_admin

            self._services = await self._stack.enter_async_context(open_admin(self._settings))
        return self._services

    async def apps_list(self) -> list[View]:
        return [app_view(a) for a in await (await self._svc()).admin.list_apps()]

    async def app_put(self, slug: str, spec: View, client_secret: str | None) -> View:
        app = App(
            slug=slug,
            client_id=spec["client_id"],
            redirect_uri=spec["redirect_uri"],
            scopes=tuple(spec.get("scopes", ())),
            optional_scopes=tuple(spec.get("optional_scopes", ())),
            api_version=spec.get("api_version", DEFAULT_API_VERSION),
            allow_marketplace_installs=bool(spec.get("allow_marketplace_installs")),
            user_level=bool(spec.get("user_level")),
        )
        secret = None if client_secret is None else Secret(client_secret)
        saved = await (await self._svc()).admin.save_app(app, secret, actor=actor())
        return app_view(saved.app)

    async def app_retire(self, slug: str, *, retired: bool) -> View:
        svc = await self._svc()
        return app_view(await svc.admin.retire_app(slug, retired=retired, actor=actor()))

    async def private_app(self, action: str, slug: str, hub_id: int, body: View) -> View:
        apps = (await self._svc()).private_apps
        token = Secret(body.get("access_token") or "")
        if action == "add":
            scopes = tuple(body.get("scopes") or ())
            return portal_view(await apps.add(slug, hub_id, token, scopes=scopes, actor=actor()))
        if action == "rotate":
            old = body.get("old_expires_in")
            return portal_view(
                await apps.rotate(slug, hub_id, token, old_expires_in=old, actor=actor())
            )
        done = await apps.remove(slug, hub_id, reason="private app removed", actor=actor())
        return {**portal_view(done.record), "upstream": done.upstream}

    async def callers_create(self, spec: View) -> View:
        issuer, subject = spec.get("jwt_issuer"), spec.get("jwt_subject")
        new = await (await self._svc()).callers.create(
            spec["name"],
            roles=spec["roles"],
            apps=spec.get("apps"),
            hub_ids=spec.get("hub_ids"),
            expires_at=_time(spec.get("expires_at")),
            rate_limit=spec.get("rate_limit"),
            identity=None if issuer is None or subject is None else (issuer, subject),
            with_key=spec.get("with_key", True),
            actor=actor(),
        )
        return {**caller_view(new.caller), "key": new.secret or None}

    async def callers_list(self) -> list[View]:
        return [caller_view(c) for c in await (await self._svc()).callers.list()]

    async def caller_rotate(self, name: str, *, overlap_seconds: float) -> View:
        svc = await self._svc()
        new = await svc.callers.rotate(name, overlap_seconds=overlap_seconds, actor=actor())
        return {**caller_view(new.caller), "key": new.secret}

    async def caller_disable(self, name: str) -> View:
        svc = await self._svc()
        await svc.callers.disable(name, actor=actor())
        return caller_view(await svc.callers.get(name))

    async def caller_gateway(self, name: str, *, hubspot_paths: list[str], weight: int) -> View:
        svc = await self._svc()
        changed = await svc.callers.set_gateway(
            name, hubspot_paths=hubspot_paths, gateway_weight=weight, actor=actor()
        )
        return caller_view(changed)

    async def portals_list(self, *, app: str | None, state: str | None, limit: int) -> list[View]:
        records = await (await self._svc()).admin.list_portals(app=app, state=state, limit=limit)
        return [portal_view(r) for r in records]

    async def portal(
        self, action: str, app: str | None, hub_id: int, user_id: int | None, body: View | None
    ) -> View:
        app = app or self._settings.default_app
        if not app:
            raise ConfigError(["--app is required (no BROKER_DEFAULT_APP)"])
        key = PortalKey(app, hub_id, user_id)
        svc = await self._svc()
        ops, reason = svc.operations, (body or {}).get("reason", "")
        if action == "show":
            return portal_view(await svc.admin.show_portal(key))
        if action == "revoke":
            done = await ops.revoke(key, reason=reason, actor=actor())
            return {**portal_view(done.record), "upstream": done.upstream}
        if action == "quarantine":
            return portal_view(await ops.quarantine(key, actor=actor(), reason=reason))
        if action == "release":
            return portal_view(await ops.release(key, actor=actor()))
        if action == "refresh":
            return portal_view(await ops.force_refresh(key, actor=actor()))
        link = await ops.install_link(key, actor=actor(), ttl=(body or {}).get("ttl"))
        return link.view()

    async def app_install_link(self, slug: str, *, ttl: int | None, return_to: str | None) -> View:
        svc = await self._svc()
        link = await svc.install_links.mint(slug, actor=actor(), ttl=ttl, return_to=return_to)
        return link.view()

    async def links_list(self, *, app: str | None, include_inactive: bool) -> list[View]:
        svc = await self._svc()
        links = await svc.install_links.list_links(app=app, include_inactive=include_inactive)
        return [link_view(x) for x in links]

    async def link_revoke(self, link_id: str) -> View:
        return link_view(await (await self._svc()).install_links.revoke(link_id, actor=actor()))

    async def audit(self, query: View) -> View:
        match = AuditFilter(
            hub_id=query.get("hub_id"),
            actor=query.get("actor"),
            action=query.get("action"),
            app=query.get("app"),
            since=_time(query.get("since")),
            until=_time(query.get("until")),
        )
        page = await (await self._svc()).audit_trail.search(
            match, cursor=query.get("cursor"), limit=query.get("limit", 100)
        )
        return {"events": [event_view(e) for e in page.events], "next_cursor": page.next_cursor}

    async def webhook_events(self, query: View) -> View:
        events = (await self._svc()).webhook_events
        match = EventFilter(
            type=query.get("type"),
            app=query.get("app"),
            hub_id=query.get("hub_id"),
            undelivered=query.get("undelivered") == "true",
        )
        page = await events.recent(match, before=query.get("before"), limit=query.get("limit", 50))
        return {"events": [events.view(e) for e in page.events], "next_before": page.next_before}

    async def redeliver(self, event_id: int, endpoint: str | None) -> View:
        events = (await self._svc()).webhook_events
        return events.view(await events.redeliver(event_id, actor=actor(), endpoint=endpoint))

    async def transit_status(self) -> View:
        return vars(await (await self._svc()).keys.rewrap(limit=0))

    async def transit_rewrap(
        self, *, batch: int, limit: int | None, retire: bool, progress: Progress
    ) -> View:
        keys = (await self._svc()).keys
        report = await keys.rewrap(
            batch=batch, limit=limit, progress=lambda r: progress(vars(r)), actor=actor()
        )
        if retire and report.remaining == 0 and report.failed == 0:
            report.min_decryption_version = await keys.retire_old_versions(actor=actor())
        return vars(report)

    async def signing_status(self) -> list[View]:
        return signing_views(await (await self._svc()).keyring.status())

    async def signing_rotate(self, purposes: list[str], *, overlap_seconds: float) -> list[View]:
        keyring = (await self._svc()).keyring
        chosen = list(Purpose) if "all" in purposes else [Purpose(p) for p in purposes]
        await keyring.rotate(chosen, overlap_seconds=overlap_seconds, actor=actor())
        return signing_views(await keyring.status())

    async def retention_sweep(self) -> View:
        from broker.app import sweep_retention

        report = await sweep_retention(self._settings)
        return {"swept": report.swept, "deleted": asdict(report)["deleted"]}


@asynccontextmanager
async def local(settings: Settings) -> AsyncIterator[Operations]:
    async with AsyncExitStack() as stack:
        yield LocalOperations(settings, stack)
