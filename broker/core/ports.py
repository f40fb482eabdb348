"""Ports: what the use cases need from the outside world, and the contract each must keep.

Adapters in ``broker.adapters`` implement these; ``broker.app`` wires them. ``core`` never
imports an adapter, a driver or a framework.

The lease contract (Postgres is the authority, Redis only keeps replicas from piling up):

* A :class:`Lease` is granted by :meth:`PortalRepository.claim_lease` on the *database clock*
  for ``lease_seconds``. Its ``epoch`` is strictly greater than every epoch granted before for
  that portal.
* The holder must finish every step that depends on the lease (Vault, HubSpot, the journal,
  the fenced write) before the lease runs out. It self-fences: it does not call HubSpot unless
  the remaining lease covers the HubSpot timeout plus a database round trip.
* A lease is *lost* when its time runs out or anything unexpected happens while holding it.
  A lost lease is never extended or assumed: the holder's fenced write simply updates zero
  rows, and the token response it got is kept in the journal.
* The Redis lock (:meth:`Coordinator.try_lock`) is advisory only: it may expire under a
  paused holder or vanish in a failover, so correctness never depends on it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from broker.config import Secret
from broker.core.models import (
    App,
    Caller,
    InstallLinkRecord,
    Intent,
    Lease,
    Mac,
    PortalKey,
    PortalRecord,
    PortalState,
    StoredCallerKey,
    TokenGrant,
    TokenInfo,
)


@dataclass(frozen=True, slots=True)
class EncryptedGrant:
    """A token response encrypted for one portal; what the database stores."""

    refresh_ct: str
    access_ct: str
    expires_at: datetime
    #: When the proactive refresher should renew it (about 2/3 of the lifetime, jittered).
    refresh_after: datetime
    #: The access token's audit fingerprint (``Keyring.fingerprint``); None: not made.
    access_fp: str | None = None


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified workload identity: who the issuer says the caller is, until when."""

    issuer: str
    subject: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One audit trail row (never a token or a secret: fingerprints only)."""

    id: int
    at: datetime
    actor: str
    action: str
    app: str | None
    hub_id: int | None
    user_id: int | None
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """What an audit search matches; every field ``None`` matches everything. ``apps`` and
    ``hub_ids`` are the searcher's scope: an event outside them (or naming no app, or no
    hub, when they are set) is not returned."""

    hub_id: int | None = None
    actor: str | None = None
    action: str | None = None
    app: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    apps: frozenset[str] | None = None
    hub_ids: frozenset[int] | None = None


@dataclass(frozen=True, slots=True)
class AuditPosition:
    """A place in the newest-first order (the keyset (at, id)): a page continues with the
    events strictly older than it."""

    at: datetime
    id: int


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """One webhook delivery (an event to one receiver endpoint) as stored."""

    endpoint: str
    attempts: int
    next_attempt_at: datetime
    last_attempt_at: datetime | None
    last_error: str | None
    delivered_at: datetime | None


@dataclass(frozen=True, slots=True)
class EventRecord:
    """An outbox event and its deliveries (never its payload: the listing is for delivery
    state; the payload is what receivers get)."""

    id: int
    type: str
    app: str | None
    hub_id: int | None
    user_id: int | None
    at: datetime
    fanned_out_at: datetime | None
    delivered_at: datetime | None
    deliveries: tuple[DeliveryRecord, ...]


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events to list; ``apps``/``hub_ids`` are the lister's scope as in
    :class:`AuditFilter`. ``undelivered``: only events some endpoint has not acknowledged."""

    type: str | None = None
    app: str | None = None
    hub_id: int | None = None
    undelivered: bool = False
    apps: frozenset[str] | None = None
    hub_ids: frozenset[int] | None = None


class EventLog(Protocol):
    """The events outbox as operators see it (``/v1/admin/webhooks``), database clock."""

    async def recent(
        self, match: EventFilter, *, before_id: int | None, limit: int
    ) -> list[EventRecord]:
        """Newest first (by id), only ids below ``before_id`` when given."""
        ...

    async def get(self, event_id: int) -> EventRecord | None: ...

    async def redeliver(self, event_id: int, endpoints: Sequence[str]) -> EventRecord | None:
        """Make the event due again, at once, for each of ``endpoints``: a delivery that
        exists is reset (undelivered, due now, its error cleared; ``attempts`` keeps
        counting, so a late report of an earlier claim still changes nothing), a missing
        one is created, and the event is marked undelivered. None for an unknown event."""
        ...


