"""Caller changes reach every replica at once, and failed authentication cannot load Postgres.

Real ``broker serve`` processes (tests/chaos/cluster.py) with a fault proxy in front of Redis;
callers are changed the way an operator does it (the ``broker`` CLI, or the same use cases
in this process), or by hand in SQL. ``BROKER_CALLER_CACHE_SECONDS`` is a minute throughout,
so every refusal inside the bounds below is the invalidation's doing, not the cache expiring.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker.app import open_admin, open_services
from broker.config import Settings, load_settings
from broker.core.models import Role
from broker.dev.simulator import Simulator
from broker.errors import DatabaseError, Unauthenticated
from broker.web.services import Services
from tests.chaos.cluster import Cluster, Replica, open_cluster
from tests.faultproxy import FaultProxy
from tests.helpers import run_broker

T = TypeVar("T")

ADMIN = (Role.TOKENS_READ.value, Role.PORTALS_ADMIN.value)
LONG_CACHE = {"BROKER_CALLER_CACHE_SECONDS": "60"}
# With Redis up the Postgres poll is slowed to 30 s: what happens within a second is Redis.
REDIS_PATH = {**LONG_CACHE, "BROKER_INVALIDATION_POLL_SECONDS": "30"}
POLL = 1.0
POLL_PATH = {**LONG_CACHE, "BROKER_INVALIDATION_POLL_SECONDS": str(POLL)}


@contextmanager
def cluster(
    env: dict[str, str], sim: Simulator, sim_url: str, replicas: int, **extra: str
) -> Iterator[Cluster]:
    c = open_cluster(env, sim, sim_url, replicas=replicas, **extra)
    try:
        yield c
    finally:
        c.close()


def status(replica: Replica, key: str) -> int:
    """How ``replica`` answers ``key`` on an admin route that needs only a valid admin key."""
    response = httpx.get(
        f"{replica.url}/v1/admin/portals",
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    return response.status_code


def wait_for(replicas: list[Replica], key: str, expected: int, bound: float) -> float:
    """Seconds until every replica has answered ``expected`` for ``key`` (a replica is not
    asked again once it has); fails after ``bound`` + 5 s."""
    started = time.monotonic()
    pending = list(replicas)
    while pending and time.monotonic() - started < bound + 5:
        pending = [r for r in pending if status(r, key) != expected]
        if pending:
            time.sleep(0.02)
    assert not pending, f"still not {expected} after {bound + 5} s"
    return time.monotonic() - started


def run_admin(settings: Settings, use: Callable[[Services], Awaitable[T]]) -> T:
    """What the ``broker`` CLI does: the use cases, without a replica's background work."""

    async def go() -> T:
        async with open_admin(settings) as ctx:
            return await use(ctx)

    return asyncio.run(go())


def create(settings: Settings, name: str) -> str:
    async def use(ctx: Services) -> str:
        return (await ctx.callers.create(name, roles=ADMIN, actor="test")).secret

    # The publisher is a fresh admin context: on a loaded machine its first Redis round trip
    # (connect and publish) can outlast the 0.25 s bound and the message is then left to the
    # Postgres poll. These tests measure the replicas' answer to the message, so the
    # publisher gets time to send it.
    return run_admin(replace(settings, redis_timeout=max(settings.redis_timeout, 5.0)), use)


def lookups(replica: Replica) -> float:
    """Postgres lookups of caller keys ``replica`` made so far (its /metrics)."""
    text = httpx.get(f"{replica.url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "broker_caller_key_lookups"
        for sample in family.samples
        if sample.name == "broker_caller_key_lookups_total"
    )


def random_key() -> str:
    return f"hsb_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"


# --- part 1: changes take effect on every replica ------------------------------------------
def test_disable_by_cli_is_refused_on_every_replica_within_a_second(
    env: dict[str, str], sim: Simulator, sim_url: str
) -> None:
    with cluster(env, sim, sim_url, 2, **REDIS_PATH) as c:
        key = create(c.settings, "billing")
        assert [status(r, key) for r in c.replicas] == [200, 200]  # cached on both
        result = run_broker(c.env, "callers", "disable", "billing")
        assert result.returncode == 0, result.stderr
        took = wait_for(c.replicas, key, 401, bound=1.0)
        assert took < 1.0, f"refused after {took:.2f} s"
        answer = httpx.get(
            f"{c.replicas[1].url}/v1/admin/portals",
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )
        assert answer.json()["code"] == "unauthenticated"
        assert [status(r, c.key) for r in c.replicas] == [200, 200]  # others untouched


