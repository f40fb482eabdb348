"""The Python client (`hubspot_token_broker_client`, clients/python) against a real broker
(real Postgres, Valkey, OpenBao) and the HubSpot simulator over HTTP. Requests to the broker
are counted by a transport that wraps httpx's real one, so "served from the cache" means "no
request left this process"."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from hubspot_token_broker_client import (
    AccessToken,
    AsyncBrokerClient,
    BrokerClient,
    BrokerClientError,
    BrokerUnavailable,
    HubSpotAuth,
    InvalidRequest,
    NeedsReauth,
    PortalNotFound,
    PortalRevoked,
    Quarantined,
    RateLimited,
    RetryPolicy,
    Unauthorized,
    async_gateway_client,
    gateway_client,
    hubspot_client,
)
from hubspot_token_broker_client._errors import error_from_response

from broker.app import open_admin
from broker.config import Secret, load_settings
from broker.core.models import Role
from broker.dev.simulator import Simulator
from tests.helpers import Deploy, Deployment, deployed, grant_gateway, sql

HUB = 4_500_001
OTHER_HUB = 4_500_002
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def deployment(deploy: Deploy) -> Deployment:
    return deploy(portals=(HUB, OTHER_HUB))


class Counting(httpx.HTTPTransport):
    """httpx's real transport, counting the requests that go through it."""

    def __init__(self) -> None:
        super().__init__()
        self.requests = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        return super().handle_request(request)


