"""Serving a token by Hub ID (DESIGN.md, "Serving a token").

The hot path — a cached token with enough life left — does no network I/O at all: a dict
lookup, a clock read and an audit append. A miss reads the row and decrypts; a stale token
goes through :class:`~broker.core.refresh.RefreshEngine`, and callers of the same portal in
this process share one in-flight attempt.

Times: the database clock decides expiry. Each cache entry stores its expiry on this
process's monotonic clock: the row's remaining lifetime (expiry minus the database's "now")
counted from a local reading taken *before* the query was sent (conservative). A wall-clock
step on this machine moves nothing.

An answer with less than the caller's ``min_ttl`` left is *degraded* (refreshing failed and
a still-valid token beats an error): it says so, and is counted.

A private app's token (``broker.core.private_apps``) is static: read from Vault on a miss,
cached with an infinite expiry (so any ``min_ttl`` is a hit), never refreshed, and issued
without ``expires_in``. Only an invalidation (rotation, revocation) drops it.
"""

from __future__ import annotations

import asyncio
import math
import time

from broker import metrics
from broker.config import Settings
from broker.core.batching import Coalescer
from broker.core.models import (
    CachedToken,
    Caller,
    IssuedToken,
    PortalKey,
    PortalRecord,
    Role,
)
from broker.core.ports import AuditSink, Cipher, PortalRepository, PrivateTokenStore
from broker.core.refresh import RefreshEngine
from broker.core.refresh_policy import USEFUL_SECONDS, raise_for_state
from broker.core.signing import Keyring
from broker.errors import Forbidden, InvalidRequest, NotFound, Undecryptable, UpstreamError

#: Portals whose invalidations are counted one by one (see :meth:`TokenService.invalidate`).
_GENERATIONS_MAX = 10_000
#: The ``remaining_ttl`` audited for a static token (it has no expiry): the largest int4.
STATIC_REMAINING_TTL = 2**31 - 1


