"""Every Prometheus metric of the broker, in one place.

Names follow ``broker_*_total`` / ``*_seconds``. Labels are bounded sets (results, failure
classes, endpoints, HTTP status classes): never a hub_id, a caller name or a token. Hot-path
children are bound once at import so a request pays no label lookup.
"""

from __future__ import annotations

import platform
from enum import StrEnum
from importlib.metadata import PackageNotFoundError, version
from typing import Literal, TypeAlias

from prometheus_client import Counter, Gauge, Histogram

from broker.loop_metrics import LoopCounter, LoopHistogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_TTL_BUCKETS = (0, 60, 120, 300, 600, 900, 1200, 1500, 1800, 3600)


TOKEN_REQUESTS = LoopCounter(
    "broker_token_requests_total",
    "Token requests by how they were answered.",
    ("result",),  # the children bound below
)
TOKEN_CACHE_HIT = TOKEN_REQUESTS.labels("cache_hit")
TOKEN_DB_HIT = TOKEN_REQUESTS.labels("db_hit")
TOKEN_REFRESHED = TOKEN_REQUESTS.labels("refreshed")
TOKEN_ERROR = TOKEN_REQUESTS.labels("error")
TOKENS_DEGRADED = Counter(
    "broker_tokens_degraded_total",
    "Tokens served with less than the caller's min_ttl left (a refresh failed or is stuck "
    "elsewhere; the answer says degraded).",
)

REQUEST_ERRORS = Counter(
    "broker_request_errors_total", "Requests answered with a problem, by stable code.", ["code"]
)
REMAINING_TTLS = LoopHistogram(
    "broker_token_remaining_ttl_seconds",
    "Remaining lifetime of access tokens at issuance.",
    (),
    _TTL_BUCKETS,
)
REMAINING_TTL = REMAINING_TTLS.labels()


class Outcome(StrEnum):
    """``broker_refreshes_total``'s outcome label."""

    SUCCESS = "success"
    FAILED = "failed"
    FENCED = "fenced"  # the write was fenced out (the lease moved on)
    ADOPTED = "adopted"  # a journaled answer applied by the next holder
    HEALED = "healed"  # a late answer applied
    LOST = "lost"  # an answer that never reached the journal
    SKIPPED = "skipped"  # the circuit breaker was open


class Failure(StrEnum):
    """``broker_refreshes_total``'s failure classes of the broker's own making (HubSpot's
    come from :attr:`~broker.errors.HubSpotError.failure_class`, a bounded set too)."""

    NONE = "none"
    INTERNAL = "internal"
    LOCK_CONTENTION = "lock_contention"
    GRANT_DEAD = "grant_dead"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"


REFRESHES = Counter(
    "broker_refreshes_total",
    "Upstream refresh attempts by outcome and failure class.",
    # outcome: Outcome; failure_class: Failure, HubSpotError.failure_class or an error code
    ["outcome", "failure_class"],
)


def refreshed(outcome: Outcome, failure: str = Failure.NONE) -> None:
    """Count one refresh attempt's ``outcome`` (``failure``: its class, when it failed)."""
    REFRESHES.labels(outcome, failure).inc()


REFRESH_SECONDS = Histogram(
    "broker_refresh_seconds", "Duration of one refresh, lease to commit.", buckets=_LATENCY_BUCKETS
)
LOCK_WAIT_SECONDS = Histogram(
    "broker_lock_wait_seconds",
    "Time a caller waited for another process's refresh.",
    buckets=_LATENCY_BUCKETS,
)
FENCED_WRITES = Counter(
    "broker_fenced_writes_total", "Refresh commits rejected because the lease moved on."
)
JOURNAL_ADOPTIONS = Counter(
    "broker_journal_adoptions_total", "Journaled token responses adopted after a fenced write."
)
LOCK_CONTENTION = Counter(
    "broker_lock_contention_total", "Callers that gave up waiting for another refresh."
)
UPSTREAM_REQUESTS = Counter(
    "broker_upstream_requests_total",
    "Calls to HubSpot by endpoint and HTTP status (or 'error' for no answer).",
    ["endpoint", "status"],
)


