"""Webhooks: the ``events`` outbox delivered to HTTP receivers, signed, at least once.

What a receiver gets
--------------------
Every event is POSTed to every configured URL, as one JSON object::

    {"id": "42", "type": "portal.needs_reauth", "occurred_at": "2026-05-04T09:30:12.345678Z",
     "app": "demo", "hub_id": 12345678, "user_id": null, "data": {"class": "grant_dead"}}

signed in the Standard Webhooks format (https://www.standardwebhooks.com/), with these
headers::

    Content-Type: application/json
    Webhook-Id: evt_42               the idempotency key: the same on every retry
    Webhook-Timestamp: 1777887012    unix seconds when this attempt was signed
    Webhook-Signature: v1,<base64>   HMAC-SHA256 under the receiver's own secret

The signed content is ``f"{webhook_id}.{timestamp}.".encode() + body`` (the raw body bytes
as received), keyed with the base64-decoded part of the receiver's ``whsec_`` secret. Every
receiver has its own secrets (``BROKER_WEBHOOK_SECRET``), so no receiver can forge events
for another. During a secret rotation the header carries one space-separated ``v1,``
signature per configured secret of that receiver, so a receiver verifying with either the
old or the new secret accepts. Receivers verify with the published library::

    from standardwebhooks import Webhook
    event = Webhook("whsec_...").verify(body, headers)   # also refuses stale timestamps

Delivery is **at least once**: answer 2xx only once the event is stored, and deduplicate by
Webhook-Id (a retry after a lost answer, or a replica that lost its claim, sends it again).
There is no ordering between events; use ``occurred_at``. Any 2xx acknowledges; everything
else is retried, forever, with full-jitter exponential backoff (``backoff_base`` doubling up
to ``backoff_cap``): 5xx, 408, 429, timeouts and connection errors count as ``failed``; any
other 3xx/4xx as ``rejected`` (the receiver is misconfigured; redirects are never followed).
Bodies carry the event's own fields and payload only: never a token or a secret.

How it runs
-----------
Each replica runs one :class:`WebhookDispatcher`. A pass fans new events out into one
delivery per endpoint (:meth:`Outbox.fan_out`), then claims due deliveries endpoint by
endpoint (``SKIP LOCKED``: replicas split the work, and a delivery is never claimed twice
at once) and posts them concurrently, at most ``batch`` in flight per endpoint, so a slow
or dead receiver never holds back another. A failing pass never stops the loop.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC
from urllib.parse import urlsplit

import structlog

from broker import metrics
from broker.config import Secret
from broker.core.ports import Outbox, OutboxEvent, OutboxStats, WebhookSender
from broker.core.tasks import JITTER, BackgroundLoop
from broker.errors import BrokerError, FatalError, WebhookUnreachable
from broker.metrics import Delivery

log = structlog.get_logger(__name__)

# Events fanned out per statement; more are taken on the next pass at once.
_FAN_OUT_BATCH = 500
# Headroom between the end of a POST (timeout + this backstop) and the end of its claim.
_MARGIN = 1.0


def endpoint_key(url: str) -> str:
    """How deliveries name a receiver: URLs may carry credentials, so they are not stored."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def render(event: OutboxEvent) -> bytes:
    """The JSON body of ``event``: its own fields and payload, nothing else."""
    document = {
        "id": str(event.id),
        "type": event.type,
        "occurred_at": event.at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "app": event.app,
        "hub_id": event.hub_id,
        "user_id": event.user_id,
        "data": event.payload,
    }
    return json.dumps(document, separators=(",", ":")).encode()


