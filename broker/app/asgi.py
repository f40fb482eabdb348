"""The ASGI apps :mod:`broker.server` serves: the internal listener (token API, management
API, operator page, health, metrics), the public one (OAuth install and callback), and
``create_app`` with every route on one app whose lifespan opens the services."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.types import Lifespan

from broker.app.services import open_services
from broker.config import Settings
from broker.errors import BrokerError
from broker.web import admin, admin_page, gateway, health, manage, oauth
from broker.web.api import TokenRoute
from broker.web.middleware import RequestIdMiddleware
from broker.web.problems import HANDLERS
from broker.web.services import Services

log = structlog.get_logger(__name__)


class State(TypedDict):
    services: Services


async def warm_up(services: Services) -> None:
    """Pre-warm the token cache (bounded by ``prewarm_seconds``), then turn ready, whatever
    happened: serving cold beats not serving (requests load what they need)."""
    settings = services.settings
    started = time.monotonic()
    try:
        if settings.prewarm_portals > 0:
            warmed = await asyncio.wait_for(
                services.tokens.prewarm(settings.prewarm_portals), settings.prewarm_seconds
            )
            log.info("prewarm.done", portals=warmed, seconds=round(time.monotonic() - started, 3))
    except TimeoutError:
        log.warning("prewarm.incomplete", error="timeout", seconds=settings.prewarm_seconds)
    except BrokerError as exc:
        log.warning("prewarm.incomplete", error=exc.code)
    except Exception as exc:  # e.g. a statement timeout: never a reason to stay unready
        log.warning("prewarm.incomplete", error=type(exc).__name__)
    finally:
        services.health.serving()


def internal_app(*, with_oauth: bool, lifespan: Lifespan[Starlette] | None = None) -> TokenRoute:
    """``/v1/*``, ``/admin``, ``/metrics`` and the probes (and the install flow too unless a
    public listener serves it): the token route and the gateway (raw ASGI, see
    :mod:`broker.web.api` and :mod:`broker.web.gateway`) in front of the Starlette app."""
    routes = [*admin.routes, *manage.routes, *gateway.routes, *admin_page.routes, *health.routes]
    return TokenRoute(
        gateway.GatewayRoute(
            Starlette(
                routes=[*routes, *oauth.routes] if with_oauth else routes,
                middleware=[Middleware(RequestIdMiddleware)],
                exception_handlers=HANDLERS,
                lifespan=lifespan,
            )
        )
    )


def public_app() -> Starlette:
    """Only the install flow (``/oauth/*``): what an ingress exposes to browsers."""
    return Starlette(
        routes=oauth.routes,
        middleware=[Middleware(RequestIdMiddleware)],
        exception_handlers=HANDLERS,
    )


def create_app(settings: Settings) -> TokenRoute:
    """Every route on one app whose lifespan builds the services (tests, one listener)."""

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[State]:
        async with open_services(settings) as services:
            await warm_up(services)
            yield {"services": services}

    return internal_app(with_oauth=True, lifespan=lifespan)
