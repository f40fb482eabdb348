"""Operator use cases: register apps (secret to Vault, the rest to Postgres), list and show
portals. Views never contain a token, a ciphertext or a secret."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from broker.config import Secret
from broker.core.models import (
    API_VERSIONS,
    APP_SLUG,
    PRIVATE_APP,
    App,
    Caller,
    InstallLinkRecord,
    PortalKey,
    PortalRecord,
    PortalState,
)
from broker.core.ports import (
    AppRepository,
    AuditEvent,
    AuditFilter,
    AuditSink,
    PortalRepository,
    SecretStore,
)
from broker.errors import AppKindMismatch, InvalidRequest, NotFound


def portal_view(record: PortalRecord) -> dict[str, Any]:
    def iso(value: Any) -> str | None:
        return None if value is None else value.isoformat()

    return {
        "app": record.key.app,
        "hub_id": record.key.hub_id,
        "user_id": record.key.user_id,
        "hub_domain": record.hub_domain,
        "state": record.state.value,
        "scopes": list(record.scopes),
        "installed_by": record.installed_by,
        "installed_at": iso(record.installed_at),
        "refreshed_at": iso(record.refreshed_at),
        "access_expires_at": iso(record.access_expires_at),
        "version": record.version,
        "failure_count": record.failure_count,
        "last_error": record.last_error,
        "next_attempt_at": iso(record.next_attempt_at),
        "revoked_at": iso(record.revoked_at),
        "token_kind": PRIVATE_APP if record.private else "oauth",
        "previous_expires_at": iso(record.previous_expires_at),
    }


def app_view(app: App) -> dict[str, Any]:
    return {
        "slug": app.slug,
        "client_id": app.client_id,
        "redirect_uri": app.redirect_uri,
        "scopes": list(app.scopes),
        "optional_scopes": list(app.optional_scopes),
        "api_version": app.api_version,
        "allow_marketplace_installs": app.allow_marketplace_installs,
        "user_level": app.user_level,
        "retired_at": None if app.retired_at is None else app.retired_at.isoformat(),
        "kind": "oauth" if app.private_hub_id is None else "private",
        "private_hub_id": app.private_hub_id,
    }


def caller_view(caller: Caller) -> dict[str, Any]:
    """Never a key or a key hash."""
    return {
        "name": caller.name,
        "roles": sorted(caller.roles),
        "apps": None if caller.apps is None else sorted(caller.apps),
        "hub_ids": None if caller.hub_ids is None else sorted(caller.hub_ids),
        "expires_at": None if caller.expires_at is None else caller.expires_at.isoformat(),
        "disabled": caller.disabled,
        "rate_limit": caller.rate_limit,
        "hubspot_paths": sorted(caller.hubspot_paths),
        "gateway_weight": caller.gateway_weight,
    }


def link_view(link: InstallLinkRecord) -> dict[str, Any]:
    """Never the link token (it is not stored)."""
    return {
        "id": link.id,
        "app": link.app,
        "hub_id": link.hub_id,
        "return_to": link.return_to,
        "created_at": link.created_at.isoformat(),
        "created_by": link.created_by,
        "expires_at": link.expires_at.isoformat(),
        "revoked_at": None if link.revoked_at is None else link.revoked_at.isoformat(),
        "revoked_by": link.revoked_by,
    }


@dataclass(frozen=True, slots=True)
class SavedApp:
    app: App
    #: False when an existing app was updated.
    created: bool


@dataclass(frozen=True, slots=True, kw_only=True, eq=False, repr=False)
class AdminService:
    portals: PortalRepository
    apps: AppRepository
    secrets_store: SecretStore
    audit_sink: AuditSink

    async def add_app(self, app: App, client_secret: Secret | None, *, actor: str) -> App:
        return (await self.save_app(app, client_secret, actor=actor)).app

    async def save_app(self, app: App, client_secret: Secret | None, *, actor: str) -> SavedApp:
        """Register or update an app. ``client_secret`` goes first in its list in Vault;
        None keeps the stored secrets (an update only: a new app needs one)."""
        problems = []
        if not APP_SLUG.match(app.slug):
            problems.append({"field": "slug", "message": "1-63 lowercase letters, digits, '-'"})
        if not app.client_id.strip():
            problems.append({"field": "client_id", "message": "required"})
        redirect = urlsplit(app.redirect_uri)
        if redirect.scheme not in ("http", "https") or not redirect.netloc or redirect.fragment:
            problems.append({"field": "redirect_uri", "message": "an absolute http(s) URL"})
        if app.api_version not in API_VERSIONS:
            problems.append({"field": "api_version", "message": f"one of {API_VERSIONS}"})
        if client_secret is not None and not client_secret:
            problems.append({"field": "client_secret", "message": "required"})
        existing = None if problems else await self.apps.get_app(app.slug)
        if client_secret is None and existing is None and not problems:
            problems.append({"field": "client_secret", "message": "required for a new app"})
        if problems:
            raise InvalidRequest("the app is not valid", errors=problems)
        if existing is not None and existing.private_hub_id is not None:
            raise AppKindMismatch(f"app {app.slug!r} is a private app (broker apps add-private)")
        if client_secret is not None:
            # Secret first: an app row without a secret would fail every install.
            await self.secrets_store.add_client_secret(app.slug, client_secret)
        created = await self.apps.save_app(app)
        self.audit_sink.record(
            "app.saved", actor=actor, app=app.slug, secret_added=client_secret is not None
        )
        saved = await self.apps.get_app(app.slug)
        return SavedApp(saved or app, created)

    async def retire_app(self, slug: str, *, retired: bool, actor: str) -> App:
        """Retire an app (it installs nothing new: no install, link or marketplace callback;
        its portals are still served and refreshed until revoked), or put it back."""
        app = await self.apps.retire_app(slug, retired=retired, actor=actor)
        if app is None:
            raise NotFound(f"unknown app {slug!r}", code="app_not_found")
        self.audit_sink.record("app.retired" if retired else "app.unretired", actor=actor, app=slug)
        return app

    async def list_apps(self) -> list[App]:
        return await self.apps.list_apps()

    async def list_portals(
        self, *, app: str | None, state: str | None, limit: int
    ) -> Sequence[PortalRecord]:
        try:
            wanted = None if state is None else PortalState(state)
        except ValueError as exc:
            raise InvalidRequest(f"unknown state {state!r}") from exc
        return await self.portals.list_portals(app=app, state=wanted, limit=limit)

    async def audit(
        self,
        *,
        hub_id: int | None = None,
        actor: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[AuditEvent]:
        """Newest first."""
        match = AuditFilter(hub_id=hub_id, actor=actor, action=action, since=since)
        return await self.audit_sink.search(match, after=None, limit=limit)

    async def show_portal(self, key: PortalKey) -> PortalRecord:
        record = await self.portals.get_portal(key)
        if record is None:
            raise NotFound(f"no portal {key}", code="portal_not_found")
        return record