class AsyncCounting(httpx.AsyncHTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        return await super().handle_async_request(request)


@pytest.fixture
def counting() -> Counting:
    return Counting()


@pytest.fixture
def broker(deployment: Deployment, counting: Counting) -> Iterator[BrokerClient]:
    with BrokerClient(deployment.url, deployment.caller_key, app="demo", transport=counting) as c:
        yield c


def assert_no_secret(error: BaseException, *secrets: str) -> None:
    for text in (str(error), repr(error), *map(str, error.args)):
        for secret in secrets:
            assert secret not in text, type(error).__name__


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- fetching and caching -------------------------------------------------------------------
def test_token_is_fetched_once_then_served_from_cache(
    deployment: Deployment, broker: BrokerClient, counting: Counting
) -> None:
    deployment.install(HUB)
    before = datetime.now(UTC)
    token = broker.token(HUB)
    assert (token.hub_id, token.app, token.user_id) == (HUB, "demo", None)
    assert "crm.objects.contacts.read" in token.scopes
    assert token.expires_at.tzinfo is not None
    assert 1700 < (token.expires_at - before).total_seconds() <= 1800
    info = deployment.sim.access_token_info(token.access_token)
    assert info is not None
    assert (info.active, info.hub_id) == (True, HUB)
    assert token.access_token not in repr(token)
    assert token.access_token not in str(token)

    assert broker.token(HUB) is token
    assert broker.token(HUB, min_ttl=1000) is token
    assert counting.requests == 1

    broker.invalidate(HUB)
    again = broker.token(HUB)
    assert counting.requests == 2
    assert again.access_token == token.access_token  # the broker still holds the same one
    assert deployment.sim.counters().get("token.refresh_token", 0) == 0


def test_min_ttl_beyond_the_cached_life_asks_the_broker(
    deployment: Deployment, broker: BrokerClient, counting: Counting
) -> None:
    deployment.install(HUB, access_token_ttl=600)
    deployment.sim.configure(access_token_ttl=1800)
    short = broker.token(HUB)
    assert short.remaining() <= 600
    longer = broker.token(HUB, min_ttl=700)  # the broker must refresh to satisfy this
    assert counting.requests == 2
    assert longer.access_token != short.access_token
    assert longer.remaining() > 1700
    assert deployment.sim.counters()["token.refresh_token"] == 1
    assert broker.token(HUB) is longer  # the cache now holds the longer-lived token
    assert counting.requests == 2


def test_threads_asking_for_one_portal_share_one_request(
    deployment: Deployment, broker: BrokerClient, counting: Counting
) -> None:
    deployment.install(HUB, access_token_ttl=30)
    # The broker must refresh (min_ttl 100 > 30) and HubSpot answers slowly: every thread
    # arrives while the first request is still out.
    deployment.sim.configure(access_token_ttl=1800, latency_ms={"token": 400})
    start = threading.Barrier(8)
    results: list[AccessToken] = []

    def ask() -> None:
        start.wait()
        results.append(broker.token(HUB, min_ttl=100))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(results) == 8
    assert len({r.access_token for r in results}) == 1
    assert counting.requests == 1
    assert deployment.sim.counters()["token.refresh_token"] == 1


async def test_tasks_asking_for_one_portal_share_one_request(deployment: Deployment) -> None:
    deployment.install(HUB, access_token_ttl=30)
    deployment.sim.configure(access_token_ttl=1800, latency_ms={"token": 300})
    transport = AsyncCounting()
    async with AsyncBrokerClient(
        deployment.url, deployment.caller_key, app="demo", transport=transport
    ) as client:
        results = await asyncio.gather(*(client.token(HUB, min_ttl=100) for _ in range(8)))
        assert len({r.access_token for r in results}) == 1
        assert transport.requests == 1
        assert await client.token(HUB) is results[0]
        assert transport.requests == 1
    assert deployment.sim.counters()["token.refresh_token"] == 1


async def test_a_static_token_is_cached_at_the_default_min_ttl(
    deployment: Deployment, counting: Counting
) -> None:
    """A private app's token is re-asked for after STATIC_TOKEN_SECONDS (300), the default
    min_ttl is 300 too: the cache must still serve it until then, in both clients."""
    pat = deployment.sim.create_private_app_token(OTHER_HUB)
    async with open_admin(deployment.settings) as svc:
        await svc.private_apps.add("priv", OTHER_HUB, Secret(pat), scopes=[], actor="test")
        key = (await svc.callers.create("priv-reader", apps=["priv"], actor="test")).secret
    with BrokerClient(deployment.url, key, app="priv", transport=counting) as client:
        first = client.token(OTHER_HUB)
        assert (first.access_token, first.static) == (pat, True)
        assert client.token(OTHER_HUB) is first
        assert client.token(OTHER_HUB, min_ttl=1500) is first  # it never expires
    assert counting.requests == 1
    transport = AsyncCounting()
    async with AsyncBrokerClient(deployment.url, key, app="priv", transport=transport) as aclient:
        first = await aclient.token(OTHER_HUB)
        assert await aclient.token(OTHER_HUB) is first
    assert transport.requests == 1


def test_credentials_callable_is_read_for_every_request(
    deployment: Deployment, tmp_path: Path, counting: Counting
) -> None:
    deployment.install(HUB)
    key_file = tmp_path / "caller-key"
    key_file.write_text("hsb_0000000000000000_" + "x" * 43 + "\n")
    with BrokerClient(
        deployment.url, lambda: key_file.read_text(), app="demo", transport=counting
    ) as client:
        with pytest.raises(Unauthorized):
            client.token(HUB)
        key_file.write_text(deployment.caller_key + "\n")  # the key was rotated on disk
        assert client.token(HUB).hub_id == HUB
    assert counting.requests == 2


# --- errors ---------------------------------------------------------------------------------
def test_broker_answers_become_typed_errors(
    deployment: Deployment, broker: BrokerClient, counting: Counting
) -> None:
    deployment.install(HUB)
    deployment.install(OTHER_HUB)
    served = broker.token(HUB).access_token
    bad_key = "hsb_0123456789abcdef_" + "A" * 43
    seen: list[BrokerClientError] = []

    stranger = BrokerClient(deployment.url, bad_key, transport=counting)
    with stranger, pytest.raises(Unauthorized) as unauthenticated:
        stranger.token(HUB)
    seen.append(unauthenticated.value)
    assert (unauthenticated.value.status, unauthenticated.value.code) == (401, "unauthenticated")
    assert unauthenticated.value.request_id

    async def only_other_hub() -> str:
        async with open_admin(deployment.settings) as ctx:
            new = await ctx.callers.create(
                "svc-narrow", roles=[Role.TOKENS_READ.value], hub_ids=[OTHER_HUB], actor="test"
            )
            return new.secret

    narrow_key = asyncio.run(only_other_hub())
    with BrokerClient(deployment.url, narrow_key, app="demo", transport=counting) as narrow:
        assert narrow.token(OTHER_HUB).hub_id == OTHER_HUB
        with pytest.raises(Unauthorized) as forbidden:
            narrow.token(HUB)
    seen.append(forbidden.value)
    assert (forbidden.value.status, forbidden.value.code) == (403, "forbidden")

    with pytest.raises(PortalNotFound) as missing:
        broker.token(999)
    seen.append(missing.value)
    assert (missing.value.status, missing.value.code) == (404, "portal_not_found")

    with pytest.raises(InvalidRequest) as invalid:
        broker.token(HUB, min_ttl=99_999)
    seen.append(invalid.value)
    assert (invalid.value.status, invalid.value.code) == (422, "invalid_request")
    assert "min_ttl" in invalid.value.detail
    assert invalid.value.min_ttl_max == 1500  # the broker's cap, named in its 422
    assert broker.min_ttl_max == 1500  # and learned

    # served, 401, the narrow caller's two, 404, 422: one request each, no 4xx is retried
    assert counting.requests == 6
    for error in seen:
        assert not isinstance(error, BrokerUnavailable | RateLimited)
        assert_no_secret(error, served, deployment.caller_key, bad_key, narrow_key)


def test_portal_states_become_typed_errors(
    deployment: Deployment, broker: BrokerClient, counting: Counting
) -> None:
    deployment.install(HUB)
    deployment.install(OTHER_HUB)
    sql(deployment.settings, f"UPDATE portals SET state = 'revoked' WHERE hub_id = {HUB}")
    sql(deployment.settings, f"UPDATE portals SET state = 'quarantined' WHERE hub_id = {OTHER_HUB}")
    with pytest.raises(PortalRevoked) as revoked:
        broker.token(HUB)
    assert (revoked.value.status, revoked.value.code) == (410, "revoked")
    with pytest.raises(Quarantined) as quarantined:
        broker.token(OTHER_HUB)
    assert (quarantined.value.status, quarantined.value.code) == (409, "quarantined")
    assert counting.requests == 2
    for error in (revoked.value, quarantined.value):
        assert_no_secret(error, deployment.caller_key)


def test_dead_grant_is_needs_reauth(
    deployment: Deployment, broker: BrokerClient, counting: Counting
) -> None:
    deployment.install(HUB, access_token_ttl=30)
    deployment.sim.kill_grant(HUB)
    with pytest.raises(NeedsReauth) as dead:
        broker.token(HUB, min_ttl=100)  # more than the token has left: the broker refreshes
    assert (dead.value.status, dead.value.code) == (409, "needs_reauth")
    assert dead.value.request_id
    assert counting.requests == 1
    assert_no_secret(dead.value, deployment.caller_key)


def test_unusual_answers_map_to_their_class() -> None:
    """429 and gateway pages: the broker itself never sends these today."""
    limited = error_from_response(
        httpx.Response(
            429,
            headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT", "X-Request-ID": "r1"},
            json={"code": "rate_limited", "detail": "slow down", "status": 429},
        )
    )
    assert isinstance(limited, RateLimited)
    assert (limited.code, limited.detail, limited.request_id) == ("rate_limited", "slow down", "r1")
    assert limited.retry_after == 0.0  # a date in the past
    gateway = error_from_response(
        httpx.Response(502, headers={"Retry-After": "3"}, html="<h1>Bad gateway</h1> secret")
    )
    assert isinstance(gateway, BrokerUnavailable)
    assert (gateway.status, gateway.code, gateway.retry_after) == (502, "http_502", 3.0)
    assert "secret" not in str(gateway)  # a page that is not a problem is never echoed


# --- retries --------------------------------------------------------------------------------
def test_unreachable_broker_is_retried_then_unavailable(counting: Counting) -> None:
    policy = RetryPolicy(retries=2, backoff=0.05)
    url = f"http://127.0.0.1:{free_port()}"
    with BrokerClient(url, "hsb_not_a_real_key", retry=policy, transport=counting) as client:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable) as down:
            client.token(HUB)
    assert counting.requests == 3
    assert time.monotonic() - started < 1.0
    assert (down.value.status, down.value.code) == (None, "unreachable")
    assert down.value.retry_after is None
    assert isinstance(down.value.__cause__, httpx.ConnectError)
    assert_no_secret(down.value, "hsb_not_a_real_key")


