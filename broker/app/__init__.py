"""The composition root: the only module that sees ``web``, ``core`` and ``adapters``.

``open_services(settings)`` builds the asyncpg pool, the Redis coordinator, the Vault adapter
and the HubSpot client, wires the use cases, and tears everything down in reverse order;
``internal_app``/``public_app`` are the ASGI apps :mod:`broker.server` serves on its two
listeners, and ``create_app(settings)`` is every route on one app whose lifespan opens the
services (one listener: tests and simple setups). Nothing connects at import time.

The package: :mod:`.services` builds everything, :mod:`.asgi` makes the apps, :mod:`.oneshot`
runs one-off tasks on the backends."""

from __future__ import annotations

from broker.app.asgi import State, create_app, internal_app, public_app, warm_up
from broker.app.oneshot import probe_backends, run_migrations, sweep_retention
from broker.app.services import open_admin, open_services, replica_id

__all__ = [
    "State",
    "create_app",
    "internal_app",
    "open_admin",
    "open_services",
    "probe_backends",
    "public_app",
    "replica_id",
    "run_migrations",
    "sweep_retention",
    "warm_up",
]
