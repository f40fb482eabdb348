"""Webhooks from the events outbox, on real PostgreSQL and real HTTP receivers (a small
asyncio HTTP/1.1 server on a loopback port, in its own thread, that records every request,
can answer any status for a while, and can be stopped and started again on the same port).

Every receiver has its own ``whsec_`` secret and verifies *every* request it gets with the
published ``standardwebhooks`` library (``Webhook(secret).verify``), as a real receiver
would; a request that fails verification fails the test that made it.

What must hold: a signature in the Standard Webhooks format under the receiver's own secret
(and both secrets during a rotation) and a Webhook-Id stable across retries; no event lost
while a receiver is down or failing (an idempotent receiver sees each one once); no retry
before its scheduled time; two replicas split the work and never send one delivery at the
same time; a claim abandoned by a dead replica is taken over; nothing secret in a body.
"""

from __future__ import annotations

import asyncio
import base64
import http
import json
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import REGISTRY
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from broker.adapters.postgres.outbox import PostgresEventLog, PostgresOutbox
from broker.adapters.postgres.pool import Database
from broker.adapters.vault import VaultAdapter
from broker.adapters.webhook_http import HttpWebhookSender
from broker.config import Secret, Settings, load_settings
from broker.core.models import PortalKey
from broker.core.webhooks import WebhookDispatcher, endpoint_key
from broker.errors import ConfigError
from tests.helpers import Deploy, Deployment


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and the base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


#: Receiver URL -> the secrets the broker signs with for it (each Receiver registers its own).
SIGNING: dict[str, list[str]] = {}
HUB = 4_600_001
EVENT_TYPES = (
    "portal.installed",
    "portal.needs_reauth",
    "portal.recovered",
    "portal.revoked",
    "portal.refresh_failing",
    "app.misconfigured",
)


# --- a real receiver ----------------------------------------------------------------------
@dataclass(frozen=True)
class Received:
    at: float  # time.time() on arrival
    headers: dict[str, str]  # lower-cased names
    body: bytes
    status: int  # what the receiver answered
    verified: bool  # standardwebhooks' Webhook(receiver secret).verify accepted it

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


class Receiver:
    """A webhook receiver on 127.0.0.1 in its own thread and event loop.

    ``status`` is what it answers (change it at any time); ``delay`` how long it takes;
    ``stop()`` closes the listener and every open connection (the port then refuses),
    ``start()`` listens on the same port again. ``overlaps`` lists Webhook-Ids that arrived
    while a request with the same id was still being handled."""

    def __init__(self, *, status: int = 200, delay: float = 0.0) -> None:
        self.status = status
        self.delay = delay
        #: What this receiver verifies with (a rotation test may change it).
        self.secret = new_secret()
        self.location = ""
        self.requests: list[Received] = []
        self.overlaps: list[str] = []
        self.port = 0
        self._active: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/broker"

    def _call(self, coro: Awaitable[Any]) -> Any:
        async def wrapped() -> Any:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrapped(), self._loop).result(10)

    def start(self) -> None:
        async def listen() -> None:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self.port))
            self._server = await asyncio.start_server(self._handle, sock=sock)
            self.port = sock.getsockname()[1]

        self._call(listen())
        SIGNING.setdefault(self.url, [self.secret])

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for writer in list(self._writers):  # keep-alive connections too: a real outage
                writer.close()
            await self._server.wait_closed()

        self._call(close())

    def shutdown(self) -> None:
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None and self._server.is_serving():
            self._server.close()
        for writer in list(self._writers):
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while request_line := await reader.readline():
                assert request_line.startswith(b"POST /hooks/broker "), request_line
                headers: dict[str, str] = {}
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                status = await self._answer(headers, body)
                extra = f"Location: {self.location}\r\n" if self.location else ""
                phrase = http.HTTPStatus(status).phrase
                writer.write(
                    f"HTTP/1.1 {status} {phrase}\r\nContent-Length: 2\r\n{extra}\r\nok".encode()
                )
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _answer(self, headers: dict[str, str], body: bytes) -> int:
        webhook_id = headers.get("webhook-id", "")
        with self._lock:
            status = self.status
            if self._active[webhook_id]:
                self.overlaps.append(webhook_id)
            self._active[webhook_id] += 1
            self.requests.append(
                Received(time.time(), headers, body, status, verified(self.secret, headers, body))
            )
        try:
            await asyncio.sleep(self.delay)
        finally:
            with self._lock:
                self._active[webhook_id] -= 1
        return status

    # --- what an idempotent receiver keeps -------------------------------------------------
    def accepted(self) -> dict[str, dict[str, Any]]:
        """Webhook-Id -> event, the first 2xx copy of each (duplicates are dropped)."""
        kept: dict[str, dict[str, Any]] = {}
        with self._lock:
            for request in self.requests:
                if 200 <= request.status < 300:
                    kept.setdefault(request.webhook_id, json.loads(request.body))
        return kept