def test_503_is_retried_after_retry_after(
    deployment: Deployment, broker: BrokerClient, counting: Counting
) -> None:
    # A token with under 5 s left is not served in place of an error, and HubSpot fails
    # the refresh once, asking for 1 s: the broker answers 503 with Retry-After: 1.
    deployment.install(HUB, access_token_ttl=4)
    deployment.sim.configure(access_token_ttl=1800)
    deployment.sim.add_fault("token", status=503, retry_after=1, times=1)
    started = time.monotonic()
    token = broker.token(HUB, min_ttl=60)
    assert time.monotonic() - started >= 1.0
    assert counting.requests == 2
    assert token.remaining() > 1700
    assert deployment.sim.counters()["token.refresh_token"] == 2


def test_503_asking_for_more_than_the_budget_is_raised_at_once(
    deployment: Deployment, broker: BrokerClient, counting: Counting
) -> None:
    deployment.install(HUB, access_token_ttl=4)
    deployment.sim.add_fault("token", status=503)  # no Retry-After: the broker says 5 s
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as unavailable:
        broker.token(HUB, min_ttl=60)
    assert time.monotonic() - started < 1.0
    assert counting.requests == 1
    error = unavailable.value
    assert (error.status, error.code, error.retry_after) == (503, "hubspot_unavailable", 5.0)
    assert_no_secret(error, deployment.caller_key)


