"""Settings, read once from the environment into a frozen object.

Every key has the ``BROKER_`` prefix. :func:`load_settings` reports *every* missing or bad
key at once (``broker check-config`` prints them without serving). Secrets are wrapped in
:class:`Secret`, whose ``repr``/``str`` are masked, so a settings object can be logged.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Literal
from urllib.parse import urlsplit

from broker import config_checks
from broker.config_values import MAX_INSTALL_LINK_TTL as MAX_INSTALL_LINK_TTL
from broker.config_values import PREFIX as PREFIX
from broker.config_values import Secret as Secret
from broker.config_values import SentinelUrl as SentinelUrl
from broker.errors import ConfigError

VaultAuth = Literal["token", "approle", "kubernetes"]
LogFormat = Literal["json", "console"]


@dataclass(frozen=True, slots=True)
class Settings:
    # --- backends -------------------------------------------------------------------------
    database_url: Secret
    redis_url: Secret
    vault_addr: str
    vault_auth: VaultAuth = "token"
    vault_token: Secret = field(default_factory=lambda: Secret(""))
    vault_role_id: str = ""
    vault_secret_id: Secret = field(default_factory=lambda: Secret(""))
    vault_k8s_role: str = ""
    vault_k8s_jwt_path: str = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    vault_kv_mount: str = "secret"
    vault_kv_prefix: str = "hubspot-token-broker"
    vault_transit_mount: str = "transit"
    vault_transit_key: str = "hubspot-tokens"
    # Signing keys (broker.core.signing): one Transit key per purpose on the Transit mount,
    # named this prefix + "session", "install-link", "fingerprint".
    vault_signing_key_prefix: str = "hubspot-token-broker-"
    # PEM bundle of the CA(s) that sign Vault's certificate. Empty: the system's CAs.
    vault_cacert: str = ""
    redis_prefix: str = "htb:"
    database_pool_min: int = 2
    database_pool_max: int = 10
    # --- HubSpot --------------------------------------------------------------------------
    hubspot_api_url: str = "https://api.hubapi.com"
    hubspot_app_url: str = "https://app.hubspot.com"
    # PEM bundle of extra CAs trusted for outgoing HTTPS besides the public ones (HubSpot
    # through a TLS-inspecting proxy, webhook receivers, JWKS and TokenReview endpoints).
    ca_bundle: str = ""
    # --- serving --------------------------------------------------------------------------
    # The internal listener: /v1/*, /admin, /metrics and the probes (and, while public_port
    # is 0, the install flow too).
    host: str = "127.0.0.1"
    port: int = 8080
    # The public listener: only /oauth/* (the install flow HubSpot's browser redirect must
    # reach), for an ingress to expose. 0: no separate listener.
    public_host: str = "127.0.0.1"
    public_port: int = 0
    # TLS on both listeners: PEM certificate (chain) and key, re-read when the files change
    # (cert-manager rotates them in place). Empty: plain HTTP (e.g. behind a TLS proxy).
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # Proxies whose X-Forwarded-Proto / X-Forwarded-For are believed (comma-separated IPs or
    # CIDRs, e.g. "10.0.0.0/8"). Empty: none, the connection's own scheme and peer count.
    trusted_proxies: str = ""
    # On SIGTERM: turn unready at once, keep serving this many seconds (load balancers stop
    # routing here), then stop accepting, then give in-flight requests and refreshes
    # shutdown_timeout seconds to finish.
    drain_seconds: float = 5.0
    shutdown_timeout: float = 20.0
    # Before turning ready, load the tokens of the portals asked for most in the last 15 min
    # (at most prewarm_portals, for at most prewarm_seconds): a restarted replica does not
    # send every caller down the cold path at once. 0 portals: no pre-warming.
    prewarm_portals: int = 1000
    prewarm_seconds: float = 10.0
    default_app: str = ""
    min_ttl_default: int = 300
    min_ttl_max: int = 1500
    # Seconds a verified caller is believed without asking Postgres. Changes to a caller
    # (disable, rotate, create) reach every replica at once over Redis, or within
    # invalidation_poll_seconds from Postgres; this is only the bound when both are missed.
    caller_cache_seconds: float = 10.0
    # Per replica: Postgres lookups per second of caller keys this replica does not know
    # (a token bucket with two seconds of burst; lookups that authenticate are given back).
    # Beyond it, such keys get 429 auth_throttled with Retry-After instead of a lookup, so a
    # flood of made-up keys cannot load the database. Callers known here are never limited.
    auth_lookup_rate: float = 50.0
    # Workload identity: a JSON list of {"issuer", "audience", and "jwks_url" (verify
    # against the issuer's keys) or "tokenreview_url" (ask the Kubernetes API server)
    # [, "ca_file", "token_file", "review_rate"]}; callers then authenticate with the
    # issuer's JWTs. Empty: keys only.
    jwt_issuers: str = ""
    # Per caller and replica: a token bucket of this rate with two seconds of burst.
    caller_rate: float = 200.0
    install_state_ttl: int = 600
    # ``/oauth/install`` only for operator-signed links (broker.core.install_links): minted by
    # `broker apps install-link` / `broker portals install-link`. When false, a bare
    # ``/oauth/install?app=`` works too (a link that is present is still verified).
    install_links_required: bool = True
    # Seconds a minted install link stays valid unless the operator asks for less or more
    # (at most MAX_INSTALL_LINK_TTL, 30 days).
    install_link_ttl: int = 7 * 86400
    # Per replica: HubSpot code exchanges per second for marketplace installs (a callback
    # with a code and no state: anyone can send one). A token bucket with two seconds of
    # burst; beyond it 429 install_throttled. Codes HubSpot refused are refused from memory.
    marketplace_exchange_rate: float = 1.0
    # Origins an install may return the browser to (``/oauth/install?return_to=``), comma-
    # separated, e.g. "https://admin.example.com". Empty: no return_to accepted.
    return_to_origins: str = ""
    # --- the operator page's sign-in (broker.config_sso; docs/operations.md, "Single
    # sign-on"). OpenID Connect when oidc_issuer is set: code flow with PKCE, the IdP's groups
    # mapped to roles. Empty: caller keys only.
    oidc_issuer: str = ""
    oidc_client_id: str = ""
    oidc_client_secret: Secret = field(default_factory=lambda: Secret(""))
    # Empty: <this listener's scheme and host>/admin/oidc/callback, from each request.
    oidc_redirect_uri: str = ""
    oidc_scopes: str = "openid email profile"
    oidc_groups_claim: str = "groups"
    oidc_roles: str = ""  # GROUP=ROLE[+ROLE][,GROUP=...]
    oidc_apps: str = ""  # GROUP=APP[+APP][,...]; a group not named: every app
    # With OIDC on, the caller-key login form is off unless this is true (a break-glass
    # fallback). Without OIDC the key login is the only one, whatever this says.
    admin_key_login: bool = False
    # --- the HubSpot gateway (/v1/portals/{hub_id}/hubspot/...) and each portal's budget
    # (broker.core.gateway, broker.core.budget; docs/operations.md, "HubSpot gateway")
    gateway_max_body: int = 10 * 1024 * 1024
    gateway_timeout: float = 30.0
    budget_per_ten_seconds: int = 110
    budget_per_day: int = 0
    budget_max_wait: float = 10.0
    budget_queue: int = 500
    # --- timeouts (seconds); the lease must outlive all of them, see validate() ----------
    db_timeout: float = 5.0
    redis_timeout: float = 0.25
    vault_timeout: float = 5.0
    hubspot_timeout: float = 10.0
    lease_seconds: float = 30.0
    secret_cache_seconds: float = 300.0
    # --- proactive refresher --------------------------------------------------------------
    refresher_enabled: bool = True
    refresher_batch: int = 64  # most portals one claim leases
    refresher_concurrency: int = 128  # the ceiling of the refresher's adaptive slots
    refresher_interval: float = 1.0
    # Proactive refreshes per second per app, shared by all replicas and adaptive (AIMD,
    # broker.adapters.redis_rate): it starts at refresh_rate_per_app, grows by
    # refresh_rate_step per second while more portals are due than it lets through, halves on
    # a 429 from HubSpot, and stays within [refresh_rate_min, refresh_rate_max].
    refresh_rate_per_app: float = 20.0
    refresh_rate_min: float = 1.0
    refresh_rate_max: float = 250.0
    refresh_rate_step: float = 5.0
    # Replicas that missed a Redis invalidation learn it from Postgres within this period.
    invalidation_poll_seconds: float = 5.0
    # --- webhooks: the events outbox, signed and POSTed (broker.core.webhooks); off while
    # webhook_urls is empty. A Secret because receiver URLs may carry credentials.
    webhook_urls: Secret = field(default_factory=lambda: Secret(""))  # comma-separated
    # One entry per receiver, comma-separated in the order of webhook_urls; an entry is one
    # or more Standard Webhooks secrets ("whsec_" + base64 of 24-64 random bytes) separated
    # by spaces: all of them sign (a rotation's overlap: new first, old until the receiver
    # switched). No secret may serve two receivers.
    webhook_secret: Secret = field(default_factory=lambda: Secret(""))
    webhook_timeout: float = 10.0
    webhook_batch: int = 32  # deliveries in flight per receiver and replica
    webhook_interval: float = 1.0
    webhook_backoff_base: float = 1.0
    webhook_backoff_cap: float = 300.0
    webhook_stuck_after: int = 20  # attempts after which a delivery counts as stuck
    # --- retention (broker.core.retention): ages after which rows are deleted; 0 keeps
    # that kind forever. A revoked portal's journal rows are always deleted, whatever these.
    audit_retention_days: int = 400
    events_retention_days: int = 30  # only events every webhook receiver acknowledged
    journal_retention_hours: int = 24  # only applied or superseded journal rows
    retention_interval: float = 300.0  # seconds between sweeps (jittered; one replica sweeps)
    # --- logs -----------------------------------------------------------------------------
    log_level: str = "INFO"
    log_format: LogFormat = "json"

    def validate(self) -> list[str]:
        """Cross-field checks; returns problems (empty when the settings are usable)."""
        return config_checks.problems(self)

    @property
    def jwt_issuer_list(self) -> list[dict[str, str]]:
        """``jwt_issuers`` parsed; raises ValueError naming what is wrong."""
        if not self.jwt_issuers.strip():
            return []
        try:
            parsed = json.loads(self.jwt_issuers)
        except ValueError as exc:
            raise ValueError("not valid JSON") from exc
        if not isinstance(parsed, list):
            raise ValueError("must be a JSON list of issuers")
        for entry in parsed:
            if not isinstance(entry, dict) or not {"issuer", "audience"} <= set(entry):
                raise ValueError("each issuer needs issuer and audience")
            urls = [k for k in ("jwks_url", "tokenreview_url") if k in entry]
            if len(urls) != 1:
                raise ValueError("each issuer needs exactly one of jwks_url and tokenreview_url")
            if urlsplit(str(entry[urls[0]])).scheme not in ("http", "https"):
                raise ValueError(f"{urls[0]} must be an http(s) URL")
            for number in ("refetch_seconds", "review_rate"):
                if number in entry and not _positive(entry[number]):
                    raise ValueError(f"{number} must be a number above 0")
        return parsed

    @property
    def oidc_enabled(self) -> bool:
        return bool(self.oidc_issuer)

    @property
    def key_login_enabled(self) -> bool:
        """Whether ``/admin/login`` takes caller keys: always without OIDC, else opt-in."""
        return not self.oidc_enabled or self.admin_key_login

    @property
    def vault_addr_list(self) -> list[str]:
        """``vault_addr`` split on commas: the nodes of an HA cluster (standbys forward to
        the active node), tried in order, staying on the one that answers."""
        return [a.strip().rstrip("/") for a in self.vault_addr.split(",") if a.strip()]

    @property
    def trusted_proxy_list(self) -> list[str]:
        """``trusted_proxies`` as networks; raises ValueError naming a bad entry."""
        networks = []
        for entry in (e.strip() for e in self.trusted_proxies.split(",")):
            if not entry:
                continue
            try:
                networks.append(str(ipaddress.ip_network(entry, strict=False)))
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or CIDR") from None
        return networks

    @property
    def return_to_origin_list(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.return_to_origins.split(",") if o.strip()]

    @property
    def webhook_url_list(self) -> list[str]:
        """``webhook_urls`` split on commas, blanks dropped."""
        return [url.strip() for url in self.webhook_urls.get().split(",") if url.strip()]

    @property
    def webhook_secrets_by_url(self) -> dict[str, list[Secret]]:
        """Each receiver URL's signing secrets (``webhook_secret`` parsed; read anew on
        every call, so a secret file's rotation is seen); ValueError names what is wrong,
        never a secret."""
        urls = self.webhook_url_list
        entries = [e.split() for e in self.webhook_secret.get().split(",")]
        if len(entries) != len(urls) or any(not entry for entry in entries):
            raise ValueError(
                f"one entry per URL of {PREFIX}WEBHOOK_URLS ({len(urls)}), comma-separated, "
                "each one or more whsec_ secrets separated by spaces"
            )
        seen: set[str] = set()
        for number, entry in enumerate(entries, 1):
            for secret in entry:
                if not _is_whsec(secret):
                    raise ValueError(
                        f"entry {number}: every secret must be whsec_ and the base64 of "
                        "24-64 random bytes"
                    )
                if secret in seen:
                    raise ValueError(f"entry {number}: a secret may serve one receiver only")
                seen.add(secret)
        return {url: [Secret(s) for s in entry] for url, entry in zip(urls, entries, strict=True)}

    @property
    def refresh_budget_seconds(self) -> float:
        """Worst-case time one refresh holds its lease after taking it (a Vault call may
        try every listed node, each within the Vault timeout)."""
        vault = self.vault_timeout * max(1, len(self.vault_addr_list))
        return vault + self.hubspot_timeout + 2 * self.db_timeout


def _is_whsec(secret: str) -> bool:
    encoded = secret.removeprefix("whsec_")
    if encoded == secret:
        return False
    try:
        raw = base64.b64decode(encoded, validate=True)
    except ValueError:
        return False
    return 24 <= len(raw) <= 64


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return raw

    return parse


_PARSERS: dict[str, Callable[[str], Any]] = {
    "vault_auth": _choice("token", "approle", "kubernetes"),
    "log_format": _choice("json", "console"),
    "log_level": lambda raw: _choice("DEBUG", "INFO", "WARNING", "ERROR")(raw.upper()),
}
_TYPES: dict[str, Callable[[str], Any]] = {
    "int": int,
    "float": float,
    "bool": _parse_bool,
    "Secret": Secret,
}


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from ``env`` (default: ``os.environ``).

    Raises :class:`ConfigError` listing every missing or malformed key.
    """
    source = os.environ if env is None else env
    values: dict[str, Any] = {}
    problems: list[str] = []
    for spec in fields(Settings):
        key = PREFIX + spec.name.upper()
        raw = source.get(key)
        path = source.get(f"{key}_FILE", "") if str(spec.type) == "Secret" else ""
        if path:
            # Every secret may come from a file instead (a mounted Kubernetes Secret), and
            # is then read again whenever the file changes.
            if raw:
                problems.append(f"{key} and {key}_FILE: set one, not both")
                continue
            try:
                values[spec.name] = Secret.from_file(path)
            except (OSError, UnicodeDecodeError):
                problems.append(f"{key}_FILE: {path} is not a readable file")
            continue
        if raw is None or raw == "":
            if spec.default is MISSING and spec.default_factory is MISSING:
                problems.append(f"{key}: required")
            continue
        parse = _PARSERS.get(spec.name) or _TYPES.get(str(spec.type), str)
        try:
            values[spec.name] = parse(raw.strip())
        except ValueError as exc:
            problems.append(f"{key}: {exc}")
    if problems:
        raise ConfigError(problems)
    settings = Settings(**values)
    problems = settings.validate()
    if problems:
        raise ConfigError(problems)
    return settings
