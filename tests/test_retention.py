"""Retention and shredding on real PostgreSQL: a revoke deletes the portal's journal rows
(and the sweep those a stalled holder journals afterwards), queueing the unapplied ones'
refresh tokens for the upstream revoke; the sweep deletes exactly the
expired rows — never an undelivered event or a journal row the refresh protocol can still
adopt or heal from — one replica at a time, in batches; 0 keeps rows forever."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta

import asyncpg
import pytest

from broker.adapters.postgres.pool import Database
from broker.adapters.postgres.portals import PostgresPortals
from broker.adapters.postgres.retention import PostgresRetention
from broker.app import open_admin, open_services
from broker.config import load_settings
from broker.core.models import PortalKey
from broker.core.ports import EncryptedGrant
from broker.core.retention import RetentionPolicy, RetentionSweeper
from broker.errors import ConfigError
from tests.helpers import Deploy, Deployment, run_broker

HUB = 5_500_001
DEFAULTS = RetentionPolicy(audit_days=400, events_days=30, journal_hours=24)
ENDPOINTS = ("0123456789abcdef", "fedcba9876543210")


async def _query(url: str, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def _count(url: str, table: str, where: str = "true") -> int:
    (row,) = await _query(url, f"SELECT count(*) AS n FROM {table} WHERE {where}")
    count: int = row["n"]
    return count


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = await Database.connect(database_url, min_size=1, max_size=4, timeout=5)
    yield database
    await database.close()


def sweeper(db: Database, policy: RetentionPolicy = DEFAULTS, batch: int = 2) -> RetentionSweeper:
    # A tiny batch, so every kind of row takes several statements to drain.
    return RetentionSweeper(policy, store=PostgresRetention(db), batch=batch)


# --- the revoke shreds the journal ---------------------------------------------------------
@pytest.fixture
def deployment(deploy: Deploy) -> Deployment:
    return deploy(portals=(HUB,))


def test_revoke_deletes_the_portals_journal_and_the_sweep_a_stalled_holders_row(
    deployment: Deployment,
) -> None:
    url = deployment.settings.database_url.get()
    assert deployment.install(HUB, access_token_ttl=30).status_code == 200
    for _ in range(2):
        response = deployment.token(HUB, min_ttl=100)  # always stale: forces a refresh
        assert response.status_code == 200, response.text
    assert deployment.sim.counters()["token.refresh_token"] == 2
    journal = f"portal_id = (SELECT id FROM portals WHERE hub_id = {HUB})"
    assert asyncio.run(_count(url, "token_journal", journal)) == 2

    async def revoke_under_a_stalled_holder() -> int:
        db = await Database.connect(url, min_size=1, max_size=4, timeout=5)
        try:
            portals = PostgresPortals(db)
            record = await portals.get_portal(PortalKey("demo", HUB))
            assert record is not None
            # A refresh holder that took its lease, then stalls across the revoke.
            lease = await portals.claim_lease(
                record.id, "stalled", lease_seconds=30, min_ttl=100, ignore_backoff=True
            )
            assert lease is not None
            # It got a rotated token from HubSpot and journaled it, then stalled before its
            # fenced write: that newer token is owed an upstream revoke too.
            now = await portals.db_now()
            newer = EncryptedGrant("vault:v1:newer", "vault:v1:newer", now, now)
            journal_id = await portals.journal(lease, newer, None)
            async with open_admin(deployment.settings) as svc:
                revoked = await svc.operations.revoke(
                    PortalKey("demo", HUB), reason="offboarded", actor="test"
                )
            assert revoked.record.state == "revoked"
            assert await _count(url, "token_journal", journal) == 0  # same transaction
            # The portal's own token was revoked at HubSpot at once; the journal's is owed.
            assert revoked.upstream == "revoked"
            assert await _count(url, "pending_revocations", f"hub_id = {HUB}") == 1
            assert await _count(url, "pending_revocations", "refresh_ct = 'vault:v1:newer'") == 1
            assert await portals.commit_refresh(lease, newer, journal_id) is None
            # It wakes up again: journals another response, whose fenced write fails too.
            stale = EncryptedGrant("vault:v1:stale", "vault:v1:stale", now, now)
            journal_id = await portals.journal(lease, stale, None)
            assert await portals.commit_refresh(lease, stale, journal_id) is None
            assert await _count(url, "token_journal", journal) == 1
            report = await sweeper(db).sweep()
            assert report.deleted["token_journal"] == 1
            assert await _count(url, "pending_revocations", "refresh_ct = 'vault:v1:stale'") == 1
            return await _count(url, "token_journal", journal)
        finally:
            await db.close()

    assert asyncio.run(revoke_under_a_stalled_holder()) == 0
    (portal,) = asyncio.run(
        _query(url, f"SELECT refresh_ct, access_ct FROM portals WHERE hub_id = {HUB}")
    )
    assert (portal["refresh_ct"], portal["access_ct"]) == (None, None)


# --- the sweep -------------------------------------------------------------------------------
async def seed(url: str) -> dict[str, set[int]]:
    """Rows on both sides of every rule; returns the ids the default policy must delete."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "INSERT INTO apps (slug, client_id, redirect_uri) VALUES ('demo', 'c', 'https://x/cb')"
        )

        async def portal(hub: int, state: str, version: int) -> int:
            portal_id: int = await conn.fetchval(
                """INSERT INTO portals (app, hub_id, state, version, refresh_ct)
                   VALUES ('demo', $1, $2, $3, CASE WHEN $2 = 'revoked' THEN NULL
                                                    ELSE 'vault:v1:r' END)
                   RETURNING id""",
                hub,
                state,
                version,
            )
            return portal_id

        active = await portal(1, "active", 5)
        reauth = await portal(2, "needs_reauth", 2)
        revoked = await portal(3, "revoked", 3)

        async def journal(portal_id: int, base: int, *, applied: bool, age: timedelta) -> int:
            journal_id: int = await conn.fetchval(
                """INSERT INTO token_journal (portal_id, lease_epoch, lease_owner, base_version,
                       refresh_ct, access_ct, access_expires_at, created_at, applied_at)
                   VALUES ($1, 1, 'o', $2, 'vault:v1:r', 'vault:v1:a', now(),
                           clock_timestamp() - $3::interval,
                           CASE WHEN $4 THEN clock_timestamp() - $3::interval END)
                   RETURNING id""",
                portal_id,
                base,
                age,
                applied,
            )
            return journal_id

        old, recent = timedelta(days=2), timedelta(hours=23)
        gone_journal = {
            await journal(active, 4, applied=True, age=old),  # applied, old
            await journal(active, 3, applied=False, age=old),  # superseded, old
            await journal(active, 2, applied=False, age=old),  # superseded, old
            await journal(revoked, 3, applied=False, age=timedelta(0)),  # revoked: any age
            await journal(revoked, 2, applied=True, age=timedelta(0)),
        }
        # Kept: adoption may still need it (unapplied, base_version >= version) ...
        await journal(active, 5, applied=False, age=timedelta(days=30))
        # ... heal may need it (the portal still sits at that version) ...
        await journal(reauth, 2, applied=False, age=timedelta(days=30))
        # ... and spent but recent.
        await journal(active, 4, applied=True, age=recent)
        await journal(active, 3, applied=False, age=recent)

        gone_audit = {
            r["id"]
            for r in await conn.fetch(
                """INSERT INTO audit_events (at, actor, action)
                   SELECT clock_timestamp() - make_interval(days => 400 + n), 'test', 'old'
                   FROM generate_series(1, 5) AS n RETURNING id"""
            )
        }
        await conn.execute(
            """INSERT INTO audit_events (at, actor, action)
               VALUES (clock_timestamp() - interval '399 days', 'test', 'recent')"""
        )

        async def event(age_days: int, acks: tuple[bool, ...] | None) -> int:
            """``acks``: one per delivery (True: delivered); None: not fanned out yet."""
            event_id: int = await conn.fetchval(
                """INSERT INTO events (at, type, fanned_out_at, delivered_at)
                   VALUES (clock_timestamp() - make_interval(days => $1), 'portal.revoked',
                           CASE WHEN $2 THEN clock_timestamp() END,
                           CASE WHEN $3 THEN clock_timestamp() END)
                   RETURNING id""",
                age_days,
                acks is not None,
                bool(acks) and all(acks or ()),
            )
            for endpoint, acked in zip(ENDPOINTS, acks or (), strict=False):
                await conn.execute(
                    """INSERT INTO webhook_deliveries (event_id, endpoint, attempts, delivered_at)
                       VALUES ($1, $2, 1, CASE WHEN $3 THEN clock_timestamp() END)""",
                    event_id,
                    endpoint,
                    acked,
                )
            return event_id

        gone_events = {await event(31, (True, True)) for _ in range(3)}
        await event(31, (True, False))  # one receiver has not acknowledged it
        await event(31, (False,))
        await event(90, None)  # never fanned out
        await event(29, (True, True))  # delivered but recent
        return {"token_journal": gone_journal, "audit_events": gone_audit, "events": gone_events}
    finally:
        await conn.close()