def test_changes_with_redis_down_are_seen_within_the_poll_bound(
    env: dict[str, str], sim: Simulator, sim_url: str
) -> None:
    with cluster(env, sim, sim_url, 2, **POLL_PATH) as c:
        bound = POLL + 1.0  # one poll period, one query, the probes' own round trips
        names = ("disabled-svc", "regranted-svc", "deleted-svc")
        keys = {name: create(c.settings, name) for name in names}
        for key in keys.values():
            assert [status(r, key) for r in c.replicas] == [200, 200]
        c.redis_proxy.set("down")  # the replicas' subscriptions and every publish fail

        run_admin(c.settings, lambda ctx: ctx.callers.disable("disabled-svc", actor="test"))
        took = wait_for(c.replicas, keys["disabled-svc"], 401, bound)
        assert took < bound, f"disabled: refused after {took:.2f} s"

        # By hand in SQL (no message at all): roles changed, then a caller deleted.
        c.sql("UPDATE callers SET roles = '{tokens:read}' WHERE name = 'regranted-svc'")
        took = wait_for(c.replicas, keys["regranted-svc"], 403, bound)
        assert took < bound, f"re-granted: still admin after {took:.2f} s"
        c.sql("DELETE FROM callers WHERE name = 'deleted-svc'")
        took = wait_for(c.replicas, keys["deleted-svc"], 401, bound)
        assert took < bound, f"deleted: accepted after {took:.2f} s"
        assert [status(r, c.key) for r in c.replicas] == [200, 200]


def test_rotation_new_key_at_once_old_key_until_the_overlap_ends(
    env: dict[str, str], sim: Simulator, sim_url: str
) -> None:
    overlap = 3.0
    with cluster(env, sim, sim_url, 2, **REDIS_PATH) as c:
        old = create(c.settings, "rotating")
        assert [status(r, old) for r in c.replicas] == [200, 200]
        new = run_admin(
            c.settings,
            lambda ctx: ctx.callers.rotate("rotating", overlap_seconds=overlap, actor="t"),
        ).secret
        [row] = c.sql(
            "SELECT extract(epoch FROM previous_key_expires_at - clock_timestamp()) AS left "
            "FROM callers WHERE name = 'rotating'"
        )
        ends = time.monotonic() + float(row["left"])  # the overlap's end, on the DB clock
        assert 0 < ends - time.monotonic() <= overlap
        assert [status(r, new) for r in c.replicas] == [200, 200]
        while time.monotonic() < ends - 0.5:  # the invalidation did not cut the overlap
            assert [status(r, old) for r in c.replicas] == [200, 200]
            time.sleep(0.1)
        wait_for(c.replicas, old, 401, bound=1.0)
        assert time.monotonic() < ends + 1.0, "the old key outlived its overlap"
        assert [status(r, new) for r in c.replicas] == [200, 200]


def test_a_change_on_one_replica_is_dropped_there_at_once(env: dict[str, str]) -> None:
    settings = load_settings({**env, **LONG_CACHE})

    async def scenario() -> None:
        async with open_admin(settings) as ctx:
            new = await ctx.callers.create("local", actor="test")
            assert (await ctx.callers.authenticate(new.secret)).name == "local"
            rotated = await ctx.callers.rotate("local", overlap_seconds=60, actor="test")
            for key in (new.secret, rotated.secret):  # old (overlap) and new both work
                assert (await ctx.callers.authenticate(key)).name == "local"
            await ctx.callers.disable("local", actor="test")
            for key in (new.secret, rotated.secret):
                with pytest.raises(Unauthenticated):
                    await ctx.callers.authenticate(key)

    asyncio.run(scenario())


def test_an_invalidated_caller_is_not_served_stale_while_postgres_is_down(
    env: dict[str, str],
) -> None:
    """Stale-if-error keeps known callers working through a Postgres outage, but never one
    that changed (here: disabled) since it was verified."""
    db = urlsplit(env["BROKER_DATABASE_URL"])
    proxy = FaultProxy(db.hostname or "127.0.0.1", db.port or 5432)
    userinfo = db.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{proxy.port}" if userinfo else f"127.0.0.1:{proxy.port}"
    proxied = urlunsplit(db._replace(netloc=netloc))
    replica = load_settings(
        {
            **env,
            "BROKER_DATABASE_URL": proxied,
            "BROKER_CALLER_CACHE_SECONDS": "0.2",
            "BROKER_DB_TIMEOUT": "0.5",
        }
    )
    operator = load_settings(env)

    async def scenario() -> None:
        async with open_admin(operator) as admin:
            kept = (await admin.callers.create("kept", actor="test")).secret
            gone = (await admin.callers.create("gone", actor="test")).secret
            async with open_services(replica) as svc:  # a replica: subscribed, polling
                for key in (kept, gone):
                    await svc.callers.authenticate(key)
                proxy.set("down")
                await asyncio.sleep(0.3)  # both entries are due for a lookup now
                for key in (kept, gone):
                    await svc.callers.authenticate(key)  # stale-if-error
                await admin.callers.disable("gone", actor="test")  # over Redis to svc
                deadline = time.monotonic() + 2
                while time.monotonic() < deadline:  # until the message is handled
                    try:
                        await svc.callers.authenticate(gone)
                    except DatabaseError:
                        break
                    await asyncio.sleep(0.01)
                else:
                    pytest.fail("a disabled caller was still served stale after 2 s")
                assert (await svc.callers.authenticate(kept)).name == "kept"
                proxy.set("pass")
                with pytest.raises(Unauthenticated):
                    await svc.callers.authenticate(gone)

    try:
        asyncio.run(scenario())
    finally:
        proxy.close()


