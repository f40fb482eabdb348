"""The broker's one exception tree.

Every error the broker raises on purpose is a :class:`BrokerError`. Each class carries the
HTTP ``status`` it maps to and a stable machine-readable ``code``; one handler in
``broker.web.problems`` renders it as ``application/problem+json`` (RFC 9457). Messages are
written for the caller and never contain a token, a secret or a stack trace.

    BrokerError
    ├── ClientError                    the request is wrong; retrying it unchanged won't help
    │   ├── InvalidRequest             422 invalid_request
    │   ├── Unauthenticated            401 unauthenticated
    │   ├── Forbidden                  403 forbidden
    │   │   ├── InstallLinkRejected    403 install_link_required, _invalid, _expired
    │   │   ├── SsoNoRole              403 sso_no_role: signed in, but no mapped group
    │   │   └── VaultPolicyDenied      403 vault_policy_denied: the broker's own Vault
    │   │                              policy lacks what a management request needs
    │   ├── RateLimitedCaller          429 rate_limited (auth_throttled: too many unknown keys)
    │   │   └── BudgetExhausted        429 portal_budget_exhausted: the portal's HubSpot budget
    │   │                              cannot be had within the gateway's wait bound
    │   ├── NotFound                   404 not_found (portal_not_found, app_not_found, ...)
    │   ├── Conflict                   409 conflict
    │   │   ├── NeedsReauth            409 needs_reauth
    │   │   ├── Quarantined            409 quarantined
    │   │   └── AppRetired             409 app_retired: installs nothing new
    │   ├── Revoked                    410 revoked
    │   ├── PayloadTooLarge            413 body_too_large
    │   ├── InstallFailed              400 install_* (state, code exchange, denial)
    │   └── SsoFailed                  400 sso_* (state, ID token, code exchange, denial)
    ├── UpstreamError                  a dependency failed; retrying later may help
    │   ├── HubSpotError               HubSpot's token endpoint said no or did not answer
    │   │   ├── GrantDead              the refresh token is dead (invalid_grant, BAD_HUB)
    │   │   ├── AppMisconfigured       client id/secret rejected; never a portal's fault
    │   │   ├── HubSpotRateLimited     429; ``retry_after`` when HubSpot sent one
    │   │   └── HubSpotUnavailable     5xx, 423, 477, timeouts, connection errors
    │   ├── VaultError                 Vault/OpenBao unreachable, sealed or refusing
    │   │   └── Undecryptable          500 token_undecryptable: a stored ciphertext is bad
    │   ├── DatabaseError              PostgreSQL unreachable or failing
    │   ├── IdentityProviderUnavailable 503 sso_provider_unavailable (the OIDC issuer)
    │   ├── RefreshOutcomeUnknown      503 refresh_outcome_unknown: an earlier call is
    │   │                              unanswered and may still land; retry later
    │   ├── LockUnavailable            could not get the refresh lease in time
    │   ├── GatewayUpstreamError       502 hubspot_unreachable: the gateway got no answer
    │   │   └── GatewayTimeout         504 hubspot_timeout: HubSpot did not answer in time
    │   └── WebhookUnreachable         a webhook receiver sent no status (delivery retried)
    ├── RemoteError                    the remote CLI: a broker's problem answer, as sent
    └── FatalError                     configuration or programming error; do not retry
        └── ConfigError                settings missing or invalid (names every bad key)

Exceptions that are not ``BrokerError`` are bugs: they are logged with their traceback and
answered as a bare 500 ``internal`` problem, never swallowed silently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class BrokerError(Exception):
    """Base of every deliberate broker error."""

    status: int = 500
    code: str = "internal"
    title: str = "Internal error"

    def __init__(self, detail: str | None = None, *, code: str | None = None) -> None:
        self.detail = detail or self.title
        if code is not None:
            self.code = code
        super().__init__(self.detail)

    def headers(self) -> dict[str, str]:
        """Extra response headers (e.g. ``Retry-After``)."""
        return {}


class ClientError(BrokerError):
    status = 400
    code = "bad_request"
    title = "Bad request"


class InvalidRequest(ClientError):
    status = 422
    code = "invalid_request"
    title = "Invalid request"

    def __init__(
        self, detail: str, *, errors: Sequence[Mapping[str, str | int]] | None = None
    ) -> None:
        super().__init__(detail)
        self.errors = list(errors or ())


class Unauthenticated(ClientError):
    status = 401
    code = "unauthenticated"
    title = "Authentication required"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="hubspot-token-broker"'}


class Forbidden(ClientError):
    status = 403
    code = "forbidden"
    title = "Forbidden"


class InstallLinkRejected(Forbidden):
    """``/oauth/install`` without a genuine, unexpired operator-signed link for the app."""

    code = "install_link_invalid"
    title = "Install link refused"


class SsoNoRole(Forbidden):
    """An operator the identity provider vouched for, in no group that maps to a role the
    operator page needs (``BROKER_OIDC_ROLES``)."""

    code = "sso_no_role"
    title = "No access to the operator page"


class RateLimitedCaller(ClientError):
    status = 429
    code = "rate_limited"
    title = "Too many requests"

    def __init__(
        self, detail: str | None = None, *, retry_after: float = 1.0, code: str | None = None
    ) -> None:
        super().__init__(detail, code=code)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, round(self.retry_after)))}


class BudgetExhausted(RateLimitedCaller):
    """The gateway could not get the portal's HubSpot budget within its wait bound."""

    code = "portal_budget_exhausted"
    title = "The portal's HubSpot rate budget is used up"


