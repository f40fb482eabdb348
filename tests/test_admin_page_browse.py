"""The operator page at scale, on a real broker and the simulator: search by Hub ID or
domain, state and app filters, keyset pages, a caller's scope inside the query, one portal's
page with its audit timeline, actions that return to the page they came from, hostile values
escaped by the templates, and the whole flow in a real headless Chromium with screenshots.

Screenshots (``tests.test_admin_page.shot``) go to ``test-artifacts/admin_page/`` at the top
of the checkout (git-ignored, kept by CI with the workspace), or to
``$BROKER_TEST_ARTIFACTS/admin_page/`` when that is set."""

from __future__ import annotations

import asyncio
import html
import re
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from broker.adapters.postgres.pool import Database
from broker.adapters.postgres.portal_search import PostgresPortalTimeline
from broker.app import create_app, open_admin
from broker.config import Settings, load_settings
from broker.core.models import PortalKey, Role
from broker.core.ports import TimelineEntry
from broker.dev.simulator import Simulator
from broker.web import admin_page
from tests.helpers import Deployment, register, serve_app
from tests.operator_page import ADMIN, browser, csrf, error_code, login, shot

FIRST = 3_500_001
HUBS = [FIRST + i for i in range(12)]
ACME = FIRST + 4
HOSTILE = FIRST + 11
HOSTILE_DOMAIN = '<script>alert("dom")</script>.example'
ROW = re.compile(r'<tr id="portal-demo-(\d+)">')
EVENT = re.compile(r'<code class="action">([a-z_.]+)</code>')


def domain(hub: int) -> str:
    if hub == ACME:
        return "acme-corp.example.org"
    return HOSTILE_DOMAIN if hub == HOSTILE else f"shop{hub - FIRST}.example.com"


@pytest.fixture
def fleet(env: dict[str, str], sim: Simulator, sim_url: str) -> Iterator[Deployment]:
    """A broker with twelve installed portals of app ``demo``, one of them with a domain
    that is an HTML script element."""
    settings = load_settings(env)
    with serve_app(create_app(settings)) as url:
        client_id, secret, key = register(
            settings, sim, f"{url}/oauth/callback", slug="demo", roles=ADMIN
        )
        found = Deployment(settings, sim, sim_url, url, "demo", client_id, secret, key)
        for hub in HUBS:
            sim.add_portal(hub, domain(hub))
            assert found.install(hub).status_code == 200
        yield found


def hubs(page: httpx.Response) -> list[int]:
    assert page.status_code == 200, page.text
    return [int(h) for h in ROW.findall(page.text)]


def link(page: httpx.Response, rel: str) -> str | None:
    found = re.search(rf'rel="{rel}" href="([^"]+)"', page.text)
    return None if found is None else html.unescape(found.group(1))


def matching(page: httpx.Response) -> int:
    found = re.search(r'<span id="matching">(\d+)</span>', page.text)
    assert found is not None, page.text
    return int(found.group(1))


def events(client: httpx.Client, url: str, until: Callable[[list[str]], bool]) -> list[str]:
    """The timeline's actions, newest first, once ``until`` holds: the audit trail is written
    in batches a moment after the action (at most half a second by default)."""
    deadline = time.monotonic() + 15
    while True:
        page = client.get(url)
        assert page.status_code == 200, page.text
        actions = EVENT.findall(page.text)
        if until(actions) or time.monotonic() > deadline:
            return actions
        time.sleep(0.2)


def test_search_filters_and_keyset_pages(fleet: Deployment) -> None:
    with login(fleet) as client:
        first = client.get("/admin?size=10")
        assert hubs(first) == HUBS[:10]
        assert matching(first) == 12
        assert link(first, "prev") is None
        following = link(first, "next")
        assert following == f"/admin?size=10&page=after%3Ademo%2F{HUBS[9]}"
        second = client.get(following)
        assert hubs(second) == HUBS[10:]
        assert link(second, "next") is None
        back = link(second, "prev")
        assert back is not None
        assert hubs(client.get(back)) == HUBS[:10]

        assert hubs(client.get("/admin?q=350001")) == HUBS[9:]  # a Hub ID prefix
        assert hubs(client.get(f"/admin?q={FIRST + 6}")) == [FIRST + 6]
        for text in ("ACME", "corp.example", "example.org"):  # a domain's part, any case
            assert hubs(client.get(f"/admin?q={text}")) == [ACME]
        assert hubs(client.get("/admin?q=nowhere")) == []
        assert hubs(client.get("/admin?q=&state=&app=")) == HUBS  # a blank search form
        assert hubs(client.get("/admin?app=demo")) == HUBS
        assert hubs(client.get("/admin?app=other")) == []

        token = csrf(client)
        held = client.post(
            f"/admin/portals/{FIRST + 2}/quarantine",
            data={"app": "demo", "reason": "audit", "csrf": token, "back": "/admin?q=35&size=10"},
        )
        assert held.headers["location"] == (
            f"/admin?q=35&size=10&done=quarantined&portal=demo%2F{FIRST + 2}"
        )
        assert f"Portal <code>demo/{FIRST + 2}</code> is quarantined" in (
            client.get(held.headers["location"]).text
        )
        quarantined = client.get("/admin?state=quarantined&q=35")
        assert hubs(quarantined) == [FIRST + 2]
        assert matching(quarantined) == 1
        assert re.search(
            r'aria-current="page">quarantined <span class="count">1<', quarantined.text
        )
        assert re.search(r'>active <span class="count">11<', quarantined.text)
        assert FIRST + 2 not in hubs(client.get("/admin?state=active"))


