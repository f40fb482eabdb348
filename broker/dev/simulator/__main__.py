"""`python -m broker.dev.simulator`: run the HubSpot simulator standalone.

    python -m broker.dev.simulator --port 8090 \
        --client-id demo --client-secret s3cret --redirect-uri http://localhost:8080/callback

The app and portal given here can be extended at runtime through the `/_sim/` API.
Secrets given on the command line are never echoed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import uvicorn

from broker.dev.simulator._model import DEFAULT_APP_SCOPES, DEFAULT_USER, DEFAULT_USER_ID
from broker.dev.simulator.server import make_config
from broker.dev.simulator.state import Simulator

DEFAULT_HUB_ID = 12345678


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m broker.dev.simulator", description="Run the HubSpot simulator."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--client-id", help="register one app with this client id")
    parser.add_argument(
        "--client-secret", action="append", default=[], help="its secret (repeat to rotate)"
    )
    parser.add_argument(
        "--redirect-uri", action="append", default=[], help="its redirect URL (repeatable)"
    )
    parser.add_argument(
        "--scope", action="append", help=f"its required scopes (default: {DEFAULT_APP_SCOPES})"
    )
    parser.add_argument("--optional-scope", action="append", default=[])
    parser.add_argument(
        "--hub-id", type=int, action="append", help=f"portals to create (default: {DEFAULT_HUB_ID})"
    )
    parser.add_argument("--user", default=DEFAULT_USER)
    parser.add_argument("--user-id", type=int, default=DEFAULT_USER_ID)
    parser.add_argument("--token-ttl", type=int, default=1800, help="access token lifetime (s)")
    parser.add_argument("--code-ttl", type=int, default=600, help="auth code lifetime (s)")
    parser.add_argument("--rotate", action="store_true", help="rotate refresh tokens")
    parser.add_argument("--consent", choices=("auto", "page"), default="auto")
    return parser


def build_simulator(args: argparse.Namespace) -> Simulator:
    sim = Simulator()
    sim.configure(
        access_token_ttl=args.token_ttl,
        code_ttl=args.code_ttl,
        rotate_refresh_tokens=args.rotate,
        consent=args.consent,
    )
    for hub_id in args.hub_id or [DEFAULT_HUB_ID]:
        sim.add_portal(hub_id, user=args.user, user_id=args.user_id)
    if args.client_id:
        sim.add_app(
            args.client_id,
            args.client_secret,
            args.redirect_uri,
            scopes=args.scope or DEFAULT_APP_SCOPES,
            optional_scopes=args.optional_scope,
        )
    return sim


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.client_id and (not args.client_secret or not args.redirect_uri):
        parser.error("--client-id needs at least one --client-secret and --redirect-uri")
    try:
        sim = build_simulator(args)
    except ValueError as error:
        parser.error(str(error))
    print(
        f"HubSpot simulator on http://{args.host}:{args.port} "
        f"(app: {args.client_id or 'none, add one via POST /_sim/apps'})",
        file=sys.stderr,
    )
    config = make_config(sim, args.host, args.port)
    config.log_level = "info"
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