def verified(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """What a receiver does: the published library, with the receiver's secret."""
    try:
        Webhook(secret).verify(body, headers)
    except WebhookVerificationError:
        return False
    return True


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.shutdown()
    assert all(request.verified for request in r.requests), "a delivery failed verification"


@pytest.fixture
def other_receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.shutdown()
    assert all(request.verified for request in r.requests), "a delivery failed verification"


# --- helpers ------------------------------------------------------------------------------
@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = await Database.connect(database_url, min_size=1, max_size=4, timeout=5)
    yield database
    await database.close()


@asynccontextmanager
async def dispatching(db: Database, urls: list[str], **params: Any) -> AsyncIterator[Any]:
    """A dispatcher with a real HTTP sender; closed (and its sender) on exit."""
    params = {"timeout": 2.0, "batch": 8, "interval": 0.05, **params}
    sender = HttpWebhookSender(timeout=params["timeout"])
    signing = {url: [Secret(s) for s in SIGNING.get(url) or [new_secret()]] for url in urls}
    dispatcher = WebhookDispatcher(
        outbox=PostgresOutbox(db),
        sender=sender,
        urls=urls,
        signing_secrets=lambda: signing,
        **params,
    )
    try:
        yield dispatcher
    finally:
        await dispatcher.close()
        await sender.close()


async def insert_events(db: Database, count: int, kind: str = "portal.needs_reauth") -> list[int]:
    """Events as the portal repository writes them (``_event``)."""
    rows = await db.fetch(
        """INSERT INTO events (type, app, hub_id, user_id, payload)
           SELECT $1, 'demo', 7000000 + g, NULL, jsonb_build_object('class', 'grant_dead', 'n', g)
           FROM generate_series(1, $2) AS g RETURNING id""",
        kind,
        count,
    )
    return [r["id"] for r in rows]


async def eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def verify(request: Received, secret: str) -> bool:
    return verified(secret, request.headers, request.body)


def counted(result: str) -> float:
    value = REGISTRY.get_sample_value("broker_webhook_deliveries_total", {"result": result})
    return value or 0.0


# --- tests --------------------------------------------------------------------------------
async def test_signed_delivery_to_every_receiver_with_a_stable_webhook_id(
    db: Database, receiver: Receiver, other_receiver: Receiver
) -> None:
    [event_id] = await insert_events(db, 1)
    other_receiver.status = 503
    delivered_before, failed_before = counted("delivered"), counted("failed")
    async with dispatching(db, [receiver.url, other_receiver.url], jitter=lambda _: 0.0) as d:
        assert await d.run_once() == 2
        [request] = receiver.requests
        assert request.headers["content-type"] == "application/json"
        assert request.headers["webhook-id"] == f"evt_{event_id}"
        assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 5
        assert request.verified  # by standardwebhooks, with this receiver's secret
        assert request.headers["webhook-signature"].startswith("v1,")
        # Another receiver's secret does not verify it: no receiver can forge for another.
        assert not verify(request, other_receiver.secret)
        assert not verify(request, new_secret())
        tampered = Received(request.at, request.headers, request.body + b" ", 200, False)
        assert not verify(tampered, receiver.secret)
        row = await db.fetchrow("SELECT at FROM events WHERE id = $1", event_id)
        assert row is not None
        assert json.loads(request.body) == {
            "id": str(event_id),
            "type": "portal.needs_reauth",
            "occurred_at": row["at"].astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "app": "demo",
            "hub_id": 7000001,
            "user_id": None,
            "data": {"class": "grant_dead", "n": 1},
        }
        assert datetime.fromisoformat(json.loads(request.body)["occurred_at"]) == row["at"]
        # One receiver acknowledged, the other did not: the event is not delivered yet.
        assert await db.fetchval("SELECT delivered_at FROM events WHERE id = $1", event_id) is None
        errors = await db.fetch("SELECT endpoint, last_error FROM webhook_deliveries")
        assert {r["endpoint"]: r["last_error"] for r in errors} == {
            endpoint_key(receiver.url): None,
            endpoint_key(other_receiver.url): "http_503",
        }

        other_receiver.status = 200
        assert await d.run_once() == 1  # only the failed delivery is retried
        assert await d.run_once() == 0
    first, second = other_receiver.requests
    assert first.status == 503
    assert second.status == 200
    assert first.webhook_id == second.webhook_id == f"evt_{event_id}"
    assert first.body == second.body
    assert first.verified
    assert second.verified
    assert len(receiver.requests) == 1  # never sent again to the receiver that had it
    assert await db.fetchval("SELECT delivered_at FROM events WHERE id = $1", event_id)
    assert counted("delivered") - delivered_before == 2
    assert counted("failed") - failed_before == 1


async def test_no_event_lost_while_the_receiver_is_down_then_failing(
    db: Database, receiver: Receiver
) -> None:
    receiver.stop()
    ids = await insert_events(db, 20)
    async with dispatching(db, [receiver.url], backoff_base=0.1, backoff_cap=0.3) as d:
        d.start()
        await asyncio.sleep(1.0)
        rows = await db.fetch("SELECT attempts, last_error, delivered_at FROM webhook_deliveries")
        assert len(rows) == 20
        assert all(r["delivered_at"] is None and r["last_error"] == "connect" for r in rows)
        assert max(r["attempts"] for r in rows) >= 2
        assert receiver.requests == []

        receiver.status = 500
        receiver.start()  # back on the same port, but failing
        await eventually(lambda: len(receiver.requests) >= 30, 10, "failing attempts")
        receiver.status = 200
        await eventually(lambda: len(receiver.accepted()) == 20, 10, "every event accepted")
    accepted = receiver.accepted()
    assert set(accepted) == {f"evt_{i}" for i in ids}
    assert {event["id"] for event in accepted.values()} == {str(i) for i in ids}
    # At least once: any copy of an event carries the same id and the same body.
    bodies: dict[str, set[bytes]] = {}
    for request in receiver.requests:
        assert request.verified
        bodies.setdefault(request.webhook_id, set()).add(request.body)
    assert all(len(copies) == 1 for copies in bodies.values())
    undelivered = await db.fetchval("SELECT count(*) FROM events WHERE delivered_at IS NULL")
    assert undelivered == 0


async def test_no_retry_before_its_scheduled_time(db: Database, receiver: Receiver) -> None:
    receiver.status = 500
    await insert_events(db, 1)
    # No jitter: the delays are exactly 0.5 s, then 1 s (base 0.5, doubling).
    async with dispatching(db, [receiver.url], backoff_base=0.5, jitter=lambda c: c) as d:
        assert await d.run_once() == 1
        row = await db.fetchrow(
            "SELECT attempts, next_attempt_at - last_attempt_at AS wait FROM webhook_deliveries"
        )
        assert row is not None
        assert row["attempts"] == 1
        assert 0.5 <= row["wait"].total_seconds() < 0.7
        assert await d.run_once() == 0  # not due yet
        deadline = time.monotonic() + 2.5
        while len(receiver.requests) < 3 and time.monotonic() < deadline:
            await d.run_once()
            await asyncio.sleep(0.01)
    times = [r.at for r in receiver.requests]
    assert len(times) == 3
    assert times[1] - times[0] >= 0.5
    assert times[2] - times[1] >= 1.0
    assert times[2] - times[0] < 2.0  # retried when due, not much later


@pytest.mark.parametrize(
    ("status", "result"),
    [(404, "rejected"), (302, "rejected"), (408, "failed"), (429, "failed"), (502, "failed")],
)
async def test_answers_are_classified_and_all_retried(
    db: Database, receiver: Receiver, other_receiver: Receiver, status: int, result: str
) -> None:
    receiver.status = status
    receiver.location = other_receiver.url  # a 302 must not be followed there
    await insert_events(db, 1)
    before = counted(result)
    async with dispatching(db, [receiver.url], jitter=lambda _: 0.0) as d:
        assert await d.run_once() == 1
        assert await d.run_once() == 1  # retried: at least once means never dropped
    assert counted(result) - before == 2
    assert other_receiver.requests == []
    row = await db.fetchrow("SELECT attempts, last_error, delivered_at FROM webhook_deliveries")
    assert row is not None
    assert (row["attempts"], row["last_error"], row["delivered_at"]) == (2, f"http_{status}", None)


async def test_a_receiver_that_does_not_answer_times_out(db: Database, receiver: Receiver) -> None:
    receiver.delay = 2.0
    await insert_events(db, 1)
    async with dispatching(db, [receiver.url], timeout=0.3) as d:
        started = time.monotonic()
        assert await d.run_once() == 1
        assert time.monotonic() - started < 1.5
        stats = await d.update_gauges()
    assert await db.fetchval("SELECT last_error FROM webhook_deliveries") == "timeout"
    assert stats.pending == 1
    assert stats.oldest_seconds > 0
    assert REGISTRY.get_sample_value("broker_webhook_pending") == 1


async def test_two_replicas_split_the_work_and_never_overlap(
    database_url: str, receiver: Receiver
) -> None:
    receiver.delay = 0.02
    first = await Database.connect(database_url, min_size=1, max_size=4, timeout=5)
    second = await Database.connect(database_url, min_size=1, max_size=4, timeout=5)
    try:
        ids = await insert_events(first, 200)
        async with (
            dispatching(first, [receiver.url], replica_id="r1") as a,
            dispatching(second, [receiver.url], replica_id="r2") as b,
        ):
            a.start()
            b.start()
            await eventually(lambda: len(receiver.accepted()) == 200, 15, "all 200 events")
        owners = await first.fetch(
            "SELECT split_part(claimed_by, ':', 1) AS replica, count(*) AS n "
            "FROM webhook_deliveries GROUP BY 1"
        )
        attempts = await first.fetchval("SELECT max(attempts) FROM webhook_deliveries")
    finally:
        await first.close()
        await second.close()
    assert set(receiver.accepted()) == {f"evt_{i}" for i in ids}
    assert receiver.overlaps == []  # never one delivery in flight twice
    assert len(receiver.requests) == 200  # and, with nothing failing, never sent twice
    assert attempts == 1
    by_replica = {r["replica"]: r["n"] for r in owners}
    assert set(by_replica) == {"r1", "r2"}, by_replica  # both did part of the work


async def test_a_claim_abandoned_by_a_dead_replica_is_taken_over(
    db: Database, receiver: Receiver
) -> None:
    [event_id] = await insert_events(db, 1)
    outbox = PostgresOutbox(db)
    endpoint = endpoint_key(receiver.url)
    assert await outbox.fan_out([endpoint], limit=10) == 1
    # A replica claims the delivery for 0.5 s, then dies without a word.
    [dead] = await outbox.claim(endpoint, owner="dead", limit=10, lease_seconds=0.5)
    assert (dead.id, dead.attempts) == (event_id, 1)
    receiver.status = 500
    async with dispatching(db, [receiver.url], backoff_base=60, jitter=lambda c: c) as d:
        assert await d.run_once() == 0  # its claim still holds
        await asyncio.sleep(0.6)
        assert await d.run_once() == 1  # taken over: attempt 2, answered 500
        # The dead replica's late report of its old claim changes nothing.
        await outbox.failed(dead.delivery_id, dead.attempts, error_code="late", retry_in=0)
        row = await db.fetchrow(
            "SELECT attempts, last_error, next_attempt_at - clock_timestamp() AS due_in "
            "FROM webhook_deliveries"
        )
        assert row is not None
        assert (row["attempts"], row["last_error"]) == (2, "http_500")
        assert row["due_in"].total_seconds() > 50
        assert await d.run_once() == 0

        receiver.status = 200
        await db.execute("UPDATE webhook_deliveries SET next_attempt_at = clock_timestamp()")
        assert await d.run_once() == 1
        # Once delivered, no late report undoes it.
        await outbox.failed(dead.delivery_id, 3, error_code="late", retry_in=0)
    assert [r.webhook_id for r in receiver.requests] == [f"evt_{event_id}"] * 2
    row = await db.fetchrow("SELECT attempts, last_error, delivered_at FROM webhook_deliveries")
    assert row is not None
    assert (row["attempts"], row["last_error"]) == (3, None)
    assert row["delivered_at"] is not None


async def test_a_receivers_secret_rotates_with_an_overlap(db: Database, receiver: Receiver) -> None:
    """During a rotation the broker signs with the new and the old secret: the receiver
    verifies with either (and switches whenever it likes); once the old one is removed from
    BROKER_WEBHOOK_SECRET, it no longer verifies."""
    old, new = receiver.secret, new_secret()
    SIGNING[receiver.url] = [new, old]  # BROKER_WEBHOOK_SECRET entry "whsec_new whsec_old"
    await insert_events(db, 1)
    async with dispatching(db, [receiver.url]) as d:
        assert await d.run_once() == 1  # still on the old secret: accepted
        receiver.secret = new  # the receiver switches during the overlap
        await insert_events(db, 1)
        assert await d.run_once() == 1
    during = receiver.requests
    assert [r.verified for r in during] == [True, True]
    assert all(len(r.headers["webhook-signature"].split()) == 2 for r in during)
    assert verify(during[0], new)
    assert verify(during[1], old)

    SIGNING[receiver.url] = [new]  # the overlap is over
    await insert_events(db, 1)
    async with dispatching(db, [receiver.url]) as d:
        assert await d.run_once() == 1
    after = receiver.requests[-1]
    assert after.verified
    assert not verify(after, old)


def test_webhook_secrets_are_per_receiver_and_standard(env: dict[str, str]) -> None:
    a, b, c = new_secret(), new_secret(), new_secret()
    urls = "https://a.example/hook,https://b.example/hook"
    settings = load_settings(
        {**env, "BROKER_WEBHOOK_URLS": urls, "BROKER_WEBHOOK_SECRET": f"{a} {c}, {b}"}
    )
    assert {u: [s.get() for s in v] for u, v in settings.webhook_secrets_by_url.items()} == {
        "https://a.example/hook": [a, c],
        "https://b.example/hook": [b],
    }
    for bad in (
        a,  # one entry for two receivers
        f"{a},{a}",  # one secret shared by two receivers
        f"{a},{'s' * 40}",  # not a whsec_ secret (the old format)
        f"{a},whsec_{base64.b64encode(b'short').decode()}",  # under 24 bytes
        f"{a},whsec_not*base64",
        f"{a},",
    ):
        with pytest.raises(ConfigError, match="BROKER_WEBHOOK_SECRET") as refused:
            load_settings({**env, "BROKER_WEBHOOK_URLS": urls, "BROKER_WEBHOOK_SECRET": bad})
        assert a not in str(refused.value)


# --- nothing secret leaves ----------------------------------------------------------------
@pytest.fixture
def deployment(deploy: Deploy) -> Deployment:
    return deploy(portals=(HUB,))


async def decrypt_refresh_token(settings: Settings, db: Database) -> str:
    ciphertext = await db.fetchval("SELECT refresh_ct FROM portals WHERE hub_id = $1", HUB)
    vault = VaultAdapter(settings)
    try:
        await vault.login()
        (plain,) = await vault.decrypt([(ciphertext, PortalKey("demo", HUB).context("refresh"))])
        return plain
    finally:
        await vault.close()


def test_no_token_or_secret_in_any_webhook(
    deployment: Deployment,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert deployment.install(HUB, access_token_ttl=30).status_code == 200
    access = deployment.token(HUB, min_ttl=100).json()["access_token"]  # forces a refresh
    caplog.set_level("DEBUG")

    async def deliver() -> tuple[str, list[str]]:
        db = await Database.connect(
            deployment.settings.database_url.get(), min_size=1, max_size=2, timeout=5
        )
        try:
            refresh = await decrypt_refresh_token(deployment.settings, db)
            for kind in EVENT_TYPES:
                await insert_events(db, 1, kind)
            async with dispatching(db, [receiver.url]) as d:
                while await d.run_once():
                    pass
            types = [r["type"] for r in await db.fetch("SELECT type FROM events ORDER BY id")]
            return refresh, types
        finally:
            await db.close()

    refresh, types = asyncio.run(deliver())
    assert types[0] == "portal.installed"  # the real install's event
    assert len(receiver.accepted()) == len(types) == len(EVENT_TYPES) + 1
    sent = "\n".join(
        r.body.decode() + json.dumps(r.headers, sort_keys=True) for r in receiver.requests
    )
    canaries = {
        "access token": access,
        "refresh token": refresh,
        "client secret": deployment.client_secret,
        "caller key": deployment.caller_key,
        "webhook secret": receiver.secret,
        "its key": base64.b64decode(receiver.secret.removeprefix("whsec_")).hex(),
        "vault token": deployment.settings.vault_token.get(),
    }
    for name, value in canaries.items():
        assert value
        assert value not in sent, name
    assert "vault:v" not in sent  # no ciphertext either
    # Logs name deliveries but never carry a body or a signature.
    logs = "\n".join(r.getMessage() for r in caplog.records) + "".join(capsys.readouterr())
    assert "webhooks.delivered" in logs
    for request in receiver.requests:
        assert request.headers["webhook-signature"].removeprefix("v1,") not in logs
        assert request.body.decode() not in logs


async def test_redelivering_before_the_fan_out_still_reaches_every_receiver(
    database_url: str,
) -> None:
    """An operator redelivers an event to one receiver while the dispatcher is behind: the
    fan-out still gives it to the others (the redelivery used to mark it fanned out)."""
    db = await Database.connect(database_url, min_size=1, max_size=2, timeout=5)
    try:
        event_id = await db.fetchval(
            "INSERT INTO events (type, app, hub_id) VALUES ('portal.revoked', 'demo', 1) "
            "RETURNING id"
        )
        a, b, c = (endpoint_key(f"https://receiver-{n}.example/hook") for n in "abc")
        assert await PostgresEventLog(db).redeliver(event_id, [a]) is not None
        await PostgresOutbox(db).fan_out([a, b, c], limit=100)
        rows = await db.fetch(
            "SELECT endpoint FROM webhook_deliveries WHERE event_id = $1 ORDER BY 1", event_id
        )
        assert [r["endpoint"] for r in rows] == sorted([a, b, c])
    finally:
        await db.close()
