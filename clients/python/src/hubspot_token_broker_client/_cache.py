"""The in-memory token cache: one entry per (app, hub_id, user_id).

Freshness is decided on ``time.monotonic()``, so a wall-clock step cannot make a token look
longer-lived than it is. An entry's deadline is the monotonic time the request was *sent*
plus the ``expires_in`` the broker answered: conservative by the round trip.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from hubspot_token_broker_client._token import AccessToken


@dataclass(frozen=True, slots=True)
class CacheKey:
    app: str | None
    """As the caller named it; None is the broker's default app."""
    hub_id: int
    user_id: int | None


@dataclass(frozen=True, slots=True)
class Entry:
    token: AccessToken
    deadline: float
    """``time.monotonic()`` at which the token expires, at the latest."""

    def satisfies(self, min_ttl: float) -> bool:
        # A static token (a private app's) does not expire: its deadline is only when to ask
        # the broker again, so until then it has any min_ttl left.
        if self.token.static:
            return self.deadline > time.monotonic()
        return self.deadline - time.monotonic() >= min_ttl


class TokenCache:
    """Thread-safe; every method is a short critical section with no I/O."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[CacheKey, Entry] = {}

    def get(self, key: CacheKey, min_ttl: float) -> Entry | None:
        """The entry for ``key`` when it still has ``min_ttl`` seconds left, else None.

        An expired entry is dropped on the way, so the cache holds at most one entry per
        portal the process uses and no dead tokens linger in memory."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry.deadline <= time.monotonic():
                del self._entries[key]
                return None
        return entry if entry.satisfies(min_ttl) else None

    def put(self, key: CacheKey, entry: Entry) -> None:
        with self._lock:
            current = self._entries.get(key)
            # Two answers may race (e.g. a follower fetched with a larger min_ttl): keep the
            # one that lives longer.
            if current is None or current.deadline <= entry.deadline:
                self._entries[key] = entry

    def discard(self, key: CacheKey, token: AccessToken | None = None) -> None:
        """Forget ``key``'s token; with ``token``, only if that is still the cached one."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and (token is None or entry.token == token):
                del self._entries[key]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
