"""Domain values shared by the use cases and the adapters. No I/O here.

Plaintext tokens live only in :class:`TokenGrant` and :class:`CachedToken`, both of which hide
them from ``repr``; everything that is persisted carries ciphertext only.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

#: An app's slug: also the shape every interface accepts for an ``app`` parameter.
APP_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}\Z")
DEFAULT_API_VERSION = "2026-03"
#: ``token_kind`` of a private app's static token (in the database, views and the answer).
PRIVATE_APP = "private_app"
API_VERSIONS = ("2026-03", "2026-09", "v3", "v1")


class PortalState(enum.StrEnum):
    ACTIVE = "active"
    REFRESH_FAILING = "refresh_failing"  # refreshes fail transiently; valid tokens still served
    NEEDS_REAUTH = "needs_reauth"
    QUARANTINED = "quarantined"
    REVOKED = "revoked"

    @property
    def serves_tokens(self) -> bool:
        return self in (PortalState.ACTIVE, PortalState.REFRESH_FAILING)


class Role(enum.StrEnum):
    TOKENS_READ = "tokens:read"
    PORTALS_ADMIN = "portals:admin"
    CALLERS_ADMIN = "callers:admin"
    #: Apps (their client secrets), Transit and signing keys, retention: custody of secrets.
    APPS_ADMIN = "apps:admin"


@dataclass(frozen=True, slots=True)
class App:
    """A HubSpot app registered with the broker. Its client secrets live in Vault only."""

    slug: str
    client_id: str
    redirect_uri: str
    scopes: tuple[str, ...] = ()
    optional_scopes: tuple[str, ...] = ()
    api_version: str = DEFAULT_API_VERSION
    allow_marketplace_installs: bool = False
    user_level: bool = False
    #: When it was retired: it installs nothing new; its portals are still served.
    retired_at: datetime | None = None
    #: A private app (HubSpot's "private app" of one account): the hub it belongs to. Its
    #: token is static, held in Vault, never refreshed. None: an OAuth app.
    private_hub_id: int | None = None


@dataclass(frozen=True, slots=True)
class PortalKey:
    """Identity of one grant: (app, hub_id) and, for user-level apps only, user_id."""

    app: str
    hub_id: int
    user_id: int | None = None

    def context(self, kind: str) -> bytes:
        """Transit derivation context: a ciphertext only decrypts for this grant and kind."""
        user = "-" if self.user_id is None else str(self.user_id)
        return f"portal/{self.app}/{self.hub_id}/{user}/{kind}".encode()

    def __str__(self) -> str:
        suffix = "" if self.user_id is None else f"/user/{self.user_id}"
        return f"{self.app}/{self.hub_id}{suffix}"

    @classmethod
    def parse(cls, text: str) -> PortalKey:
        """The inverse of ``str()``; raises ValueError on anything else."""
        parts = text.split("/")
        if len(parts) == 2:
            return cls(parts[0], int(parts[1]))
        if len(parts) == 4 and parts[2] == "user":
            return cls(parts[0], int(parts[1]), int(parts[3]))
        raise ValueError(f"not a portal key: {text!r}")


@dataclass(frozen=True, slots=True)
class PortalRecord:
    """A ``portals`` row as stored: ciphertext only, times on the database clock."""

    id: int
    key: PortalKey
    hub_domain: str | None
    scopes: tuple[str, ...]
    state: PortalState
    installed_by: str | None
    refresh_ct: str | None = field(repr=False)
    access_ct: str | None = field(repr=False)
    access_expires_at: datetime | None
    version: int
    lease_epoch: int
    failure_count: int
    last_error: str | None
    next_attempt_at: datetime | None
    lease_until: datetime | None
    installed_at: datetime
    updated_at: datetime
    refreshed_at: datetime | None
    revoked_at: datetime | None
    #: The database clock when this row was read; expiry decisions are made against it.
    db_now: datetime
    #: The access token's audit fingerprint, made when it was obtained (None: not stored).
    access_fp: str | None = None
    #: A private app's portal: its static token is in Vault, never refreshed.
    private: bool = False
    #: A private app's previous token stops working at HubSpot then (given at rotation).
    previous_expires_at: datetime | None = None

    def remaining(self) -> float:
        """Seconds the stored access token has left, on the database clock."""
        if self.access_expires_at is None or self.access_ct is None:
            return 0.0
        return (self.access_expires_at - self.db_now).total_seconds()

    def lease_held(self) -> bool:
        return self.lease_until is not None and self.lease_until > self.db_now

    def backoff_left(self) -> float:
        if self.next_attempt_at is None:
            return 0.0
        return max(0.0, (self.next_attempt_at - self.db_now).total_seconds())


@dataclass(frozen=True, slots=True)
class Lease:
    """A claimed Postgres refresh lease (DESIGN.md, "Refreshing", step 2)."""

    portal_id: int
    owner: str
    epoch: int
    version: int
    refresh_ct: str = field(repr=False)
    #: Consecutive failed refreshes before this lease (drives the backoff).
    failures: int
    #: Seconds of lease left when it was granted, measured on the database clock.
    seconds: float
    #: The database clock at the moment of the claim.
    db_now: datetime
    #: This process's monotonic clock when the claim came back: the lease runs out
    #: ``seconds`` after it, however long the lease then waits (for a slot, the limiter).
    granted_at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class Intent:
    """What recording a refresh call's intent found (``PortalRepository.intend``)."""

    #: The intent's id: the call may go out. None: it may not (see the other fields).
    id: int | None
    #: The lease is no longer held (it ran out and was claimed, or released).
    lease_lost: bool = False
    #: An answered, unapplied journal row from this version waits: adopt it.
    answer_waiting: bool = False
    #: Seconds until an unanswered call from this version can no longer be answered.
    unanswered_for: float = 0.0


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """One 200 answer of HubSpot's token endpoint. Plaintext: memory only."""

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expires_in: int
    hub_id: int
    user_id: int | None
    scopes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What introspection tells about an access token (no token inside)."""

    hub_id: int
    hub_domain: str | None
    user: str | None
    user_id: int | None
    scopes: tuple[str, ...]


@dataclass(slots=True)
class CachedToken:
    """One access token in a replica's cache, kept compact (a replica holds one per portal it
    serves): the token once, as bytes; the expiry as one float; ``scopes`` shared by every
    entry with the same scopes. ``head``/``tail`` are the web layer's pre-encoded parts of
    the answer (without the token), made at the first answer and dropped with the entry
    (never in a cache of the web layer's own, which would outlive a revocation)."""

    token: bytes = field(repr=False)
    #: Expiry on this process's ``time.monotonic()`` scale.
    expires_local: float
    scopes: tuple[str, ...]
    fingerprint: str
    #: True when this process obtained the token from HubSpot (for the audit trail).
    refreshed: bool = False
    head: bytes | None = field(default=None, repr=False)
    tail: bytes | None = field(default=None, repr=False)


@dataclass(slots=True)
class IssuedToken:
    """What a caller receives, made once per request (not frozen, which costs per field):
    the cached entry it comes from, shared, and what is particular to this answer."""

    entry: CachedToken = field(repr=False)
    key: PortalKey
    #: None: a static token (a private app's), which does not expire.
    expires_in: int | None
    refreshed: bool = False
    #: Less than the caller's ``min_ttl`` is left: refreshing failed (HubSpot or a backend
    #: down, the refresh stuck elsewhere) and a still-valid token beats an error.
    degraded: bool = False

    @property
    def access_token(self) -> str:
        return self.entry.token.decode()

    @property
    def expires_at(self) -> datetime:
        """The expiry on the wall clock, translated from the monotonic one now (a static
        token has none: do not ask)."""
        wall = time.time() + self.entry.expires_local - time.monotonic()
        return datetime.fromtimestamp(wall, UTC)

    @property
    def scopes(self) -> tuple[str, ...]:
        return self.entry.scopes


@dataclass(frozen=True, slots=True)
class Caller:
    """A service identity and what it may do. ``apps``/``hub_ids`` ``None`` means all."""

    id: int
    name: str
    roles: frozenset[str]
    apps: frozenset[str] | None
    hub_ids: frozenset[int] | None
    expires_at: datetime | None = None
    disabled: bool = False
    #: Requests per second on each replica; None: the broker's default.
    rate_limit: float | None = None
    #: HubSpot path prefixes this caller may call through the gateway (none by default;
    #: ``"/"`` is every path), and its turns per round in a portal's budget queue.
    hubspot_paths: frozenset[str] = frozenset()
    gateway_weight: int = 1

    def may(self, role: Role) -> bool:
        return role in self.roles  # a StrEnum member is its value

    def may_access(self, app: str, hub_id: int) -> bool:
        return (self.apps is None or app in self.apps) and (
            self.hub_ids is None or hub_id in self.hub_ids
        )

    def may_call(self, path: str) -> bool:
        """Whether the gateway may forward ``path`` (``/crm/v3/...``) for this caller: a
        granted prefix ending in ``/`` covers what is under it, any other one that exact
        path or what is under it (``/crm/v3/objects/contacts`` covers ``.../contacts/1``)."""
        for prefix in self.hubspot_paths:
            if path.startswith(prefix) and (
                prefix.endswith("/") or len(path) == len(prefix) or path[len(prefix)] == "/"
            ):
                return True
        return False

    def may_manage_app(self, app: str) -> bool:
        """App-wide actions (an app's settings, an app-wide install link): the app is
        allowed and the caller is limited to no particular portals."""
        return (self.apps is None or app in self.apps) and self.hub_ids is None

    @property
    def unlimited(self) -> bool:
        """Limited to no apps and no portals: may act on what belongs to none (keys)."""
        return self.apps is None and self.hub_ids is None

    def covers(self, other: Caller) -> bool:
        """Whether ``other`` grants nothing this caller lacks: roles, apps, hubs, a rate no
        higher than this caller's own limit, and an expiry no later than this caller's. What
        a callers:admin may create or manage."""
        return (
            other.roles <= self.roles
            and (
                self.rate_limit is None
                or (other.rate_limit is not None and other.rate_limit <= self.rate_limit)
            )
            and _within(other.apps, self.apps)
            and _within(other.hub_ids, self.hub_ids)
            and all(self.may_call(path) for path in other.hubspot_paths)
            and (
                self.expires_at is None
                or (other.expires_at is not None and other.expires_at <= self.expires_at)
            )
        )


def _within(inner: frozenset[Any] | None, outer: frozenset[Any] | None) -> bool:
    """``None`` is "every": anything is within every; every is within nothing smaller."""
    return outer is None or (inner is not None and inner <= outer)


@dataclass(frozen=True, slots=True)
class StoredCallerKey:
    """One broker-issued key as stored: the caller, the SHA-256 of the key's secret, and when
    this key stops working (the caller's expiry or, for the previous key of a rotation, the
    end of its overlap, whichever comes first; None: never)."""

    caller: Caller
    key_hash: str = field(repr=False)
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class NewCallerKey:
    """A freshly issued caller key: ``secret`` is shown once and then only its hash is kept."""

    caller: Caller
    key_id: str
    secret: str = field(repr=False)
    expires_at: datetime | None


_MAC = re.compile(r"v([1-9][0-9]{0,5})\.([A-Za-z0-9_-]{16,100})")


@dataclass(frozen=True, slots=True)
class Mac:
    """A MAC and the key version that made it; ``str()`` is its compact text form."""

    version: int
    digest: bytes

    def __str__(self) -> str:
        return f"v{self.version}.{base64.urlsafe_b64encode(self.digest).rstrip(b'=').decode()}"

    @classmethod
    def parse(cls, text: str) -> Mac | None:
        match = _MAC.fullmatch(text)
        if match is None:
            return None
        raw = match.group(2)
        try:
            digest = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        except (binascii.Error, ValueError):
            return None
        return cls(int(match.group(1)), digest)


@dataclass(frozen=True, slots=True)
class InstallLinkRecord:
    """A minted install link as stored: what it allows, who minted it, whether it was
    revoked. The link token (which carries ``id`` and a MAC) is never stored."""

    id: str
    app: str
    hub_id: int | None
    return_to: str | None
    created_at: datetime
    created_by: str
    expires_at: datetime
    revoked_at: datetime | None = None
    revoked_by: str | None = None