# --- HubSpot: httpx auth and the SDK --------------------------------------------------------
def test_hubspot_auth_signs_hubspot_calls(
    deployment: Deployment, broker: BrokerClient, counting: Counting
) -> None:
    deployment.install(HUB)
    with httpx.Client(base_url=deployment.sim_url, auth=HubSpotAuth(broker, HUB)) as hubspot:
        for _ in range(2):
            contacts = hubspot.get("/crm/v3/objects/contacts")
            assert contacts.status_code == 200, contacts.text
            assert contacts.json()["results"]
    assert deployment.sim.counters()["contacts"] == 2
    assert counting.requests == 1  # the second call reused the cached token


def test_hubspot_auth_renews_a_token_hubspot_rejects(
    deployment: Deployment, broker: BrokerClient, counting: Counting
) -> None:
    deployment.install(HUB, access_token_ttl=600)
    auth = HubSpotAuth(broker, HUB)
    with httpx.Client(base_url=deployment.sim_url, auth=auth) as hubspot:
        assert hubspot.get("/crm/v3/objects/contacts").status_code == 200
        first = broker.token(HUB)
        # Uninstall (kills every token) and install again: the broker holds a new grant,
        # while this process still caches the dead token.
        deployment.sim.kill_grant(HUB)
        deployment.install(HUB, access_token_ttl=1800)
        contacts = hubspot.get("/crm/v3/objects/contacts")
    assert contacts.status_code == 200, contacts.text
    assert [r.status_code for r in contacts.history] == [401]
    renewed = broker.token(HUB)
    assert renewed.access_token != first.access_token
    info = deployment.sim.access_token_info(renewed.access_token)
    assert info is not None
    assert info.active
    assert deployment.sim.counters()["contacts"] == 3
    assert counting.requests == 2


def test_hubspot_auth_surfaces_a_dead_grant(
    deployment: Deployment, broker: BrokerClient, counting: Counting
) -> None:
    deployment.install(HUB, access_token_ttl=600)
    with httpx.Client(base_url=deployment.sim_url, auth=HubSpotAuth(broker, HUB)) as hubspot:
        assert hubspot.get("/crm/v3/objects/contacts").status_code == 200
        deployment.sim.kill_grant(HUB)  # uninstalled, not reinstalled
        with pytest.raises(NeedsReauth) as dead:
            hubspot.get("/crm/v3/objects/contacts")
    assert dead.value.status == 409
    assert deployment.sim.counters()["contacts"] == 2  # the 401, and no blind retry
    assert counting.requests == 2


