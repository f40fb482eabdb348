"""``broker`` — the command line (also ``python -m broker``).

Every command reads the same ``BROKER_*`` settings as the server. ``--json`` prints machine
output for scripts. Exit codes: 0 ok, 1 the operation failed (backend down, not found...),
2 bad arguments or configuration. Secrets are never taken as arguments (they would show in
``ps`` and shell history): client secrets come from stdin or a file.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from broker.config import Secret, Settings, load_settings
from broker.core.admin import app_view, portal_view
from broker.core.keys import RewrapReport
from broker.core.models import DEFAULT_API_VERSION, App, PortalKey, Role
from broker.core.signing import Purpose
from broker.errors import BrokerError, ConfigError

if TYPE_CHECKING:
    from broker.core.install_links import InstallLink

EXIT_FAILED = 1
EXIT_USAGE = 2


class _Out:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def emit(self, data: Any, text: str) -> None:
        print(json.dumps(data, indent=2, default=str) if self.as_json else text)


def _table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[str(r.get(c) if r.get(c) is not None else "-") for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _read_secret(args: argparse.Namespace) -> Secret:
    if args.client_secret_file:
        with open(args.client_secret_file) as handle:
            return Secret(handle.read().strip())
    if sys.stdin.isatty():
        import getpass

        return Secret(getpass.getpass("client secret: ").strip())
    return Secret(sys.stdin.readline().strip())


# --- commands ------------------------------------------------------------------------------
async def cmd_migrate(settings: Settings, args: argparse.Namespace, out: _Out) -> None:
    from broker.app import run_migrations

    applied = await run_migrations(settings)
    out.emit({"applied": applied}, "applied: " + (", ".join(applied) if applied else "nothing"))


async def cmd_apps_add(settings: Settings, args: argparse.Namespace, out: _Out) -> None:
    from broker.app import open_admin

    app = App(
        slug=args.slug,
        client_id=args.client_id,
        redirect_uri=args.redirect_uri,
        scopes=tuple(args.scope),
        optional_scopes=tuple(args.optional_scope),
        api_version=args.api_version,
        allow_marketplace_installs=args.allow_marketplace_installs,
        user_level=args.user_level,
    )
    secret = _read_secret(args)
    async with open_admin(settings) as ctx:
        saved = await ctx.admin.add_app(app, secret, actor=_actor())
    out.emit(app_view(saved), f"app {saved.slug} saved (client secret stored in Vault)")


async def cmd_apps_list(settings: Settings, args: argparse.Namespace, out: _Out) -> None:
    from broker.app import open_admin

    async with open_admin(settings) as ctx:
        apps = [app_view(a) for a in await ctx.admin.list_apps()]
    out.emit(apps, _table(apps, ["slug", "client_id", "api_version", "redirect_uri"]))


def _actor() -> str:
    """Who runs this command, for the audit trail: ``cli:`` and the OS login name (an
    attribution aid, not an authentication: the admin API records authenticated callers)."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no name for this uid (a bare container)
        return "cli"


def _emit_link(out: _Out, link: InstallLink) -> None:
    """The URL alone on stdout (for scripts); the reminder on stderr."""
    url, expires_at = link.url, link.expires_at
    out.emit({"url": url, "expires_at": expires_at.isoformat(), "id": link.id}, url)
    if not out.as_json:
        print(
            f"link {link.id}, valid until {expires_at.isoformat()}; anyone holding it can "
            "install a portal into the app: send it privately (revoke: `broker install-links "
            f"revoke {link.id}`)",
            file=sys.stderr,
        )


async def cmd_apps_install_link(settings: Settings, args: argparse.Namespace, out: _Out) -> None:
    from broker.app import open_admin

    async with open_admin(settings) as ctx:
        link = await ctx.install_links.mint(
            args.slug, actor=_actor(), ttl=args.ttl, return_to=args.return_to
        )
    _emit_link(out, link)


async def cmd_install_links(settings: Settings, args: argparse.Namespace, out: _Out) -> None:
    from broker.app import open_admin

    async with open_admin(settings) as ctx:
        if args.sub == "revoke":
            links = [await ctx.install_links.revoke(args.id, actor=_actor())]
        else:
            links = await ctx.install_links.list_links(app=args.app, include_inactive=args.all)
    rows = [
        {k: v.isoformat() if isinstance(v, datetime) else v for k, v in asdict(link).items()}
        for link in links
    ]
    out.emit(rows, _table(rows, ["id", "app", "hub_id", "created_by", "expires_at", "revoked_at"]))