class TokenService:
    def __init__(
        self,
        settings: Settings,
        *,
        portals: PortalRepository,
        cipher: Cipher,
        engine: RefreshEngine,
        audit: AuditSink,
        keyring: Keyring,
        #: Private apps' static tokens (Vault KV); None: none are served (their portals
        #: answer 404).
        private_tokens: PrivateTokenStore | None = None,
    ) -> None:
        self._settings = settings
        self._private_tokens = private_tokens
        self._portals = portals
        self._cipher = cipher
        self._engine = engine
        self._audit = audit
        self._keyring = keyring
        self._cache: dict[PortalKey, CachedToken] = {}
        self._inflight: dict[PortalKey, asyncio.Task[CachedToken]] = {}
        # Invalidation generations, per portal and for everything: a load that started
        # before an invalidation of its portal never fills the cache (the row it read may
        # predate a revoke or quarantine).
        self._epoch = 0
        self._generations: dict[PortalKey, int] = {}
        # Concurrent misses (a cold start, an invalidation wave) share one query for their
        # rows; their decrypts then arrive together and share Transit batches too.
        self._reads: Coalescer[PortalKey, PortalRecord | None] = Coalescer(
            self._read_many, max_items=500, max_inflight=4
        )
        # One tuple per distinct set of scopes, shared by the entries that have it.
        self._scopes: dict[tuple[str, ...], tuple[str, ...]] = {}

    # --- the API --------------------------------------------------------------------------
    def resolve_min_ttl(self, raw: int | None) -> int:
        if raw is None:
            return self._settings.min_ttl_default
        if not 0 <= raw <= self._settings.min_ttl_max:
            raise InvalidRequest(
                f"min_ttl must be between 0 and {self._settings.min_ttl_max} seconds",
                # The bounds let clients learn the cap (BROKER_MIN_TTL_MAX) and ask again.
                errors=[
                    {
                        "field": "min_ttl",
                        "message": "out of range",
                        "minimum": 0,
                        "maximum": self._settings.min_ttl_max,
                    }
                ],
            )
        return raw

    def cached(
        self,
        caller: Caller,
        key: PortalKey,
        min_ttl: int,
        now: float,
        *,
        role: Role | None = Role.TOKENS_READ,
    ) -> IssuedToken | None:
        """The hot path: the cached token when it has ``min_ttl`` seconds left at ``now``
        (``time.monotonic()``), else None (then :meth:`get_token`). No I/O, no await.
        ``role`` None: for the gateway, which sends the token for the caller (whose path
        grant it checked) and never hands it out."""
        if (role is not None and role not in caller.roles) or not caller.may_access(
            key.app, key.hub_id
        ):
            raise Forbidden(f"caller {caller.name!r} may not read tokens of portal {key}")
        entry = self._cache.get(key)
        if entry is None or entry.expires_local - now < min_ttl:
            return None
        metrics.TOKEN_CACHE_HIT.inc()
        return self._issue(caller, key, entry, now, min_ttl, refreshed=False)

    async def get_token(
        self, caller: Caller, key: PortalKey, min_ttl: int, *, role: Role | None = Role.TOKENS_READ
    ) -> IssuedToken:
        issued = self.cached(caller, key, min_ttl, time.monotonic(), role=role)
        if issued is not None:
            return issued
        try:
            entry, refreshed = await self._slow(key, min_ttl, stale=self._cache.get(key))
        except BaseException:
            metrics.TOKEN_ERROR.inc()
            raise
        (metrics.TOKEN_REFRESHED if refreshed else metrics.TOKEN_DB_HIT).inc()
        now = time.monotonic()
        return self._issue(caller, key, entry, now, min_ttl, refreshed=refreshed)

    def invalidate(self, key: PortalKey | None = None) -> None:
        """Drop a cached token (or all): the next request reads Postgres."""
        if key is None:
            self._epoch += 1
            self._cache.clear()
            self._inflight.clear()
        else:
            if len(self._generations) >= _GENERATIONS_MAX:
                # Forget the portals' counts (revoked portals would pile up forever) and
                # move the epoch instead: loads in flight read their state again, as after
                # an invalidation of their own portal; the cache stays.
                self._generations.clear()
                self._epoch += 1
            self._generations[key] = self._generations.get(key, 0) + 1
            self._cache.pop(key, None)
            # Requests from now on start a load of their own instead of joining one that
            # read the row before the invalidation.
            self._inflight.pop(key, None)

    def _generation(self, key: PortalKey) -> tuple[int, int]:
        return self._epoch, self._generations.get(key, 0)

    async def finish(self, timeout: float) -> None:
        """Let the loads in flight (reads, refreshes, decrypts) finish, for at most
        ``timeout`` seconds: a refresh HubSpot already answered gets stored."""
        if self._inflight:
            await asyncio.wait(list(self._inflight.values()), timeout=timeout)

    def serves_cached(self) -> bool:
        """Whether any cached OAuth token could still be served (readiness without
        Postgres). A private app's static token does not count: it never expires, so it
        would keep a replica Ready forever while its OAuth tokens run out."""
        now = time.monotonic()
        return any(USEFUL_SECONDS <= e.expires_local - now < math.inf for e in self._cache.values())

    async def prewarm(self, limit: int, *, within_seconds: float = 900.0) -> int:
        """Load the tokens of the ``limit`` portals served most in the last
        ``within_seconds`` into the cache (one query for the rows, Transit batches for the
        tokens), so a restarted replica does not send those callers down the cold path.
        Returns how many were cached; portals that cannot be served are skipped."""
        keys = await self._audit.most_requested(within_seconds=within_seconds, limit=limit)
        sent_at = time.monotonic()
        generations = {key: self._generation(key) for key in keys}
        records = [
            r
            for r in await self._portals.get_portals(keys)
            if r.state.serves_tokens
            and r.access_ct is not None
            and r.remaining() >= USEFUL_SECONDS
            and r.key not in self._cache
        ]
        # One decrypt per portal: the cipher gathers them into batches, and a token that does
        # not decrypt fails only itself.
        tokens = await asyncio.gather(
            *(
                self._cipher.decrypt([(r.access_ct or "", r.key.context("access"))])
                for r in records
            ),
            return_exceptions=True,
        )
        decrypted = [
            (record, token[0])
            for record, token in zip(records, tokens, strict=True)
            if isinstance(token, list)
        ]
        # Stored with the row; older rows' are made here, sharing Transit calls (one gather).
        prints = await asyncio.gather(
            *(self._fingerprint(record, token) for record, token in decrypted)
        )
        warmed = 0
        for (record, token), print_ in zip(decrypted, prints, strict=True):
            key = record.key
            if key not in self._cache and generations.get(key) == self._generation(key):
                self._cache[key] = self._entry(record, token, print_, sent_at, refreshed=False)
                warmed += 1
        return warmed

    # --- internals ------------------------------------------------------------------------
    def _issue(
        self,
        caller: Caller,
        key: PortalKey,
        entry: CachedToken,
        now: float,
        min_ttl: int,
        *,
        refreshed: bool,
    ) -> IssuedToken:
        remaining = entry.expires_local - now
        if remaining == math.inf:  # a private app's static token: no expiry, never degraded
            self._audit.issued(
                caller.name,
                key,
                fingerprint=entry.fingerprint,
                min_ttl=min_ttl,
                remaining_ttl=STATIC_REMAINING_TTL,
                refreshed=False,
            )
            return IssuedToken(entry, key, None)
        metrics.REMAINING_TTL.observe(remaining)
        degraded = remaining < min_ttl
        if degraded:
            metrics.TOKENS_DEGRADED.inc()
        self._audit.issued(
            caller.name,
            key,
            fingerprint=entry.fingerprint,
            min_ttl=min_ttl,
            remaining_ttl=int(remaining),
            refreshed=refreshed,
        )
        return IssuedToken(entry, key, max(0, int(remaining)), refreshed, degraded)

    async def _slow(
        self, key: PortalKey, min_ttl: int, stale: CachedToken | None
    ) -> tuple[CachedToken, bool]:
        generation = self._generation(key)
        task = self._inflight.get(key)
        joined = task is not None
        if task is None:
            task = asyncio.create_task(self._load(key, min_ttl), name=f"load {key}")
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        try:
            entry = await asyncio.shield(task)
            if joined and entry.expires_local - time.monotonic() < min_ttl:
                # The shared attempt was for a smaller min_ttl than ours: run our own.
                entry = await self._load(key, min_ttl)
        except UpstreamError:
            if (
                stale is not None
                and stale.expires_local - time.monotonic() >= USEFUL_SECONDS
                and generation == self._generation(key)  # not revoked meanwhile
            ):
                # A backend is down, but a token that is still valid beats an error.
                metrics.backend_failed("any", "serve_cached")
                return stale, False
            raise
        return entry, entry.refreshed

    def _forget(self, key: PortalKey, task: asyncio.Task[CachedToken]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]

    async def _read_many(self, keys: list[PortalKey]) -> list[PortalRecord | None]:
        found = {_identity(r.key): r for r in await self._portals.get_portals(keys)}
        return [found.get(_identity(k)) for k in keys]

    async def _load(self, key: PortalKey, min_ttl: int) -> CachedToken:
        sent_at, generation = time.monotonic(), self._generation(key)
        (record,) = await self._reads.submit([key])
        if record is None:
            raise NotFound(f"no portal {key}", code="portal_not_found")
        raise_for_state(record)
        if record.private:
            return await self._load_static(record, generation)
        fresh = await self._engine.ensure_fresh(record, min_ttl)
        record = fresh.record
        raise_for_state(record)
        access_token = fresh.access_token
        if access_token is None:
            if record.access_ct is None:
                raise NotFound(f"portal {record.key} has no token", code="portal_not_found")
            try:
                (access_token,) = await self._cipher.decrypt(
                    [(record.access_ct, record.key.context("access"))]
                )
            except Undecryptable:
                # Tampered, truncated or copied from another portal: flag it, never serve it.
                await self._portals.flag(record.key, Undecryptable.code)
                raise
        entry = self._entry(
            record,
            access_token,
            await self._fingerprint(record, access_token),
            sent_at,
            refreshed=fresh.access_token is not None,
        )
        return await self._keep(key, generation, entry)

    async def _load_static(self, record: PortalRecord, generation: tuple[int, int]) -> CachedToken:
        """A private app's token, from Vault (no refresh: it does not expire)."""
        if self._private_tokens is None:
            raise NotFound(f"portal {record.key} has no token", code="portal_not_found")
        token = (await self._private_tokens.private_app_token(record.key)).get()
        entry = CachedToken(
            token.encode(),
            expires_local=math.inf,
            scopes=self._scopes.setdefault(record.scopes, record.scopes),
            fingerprint=await self._fingerprint(record, token),
        )
        return await self._keep(record.key, generation, entry)

    async def _keep(
        self, key: PortalKey, generation: tuple[int, int], entry: CachedToken
    ) -> CachedToken:
        """Cache ``entry`` unless its portal was invalidated while it loaded."""
        if generation == self._generation(key):
            self._cache[key] = entry
        else:
            # Invalidated while loading (revoked, quarantined, needs re-auth?): what was read
            # may be stale, so the state is read again before anything is served.
            current = await self._portals.get_portal(key)
            if current is None:
                raise NotFound(f"no portal {key}", code="portal_not_found")
            raise_for_state(current)
        return entry

    async def _fingerprint(self, record: PortalRecord, access_token: str) -> str:
        """The row's stored fingerprint of its token (made when the token was obtained,
        ``broker.core.grants``), else made now (a row written without one)."""
        if record.access_fp is not None:
            return record.access_fp
        return await self._keyring.fingerprint(access_token)

    def _entry(
        self,
        record: PortalRecord,
        access_token: str,
        fingerprint: str,
        sent_at: float,
        *,
        refreshed: bool,
    ) -> CachedToken:
        assert record.access_expires_at is not None  # access_ct is set, so is its expiry
        lifetime = (record.access_expires_at - record.db_now).total_seconds()
        scopes = self._scopes.setdefault(record.scopes, record.scopes)
        return CachedToken(
            access_token.encode(),
            expires_local=sent_at + lifetime,
            scopes=scopes,
            fingerprint=fingerprint,
            refreshed=refreshed,
        )


def _identity(key: PortalKey) -> tuple[str, int, int]:
    """What the database's unique index compares (no user_id and user_id 0 are one grant)."""
    return key.app, key.hub_id, key.user_id or 0
