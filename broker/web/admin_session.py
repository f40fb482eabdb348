"""The operator page's sessions and CSRF protection (see :mod:`broker.web.admin_page` for
the security properties): a stateless signed cookie naming the operator, and a per-session
CSRF token.

A session is one of two kinds, recorded in the cookie:

- ``caller``: logged in with a caller key; it names the caller, and every request re-checks
  the live caller record (disabled, expired, renamed or without ``portals:admin``: over).
- ``oidc``: signed in through the OpenID Provider (:mod:`broker.core.sso`); it carries the
  roles and apps its groups mapped to, sealed, and ends at the normal session lifetime.

Both are sealed by the session signing key (:mod:`broker.core.signing`, a Vault Transit key
no one can read) under their own labels, so a session MAC is never a CSRF token. The cookie
names the key version that sealed it; its CSRF token is made with that same version, so
after a rotation both keep working until the overlap ends, and are refused together
afterwards."""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from starlette.requests import Request
from starlette.responses import Response

from broker.core.models import Caller, Mac, Role
from broker.core.signing import Keyring, Purpose
from broker.core.sso import sso_caller
from broker.errors import Forbidden, Unauthenticated
from broker.web.services import Services

COOKIE = "htb_admin"
SESSION_SECONDS = 30 * 60


_LABEL = "admin-session"
_FIELDS = {"kind", "id", "name", "expires", "sid", "roles", "apps"}


@dataclass(frozen=True, slots=True)
class Session:
    caller_id: int
    caller_name: str
    expires: int  # unix seconds
    sid: str
    version: int = 0  # the session key version that sealed it (0: not sealed yet)
    kind: Literal["caller", "oidc"] = "caller"
    #: ``oidc`` only: what the identity provider's groups mapped to (apps None: every app).
    roles: frozenset[str] = frozenset()
    apps: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class Operator:
    caller: Caller
    session: Session
    csrf: str


async def seal(keyring: Keyring, session: Session) -> str:
    """The cookie value: ``base64url(JSON) "." MAC`` (:meth:`Keyring.seal`)."""
    return await keyring.seal(
        Purpose.SESSION,
        _LABEL,
        {
            "kind": session.kind,
            "id": session.caller_id,
            "name": session.caller_name,
            "expires": session.expires,
            "sid": session.sid,
            "roles": sorted(session.roles),
            "apps": None if session.apps is None else sorted(session.apps),
        },
    )


async def unseal(keyring: Keyring, cookie: str | None, now: float) -> Session | None:
    """The session in ``cookie`` if its MAC is right under a key version that has not
    retired, it is well formed and it has not expired, else ``None``."""
    if not cookie or len(cookie) > 3000:
        return None
    mac = Mac.parse(cookie.partition(".")[2])
    data = None if mac is None else await keyring.open(Purpose.SESSION, _LABEL, cookie)
    if mac is None or not isinstance(data, dict) or set(data) != _FIELDS:
        return None
    kind, roles, apps = data["kind"], data["roles"], data["apps"]
    if kind not in ("caller", "oidc") or not isinstance(roles, list):
        return None
    if not (apps is None or isinstance(apps, list)):
        return None
    if not (isinstance(data["name"], str) and isinstance(data["sid"], str)):
        return None
    if not (type(data["id"]) is int and type(data["expires"]) is int):
        return None
    session = Session(
        data["id"],
        data["name"],
        data["expires"],
        data["sid"],
        mac.version,
        kind,
        frozenset(map(str, roles)),
        None if apps is None else frozenset(map(str, apps)),
    )
    return session if session.expires > now else None


async def start_session(
    response: Response, request: Request, svc: Services, session: Session, *, now: int
) -> None:
    """Set the session cookie: HttpOnly, SameSite=Strict, Path=/admin, Secure over https,
    living until the session expires (``now``: when it started, unix seconds)."""
    response.set_cookie(
        COOKIE,
        await seal(svc.keyring, session),
        max_age=session.expires - now,
        path="/admin",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


async def csrf_token(keyring: Keyring, session: Session) -> str:
    mac = await keyring.sign(Purpose.SESSION, "csrf", session.sid.encode(), version=session.version)
    return str(mac)


def same_origin(request: Request) -> None:
    """Refuse a POST that a browser says comes from another origin (CSRF, login CSRF)."""
    origin = request.headers.get("origin")
    own = f"{request.url.scheme}://{request.url.netloc}".lower()
    site = request.headers.get("sec-fetch-site")
    if (origin is not None and origin.lower() != own) or site in ("cross-site", "same-site"):
        raise Forbidden("the form was not sent from this page's origin", code="origin_mismatch")


def check_csrf(operator: Operator, presented: str | None) -> None:
    if presented is None or not hmac.compare_digest(presented.encode(), operator.csrf.encode()):
        raise Forbidden(
            "the form's CSRF token is missing or belongs to another session: reload the "
            "page and try again",
            code="csrf_invalid",
        )


async def current_operator(request: Request, svc: Services) -> Operator | None:
    """The logged-in operator; ``None`` when the session is missing, forged or expired, or
    (a caller session) its caller is gone, disabled or expired."""
    session = await unseal(svc.keyring, request.cookies.get(COOKIE), time.time())
    if session is None:
        return None
    if session.kind == "oidc":
        caller = sso_caller(session.caller_name, session.roles, session.apps)
    else:
        found = await _live_caller(svc, session)
        if found is None:
            return None
        caller = found
    if not caller.may(Role.PORTALS_ADMIN):
        raise Forbidden(f"caller {caller.name!r} lacks the portals:admin role")
    svc.callers.admit(caller)
    return Operator(caller, session, await csrf_token(svc.keyring, session))


async def _live_caller(svc: Services, session: Session) -> Caller | None:
    caller = next((c for c in await svc.callers.list() if c.id == session.caller_id), None)
    if (
        caller is None
        or caller.name != session.caller_name
        or caller.disabled
        or (caller.expires_at is not None and caller.expires_at <= datetime.now(UTC))
    ):
        return None
    return caller


async def require_operator(request: Request, svc: Services) -> Operator:
    same_origin(request)
    operator = await current_operator(request, svc)
    if operator is None:
        raise Unauthenticated(
            "the session is missing, has expired or is no longer valid: log in again",
            code="session_required",
        )
    return operator
