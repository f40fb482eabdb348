"""``POST /admin/portals/{hub_id}/revoke|quarantine|release``: the same use cases, with the
same authorization, as the JSON operator API, each audited under the operator's name. Each
checks the session, the origin and the CSRF token before reading anything else, and returns
(303) to the list or portal page it was sent from, with its filters."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from broker.core.models import PortalKey
from broker.errors import Forbidden, InvalidRequest
from broker.web.admin_page._query import back_to, path_key
from broker.web.admin_page._render import form, pages, redirect
from broker.web.admin_session import Operator, check_csrf, require_operator
from broker.web.params import reject_unknown
from broker.web.services import Services, services

#: ``Revocation.upstream`` -> the ``done`` code the page shows.
_REVOKED = {
    "revoked": "revoked",
    "pending": "revoke_pending",
    "already_revoked": "already_revoked",
}


@dataclass(frozen=True, slots=True)
class _Action:
    svc: Services
    operator: Operator
    key: PortalKey
    reason: str
    back: str | None

    def done(self, code: str, request: Request) -> Response:
        return redirect(back_to(self.back, code, self.key), request)


def _reason(fields: dict[str, str]) -> str:
    reason = fields.get("reason", "").strip()
    if not 0 < len(reason) <= 500:
        raise InvalidRequest(
            "a reason of 1-500 characters is required",
            errors=[{"field": "reason", "message": "1-500 characters"}],
        )
    return reason


async def _action(request: Request, *, reason: bool) -> _Action:
    """Session, same origin, CSRF, then the portal key, the page to return to and (when
    wanted) the reason; the operator may manage the portal."""
    svc = services(request)
    operator = await require_operator(request, svc)
    reject_unknown(request, frozenset())
    allowed = {"app", "user_id", "csrf", "back"} | ({"reason"} if reason else set())
    fields = await form(request, frozenset(allowed))
    check_csrf(operator, fields.get("csrf"))
    key = path_key(request, svc.settings.default_app, fields.get("app"), fields.get("user_id"))
    back = fields.get("back")
    back_to(back, "revoked", key)  # a bad ``back`` is refused before anything is done
    if not operator.caller.may_access(key.app, key.hub_id):
        raise Forbidden(f"caller {operator.caller.name!r} may not manage portal {key}")
    return _Action(svc, operator, key, _reason(fields) if reason else "", back)


@pages
async def revoke(request: Request) -> Response:
    act = await _action(request, reason=True)
    done = await act.svc.operations.revoke(
        act.key, reason=act.reason, actor=act.operator.caller.name
    )
    return act.done(_REVOKED[done.upstream], request)


@pages
async def quarantine(request: Request) -> Response:
    act = await _action(request, reason=True)
    await act.svc.operations.quarantine(act.key, actor=act.operator.caller.name, reason=act.reason)
    return act.done("quarantined", request)


@pages
async def release(request: Request) -> Response:
    act = await _action(request, reason=False)
    await act.svc.operations.release(act.key, actor=act.operator.caller.name)
    return act.done("released", request)
