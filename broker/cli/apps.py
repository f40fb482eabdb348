"""``broker apps``: register or update, list, retire, install links."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from broker.cli import private_apps
from broker.cli._ops import Operations, View
from broker.cli._output import Out
from broker.core.models import DEFAULT_API_VERSION
from broker.errors import ConfigError

_COLUMNS = ["slug", "client_id", "api_version", "redirect_uri", "retired_at"]


def read_secret(args: argparse.Namespace) -> str:
    return read_hidden(args.client_secret_file, "client secret: ")


def read_hidden(path: str | None, prompt: str) -> str:
    """From a file or stdin: never an argument (``ps``, shell history). A file that cannot
    be read is named by its error only: a secret pasted in place of the path stays unsaid."""
    if path:
        try:
            with open(path) as handle:
                return handle.read().strip()
        except OSError as exc:
            raise ConfigError([f"cannot read the secret's file: {exc.strerror}"]) from None
    if sys.stdin.isatty():
        return getpass.getpass(prompt).strip()
    return sys.stdin.readline().strip()


async def add(ops: Operations, args: argparse.Namespace, out: Out) -> None:
    spec: dict[str, Any] = {
        "client_id": args.client_id,
        "redirect_uri": args.redirect_uri,
        "scopes": args.scope,
        "optional_scopes": args.optional_scope,
        "api_version": args.api_version,
        "allow_marketplace_installs": args.allow_marketplace_installs,
        "user_level": args.user_level,
    }
    secret = None if args.keep_secret else read_secret(args)
    saved = await ops.app_put(args.slug, spec, secret)
    stored = "client secret kept" if args.keep_secret else "client secret stored in Vault"
    out.emit(saved, f"app {saved['slug']} saved ({stored})")


async def list_apps(ops: Operations, args: argparse.Namespace, out: Out) -> None:
    out.rows(await ops.apps_list(), _COLUMNS)


async def retire(ops: Operations, args: argparse.Namespace, out: Out) -> None:
    retired = args.sub == "retire"
    app = await ops.app_retire(args.slug, retired=retired)
    what = "retired: it installs no new portal" if retired else "back in service"
    out.emit(app, f"app {app['slug']} {what}")


def emit_link(out: Out, link: View) -> None:
    """The URL alone on stdout (for scripts); the reminder on stderr."""
    out.emit(link, link["url"])
    out.note(
        f"link {link['id']}, valid until {link['expires_at']}; anyone holding it can install "
        "a portal into the app: send it privately (revoke: `broker install-links revoke "
        f"{link['id']}`)"
    )


async def install_link(ops: Operations, args: argparse.Namespace, out: Out) -> None:
    emit_link(out, await ops.app_install_link(args.slug, ttl=args.ttl, return_to=args.return_to))


def link_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ttl", type=int, help="seconds the link stays valid (default BROKER_INSTALL_LINK_TTL)"
    )
    # SUPPRESS: absent here, the global --json keeps its value.
    parser.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )


def register(sub: Any) -> None:
    apps = sub.add_parser("apps", help="HubSpot apps").add_subparsers(dest="sub", required=True)
    put = apps.add_parser("add", help="register or update an app; reads the secret from stdin")
    put.add_argument("slug")
    put.add_argument("--client-id", required=True)
    put.add_argument("--redirect-uri", required=True)
    put.add_argument("--scope", action="append", default=[], help="repeatable")
    put.add_argument("--optional-scope", action="append", default=[], help="repeatable")
    put.add_argument("--api-version", default=DEFAULT_API_VERSION)
    put.add_argument("--user-level", action="store_true")
    put.add_argument("--allow-marketplace-installs", action="store_true")
    secret = put.add_mutually_exclusive_group()
    secret.add_argument("--client-secret-file", help="read the secret from this file, not stdin")
    secret.add_argument(
        "--keep-secret", action="store_true", help="update an existing app, keep its secrets"
    )
    put.set_defaults(run=add)
    apps.add_parser("list", help="list apps").set_defaults(run=list_apps)
    for name, text in (
        ("retire", "refuse new installs and install links; existing portals keep working"),
        ("unretire", "put a retired app back in service"),
    ):
        action = apps.add_parser(name, help=text)
        action.add_argument("slug")
        action.set_defaults(run=retire)
    link = apps.add_parser("install-link", help="a signed link that installs a portal (audited)")
    link.add_argument("slug")
    link_options(link)
    link.add_argument("--return-to", help="where the browser goes afterwards (allowed origin)")
    link.set_defaults(run=install_link)
    private_apps.register(apps)