class RevokeResult(StrEnum):
    """``result`` label values of :data:`UPSTREAM_REVOKES`."""

    REVOKED = "revoked"
    RETRY = "retry"  # queued for another attempt


UPSTREAM_REVOKES = Counter(
    "broker_upstream_revokes_total",
    "Revocations at HubSpot by result (revoked, or retry: queued for another attempt).",
    ["result"],  # RevokeResult
)

BACKEND_ERRORS = Counter(
    "broker_backend_errors_total",
    "Backend failures by backend and operation.",
    ["backend", "operation"],  # counted through backend_failed()
)
# The label values of BACKEND_ERRORS as Literal types: the adapters pass an operation's name
# as a plain string through their own calls (``_bounded("lock", ...)``), and mypy refuses
# any name not listed here.
#: ``any``: a bug of the broker's own, caught where it would have failed a request or a loop.
ErrorBackend = Literal[
    "postgres", "redis", "vault", "jwks", "kubernetes", "webhooks", "oidc", "any"
]
#: Redis calls (``RedisCoordinator._bounded``; ``subscribe``: the listener's subscription).
RedisOp = Literal[
    "lock", "unlock", "publish", "state_put", "state_take", "ping", "limit", "pause", "subscribe"
]
#: Vault calls, also the ``operation`` of :data:`VAULT_REQUESTS`.
VaultOp: TypeAlias = (
    Literal[
        "login", "lookup_self", "renew_self", "health", "kv_read", "kv_write", "kv_delete", "rewrap"
    ]
    | Literal["encrypt", "decrypt", "read_key", "key_config", "hmac", "verify", "rotate_key"]
)
#: The operator sign-in's OpenID Provider calls.
OidcOp = Literal["discovery", "token"]
#: One call site each: jwks fetch, kubernetes tokenreview, postgres caller_stale (a caller
#: change read late) and webhook_record (a delivery's outcome not recorded), webhooks
#: secret_invalid (a signing secret that does not decode); any: the three bugs.
OtherOp: TypeAlias = (
    Literal["fetch", "tokenreview", "caller_stale", "webhook_record", "secret_invalid"]
    | Literal["refresher_bug", "serve_cached", "webhook_bug"]
)


def backend_failed(backend: ErrorBackend, operation: RedisOp | VaultOp | OidcOp | OtherOp) -> None:
    """Count one failure of ``backend`` in ``operation`` (:data:`BACKEND_ERRORS`)."""
    BACKEND_ERRORS.labels(backend, operation).inc()


INSTALLS = Counter(
    "broker_installs_total",
    "Install attempts by result.",
    ["result"],  # INSTALLED, or a failed install's error code
)
#: The ``result`` of a successful install (a failed one's is its error code).
INSTALLED = "installed"


class AuthFailure(StrEnum):
    """``reason`` label values of :data:`CALLER_AUTH_FAILURES`."""

    MISSING = "missing"
    MALFORMED = "malformed"
    INVALID = "invalid"
    DISABLED = "disabled"
    EXPIRED = "expired"
    THROTTLED = "throttled"  # over the lookup budget: a 429, no lookup made
    # Workload tokens (JWKS or TokenReview), and the identities they name:
    JWT_MALFORMED = "jwt_malformed"
    JWT_ALGORITHM_NOT_ALLOWED = "jwt_algorithm_not_allowed"
    JWT_UNKNOWN_ISSUER = "jwt_unknown_issuer"
    JWT_EXPIRED = "jwt_expired"
    JWT_NOT_YET_VALID = "jwt_not_yet_valid"
    JWT_WRONG_AUDIENCE = "jwt_wrong_audience"
    JWT_INVALID = "jwt_invalid"
    JWT_UNKNOWN_KEY = "jwt_unknown_key"
    JWT_TOKENREVIEW_DENIED = "jwt_tokenreview_denied"
    JWT_UNKNOWN_SUBJECT = "jwt_unknown_subject"


