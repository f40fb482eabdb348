"""``/v1/admin/apps/{app}/private/{hub_id}`` (role ``apps:admin``): a private app's static
token — store it (PUT), rotate it (POST ``.../rotate``), remove it (DELETE: stop serving on
every replica, destroy it in Vault). The token comes in the body, goes to Vault, and is never
echoed, logged or put in a URL; the answers are the portal's view.

Like the other app-wide actions these need a caller allowed the app and limited to no
particular portals (:meth:`Caller.may_manage_app`): the token is a secret of the app's."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from broker.config import Secret
from broker.core.admin import portal_view
from broker.core.models import Role
from broker.core.private_apps import OLD_EXPIRES_MAX, TOKEN_MAX
from broker.web.manage._common import Body, authorize, need_app, reply, vault_policy
from broker.web.params import parse_app, parse_int, reject_unknown
from broker.web.services import Services


async def _target(request: Request) -> tuple[Services, str, str, int]:
    """The services, the caller's name, the app and the hub."""
    svc, caller = await authorize(request, Role.APPS_ADMIN)
    slug = parse_app(request.path_params["app"], "")
    need_app(caller, slug)
    hub_id = parse_int(request.path_params["hub_id"], "hub_id") or 0
    reject_unknown(request, frozenset())
    return svc, caller.name, slug, hub_id


def _token(body: Body) -> Secret:
    return Secret(body.text("access_token", required=True, limit=TOKEN_MAX) or "")


async def put_token(request: Request) -> Response:
    svc, actor, slug, hub_id = await _target(request)
    body = await Body.read(request, frozenset({"access_token", "scopes"}))
    token, scopes = _token(body), tuple(body.texts("scopes") or ())
    with vault_policy("writing a private app's token to Vault KV"):
        record = await svc.private_apps.add(slug, hub_id, token, scopes=scopes, actor=actor)
    return reply(portal_view(record))


async def rotate_token(request: Request) -> Response:
    svc, actor, slug, hub_id = await _target(request)
    body = await Body.read(request, frozenset({"access_token", "old_expires_in"}))
    token = _token(body)
    old_expires_in = body.integer("old_expires_in", minimum=0, maximum=OLD_EXPIRES_MAX)
    with vault_policy("writing a private app's token to Vault KV"):
        record = await svc.private_apps.rotate(
            slug, hub_id, token, old_expires_in=old_expires_in, actor=actor
        )
    return reply(portal_view(record))


async def remove_token(request: Request) -> Response:
    svc, actor, slug, hub_id = await _target(request)
    with vault_policy("destroying a private app's token in Vault KV"):
        done = await svc.private_apps.remove(
            slug, hub_id, reason="private app removed", actor=actor
        )
    return reply({**portal_view(done.record), "upstream": done.upstream})


routes = [
    Route("/v1/admin/apps/{app}/private/{hub_id}", put_token, methods=["PUT"]),
    Route("/v1/admin/apps/{app}/private/{hub_id}", remove_token, methods=["DELETE"]),
    Route("/v1/admin/apps/{app}/private/{hub_id}/rotate", rotate_token, methods=["POST"]),
]
