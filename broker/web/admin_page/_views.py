"""What the templates are given about a portal: the operator API's view (never a token, a
ciphertext or a secret) and what the page derives from it. Templates never see a
:class:`~broker.core.models.PortalRecord`, so no template can show a ciphertext."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from broker.core.admin import portal_view
from broker.core.models import PortalKey, PortalRecord, PortalState
from broker.web.admin_page._render import redirect
from broker.web.admin_session import COOKIE, Operator, current_operator
from broker.web.services import Services


@dataclass(frozen=True, slots=True)
class PortalRow:
    view: dict[str, Any]
    #: The row's HTML id: ``portal-<app>-<hub>`` (``-u<user>`` for a user-level grant).
    anchor: str
    #: ``/admin/portals/<hub>?app=...``: the portal's own page.
    url: str
    key: str
    expires_in: str | None
    may_quarantine: bool
    may_release: bool
    may_revoke: bool


def portal_url(key: PortalKey) -> str:
    params = {"app": key.app} | ({} if key.user_id is None else {"user_id": str(key.user_id)})
    return f"/admin/portals/{key.hub_id}?{urlencode(params)}"


def portal_row(record: PortalRecord) -> PortalRow:
    key, state = record.key, record.state
    expires_in = None
    if record.access_ct is not None and record.access_expires_at is not None:
        left = record.remaining()
        expires_in = f"in {left / 60:.0f} min" if left > 0 else "expired"
    suffix = "" if key.user_id is None else f"-u{key.user_id}"
    return PortalRow(
        view=portal_view(record),
        anchor=f"portal-{key.app}-{key.hub_id}{suffix}",
        url=portal_url(key),
        key=str(key),
        expires_in=expires_in,
        may_quarantine=state in (PortalState.ACTIVE, PortalState.REFRESH_FAILING),
        may_release=state is PortalState.QUARANTINED,
        may_revoke=state is not PortalState.REVOKED,
    )


async def operator_or_login(request: Request, svc: Services) -> Operator | Response:
    """The signed-in operator, or the way to the login page (dropping a dead cookie)."""
    operator = await current_operator(request, svc)
    if operator is None:
        return redirect("/admin/login", request, clear_session=COOKIE in request.cookies)
    return operator


def signed_in(operator: Operator) -> dict[str, Any]:
    """The header's context: who is signed in until when, and the CSRF token for forms."""
    return {
        "operator": operator.caller.name,
        "session_ends": datetime.fromtimestamp(operator.session.expires, UTC),
        "csrf": operator.csrf,
    }
