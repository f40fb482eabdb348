"""This replica's memory of callers, so authenticating a known caller does no I/O.

Four maps, all dropped (for the callers concerned) by :meth:`CallerCache.forget`, which
:class:`~broker.core.invalidation.Invalidations` calls when any replica changes a caller
(Redis message, or the Postgres poll when the message was missed):

* broker-issued keys by key id: the stored record (hash, caller, key expiry), fresh for
  ``caller_cache_seconds`` and then looked up again. A forgotten entry is not removed but
  marked *unverified*: it must be looked up before it is believed again, it is never served
  stale while Postgres is down, and it still tells :class:`~broker.core.callers.CallerService`
  that whoever presents its secret is a known caller (not a stranger to be rate limited).
* verified workload JWTs by their SHA-256, until the token's expiry (at most
  ``caller_cache_seconds``);
* key ids (and ``jwt:``-prefixed workload identities) Postgres did not know (negative
  cache), for a few seconds, bounded in size; any caller change anywhere clears it, so a key
  or identity created a moment ago works at once;
* the raw bytes of ``Authorization`` headers that authenticated, with their caller, until
  the key's record (or the token's entry) is due for a lookup, and never past the key's or
  caller's expiry; bounded in size, and cleared by any caller change. Only headers that
  authenticated get in, so strangers cannot fill it.

A lookup that started before a change may answer with the old state after the change was
applied here: writers pass the :attr:`CallerCache.generation` they read before the lookup,
and an entry is only stored when no caller changed in between.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from datetime import datetime

from broker.config import Settings
from broker.core.models import Caller

#: Longest time an unknown key id is refused without asking Postgres again.
UNKNOWN_SECONDS = 5.0
UNKNOWN_MAX = 10_000
JWT_MAX = 10_000
HEADERS_MAX = 10_000


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """A broker-issued key as last read from Postgres."""

    key_hash: str = field(repr=False)
    caller: Caller
    #: When the key stops working (caller expiry, end of a rotation overlap); None: never.
    expires_at: datetime | None
    #: ``time.monotonic()`` until which the entry is believed without a lookup.
    fresh_until: float
    #: False once forgotten: must be looked up again, never served stale on a DB outage.
    verified: bool = True


class CallerCache:
    def __init__(self, settings: Settings) -> None:
        self.unknown_seconds = min(UNKNOWN_SECONDS, settings.caller_cache_seconds)
        #: Bumped by every :meth:`forget`; see the module docstring.
        self.generation = 0
        self._keys: dict[str, KeyEntry] = {}
        self._jwts: dict[str, tuple[Caller, float]] = {}
        # key id -> time.monotonic() until which it is known to be unknown; insertion order
        # is expiry order (one TTL for all), so the first entry is the oldest.
        self._unknown: dict[str, float] = {}
        # raw Authorization header -> (caller, time.monotonic() until which it holds, the
        # key's or caller's expiry as a POSIX timestamp or None)
        self._headers: dict[bytes, tuple[Caller, float, float | None]] = {}

    # --- broker-issued keys ---------------------------------------------------------------
    def key(self, key_id: str) -> KeyEntry | None:
        """The entry for ``key_id``, fresh or not (check ``fresh_until``)."""
        return self._keys.get(key_id)

    def put_key(self, key_id: str, entry: KeyEntry, generation: int) -> None:
        if generation == self.generation:
            self._keys[key_id] = entry
            self._unknown.pop(key_id, None)

    def drop_key(self, key_id: str) -> None:
        self._keys.pop(key_id, None)

    def is_unknown(self, key_id: str, now: float) -> bool:
        until = self._unknown.get(key_id)
        if until is None:
            return False
        if until > now:
            return True
        del self._unknown[key_id]
        return False

    def put_unknown(self, key_id: str, now: float, generation: int) -> None:
        if generation != self.generation or self.unknown_seconds <= 0:
            return
        self._unknown.pop(key_id, None)
        while len(self._unknown) >= UNKNOWN_MAX:
            del self._unknown[next(iter(self._unknown))]
        self._unknown[key_id] = now + self.unknown_seconds

    # --- workload JWTs --------------------------------------------------------------------
    def jwt(self, digest: str, now: float) -> tuple[Caller, float] | None:
        """The caller of a verified token and until when the entry holds."""
        cached = self._jwts.get(digest)
        return cached if cached is not None and cached[1] > now else None

    def jwt_known(self, digest: str) -> bool:
        """Whether this token was verified here (fresh or not): its caller is no stranger."""
        return digest in self._jwts

    def put_jwt(self, digest: str, caller: Caller, until: float, generation: int) -> None:
        if generation != self.generation:
            return
        if len(self._jwts) >= JWT_MAX:  # tokens rotate: drop the lot, not memory
            self._jwts.clear()
        self._jwts[digest] = (caller, until)

    # --- raw Authorization headers -------------------------------------------------------
    def by_header(self, header: bytes, now: float) -> Caller | None:
        """The caller ``header`` authenticated, while its entry holds (``now``: monotonic)
        and the key or caller has not expired (the wall clock, as the full check reads it)."""
        known = self._headers.get(header)
        if known is None or known[1] <= now:
            return None
        if known[2] is not None and known[2] <= time.time():
            return None
        return known[0]

    def put_header(
        self,
        header: bytes,
        caller: Caller,
        until: float,
        expires_at: datetime | None,
        generation: int,
    ) -> None:
        if generation != self.generation:
            return
        if len(self._headers) >= HEADERS_MAX:  # keys rotate: drop the lot, not memory
            self._headers.clear()
        expiry = None if expires_at is None else expires_at.timestamp()
        self._headers[header] = (caller, until, expiry)

    # --- invalidation ---------------------------------------------------------------------
    def forget(self, caller_ids: Collection[int]) -> None:
        """Callers ``caller_ids`` changed (or were created, or deleted) somewhere: look them
        up again before believing them, and forget which key ids were unknown."""
        self.generation += 1
        self._unknown.clear()
        self._headers.clear()
        ids = set(caller_ids)
        for key_id, entry in list(self._keys.items()):
            if entry.caller.id in ids:
                self._keys[key_id] = replace(entry, fresh_until=0.0, verified=False)
        for digest, (caller, _) in list(self._jwts.items()):
            if caller.id in ids:
                del self._jwts[digest]

    def caller_ids(self) -> set[int]:
        """Ids of the callers remembered here (for the poll that notices deletions)."""
        ids = {entry.caller.id for entry in self._keys.values()}
        ids.update(caller.id for caller, _ in self._jwts.values())
        ids.update(caller.id for caller, _, _ in self._headers.values())
        return ids
