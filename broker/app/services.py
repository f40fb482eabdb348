"""Building the services: every adapter, wired into the use cases, torn down in reverse order
(``open_services`` for a serving replica, ``open_admin`` for the CLI and one-off tasks)."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from urllib.parse import unquote, urlsplit

from broker import metrics
from broker.adapters.hubspot import HubSpotOAuth
from broker.adapters.jwks import IssuerConfig, JwksVerifier
from broker.adapters.oidc import OidcClient
from broker.adapters.postgres.audit import PostgresAudit
from broker.adapters.postgres.callers import PostgresCallers
from broker.adapters.postgres.migrate import pending
from broker.adapters.postgres.outbox import PostgresEventLog, PostgresOutbox
from broker.adapters.postgres.pool import Database
from broker.adapters.postgres.portal_search import PostgresPortalSearch, PostgresPortalTimeline
from broker.adapters.postgres.portals import PostgresPortals
from broker.adapters.postgres.retention import PostgresRetention
from broker.adapters.postgres.signing import PostgresInstallLinks, PostgresKeySchedule
from broker.adapters.redis import RedisCoordinator
from broker.adapters.vault import VaultAdapter
from broker.adapters.webhook_http import HttpWebhookSender
from broker.app.gateway import open_gateway
from broker.config import Settings
from broker.config_sso import grants_of
from broker.core.admin import AdminService
from broker.core.apps import AppCatalog
from broker.core.audit import AuditTrail
from broker.core.browse import PortalBrowser
from broker.core.caller_cache import CallerCache
from broker.core.callers import CallerService
from broker.core.health import Health
from broker.core.install import InstallService
from broker.core.install_links import InstallLinks, LinkSigner
from broker.core.install_state import StateSeal
from broker.core.invalidation import Invalidations
from broker.core.keys import KeyRotation
from broker.core.operations import PortalOperations, RevocationRetrier
from broker.core.private_apps import PrivateApps
from broker.core.refresh import RefreshEngine
from broker.core.refresh_policy import Checkpoint
from broker.core.refresher import ProactiveRefresher
from broker.core.retention import RetentionPolicy, RetentionSweeper
from broker.core.signing import Keyring
from broker.core.sso import SsoLogin
from broker.core.tokens import TokenService
from broker.core.webhook_events import WebhookEvents
from broker.core.webhooks import WebhookDispatcher
from broker.errors import FatalError
from broker.web.services import Services


def replica_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@asynccontextmanager
async def open_services(
    settings: Settings, *, serving: bool = True, checkpoint: Checkpoint | None = None
) -> AsyncIterator[Services]:
    """Build every adapter and use case; close them in reverse order on exit.

    ``serving=False`` (the CLI) builds the same use cases without the background work of a
    replica: no refresher, no subscription, no invalidation poll, no retry loops.
    ``checkpoint`` is the refresh protocol's fault-test hook (:mod:`broker.dev.faults`)."""
    async with AsyncExitStack() as stack:
        db = await Database.connect(
            settings.database_url.get(),
            min_size=settings.database_pool_min if serving else 1,
            max_size=settings.database_pool_max if serving else 2,
            timeout=settings.db_timeout,
            password=_database_password(settings),
        )
        stack.push_async_callback(db.close)
        await require_migrated(db)
        vault = VaultAdapter(settings)
        stack.push_async_callback(vault.close)
        await vault.login()
        coordinator = RedisCoordinator(settings)
        stack.push_async_callback(coordinator.close)
        oauth_client = HubSpotOAuth(settings)
        stack.push_async_callback(oauth_client.close)
        # One adapter for every aggregate of the portals' tables, passed as each port.
        portals = PostgresPortals(db)
        apps = AppCatalog(portals)
        audit = PostgresAudit(db)
        stack.push_async_callback(audit.close)  # flushes what is queued

        # One Vault Transit key per purpose (sessions and CSRF, install links, fingerprints),
        # used only through Vault: no replica and no operator ever holds one.
        keyring = Keyring(
            macs=vault,
            schedule=PostgresKeySchedule(db),
            key_prefix=settings.vault_signing_key_prefix,
            audit=audit,
        )
        await keyring.check()
        replica = replica_id()
        engine = RefreshEngine(
            settings,
            portals=portals,
            leases=portals,
            apps=apps,
            coordinator=coordinator,
            cipher=vault,
            secrets_store=vault,
            oauth=oauth_client,
            limiter=coordinator,
            audit=audit,
            replica_id=replica,
            keyring=keyring,
            checkpoint=checkpoint,
        )
        verifier = None
        if settings.jwt_issuer_list:
            verifier = JwksVerifier(
                [IssuerConfig.from_dict(i) for i in settings.jwt_issuer_list],
                ca_bundle=settings.ca_bundle,
            )
            stack.push_async_callback(verifier.close)
        tokens = TokenService(
            settings,
            portals=portals,
            cipher=vault,
            engine=engine,
            audit=audit,
            keyring=keyring,
            private_tokens=vault,
        )
        caller_repository = PostgresCallers(db)
        caller_cache = CallerCache(settings)
        invalidations = Invalidations(
            settings,
            coordinator=coordinator,
            portals=portals,
            tokens=tokens,
            callers=caller_repository,
            caller_cache=caller_cache,
        )
        stack.push_async_callback(invalidations.close)
        callers = CallerService(
            settings,
            callers=caller_repository,
            audit=audit,
            cache=caller_cache,
            invalidations=invalidations,
            verifier=verifier,
        )
        stack.push_async_callback(callers.close)
        install_links = InstallLinks(
            settings,
            signer=LinkSigner(keyring),
            store=PostgresInstallLinks(db),
            apps=apps,
            audit=audit,
        )
        operations = PortalOperations(
            settings,
            portals=portals,
            leases=portals,
            revocations=portals,
            apps=apps,
            engine=engine,
            cipher=vault,
            secrets_store=vault,
            oauth=oauth_client,
            invalidations=invalidations,
            audit=audit,
            links=install_links,
            private_tokens=vault,
        )
        health = Health(
            {
                metrics.Backend.POSTGRES: portals.ping,
                metrics.Backend.REDIS: coordinator.ping,
                metrics.Backend.VAULT: vault.ping,
            },
            serves_cached=tokens.serves_cached,
            hubspot_down=lambda: engine.hubspot_paused_for() > 0,
        )
        sweeper = retention_sweeper(settings, db)
        if serving:
            health.start()
            stack.push_async_callback(health.close)
            health.wait_on_shutdown(tokens.finish)
            # LIFO: runs before the clients it needs (HubSpot, Vault, Postgres) close.
            stack.push_async_callback(tokens.finish, settings.shutdown_timeout)
            vault.start_renewal()
            coordinator.start()
            audit.start()
            callers.start()
            invalidations.start()
            retrier = RevocationRetrier(operations)
            retrier.start()
            stack.push_async_callback(retrier.close)
            sweeper.start()
            stack.push_async_callback(sweeper.close)
            if settings.refresher_enabled:
                refresher = ProactiveRefresher(
                    settings,
                    portals=portals,
                    leases=portals,
                    engine=engine,
                    limiter=coordinator,
                    replica_id=replica,
                )
                refresher.start()
                stack.push_async_callback(refresher.close)
                health.when_draining(refresher.stop_claiming)
                health.wait_on_shutdown(refresher.finish)
            if settings.webhook_url_list:
                sender = HttpWebhookSender(
                    timeout=settings.webhook_timeout, ca_bundle=settings.ca_bundle
                )
                stack.push_async_callback(sender.close)
                webhooks = WebhookDispatcher(
                    outbox=PostgresOutbox(db),
                    sender=sender,
                    urls=settings.webhook_url_list,
                    signing_secrets=lambda: settings.webhook_secrets_by_url,
                    timeout=settings.webhook_timeout,
                    batch=settings.webhook_batch,
                    interval=settings.webhook_interval,
                    backoff_base=settings.webhook_backoff_base,
                    backoff_cap=settings.webhook_backoff_cap,
                    stuck_after=settings.webhook_stuck_after,
                    replica_id=replica,
                )
                webhooks.start()
                stack.push_async_callback(webhooks.close)  # LIFO: closed before the sender
        sso = None
        if settings.oidc_enabled:
            provider = identity_provider(settings)
            stack.push_async_callback(provider.close)
            sso = SsoLogin(
                provider=provider,
                keyring=keyring,
                coordinator=coordinator,
                audit=audit,
                grants=grants_of(settings),
            )
        yield Services(
            settings=settings,
            tokens=tokens,
            installs=InstallService(
                settings,
                portals=portals,
                coordinator=coordinator,
                cipher=vault,
                secrets_store=vault,
                oauth=oauth_client,
                apps=apps,
                audit=audit,
                links=install_links,
                # The state kept in Redis is sealed under the session key, with its own label.
                seal=StateSeal(keyring),
                keyring=keyring,
            ),
            install_links=install_links,
            callers=callers,
            admin=AdminService(
                portals=portals, apps=portals, secrets_store=vault, audit_sink=audit
            ),
            operations=operations,
            browser=PortalBrowser(
                portals=portals,
                search=PostgresPortalSearch(db),
                timeline=PostgresPortalTimeline(db),
            ),
            keys=KeyRotation(keys=vault, store=portals, audit=audit),
            keyring=keyring,
            health=health,
            audit_trail=AuditTrail(audit),
            audit=audit,
            webhook_events=WebhookEvents(
                log=PostgresEventLog(db), urls=settings.webhook_url_list, audit=audit
            ),
            retention=sweeper,
            private_apps=PrivateApps(
                portals=portals,
                apps=portals,
                private=portals,
                store=vault,
                keyring=keyring,
                invalidations=invalidations,
                operations=operations,
                audit=audit,
            ),
            sso=sso,
            gateway=open_gateway(
                settings, stack, tokens=tokens, operations=operations, coordinator=coordinator
            ),
        )


