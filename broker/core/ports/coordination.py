"""Redis: advisory locks, notices between replicas, the shared refresh rate."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class Coordinator(Protocol):
    """Redis: advisory locks, notices between replicas, single-use install state.

    Every method is bounded by a short timeout. Lock and notice methods report Redis being
    down or slow by returning ``None``/``False`` rather than raising, so callers fall back to
    Postgres; install-state methods raise :class:`~broker.errors.UpstreamError`.
    """

    async def try_lock(self, name: str, owner: str, ttl_seconds: float) -> bool | None:
        """``SET NX PX``. True: acquired; False: held elsewhere; None: Redis unavailable."""
        ...

    async def unlock(
        self, name: str, owner: str, *, refreshed: tuple[int, int] | None = None
    ) -> None:
        """Compare-and-delete: only removes the lock while ``owner`` still holds it.
        ``refreshed`` (portal id, version): publish that "refreshed" notice first, in the
        same round trip (:meth:`publish_refreshed`, then the release)."""
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
    """Refreshes per app, shared by every replica (token bucket in Redis) at an adaptive
    rate: it grows while more portals are due than it lets through and halves on a 429.

    Interactive refreshes (a caller is waiting) always proceed and are counted; proactive
    ones wait for a token, so callers take priority. ``pause`` reports HubSpot's 429: it
    slows the app's rate and stops its proactive refreshes on every replica for ``seconds``
    (Retry-After honoured by the caller)."""

    async def acquire(self, app: str, *, interactive: bool) -> float:
        """0 when allowed now; otherwise the seconds to wait before asking again."""
        ...

    async def acquire_many(self, app: str, count: int) -> tuple[int, float]:
        """Proactive slots for ``count`` refreshes at once, in one round trip: how many may
        go now (those are counted), and when fewer than ``count``, the seconds to wait
        before asking again (as :meth:`acquire`)."""
        ...

    async def pause(self, app: str, seconds: float) -> None: ...
