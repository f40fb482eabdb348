"""The operator page's sessions and CSRF protection (see :mod:`broker.web.admin_page` for
the security properties): a stateless signed cookie naming the caller, re-checked against
the live caller record on every request, and a per-session CSRF token."""

from __future__ import annotations

import base64
import hmac
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from starlette.requests import Request

from broker.core.models import Caller, Role
from broker.errors import Forbidden, Unauthenticated
from broker.web.services import Services

COOKIE = "htb_admin"
SESSION_SECONDS = 30 * 60


@dataclass(frozen=True, slots=True)
class Session:
    caller_id: int
    caller_name: str
    expires: int  # unix seconds
    sid: str


@dataclass(frozen=True, slots=True)
class Keys:
    session: bytes
    csrf: bytes


@dataclass(frozen=True, slots=True)
class Operator:
    caller: Caller
    session: Session
    csrf: str


def session_keys(svc: Services) -> Keys:
    # Derived from the per-deployment key (random, in Vault, the same on every replica),
    # each under its own label, so no two purposes share a key.
    root = svc.web_secret
    return Keys(
        session=hmac.digest(root, b"hubspot-token-broker/admin-page/session/v1", "sha256"),
        csrf=hmac.digest(root, b"hubspot-token-broker/admin-page/csrf/v1", "sha256"),
    )


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


def seal(key: bytes, session: Session) -> str:
    """The cookie value: the session in base64url, a dot, its HMAC-SHA256."""
    payload = f"{session.caller_id}|{session.expires}|{session.sid}|{session.caller_name}"
    return f"{_b64(payload.encode())}.{_b64(hmac.digest(key, payload.encode(), 'sha256'))}"


def unseal(key: bytes, cookie: str | None, now: float) -> Session | None:
    """The session in ``cookie`` if its MAC is right and it has not expired, else ``None``."""
    if not cookie or len(cookie) > 600:
        return None
    body, _, mac = cookie.partition(".")
    try:
        payload, presented = _unb64(body), _unb64(mac)
    except ValueError:  # not base64url, or not ASCII
        return None
    if not hmac.compare_digest(presented, hmac.digest(key, payload, "sha256")):
        return None
    caller_id, expires, sid, name = payload.decode().split("|", 3)  # we wrote it
    session = Session(int(caller_id), name, int(expires), sid)
    return session if session.expires > now else None


def csrf_token(keys: Keys, session: Session) -> str:
    return _b64(hmac.digest(keys.csrf, session.sid.encode(), "sha256"))


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
    """The logged-in operator, re-checked against the live caller record; ``None`` when the
    session is missing, forged, expired, or its caller is gone, disabled or expired."""
    keys = session_keys(svc)
    session = unseal(keys.session, request.cookies.get(COOKIE), time.time())
    if session is None:
        return None
    caller = next((c for c in await svc.callers.list() if c.id == session.caller_id), None)
    if (
        caller is None
        or caller.name != session.caller_name
        or caller.disabled
        or (caller.expires_at is not None and caller.expires_at <= datetime.now(UTC))
    ):
        return None
    if not caller.may(Role.PORTALS_ADMIN):
        raise Forbidden(f"caller {caller.name!r} lacks the portals:admin role")
    svc.callers.admit(caller)
    return Operator(caller, session, csrf_token(keys, session))


async def require_operator(request: Request, svc: Services) -> Operator:
    same_origin(request)
    operator = await current_operator(request, svc)
    if operator is None:
        raise Unauthenticated(
            "the session is missing, has expired or is no longer valid: log in again",
            code="session_required",
        )
    return operator