async def cmd_signing_keys(settings: Settings, args: argparse.Namespace, out: _Out) -> None:
    from broker.app import open_admin

    async with open_admin(settings) as ctx:
        if args.sub == "rotate-signing":
            chosen = list(Purpose) if "all" in args.purpose else [Purpose(p) for p in args.purpose]
            await ctx.keyring.rotate(
                chosen, overlap_seconds=args.overlap_hours * 3600, actor=_actor()
            )
        statuses = await ctx.keyring.status()
    rows = [
        {
            "purpose": s.purpose.value,
            "key": s.key,
            "latest_version": s.latest_version,
            "retiring": {str(v): at.isoformat() for v, at in sorted(s.retiring.items())},
        }
        for s in statuses
    ]
    out.emit(rows, _table(rows, ["purpose", "key", "latest_version", "retiring"]))


async def cmd_callers_create(settings: Settings, args: argparse.Namespace, out: _Out) -> None:
    from broker.app import open_admin

    expires = (
        None if args.expires_days is None else datetime.now(UTC) + timedelta(days=args.expires_days)
    )
    async with open_admin(settings) as ctx:
        new = await ctx.callers.create(
            args.name,
            roles=args.role or [Role.TOKENS_READ.value],
            apps=args.app or None,
            hub_ids=args.hub or None,
            expires_at=expires,
            rate_limit=args.rate,
            identity=None if not args.jwt_subject else (args.jwt_issuer, args.jwt_subject),
            with_key=not args.no_key,
            actor=_actor(),
        )
    data = {"name": new.caller.name, "key": new.secret or None, "expires_at": new.expires_at}
    text = f"caller {new.caller.name} created"
    text += f". Its key (shown once):\n{new.secret}" if new.secret else " (workload identity only)"
    out.emit(data, text)


async def cmd_callers_list(settings: Settings, args: argparse.Namespace, out: _Out) -> None:
    from broker.app import open_admin

    async with open_admin(settings) as ctx:
        callers = await ctx.callers.list()
    rows = [
        {
            "name": c.name,
            "roles": ",".join(sorted(c.roles)),
            "apps": "*" if c.apps is None else ",".join(sorted(c.apps)),
            "hubs": "*" if c.hub_ids is None else ",".join(map(str, sorted(c.hub_ids))),
            "expires_at": c.expires_at,
            "disabled": c.disabled,
        }
        for c in callers
    ]
    out.emit(rows, _table(rows, ["name", "roles", "apps", "hubs", "expires_at", "disabled"]))


async def cmd_callers_rotate(settings: Settings, args: argparse.Namespace, out: _Out) -> None:
    from broker.app import open_admin

    async with open_admin(settings) as ctx:
        new = await ctx.callers.rotate(
            args.name, overlap_seconds=args.overlap_hours * 3600, actor=_actor()
        )
    data = {"name": new.caller.name, "key": new.secret, "old_key_valid_hours": args.overlap_hours}
    out.emit(
        data,
        f"caller {new.caller.name}: new key (shown once), the old one works for "
        f"{args.overlap_hours:g} more hours:\n{new.secret}",
    )


async def cmd_callers_disable(settings: Settings, args: argparse.Namespace, out: _Out) -> None:
    from broker.app import open_admin

    async with open_admin(settings) as ctx:
        await ctx.callers.disable(args.name, actor=_actor())
    out.emit({"name": args.name, "disabled": True}, f"caller {args.name} disabled")


async def cmd_portals_list(settings: Settings, args: argparse.Namespace, out: _Out) -> None:
    from broker.app import open_admin

    async with open_admin(settings) as ctx:
        records = await ctx.admin.list_portals(app=args.app, state=args.state, limit=args.limit)
    rows = [portal_view(r) for r in records]
    out.emit(
        rows,
        _table(rows, ["app", "hub_id", "user_id", "hub_domain", "state", "access_expires_at"]),
    )


async def cmd_portals_show(settings: Settings, args: argparse.Namespace, out: _Out) -> None:
    from broker.app import open_admin

    async with open_admin(settings) as ctx:
        record = await ctx.admin.show_portal(_portal_key(settings, args))
    view = portal_view(record)
    out.emit(view, "\n".join(f"{k:18} {'-' if v is None else v}" for k, v in view.items()))