async def _ids(url: str, table: str) -> set[int]:
    return {r["id"] for r in await _query(url, f"SELECT id FROM {table}")}


async def test_sweep_deletes_exactly_the_expired_rows(database_url: str, db: Database) -> None:
    gone = await seed(database_url)
    before = {table: await _ids(database_url, table) for table in gone}
    deliveries = await _count(database_url, "webhook_deliveries")

    report = await sweeper(db).sweep()

    assert report.swept
    assert report.deleted == {table: len(ids) for table, ids in gone.items()}
    for table, ids in gone.items():
        assert await _ids(database_url, table) == before[table] - ids, table
    # The delivered events' delivery rows went with them; the others' stayed.
    assert await _count(database_url, "webhook_deliveries") == deliveries - 6
    # Nothing left to do: a second sweep deletes nothing.
    again = await sweeper(db).sweep()
    assert again.swept
    assert not any(again.deleted.values())


async def test_with_webhooks_off_unsent_events_expire_too(
    env: dict[str, str], database_url: str, db: Database
) -> None:
    assert RetentionPolicy.from_settings(load_settings(env)).unsent_events_expire
    webhooks = {
        "BROKER_WEBHOOK_URLS": "https://hooks.example/in",
        "BROKER_WEBHOOK_SECRET": "whsec_" + "c" * 40,  # base64 of 30 bytes
    }
    assert not RetentionPolicy.from_settings(
        load_settings({**env, **webhooks})
    ).unsent_events_expire
    gone = await seed(database_url)
    unsent = "fanned_out_at IS NULL"
    assert await _count(database_url, "events", unsent) == 1
    pending = "id IN (SELECT event_id FROM webhook_deliveries WHERE delivered_at IS NULL)"
    report = await sweeper(db, replace(DEFAULTS, unsent_events_expire=True)).sweep()
    assert report.deleted["events"] == len(gone["events"]) + 1
    assert await _count(database_url, "events", unsent) == 0
    assert await _count(database_url, "events", pending) == 2  # owed to a receiver: kept


