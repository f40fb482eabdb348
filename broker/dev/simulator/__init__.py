"""A faithful fake of HubSpot's OAuth server and one CRM endpoint, for tests and demos.

It reproduces the contract in hubspot-oauth.md: the authorize page, the token endpoint
(every version), introspection, revocation, the v1 lookups, app uninstall and
`GET /crm/v3/objects/contacts`, with HubSpot's bodies and error cases. `Simulator` holds the
state and the test controls (faults, clock, counters); `create_app` serves it as ASGI;
`run_in_thread` serves it on a loopback port. It imports nothing else from `broker`.
"""

from broker.dev.simulator._model import Settings
from broker.dev.simulator.app import create_app
from broker.dev.simulator.server import run_in_thread
from broker.dev.simulator.state import AccessTokenInfo, Simulator

__all__ = ["AccessTokenInfo", "Settings", "Simulator", "create_app", "run_in_thread"]