CALLER_AUTH_FAILURES = Counter(
    "broker_caller_auth_failures_total", "Rejected caller credentials by reason.", ["reason"]
)


def auth_failed(reason: AuthFailure) -> None:
    """Count one rejected caller credential (:data:`CALLER_AUTH_FAILURES`)."""
    CALLER_AUTH_FAILURES.labels(reason).inc()


CALLER_KEY_LOOKUPS = Counter(
    "broker_caller_key_lookups_total",
    "Postgres lookups of caller keys and workload identities not cached here, by result.",
    ["result"],  # found | unknown | error
)
CALLER_LOOKUP_FOUND = CALLER_KEY_LOOKUPS.labels("found")
CALLER_LOOKUP_UNKNOWN = CALLER_KEY_LOOKUPS.labels("unknown")
CALLER_LOOKUP_ERROR = CALLER_KEY_LOOKUPS.labels("error")


class Renewal(StrEnum):
    """``result`` label values of :data:`VAULT_RENEWALS`."""

    RENEWED = "renewed"
    FAILED = "failed"
    RELOGIN = "relogin"  # logged in again (the token was revoked, expired or not renewed)


VAULT_RENEWALS = Counter(
    "broker_vault_token_renewals_total",
    "Vault token renewals by result.",
    ["result"],  # Renewal
)

JWKS_FETCHES = Counter("broker_jwks_fetches_total", "JWKS documents fetched from issuers.")
CALLER_RATE_LIMITED = Counter(
    "broker_caller_rate_limited_total", "Requests refused because a caller was over its rate."
)
PORTALS = Gauge("broker_portals", "Portals by state (refreshed periodically).", ["state"])
#: Apps whose refresh rate one replica exports: apps are few and operator-made, but bounded.
REFRESH_RATE_MAX_APPS = 100
REFRESH_RATE = Gauge(
    "broker_refresh_rate",
    "Adaptive proactive-refresh rate per app (refreshes/s shared by all replicas, AIMD), as "
    f"this replica last saw it. app: an app slug (at most {REFRESH_RATE_MAX_APPS} apps).",
    ["app"],
)
REFRESHER_SLOTS = Gauge(
    "broker_refresher_slots",
    "Proactive refreshes this replica lets run at once (grows with waiting work, halves when "
    "the app's rate is the bound; at most BROKER_REFRESHER_CONCURRENCY).",
)
AUDIT_DROPPED = Counter(
    "broker_audit_dropped_total",
    "Audit events dropped: the queue was full, or PostgreSQL refused the event.",
)

# --- retention (broker.core.retention) ---------------------------------------------------
RETENTION_DELETED = Counter(
    "broker_retention_deleted_total",
    "Rows deleted by the retention sweep (and revoked portals' journal rows), by table.",
    ["table"],  # broker.core.retention.TABLES
)


# --- webhooks (the events outbox) ------------------------------------------------------
class Delivery(StrEnum):
    """``result`` label values of :data:`WEBHOOK_DELIVERIES`."""

    DELIVERED = "delivered"  # 2xx
    FAILED = "failed"  # 5xx, 408, 429, no answer: retried
    REJECTED = "rejected"  # other 3xx and 4xx: the receiver is misconfigured (retried too)


WEBHOOK_DELIVERIES = Counter(
    "broker_webhook_deliveries_total", "Webhook delivery attempts by result.", ["result"]
)
WEBHOOK_DELIVERY_SECONDS = Histogram(
    "broker_webhook_delivery_seconds",
    "Duration of one webhook POST, answered or not.",
    buckets=_LATENCY_BUCKETS,
)
WEBHOOK_PENDING = Gauge(
    "broker_webhook_pending",
    "Webhook deliveries not acknowledged yet, plus events not fanned out yet.",
)
WEBHOOK_STUCK = Gauge(
    "broker_webhook_stuck",
    "Unacknowledged webhook deliveries past the attempt threshold (retrying at the cap).",
)
WEBHOOK_OLDEST_PENDING_SECONDS = Gauge(
    "broker_webhook_oldest_pending_seconds",
    "Age of the oldest event not yet acknowledged by every webhook receiver.",
)


