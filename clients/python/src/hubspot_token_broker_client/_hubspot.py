"""HubSpot's official SDK (``hubspot-api-client``) with a token from the broker.

The SDK is imported only when :func:`hubspot_client` is called, so services that never
use it need not install it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hubspot_token_broker_client._sync import BrokerClient

if TYPE_CHECKING:
    from hubspot import HubSpot


def hubspot_client(
    client: BrokerClient,
    hub_id: int,
    *,
    app: str | None = None,
    user_id: int | None = None,
    min_ttl: int | None = None,
    host: str | None = None,
) -> HubSpot:
    """A ``hubspot.HubSpot`` whose calls carry a broker token for ``hub_id``.

    The SDK holds a fixed token: build one per unit of work (it is cheap; the token comes
    from the broker client's cache) rather than keeping it for longer than ``min_ttl``
    seconds (``client.default_min_ttl`` when not given). ``host`` replaces HubSpot's API
    base URL, e.g. the simulator's.
    """
    from hubspot import HubSpot  # lazily: the SDK is optional

    token = client.token(hub_id, app=app, user_id=user_id, min_ttl=min_ttl)
    if host is None:
        return HubSpot(access_token=token.access_token)
    return HubSpot(access_token=token.access_token, host=host)
