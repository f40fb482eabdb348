"""Probes and metrics: ``/livez`` (the event loop only), ``/readyz`` (every backend),
``/metrics`` (Prometheus text format)."""

from __future__ import annotations

import asyncio

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broker.errors import BrokerError
from broker.web.problems import problem
from broker.web.services import services


async def livez(_: Request) -> Response:
    return JSONResponse({"status": "alive"}, headers={"Cache-Control": "no-store"})


async def readyz(request: Request) -> Response:
    checks = services(request).readiness
    names = list(checks)
    results = await asyncio.gather(
        *(asyncio.wait_for(checks[n](), timeout=2.0) for n in names), return_exceptions=True
    )
    report: dict[str, str] = {}
    for name, result in zip(names, results, strict=True):
        if isinstance(result, BrokerError):
            report[name] = result.code
        elif isinstance(result, BaseException):
            report[name] = "timeout" if isinstance(result, TimeoutError) else "error"
        else:
            report[name] = "ok"
    if all(v == "ok" for v in report.values()):
        return JSONResponse(
            {"status": "ready", "checks": report}, headers={"Cache-Control": "no-store"}
        )
    failing = ", ".join(f"{k}: {v}" for k, v in report.items() if v != "ok")
    return problem(
        503,
        "not_ready",
        "Not ready",
        f"backends failing ({failing})",
        headers={"Retry-After": "5"},
        extra={"checks": report},
    )


async def metrics_endpoint(_: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


routes = [
    Route("/livez", livez, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics_endpoint, methods=["GET"]),
]