class IdentityVerifier(Protocol):
    async def verify(self, token: str) -> Identity:
        """Raises :class:`~broker.errors.Unauthenticated` for any token it cannot trust."""
        ...


@dataclass(frozen=True, slots=True)
class SsoIdentity:
    """A person an OpenID Provider vouched for in a verified ID token."""

    subject: str
    #: The ``email`` claim, unless the IdP says it is not verified (``email_verified``).
    email: str | None
    #: The groups claim (``BROKER_OIDC_GROUPS_CLAIM``); empty when absent.
    groups: frozenset[str]


class IdentityProvider(Protocol):
    """An OpenID Provider for operator sign-in (the authorization code flow with PKCE).

    Contract: :meth:`sign_in` returns only for an ID token whose signature verifies with a
    key of the issuer's JWKS under an allow-listed asymmetric algorithm, whose ``iss`` is
    the configured issuer, whose ``aud`` holds the client id (and ``azp``, when present or
    when there are several audiences, is the client id), that has not expired, and whose
    ``nonce`` is the one given. It never logs or returns the code, the verifier, the client
    secret or a token. Refusals are :class:`~broker.errors.SsoFailed` (``sso_code_rejected``,
    ``sso_id_token_invalid``); the issuer not answering is
    :class:`~broker.errors.IdentityProviderUnavailable`. Nothing is retried: a code is
    single-use."""

    @property
    def issuer(self) -> str: ...

    async def authorization_url(
        self, *, redirect_uri: str, state: str, nonce: str, code_challenge: str
    ) -> str:
        """Where to send the browser (S256 code challenge; discovery fetched as needed)."""
        ...

    async def sign_in(
        self, code: str, *, redirect_uri: str, verifier: str, nonce: str
    ) -> SsoIdentity:
        """Exchange ``code`` (with the PKCE ``verifier``) and verify the ID token."""
        ...


class Cipher(Protocol):
    """Envelope encryption of tokens (Vault Transit, derived key).

    ``context`` binds a ciphertext to one portal and token kind: decrypting with any other
    context fails with :class:`~broker.errors.VaultError` (code ``decrypt_failed``).
    """

    async def encrypt(self, items: Sequence[tuple[str, bytes]]) -> list[str]:
        """Encrypt ``(plaintext, context)`` pairs in one round trip, in order."""
        ...

    async def decrypt(self, items: Sequence[tuple[str, bytes]]) -> list[str]:
        """Decrypt ``(ciphertext, context)`` pairs in one round trip, in order."""
        ...


class SecretStore(Protocol):
    """App client secrets (Vault KV v2). Newest secret first; all are valid during rotation."""

    async def client_secrets(self, app: str, *, fresh: bool = False) -> list[Secret]:
        """Raises :class:`~broker.errors.NotFound` (``app_secret_missing``) when unset.
        Cached for minutes; ``fresh`` reads Vault now (after HubSpot rejected a secret)."""
        ...

    async def add_client_secret(self, app: str, secret: Secret) -> None:
        """Put ``secret`` first in the app's list (check-and-set, no lost update)."""
        ...

    async def ping(self) -> None: ...


class OAuthProvider(Protocol):
    """HubSpot's OAuth endpoints.

    Raises :class:`~broker.errors.GrantDead`, :class:`~broker.errors.AppMisconfigured`,
    :class:`~broker.errors.HubSpotRateLimited`, :class:`~broker.errors.HubSpotUnavailable`,
    or :class:`~broker.errors.InstallFailed` (code exchange only). Never retries
    ``invalid_grant``.
    """

    def authorize_url(
        self, app: App, *, state: str, code_challenge: str, redirect_uri: str
    ) -> str: ...

    async def exchange_code(
        self, app: App, secret: Secret, *, code: str, code_verifier: str | None
    ) -> TokenGrant: ...

    async def refresh(self, app: App, secrets: Sequence[Secret], refresh_token: str) -> TokenGrant:
        """Refresh with the first secret HubSpot accepts (secret rotation)."""
        ...

    async def introspect(self, app: App, secret: Secret, access_token: str) -> TokenInfo: ...

    async def revoke(self, app: App, secrets: Sequence[Secret], refresh_token: str) -> None:
        """Revoke a refresh token at HubSpot (the app's API version). Succeeds whether or
        not HubSpot knew the token; raises the HubSpot error classes otherwise."""
        ...


