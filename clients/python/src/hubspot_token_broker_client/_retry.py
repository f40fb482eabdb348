"""When the client asks the broker again: an explicit predicate and a hard budget."""

from __future__ import annotations

import random
from dataclasses import dataclass

from hubspot_token_broker_client._errors import BrokerClientError, BrokerUnavailable, RateLimited


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries for one ``token()`` call.

    Only :class:`BrokerUnavailable` (no answer, 502/503/504) and :class:`RateLimited` (429)
    are retried; every other error is final. The wait is the broker's ``Retry-After`` when
    it sent one, else a jittered exponential backoff starting at ``backoff`` seconds. A wait
    that would take the call past ``max_wait`` seconds of sleeping in total is not made:
    the error is raised at once with its ``retry_after``, because coming back sooner than
    the broker asked is pointless. ``RetryPolicy(retries=0)`` turns retrying off.
    """

    retries: int = 2
    """Attempts after the first."""
    max_wait: float = 2.0
    """Seconds one call may spend sleeping between attempts, in total."""
    backoff: float = 0.1
    """First wait when the broker gave no ``Retry-After``; doubles on each retry."""

    def __post_init__(self) -> None:
        if self.retries < 0 or self.max_wait < 0 or self.backoff < 0:
            raise ValueError("retries, max_wait and backoff must be >= 0")

    def delay(self, attempt: int, error: BrokerClientError, waited: float) -> float | None:
        """Seconds to sleep before attempt ``attempt + 1`` (0 is the first attempt) after
        ``error``, having slept ``waited`` seconds already; None means give up."""
        if not isinstance(error, BrokerUnavailable | RateLimited) or attempt >= self.retries:
            return None
        if error.retry_after is not None:
            wait = error.retry_after
        else:
            ceiling = self.backoff * 2**attempt
            wait = random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not crypto
        if waited + wait > self.max_wait:
            return None
        return wait
