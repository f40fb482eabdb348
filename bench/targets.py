"""Baseline servers for the hot-path comparison, each served by one uvicorn worker process
with the same options as ``broker serve`` (``python -m bench.targets KIND --port P --size N``):

* ``starlette``: a bare Starlette route answering a JSON dict, ``json.dumps`` per request and
  ``Cache-Control: no-store`` like the broker's token route, with no middleware, no
  authentication and no bookkeeping;
* ``raw``: a raw ASGI callable sending a pre-encoded body: the floor of uvicorn itself.

Both answer a body of ``--size`` bytes (the size of a real token response) on every path.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def payload(size: int) -> dict[str, Any]:
    """A token-shaped JSON object whose encoding is exactly ``size`` bytes (size >= 200)."""
    body: dict[str, Any] = {
        "access_token": "",
        "token_type": "bearer",
        "expires_at": "2030-01-01T00:00:00.000000Z",
        "expires_in": 1799,
        "hub_id": 12345678,
        "app": "bench",
        "scopes": ["crm.objects.contacts.read", "oauth"],
    }
    body["access_token"] = "C" * max(0, size - len(json.dumps(body)))
    return body


def starlette_app(size: int) -> Starlette:
    body = payload(size)

    async def token(_: Request) -> Response:
        return Response(json.dumps(body), headers=_NO_STORE, media_type="application/json")

    async def ok(_: Request) -> Response:
        return Response(b"ok")

    return Starlette(
        routes=[Route("/v1/portals/{hub_id}/token", token), Route("/livez", ok)],
    )


def raw_asgi_app(size: int) -> Any:
    encoded = json.dumps(payload(size)).encode()
    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(encoded)).encode()),
            (b"cache-control", b"no-store"),
            (b"pragma", b"no-cache"),
        ],
    }
    response = {"type": "http.response.body", "body": encoded}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await send(start)
        await send(response)

    return app


def serve(app: Any, port: int) -> None:
    """The options of ``broker serve`` (broker/cli.py ``cmd_serve``)."""
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        access_log=False,
        log_config=None,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.targets")
    parser.add_argument("kind", choices=["starlette", "raw"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--size", type=int, default=700)
    args = parser.parse_args()
    app = starlette_app(args.size) if args.kind == "starlette" else raw_asgi_app(args.size)
    serve(app, args.port)


if __name__ == "__main__":
    main()
