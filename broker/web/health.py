"""Probes and metrics: ``/livez`` (the event loop only), ``/readyz`` (can this replica serve
tokens: see :mod:`broker.core.health`), ``/metrics`` (Prometheus text format).

``/readyz?verbose`` adds every backend's state for people (checked now); the probe itself
never depends on Redis, Vault or HubSpot."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broker.web.problems import problem
from broker.web.services import services

_NO_STORE = {"Cache-Control": "no-store"}


async def livez(_: Request) -> Response:
    return JSONResponse({"status": "alive"}, headers=_NO_STORE)


async def readyz(request: Request) -> Response:
    health = services(request).health
    state = await health.readiness()
    extra: dict[str, object] = {"reason": state.reason}
    if "verbose" in request.query_params:
        extra["backends"] = await health.backends()
    if state.ready:
        return JSONResponse({"status": "ready", **extra}, headers=_NO_STORE)
    return problem(
        503,
        "not_ready",
        "Not ready",
        f"this replica cannot serve tokens now ({state.reason})",
        headers={"Retry-After": "5"},
        extra=extra,
    )


async def metrics_endpoint(_: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


routes = [
    Route("/livez", livez, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics_endpoint, methods=["GET"]),
]
