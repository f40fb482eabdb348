"""The operator page's test support: a deployment with an admin caller, a signed-in client,
CSRF tokens and error codes from the HTML pages, and a headless system Chromium."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, sync_playwright

from broker.app import create_app
from broker.config import load_settings
from broker.core.models import Role
from broker.dev.simulator import Simulator
from tests.helpers import Deployment, register, serve_app

HUB = 3_400_001
ADMIN = (Role.TOKENS_READ.value, Role.PORTALS_ADMIN.value)
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
CHROMIUM_FLAGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def admin_deployment(env: dict[str, str], sim: Simulator, sim_url: str) -> Iterator[Deployment]:
    settings = load_settings(env)
    app = create_app(settings)
    with serve_app(app) as url:
        client_id, secret, key = register(
            settings, sim, f"{url}/oauth/callback", slug="demo", roles=ADMIN
        )
        sim.add_portal(HUB)
        found = Deployment(settings, sim, sim_url, url, "demo", client_id, secret, key)
        assert found.install(HUB).status_code == 200
        yield found


@contextmanager
def login(d: Deployment) -> Iterator[httpx.Client]:
    """A client holding an operator session (the caller key is sent once, in the form)."""
    with d.client() as client:
        response = client.post("/admin/login", data={"key": d.caller_key})
        assert response.status_code == 303, response.text
        yield client


def csrf(client: httpx.Client) -> str:
    page = client.get("/admin")
    assert page.status_code == 200, page.text
    match = CSRF.search(page.text)
    assert match is not None
    return match.group(1)


def error_code(response: httpx.Response) -> str:
    assert response.headers["content-type"].startswith("text/html")
    match = re.search(r"<code>([a-z_]+)</code>", response.text)
    assert match is not None, response.text
    return match.group(1)


@pytest.fixture
def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing under CI: .ci/run installs Debian's chromium")
        pytest.skip("chromium not installed (apt-get install chromium)")
    return found


#: Browser screenshots: ``test-artifacts/`` at the top of the checkout (git-ignored; CI keeps
#: the workspace), or ``$BROKER_TEST_ARTIFACTS`` when set; one folder per test module.
ARTIFACTS = Path(
    os.environ.get("BROKER_TEST_ARTIFACTS", Path(__file__).parents[1] / "test-artifacts")
)


def shot(page: Page, name: str) -> None:
    """A full-page PNG of ``page`` as ``<artifacts>/admin_page/<name>.png``."""
    folder = ARTIFACTS / "admin_page"
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=folder / f"{name}.png", full_page=True)


@dataclass
class Browser:
    page: Page
    #: Console errors: a CSP violation (a blocked style or script) is reported as one.
    problems: list[str]


@contextmanager
def browser(chromium: str, height: int = 700) -> Iterator[Browser]:
    """A page in the system Chromium (headless, nothing downloaded)."""
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            page = launched.new_page(viewport={"width": 1500, "height": height})
            page.set_default_timeout(10_000)
            found = Browser(page, [])
            page.on(
                "console", lambda m: found.problems.append(m.text) if m.type == "error" else None
            )
            yield found
        finally:
            launched.close()