def _portal_key(settings: Settings, args: argparse.Namespace) -> PortalKey:
    app = args.app or settings.default_app
    if not app:
        raise ConfigError(["--app is required (no BROKER_DEFAULT_APP)"])
    return PortalKey(app, args.hub_id, args.user_id)


async def cmd_portals_action(settings: Settings, args: argparse.Namespace, out: _Out) -> None:
    from broker.app import open_admin

    key = _portal_key(settings, args)
    async with open_admin(settings) as svc:
        ops = svc.operations
        if args.sub == "revoke":
            done = await ops.revoke(key, reason=args.reason, actor=_actor())
            view = {**portal_view(done.record), "upstream": done.upstream}
            text = f"portal {key} revoked (upstream: {done.upstream})"
        elif args.sub == "quarantine":
            view = portal_view(await ops.quarantine(key, actor=_actor(), reason=args.reason))
            text = f"portal {key} quarantined"
        elif args.sub == "release":
            view = portal_view(await ops.release(key, actor=_actor()))
            text = f"portal {key} released"
        elif args.sub == "refresh":
            view = portal_view(await ops.force_refresh(key, actor=_actor()))
            text = f"portal {key} refreshed (version {view['version']})"
        else:
            link = await ops.install_link(key, actor=_actor(), ttl=args.ttl)
            _emit_link(out, link)
            return
    out.emit(view, text)


async def cmd_audit(settings: Settings, args: argparse.Namespace, out: _Out) -> None:
    from broker.app import open_admin

    since = None
    if args.since:
        try:
            since = datetime.fromisoformat(args.since)
        except ValueError as exc:
            raise ConfigError(
                ["--since: an ISO 8601 time, e.g. 2026-11-29T08:00:00+00:00"]
            ) from exc
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
    async with open_admin(settings) as svc:
        events = await svc.admin.audit(
            hub_id=args.hub, actor=args.caller, action=args.action, since=since, limit=args.limit
        )
    rows = [{**e, "detail": json.dumps(e["detail"], sort_keys=True)} for e in events]
    out.emit(events, _table(rows, ["at", "actor", "action", "app", "hub_id", "detail"]))


async def cmd_keys(settings: Settings, args: argparse.Namespace, out: _Out) -> None:
    from broker.app import open_admin

    def progress(report: RewrapReport) -> None:
        if not out.as_json:
            done = report.rewrapped + report.skipped
            print(
                f"\r  rewrapped {done} ciphertexts ({report.failed} failed)",
                end="",
                file=sys.stderr,
                flush=True,
            )

    async with open_admin(settings) as svc:
        if args.sub == "rewrap":
            report = await svc.keys.rewrap(batch=args.batch, limit=args.limit, progress=progress)
            if not out.as_json:
                print(file=sys.stderr)
            if args.retire and report.remaining == 0 and report.failed == 0:
                report.min_decryption_version = await svc.keys.retire_old_versions()
        else:
            report = await svc.keys.rewrap(limit=0)
    data = vars(report)
    text = "\n".join(f"{k:24} {v}" for k, v in data.items())
    out.emit(data, text)
    if report.failed:
        raise SystemExit(EXIT_FAILED)


async def cmd_retention(settings: Settings, args: argparse.Namespace, out: _Out) -> None:
    from broker.app import sweep_retention

    report = await sweep_retention(settings)
    data = {"swept": report.swept, "deleted": report.deleted}
    if report.swept:
        text = "\n".join(f"{table:14} {count}" for table, count in report.deleted.items())
    else:
        text = "another sweep is running (advisory lock held); nothing deleted"
    out.emit(data, text)


async def cmd_check_config(settings: Settings, args: argparse.Namespace, out: _Out) -> None:
    from broker.app import probe_backends

    report = {"settings": "ok"}
    if not args.offline:
        report.update(await probe_backends(settings))
    text = "\n".join(f"{k:10} {v}" for k, v in report.items())
    out.emit(report, text)
    if any(v != "ok" for v in report.values()):
        raise SystemExit(EXIT_FAILED)


def cmd_serve(settings: Settings, args: argparse.Namespace) -> None:
    from broker import server

    overrides = {"host": args.host, "port": args.port, "public_port": args.public_port}
    server.run(replace(settings, **{k: v for k, v in overrides.items() if v is not None}))


def _transit_batch(raw: str) -> int:
    value = int(raw)
    if not 1 <= value <= 240:
        raise argparse.ArgumentTypeError("must be 1-240 (OpenBao refuses larger batches)")
    return value


