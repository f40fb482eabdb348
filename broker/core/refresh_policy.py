"""The refresh protocol's rules, free of I/O: when a token is refreshed again (the jittered
schedule), how long a failing portal waits (full-jitter backoff, HubSpot's Retry-After
believed up to a cap), when HubSpot is left alone (the circuit breaker), and which portal
states answer a caller at once."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from broker import metrics
from broker.core.models import PortalRecord, PortalState
from broker.core.tasks import JITTER
from broker.errors import HubSpotUnavailable, NeedsReauth, Quarantined, Revoked
from broker.metrics import Failure, Outcome

log = structlog.get_logger(__name__)

BACKOFF_BASE = 1.0
BACKOFF_CAP = 60.0  # a recovered HubSpot is retried within a minute
GRACE_SECONDS = 1.0  # re-check before declaring a grant dead: a racing commit may land
#: A token with less left than this is not worth serving in place of an error.
USEFUL_SECONDS = 5.0
APP_PAUSE_SECONDS = 60.0  # how long a misconfigured app's proactive refreshes pause
#: The longest HubSpot's Retry-After is believed (seconds).
RETRY_AFTER_CAP = 900.0
#: How many leases past its own a holder keeps trying to journal a response HubSpot sent.
JOURNAL_GRACE_LEASES = 2


class CircuitBreaker:
    """One per process for HubSpot's token host. After ``threshold`` consecutive
    unavailable answers it opens for ``cooldown`` seconds: refreshes fail fast instead of
    piling onto a host that is down; the first call after the cooldown is the probe."""

    def __init__(self, threshold: int = 5, cooldown: float = 15.0) -> None:
        self._threshold = threshold
        self._cooldown = cooldown
        self._failures = 0
        self._open_until = 0.0

    def check(self) -> None:
        left = self._open_until - time.monotonic()
        if left > 0:
            metrics.refreshed(Outcome.SKIPPED, Failure.UPSTREAM_UNAVAILABLE)
            raise HubSpotUnavailable("HubSpot keeps failing; pausing calls", retry_after=left)

    def failed(self) -> None:
        self._failures += 1
        if self._failures >= self._threshold:
            self._open_until = time.monotonic() + self._cooldown
            self._failures = 0
            log.warning("hubspot.circuit_open", seconds=self._cooldown)

    def succeeded(self) -> None:
        self._failures = 0

    def open_for(self) -> float:
        return max(0.0, self._open_until - time.monotonic())


@dataclass(frozen=True, slots=True)
class Fresh:
    """A portal row that satisfies the caller, and the plaintext access token when this
    process just obtained it from HubSpot (saves a decrypt)."""

    record: PortalRecord
    access_token: str | None = None


def schedule(issued_at: datetime, expires_in: int) -> tuple[datetime, datetime]:
    """(expires_at, refresh_after) for a token issued no earlier than ``issued_at``.

    The refresh point is jittered between 60 and 72% of the lifetime so that portals
    installed or refreshed together drift apart instead of refreshing in lockstep."""
    share = JITTER.uniform(0.60, 0.72)
    return (
        issued_at + timedelta(seconds=expires_in),
        issued_at + timedelta(seconds=expires_in * share),
    )


def raise_for_state(record: PortalRecord) -> None:
    """Callers of a portal that does not serve tokens get its 4xx at once."""
    if record.state is PortalState.NEEDS_REAUTH:
        raise NeedsReauth(f"portal {record.key} must be re-authorized by an operator")
    if record.state is PortalState.REVOKED:
        raise Revoked(f"portal {record.key} was revoked")
    if record.state is PortalState.QUARANTINED:
        raise Quarantined(f"portal {record.key} is quarantined by an operator")


def backoff_seconds(failures: int, retry_after: float | None) -> float:
    """Full-jitter exponential backoff, never sooner than HubSpot's Retry-After, which is
    believed up to :data:`RETRY_AFTER_CAP` (a huge or bogus value must not park a portal for
    good)."""
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(failures, 16))
    delay = JITTER.uniform(BACKOFF_BASE / 2, ceiling)
    return max(delay, min(retry_after or 0.0, RETRY_AFTER_CAP))


#: The fault-test hook awaited at each protocol step (see ``RefreshEngine``).
Checkpoint = Callable[[str], Awaitable[None]]


async def no_checkpoint(_: str) -> None:
    return None


def while_backing_off(record: PortalRecord) -> Fresh:
    """Refreshes are paused for this portal: serve what is still valid, else 503."""
    if record.remaining() >= USEFUL_SECONDS:
        return Fresh(record)
    raise HubSpotUnavailable(
        f"refreshing portal {record.key} keeps failing ({record.last_error}); retrying",
        retry_after=record.backoff_left(),
    )
