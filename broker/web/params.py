"""The internal API for services: ``GET /v1/portals/{hub_id}/token``."""

from __future__ import annotations

import json
from collections.abc import Iterable
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from broker.core.models import APP_SLUG, PortalKey
from broker.errors import InvalidRequest
from broker.web.services import services

_MAX_BIGINT = 2**63 - 1
_TOKEN_PARAMS = frozenset({"app", "user_id", "min_ttl"})
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def parse_int(raw: str | None, name: str, *, minimum: int = 1) -> int | None:
    """An integer in [minimum, 2**63-1], ``None`` when absent, else a 422 naming it."""
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 19 or not minimum <= int(raw) <= _MAX_BIGINT:
        raise InvalidRequest(
            f"{name} must be an integer >= {minimum}",
            errors=[{"field": name, "message": f"not an integer >= {minimum}"}],
        )
    return int(raw)


def reject_unknown(request: Request, allowed: frozenset[str]) -> None:
    """Unknown query parameters are a 422: a typo like ``min_tll`` must not pass silently."""
    check_names(request.query_params.keys(), allowed)


def check_names(names: Iterable[str], allowed: frozenset[str]) -> None:
    unknown = sorted(set(names) - allowed)
    if unknown:
        raise InvalidRequest(
            f"unknown query parameter(s): {', '.join(unknown)[:200]}",
            errors=[{"field": name[:64], "message": "unknown parameter"} for name in unknown[:10]],
        )


def _token_query(request: Request) -> dict[str, str]:
    """The token endpoint's query in one pass over the raw string (the hot path): the last
    value of a repeated name wins, as Starlette's does; unknown names are a 422."""
    raw: bytes = request.scope["query_string"]
    if not raw:
        return {}
    query = dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True))
    if not query.keys() <= _TOKEN_PARAMS:
        check_names(query, _TOKEN_PARAMS)
    return query


def parse_app(raw: str | None, default: str) -> str:
    """The ``app`` query parameter: absent means the default app; empty is an error."""
    app = default if raw is None else raw
    if not APP_SLUG.match(app):
        raise InvalidRequest(
            "app must be an app slug: 1-63 lowercase letters, digits or '-'",
            errors=[{"field": "app", "message": "not an app slug"}],
        )
    return app


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


async def get_token(request: Request) -> Response:
    svc = services(request)
    caller = await svc.callers.authenticate(bearer(request))
    svc.callers.admit(caller)
    query = _token_query(request)
    hub_id = parse_int(request.path_params["hub_id"], "hub_id") or 0
    user_id = parse_int(query.get("user_id"), "user_id")
    min_ttl = svc.tokens.resolve_min_ttl(parse_int(query.get("min_ttl"), "min_ttl", minimum=0))
    app = parse_app(query.get("app"), svc.settings.default_app)
    issued = await svc.tokens.get_token(caller, PortalKey(app, hub_id, user_id), min_ttl)
    body = {
        "access_token": issued.access_token,
        "token_type": "bearer",
        "expires_at": issued.expires_at.isoformat().replace("+00:00", "Z"),
        "expires_in": issued.expires_in,
        "hub_id": hub_id,
        "app": app,
        "scopes": list(issued.scopes),
    }
    if user_id is not None:
        body["user_id"] = user_id
    return Response(json.dumps(body), headers=_NO_STORE, media_type="application/json")


routes = [Route("/v1/portals/{hub_id}/token", get_token, methods=["GET"])]