# --- parser --------------------------------------------------------------------------------
def _link_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ttl", type=int, help="seconds the link stays valid (default BROKER_INSTALL_LINK_TTL)"
    )
    # SUPPRESS: absent here, the global --json keeps its value.
    parser.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )


Command = Callable[[Settings, argparse.Namespace, _Out], Coroutine[Any, Any, None]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="broker", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="serve the HTTP API (and the refresher)")
    serve.add_argument("--host", help="internal listener address (default BROKER_HOST)")
    serve.add_argument("--port", type=int, help="internal listener port (default BROKER_PORT)")
    serve.add_argument(
        "--public-port", type=int, help="install-flow listener port (default BROKER_PUBLIC_PORT)"
    )
    dev = sub.add_parser("dev", help="embedded stack + HubSpot simulator + broker (make run)")
    dev.add_argument("--port", type=int, default=8080)
    dev.add_argument("--public-port", type=int, default=8081)
    dev.add_argument("--simulator-port", type=int, default=8090)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(run=cmd_migrate)
    check = sub.add_parser("check-config", help="validate settings and reach every backend")
    check.add_argument("--offline", action="store_true", help="only validate the settings")
    check.set_defaults(run=cmd_check_config)

    apps = sub.add_parser("apps", help="HubSpot apps").add_subparsers(dest="sub", required=True)
    add = apps.add_parser("add", help="register or update an app; reads the secret from stdin")
    add.add_argument("slug")
    add.add_argument("--client-id", required=True)
    add.add_argument("--redirect-uri", required=True)
    add.add_argument("--scope", action="append", default=[], help="repeatable")
    add.add_argument("--optional-scope", action="append", default=[], help="repeatable")
    add.add_argument("--api-version", default=DEFAULT_API_VERSION)
    add.add_argument("--user-level", action="store_true")
    add.add_argument("--allow-marketplace-installs", action="store_true")
    add.add_argument("--client-secret-file", help="read the secret from this file, not stdin")
    add.set_defaults(run=cmd_apps_add)
    apps.add_parser("list", help="list apps").set_defaults(run=cmd_apps_list)
    link = apps.add_parser("install-link", help="a signed link that installs a portal (audited)")
    link.add_argument("slug")
    _link_options(link)
    link.add_argument("--return-to", help="where the browser goes afterwards (allowed origin)")
    link.set_defaults(run=cmd_apps_install_link)

    callers = sub.add_parser("callers", help="service identities").add_subparsers(
        dest="sub", required=True
    )
    create = callers.add_parser("create", help="create a caller and print its key once")
    create.add_argument("name")
    create.add_argument("--app", action="append", help="allowed app (repeatable; default all)")
    create.add_argument("--hub", action="append", type=int, help="allowed hub_id (default all)")
    create.add_argument("--role", action="append", choices=[r.value for r in Role])
    create.add_argument("--expires-days", type=float)
    create.add_argument("--rate", type=float, help="requests/s per replica (default: broker's)")
    create.add_argument("--jwt-issuer", help="workload identity: the JWT issuer (iss)")
    create.add_argument(
        "--jwt-subject",
        help="workload identity: the subject (sub), e.g. system:serviceaccount:NAMESPACE:NAME",
    )
    create.add_argument("--no-key", action="store_true", help="identity only: issue no key")
    create.set_defaults(run=cmd_callers_create)
    callers.add_parser("list", help="list callers").set_defaults(run=cmd_callers_list)
    rotate = callers.add_parser("rotate", help="issue a new key; the old one works a while")
    rotate.add_argument("name")
    rotate.add_argument("--overlap-hours", type=float, default=24.0)
    rotate.set_defaults(run=cmd_callers_rotate)
    disable = callers.add_parser("disable", help="disable a caller")
    disable.add_argument("name")
    disable.set_defaults(run=cmd_callers_disable)

    portals = sub.add_parser("portals", help="installed portals").add_subparsers(
        dest="sub", required=True
    )
    plist = portals.add_parser("list", help="list portals")
    plist.add_argument("--app")
    plist.add_argument("--state")
    plist.add_argument("--limit", type=int, default=100)
    plist.set_defaults(run=cmd_portals_list)
    show = portals.add_parser("show", help="show one portal (never its tokens)")
    show.add_argument("hub_id", type=int)
    show.add_argument("--app")
    show.add_argument("--user-id", type=int)
    show.set_defaults(run=cmd_portals_show)
    for name, text in (
        ("revoke", "revoke at HubSpot and locally; every replica stops serving it"),
        ("quarantine", "hold a portal: no token served until released"),
        ("release", "release a quarantined portal"),
        ("refresh", "refresh its token now"),
        ("install-link", "a fresh install link for the portal's admin"),
    ):
        action = portals.add_parser(name, help=text)
        action.add_argument("hub_id", type=int)
        action.add_argument("--app")
        action.add_argument("--user-id", type=int)
        if name in ("revoke", "quarantine"):
            action.add_argument("--reason", required=True)
        if name == "install-link":
            _link_options(action)
        action.set_defaults(run=cmd_portals_action)

    keys = sub.add_parser("keys", help="Transit key rotation").add_subparsers(
        dest="sub", required=True
    )
    rewrap = keys.add_parser(
        "rewrap", help="re-encrypt stored tokens under the latest key version (resumable)"
    )
    # OpenBao refuses Transit batches of 250 items or more ("high complexity").
    rewrap.add_argument("--batch", type=_transit_batch, default=200, help="1-240")
    rewrap.add_argument("--limit", type=int, help="stop after this many (resume later)")
    rewrap.add_argument(
        "--retire",
        action="store_true",
        help="then raise min_decryption_version, only if nothing old is left",
    )
    rewrap.set_defaults(run=cmd_keys)
    keys.add_parser("status", help="key versions and what still needs a rewrap").set_defaults(
        run=cmd_keys
    )
    rotate_signing = keys.add_parser(
        "rotate-signing",
        help="rotate signing keys: the new version signs at once, the old ones verify until "
        "the overlap ends (audited)",
    )
    rotate_signing.add_argument("purpose", nargs="+", choices=[*(p.value for p in Purpose), "all"])
    rotate_signing.add_argument("--overlap-hours", type=float, default=24.0)
    rotate_signing.set_defaults(run=cmd_signing_keys)
    keys.add_parser(
        "signing-status", help="signing keys: latest versions and retirements"
    ).set_defaults(run=cmd_signing_keys)

    links = sub.add_parser("install-links", help="minted install links").add_subparsers(
        dest="sub", required=True
    )
    llist = links.add_parser("list", help="unexpired, unrevoked links (never the token)")
    llist.add_argument("--app")
    llist.add_argument("--all", action="store_true", help="expired and revoked ones too")
    llist.set_defaults(run=cmd_install_links)
    lrevoke = links.add_parser("revoke", help="refuse this link from now on, on every replica")
    lrevoke.add_argument("id")
    lrevoke.set_defaults(run=cmd_install_links)

    audit = sub.add_parser("audit", help="query the audit trail (newest first)")
    audit.add_argument("--hub", type=int)
    audit.add_argument("--caller", help="the actor: a caller name, cli, browser, ...")
    audit.add_argument("--action", help="e.g. token.issued, portal.revoked")
    audit.add_argument("--since", help="ISO 8601 time")
    audit.add_argument("--limit", type=int, default=100)
    audit.set_defaults(run=cmd_audit)

    retention = sub.add_parser("retention", help="delete expired rows").add_subparsers(
        dest="sub", required=True
    )
    retention.add_parser(
        "sweep", help="one retention sweep now (skipped while another runs); counts per table"
    ).set_defaults(run=cmd_retention)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = _Out(args.json)
    if args.command == "dev":
        from broker.dev.run import run_dev

        code: int = run_dev(
            port=args.port, public_port=args.public_port, simulator_port=args.simulator_port
        )
        return code
    try:
        settings = load_settings()
    except ConfigError as exc:
        print("configuration is invalid:", file=sys.stderr)
        for item in exc.problems:
            print(f"  - {item}", file=sys.stderr)
        return EXIT_USAGE
    if getattr(args, "jwt_subject", None) and not args.jwt_issuer:
        print("error: --jwt-subject needs --jwt-issuer", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "serve":
        cmd_serve(settings, args)
        return 0
    from broker import logs

    logs.configure(settings.log_level, settings.log_format)  # stderr: stdout is the output
    run: Command = args.run
    try:
        asyncio.run(run(settings, args, out))
    except ConfigError as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        return EXIT_USAGE
    except BrokerError as exc:
        if out.as_json:
            print(json.dumps({"error": exc.code, "detail": exc.detail}), file=sys.stderr)
        else:
            print(f"error ({exc.code}): {exc.detail}", file=sys.stderr)
        return EXIT_FAILED
    return 0