class Coordinator(Protocol):
    """Redis: advisory locks, notices between replicas, single-use install state.

    Every method is bounded by a short timeout. Lock and notice methods report Redis being
    down or slow by returning ``None``/``False`` rather than raising, so callers fall back to
    Postgres; install-state methods raise :class:`~broker.errors.UpstreamError`.
    """

    async def try_lock(self, name: str, owner: str, ttl_seconds: float) -> bool | None:
        """``SET NX PX``. True: acquired; False: held elsewhere; None: Redis unavailable."""
        ...

    async def unlock(self, name: str, owner: str) -> None:
        """Compare-and-delete: only removes the lock while ``owner`` still holds it."""
        ...

    async def publish_refreshed(self, portal_id: int, version: int) -> None: ...

    async def publish_invalidation(self, message: str) -> bool:
        """Tell every replica (this one included) to drop what ``message`` names, as
        encoded by :mod:`broker.core.invalidation` (a portal's cached token, or a cached
        caller). False when Redis is unavailable (replicas then learn it from Postgres)."""
        ...

    def on_invalidation(self, callback: Callable[[str], None]) -> None:
        """Register a callback for invalidations published by any replica."""
        ...

    async def wait_refreshed(self, portal_id: int, timeout: float) -> bool:
        """Wait for a "refreshed" notice; False on timeout or when Redis is unavailable."""
        ...

    async def put_state(self, state: str, sealed: str, ttl_seconds: int) -> None:
        """Store an install's pending state, an opaque string the caller sealed (the store is
        not trusted with it: :mod:`broker.core.install_state`), unless ``state`` exists."""
        ...

    async def take_state(self, state: str) -> str | None:
        """Atomically read and delete (single use)."""
        ...

    async def ping(self) -> None: ...


class RateLimiter(Protocol):
    """Refreshes per app, shared by every replica (token bucket in Redis).

    Interactive refreshes (a caller is waiting) always proceed and are counted; proactive
    ones wait for a token, so callers take priority. ``pause`` stops an app's proactive
    refreshes on every replica (HubSpot said 429 with Retry-After)."""

    async def acquire(self, app: str, *, interactive: bool) -> float:
        """0 when allowed now; otherwise the seconds to wait before asking again."""
        ...

    async def pause(self, app: str, seconds: float) -> None: ...


