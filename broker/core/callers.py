"""Caller identities and broker-issued keys (DESIGN.md, "Security: Callers").

A key is ``hsb_<key_id>_<secret>``: the id finds the record, the secret is checked against
its stored SHA-256 (keys are 256-bit random, so a plain hash is enough; no key is ever
stored). Comparison is constant-time.

Caching (:mod:`broker.core.caller_cache`): a key's record is cached in memory for
``caller_cache_seconds`` so the hot path does no I/O. Every change to a caller made here
(create, rotate, disable) is published through :class:`~broker.core.invalidation.
Invalidations`: this replica forgets the caller at once, the others on the Redis message
(about a millisecond) or, when they missed it, from the Postgres poll within
``invalidation_poll_seconds``; changes made by hand in SQL are seen by the poll too.
``caller_cache_seconds`` is only the bound when both paths fail. A forgotten caller is
looked up again, so after ``rotate`` the old key keeps working until its overlap ends (its
cached entry never outlives the overlap either). An expired key is refused at its expiry.
While Postgres is unreachable, a key verified earlier and not invalidated since stays
accepted (stale-if-error). On top of both, the exact bytes of an ``Authorization`` header
that authenticated are remembered (:meth:`CallerService.known`) for as long as what they
were checked against holds, so a known caller's request costs one dict lookup: no decoding,
no hash. Management (create, rotate, disable) is :mod:`broker.core.caller_admin`.

Failed authentication is bounded so it cannot load Postgres:

* a key id Postgres did not know is refused from memory for a few seconds (negative cache,
  bounded; cleared by any caller change anywhere, so a new key works at once);
* Postgres lookups of key ids this replica does not know are limited to
  ``auth_lookup_rate`` per second (token bucket, two seconds of burst). A lookup that
  authenticates gives its token back, so only failed ones use the budget. Once it is spent,
  such keys are answered ``429 auth_throttled`` with ``Retry-After``, without a lookup, and
  counted as ``broker_caller_auth_failures_total{reason="throttled"}``. A 429, not a 401,
  because the key was not checked: a real caller that was never seen on this replica (new,
  or the replica just started) must retry, not conclude that its key is bad. Callers
  known here (cached, even when due for a refresh or invalidated) skip the budget: an
  attacker cannot present their secret, so a flood never slows or refuses them. Lookups are
  counted in ``broker_caller_key_lookups_total{result}``;
* workload JWTs take the same path once their signature is verified (a validly signed
  token of a subject with no caller must not cost a query each): an identity Postgres did
  not know is refused from memory for a few seconds, its lookups share the same budget, and
  a token verified on this replica before is exempt.
"""

from __future__ import annotations

import hmac
import re
import time
from datetime import UTC, datetime

import structlog

from broker import metrics
from broker.config import Settings
from broker.core.caller_admin import KEY_PREFIX, CallerAdmin, hash_secret
from broker.core.caller_cache import CallerCache, KeyEntry
from broker.core.invalidation import Invalidations
from broker.core.limits import Budget
from broker.core.models import Caller
from broker.core.ports import AuditSink, CallerRepository, Identity, IdentityVerifier
from broker.core.tasks import BackgroundLoop
from broker.errors import RateLimitedCaller, Unauthenticated, UpstreamError

log = structlog.get_logger(__name__)

