"""The Python client for internal services: HubSpot access tokens from the broker.

    from broker.client import BrokerClient, HubSpotAuth

    with BrokerClient("http://broker:8080", caller_key, app="my-app") as broker:
        token = broker.token(12345678)               # cached until min_ttl is at risk
        with httpx.Client(auth=HubSpotAuth(broker, 12345678)) as hubspot:
            hubspot.get("https://api.hubapi.com/crm/v3/objects/contacts")

It needs only ``httpx``: it imports nothing else from ``broker`` (the server's modules and
their dependencies are not required), and ``hubspot-api-client`` only inside
:func:`hubspot_client`. Errors are documented in ``broker.client._errors``.
"""

from broker.client._async import AsyncBrokerClient
from broker.client._auth import HubSpotAuth
from broker.client._base import ClientState
from broker.client._errors import (
    BrokerClientError,
    BrokerUnavailable,
    InvalidRequest,
    NeedsReauth,
    PortalNotFound,
    PortalRevoked,
    Quarantined,
    RateLimited,
    Unauthorized,
)
from broker.client._hubspot import hubspot_client
from broker.client._retry import RetryPolicy
from broker.client._sync import BrokerClient
from broker.client._token import AccessToken, Credentials

__all__ = [
    "AccessToken",
    "AsyncBrokerClient",
    "BrokerClient",
    "BrokerClientError",
    "BrokerUnavailable",
    "ClientState",
    "Credentials",
    "HubSpotAuth",
    "InvalidRequest",
    "NeedsReauth",
    "PortalNotFound",
    "PortalRevoked",
    "Quarantined",
    "RateLimited",
    "RetryPolicy",
    "Unauthorized",
    "hubspot_client",
]