def test_hubspot_auth_learns_a_lowered_min_ttl_cap(
    env: dict[str, str], sim: Simulator, sim_url: str, counting: Counting
) -> None:
    """An operator lowered BROKER_MIN_TTL_MAX to 600: the retry after a 401 wants more than
    that, so the client learns the cap from the broker's 422 and asks again within it."""
    settings = load_settings({**env, "BROKER_MIN_TTL_MAX": "600"})
    with deployed(settings, sim, sim_url) as deployment:
        sim.add_portal(HUB)
        deployment.install(HUB, access_token_ttl=590)
        client = BrokerClient(deployment.url, deployment.caller_key, app="demo", transport=counting)
        with client, httpx.Client(base_url=sim_url, auth=HubSpotAuth(client, HUB)) as hubspot:
            assert hubspot.get("/crm/v3/objects/contacts").status_code == 200
            assert client.min_ttl_max is None  # nothing asked for more yet
            first = client.token(HUB)
            sim.kill_grant(HUB)
            deployment.install(HUB, access_token_ttl=1800)
            # The retry wants the rejected token's ~590 s left + 60 > 600: refused, lowered.
            contacts = hubspot.get("/crm/v3/objects/contacts")
            assert contacts.status_code == 200, contacts.text
            assert [r.status_code for r in contacts.history] == [401]
            assert client.min_ttl_max == 600
            assert counting.requests == 3  # the first token, the 422, the one within the cap
            renewed = client.token(HUB)
            assert renewed.access_token != first.access_token
            assert renewed.remaining() > 1700
            # Learned: a clamped call stays within the cap without asking; an explicit
            # min_ttl above it is still the caller's mistake.
            assert client.token(HUB, min_ttl=5000, clamp=True) is renewed
            assert counting.requests == 3
            with pytest.raises(InvalidRequest) as too_long:
                client.token(HUB, min_ttl=5000)
            assert (too_long.value.status, too_long.value.min_ttl_max) == (422, 600)
    assert sim.counters()["contacts"] == 3


def test_default_min_ttl_above_a_lowered_cap_is_lowered_to_it(
    env: dict[str, str], sim: Simulator, sim_url: str
) -> None:
    """The client's default min_ttl (300) is its own guess: under a broker whose cap is 200
    the first call learns the cap and asks again within it, instead of failing every call."""
    settings = load_settings({**env, "BROKER_MIN_TTL_MAX": "200"})
    transport = AsyncCounting()

    async def ask(url: str, key: str) -> None:
        async with AsyncBrokerClient(url, key, app="demo", transport=transport) as client:
            token = await client.token(HUB)
            assert (client.min_ttl_max, transport.requests) == (200, 2)
            assert token.remaining() > 1700
            assert await client.token(HUB) is token
            assert transport.requests == 2

    with deployed(settings, sim, sim_url, hub_id=HUB) as deployment:
        asyncio.run(ask(deployment.url, deployment.caller_key))


async def test_hubspot_auth_with_the_async_client(deployment: Deployment) -> None:
    deployment.install(HUB)
    async with AsyncBrokerClient(deployment.url, deployment.caller_key, app="demo") as client:
        auth = HubSpotAuth(client, HUB)
        async with httpx.AsyncClient(base_url=deployment.sim_url, auth=auth) as hubspot:
            contacts = await hubspot.get("/crm/v3/objects/contacts")
        assert contacts.status_code == 200, contacts.text
        assert contacts.json()["results"]
    assert deployment.sim.counters()["contacts"] == 1


def test_hubspot_auth_refuses_a_blocking_call_on_the_async_client(sim_url: str) -> None:
    client = AsyncBrokerClient("http://127.0.0.1:9", "hsb_unused")
    blocking = httpx.Client(base_url=sim_url, auth=HubSpotAuth(client, HUB))
    try:
        with blocking, pytest.raises(TypeError, match="AsyncClient"):
            blocking.get("/crm/v3/objects/contacts")
    finally:
        asyncio.run(client.aclose())


def test_hubspot_sdk_client(deployment: Deployment, broker: BrokerClient) -> None:
    deployment.install(HUB)
    sdk = hubspot_client(broker, HUB, host=deployment.sim_url)
    page = sdk.crm.contacts.basic_api.get_page(limit=5)
    assert len(page.results) == 5
    assert page.results[0].properties["email"].endswith("@example.com")
    assert deployment.sim.counters()["contacts"] == 1


def test_gateway_client_and_sdk_keep_the_token_in_the_broker(
    deployment: Deployment, broker: BrokerClient
) -> None:
    deployment.install(HUB)
    grant_gateway(deployment.settings, None, ["/crm/v3/objects/"])
    with gateway_client(broker, HUB) as hubspot:
        page = hubspot.get("/crm/v3/objects/contacts", params={"limit": 3})
        assert page.status_code == 200, page.text
        assert len(page.json()["results"]) == 3
        refused = hubspot.get("/crm/v3/owners")
        assert refused.status_code == 403
        assert refused.json()["code"] == "hubspot_path_forbidden"
    sdk = hubspot_client(broker, HUB, gateway=True)
    assert len(sdk.crm.contacts.basic_api.get_page(limit=2).results) == 2
    assert deployment.sim.counters()["contacts"] == 2
    with pytest.raises(ValueError, match="gateway=True"):
        hubspot_client(broker, HUB, gateway=True, app="demo")


