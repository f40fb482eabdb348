"""Keys and retention (role ``apps:admin``, a caller limited to no app or hub: these act on
what belongs to every app): the Transit key's status and rewrap, the signing keys' status
and rotation, a retention sweep now.

Each needs a Vault permission the replicas' shipped policy (deploy/vault/broker.hcl) does
not grant, except the sweep (PostgreSQL only): under it they answer 403
``vault_policy_denied`` saying so; ``deploy/vault/broker-management.hcl`` grants them (and
never the key custodian's min_decryption_version: ``retire`` stays a local step).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from broker.core.models import Caller, Role
from broker.core.signing import KeyStatus, Purpose, status_view
from broker.errors import InvalidRequest
from broker.web.manage._common import Body, authorize, need_unlimited, reply, vault_policy
from broker.web.params import reject_unknown
from broker.web.services import Services

#: Ciphertexts one request rewraps at most: a request stays short; clients loop.
MAX_REWRAP = 10_000


async def _keys_admin(request: Request) -> tuple[Services, Caller]:
    svc, caller = await authorize(request, Role.APPS_ADMIN)
    need_unlimited(caller, "keys and retention concern every app")
    reject_unknown(request, frozenset())
    return svc, caller


async def transit_status(request: Request) -> Response:
    svc, _ = await _keys_admin(request)
    with vault_policy("reading the Transit key's versions"):
        report = await svc.keys.rewrap(limit=0)
    return reply(vars(report))


async def transit_rewrap(request: Request) -> Response:
    svc, caller = await _keys_admin(request)
    body = await Body.read(request, frozenset({"batch", "limit", "retire"}))
    batch = body.integer("batch", minimum=1, maximum=240) or 200
    limit = body.integer("limit", minimum=0, maximum=MAX_REWRAP)
    with vault_policy("rewrapping with the Transit key"):
        report = await svc.keys.rewrap(
            batch=batch, limit=MAX_REWRAP if limit is None else limit, actor=caller.name
        )
    if body.flag("retire") and report.remaining == 0 and report.failed == 0:
        with vault_policy("raising min_decryption_version: the key custodian's step"):
            report.min_decryption_version = await svc.keys.retire_old_versions(actor=caller.name)
    return reply(vars(report))


def _statuses(statuses: list[KeyStatus]) -> dict[str, Any]:
    return {"keys": [status_view(s) for s in statuses]}


async def signing_status(request: Request) -> Response:
    svc, _ = await _keys_admin(request)
    with vault_policy("reading the signing keys' versions"):
        return reply(_statuses(await svc.keyring.status()))


async def signing_rotate(request: Request) -> Response:
    svc, caller = await _keys_admin(request)
    body = await Body.read(request, frozenset({"purposes", "overlap_seconds"}))
    names = body.texts("purposes", limit=8)
    known = {p.value for p in Purpose}
    if not names or not set(names) <= known | {"all"}:
        raise InvalidRequest(
            "purposes must list signing key purposes or all",
            errors=[{"field": "purposes", "message": f"of {sorted(known)} or all"}],
        )
    chosen = list(Purpose) if "all" in names else [Purpose(n) for n in dict.fromkeys(names)]
    overlap = body.number("overlap_seconds", minimum=0, maximum=30 * 86400)
    with vault_policy("rotating signing keys"):
        await svc.keyring.rotate(
            chosen, overlap_seconds=86400 if overlap is None else overlap, actor=caller.name
        )
        return reply(_statuses(await svc.keyring.status()))


async def retention_sweep(request: Request) -> Response:
    svc, caller = await _keys_admin(request)
    report = await svc.retention.sweep()
    svc.audit.record(
        "retention.swept", actor=caller.name, swept=report.swept, deleted=report.deleted
    )
    return reply({"swept": report.swept, "deleted": asdict(report)["deleted"]})


routes = [
    Route("/v1/admin/keys/transit", transit_status, methods=["GET"]),
    Route("/v1/admin/keys/transit/rewrap", transit_rewrap, methods=["POST"]),
    Route("/v1/admin/keys/signing", signing_status, methods=["GET"]),
    Route("/v1/admin/keys/signing/rotate", signing_rotate, methods=["POST"]),
    Route("/v1/admin/retention/sweep", retention_sweep, methods=["POST"]),
]
