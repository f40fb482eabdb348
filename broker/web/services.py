"""What the web layer needs from the composition root, as one typed bundle."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from broker.config import Settings
from broker.core.admin import AdminService
from broker.core.audit import AuditTrail
from broker.core.browse import PortalBrowser
from broker.core.callers import CallerService
from broker.core.gateway import Gateway
from broker.core.health import Health
from broker.core.install import InstallService
from broker.core.install_links import InstallLinks
from broker.core.keys import KeyRotation
from broker.core.operations import PortalOperations
from broker.core.ports import AuditSink
from broker.core.private_apps import PrivateApps
from broker.core.retention import RetentionSweeper
from broker.core.signing import Keyring
from broker.core.sso import SsoLogin
from broker.core.tokens import TokenService
from broker.core.webhook_events import WebhookEvents


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    tokens: TokenService
    installs: InstallService
    install_links: InstallLinks
    callers: CallerService
    admin: AdminService
    operations: PortalOperations
    #: The operator page's reads: portal search, one portal, its timeline.
    browser: PortalBrowser
    keys: KeyRotation
    #: Signing keys per purpose (sessions and CSRF here), held by Vault.
    keyring: Keyring
    #: The lifecycle phase and backend health (``/readyz``).
    health: Health
    #: The audit trail: searched (``/v1/admin/audit``), and written by the use cases.
    audit_trail: AuditTrail
    audit: AuditSink
    #: The events outbox and its deliveries, for operators.
    webhook_events: WebhookEvents
    #: Retention; a replica runs it in the background, ``sweep()`` runs one now.
    retention: RetentionSweeper
    #: Private apps' static tokens: add, rotate, remove.
    private_apps: PrivateApps
    #: Operator sign-in through the OpenID Provider; None while BROKER_OIDC_ISSUER is unset.
    sso: SsoLogin | None = None
    #: The HubSpot gateway and the per-portal budgets (``/v1/portals/{hub_id}/hubspot/...``).
    gateway: Gateway | None = None


def services(request: Request) -> Services:
    found: Services = request.state.services
    return found