@pytest.mark.parametrize(
    "query",
    [
        "q=%3Cb%3Ex",
        "q=a+b",
        f"q={'x' * 101}",
        "state=gone",
        "app=Not_A_Slug",
        "size=7",
        "page=after%3A%3Cb%3E",
        "page=demo%2F1",
        "page=later%3Ademo%2F1",
        "after=demo%2F1",
        "page=2",
    ],
)
def test_bad_list_parameters_are_a_clear_422(fleet: Deployment, query: str) -> None:
    with login(fleet) as client:
        refused = client.get(f"/admin?{query}")
    assert (refused.status_code, error_code(refused)) == (422, "invalid_request")
    assert "<b>" not in refused.text
    assert "Not_A_Slug" not in refused.text


def test_a_scoped_operator_finds_and_opens_only_its_portals(fleet: Deployment) -> None:
    mine = [FIRST + 1, FIRST + 6]

    async def create() -> str:
        async with open_admin(fleet.settings) as svc:
            new = await svc.callers.create(
                "ops-scoped",
                roles=[Role.PORTALS_ADMIN.value],
                apps=["demo"],
                hub_ids=mine,
                actor="test",
            )
            return new.secret

    scoped = Deployment(**{**fleet.__dict__, "caller_key": asyncio.run(create())})
    with login(scoped) as client:
        page = client.get("/admin?size=10")
        assert hubs(page) == mine
        assert matching(page) == 2
        assert hubs(client.get("/admin?q=3500")) == mine
        other = client.get(f"/admin/portals/{FIRST}?app=demo")
        assert (other.status_code, error_code(other)) == (403, "forbidden")
        refused = client.post(
            f"/admin/portals/{FIRST}/revoke",
            data={"app": "demo", "reason": "not mine", "csrf": csrf(client)},
        )
        assert (refused.status_code, error_code(refused)) == (403, "forbidden")
        assert client.get(f"/admin/portals/{mine[0]}?app=demo").status_code == 200
    assert fleet.token(FIRST).status_code == 200


def test_a_portals_timeline_and_hostile_values_escaped(fleet: Deployment) -> None:
    token = fleet.token(HOSTILE).json()["access_token"]
    url = f"/admin/portals/{HOSTILE}?app=demo"
    hostile_reason = '<script>alert("reason")</script>'
    with login(fleet) as client:
        for page in (client.get("/admin"), client.get(url)):
            assert page.status_code == 200
            assert "&lt;script&gt;alert(" in page.text  # the domain, escaped
            assert "<script" not in page.text
            for secret in (token, "vault:v", fleet.caller_key, fleet.client_secret):
                assert secret not in page.text
        form = {"app": "demo", "csrf": csrf(client), "back": url}
        held = client.post(f"/admin/portals/{HOSTILE}/quarantine", data={**form, "reason": "look"})
        assert held.headers["location"] == f"{url}&done=quarantined&portal=demo%2F{HOSTILE}"
        assert client.post(f"/admin/portals/{HOSTILE}/release", data=form).status_code == 303
        done = client.post(
            f"/admin/portals/{HOSTILE}/revoke", data={**form, "reason": hostile_reason}
        )
        assert done.headers["location"] == f"{url}&done=revoked&portal=demo%2F{HOSTILE}"
        after = client.get(done.headers["location"])
        assert f"Portal <code>demo/{HOSTILE}</code> is revoked" in after.text
        assert 'class="state revoked"' in after.text

        newest = ["portal.revoked", "portal.released", "portal.quarantined", "portal.installed"]
        assert events(client, url, lambda a: a[:1] == ["portal.revoked"]) == newest
        page = client.get(url)
        assert "&lt;script&gt;alert(&#34;reason&#34;)&lt;/script&gt;" in page.text
        assert "<script" not in page.text
        assert token not in page.text
        # The token issue is a tally, shown only on request.
        assert "token.issued" in events(client, f"{url}&issues=1", lambda a: "token.issued" in a)
        assert "token.issued" not in EVENT.findall(page.text)


