"""Building the HubSpot gateway and the per-portal budget (part of ``open_services``)."""

from __future__ import annotations

from contextlib import AsyncExitStack

from broker.adapters.hubspot_api import HubSpotApiClient
from broker.adapters.redis import RedisCoordinator
from broker.config import Settings
from broker.core.budget import PortalBudget
from broker.core.gateway import Gateway
from broker.core.operations import PortalOperations
from broker.core.tokens import TokenService


def open_gateway(
    settings: Settings,
    stack: AsyncExitStack,
    *,
    tokens: TokenService,
    operations: PortalOperations,
    coordinator: RedisCoordinator,
) -> Gateway:
    api = HubSpotApiClient(settings)
    stack.push_async_callback(api.close)
    budget = PortalBudget(settings, store=coordinator.budget(settings))
    return Gateway(settings, tokens=tokens, operations=operations, api=api, budget=budget)