async def test_async_gateway_client(deployment: Deployment) -> None:
    deployment.install(HUB)
    await asyncio.to_thread(grant_gateway, deployment.settings, None, ["/"])
    broker = AsyncBrokerClient(deployment.url, deployment.caller_key, app="demo")
    async with broker, async_gateway_client(broker, HUB) as hubspot:
        page = await hubspot.get("/crm/v3/objects/contacts", params={"limit": 1})
    assert page.status_code == 200, page.text


# --- lifecycle and packaging ----------------------------------------------------------------
def test_closed_client_refuses_to_be_used(deployment: Deployment, counting: Counting) -> None:
    deployment.install(HUB)
    client = BrokerClient(deployment.url, deployment.caller_key, app="demo", transport=counting)
    with client:
        client.token(HUB)
        with pytest.raises(RuntimeError, match="more than once"), client:
            pass
    assert client.is_closed
    with pytest.raises(RuntimeError, match="closed"):
        client.token(HUB)
    with pytest.raises(RuntimeError, match="closed"), client:
        pass
    assert counting.requests == 1


async def test_closed_async_client_refuses_to_be_used(deployment: Deployment) -> None:
    deployment.install(HUB)
    client = AsyncBrokerClient(deployment.url, deployment.caller_key, app="demo")
    async with client:
        assert (await client.token(HUB)).hub_id == HUB
    with pytest.raises(RuntimeError, match="closed"):
        await client.token(HUB)


_IN_VENV = """
import importlib.metadata, importlib.util, json, os, sys

from hubspot_token_broker_client import BrokerClient, hubspot_client

with BrokerClient(os.environ["URL"], lambda: os.environ["KEY"], app="demo") as client:
    token = client.token(int(os.environ["HUB"]))
    try:
        hubspot_client(client, token.hub_id)
        sdk = "imported"
    except ImportError as exc:
        sdk = exc.name
print(json.dumps({
    "hub_id": token.hub_id, "app": token.app, "ttl": token.remaining(), "sdk": sdk,
    "dists": sorted(d.metadata["Name"].lower() for d in importlib.metadata.distributions()),
    "server": importlib.util.find_spec("broker") is not None,
    "module": sys.modules["hubspot_token_broker_client"].__file__,
}))
"""
#: The broker server's dependencies: none may come with the client.
SERVER_ONLY = {
    "asyncpg",
    "hvac",
    "uvicorn",
    "starlette",
    "redis",
    "structlog",
    "hubspot-token-broker",
}


@pytest.fixture(scope="session")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv holding only the client's wheel (and what pip pulls in for it)."""
    where = tmp_path_factory.mktemp("client-wheel")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "-w", str(where), str(ROOT / "clients" / "python")],
        check=True,
        timeout=180,
    )
    (wheel,) = where.glob("hubspot_token_broker_client-*.whl")
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", "--quiet", "install", str(wheel)],
        check=True,
        timeout=300,
    )
    return python


def test_client_wheel_alone_needs_nothing_of_the_server(
    deployment: Deployment, client_venv: Path, tmp_path: Path
) -> None:
    deployment.install(HUB)
    env = {"URL": deployment.url, "KEY": deployment.caller_key, "HUB": str(HUB), "PATH": ""}
    done = subprocess.run(
        [str(client_venv), "-c", _IN_VENV],
        cwd=tmp_path,  # not the repository: its `broker` package must not be importable
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["hub_id"], result["app"]) == (HUB, "demo")
    assert result["ttl"] > 1700
    assert result["sdk"] == "hubspot"  # the SDK is imported only when asked for: not here
    assert "hubspot-token-broker-client" in result["dists"]
    assert "httpx" in result["dists"]
    assert not SERVER_ONLY & set(result["dists"])
    assert not result["server"]
    assert result["module"].startswith(str(client_venv.parent.parent))  # the wheel's copy