# --- the deployed shape: build, readiness, backends, HTTP latency ---------------------------
def _version() -> str:
    try:
        return version("hubspot-token-broker")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


BUILD_INFO = Gauge(
    "broker_build_info", "Always 1; the labels say what is running.", ["version", "python"]
)
BUILD_INFO.labels(_version(), platform.python_version()).set(1)

READY = Gauge("broker_ready", "1 while /readyz answers 200 (can serve; not starting or draining).")


class Backend(StrEnum):
    """``backend`` label values of :data:`BACKEND_UP`."""

    POSTGRES = "postgres"
    REDIS = "redis"
    VAULT = "vault"
    HUBSPOT = "hubspot"


BACKEND_UP = Gauge(
    "broker_backend_up",
    "1 when the backend passed its last health check (every 5 s); hubspot: 0 while the "
    "circuit breaker keeps calls off.",
    ["backend"],
)


class Background(StrEnum):
    """The background loops every replica runs (``broker_background_failures_total``)."""

    REFRESHER = "refresher"
    HEAL = "heal"
    PORTAL_GAUGES = "portal_gauges"
    WEBHOOKS = "webhooks"
    WEBHOOK_GAUGES = "webhook_gauges"
    REVOCATIONS = "revocations"
    RETENTION = "retention"
    HEALTH = "health"
    INVALIDATION = "invalidation"
    CALLER_LAST_USED = "caller_last_used"
    AUDIT_FLUSH = "audit_flush"
    REDIS_LISTENER = "redis_listener"
    VAULT_RENEWAL = "vault_renewal"


class FailureKind(StrEnum):
    """``kind`` label values of :data:`BACKGROUND_FAILURES`."""

    BACKEND = "backend"  # a backend failed (a BrokerError)
    BUG = "bug"  # anything else


BACKGROUND_FAILURES = Counter(
    "broker_background_failures_total",
    "Failed passes of a background loop; the loop goes on at its next interval.",
    ["loop", "kind"],  # Background, FailureKind
)


class Route(StrEnum):
    """``route`` label values of :data:`HTTP_REQUEST_SECONDS`: a fixed set, never a path."""

    TOKEN = "token"  # noqa: S105 - a route name: GET /v1/portals/{hub_id}/token
    API = "api"  # the rest of /v1/*
    OAUTH = "oauth"  # /oauth/* (the public listener)
    ADMIN_PAGE = "admin_page"  # /admin*
    PROBES = "probes"  # /livez, /readyz
    METRICS = "metrics"  # /metrics
    OTHER = "other"  # anything else (404s)


_HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
HTTP_REQUEST_SECONDS = LoopHistogram(
    "broker_http_request_duration_seconds",
    "Time from a request's arrival to its answer, by route and status class.",
    ("route", "status_class"),  # status_class: 2xx | 3xx | 4xx | 5xx
    _HTTP_BUCKETS,
)
TOKEN_ROUTE_OK = HTTP_REQUEST_SECONDS.labels(Route.TOKEN, "2xx")

VAULT_REQUESTS = Counter(
    "broker_vault_requests_total",
    "Requests sent to Vault, by operation (a Transit batch counts once).",
    ["operation"],
)


class SsoOutcome(StrEnum):
    """``outcome`` label values of :data:`SSO_LOGINS`."""

    OK = "ok"
    NO_ROLE = "no_role"  # signed in at the IdP, in no mapped group: refused (403)
    REFUSED = "refused"  # state, ID token, code or denial: the sso_* error code says which
    PROVIDER_UNAVAILABLE = "provider_unavailable"
    THROTTLED = "throttled"  # not started: over the replica's rate of sign-ins begun (429)


SSO_LOGINS = Counter(
    "broker_sso_logins_total",
    "Operator page sign-ins through the OIDC issuer, by outcome (throttled: never started).",
    ["outcome"],
)
