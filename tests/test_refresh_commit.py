"""The fenced commit is one statement: it stores the grant, marks its journal row applied,
and notes the recovery of a portal that was failing, all at once."""

from __future__ import annotations

from broker.config import Settings
from broker.dev.simulator import Simulator
from tests.helpers import deployed, sql

HUB = 1_810_001


def test_a_commit_applies_its_journal_row_and_notes_the_recovery(
    settings: Settings, sim: Simulator, sim_url: str
) -> None:
    with deployed(settings, sim, sim_url) as d:
        sim.add_portal(HUB)
        assert d.install(HUB, access_token_ttl=600).status_code == 200
        sql(
            settings,
            "UPDATE portals SET state = 'refresh_failing', failure_count = 3 WHERE hub_id = $1",
            HUB,
        )
        refreshed = d.token(HUB, min_ttl=1500)  # more than the 600 s left: a refresh
    assert refreshed.status_code == 200, refreshed.text
    (portal,) = sql(
        settings, "SELECT id, state, failure_count, version FROM portals WHERE hub_id = $1", HUB
    )
    assert (portal["state"], portal["failure_count"], portal["version"]) == ("active", 0, 2)
    (journal,) = sql(
        settings, "SELECT applied_at FROM token_journal WHERE portal_id = $1", portal["id"]
    )
    assert journal["applied_at"] is not None
    events = sql(settings, "SELECT type, app, payload FROM events WHERE hub_id = $1", HUB)
    assert sorted((e["type"], e["app"], e["payload"]) for e in events) == [
        ("portal.installed", "demo", '{"scopes": ["crm.objects.contacts.read", "oauth"]}'),
        ("portal.recovered", "demo", "{}"),
    ]