# --- part 2: unknown keys ------------------------------------------------------------------
def test_unknown_key_id_is_cached_and_a_caller_change_anywhere_clears_it(
    env: dict[str, str], sim: Simulator, sim_url: str
) -> None:
    """Key ids are 64 random bits, so a probed id becoming a real key takes a 2**-64 chance
    per probe; to make it happen the row is written by hand with the probed id."""
    with cluster(env, sim, sim_url, 2, **REDIS_PATH) as c:
        key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        probed = f"hsb_{key_id}_{secret}"
        before = [lookups(r) for r in c.replicas]
        for _ in range(5):
            assert [status(r, probed) for r in c.replicas] == [401, 401]
        assert [lookups(r) - b for r, b in zip(c.replicas, before, strict=True)] == [1, 1]

        c.sql(
            "INSERT INTO callers (name, key_id, key_hash, roles) VALUES ($1, $2, $3, $4)",
            "hand-made",
            key_id,
            hashlib.sha256(secret.encode()).hexdigest(),
            list(ADMIN),
        )
        # No message for a row written by hand: the negative cache still answers.
        assert [status(r, probed) for r in c.replicas] == [401, 401]
        create(c.settings, "any-other")  # any caller change clears it on every replica
        assert [status(r, probed) for r in c.replicas] == [200, 200]


def test_a_flood_of_unknown_keys_is_bounded_and_known_callers_are_not_slowed(
    env: dict[str, str], sim: Simulator, sim_url: str
) -> None:
    rate, flood = 2.0, 300
    with cluster(env, sim, sim_url, 1, **REDIS_PATH, BROKER_AUTH_LOOKUP_RATE=str(rate)) as c:
        [replica] = c.replicas
        known = create(c.settings, "steady")
        assert status(replica, known) == 200
        before = lookups(replica)

        async def run() -> tuple[list[httpx.Response], list[httpx.Response], float]:
            limits = httpx.Limits(max_connections=40)
            async with httpx.AsyncClient(base_url=replica.url, timeout=30, limits=limits) as h:

                async def ask(key: str) -> httpx.Response:
                    return await h.get(
                        "/v1/admin/portals", headers={"Authorization": f"Bearer {key}"}
                    )

                started = time.monotonic()
                attack = [ask(random_key()) for _ in range(flood)]
                steady = [ask(known) for _ in range(30)]
                answers = await asyncio.gather(*attack, *steady)
                return answers[:flood], answers[flood:], time.monotonic() - started

        attack, steady, took = asyncio.run(run())
        looked_up = lookups(replica) - before
        assert looked_up <= 2 * rate + rate * took + 1, (looked_up, took)
        codes = [r.status_code for r in attack]
        assert set(codes) <= {401, 429}
        assert codes.count(401) == looked_up  # every lookup found nothing; no other was made
        throttled = next(r for r in attack if r.status_code == 429)
        assert throttled.json()["code"] == "auth_throttled"
        assert int(throttled.headers["Retry-After"]) >= 1
        assert [r.status_code for r in steady] == [200] * len(steady)

        # Invalidated (rotated, old key in its overlap) and so due for a lookup, a known
        # caller still skips the spent budget.
        run_admin(
            c.settings, lambda ctx: ctx.callers.rotate("steady", overlap_seconds=60, actor="t")
        )
        # Spend the budget (on a busy machine a slow request may let a token refill, so
        # go on until one is refused rather than counting).
        spent = [status(replica, random_key()) for _ in range(int(2 * rate))]
        while spent[-1] != 429:
            assert len(spent) < 50, spent
            spent.append(status(replica, random_key()))
        before = lookups(replica)
        assert status(replica, known) == 200
        assert lookups(replica) - before == 1
