"""The `/_sim/` control API: the `Simulator` methods over JSON, for out-of-process tests.

Bad input answers 400 `{"error": "bad_request", "message": ...}`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from broker.dev.simulator._model import DEFAULT_APP_SCOPES, DEFAULT_USER, DEFAULT_USER_ID
from broker.dev.simulator.state import Simulator

Body = Mapping[str, object]
_T = TypeVar("_T")


class BadInput(ValueError):
    """Control input that does not have the expected shape."""


def _only(body: Body, allowed: set[str]) -> Body:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadInput(f"unknown field(s): {', '.join(unknown)}")
    return body


def _opt_int(body: Body, name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadInput(f"{name} must be an integer")
    return value


def _int(body: Body, name: str) -> int:
    return _required(_opt_int(body, name), name)


def _opt_str(body: Body, name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise BadInput(f"{name} must be a string")
    return value


def _str(body: Body, name: str) -> str:
    return _required(_opt_str(body, name), name)


def _required(value: _T | None, name: str) -> _T:
    if value is None:
        raise BadInput(f"{name} is required")
    return value


def _opt_strs(body: Body, name: str) -> list[str] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise BadInput(f"{name} must be a list of strings")
    return value


def _strs(body: Body, name: str) -> list[str]:
    value = _opt_strs(body, name)
    if value is None:
        raise BadInput(f"{name} is required")
    return value


def _default(value: _T | None, default: _T) -> _T:
    return default if value is None else value


async def _json_object(request: Request) -> Body:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as error:
        raise BadInput(f"body is not JSON: {error}") from None
    if not isinstance(body, dict):
        raise BadInput("body must be a JSON object")
    return body


Endpoint = Callable[[Request, Body], Awaitable[Response]]


def _guarded(endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    async def handle(request: Request) -> Response:
        try:
            return await endpoint(request, await _json_object(request))
        except ValueError as error:  # BadInput, and the simulator's own validation
            return JSONResponse({"error": "bad_request", "message": str(error)}, status_code=400)

    return handle


def control_routes(sim: Simulator) -> list[BaseRoute]:
    async def add_app(request: Request, body: Body) -> Response:
        fields = {"client_id", "client_secrets", "redirect_uris", "scopes", "optional_scopes"}
        _only(body, fields | {"app_id"})
        client_id = _str(body, "client_id")
        app_id = sim.add_app(
            client_id,
            _strs(body, "client_secrets"),
            _strs(body, "redirect_uris"),
            _default(_opt_strs(body, "scopes"), DEFAULT_APP_SCOPES),
            _default(_opt_strs(body, "optional_scopes"), ()),
            app_id=_opt_int(body, "app_id"),
        )
        return JSONResponse({"client_id": client_id, "app_id": app_id}, status_code=201)

    async def add_portal(request: Request, body: Body) -> Response:
        _only(body, {"hub_id", "hub_domain", "user", "user_id", "scopes"})
        hub_id = _int(body, "hub_id")
        sim.add_portal(
            hub_id,
            _opt_str(body, "hub_domain"),
            user=_default(_opt_str(body, "user"), DEFAULT_USER),
            user_id=_default(_opt_int(body, "user_id"), DEFAULT_USER_ID),
            scopes=_opt_strs(body, "scopes"),
        )
        return JSONResponse({"hub_id": hub_id}, status_code=201)

    async def add_user(request: Request, body: Body) -> Response:
        _only(body, {"user", "user_id"})
        sim.add_user(request.path_params["hub_id"], _str(body, "user"), _int(body, "user_id"))
        return Response(status_code=204)

    async def remove_portal(request: Request, body: Body) -> Response:
        sim.remove_portal(request.path_params["hub_id"])
        return Response(status_code=204)

    async def kill(request: Request, body: Body) -> Response:
        _only(body, {"client_id", "access_tokens"})
        access_tokens = body.get("access_tokens", True)
        if not isinstance(access_tokens, bool):
            raise BadInput("access_tokens must be a boolean")
        killed = sim.kill_grant(
            request.path_params["hub_id"],
            client_id=_opt_str(body, "client_id"),
            access_tokens=access_tokens,
        )
        return JSONResponse({"killed": killed})

    async def config(request: Request, body: Body) -> Response:
        settings = sim.configure(**body) if request.method == "POST" else sim.settings
        return JSONResponse(settings.as_json())

    async def faults(request: Request, body: Body) -> Response:
        if request.method == "DELETE":
            sim.clear_faults()
            return Response(status_code=204)
        _only(body, {"endpoint", "status", "retry_after", "kind", "times", "hub_id"})
        sim.add_fault(
            _str(body, "endpoint"),
            status=_opt_int(body, "status"),
            retry_after=_opt_int(body, "retry_after"),
            kind=_opt_str(body, "kind") or "status",
            times=_opt_int(body, "times"),
            hub_id=_opt_int(body, "hub_id"),
        )
        return JSONResponse({"ok": True}, status_code=201)

    async def clock(request: Request, body: Body) -> Response:
        _only(body, {"advance"})
        advance = body.get("advance")
        if isinstance(advance, bool) or not isinstance(advance, int | float):
            raise BadInput("advance must be a number of seconds")
        offset = sim.advance_clock(advance)
        return JSONResponse({"offset": offset, "now": sim.now()})

    async def counters(request: Request, body: Body) -> Response:
        by_hub = {str(hub): n for hub, n in sim.refreshes_by_hub().items()}
        return JSONResponse({"counters": sim.counters(), "refreshes_by_hub": by_hub})

    async def reset(request: Request, body: Body) -> Response:
        sim.reset()
        return Response(status_code=204)

    async def issue_code(request: Request, body: Body) -> Response:
        _only(body, {"client_id", "redirect_uri", "hub_id", "user_id", "scopes"})
        code = sim.issue_code(
            _str(body, "client_id"),
            _str(body, "redirect_uri"),
            _int(body, "hub_id"),
            user_id=_opt_int(body, "user_id"),
            scopes=_opt_strs(body, "scopes"),
        )
        return JSONResponse({"code": code}, status_code=201)

    async def private_app_token(request: Request, body: Body) -> Response:
        _only(body, {"scopes"})
        scopes = _default(_opt_strs(body, "scopes"), DEFAULT_APP_SCOPES)
        token = sim.create_private_app_token(request.path_params["hub_id"], scopes)
        return JSONResponse({"token": token}, status_code=201)

    async def rotate_private_app_token(request: Request, body: Body) -> Response:
        _only(body, {"token", "old_expires_in"})
        old_expires_in = _default(_opt_int(body, "old_expires_in"), 0)
        token = sim.rotate_private_app_token(_str(body, "token"), old_expires_in=old_expires_in)
        return JSONResponse({"token": token}, status_code=201)

    return [
        Route("/apps", _guarded(add_app), methods=["POST"]),
        Route("/portals", _guarded(add_portal), methods=["POST"]),
        Route("/portals/{hub_id:int}", _guarded(remove_portal), methods=["DELETE"]),
        Route("/portals/{hub_id:int}/users", _guarded(add_user), methods=["POST"]),
        Route("/portals/{hub_id:int}/kill", _guarded(kill), methods=["POST"]),
        Route("/config", _guarded(config), methods=["GET", "POST"]),
        Route("/faults", _guarded(faults), methods=["POST", "DELETE"]),
        Route("/clock", _guarded(clock), methods=["POST"]),
        Route("/counters", _guarded(counters), methods=["GET"]),
        Route("/reset", _guarded(reset), methods=["POST"]),
        Route("/codes", _guarded(issue_code), methods=["POST"]),
        Route(
            "/portals/{hub_id:int}/private-app-tokens",
            _guarded(private_app_token),
            methods=["POST"],
        ),
        Route("/private-app-tokens/rotate", _guarded(rotate_private_app_token), methods=["POST"]),
    ]