class NotFound(ClientError):
    status = 404
    code = "not_found"
    title = "Not found"


class Conflict(ClientError):
    status = 409
    code = "conflict"
    title = "Conflict"


class NeedsReauth(Conflict):
    code = "needs_reauth"
    title = "Portal needs to be re-authorized"


class Quarantined(Conflict):
    code = "quarantined"
    title = "Portal is quarantined"


class Revoked(ClientError):
    status = 410
    code = "revoked"
    title = "Portal was revoked"


class PayloadTooLarge(ClientError):
    """A request body over the route's limit; refused before it is read in full."""

    status = 413
    code = "body_too_large"
    title = "Request body too large"


class InstallFailed(ClientError):
    status = 400
    code = "install_failed"
    title = "Installation failed"


class SsoFailed(ClientError):
    """An operator page sign-in through OIDC that cannot be trusted or did not finish:
    ``sso_state_invalid`` (missing, expired, altered or another browser's flow),
    ``sso_state_used`` (a callback replayed), ``sso_denied`` (the IdP said no),
    ``sso_code_rejected`` (the IdP refused the code), ``sso_id_token_invalid``."""

    status = 400
    code = "sso_failed"
    title = "Single sign-on failed"


class UpstreamError(BrokerError):
    status = 503
    code = "upstream_unavailable"
    title = "A dependency is unavailable"

    def __init__(
        self, detail: str | None = None, *, code: str | None = None, retry_after: float = 5.0
    ) -> None:
        super().__init__(detail, code=code)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, round(self.retry_after)))}


class HubSpotError(UpstreamError):
    code = "hubspot_error"
    title = "HubSpot refused the request"
    #: The failure class of DESIGN.md ("Failure classes"), used for metrics and portal state.
    failure_class: str = "upstream_unavailable"

    def __init__(
        self,
        detail: str | None = None,
        *,
        hubspot_status: str | None = None,
        http_status: int | None = None,
        retry_after: float | None = None,
        outcome_unknown: bool = False,
    ) -> None:
        super().__init__(detail, retry_after=retry_after if retry_after is not None else 5.0)
        self.hubspot_status = hubspot_status
        self.http_status = http_status
        self.upstream_retry_after = retry_after
        #: The request may have reached HubSpot and no answer came back (a timeout, a cut
        #: connection): a refresh may have happened, the new token with it.
        self.outcome_unknown = outcome_unknown


