"""Caller identities and broker-issued keys (DESIGN.md, "Security: Callers").

A key is ``hsb_<key_id>_<secret>``: the id finds the record, the secret is checked against
its stored SHA-256 (keys are 256-bit random, so a plain hash is enough; no key is ever
stored). Comparison is constant-time. Verified callers are cached in memory for
``caller_cache_seconds`` so the hot path does no I/O; a disabled or expired caller is
therefore refused within that many seconds on every replica. While Postgres is unreachable,
a caller verified earlier stays accepted (stale-if-error).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable
from datetime import UTC, datetime

import structlog

from broker import metrics
from broker.config import Settings
from broker.core.models import Caller, NewCallerKey, Role
from broker.core.ports import AuditSink, CallerRepository, IdentityVerifier
from broker.core.tasks import cancel_and_wait
from broker.errors import (
    InvalidRequest,
    NotFound,
    RateLimitedCaller,
    Unauthenticated,
    UpstreamError,
)

log = structlog.get_logger(__name__)

KEY_PREFIX = "hsb_"
_KEY_RE = re.compile(r"^hsb_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class CallerService:
    def __init__(
        self,
        settings: Settings,
        *,
        callers: CallerRepository,
        audit: AuditSink,
        verifier: IdentityVerifier | None = None,
    ) -> None:
        self._settings = settings
        self._callers = callers
        self._audit = audit
        self._verifier = verifier
        # sha256(JWT) -> (caller, valid until on time.monotonic()); bounded, see _jwt
        self._verified_jwts: dict[str, tuple[Caller, float]] = {}
        # key_id -> (secret hash, caller, valid until on time.monotonic())
        self._verified: dict[str, tuple[str, Caller, float]] = {}
        self._used: set[int] = set()
        self._buckets: dict[int, tuple[float, float]] = {}
        self._task: asyncio.Task[None] | None = None

    async def authenticate(self, presented: str | None) -> Caller:
        if not presented:
            metrics.CALLER_AUTH_FAILURES.labels("missing").inc()
            raise Unauthenticated("send an Authorization: Bearer <caller key> header")
        if self._verifier is not None and not presented.startswith(KEY_PREFIX):
            return await self._jwt(presented)
        match = _KEY_RE.match(presented)
        if match is None:
            metrics.CALLER_AUTH_FAILURES.labels("malformed").inc()
            raise Unauthenticated("the caller key is malformed")
        key_id, secret = match.groups()
        digest = _hash(secret)
        now = time.monotonic()
        cached = self._verified.get(key_id)
        if cached is not None and cached[2] > now:
            if not hmac.compare_digest(digest, cached[0]):
                metrics.CALLER_AUTH_FAILURES.labels("invalid").inc()
                raise Unauthenticated("the caller key is not valid")
            self._used.add(cached[1].id)
            return cached[1]
        try:
            found = await self._callers.by_key_id(key_id)
        except UpstreamError:
            # Postgres is down: a caller verified before keeps working (stale-if-error), so
            # an outage does not stop services that were being served a moment ago.
            if cached is not None and hmac.compare_digest(digest, cached[0]):
                metrics.BACKEND_ERRORS.labels("postgres", "caller_stale").inc()
                return cached[1]
            raise
        # Compare even when unknown, so both paths take the same time.
        stored = found[1] if found is not None else _hash("")
        if found is None or not hmac.compare_digest(digest, stored):
            metrics.CALLER_AUTH_FAILURES.labels("invalid").inc()
            raise Unauthenticated("the caller key is not valid")
        caller = found[0]
        if caller.disabled:
            metrics.CALLER_AUTH_FAILURES.labels("disabled").inc()
            raise Unauthenticated("the caller is disabled")
        if caller.expires_at is not None and caller.expires_at <= datetime.now(UTC):
            metrics.CALLER_AUTH_FAILURES.labels("expired").inc()
            raise Unauthenticated("the caller key has expired")
        ttl = self._settings.caller_cache_seconds
        if caller.expires_at is not None:
            ttl = min(ttl, (caller.expires_at - datetime.now(UTC)).total_seconds())
        self._verified[key_id] = (stored, caller, now + ttl)
        self._used.add(caller.id)
        return caller

    async def _jwt(self, token: str) -> Caller:
        """Workload identity: a JWT from a configured issuer names (issuer, subject), which
        maps to a caller record. Verified tokens are cached until their expiry (at most
        ``caller_cache_seconds``), so the hot path does no I/O."""
        assert self._verifier is not None
        digest = _hash(token)
        now = time.monotonic()
        cached = self._verified_jwts.get(digest)
        if cached is not None and cached[1] > now:
            self._used.add(cached[0].id)
            return cached[0]
        identity = await self._verifier.verify(token)
        caller = await self._callers.by_identity(identity.issuer, identity.subject)
        if caller is None:
            metrics.CALLER_AUTH_FAILURES.labels("jwt_unknown_subject").inc()
            raise Unauthenticated("no caller is registered for this workload identity")
        if caller.disabled:
            metrics.CALLER_AUTH_FAILURES.labels("disabled").inc()
            raise Unauthenticated("the caller is disabled")
        left = (identity.expires_at - datetime.now(UTC)).total_seconds()
        if len(self._verified_jwts) > 10_000:  # tokens rotate: drop the lot, not memory
            self._verified_jwts.clear()
        self._verified_jwts[digest] = (caller, now + min(left, self._settings.caller_cache_seconds))
        self._used.add(caller.id)
        return caller

    def admit(self, caller: Caller) -> None:
        """Per-caller token bucket on this replica: one caller cannot starve the others.
        Raises :class:`RateLimitedCaller` (429 with Retry-After)."""
        rate = caller.rate_limit or self._settings.caller_rate
        burst = rate * 2
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

    async def create(
        self,
        name: str,
        *,
        roles: Iterable[str] = (Role.TOKENS_READ.value,),
        apps: Iterable[str] | None = None,
        hub_ids: Iterable[int] | None = None,
        expires_at: datetime | None = None,
        rate_limit: float | None = None,
        identity: tuple[str, str] | None = None,
        with_key: bool = True,
        actor: str,
    ) -> NewCallerKey:
        if not _NAME_RE.match(name):
            raise InvalidRequest(
                "caller names are 1-128 letters, digits, '.', '_', ':' or '-'",
                errors=[{"field": "name", "message": "invalid"}],
            )
        role_set = frozenset(roles)
        unknown = role_set - {r.value for r in Role}
        if unknown:
            raise InvalidRequest(f"unknown roles: {', '.join(sorted(unknown))}")
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        draft = Caller(
            id=0,
            name=name,
            roles=role_set,
            apps=None if apps is None else frozenset(apps),
            hub_ids=None if hub_ids is None else frozenset(hub_ids),
            expires_at=expires_at,
            rate_limit=rate_limit,
        )
        if not with_key and identity is None:
            raise InvalidRequest("a caller needs a key or a workload identity")
        caller = await self._callers.create(
            draft,
            key_id if with_key else None,
            _hash(secret) if with_key else None,
            expires_at,
            identity,
        )
        self._audit.record("caller.created", actor=actor, caller=name, roles=sorted(role_set))
        shown = f"{KEY_PREFIX}{key_id}_{secret}" if with_key else ""
        return NewCallerKey(caller, key_id, shown, expires_at)

    async def rotate(self, name: str, *, overlap_seconds: float, actor: str) -> NewCallerKey:
        """A new key for ``name``; the old one keeps working for ``overlap_seconds``."""
        if not 0 <= overlap_seconds <= 30 * 86400:
            raise InvalidRequest("the overlap must be between 0 and 30 days")
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        caller = await self._callers.rotate_key(name, key_id, _hash(secret), overlap_seconds)
        if caller is None:
            raise NotFound(f"no enabled caller named {name!r}", code="caller_not_found")
        self._verified = {k: v for k, v in self._verified.items() if v[1].name != name}
        self._audit.record(
            "caller.key_rotated", actor=actor, caller=name, overlap_seconds=overlap_seconds
        )
        return NewCallerKey(caller, key_id, f"{KEY_PREFIX}{key_id}_{secret}", caller.expires_at)

    async def list(self) -> list[Caller]:
        return await self._callers.list()

    async def disable(self, name: str, *, actor: str) -> None:
        if not await self._callers.disable(name):
            raise NotFound(f"no enabled caller named {name!r}", code="caller_not_found")
        self._verified = {k: v for k, v in self._verified.items() if v[1].name != name}
        self._audit.record("caller.disabled", actor=actor, caller=name)

    def start(self) -> None:
        self._task = asyncio.create_task(self._touch_loop(), name="caller-last-used")

    async def close(self) -> None:
        await cancel_and_wait(self._task)

    async def _touch_loop(self) -> None:
        while True:
            await asyncio.sleep(5.0)
            if self._used:
                used, self._used = self._used, set()
                try:
                    await self._callers.touch(sorted(used))
                except UpstreamError:
                    log.warning("callers.touch_failed", count=len(used))
                except Exception:  # never let a bug end the loop
                    log.exception("callers.touch_crashed")