class PortalRepository(Protocol):
    """Apps and portals in Postgres. Every time comparison uses the database clock."""

    async def get_app(self, slug: str) -> App | None: ...

    async def list_apps(self) -> list[App]: ...

    async def save_app(self, app: App) -> bool:
        """Insert or update the app's settings (never its retirement); True when inserted."""
        ...

    async def retire_app(self, slug: str, *, retired: bool, actor: str) -> App | None:
        """Retire the app (keeping the first retirement's time) or put it back in service;
        None for an unknown app."""
        ...

    async def get_portal(self, key: PortalKey) -> PortalRecord | None: ...

    async def get_portals(self, keys: Sequence[PortalKey]) -> list[PortalRecord]:
        """The portals among ``keys`` that exist, in one round trip, in no given order."""
        ...

    async def db_now(self) -> datetime:
        """The database clock."""
        ...

    async def list_portals(
        self, *, app: str | None = None, state: PortalState | None = None, limit: int = 100
    ) -> list[PortalRecord]: ...

    async def install(
        self,
        key: PortalKey,
        grant: EncryptedGrant,
        *,
        hub_domain: str | None,
        scopes: Sequence[str],
        actor: str,
    ) -> PortalRecord:
        """Insert the grant or replace a previous one of the same identity (re-install),
        making it ``active`` (a ``quarantined`` portal stays quarantined: only an operator
        releases it); bumps ``version``; writes the audit and outbox events in the same
        transaction."""
        ...

    async def claim_lease(
        self,
        portal_id: int,
        owner: str,
        *,
        lease_seconds: float,
        min_ttl: float,
        ignore_backoff: bool,
    ) -> Lease | None:
        """Take the refresh lease if the portal serves tokens, no live lease exists and the
        access token has less than ``min_ttl`` seconds left (and, unless
        ``ignore_backoff``, its backoff has passed). ``None``: not granted, re-read."""
        ...

    async def claim_due(
        self, owner: str, *, limit: int, lease_seconds: float
    ) -> list[tuple[PortalKey, Lease]]:
        """Leases for portals whose proactive refresh time has come (``SKIP LOCKED``)."""
        ...

    async def pause_app(self, slug: str, seconds: float, reason: str) -> None:
        """Pause proactive refreshes of an app's portals; portals themselves are untouched."""
        ...

    async def count_by_state(self) -> dict[str, int]: ...

    async def revoke(
        self, key: PortalKey, *, reason: str, actor: str
    ) -> tuple[PortalRecord, tuple[int, str] | None] | None:
        """Local revocation in one transaction (idempotent): state ``revoked``, tokens
        shredded (the portal's columns and every ``token_journal`` row of the portal), the
        refresh token's ciphertext queued for the upstream revoke."""
        ...

    async def set_state(
        self, key: PortalKey, state: PortalState, *, allowed_from: Sequence[PortalState]
    ) -> PortalRecord | None: ...

    async def due_revocations(self, limit: int) -> list[tuple[int, PortalKey, str, int]]:
        """(pending id, portal, refresh ciphertext, attempts), claimed for 60 s."""
        ...

    async def revocation_done(self, pending_id: int) -> None: ...

    async def revocation_failed(self, pending_id: int, error: str, retry_in: float) -> None: ...

    async def flag(self, key: PortalKey, error_code: str) -> None:
        """Record a problem with the stored data (e.g. a ciphertext that does not decrypt)
        as the portal's last error, with a ``portal.flagged`` event the first time."""
        ...

    async def stopped_since(self, since: datetime | None) -> tuple[list[PortalKey], datetime]:
        """Portals that stopped serving tokens (any non-serving state) after ``since``, and
        the database time to pass next; the fallback when invalidations are missed."""
        ...

    async def intend(self, lease: Lease, *, window: float) -> Intent:
        """Record, before HubSpot is called, that a call is about to be sent (portal, epoch,
        owner, base version, sent_at), in one statement serialized per portal, and only if
        the lease is still held, no answered journal row from this version (or later) waits
        to be applied, and no call from this version (or later) sent less than ``window``
        seconds ago is unanswered (its outcome unknown: a second call must wait for it)."""
        ...

    async def forget_intent(self, intent_id: int) -> None:
        """HubSpot answered without a token (an error), or the call never went out."""
        ...

    async def journal(self, lease: Lease, grant: EncryptedGrant, intent_id: int | None) -> int:
        """Append the response to the journal before the fenced commit, and drop the call's
        intent (answered) in the same statement; not fenced."""
        ...

    async def commit_refresh(
        self, lease: Lease, grant: EncryptedGrant, journal_id: int
    ) -> PortalRecord | None:
        """The fenced write. ``None`` when fenced out (the epoch or owner moved on)."""
        ...

    async def apply_late(
        self, lease: Lease, grant: EncryptedGrant, journal_id: int
    ) -> PortalRecord | None:
        """A fenced-out holder's journaled response, applied when it is still the newest: the
        row is at ``lease.version`` (no token stored since), no lease is held, and its state
        is active, refresh_failing or needs_reauth (healed to active). None otherwise."""
        ...

    async def heal_from_journal(self, limit: int) -> list[PortalRecord]:
        """Portals marked ``needs_reauth`` that hold an answered, unapplied journal row from
        their current version (a late response): apply the newest such row; the healed."""
        ...

    async def newer_journal_entry(self, lease: Lease) -> tuple[int, EncryptedGrant] | None:
        """An unapplied journal entry written after the version this lease read."""
        ...

    async def record_failure(
        self, lease: Lease, *, failure_class: str, state: PortalState | None, retry_in: float
    ) -> bool:
        """Fenced: note the failure, set the state (``None``: leave it) and the next attempt,
        release the lease. False when fenced out (the lease moved on): nothing was written."""
        ...

    async def release_lease(self, lease: Lease) -> None: ...

    async def ping(self) -> None: ...


