"""The Python client for internal services: HubSpot access tokens from the broker.

    from hubspot_token_broker_client import BrokerClient, HubSpotAuth

    with BrokerClient("http://broker:8080", caller_key, app="my-app") as broker:
        token = broker.token(12345678)               # cached until min_ttl is at risk
        with httpx.Client(auth=HubSpotAuth(broker, 12345678)) as hubspot:
            hubspot.get("https://api.hubapi.com/crm/v3/objects/contacts")

Or let the broker call HubSpot (:func:`gateway_client`, ``hubspot_client(..., gateway=True)``):
the token never reaches the service, and each portal's rate budget is shared by all.

It needs only ``httpx``: it imports nothing else from ``broker`` (the server's modules and
their dependencies are not required), and ``hubspot-api-client`` only inside
:func:`hubspot_client`. Errors are documented in ``hubspot_token_broker_client._errors``.
"""

from hubspot_token_broker_client._async import AsyncBrokerClient
from hubspot_token_broker_client._auth import HubSpotAuth
from hubspot_token_broker_client._base import ClientState
from hubspot_token_broker_client._errors import (
    PROBLEM_CODES,
    BrokerClientError,
    BrokerUnavailable,
    InvalidRequest,
    NeedsReauth,
    PortalNotFound,
    PortalRevoked,
    Quarantined,
    RateLimited,
    ServerError,
    Unauthorized,
)
from hubspot_token_broker_client._gateway import async_gateway_client, gateway_client
from hubspot_token_broker_client._hubspot import hubspot_client
from hubspot_token_broker_client._retry import RetryPolicy
from hubspot_token_broker_client._sync import BrokerClient
from hubspot_token_broker_client._token import AccessToken, Credentials

__all__ = [
    "PROBLEM_CODES",
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
    "ServerError",
    "Unauthorized",
    "async_gateway_client",
    "gateway_client",
    "hubspot_client",
]
