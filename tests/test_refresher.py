"""The proactive refresher on two replicas: tokens are renewed ahead of expiry with no caller
asking, each upstream refresh lands as exactly one committed version (no duplicates across
replicas), a misconfigured app is paused without touching its portals, and a 429's
Retry-After is honoured."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest

from broker.app import create_app
from broker.config import Settings, load_settings
from broker.dev.simulator import Simulator
from tests.helpers import install_link, register, serve_app, sql

HUBS = list(range(8_800_001, 8_800_021))


@pytest.fixture
def replicas(env: dict[str, str], sim: Simulator) -> Iterator[tuple[Settings, list[str]]]:
    settings = load_settings(
        {**env, "BROKER_REFRESHER_ENABLED": "true", "BROKER_REFRESHER_INTERVAL": "0.2"}
    )
    with ExitStack() as stack:
        urls = [stack.enter_context(serve_app(create_app(settings))) for _ in range(2)]
        register(settings, sim, f"{urls[0]}/oauth/callback", slug="demo")
        for hub in HUBS:
            sim.add_portal(hub)
        yield settings, urls


def install_all(settings: Settings, sim: Simulator, hubs: list[int]) -> None:
    link = install_link(settings, "demo")  # on the origin of urls[0], the registered callback
    with httpx.Client(follow_redirects=True, timeout=30) as browser:
        for hub in hubs:
            sim.configure(consent="auto", consent_hub_id=hub)
            page = browser.get(link)
            assert page.status_code == 200, page.text


def test_two_replicas_refresh_ahead_of_expiry_without_duplicates(
    replicas: tuple[Settings, list[str]], sim: Simulator
) -> None:
    settings, _ = replicas
    sim.configure(access_token_ttl=6)  # refresh_after falls at 3.6-4.3 s
    install_all(settings, sim, HUBS)
    time.sleep(9)
    by_hub = sim.refreshes_by_hub()
    rows = sql(
        settings,
        "SELECT hub_id, version, access_expires_at > now() AS valid, "
        "(SELECT count(*) FROM token_journal j WHERE j.portal_id = p.id "
        " AND j.applied_at IS NULL) AS unapplied FROM portals p",
    )
    assert len(rows) == len(HUBS)
    for row in rows:
        refreshes = by_hub.get(row["hub_id"], 0)
        assert refreshes >= 1, row  # renewed with nobody asking
        assert row["version"] == refreshes + 1, row  # every upstream call -> one commit
        assert row["unapplied"] == 0
        assert row["valid"], row  # never left to expire


def test_misconfigured_app_is_paused_and_portals_untouched(
    replicas: tuple[Settings, list[str]], sim: Simulator
) -> None:
    settings, _ = replicas
    sim.configure(access_token_ttl=4)
    install_all(settings, sim, HUBS[:3])
    # HubSpot no longer accepts the broker's client secret (rotated at HubSpot only).
    app_client = sql(settings, "SELECT client_id, redirect_uri FROM apps")[0]
    sim.add_app(
        app_client["client_id"], ["a-secret-the-broker-does-not-have"], [app_client["redirect_uri"]]
    )
    time.sleep(5)
    calls = sim.counters()["token.refresh_token"]
    assert calls >= 1
    portals = sql(settings, "SELECT state, failure_count, last_error FROM portals")
    assert {(r["state"], r["failure_count"], r["last_error"]) for r in portals} == {
        ("active", 0, None)
    }
    app = sql(settings, "SELECT paused_until > now() AS paused, misconfigured_at FROM apps")[0]
    assert app["paused"]
    assert app["misconfigured_at"] is not None
    events = sql(settings, "SELECT type FROM events WHERE type = 'app.misconfigured'")
    assert len(events) == 1
    time.sleep(2)
    assert sim.counters()["token.refresh_token"] == calls  # paused: no more attempts


def test_retry_after_is_honoured(replicas: tuple[Settings, list[str]], sim: Simulator) -> None:
    settings, _ = replicas
    sim.configure(access_token_ttl=3)
    install_all(settings, sim, HUBS[:2])
    sim.add_fault("token", status=429, retry_after=7)
    deadline = time.monotonic() + 5
    while sim.counters().get("token.refresh_token", 0) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    first = time.monotonic()
    assert sim.counters()["token.refresh_token"] >= 1
    # Calls already sent when the first 429 came back (the other portal, claimed in the same
    # pass or by the other replica) may still land: count from once they have.
    time.sleep(0.5)
    calls = sim.counters()["token.refresh_token"]
    time.sleep(3.5)
    # Within the 7 s window no replica calls HubSpot again for this app.
    assert sim.counters()["token.refresh_token"] == calls, time.monotonic() - first
    failing = sql(settings, "SELECT state, last_error FROM portals WHERE last_error IS NOT NULL")
    assert failing
    assert {(r["state"], r["last_error"]) for r in failing} == {("refresh_failing", "rate_limited")}


def test_portals_failing_for_good_are_backed_off_and_do_not_starve_the_others(
    replicas: tuple[Settings, list[str]], sim: Simulator
) -> None:
    """Five portals whose refresh token does not decrypt (an internal failure: not HubSpot's,
    not the portal's) among fifteen healthy ones, all due every few seconds: the failing ones
    are retried with backoff, not on every pass, and stay in their state; the healthy ones
    keep being refreshed."""
    settings, _ = replicas
    sim.configure(access_token_ttl=8)  # due again about 5 s after each refresh
    install_all(settings, sim, HUBS[:20])
    failing, healthy = HUBS[:5], HUBS[5:20]
    swapped = ", ".join(str(h) for h in failing)
    sql(
        settings,
        # Another portal's refresh ciphertext: it is bound to that portal, so never decrypts.
        f"UPDATE portals SET refresh_ct = (SELECT refresh_ct FROM portals WHERE hub_id = "
        f"{HUBS[19]}), refresh_after = now() WHERE hub_id IN ({swapped})",
    )
    before = {
        r["hub_id"]: r["version"] for r in sql(settings, "SELECT hub_id, version FROM portals")
    }
    time.sleep(7.0)
    rows = {r["hub_id"]: r for r in sql(settings, "SELECT * FROM portals")}
    for hub in failing:
        row = rows[hub]
        assert row["state"] == "active"  # internal failures never mark a portal
        assert row["last_error"] == "token_undecryptable"
        # Backoff from ~1 s doubling: at most a handful of attempts in 7 s, where claiming
        # on every 0.2 s pass of two replicas would be ~70.
        assert 1 <= row["failure_count"] <= 6, (hub, row["failure_count"])
    refreshed = [hub for hub in healthy if rows[hub]["version"] > before[hub]]
    assert refreshed == healthy  # every healthy portal refreshed meanwhile