async def test_audit_events_stay_append_only_outside_the_sweep(database_url: str) -> None:
    await seed(database_url)
    total = await _count(database_url, "audit_events")
    await _query(database_url, "DELETE FROM audit_events")
    await _query(database_url, "UPDATE audit_events SET action = 'changed'")
    assert await _count(database_url, "audit_events", "action <> 'changed'") == total


async def test_zero_keeps_everything_but_still_shreds_revoked_portals(
    database_url: str, db: Database
) -> None:
    await seed(database_url)
    counts = {t: await _count(database_url, t) for t in ("audit_events", "events")}
    keep = RetentionPolicy(audit_days=0, events_days=0, journal_hours=0)

    report = await sweeper(db, keep).sweep()

    assert report.deleted == {"audit_events": 0, "events": 0, "token_journal": 2}
    assert {t: await _count(database_url, t) for t in counts} == counts
    revoked = "portal_id IN (SELECT id FROM portals WHERE state = 'revoked')"
    assert await _count(database_url, "token_journal", revoked) == 0
    assert await _count(database_url, "token_journal") == 7


async def test_one_sweep_at_a_time_across_replicas(database_url: str, db: Database) -> None:
    await seed(database_url)
    audit = await _count(database_url, "audit_events")
    other = await Database.connect(database_url, min_size=1, max_size=2, timeout=5)
    try:
        # Another replica is sweeping: it holds the advisory lock.
        async with PostgresRetention(other).exclusively() as held:
            assert held
            skipped = await sweeper(db).sweep()
            assert not skipped.swept
            assert not any(skipped.deleted.values())
            assert await _count(database_url, "audit_events") == audit
        # Released: the next round sweeps.
        assert (await sweeper(db).sweep()).deleted["audit_events"] == 5
    finally:
        await other.close()


def test_cli_sweeps_once_and_prints_counts(env: dict[str, str], database_url: str) -> None:
    asyncio.run(seed(database_url))
    result = run_broker(env, "--json", "retention", "sweep")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "swept": True,
        # webhooks are off here: the event never fanned out expires too
        "deleted": {"audit_events": 5, "events": 4, "token_journal": 5},
    }
    text = run_broker(env, "retention", "sweep")
    assert text.returncode == 0, text.stderr
    assert text.stdout.split() == ["audit_events", "0", "events", "0", "token_journal", "0"]


async def test_every_serving_replica_runs_the_sweep(env: dict[str, str], database_url: str) -> None:
    await seed(database_url)
    settings = load_settings({**env, "BROKER_RETENTION_INTERVAL": "0.1"})
    async with open_services(settings):
        for _ in range(100):
            if await _count(database_url, "audit_events", "action = 'old'") == 0:
                break
            await asyncio.sleep(0.1)
    assert await _count(database_url, "audit_events", "action = 'old'") == 0
    assert await _count(database_url, "audit_events", "action = 'recent'") == 1
    assert await _count(database_url, "events") == 3  # webhooks off: the unsent one went too


def test_retention_settings_are_validated(env: dict[str, str]) -> None:
    bad = {
        "BROKER_AUDIT_RETENTION_DAYS": "-1",
        "BROKER_EVENTS_RETENTION_DAYS": "-5",
        "BROKER_JOURNAL_RETENTION_HOURS": "-2",
        "BROKER_RETENTION_INTERVAL": "0",
    }
    with pytest.raises(ConfigError) as failed:
        load_settings({**env, **bad})
    named = " ".join(failed.value.problems)
    for key in bad:
        assert key in named
    defaults = load_settings(env)
    assert (
        defaults.audit_retention_days,
        defaults.events_retention_days,
        defaults.journal_retention_hours,
        defaults.retention_interval,
    ) == (400, 30, 24, 300.0)
    keep = load_settings({**env, "BROKER_AUDIT_RETENTION_DAYS": "0"})
    assert keep.audit_retention_days == 0