async def require_migrated(db: Database) -> None:
    """Refuse to run on a database with migrations pending (``broker migrate`` first)."""
    async with db.connection() as conn:
        missing = await pending(conn)
    if missing:
        raise FatalError(
            f"{len(missing)} database migration(s) pending: run `broker migrate` first",
            code="migrations_pending",
        )


def _database_password(settings: Settings) -> Callable[[], str] | None:
    """For a URL with a password: asked on every new connection, so a password rotated in
    BROKER_DATABASE_URL_FILE is used without a restart. None: the URL's own rules."""
    if urlsplit(settings.database_url.get()).password is None:
        return None
    return lambda: unquote(urlsplit(settings.database_url.get()).password or "")


def open_admin(settings: Settings) -> AbstractAsyncContextManager[Services]:
    """The use cases for the CLI and scripts, without a replica's background work."""
    return open_services(settings, serving=False)


def retention_sweeper(settings: Settings, db: Database) -> RetentionSweeper:
    return RetentionSweeper(
        RetentionPolicy.from_settings(settings),
        store=PostgresRetention(db),
        interval=settings.retention_interval,
    )


def identity_provider(settings: Settings) -> OidcClient:
    return OidcClient(
        issuer=settings.oidc_issuer,
        client_id=settings.oidc_client_id,
        client_secret=settings.oidc_client_secret,
        scopes=settings.oidc_scopes,
        groups_claim=settings.oidc_groups_claim,
        ca_bundle=settings.ca_bundle,
    )
