"""Unauthenticated work is bounded: 2,000 requests at full speed against one replica on each
path a stranger can reach without a secret — a callback with a code and no state, forged
workload tokens in TokenReview mode, validly signed tokens of unknown subjects in JWKS
mode — while a legitimate caller keeps asking. None of its requests is refused, and the
backend work the flood causes (code exchanges, token reviews, Postgres lookups) stays within
the budget's burst plus its rate times the flood's duration. The legitimate caller's p99 and
success rate are printed next to its baseline (not asserted: the machine is shared)."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from broker.app import open_admin
from broker.config import Settings, load_settings
from broker.dev.simulator import Simulator
from tests.chaos.cluster import percentile
from tests.helpers import Deployment, deployed, metric_value, serve_app

HUB = 6_700_001
FLOOD = 2_000
ISSUER = "https://kubernetes.default.svc.cluster.local"
AUDIENCE = "hubspot-token-broker"
SUBJECT = "system:serviceaccount:payments:api"
#: Seconds a verified workload token is cached: several expiries fall within each flood.
CACHE = 0.2
Request_ = tuple[str, dict[str, str]]  # path with query, headers


@dataclass
class Flood:
    took: float
    attack: Counter[int]
    baseline: list[tuple[int, float]]
    during: list[tuple[int, float]]

    def report(self, name: str) -> None:
        def line(sample: list[tuple[int, float]]) -> str:
            ok = sum(1 for status, _ in sample if status == 200)
            p99 = percentile([seconds for _, seconds in sample], 0.99) * 1000
            return f"p99 {p99:.1f} ms, {ok}/{len(sample)} ok"

        print(
            f"\nflood {name}: {sum(self.attack.values())} requests in {self.took:.2f} s "
            f"({dict(sorted(self.attack.items()))}); legitimate caller: baseline "
            f"{line(self.baseline)} | during the flood {line(self.during)}"
        )


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter, str]


async def _connect(url: str) -> Conn:
    parts = httpx.URL(url)
    reader, writer = await asyncio.open_connection(parts.host, parts.port)
    return reader, writer, f"{parts.host}:{parts.port}"


async def _get(conn: Conn, request: Request_) -> tuple[int, float]:
    """One keep-alive GET on a raw connection (httpx would cost more CPU than the broker's
    answer does, and the client shares this process with the broker under test)."""
    reader, writer, host = conn
    path, headers = request
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    started = time.perf_counter()
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status, time.perf_counter() - started


def flood(url: str, attack: list[Request_], legit: Request_) -> Flood:
    """Send ``attack`` as fast as 50 keep-alive connections go while ``legit`` is asked in a
    loop on a connection of its own; ``legit`` is asked 100 times alone first (baseline)."""

    async def main() -> Flood:
        caller = await _connect(url)
        baseline = [await _get(caller, legit) for _ in range(100)]
        done = asyncio.Event()

        async def steady() -> list[tuple[int, float]]:
            answers = []
            while not done.is_set():
                answers.append(await _get(caller, legit))
                await asyncio.sleep(0.01)  # a busy service, within its own rate limit
            return answers

        queue = iter(attack)
        answers: list[tuple[int, float]] = []

        async def stranger() -> None:
            conn = await _connect(url)
            try:
                for request in queue:  # 50 of these share one iterator
                    answers.append(await _get(conn, request))
            finally:
                conn[1].close()

        asking = asyncio.create_task(steady())
        started = time.monotonic()
        await asyncio.gather(*(stranger() for _ in range(50)))
        took = time.monotonic() - started
        done.set()
        during = await asking
        caller[1].close()
        return Flood(took, Counter(status for status, _ in answers), baseline, during)

    return asyncio.run(main())


def assert_never_refused(result: Flood) -> None:
    refused = [status for status, _ in result.baseline + result.during if status != 200]
    assert not refused, Counter(refused)
    assert len(result.during) >= 3  # it kept asking while the flood ran


def _workload(settings: Settings, issuer: str, subject: str) -> None:
    async def create() -> None:
        async with open_admin(settings) as svc:
            await svc.callers.create(
                "payments-api", apps=["demo"], identity=(issuer, subject), with_key=False, actor="t"
            )

    asyncio.run(create())


def _token_path() -> str:
    return f"/v1/portals/{HUB}/token?app=demo"


# --- a callback with a code and no state -----------------------------------------------------
def test_a_flood_of_stateless_callbacks_is_bounded(
    env: dict[str, str], sim: Simulator, sim_url: str
) -> None:
    rate = 2.0
    settings = load_settings({**env, "BROKER_MARKETPLACE_EXCHANGE_RATE": str(rate)})
    with deployed(settings, sim, sim_url, hub_id=HUB, allow_marketplace_installs=True) as d:
        before = sim.counters().get("token.authorization_code", 0)
        repeated = f"/oauth/callback?code=na1-{secrets.token_hex(8)}"
        # Sent once before the flood, so it is the one code surely exchanged (and refused by
        # HubSpot): during the flood, 50 connections race for the budget in any order.
        first = httpx.get(f"{d.url}{repeated}", headers={"Accept": "application/json"})
        assert first.json()["code"] == "install_code_rejected"
        attack = [
            (repeated if i % 4 == 0 else f"/oauth/callback?code=na1-{secrets.token_hex(8)}", {})
            for i in range(FLOOD)
        ]
        result = flood(d.url, attack, (_token_path(), _bearer(d.caller_key)))
        result.report("stateless callbacks")
        exchanges = sim.counters().get("token.authorization_code", 0) - before
        assert_never_refused(result)
        assert set(result.attack) <= {400, 429}, result.attack
        assert result.attack[429] > 0
        assert 0 < exchanges <= 2 * rate + rate * result.took + 1, (exchanges, result.took)
        # A code HubSpot refused is refused again from memory, and nothing was stored.
        again = httpx.get(f"{d.url}{repeated}", headers={"Accept": "application/json"})
        assert again.json()["code"] == "install_code_rejected"
        assert sim.counters().get("token.authorization_code", 0) - before == exchanges


# --- TokenReview mode: forged tokens with the cluster's issuer -----------------------------------
@dataclass
class ApiServer:
    """Stands in for the Kubernetes API server's TokenReview endpoint (the real one needs a
    cluster: tests/test_tokenreview.py): authenticates one token, counts every review."""

    valid: str = ""
    reviews: int = 0


@pytest.fixture
def api_server() -> Iterator[tuple[ApiServer, str]]:
    state = ApiServer()

    async def review(request: Request) -> JSONResponse:
        state.reviews += 1
        token = (await request.json())["spec"]["token"]
        if token != state.valid:
            return JSONResponse({"status": {"authenticated": False}}, status_code=201)
        user = {"username": SUBJECT}
        status = {"authenticated": True, "user": user, "audiences": [AUDIENCE]}
        return JSONResponse({"status": status}, status_code=201)

    app = Starlette(
        routes=[Route("/apis/authentication.k8s.io/v1/tokenreviews", review, methods=["POST"])]
    )
    with serve_app(app) as url:
        yield state, url


def _es256_key() -> Any:
    return ec.generate_private_key(ec.SECP256R1())


def _mint(key: Any, subject: str = SUBJECT, kid: str = "k1") -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "sub": subject,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 600,
        "jti": secrets.token_hex(8),
    }
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid})


def test_a_flood_of_forged_tokens_does_not_throttle_reviewed_workloads(
    env: dict[str, str], sim: Simulator, sim_url: str, api_server: tuple[ApiServer, str]
) -> None:
    state, url = api_server
    rate = 5.0
    issuer = {"issuer": ISSUER, "audience": AUDIENCE, "tokenreview_url": url, "review_rate": rate}
    settings = load_settings(
        {
            **env,
            "BROKER_JWT_ISSUERS": json.dumps([issuer]),
            # The workload's identity is re-reviewed several times during the flood.
            "BROKER_CALLER_CACHE_SECONDS": str(CACHE),
        }
    )
    forger = _es256_key()  # no one trusts it: only the API server could tell
    state.valid = _mint(_es256_key())
    with deployed(settings, sim, sim_url, hub_id=HUB) as d:
        _workload(settings, ISSUER, SUBJECT)
        assert _ask(d, state.valid).status_code == 200
        repeated = _mint(forger)
        attack = [
            (_token_path(), _bearer(repeated if i % 4 == 0 else _mint(forger)))
            for i in range(FLOOD)
        ]
        before = state.reviews
        result = flood(d.url, attack, (_token_path(), _bearer(state.valid)))
        result.report("forged TokenReview tokens")
        reviews = state.reviews - before
        assert_never_refused(result)
        assert set(result.attack) <= {401, 429}, result.attack
        assert result.attack[429] > 0
        # Strangers: the budget; the workload: one re-review per cache lifetime at most.
        bound = (2 * rate + rate * result.took + 1) + (result.took / CACHE + 2)
        assert reviews <= bound, (reviews, result.took)
        # A refused token is refused from memory: no review.
        before = state.reviews
        assert _ask(d, repeated).status_code == 401
        assert state.reviews == before


# --- JWKS mode: validly signed tokens of subjects with no caller ---------------------------------
@pytest.fixture
def jwks_issuer() -> Iterator[tuple[Any, str]]:
    key = _es256_key()
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    keys = {"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "ES256"}]}

    async def serve(_: Request) -> JSONResponse:
        return JSONResponse(keys)

    with serve_app(Starlette(routes=[Route("/jwks", serve)])) as url:
        yield key, f"{url}/jwks"


def test_a_flood_of_unknown_subjects_costs_bounded_lookups(
    env: dict[str, str], sim: Simulator, sim_url: str, jwks_issuer: tuple[Any, str]
) -> None:
    key, url = jwks_issuer
    rate = 5.0
    issuer = {"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": url}
    settings = load_settings(
        {
            **env,
            "BROKER_JWT_ISSUERS": json.dumps([issuer]),
            "BROKER_AUTH_LOOKUP_RATE": str(rate),
            "BROKER_CALLER_CACHE_SECONDS": str(CACHE),  # the workload is looked up again
        }
    )
    legit = _mint(key)
    with deployed(settings, sim, sim_url, hub_id=HUB) as d:
        _workload(settings, ISSUER, SUBJECT)
        assert _ask(d, legit).status_code == 200
        repeated = _mint(key, "system:serviceaccount:other:one")
        attack = [
            (
                _token_path(),
                _bearer(repeated if i % 4 == 0 else _mint(key, f"system:serviceaccount:x:{i}")),
            )
            for i in range(FLOOD)
        ]
        before = _lookups(d)
        result = flood(d.url, attack, (_token_path(), _bearer(legit)))
        result.report("unknown JWKS subjects")
        lookups = _lookups(d) - before
        assert_never_refused(result)
        assert set(result.attack) <= {401, 429}, result.attack
        assert result.attack[429] > 0
        bound = (2 * rate + rate * result.took + 1) + (result.took / CACHE + 2)
        assert lookups <= bound, (lookups, result.took)
        # An unknown subject is refused from memory for a few seconds: no lookup. (Any
        # caller change clears that memory, the invalidation poll too: ask it afresh.)
        time.sleep(2 / rate)  # the budget refills
        assert _ask(d, repeated).status_code == 401
        before = _lookups(d)
        assert _ask(d, repeated).status_code == 401
        assert _lookups(d) == before


def _lookups(d: Deployment) -> float:
    return metric_value(d.url, "broker_caller_key_lookups_total")


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _ask(d: Deployment, token: str) -> httpx.Response:
    return httpx.get(f"{d.url}{_token_path()}", headers=_bearer(token), timeout=30)
