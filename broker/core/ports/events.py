"""The events outbox: delivering webhooks, and the events with their deliveries as operators
see them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol


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


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """One claimed delivery: an outbox event on its way to one receiver endpoint."""

    id: int  # the event's id (``Webhook-Id: evt_<id>``)
    type: str
    app: str | None
    hub_id: int | None
    user_id: int | None
    payload: dict[str, Any]
    at: datetime
    #: This claim's number (1 on the first attempt). It fences the claim: a report of an
    #: older claim (:meth:`Outbox.failed`, :meth:`Outbox.release`) changes nothing.
    attempts: int
    delivery_id: int
    endpoint: str  # :func:`~broker.core.webhooks.endpoint_key` of the receiver URL

    @property
    def webhook_id(self) -> str:
        return f"evt_{self.id}"


@dataclass(frozen=True, slots=True)
class OutboxStats:
    pending: int  # deliveries not acknowledged yet, plus events not fanned out yet
    stuck: int  # unacknowledged deliveries past ``stuck_after`` attempts
    oldest_seconds: float  # age of the oldest unacknowledged event; 0 when none


class Outbox(Protocol):
    """The ``events`` outbox and one delivery per (event, endpoint), on the database clock.

    * :meth:`fan_out` gives each event, once, one delivery per endpoint configured at that
      moment; several replicas may run it at once.
    * :meth:`claim` grants due deliveries of one endpoint to ``owner`` for
      ``lease_seconds``. While a claim lasts nobody else can claim that delivery (replicas
      skip each other's rows); each claim increments ``attempts``. A claim that is never
      reported (its holder crashed or paused past it) simply makes the delivery due again
      when it runs out: deliveries are retried, never lost.
    * :meth:`delivered` is final and unfenced (the receiver has the event, whoever sent it);
      the event itself is marked delivered once every endpoint acknowledged it.
    * :meth:`failed` and :meth:`release` are fenced by ``attempt``.
    """

    async def fan_out(self, endpoints: Sequence[str], *, limit: int) -> int:
        """Fan out up to ``limit`` new events; returns how many."""
        ...

    async def claim(
        self, endpoint: str, *, owner: str, limit: int, lease_seconds: float
    ) -> list[OutboxEvent]:
        """Up to ``limit`` due deliveries of ``endpoint``, longest-waiting first."""
        ...

    async def delivered(self, delivery_id: int) -> None: ...

    async def failed(
        self, delivery_id: int, attempt: int, *, error_code: str, retry_in: float
    ) -> None:
        """Record ``error_code`` (never a response body) and retry ``retry_in`` s from now."""
        ...

    async def release(self, delivery_id: int, attempt: int) -> None:
        """Give back a claim that sent nothing: due again at once."""
        ...

    async def stats(self, endpoints: Sequence[str], *, stuck_after: int) -> OutboxStats: ...


class WebhookSender(Protocol):
    """Sends one signed webhook.

    Returns the HTTP status of the answer: redirects are not followed and the answer's body
    is not kept. Raises :class:`~broker.errors.WebhookUnreachable` when there is no status (timeout,
    connection or transport error). Bounded by its own timeout. Never logs the body or the
    headers (the signature)."""

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> int: ...
