"""The management API under ``/v1/admin`` beyond portals (:mod:`broker.web.admin`): apps,
callers, install links, the audit trail, webhook events, keys and retention. Every route
needs a caller key (or workload JWT) with the route's role, answers ``no-store`` JSON or
problem+json, and is audited with the caller's name. What each module guards and for whom
is in its docstring; ``docs/operations.md`` has the table."""

from __future__ import annotations

from broker.web.manage import apps, callers, events, keys, links, private_apps

routes = [
    *apps.routes,
    *private_apps.routes,
    *callers.routes,
    *links.routes,
    *events.routes,
    *keys.routes,
]
