"""A workload-identity issuer for tests: RSA keys, a JWKS served over HTTP, and JWTs minted
as Kubernetes service-account tokens are."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.helpers import serve_app

ISSUER = "https://kubernetes.default.svc.cluster.local"
AUDIENCE = "hubspot-token-broker"
SUBJECT = "system:serviceaccount:payments:api"


@dataclass
class Issuer:
    keys: dict[str, Any] = field(default_factory=dict)  # kid -> private key
    published: list[str] = field(default_factory=list)
    fetches: int = 0

    def add_key(self, kid: str) -> None:
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.published.append(kid)

    def jwks(self) -> dict[str, Any]:
        out = []
        for kid in self.published:
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.keys[kid].public_key()))
            out.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return {"keys": out}

    def mint(self, kid: str = "k1", **overrides: Any) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": SUBJECT, "aud": AUDIENCE, "iat": now, "exp": now + 600}
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, self.keys[kid], algorithm="RS256", headers={"kid": kid})


@pytest.fixture
def issuer() -> Iterator[tuple[Issuer, str]]:
    state = Issuer()
    state.add_key("k1")

    async def jwks(_: Request) -> JSONResponse:
        state.fetches += 1
        return JSONResponse(state.jwks())

    with serve_app(Starlette(routes=[Route("/openid/v1/jwks", jwks)])) as url:
        yield state, f"{url}/openid/v1/jwks"