_KEY_RE = re.compile(r"^hsb_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
_NO_HASH = hash_secret("")
_NO_CALLER = "no caller is registered for this workload identity"


def _refuse_expired(expires_at: datetime | None, detail: str) -> None:
    """A caller (or key) past its expiry is refused, whichever way it authenticated."""
    if expires_at is not None and expires_at <= datetime.now(UTC):
        metrics.auth_failed(metrics.AuthFailure.EXPIRED)
        raise Unauthenticated(detail)


class CallerService(CallerAdmin):
    def __init__(
        self,
        settings: Settings,
        *,
        callers: CallerRepository,
        audit: AuditSink,
        cache: CallerCache,
        invalidations: Invalidations,
        verifier: IdentityVerifier | None = None,
    ) -> None:
        self._settings = settings
        self._callers = callers
        self._audit = audit
        self._cache = cache
        self._invalidations = invalidations
        self._verifier = verifier
        self._budget = Budget(settings.auth_lookup_rate)
        self._used: set[int] = set()
        self._buckets: dict[int, tuple[float, float]] = {}
        self._touches = BackgroundLoop(
            metrics.Background.CALLER_LAST_USED, self._touch, interval=5.0, wait_first=True
        )

    def known(self, header: bytes | None, now: float) -> Caller | None:
        """The caller this exact ``Authorization`` header (raw bytes) authenticated a moment
        ago, while that still holds (see :meth:`CallerCache.by_header`): no decoding, no
        hashing, no lookup. None: call :meth:`authenticate`."""
        if header is None:
            return None
        caller = self._cache.by_header(header, now)
        if caller is not None:
            self._used.add(caller.id)
        return caller

    async def authenticate(self, presented: str | None, *, header: bytes | None = None) -> Caller:
        """``header``: the raw ``Authorization`` header ``presented`` came from; once the
        caller is authenticated, :meth:`known` recognizes it."""
        if not presented:
            metrics.auth_failed(metrics.AuthFailure.MISSING)
            raise Unauthenticated("send an Authorization: Bearer <caller key> header")
        if self._verifier is not None and not presented.startswith(KEY_PREFIX):
            return await self._jwt(presented, header)
        match = _KEY_RE.match(presented)
        if match is None:
            metrics.auth_failed(metrics.AuthFailure.MALFORMED)
            raise Unauthenticated("the caller key is malformed")
        key_id, secret = match.groups()
        digest = hash_secret(secret)
        now = time.monotonic()
        generation = self._cache.generation
        entry = self._cache.key(key_id)
        charged = False
        if entry is None or entry.fresh_until <= now:
            entry, charged = await self._lookup(key_id, digest, entry, now)
        if not hmac.compare_digest(digest, entry.key_hash):
            metrics.auth_failed(metrics.AuthFailure.INVALID)
            raise Unauthenticated("the caller key is not valid")
        caller = entry.caller
        if caller.disabled:
            metrics.auth_failed(metrics.AuthFailure.DISABLED)
            raise Unauthenticated("the caller is disabled")
        _refuse_expired(entry.expires_at, "the caller key has expired")
        if charged:
            self._budget.give_back()  # the budget is for failed authentication only
        self._used.add(caller.id)
        if header is not None:
            # Until the record is due for a lookup (never past the key's expiry either).
            self._cache.put_header(header, caller, entry.fresh_until, entry.expires_at, generation)
        return caller

    async def _lookup(
        self, key_id: str, digest: str, known: KeyEntry | None, now: float
    ) -> tuple[KeyEntry, bool]:
        """Read ``key_id`` from Postgres and cache the record, whatever it says about the
        presented secret (so repeated wrong secrets or a disabled caller cost no more
        lookups). Returns the entry and whether the lookup used the budget."""
        # Someone presenting the secret of an entry cached here is a known caller: exempt
        # from the negative cache and the budget (an attacker cannot present it).
        presented_known = known is not None and hmac.compare_digest(digest, known.key_hash)
        charged = False
        if not presented_known:
            self._charge_stranger(
                key_id, now, metrics.AuthFailure.INVALID, "the caller key is not valid", "keys"
            )
            charged = True
        generation = self._cache.generation
        try:
            found = await self._callers.by_key_id(key_id)
        except UpstreamError:
            metrics.CALLER_LOOKUP_ERROR.inc()
            # Postgres is down: a key verified before keeps working (stale-if-error), so an
            # outage does not stop services that were being served a moment ago. Not one
            # invalidated since: that caller changed, and what changed is unknown.
            if known is not None and presented_known and known.verified:
                metrics.backend_failed("postgres", "caller_stale")
                return known, False
            raise
        if found is None:
            metrics.CALLER_LOOKUP_UNKNOWN.inc()
            self._cache.drop_key(key_id)
            self._cache.put_unknown(key_id, now, generation)
            hmac.compare_digest(digest, _NO_HASH)  # the same work as for a known key id
            metrics.auth_failed(metrics.AuthFailure.INVALID)
            raise Unauthenticated("the caller key is not valid")
        metrics.CALLER_LOOKUP_FOUND.inc()
        ttl = self._settings.caller_cache_seconds
        if found.expires_at is not None:
            left = (found.expires_at - datetime.now(UTC)).total_seconds()
            if left > 0:  # an expired key's refusal may be cached for the full time
                ttl = min(ttl, left)
        entry = KeyEntry(found.key_hash, found.caller, found.expires_at, now + ttl)
        self._cache.put_key(key_id, entry, generation)
        return entry, charged

    async def _jwt(self, token: str, header: bytes | None) -> Caller:
        """Workload identity: a JWT from a configured issuer names (issuer, subject), which
        maps to a caller record. Verified tokens are cached until the token's or the
        caller's expiry, whichever comes first (at most ``caller_cache_seconds``), so the hot
        path does no I/O; a caller past its ``expires_at`` is refused like an expired key."""
        assert self._verifier is not None
        digest = hash_secret(token)
        now = time.monotonic()
        generation = self._cache.generation
        cached = self._cache.jwt(digest, now)
        if cached is not None:
            caller, until = cached
            # The entry never outlives the caller's expiry (below); checked again anyway, as
            # the key path does, so a wall-clock step cannot stretch it.
            _refuse_expired(caller.expires_at, "the caller has expired")
        else:
            identity = await self._verifier.verify(token)
            caller = await self._by_identity(identity, self._cache.jwt_known(digest), now)
            if caller.disabled:
                metrics.auth_failed(metrics.AuthFailure.DISABLED)
                raise Unauthenticated("the caller is disabled")
            _refuse_expired(caller.expires_at, "the caller has expired")
            wall = datetime.now(UTC)
            left = (identity.expires_at - wall).total_seconds()
            if caller.expires_at is not None:
                left = min(left, (caller.expires_at - wall).total_seconds())
            until = now + min(left, self._settings.caller_cache_seconds)
            self._cache.put_jwt(digest, caller, until, generation)
        self._used.add(caller.id)
        if header is not None:
            self._cache.put_header(header, caller, until, caller.expires_at, generation)
        return caller

    def _charge_stranger(
        self, name: str, now: float, reason: metrics.AuthFailure, refusal: str, what: str
    ) -> None:
        """Before a lookup for someone this replica does not know: refused from memory when
        Postgres did not know ``name`` a moment ago (401 ``refusal``, counted as
        ``reason``), else paid from the lookup budget (429 ``auth_throttled`` once spent)."""
        if self._cache.is_unknown(name, now):
            metrics.auth_failed(reason)
            raise Unauthenticated(refusal)
        self._budget.spend(
            now,
            f"too many unknown caller {what} on this replica; retry later",
            code="auth_throttled",
            counted=metrics.CALLER_AUTH_FAILURES.labels(metrics.AuthFailure.THROTTLED),
        )

    async def _by_identity(self, identity: Identity, known: bool, now: float) -> Caller:
        """The caller of a verified identity, bounded like key lookups: an identity Postgres
        did not know is refused from memory for a few seconds, and lookups of identities
        this replica has not verified before share the ``auth_lookup_rate`` budget (given
        back when one authenticates). A token verified here before (``known``) is exempt:
        only its holder can present it."""
        unknown = f"jwt:{identity.issuer}\n{identity.subject}"  # never a hex key id
        charged = False
        if not known:
            self._charge_stranger(
                unknown, now, metrics.AuthFailure.JWT_UNKNOWN_SUBJECT, _NO_CALLER, "identities"
            )
            charged = True
        generation = self._cache.generation
        try:
            caller = await self._callers.by_identity(identity.issuer, identity.subject)
        except UpstreamError:
            metrics.CALLER_LOOKUP_ERROR.inc()
            raise
        if caller is None:
            metrics.CALLER_LOOKUP_UNKNOWN.inc()
            self._cache.put_unknown(unknown, now, generation)
            metrics.auth_failed(metrics.AuthFailure.JWT_UNKNOWN_SUBJECT)
            raise Unauthenticated(_NO_CALLER)
        metrics.CALLER_LOOKUP_FOUND.inc()
        if charged:
            self._budget.give_back()
        return caller

    def admit(self, caller: Caller, now: float | None = None) -> None:
        """Per-caller token bucket on this replica: one caller cannot starve the others.
        Raises :class:`RateLimitedCaller` (429 with Retry-After). ``now``: the request's
        ``time.monotonic()`` reading, when it has one."""
        rate = caller.rate_limit or self._settings.caller_rate
        burst = rate * 2
        if now is None:
            now = time.monotonic()
        tokens, stamp = self._buckets.get(caller.id, (burst, now))
        tokens = min(burst, tokens + (now - stamp) * rate)
        if tokens < 1:
            self._buckets[caller.id] = (tokens, now)
            metrics.CALLER_RATE_LIMITED.inc()
            raise RateLimitedCaller(
                f"caller {caller.name!r} is over its rate of {rate:g} requests/s",
                retry_after=(1 - tokens) / rate,
            )
        self._buckets[caller.id] = (tokens - 1, now)

    def start(self) -> None:
        self._touches.start()

    async def close(self) -> None:
        await self._touches.close()

    async def _touch(self) -> None:
        """Write when the callers seen since the last pass were last used (one statement)."""
        if self._used:
            used, self._used = self._used, set()
            await self._callers.touch(sorted(used))