def test_the_timeline_is_paged_newest_first(fleet: Deployment) -> None:
    url = f"/admin/portals/{FIRST}?app=demo"
    with login(fleet) as client:
        form = {"app": "demo", "csrf": csrf(client)}
        for _ in range(5):
            assert client.post(f"{url[:-9]}/quarantine", data={**form, "reason": "x"}).is_redirect
            assert client.post(f"{url[:-9]}/release", data=form).is_redirect
        page_url = f"{url}&size=10"
        newest = events(client, page_url, lambda a: len(a) == 10 and a[0] == "portal.released")
        assert newest == ["portal.released", "portal.quarantined"] * 5
        first = client.get(page_url)
        older = link(first, "next")
        assert older is not None
        assert older.startswith(f"{page_url}&before=")
        last = client.get(older)
        assert EVENT.findall(last.text) == ["portal.installed"]
        assert link(last, "next") is None
        assert link(last, "first") == page_url
        for bad in ("before=1.x", "before=999999999999999999.a1", "before=1.a0", "before=1.1"):
            refused = client.get(f"{url}&{bad}")
            assert (refused.status_code, error_code(refused)) == (422, "invalid_request")
        missing = client.get("/admin/portals/999?app=demo")
        assert (missing.status_code, error_code(missing)) == (404, "portal_not_found")


def test_a_refresh_failure_shows_in_the_timeline(fleet: Deployment) -> None:
    """Failure transitions are outbox events, not audit events: the timeline has them too.
    An audit event's time is when its batch was written (up to half a second late), so the
    failure is caused only once the re-install's audit event is written: the order is sure."""
    url = f"/admin/portals/{FIRST}?app=demo"
    fleet.install(FIRST, access_token_ttl=60)
    with login(fleet) as client:
        installed = events(client, url, lambda a: a.count("portal.installed") == 2)
        assert installed == ["portal.installed", "portal.installed"]
        fleet.sim.add_fault("token", status=502, times=1, hub_id=FIRST)
        degraded = fleet.token(FIRST, min_ttl=120)  # wants a refresh, HubSpot fails once
        assert degraded.json()["degraded"] is True
        actions = events(client, url, lambda a: len(a) == 3)
        assert actions == ["portal.refresh_failing", "portal.installed", "portal.installed"]
        page = client.get(url)
        failing = re.search(r'<tr class="event">(.*?)</tr>', page.text, re.DOTALL)
        assert failing is not None
        assert "portal.refresh_failing" in failing.group(1)
        assert "<td>broker</td>" in failing.group(1)
        assert '<span class="muted">class</span> upstream_unavailable' in failing.group(1)
        assert 'class="state refresh_failing"' in page.text
        assert hubs(client.get("/admin?state=refresh_failing")) == [FIRST]


async def walk(settings: Settings, key: PortalKey, limit: int) -> list[TimelineEntry]:
    """Every timeline entry of ``key``, read ``limit`` at a time through the cursors."""
    db = await Database.connect(settings.database_url.get(), min_size=1, max_size=1, timeout=10)
    try:
        timeline, found, before = PostgresPortalTimeline(db), [], None
        while True:
            page = await timeline.timeline(key, before=before, limit=limit, issues=True)
            found += page.entries
            if page.older is None:
                return found
            before = page.older
    finally:
        await db.close()


def test_timeline_cursors_cross_both_sources(fleet: Deployment) -> None:
    """Pages of one entry each, through audit events and outbox events alike, give what one
    large page gives: nothing twice, nothing skipped, in the same order."""
    key = PortalKey("demo", FIRST)
    fleet.install(FIRST, access_token_ttl=60)
    fleet.sim.add_fault("token", status=502, times=1, hub_id=FIRST)
    assert fleet.token(FIRST, min_ttl=120).json()["degraded"] is True
    with login(fleet) as client:  # quarantine and release: audit events after the failure
        form = {"app": "demo", "csrf": csrf(client)}
        assert client.post(f"/admin/portals/{FIRST}/quarantine", data={**form, "reason": "x"})
        assert client.post(f"/admin/portals/{FIRST}/release", data=form).is_redirect
        events(client, f"/admin/portals/{FIRST}?app=demo", lambda a: "portal.released" in a)
    whole = asyncio.run(walk(fleet.settings, key, 100))
    assert {e.action for e in whole} >= {
        "portal.installed",
        "portal.refresh_failing",
        "portal.quarantined",
        "portal.released",
        "token.issued",
    }
    assert {e.outbox for e in whole} == {False, True}
    times = [(e.at, e.outbox, e.id) for e in whole]
    assert times == sorted(times, reverse=True)
    assert asyncio.run(walk(fleet.settings, key, 1)) == whole


