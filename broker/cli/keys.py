"""``broker keys`` (Transit and signing keys) and ``broker retention``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from broker.cli._ops import Operations, View
from broker.cli._output import EXIT_FAILED, Out
from broker.core.signing import Purpose


async def transit(ops: Operations, args: argparse.Namespace, out: Out) -> None:
    def progress(report: View) -> None:
        if not out.as_json:
            done = report["rewrapped"] + report["skipped"]
            print(
                f"\r  rewrapped {done} ciphertexts ({report['failed']} failed)",
                end="",
                file=sys.stderr,
                flush=True,
            )

    if args.sub == "rewrap":
        report = await ops.transit_rewrap(
            batch=args.batch, limit=args.limit, retire=args.retire, progress=progress
        )
        out.note("")
    else:
        report = await ops.transit_status()
    out.record(report)
    if report["failed"]:
        raise SystemExit(EXIT_FAILED)


async def signing(ops: Operations, args: argparse.Namespace, out: Out) -> None:
    if args.sub == "rotate-signing":
        rows = await ops.signing_rotate(args.purpose, overlap_seconds=args.overlap_hours * 3600)
    else:
        rows = await ops.signing_status()
    out.rows(rows, ["purpose", "key", "latest_version", "retiring"])


async def sweep(ops: Operations, args: argparse.Namespace, out: Out) -> None:
    report = await ops.retention_sweep()
    if report["swept"]:
        text = "\n".join(f"{table:14} {count}" for table, count in report["deleted"].items())
    else:
        text = "another sweep is running (advisory lock held); nothing deleted"
    out.emit(report, text)


def _transit_batch(raw: str) -> int:
    value = int(raw)
    if not 1 <= value <= 240:
        raise argparse.ArgumentTypeError("must be 1-240 (OpenBao refuses larger batches)")
    return value


def register(sub: Any) -> None:
    keys = sub.add_parser("keys", help="Transit and signing keys").add_subparsers(
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
    rewrap.set_defaults(run=transit)
    keys.add_parser("status", help="key versions and what still needs a rewrap").set_defaults(
        run=transit
    )
    rotate = keys.add_parser(
        "rotate-signing",
        help="rotate signing keys: the new version signs at once, the old ones verify until "
        "the overlap ends (audited)",
    )
    rotate.add_argument("purpose", nargs="+", choices=[*(p.value for p in Purpose), "all"])
    rotate.add_argument("--overlap-hours", type=float, default=24.0)
    rotate.set_defaults(run=signing)
    keys.add_parser(
        "signing-status", help="signing keys: latest versions and retirements"
    ).set_defaults(run=signing)

    retention = sub.add_parser("retention", help="delete expired rows").add_subparsers(
        dest="sub", required=True
    )
    retention.add_parser(
        "sweep", help="one retention sweep now (skipped while another runs); counts per table"
    ).set_defaults(run=sweep)
