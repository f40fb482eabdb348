"""``python -m broker.dev.faults POINT --port N``: ``broker serve`` that SIGKILLs itself at a
named step of the refresh protocol (``after_claim``, ``after_hubspot``, ``after_journal``).

The fault tests' way to crash a replica at an exact point; production code only offers the
hook (``RefreshEngine(checkpoint=...)``), never a setting that arms it.
"""

from __future__ import annotations

import argparse
import os
import signal
from collections.abc import Callable
from dataclasses import replace

import structlog

from broker import server
from broker.config import load_settings

POINTS = ("after_claim", "after_hubspot", "after_journal")
log = structlog.get_logger(__name__)


def crash_at(point: str) -> Callable[[str], None]:
    def checkpoint(name: str) -> None:
        if name == point:
            log.warning("refresh.crash_point", point=name)
            os.kill(os.getpid(), signal.SIGKILL)

    return checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m broker.dev.faults")
    parser.add_argument("point", choices=POINTS)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    server.run(replace(load_settings(), port=args.port), checkpoint=crash_at(args.point))


if __name__ == "__main__":
    main()