class GrantDead(HubSpotError):
    status = 409
    code = "needs_reauth"
    title = "HubSpot rejected the portal's refresh token"
    failure_class = "grant_dead"


class AppMisconfigured(HubSpotError):
    status = 503
    code = "app_misconfigured"
    title = "HubSpot rejected the app's client credentials"
    failure_class = "app_misconfigured"


class HubSpotRateLimited(HubSpotError):
    status = 503
    code = "hubspot_rate_limited"
    title = "HubSpot is rate limiting the broker"
    failure_class = "rate_limited"


class HubSpotUnavailable(HubSpotError):
    status = 503
    code = "hubspot_unavailable"
    title = "HubSpot is unavailable"
    failure_class = "upstream_unavailable"


class IdentityProviderUnavailable(UpstreamError):
    """The OIDC issuer (discovery, JWKS or token endpoint) did not answer usefully."""

    code = "sso_provider_unavailable"
    title = "The identity provider is unavailable"


class RefreshOutcomeUnknown(UpstreamError):
    """Another holder's refresh call is unanswered and may still land in the journal: the
    portal waits for it (backing off) instead of being marked ``needs_reauth``."""

    code = "refresh_outcome_unknown"
    title = "A refresh of this portal is still unresolved"


class VaultError(UpstreamError):
    code = "vault_unavailable"
    title = "Vault is unavailable"


class Undecryptable(VaultError):
    """A stored ciphertext does not decrypt in its portal's context: tampering, a row copied
    from another portal, or a key version below ``min_decryption_version``. Not transient."""

    status = 500
    code = "token_undecryptable"
    title = "A stored token cannot be decrypted"

    def headers(self) -> dict[str, str]:
        return {}


class DatabaseError(UpstreamError):
    code = "database_unavailable"
    title = "The database is unavailable"


class LockUnavailable(UpstreamError):
    code = "lock_contention"
    title = "Another replica is refreshing this portal; try again shortly"

    def __init__(self, detail: str | None = None, *, retry_after: float = 1.0) -> None:
        super().__init__(detail, retry_after=retry_after)


class GatewayUpstreamError(UpstreamError):
    """The gateway's request to HubSpot's API failed before an answer (refused, reset, cut)."""

    status = 502
    code = "hubspot_unreachable"
    title = "HubSpot could not be reached"


class GatewayTimeout(GatewayUpstreamError):
    status = 504
    code = "hubspot_timeout"
    title = "HubSpot did not answer in time"


class FatalError(BrokerError):
    code = "fatal"
    title = "Fatal error"


class ConfigError(FatalError):
    code = "config_invalid"
    title = "Invalid configuration"

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class AppRetired(Conflict):
    """The app was retired (``broker apps retire``): it installs no new portal."""

    code = "app_retired"
    title = "The app is retired"


class AppKindMismatch(Conflict):
    """A private-app action on an OAuth app (or a private app of another hub), or an OAuth
    action (install, install link, refresh) on a private app."""

    code = "app_kind_mismatch"
    title = "The app is not of that kind"


class VaultPolicyDenied(Forbidden):
    """The broker's own Vault policy does not allow what a management request asks (the
    replicas' policy is least-privilege: no client-secret writes, no key management). Not
    the caller's fault and not transient: run the command locally under the operator policy,
    or grant the replicas ``deploy/vault/broker-management.hcl``."""

    code = "vault_policy_denied"
    title = "The broker's Vault policy does not allow this"


class WebhookUnreachable(UpstreamError):
    """No HTTP status came back from a receiver. ``reason``: timeout, connect, transport or
    invalid_url (bounded: used as the delivery's error code)."""

    code = "webhook_unreachable"
    title = "A webhook receiver did not answer"

    def __init__(self, reason: str) -> None:
        super().__init__(f"webhook receiver unreachable ({reason})")
        self.reason = reason


class RemoteError(BrokerError):
    """The remote CLI's view of a broker's answer: the problem+json it sent (its status and
    code kept as they were), or no answer at all."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail, code=code)
        self.status = status
