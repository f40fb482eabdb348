"""HubSpot's routes over a `Simulator`: the paths and wire formats of hubspot-oauth.md.

Handlers only translate HTTP to the simulator's entry points and back; all decisions are
made (under the simulator's lock) in `_oauth` and `_api`.
"""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from broker.dev.simulator._control import control_routes
from broker.dev.simulator._pages import DECISION_PATH
from broker.dev.simulator._replies import Reply
from broker.dev.simulator.state import Simulator

TOKEN_VERSIONS = ("2026-03", "2026-09", "v3", "v1")
INTROSPECTION_VERSIONS = ("2026-03", "2026-09", "v3")
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"


def to_response(reply: Reply) -> Response:
    headers = dict(reply.headers)
    if reply.json is not None:
        return JSONResponse(dict(reply.json), status_code=reply.status, headers=headers)
    if reply.html is not None:
        return HTMLResponse(reply.html, status_code=reply.status, headers=headers)
    return Response(status_code=reply.status, headers=headers)


async def read_form(request: Request) -> dict[str, str] | None:
    """The urlencoded body (first value of each key), or None for any other content type."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != FORM_CONTENT_TYPE:
        return None
    body = (await request.body()).decode("utf-8", "replace")
    form: dict[str, str] = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        form.setdefault(key, value)
    return form


def _first_values(request: Request) -> dict[str, str]:
    params: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        params.setdefault(key, value)
    return params


def hubspot_routes(sim: Simulator) -> list[BaseRoute]:
    async def delay(endpoint: str) -> None:
        seconds = sim.latency_for(endpoint)
        if seconds > 0:
            await asyncio.sleep(seconds)

    async def authorize(request: Request) -> Response:
        await delay("authorize")
        return to_response(sim.handle_authorize(_first_values(request)))

    async def authorize_decision(request: Request) -> Response:
        return to_response(sim.handle_authorize_decision(await read_form(request) or {}))

    async def token(request: Request) -> Response:
        form = await read_form(request)
        await delay("token")
        return to_response(sim.handle_token(form))

    async def introspect(request: Request) -> Response:
        form = await read_form(request)
        await delay("introspect")
        return to_response(sim.handle_introspect(form))

    async def revoke(request: Request) -> Response:
        form = await read_form(request)
        await delay("revoke")
        return to_response(sim.handle_revoke(form))

    async def v1_access_token(request: Request) -> Response:
        await delay("introspect")
        return to_response(sim.handle_v1_access_token(request.path_params["token"]))

    async def v1_refresh_token(request: Request) -> Response:
        given = request.path_params["token"]
        if request.method == "DELETE":
            await delay("revoke")
            return to_response(sim.handle_v1_delete_refresh_token(given))
        await delay("introspect")
        return to_response(sim.handle_v1_refresh_token(given))

    async def uninstall(request: Request) -> Response:
        await delay("uninstall")
        return to_response(sim.handle_uninstall(request.headers.get("authorization")))

    async def contacts(request: Request) -> Response:
        await delay("contacts")
        url = str(request.url.replace(query=""))
        reply = sim.handle_contacts(
            request.headers.get("authorization"), _first_values(request), url
        )
        return to_response(reply)

    routes: list[BaseRoute] = [
        Route("/oauth/authorize", authorize, methods=["GET"]),
        Route(DECISION_PATH, authorize_decision, methods=["POST"]),
        Route("/oauth/v1/access-tokens/{token}", v1_access_token, methods=["GET"]),
        Route("/oauth/v1/refresh-tokens/{token}", v1_refresh_token, methods=["GET", "DELETE"]),
        Route("/appinstalls/2026-03/external-install", uninstall, methods=["DELETE"]),
        Route("/crm/v3/objects/contacts", contacts, methods=["GET"]),
    ]
    routes += [Route(f"/oauth/{v}/token", token, methods=["POST"]) for v in TOKEN_VERSIONS]
    for version in INTROSPECTION_VERSIONS:
        routes.append(Route(f"/oauth/{version}/token/introspect", introspect, methods=["POST"]))
        routes.append(Route(f"/oauth/{version}/token/revoke", revoke, methods=["POST"]))
    return routes


def create_app(sim: Simulator) -> Starlette:
    """The simulator's ASGI app: HubSpot's endpoints plus the `/_sim/` control API."""
    routes = hubspot_routes(sim)
    routes.append(Mount("/_sim", routes=control_routes(sim)))
    return Starlette(routes=routes)