@pytest.mark.parametrize(
    "back", ["https://evil.example/admin", "//evil.example/admin", "/oauth/install", "/admin#x"]
)
def test_an_action_returns_only_to_the_operator_page(fleet: Deployment, back: str) -> None:
    with login(fleet) as client:
        refused = client.post(
            f"/admin/portals/{FIRST}/revoke",
            data={"app": "demo", "reason": "x", "csrf": csrf(client), "back": back},
        )
        assert (refused.status_code, error_code(refused)) == (422, "invalid_request")
    assert fleet.token(FIRST).status_code == 200  # refused before anything was done


def test_an_operator_finds_a_portal_reads_its_timeline_and_revokes_it_in_a_browser(
    fleet: Deployment, chromium: str
) -> None:
    base = fleet.url
    row = f"#portal-demo-{ACME}"
    with browser(chromium, height=800) as b:
        page = b.page
        page.goto(f"{base}/admin/login")
        page.fill("#key", fleet.caller_key)
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/admin")
        assert page.inner_text("#matching") == "12"

        page.select_option("#size", "10")  # paginate
        page.click("form.search button[type=submit]")
        page.wait_for_url(f"{base}/admin?q=&state=&app=&size=10")
        assert page.locator("tbody tr").count() == 10
        shot(page, "1-portals-page-1")
        page.click("a[rel=next]")
        page.wait_for_url(f"{base}/admin?size=10&page=after*")
        assert page.locator("tbody tr").count() == 2
        shot(page, "2-portals-page-2")

        page.fill("#q", "acme")  # search, then filter by state
        page.select_option("#state", "active")
        page.click("form.search button[type=submit]")
        page.wait_for_url(f"{base}/admin?q=acme&state=active*")
        assert page.locator("tbody tr").count() == 1
        assert page.inner_text(f"{row} .state") == "active"
        assert page.inner_text("nav a[aria-current]").startswith("active")
        shot(page, "3-search-acme-active")

        page.click(f"{row} a.portal")  # the portal's own page
        page.wait_for_url(f"{base}/admin/portals/{ACME}?app=demo")
        assert "acme-corp.example.org" in page.inner_text("dl.details")
        assert page.inner_text("#timeline tbody tr.event code.action") == "portal.installed"
        shot(page, "4-portal-timeline")

        page.fill(".actions input[name=reason]", "browser drill")
        page.click(".actions button.danger")
        page.wait_for_url(f"{base}/admin/portals/{ACME}?app=demo&done=revoked*")
        assert f"Portal demo/{ACME} is revoked" in page.inner_text(".flash")
        assert page.inner_text("section.portal .state") == "revoked"
        deadline = time.monotonic() + 15  # the audit trail is written a moment later
        while "portal.revoked" not in page.inner_text("#timeline"):
            assert time.monotonic() < deadline, page.inner_text("#timeline")
            page.reload()
        assert page.inner_text("#timeline tbody tr.event code.action") == "portal.revoked"
        assert "browser drill" in page.inner_text("#timeline")
        # The stylesheet applied under the CSP (style-src 'self').
        badge = page.eval_on_selector(
            "section.portal .state", "e => getComputedStyle(e).backgroundColor"
        )
        assert badge == "rgb(229, 231, 235)"
        shot(page, "5-portal-revoked")
        assert b.problems == []
    assert fleet.token(ACME).status_code == 410


def test_the_stylesheet_is_served_under_the_pages_headers(admin_deployment: Deployment) -> None:
    """The CSP allows styles from this origin only (no inline style): the page links the
    broker's own stylesheet, served without a session (the login page needs it)."""
    with admin_deployment.client() as anonymous:
        css = anonymous.get("/admin/static/admin.css")
        login_page = anonymous.get("/admin/login")
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")
    assert css.headers["x-content-type-options"] == "nosniff"
    assert css.headers["content-security-policy"] == admin_page.CSP
    assert ".state" in css.text
    assert "style-src 'self'" in admin_page.CSP
    assert "unsafe-inline" not in admin_page.CSP
    assert '<link rel="stylesheet" href="/admin/static/admin.css">' in login_page.text
    assert "<style" not in login_page.text
    assert "style=" not in login_page.text