class RetentionStore(Protocol):
    """Deletes expired rows for :mod:`broker.core.retention`, on the database clock.

    Each ``delete_*`` call deletes at most ``limit`` rows in one short statement and
    returns how many it deleted; the caller loops until a call comes back short, so no
    statement holds row locks for long. Deleting is idempotent and safe to run next to
    serving replicas; :meth:`exclusively` only keeps replicas from doing the same work.
    """

    def exclusively(self) -> AbstractAsyncContextManager[bool]:
        """Try, without waiting, to become the one sweeper across every replica (a
        PostgreSQL advisory lock). Yields False at once when another holds it; otherwise
        True, holding it until the block exits (or the connection drops)."""
        ...

    async def delete_audit_events(self, *, older_than_days: int, limit: int) -> int:
        """Audit events older than ``older_than_days`` days."""
        ...

    async def delete_delivered_events(
        self, *, older_than_days: int, limit: int, unsent_too: bool = False
    ) -> int:
        """Outbox events older than ``older_than_days`` days that were fanned out and
        acknowledged by every receiver (with their delivery rows). Never an event with an
        unacknowledged delivery; one not fanned out yet only with ``unsent_too`` (webhooks
        are off, so nothing will ever send it)."""
        ...

    async def delete_spent_journal(self, *, older_than_hours: int, limit: int) -> int:
        """Journal rows older than ``older_than_hours`` hours that are applied, or
        superseded (``base_version`` below the portal's current version)."""
        ...

    async def delete_revoked_journal(self, *, limit: int) -> int:
        """Every journal row of a portal whose state is ``revoked``, whatever its age."""
        ...


class CallerRepository(Protocol):
    async def create(
        self,
        caller: Caller,
        key_id: str | None,
        key_hash: str | None,
        expires_at: datetime | None,
        identity: tuple[str, str] | None = None,
    ) -> Caller:
        """Raises :class:`~broker.errors.Conflict` when the name or identity is taken."""
        ...

    async def by_identity(self, issuer: str, subject: str) -> Caller | None: ...

    async def by_name(self, name: str) -> Caller | None: ...

    async def rotate_key(
        self, name: str, key_id: str, key_hash: str, overlap_seconds: float
    ) -> Caller | None:
        """Install a new key; the current one stays valid for ``overlap_seconds``."""
        ...

    async def by_key_id(self, key_id: str) -> StoredCallerKey | None:
        """The key ``key_id`` (current, or previous while its overlap lasts), or None.
        Disabled and expired callers are returned too."""
        ...

    async def list(self) -> list[Caller]: ...

    async def disable(self, name: str) -> int | None:
        """Disable an enabled caller; its id, or None when no enabled caller has ``name``."""
        ...

    async def changed_since(
        self, since: datetime | None, known: Collection[int]
    ) -> tuple[set[int], datetime]:
        """Ids of callers created or changed after ``since`` (keys, grants, expiry,
        disabling; not ``last_used_at``), plus those of ``known`` that no longer exist, and
        the database time to pass next. The fallback when caller invalidations are missed:
        with ``since`` None it only returns the time."""
        ...

    async def touch(self, caller_ids: Sequence[int]) -> None:
        """Record last use (batched, off the hot path)."""
        ...


