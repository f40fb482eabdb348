"""The operator page's sessions and CSRF protection (see :mod:`broker.web.admin_page` for
the security properties): a stateless signed cookie naming the caller, re-checked against
the live caller record on every request, and a per-session CSRF token.

Both are MACed by the session signing key (:mod:`broker.core.signing`, a Vault Transit key
no one can read) under two labels, so a session MAC is never a CSRF token. The cookie names
the key version that sealed it; its CSRF token is made with that same version, so after a
rotation both keep working until the overlap ends, and are refused together afterwards."""

from __future__ import annotations

import base64
import hmac
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from starlette.requests import Request

from broker.core.models import Caller, Mac, Role
from broker.core.signing import Keyring, Purpose
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
    version: int = 0  # the session key version that sealed it (0: not sealed yet)


@dataclass(frozen=True, slots=True)
class Operator:
    caller: Caller
    session: Session
    csrf: str


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


async def seal(keyring: Keyring, session: Session) -> str:
    """The cookie value: the session in base64url, a dot, its MAC (``v<version>.<mac>``)."""
    payload = f"{session.caller_id}|{session.expires}|{session.sid}|{session.caller_name}"
    mac = await keyring.sign(Purpose.SESSION, "session", payload.encode())
    return f"{_b64(payload.encode())}.{mac}"


async def unseal(keyring: Keyring, cookie: str | None, now: float) -> Session | None:
    """The session in ``cookie`` if its MAC is right under a key version that has not
    retired and it has not expired, else ``None``."""
    if not cookie or len(cookie) > 600:
        return None
    body, _, rest = cookie.partition(".")
    mac = Mac.parse(rest)
    try:
        payload = _unb64(body)
    except ValueError:  # not base64url, or not ASCII
        return None
    if mac is None or not await keyring.verify(Purpose.SESSION, "session", payload, mac):
        return None
    caller_id, expires, sid, name = payload.decode().split("|", 3)  # we wrote it
    session = Session(int(caller_id), name, int(expires), sid, mac.version)
    return session if session.expires > now else None


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
    """The logged-in operator, re-checked against the live caller record; ``None`` when the
    session is missing, forged, expired, or its caller is gone, disabled or expired."""
    session = await unseal(svc.keyring, request.cookies.get(COOKIE), time.time())
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
    return Operator(caller, session, await csrf_token(svc.keyring, session))


async def require_operator(request: Request, svc: Services) -> Operator:
    same_origin(request)
    operator = await current_operator(request, svc)
    if operator is None:
        raise Unauthenticated(
            "the session is missing, has expired or is no longer valid: log in again",
            code="session_required",
        )
    return operator
