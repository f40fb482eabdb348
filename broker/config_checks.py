"""Cross-field checks of :class:`broker.config.Settings` (``Settings.validate``), kept out of
:mod:`broker.config` so that module stays the list of settings and their parsing."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from broker import config_sso
from broker.config_values import MAX_INSTALL_LINK_TTL, PREFIX, REDIS_SCHEMES, SentinelUrl

if TYPE_CHECKING:
    from broker.config import Settings


def problems(settings: Settings) -> list[str]:
    """Every problem found (empty when the settings are usable)."""
    problems: list[str] = []
    for name in ("hubspot_api_url", "hubspot_app_url"):
        parts = urlsplit(getattr(settings, name))
        if parts.scheme not in ("http", "https") or not parts.netloc:
            problems.append(f"{PREFIX}{name.upper()}: must be an http(s) URL")
    for addr in settings.vault_addr_list or [""]:
        parts = urlsplit(addr)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            problems.append(f"{PREFIX}VAULT_ADDR: each address must be an http(s) URL")
            break
    if urlsplit(settings.database_url.get()).scheme not in ("postgres", "postgresql"):
        problems.append(f"{PREFIX}DATABASE_URL: must be a postgresql:// URL")
    if urlsplit(settings.redis_url.get()).scheme not in REDIS_SCHEMES:
        problems.append(
            f"{PREFIX}REDIS_URL: must be a redis://, rediss:// or redis+sentinel:// URL"
        )
    try:
        SentinelUrl.parse(settings.redis_url.get())
    except ValueError as exc:
        problems.append(f"{PREFIX}REDIS_URL: {exc}")
    if settings.vault_auth == "token" and not settings.vault_token:
        problems.append(f"{PREFIX}VAULT_TOKEN: required when {PREFIX}VAULT_AUTH=token")
    if settings.vault_auth == "approle" and not (
        settings.vault_role_id and settings.vault_secret_id
    ):
        problems.append(f"{PREFIX}VAULT_ROLE_ID and {PREFIX}VAULT_SECRET_ID: required for approle")
    if settings.vault_auth == "kubernetes" and not settings.vault_k8s_role:
        problems.append(f"{PREFIX}VAULT_K8S_ROLE: required for kubernetes auth")
    if settings.public_port and (settings.public_host, settings.public_port) == (
        settings.host,
        settings.port,
    ):
        problems.append(f"{PREFIX}PUBLIC_PORT: must differ from {PREFIX}PORT")
    for name, port in (("PORT", settings.port), ("PUBLIC_PORT", settings.public_port)):
        if not 0 <= port <= 65535:
            problems.append(f"{PREFIX}{name}: must be 0-65535")
    if bool(settings.tls_cert_file) != bool(settings.tls_key_file):
        problems.append(f"{PREFIX}TLS_CERT_FILE and {PREFIX}TLS_KEY_FILE: set both or neither")
    for name in ("tls_cert_file", "tls_key_file", "vault_cacert", "ca_bundle"):
        path = getattr(settings, name)
        if path and not os.access(path, os.R_OK):
            problems.append(f"{PREFIX}{name.upper()}: {path} is not a readable file")
    try:
        settings.trusted_proxy_list  # noqa: B018 - parsed for its errors
    except ValueError as exc:
        problems.append(f"{PREFIX}TRUSTED_PROXIES: {exc}")
    if min(settings.drain_seconds, settings.shutdown_timeout, settings.prewarm_seconds) < 0:
        problems.append(
            f"{PREFIX}DRAIN_SECONDS, _SHUTDOWN_TIMEOUT and _PREWARM_SECONDS: must be >= 0"
        )
    if settings.prewarm_portals < 0:
        problems.append(f"{PREFIX}PREWARM_PORTALS: must be >= 0 (0: no pre-warming)")
    if settings.auth_lookup_rate <= 0:
        problems.append(f"{PREFIX}AUTH_LOOKUP_RATE: must be > 0")
    if (
        not 0
        < settings.refresh_rate_min
        <= settings.refresh_rate_per_app
        <= settings.refresh_rate_max
    ):
        problems.append(
            f"{PREFIX}REFRESH_RATE_PER_APP: must be within {PREFIX}REFRESH_RATE_MIN (> 0) "
            f"and {PREFIX}REFRESH_RATE_MAX"
        )
    if min(settings.refresher_batch, settings.refresher_concurrency) < 1:
        problems.append(f"{PREFIX}REFRESHER_BATCH and _CONCURRENCY: must be >= 1")
    if settings.refresh_rate_step <= 0:
        problems.append(f"{PREFIX}REFRESH_RATE_STEP: must be > 0")
    if settings.marketplace_exchange_rate <= 0:
        problems.append(f"{PREFIX}MARKETPLACE_EXCHANGE_RATE: must be > 0")
    if not 0 < settings.min_ttl_default <= settings.min_ttl_max:
        problems.append(f"{PREFIX}MIN_TTL_DEFAULT: must be > 0 and <= {PREFIX}MIN_TTL_MAX")
    if not 0 < settings.install_link_ttl <= MAX_INSTALL_LINK_TTL:
        problems.append(
            f"{PREFIX}INSTALL_LINK_TTL: must be 1-{MAX_INSTALL_LINK_TTL} seconds (30 days)"
        )
    if settings.database_pool_min > settings.database_pool_max:
        problems.append(f"{PREFIX}DATABASE_POOL_MIN: must be <= {PREFIX}DATABASE_POOL_MAX")
    if any(
        urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc
        for url in settings.webhook_url_list
    ):
        # The URL itself is not echoed: it may carry credentials.
        problems.append(f"{PREFIX}WEBHOOK_URLS: every URL must be an http(s) URL")
    if settings.webhook_url_list:
        try:
            settings.webhook_secrets_by_url  # noqa: B018 - parsed for its errors
        except ValueError as exc:
            problems.append(f"{PREFIX}WEBHOOK_SECRET: {exc}")
    if min(settings.webhook_timeout, settings.webhook_batch, settings.webhook_interval) <= 0:
        problems.append(f"{PREFIX}WEBHOOK_TIMEOUT, _BATCH and _INTERVAL: must be > 0")
    if not 0 < settings.webhook_backoff_base <= settings.webhook_backoff_cap:
        problems.append(
            f"{PREFIX}WEBHOOK_BACKOFF_BASE: must be > 0 and <= {PREFIX}WEBHOOK_BACKOFF_CAP"
        )
    for name in ("audit_retention_days", "events_retention_days", "journal_retention_hours"):
        if getattr(settings, name) < 0:
            problems.append(f"{PREFIX}{name.upper()}: must be >= 0 (0 keeps rows forever)")
    if settings.retention_interval <= 0:
        problems.append(f"{PREFIX}RETENTION_INTERVAL: must be > 0")
    problems += config_sso.problems(settings)
    try:
        settings.jwt_issuer_list  # noqa: B018 - parsed for its errors
    except ValueError as exc:
        problems.append(f"{PREFIX}JWT_ISSUERS: {exc}")
    # Self-fencing (DESIGN.md): a lease must cover Vault + HubSpot + two DB round trips.
    needed = settings.refresh_budget_seconds + 1.0
    if settings.lease_seconds < needed:
        problems.append(
            f"{PREFIX}LEASE_SECONDS: {settings.lease_seconds:g} is shorter than the refresh "
            f"budget (vault x nodes + hubspot + 2 x db timeouts + 1 s margin = {needed:g})"
        )
    return problems
