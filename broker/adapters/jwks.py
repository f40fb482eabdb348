"""Workload identity: verify a caller's JWT — a Kubernetes projected service-account token or
any OIDC issuer's — against that issuer's JWKS, or, for an issuer configured with
``tokenreview_url``, by asking the Kubernetes API server (:mod:`broker.adapters.tokenreview`)
(implements ``IdentityVerifier``).

Security properties:
* only configured issuers, matched exactly; the audience is required;
* an algorithm allow-list of asymmetric algorithms: never ``none``, never HMAC (so a public
  key can never be used as an HMAC secret);
* ``exp``, ``iss``, ``sub`` and ``aud`` required; ``exp``/``nbf`` checked with a small
  leeway;
* each JWKS is cached; an unknown ``kid`` triggers a refetch (key rotation), at most once
  per ``refetch_seconds`` per issuer, so forged kids cannot hammer the issuer.
Every failure is :class:`~broker.errors.Unauthenticated` with a reason that names no token.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jwt

from broker import metrics
from broker.adapters import tls
from broker.adapters.tokenreview import TokenReviewer, reject_workload_token
from broker.core.ports import Identity

ALLOWED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


@dataclass(frozen=True, slots=True)
class ClaimsPolicy:
    """What a signed token's claims must be: for ``audience`` from ``issuer``, unexpired
    within ``leeway`` seconds, every claim in ``require`` present."""

    audience: str
    issuer: str
    leeway: float
    require: tuple[str, ...]

    def decode(self, token: str, key: jwt.PyJWK, algorithm: str) -> dict[str, Any]:
        """The claims of ``token``, signed by ``key`` with ``algorithm`` (the header's, already
        checked against an allow-list: the only one accepted). Raises ``jwt.PyJWTError``
        (its subclasses say what failed)."""
        return jwt.decode(
            token,
            key=key.key,
            algorithms=[algorithm],
            audience=self.audience,
            issuer=self.issuer,
            leeway=self.leeway,
            options={"require": list(self.require)},
        )


#: The claims a workload's token must carry.
_REQUIRED = ("exp", "iss", "sub", "aud")
#: A reviewed token without an ``exp`` claim (a legacy secret-based service-account token)
#: is trusted this long before it is reviewed again.
NO_EXPIRY_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class IssuerConfig:
    issuer: str
    audience: str
    #: Exactly one of the two: the issuer's JWKS, or the Kubernetes API server that reviews.
    jwks_url: str | None = None
    tokenreview_url: str | None = None
    #: For the Kubernetes API server: a CA bundle and a bearer token file.
    ca_file: str | None = None
    token_file: str | None = None
    #: At most one JWKS fetch per this many seconds (unknown kids trigger one).
    refetch_seconds: float = 10.0
    #: TokenReview mode: reviews per second on this replica.
    review_rate: float = 50.0

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> IssuerConfig:
        return cls(
            issuer=str(raw["issuer"]),
            audience=str(raw["audience"]),
            jwks_url=raw.get("jwks_url"),
            tokenreview_url=raw.get("tokenreview_url"),
            ca_file=raw.get("ca_file"),
            token_file=raw.get("token_file"),
            refetch_seconds=float(raw.get("refetch_seconds", 10.0)),
            review_rate=float(raw.get("review_rate", 50.0)),
        )


class KeySet:
    """One issuer's JWKS, fetched on first use and again when a token names an unknown
    ``kid`` (key rotation), at most once per ``refetch_seconds``, so forged kids cannot
    hammer the issuer. A failed fetch keeps the keys it had."""

    def __init__(
        self,
        url: str,
        *,
        verify: ssl.SSLContext | bool,
        timeout: float,
        refetch_seconds: float = 10.0,
        token_file: str | None = None,
    ) -> None:
        self._url = url
        self._verify = verify
        self._timeout = timeout
        self._refetch_seconds = refetch_seconds
        self._token_file = token_file
        self._by_kid: dict[str | None, jwt.PyJWK] = {}
        self._fetched_at = -refetch_seconds
        self._lock = asyncio.Lock()

    async def get(self, kid: str | None) -> jwt.PyJWK | None:
        found = self._by_kid.get(kid)
        if found is not None:
            return found
        async with self._lock:
            found = self._by_kid.get(kid)
            if found is None and time.monotonic() - self._fetched_at >= self._refetch_seconds:
                await self._fetch()
                found = self._by_kid.get(kid)
        return found

    async def _fetch(self) -> None:
        self._fetched_at = time.monotonic()
        headers = {}
        if self._token_file:
            # Projected tokens rotate on disk: read it each time (tiny, local file).
            token = await asyncio.to_thread(Path(self._token_file).read_text)
            headers["Authorization"] = f"Bearer {token.strip()}"
        try:
            async with httpx.AsyncClient(timeout=self._timeout, verify=self._verify) as client:
                response = await client.get(self._url, headers=headers)
                response.raise_for_status()
                jwks = jwt.PyJWKSet.from_dict(response.json())
        except (httpx.HTTPError, ValueError, jwt.PyJWTError):
            metrics.backend_failed("jwks", "fetch")
            return  # keep the keys we had
        self._by_kid = {k.key_id: k for k in jwks.keys}
        metrics.JWKS_FETCHES.inc()


class JwksVerifier:
    def __init__(
        self,
        issuers: list[IssuerConfig],
        *,
        leeway: float = 30.0,
        timeout: float = 5.0,
        ca_bundle: str = "",
    ) -> None:
        self._issuers = {cfg.issuer: cfg for cfg in issuers}
        self._keys = {
            cfg.issuer: KeySet(
                cfg.jwks_url,
                verify=tls.verify(ca_bundle, cfg.ca_file),
                timeout=timeout,
                refetch_seconds=cfg.refetch_seconds,
                token_file=cfg.token_file,
            )
            for cfg in issuers
            if cfg.jwks_url
        }
        self._reviewers = {
            cfg.issuer: TokenReviewer(
                cfg.tokenreview_url,
                audience=cfg.audience,
                verify=tls.verify(ca_bundle, cfg.ca_file),
                token_file=cfg.token_file,
                timeout=timeout,
                rate=cfg.review_rate,
            )
            for cfg in issuers
            if cfg.tokenreview_url
        }
        self._leeway = leeway

    async def close(self) -> None:
        for reviewer in self._reviewers.values():
            await reviewer.close()

    async def verify(self, token: str) -> Identity:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise reject_workload_token(metrics.AuthFailure.JWT_MALFORMED) from None
        algorithm = header.get("alg")
        if algorithm not in ALLOWED_ALGORITHMS:
            raise reject_workload_token(metrics.AuthFailure.JWT_ALGORITHM_NOT_ALLOWED)
        config = self._issuers.get(str(unverified.get("iss")))
        if config is None:
            raise reject_workload_token(metrics.AuthFailure.JWT_UNKNOWN_ISSUER)
        reviewer = self._reviewers.get(config.issuer)
        if reviewer is not None:
            return await self._reviewed(reviewer, config, token, unverified)
        key = await self._key(config, header.get("kid"))
        try:
            policy = ClaimsPolicy(config.audience, config.issuer, self._leeway, _REQUIRED)
            claims = policy.decode(token, key, algorithm)
        except jwt.ExpiredSignatureError:
            raise reject_workload_token(metrics.AuthFailure.JWT_EXPIRED) from None
        except jwt.ImmatureSignatureError:
            raise reject_workload_token(metrics.AuthFailure.JWT_NOT_YET_VALID) from None
        except jwt.InvalidAudienceError:
            raise reject_workload_token(metrics.AuthFailure.JWT_WRONG_AUDIENCE) from None
        except jwt.PyJWTError:
            raise reject_workload_token(metrics.AuthFailure.JWT_INVALID) from None
        return Identity(
            issuer=config.issuer,
            subject=str(claims["sub"]),
            expires_at=datetime.fromtimestamp(float(claims["exp"]), UTC),
        )

    async def _reviewed(
        self, reviewer: TokenReviewer, config: IssuerConfig, token: str, claims: dict[str, Any]
    ) -> Identity:
        """TokenReview mode. The claims are read before the review only to refuse an expired
        token without asking, and after it for the expiry: once the API server has
        authenticated the token, its signed claims are authentic."""
        now = time.time()
        exp = claims.get("exp")
        if isinstance(exp, int | float) and exp + self._leeway < now:
            raise reject_workload_token(metrics.AuthFailure.JWT_EXPIRED)
        subject = await reviewer.review(token)
        until = float(exp) if isinstance(exp, int | float) else now + NO_EXPIRY_SECONDS
        return Identity(
            issuer=config.issuer,
            subject=subject,
            expires_at=datetime.fromtimestamp(until, UTC),
        )

    async def _key(self, config: IssuerConfig, kid: str | None) -> jwt.PyJWK:
        found = await self._keys[config.issuer].get(kid)
        if found is None:
            raise reject_workload_token(metrics.AuthFailure.JWT_UNKNOWN_KEY)
        return found