def sign(keys: Sequence[Secret], webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``Webhook-Signature`` value: a ``v1,<base64>`` signature per ``whsec_`` secret
    (see the module docstring)."""
    content = f"{webhook_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1,"
        + base64.b64encode(
            hmac.digest(base64.b64decode(s.get().removeprefix("whsec_")), content, "sha256")
        ).decode()
        for s in keys
    )


def classify(status: int) -> Delivery:
    """``delivered``, ``rejected`` (receiver misconfigured: 3xx, most 4xx) or ``failed``."""
    if 200 <= status < 300:
        return Delivery.DELIVERED
    if 300 <= status < 500 and status not in (408, 429):
        return Delivery.REJECTED
    return Delivery.FAILED


def full_jitter(ceiling: float) -> float:
    """Uniform in ``[0, ceiling]``: retries of many deliveries spread out instead of aligning."""
    return JITTER.uniform(0.0, ceiling)


class WebhookDispatcher:
    """Delivers the outbox to ``urls`` from a background task (:meth:`start`/:meth:`close`).

    ``jitter`` maps a backoff ceiling to the actual delay (default :func:`full_jitter`);
    tests pass ``lambda ceiling: ceiling`` to get exact delays instead of patching sleep.
    """

    def __init__(
        self,
        *,
        outbox: Outbox,
        sender: WebhookSender,
        urls: Sequence[str],
        signing_secrets: Callable[[], Mapping[str, Sequence[Secret]]],
        timeout: float = 10.0,
        batch: int = 32,
        interval: float = 1.0,
        backoff_base: float = 1.0,
        backoff_cap: float = 300.0,
        stuck_after: int = 20,
        replica_id: str = "replica",
        jitter: Callable[[float], float] = full_jitter,
    ) -> None:
        if not urls or any(not signing_secrets().get(url) for url in urls):
            raise FatalError(
                "webhooks need at least one URL and a secret for each", code="config_invalid"
            )
        self._outbox = outbox
        self._sender = sender
        self._urls = {endpoint_key(url): url for url in dict.fromkeys(urls)}
        # Asked on every delivery: a secret rotated in its file is used at once; a file
        # rotated into something invalid keeps the last valid secrets in use (and says so).
        self._secrets = signing_secrets
        self._last_secrets = signing_secrets()
        self._secrets_invalid = False
        self._timeout = timeout
        self._batch = batch
        self._interval = interval
        self._base = backoff_base
        self._cap = backoff_cap
        self._stuck_after = stuck_after
        self._jitter = jitter
        # A claim outlives its POST (timeout + backstop) and the write after it by far.
        self._lease = 2 * timeout + 10.0
        self._owner = f"{replica_id}:webhooks:{secrets.token_hex(4)}"
        self._inflight: dict[str, set[asyncio.Task[None]]] = {key: set() for key in self._urls}
        # Jittered by half so replicas started together do not poll in lockstep.
        self._loop = BackgroundLoop(
            metrics.Background.WEBHOOKS,
            self._step,
            interval=interval,
            jitter=0.5,
            backlog=self._slot_freed,
        )
        # Every 15 s, so a scrape never scans the outbox.
        self._gauges = BackgroundLoop(
            metrics.Background.WEBHOOK_GAUGES, self.update_gauges, interval=15.0
        )

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        self._loop.start()
        self._gauges.start()

    async def close(self) -> None:
        """Stop claiming; let deliveries in flight finish (each is bounded by the timeout)."""
        await self._loop.stop()
        await self._gauges.close()
        inflight = self._all_inflight()
        if inflight:
            _, late = await asyncio.wait(inflight, timeout=self._timeout + 2 * _MARGIN)
            for task in late:  # only a sender breaking its own timeout gets here
                task.cancel()

    # --- the loop ---------------------------------------------------------------------------
    async def _step(self) -> bool:
        """One pass; True when more may be waiting (a backlog)."""
        _, more = await self._pass()
        return more

    async def _slot_freed(self) -> None:
        """A backlog: claim again as soon as a delivery finishes (or after one interval)."""
        inflight = self._all_inflight()
        if inflight:
            await asyncio.wait(
                inflight, timeout=self._interval, return_when=asyncio.FIRST_COMPLETED
            )

    async def run_once(self) -> int:
        """One pass, waiting for its deliveries to finish; returns how many were attempted."""
        started, _ = await self._pass()
        if started:
            await asyncio.wait(started)
        return len(started)

    async def _pass(self) -> tuple[list[asyncio.Task[None]], bool]:
        """Fan out, then claim and start what is due. Returns the started deliveries and
        whether more work may be waiting (a full fan-out or claim, or no free slot)."""
        fanned_out = await self._outbox.fan_out(list(self._urls), limit=_FAN_OUT_BATCH)
        more = fanned_out >= _FAN_OUT_BATCH
        loop = asyncio.get_running_loop()
        started: list[asyncio.Task[None]] = []
        for endpoint, inflight in self._inflight.items():
            free = self._batch - len(inflight)
            if free <= 0:
                more = True
                continue
            # Taken before the claim: the claim ends no sooner than this deadline.
            deadline = loop.time() + self._lease
            claimed = await self._outbox.claim(
                endpoint, owner=self._owner, limit=free, lease_seconds=self._lease
            )
            more = more or len(claimed) == free
            for item in claimed:
                task = asyncio.create_task(self._deliver(item, deadline), name="webhook-delivery")
                inflight.add(task)
                task.add_done_callback(inflight.discard)
                started.append(task)
        return started, more

    # --- one delivery -----------------------------------------------------------------------
    def backoff(self, attempts: int) -> float:
        """Delay before the next attempt after ``attempts`` failed ones."""
        ceiling = min(self._cap, self._base * 2.0 ** min(attempts - 1, 40))
        return max(0.0, self._jitter(ceiling))

    async def _deliver(self, item: OutboxEvent, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        url = self._urls[item.endpoint]
        where = {"event_id": item.id, "endpoint": item.endpoint, "host": urlsplit(url).hostname}
        try:
            if loop.time() + self._timeout + 2 * _MARGIN > deadline:
                # Self-fence: the claim could run out mid-request and another replica send
                # the same delivery at the same time. Hand it back unsent.
                await self._outbox.release(item.delivery_id, item.attempts)
                return
            result, error = await self._post(url, item)
            if result is Delivery.DELIVERED:
                await self._outbox.delivered(item.delivery_id)
                log.info("webhooks.delivered", type=item.type, attempt=item.attempts, **where)
                return
            retry_in = self.backoff(item.attempts)
            await self._outbox.failed(
                item.delivery_id, item.attempts, error_code=error, retry_in=retry_in
            )
            log.warning(
                "webhooks.attempt_failed",
                result=result,
                error=error,
                attempt=item.attempts,
                retry_in=round(retry_in, 3),
                **where,
            )
            if item.attempts == self._stuck_after:
                log.error("webhooks.delivery_stuck", attempt=item.attempts, **where)
        except BrokerError as exc:
            # The claim runs out and the delivery is attempted again: at least once.
            metrics.backend_failed("postgres", "webhook_record")
            log.warning("webhooks.record_failed", code=exc.code, **where)
        except Exception:  # a bug in one delivery must not take the others down
            metrics.backend_failed("any", "webhook_bug")
            log.exception("webhooks.delivery_crashed", **where)

    def _signing_secrets(self) -> Mapping[str, Sequence[Secret]]:
        try:
            self._last_secrets = self._secrets()
            self._secrets_invalid = False
        except ValueError as exc:  # its message names what is wrong, never a secret
            if not self._secrets_invalid:
                self._secrets_invalid = True
                metrics.backend_failed("webhooks", "secret_invalid")
                log.error("webhooks.secret_invalid", problem=str(exc), using="the last valid")
        return self._last_secrets

    async def _post(self, url: str, item: OutboxEvent) -> tuple[Delivery, str]:
        """POST ``item`` once: (result, error code), result as in :func:`classify`."""
        body = render(item)
        timestamp = int(time.time())
        secrets_now = self._signing_secrets()[url]
        headers = {
            "Content-Type": "application/json",
            "Webhook-Id": item.webhook_id,
            "Webhook-Timestamp": str(timestamp),
            "Webhook-Signature": sign(secrets_now, item.webhook_id, timestamp, body),
        }
        started = time.perf_counter()
        try:
            # A backstop: the sender bounds itself, but the claim must never be outlived.
            async with asyncio.timeout(self._timeout + _MARGIN):
                status = await self._sender.post(url, body, headers)
        except WebhookUnreachable as exc:
            result, error = Delivery.FAILED, exc.reason
        except TimeoutError:
            result, error = Delivery.FAILED, "timeout"
        else:
            result, error = classify(status), f"http_{status}"
        metrics.WEBHOOK_DELIVERY_SECONDS.observe(time.perf_counter() - started)
        metrics.WEBHOOK_DELIVERIES.labels(result).inc()
        return result, error

    # --- gauges -----------------------------------------------------------------------------
    async def update_gauges(self) -> OutboxStats:
        stats = await self._outbox.stats(list(self._urls), stuck_after=self._stuck_after)
        metrics.WEBHOOK_PENDING.set(stats.pending)
        metrics.WEBHOOK_STUCK.set(stats.stuck)
        metrics.WEBHOOK_OLDEST_PENDING_SECONDS.set(stats.oldest_seconds)
        return stats

    def _all_inflight(self) -> set[asyncio.Task[None]]:
        everything: set[asyncio.Task[None]] = set()
        for tasks in self._inflight.values():
            everything |= tasks
        return everything