class AuditSink(Protocol):
    """Append-only audit trail. Never given a token or a secret: fingerprints only."""

    def record(
        self, action: str, *, actor: str, key: PortalKey | None = None, **detail: object
    ) -> None:
        """Queue an event; written in batches off the hot path. Without a ``key``, a string
        ``app`` detail names the event's app (searches scoped to apps find it)."""
        ...

    def issued(
        self,
        actor: str,
        key: PortalKey,
        *,
        fingerprint: str,
        min_ttl: int,
        remaining_ttl: int,
        refreshed: bool,
    ) -> None:
        """A token was served. Identical issues (same caller, portal, token, ``min_ttl`` and
        ``refreshed``) within one flush window become one ``token.issued`` event with a
        ``count`` and the lowest ``remaining_ttl``: the hot path may serve thousands a second."""
        ...

    async def most_requested(self, *, within_seconds: float, limit: int) -> list[PortalKey]:
        """The portals whose tokens were served most in the last ``within_seconds`` (from
        ``token.issued`` events), most requested first."""
        ...

    async def query(
        self,
        *,
        hub_id: int | None,
        actor: str | None,
        action: str | None,
        since: datetime | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        """Newest first."""
        ...

    async def search(
        self, match: AuditFilter, *, after: AuditPosition | None, limit: int
    ) -> list[AuditEvent]:
        """Newest first by (at, id); only events strictly older than ``after`` when given,
        so pages neither repeat nor skip an event already stored when the first page was
        read, however many are written meanwhile."""
        ...


@dataclass(frozen=True, slots=True)
class PortalQuery:
    """What the operator page asks for: filters, the caller's scope, and one page of it.

    ``text`` matches a Hub ID by prefix or a hub domain by substring (case-insensitive).
    ``apps``/``hub_ids`` are the asking caller's scope (``None``: all), applied in the query
    so a page is never short because rows were hidden after it was cut. ``after`` and
    ``before`` are keyset cursors (the key of the row next to the page), at most one."""

    text: str | None = None
    state: PortalState | None = None
    app: str | None = None
    apps: frozenset[str] | None = None
    hub_ids: frozenset[int] | None = None
    after: PortalKey | None = None
    before: PortalKey | None = None
    limit: int = 50


@dataclass(frozen=True, slots=True)
class PortalPage:
    """One page of portals in the stable order (app, Hub ID, user ID), and counts of every
    portal matching the query's text, app and scope per state (its ``state`` aside)."""

    portals: tuple[PortalRecord, ...]
    #: Cursors for the neighbouring pages; ``None`` when there is none that way.
    previous: PortalKey | None
    next: PortalKey | None
    by_state: dict[PortalState, int]


class PortalSearch(Protocol):
    """The operator page's portal list (read only, never a ciphertext shown)."""

    async def search(self, query: PortalQuery) -> PortalPage: ...


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One event of a portal: an audit event, or a failure transition from the outbox
    (``outbox``). Neither ever holds a token or a secret."""

    id: int
    at: datetime
    actor: str
    action: str
    detail: dict[str, object]
    outbox: bool = False

    def cursor(self) -> TimelineCursor:
        return TimelineCursor(self.at, self.outbox, self.id)


@dataclass(frozen=True, slots=True)
class TimelineCursor:
    """Where an older page of a timeline starts: strictly after (``at``, ``outbox``, ``id``)
    in the timeline's order, which is that triple descending."""

    at: datetime
    outbox: bool
    id: int


@dataclass(frozen=True, slots=True)
class TimelinePage:
    entries: tuple[TimelineEntry, ...]
    #: The cursor of the next (older) page; ``None`` at the oldest event kept.
    older: TimelineCursor | None


class PortalTimeline(Protocol):
    """A portal's history, newest first: its audit events, and the failure transitions that
    only the outbox records (``portal.refresh_failing``, ``portal.flagged``,
    ``portal.recovered``), each kept as long as retention keeps its table."""

    async def timeline(
        self, key: PortalKey, *, before: TimelineCursor | None, limit: int, issues: bool
    ) -> TimelinePage:
        """``issues``: include the ``token.issued`` tallies (many: one per caller, token
        and flush window); without it they are left out by an index that skips them."""
        ...


class MacService(Protocol):
    """HMACs with keys that never leave the backend (Vault Transit ``hmac``/``verify``):
    ``key`` names the key; versions are the backend's (1, 2, ...)."""

    async def hmac(
        self, key: str, items: Sequence[bytes], *, version: int | None = None
    ) -> list[Mac]:
        """One MAC per item, with the latest version unless ``version`` is given."""
        ...

    async def verify(self, key: str, items: Sequence[tuple[bytes, Mac]]) -> list[bool]:
        """Whether each MAC is its input's; a version the key does not have (or no longer
        allows) is simply ``False``."""
        ...

    async def rotate(self, key: str) -> int:
        """Make a new latest version; returns it."""
        ...

    async def latest_version(self, key: str) -> int: ...


class KeySchedule(Protocol):
    """When rotated-away signing key versions stop verifying (database clock)."""

    async def retire_below(
        self, purpose: str, version: int, *, overlap_seconds: float, actor: str
    ) -> None:
        """Versions below ``version`` with no retirement yet retire ``overlap_seconds`` from
        now; a retirement already set is never pushed later."""
        ...

    async def retired(self, purpose: str, version: int) -> bool:
        """Whether ``version`` has retired (its overlap is over)."""
        ...

    async def retirements(self) -> dict[tuple[str, int], datetime]: ...


class InstallLinkStore(Protocol):
    """Minted install links (never the link token: its id and what it allows)."""

    async def add(self, link: InstallLinkRecord) -> None: ...

    async def get(self, link_id: str) -> InstallLinkRecord | None: ...

    async def find(self, *, app: str | None, include_inactive: bool) -> list[InstallLinkRecord]:
        """Newest first; without ``include_inactive`` only unexpired, unrevoked links."""
        ...

    async def revoke(self, link_id: str, *, actor: str) -> InstallLinkRecord | None:
        """Mark it revoked (idempotent: the first revocation is kept); None when unknown."""
        ...
