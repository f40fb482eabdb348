"""The OpenID Provider operators sign in with (implements ``IdentityProvider``): discovery,
the token endpoint and ID token verification, over httpx with the broker's CA handling
(:mod:`broker.adapters.tls`).

Security properties:
* discovery (``<issuer>/.well-known/openid-configuration``) must name the configured issuer
  exactly (OpenID Connect Discovery 1.0, 4.3) and support S256 PKCE; it is cached for an
  hour, and fetched again after a failure;
* the ID token is checked as OpenID Connect Core 1.0, 3.1.3.7 says: a key of the issuer's
  JWKS (:class:`~broker.adapters.jwks.KeySet`: an unknown ``kid`` refetches, rate-limited),
  an asymmetric algorithm from :data:`~broker.adapters.jwks.ALLOWED_ALGORITHMS` that the
  issuer announces (never ``none`` or HMAC), ``iss``, ``aud`` (and ``azp``), ``exp``,
  ``iat`` and the ``nonce`` of this browser's flow, compared in constant time;
* the client authenticates with its secret (HTTP Basic, else in the form, as the issuer
  announces); the code, the verifier, the secret and the tokens are never logged, never in
  an error message, and never retried (a code is single-use).
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from urllib.parse import quote_plus, urlencode

import httpx
import jwt

from broker import metrics
from broker.adapters import tls
from broker.adapters.jwks import ALLOWED_ALGORITHMS, ClaimsPolicy, KeySet
from broker.config import Secret
from broker.core.ports import SsoIdentity
from broker.errors import IdentityProviderUnavailable, SsoFailed

DISCOVERY_SECONDS = 3600.0
#: The claims an ID token must carry.
_REQUIRED = ("exp", "iat", "iss", "sub", "aud")


@dataclass(frozen=True, slots=True)
class Metadata:
    """What the broker uses of the issuer's discovery document."""

    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    algorithms: frozenset[str]
    basic_auth: bool  # client_secret_basic, else client_secret_post


