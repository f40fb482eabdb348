"""``python -m broker.dev.faults POINT --port N [--pause]``: ``broker serve`` that SIGKILLs
itself (or, with ``--pause``, SIGSTOPs itself once, for the test to SIGCONT) at a named step
of the refresh protocol (``after_claim``, ``after_hubspot``, ``after_journal``).

The fault tests' way to crash a replica at an exact point; production code only offers the
hook (``RefreshEngine(checkpoint=...)``), never a setting that arms it.
"""

from __future__ import annotations

import argparse
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import replace

import structlog

from broker import server
from broker.config import load_settings

POINTS = ("after_claim", "after_hubspot", "after_journal")
log = structlog.get_logger(__name__)


def crash_at(point: str, *, pause: bool = False) -> Callable[[str], Awaitable[None]]:
    paused = False

    async def checkpoint(name: str) -> None:
        nonlocal paused
        if name != point:
            return
        if not pause:
            log.warning("refresh.crash_point", point=name)
            os.kill(os.getpid(), signal.SIGKILL)
        elif not paused:  # the first time only: the test resumes it with SIGCONT
            paused = True
            log.warning("refresh.pause_point", point=name)
            os.kill(os.getpid(), signal.SIGSTOP)

    return checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m broker.dev.faults")
    parser.add_argument("point", choices=POINTS)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pause", action="store_true", help="SIGSTOP (once), not SIGKILL")
    args = parser.parse_args()
    checkpoint = crash_at(args.point, pause=args.pause)
    server.run(replace(load_settings(), port=args.port), checkpoint=checkpoint)


if __name__ == "__main__":
    main()
