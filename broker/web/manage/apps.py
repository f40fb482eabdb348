"""``/v1/admin/apps`` (role ``apps:admin``): list, register or update (PUT, the client
secret in the body, stored in Vault and never echoed or logged), retire and put back.

App-wide actions need a caller allowed the app and limited to no particular portals
(:meth:`Caller.may_manage_app`); the list shows the apps a caller is allowed."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from broker.config import Secret
from broker.core.admin import app_view
from broker.core.models import DEFAULT_API_VERSION, App, Role
from broker.web.manage._common import Body, authorize, need_app, reply, vault_policy
from broker.web.params import parse_app, reject_unknown

_FIELDS = frozenset(
    {
        "client_id",
        "redirect_uri",
        "scopes",
        "optional_scopes",
        "api_version",
        "user_level",
        "allow_marketplace_installs",
        "client_secret",
    }
)


async def list_apps(request: Request) -> Response:
    svc, caller = await authorize(request, Role.APPS_ADMIN)
    reject_unknown(request, frozenset())
    apps = await svc.admin.list_apps()
    return reply(
        {"apps": [app_view(a) for a in apps if caller.apps is None or a.slug in caller.apps]}
    )


async def put_app(request: Request) -> Response:
    svc, caller = await authorize(request, Role.APPS_ADMIN)
    slug = parse_app(request.path_params["app"], "")
    need_app(caller, slug)
    reject_unknown(request, frozenset())
    body = await Body.read(request, _FIELDS)
    secret = body.text("client_secret", limit=1024)
    app = App(
        slug=slug,
        client_id=body.text("client_id", required=True, limit=256) or "",
        redirect_uri=body.text("redirect_uri", required=True) or "",
        scopes=tuple(body.texts("scopes") or ()),
        optional_scopes=tuple(body.texts("optional_scopes") or ()),
        api_version=body.text("api_version", limit=16) or DEFAULT_API_VERSION,
        allow_marketplace_installs=bool(body.flag("allow_marketplace_installs")),
        user_level=bool(body.flag("user_level")),
    )
    with vault_policy("writing an app's client secret to Vault KV"):
        saved = await svc.admin.save_app(
            app, None if secret is None else Secret(secret), actor=caller.name
        )
    return reply(app_view(saved.app), 201 if saved.created else 200)


async def _retire(request: Request, *, retired: bool) -> Response:
    svc, caller = await authorize(request, Role.APPS_ADMIN)
    slug = parse_app(request.path_params["app"], "")
    need_app(caller, slug)
    reject_unknown(request, frozenset())
    app = await svc.admin.retire_app(slug, retired=retired, actor=caller.name)
    return reply(app_view(app))


async def retire(request: Request) -> Response:
    return await _retire(request, retired=True)


async def unretire(request: Request) -> Response:
    return await _retire(request, retired=False)


routes = [
    Route("/v1/admin/apps", list_apps, methods=["GET"]),
    Route("/v1/admin/apps/{app}", put_app, methods=["PUT"]),
    Route("/v1/admin/apps/{app}/retire", retire, methods=["POST"]),
    Route("/v1/admin/apps/{app}/unretire", unretire, methods=["POST"]),
]
