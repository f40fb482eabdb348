"""HubSpot's official SDK (``hubspot-api-client``) with a token from the broker.

The SDK is imported only when :func:`hubspot_client` is called, so services that never
use it need not install it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hubspot_token_broker_client._gateway import gateway_url
from hubspot_token_broker_client._sync import BrokerClient
from hubspot_token_broker_client._token import read_credentials

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
    gateway: bool = False,
) -> HubSpot:
    """A ``hubspot.HubSpot`` whose calls carry a broker token for ``hub_id``.

    The SDK holds a fixed token: build one per unit of work (it is cheap; the token comes
    from the broker client's cache) rather than keeping it for longer than ``min_ttl``
    seconds (``client.default_min_ttl`` when not given). ``host`` replaces HubSpot's API
    base URL, e.g. the simulator's.

    ``gateway=True``: the SDK calls the broker's gateway instead (the portal's token never
    reaches this service, and the portal's rate budget is shared with every other caller):
    it carries the caller's key, which the broker replaces by the portal's token. The SDK
    cannot add the broker's ``app`` parameter, so the portal must belong to the broker's
    default app (``app``, ``user_id``, ``min_ttl`` and ``host`` are refused).
    """
    from hubspot import HubSpot  # lazily: the SDK is optional

    if gateway:
        if app is not None or user_id is not None or min_ttl is not None or host is not None:
            raise ValueError("gateway=True takes no app, user_id, min_ttl or host")
        return HubSpot(
            access_token=read_credentials(client._credentials), host=gateway_url(client, hub_id)
        )

    token = client.token(hub_id, app=app, user_id=user_id, min_ttl=min_ttl)
    if host is None:
        return HubSpot(access_token=token.access_token)
    return HubSpot(access_token=token.access_token, host=host)