class OidcClient:
    def __init__(
        self,
        *,
        issuer: str,
        client_id: str,
        client_secret: Secret,
        scopes: str,
        groups_claim: str,
        ca_bundle: str = "",
        timeout: float = 10.0,
        leeway: float = 30.0,
    ) -> None:
        self._issuer = issuer
        self._client_id = client_id
        self._secret = client_secret
        self._scopes = " ".join(scopes.split())
        self._groups_claim = groups_claim
        self._leeway = leeway
        self._timeout = timeout
        self._verify = tls.verify(ca_bundle)
        self._http = httpx.AsyncClient(timeout=timeout, verify=self._verify)
        self._metadata: Metadata | None = None
        self._fetched_at = 0.0
        self._keys: KeySet | None = None

    @property
    def issuer(self) -> str:
        return self._issuer

    async def close(self) -> None:
        await self._http.aclose()

    async def check(self) -> None:
        """Fetch and check the discovery document now (``broker check-config``)."""
        self._metadata = None
        await self._discover()

    async def authorization_url(
        self, *, redirect_uri: str, state: str, nonce: str, code_challenge: str
    ) -> str:
        endpoint = (await self._discover()).authorization_endpoint
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self._client_id,
                "redirect_uri": redirect_uri,
                "scope": self._scopes,
                "state": state,
                "nonce": nonce,
                "code_challenge": code_challenge,
                "code_challenge_method": "S256",
            }
        )
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"

    async def sign_in(
        self, code: str, *, redirect_uri: str, verifier: str, nonce: str
    ) -> SsoIdentity:
        metadata = await self._discover()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        }
        auth = httpx.Auth()  # the base class sends the request as it is
        if metadata.basic_auth:  # RFC 6749, 2.3.1: both form-encoded, then Basic
            auth = httpx.BasicAuth(quote_plus(self._client_id), quote_plus(self._secret.get()))
        else:
            form |= {"client_id": self._client_id, "client_secret": self._secret.get()}
        try:
            response = await self._http.post(
                metadata.token_endpoint,
                data=form,
                auth=auth,
                headers={"Accept": "application/json"},
            )
            answer = response.json() if response.content else {}
        except (httpx.HTTPError, ValueError):
            raise self._unavailable(
                "token", "the identity provider's token endpoint failed"
            ) from None
        if 400 <= response.status_code < 500 and isinstance(answer, dict):
            error = str(answer.get("error", ""))
            said = f" ({error})" if error.replace("_", "").isalpha() and len(error) < 40 else ""
            raise SsoFailed(
                f"the identity provider refused the sign-in code{said}: sign in again",
                code="sso_code_rejected",
            )
        if response.status_code != 200 or not isinstance(answer, dict):
            raise self._unavailable("token", "the identity provider's token endpoint failed")
        token = answer.get("id_token")
        if not isinstance(token, str):
            raise _invalid("the token response has no ID token")
        return await self._verified(token, nonce, metadata)

    async def _verified(self, token: str, nonce: str, metadata: Metadata) -> SsoIdentity:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _invalid("malformed") from None
        algorithm = header.get("alg")
        if algorithm not in metadata.algorithms:
            raise _invalid("algorithm not allowed")
        if self._keys is None:
            self._keys = KeySet(metadata.jwks_uri, verify=self._verify, timeout=self._timeout)
        key = await self._keys.get(header.get("kid"))
        if key is None:
            raise _invalid("unknown signing key")
        try:
            policy = ClaimsPolicy(self._client_id, self._issuer, self._leeway, _REQUIRED)
            claims = policy.decode(token, key, algorithm)
        except jwt.ExpiredSignatureError:
            raise _invalid("expired") from None
        except jwt.InvalidAudienceError:
            raise _invalid("issued to another client") from None
        except jwt.InvalidIssuerError:
            raise _invalid("another issuer") from None
        except jwt.PyJWTError:
            raise _invalid("signature or claims invalid") from None
        if not hmac.compare_digest(str(claims.get("nonce", "")).encode(), nonce.encode()):
            raise _invalid("nonce does not match this sign-in")
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        azp = claims.get("azp")
        if (azp is not None or len(audiences) > 1) and azp != self._client_id:
            raise _invalid("authorized party is another client")
        groups = claims.get(self._groups_claim)
        if isinstance(groups, str):
            groups = [groups]
        email = claims.get("email")
        return SsoIdentity(
            subject=str(claims["sub"]),
            email=email
            if isinstance(email, str) and claims.get("email_verified") is not False
            else None,
            groups=frozenset(g for g in groups if isinstance(g, str))
            if isinstance(groups, list)
            else frozenset(),
        )

    async def _discover(self) -> Metadata:
        if self._metadata is not None and time.monotonic() - self._fetched_at < DISCOVERY_SECONDS:
            return self._metadata
        url = f"{self._issuer.rstrip('/')}/.well-known/openid-configuration"
        try:
            response = await self._http.get(url, headers={"Accept": "application/json"})
            response.raise_for_status()
            document = response.json()
        except (httpx.HTTPError, ValueError):
            raise self._unavailable(
                "discovery", "the identity provider's discovery failed"
            ) from None
        metadata = self._parse(document)
        if self._metadata is None or metadata.jwks_uri != self._metadata.jwks_uri:
            self._keys = None
        self._metadata, self._fetched_at = metadata, time.monotonic()
        return metadata

    def _parse(self, document: object) -> Metadata:
        if not isinstance(document, dict) or document.get("issuer") != self._issuer:
            raise self._unavailable(
                "discovery", "the discovery document names another issuer than BROKER_OIDC_ISSUER"
            )
        endpoints = [document.get(k) for k in ("authorization_endpoint", "token_endpoint")]
        jwks_uri = document.get("jwks_uri")
        if not all(isinstance(u, str) and u.startswith(("https://", "http://")) for u in endpoints):
            raise self._unavailable("discovery", "the discovery document lacks its endpoints")
        if not isinstance(jwks_uri, str):
            raise self._unavailable("discovery", "the discovery document lacks jwks_uri")
        if "S256" not in document.get("code_challenge_methods_supported", ["S256"]):
            raise self._unavailable("discovery", "the identity provider does not offer S256 PKCE")
        methods = document.get("token_endpoint_auth_methods_supported", ["client_secret_basic"])
        announced = document.get("id_token_signing_alg_values_supported", ["RS256"])
        return Metadata(
            authorization_endpoint=str(endpoints[0]),
            token_endpoint=str(endpoints[1]),
            jwks_uri=jwks_uri,
            algorithms=ALLOWED_ALGORITHMS & frozenset(map(str, announced)),
            basic_auth="client_secret_basic" in methods or "client_secret_post" not in methods,
        )

    def _unavailable(self, operation: metrics.OidcOp, detail: str) -> IdentityProviderUnavailable:
        metrics.backend_failed("oidc", operation)
        self._metadata = None  # a failure re-reads the discovery document next time
        return IdentityProviderUnavailable(detail)


def _invalid(reason: str) -> SsoFailed:
    return SsoFailed(
        f"the identity provider's ID token was refused ({reason})", code="sso_id_token_invalid"
    )
