"""Workload identity on a real broker: callers present a JWT from a configured issuer
(Kubernetes service-account tokens or OIDC), verified against the issuer's JWKS served over
HTTP — with every way a token can be wrong refused, and key rotation handled."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from broker.app import open_admin
from tests.helpers import Deploy, Deployment
from tests.workload_issuer import AUDIENCE, ISSUER, SUBJECT, Issuer

HUB = 6_100_001


@pytest.fixture
def deployment(deploy: Deploy, issuer: tuple[Issuer, str]) -> Deployment:
    issuers = [
        {"issuer": ISSUER, "jwks_url": issuer[1], "audience": AUDIENCE, "refetch_seconds": 1}
    ]
    d = deploy(env={"BROKER_JWT_ISSUERS": json.dumps(issuers)}, installed=(HUB,))
    workload_caller(d, "payments-api", SUBJECT)
    return d


def workload_caller(d: Deployment, name: str, subject: str, **options: Any) -> None:
    """A caller of app ``demo`` known by its workload identity (``subject``), without a key."""

    async def create() -> None:
        async with open_admin(d.settings) as svc:
            await svc.callers.create(
                name,
                apps=["demo"],
                identity=(ISSUER, subject),
                with_key=False,
                actor="test",
                **options,
            )

    asyncio.run(create())


def ask(d: Deployment, credential: str) -> httpx.Response:
    return httpx.get(
        f"{d.url}/v1/portals/{HUB}/token",
        params={"app": "demo"},
        headers={"Authorization": f"Bearer {credential}"},
    )


def test_a_valid_workload_token_gets_an_access_token(
    deployment: Deployment, issuer: tuple[Issuer, str]
) -> None:
    response = ask(deployment, issuer[0].mint())
    assert response.status_code == 200, response.text
    assert response.json()["hub_id"] == HUB
    assert ask(deployment, deployment.caller_key).status_code == 200  # keys still work


def test_every_bad_token_is_refused(deployment: Deployment, issuer: tuple[Issuer, str]) -> None:
    state = issuer[0]
    now = int(time.time())
    public_pem = (
        state.keys["k1"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    cases = {
        "wrong audience": state.mint(aud="someone-else"),
        "expired": state.mint(exp=now - 120),
        "not yet valid": state.mint(nbf=now + 600),
        "unknown issuer": state.mint(iss="https://evil.example"),
        "no subject": state.mint(sub=None),
        "no expiry": state.mint(exp=None),
        "unmapped subject": state.mint(sub="system:serviceaccount:other:app"),
        "alg none": jwt.encode(
            {"iss": ISSUER, "sub": SUBJECT, "aud": AUDIENCE, "exp": now + 600},
            None,
            algorithm="none",
        ),
        "HMAC with the public key": _hs256_with(public_pem, now),
        "tampered payload": _tamper(state.mint()),
        "garbage": "not.a.jwt",
    }
    for name, token in cases.items():
        response = ask(deployment, token)
        assert response.status_code == 401, (name, response.text)
        assert response.json()["code"] == "unauthenticated"
        assert token not in response.text


def test_key_rotation_and_refetch_rate_limit(
    deployment: Deployment, issuer: tuple[Issuer, str]
) -> None:
    state = issuer[0]
    assert ask(deployment, state.mint()).status_code == 200
    fetched = state.fetches
    state.add_key("k2")  # the issuer rotates: a kid the broker has never seen
    time.sleep(1.1)  # past the refetch interval (1 s here, 10 s by default)
    assert ask(deployment, state.mint(kid="k2")).status_code == 200
    assert state.fetches == fetched + 1
    refetched_at = time.monotonic()
    for i in range(5):  # forged kids cannot make the broker hammer the issuer
        forged = jwt.encode(
            {"iss": ISSUER, "sub": SUBJECT, "aud": AUDIENCE, "exp": int(time.time()) + 60},
            state.keys["k1"],
            algorithm="RS256",
            headers={"kid": f"made-up-{i}"},
        )
        assert ask(deployment, forged).status_code == 401
    # At most one refetch per interval (1 s here), however slow a busy machine made the
    # five requests: an unknown kid on every request must not mean a fetch on every request.
    intervals = int(time.monotonic() - refetched_at)
    assert state.fetches <= fetched + 1 + intervals


def test_a_workload_caller_is_refused_after_its_expiry(
    deployment: Deployment, issuer: tuple[Issuer, str]
) -> None:
    """``expires_at`` binds workload identities as it binds keys: a token verified (and
    cached) before the caller's expiry stops working at it, and so does a fresh one."""
    subject = "system:serviceaccount:payments:batch"
    expires_at = datetime.now(UTC) + timedelta(seconds=2)

    workload_caller(deployment, "payments-batch", subject, expires_at=expires_at)
    cached = issuer[0].mint(sub=subject)
    assert ask(deployment, cached).status_code == 200  # verified, now cached (10 s)
    time.sleep(max(0.0, (expires_at - datetime.now(UTC)).total_seconds()) + 0.2)
    for token in (cached, issuer[0].mint(sub=subject, jti="fresh")):
        refused = ask(deployment, token)
        assert refused.status_code == 401, refused.text
        assert refused.json()["code"] == "unauthenticated"
        assert "expired" in refused.json()["detail"]
    assert ask(deployment, issuer[0].mint()).status_code == 200  # others are unaffected


def _hs256_with(public_pem: bytes, now: int) -> str:
    """The classic confusion attack: HS256 with the RSA public key as the secret."""
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    claims = {"iss": ISSUER, "sub": SUBJECT, "aud": AUDIENCE, "exp": now + 600}
    payload = b64(json.dumps(claims).encode())
    signature = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(signature)}"


def _tamper(token: str) -> str:
    import base64

    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "system:serviceaccount:payments:admin"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"
