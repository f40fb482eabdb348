"""Starting one server process of a stack: spawned by the stack's :class:`Spawner` thread
(see "No orphans" in the package contract), waited for until it answers, retried on a bind
race, its log tail (secrets redacted) in every failure."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from broker.dev.stack._common import OsUser, ServerName, ServerProcess, StackError
from broker.dev.stack._processes import (
    BIND_CONFLICT,
    POLL_SECONDS,
    PORT_ATTEMPTS,
    Recipe,
    ServerFailed,
    Spawner,
    die_with_parent,
    free_port,
    has_exited,
    tail,
    terminate,
)


class Launcher:
    """Runs servers and one-off tools for a stack whose files live under ``root``; logs go
    to ``root/logs/<name>.log``. ``lock``, ``closing`` and ``procs`` are the stack's: every
    spawned process is recorded in ``procs`` under ``lock``, and nothing starts once
    ``closing`` is set. ``redact`` are secrets left out of log tails."""

    def __init__(
        self,
        root: Path,
        *,
        start_timeout: float,
        redact: tuple[str, ...],
        lock: threading.Lock,
        closing: threading.Event,
        procs: dict[ServerName, subprocess.Popen[bytes]],
    ) -> None:
        self._root = root
        self._logs = root / "logs"
        self._start_timeout = start_timeout
        self._redact = redact
        self._lock = lock
        self._closing = closing
        self._procs = procs
        self._preexec = die_with_parent()
        self._spawner = Spawner()

    def close(self) -> None:
        """Stop the spawner thread (after the stack has reaped its servers)."""
        self._spawner.close()

    def start_all(
        self, starters: dict[ServerName, Callable[[], ServerProcess]]
    ) -> tuple[dict[ServerName, ServerProcess], dict[ServerName, str]]:
        """Run every starter on its own thread; returns (the started, why the others failed)."""
        started: dict[ServerName, ServerProcess] = {}
        failures: dict[ServerName, str] = {}
        pool = ThreadPoolExecutor(max_workers=len(starters), thread_name_prefix="embedded-stack")
        try:
            futures = {name: pool.submit(start) for name, start in starters.items()}
            for name, future in futures.items():
                try:
                    started[name] = future.result()
                except (ServerFailed, StackError) as exc:
                    failures[name] = str(exc)
                except Exception as exc:  # reported by name in StackStartError, not swallowed
                    failures[name] = f"{type(exc).__name__}: {exc}"
        except BaseException:  # e.g. Ctrl-C: make the workers give up before waiting for them
            self._closing.set()
            raise
        finally:
            pool.shutdown(wait=True)
        return started, failures

    def run_once(self, tool: str, argv: list[str], recipe: Recipe) -> None:
        """A short-lived tool run as the server's user, waited for by this worker thread (so
        it need not be forked by the spawner); its output goes to ``logs/<tool>.log``."""
        log_path = self._logs / f"{tool}.log"
        with log_path.open("ab") as log:
            offset = log.tell()
            result = subprocess.run(
                argv,
                cwd=self._root,
                check=False,
                timeout=self._start_timeout,
                **self._child(recipe, log),
            )
        if result.returncode != 0:
            log_tail = tail(log_path, offset, ())
            raise ServerFailed(
                f"{tool} exited with {result.returncode}; {log_path.name}:\n{log_tail}"
            )

    def launch(self, recipe: Recipe, *, port: int | None) -> ServerProcess:
        """Spawn and wait until ready. A bind conflict is retried: on a fresh port, or after a
        pause on the same *port* (a restart keeps its address)."""
        log_path = self._logs / f"{recipe.name}.log"
        for attempt in range(1, PORT_ATTEMPTS + 1):
            chosen = port if port is not None else free_port(pair=recipe.port_pair)
            offset = log_path.stat().st_size if log_path.exists() else 0
            proc = self._spawn(recipe, chosen, log_path)
            try:
                self._await_ready(recipe, proc, chosen, offset)
                if recipe.after_ready is not None:
                    recipe.after_ready(chosen)
            except ServerFailed as exc:
                terminate([(recipe.name, proc, recipe.stop_signal)])
                if exc.bind_conflict and attempt < PORT_ATTEMPTS:
                    time.sleep(0.2 * attempt if port is not None else 0)
                    continue
                log_tail = tail(log_path, offset, self._redact)
                status = f"exit status {proc.returncode}"
                raise ServerFailed(f"{exc} ({status}); {log_path.name}:\n{log_tail}") from None
            except Exception as exc:  # e.g. bootstrap_vault: reported with the log, not retried
                terminate([(recipe.name, proc, recipe.stop_signal)])
                log_tail = tail(log_path, offset, self._redact)
                reason = f"{type(exc).__name__}: {exc}; {log_path.name}:\n{log_tail}"
                raise ServerFailed(reason) from exc
            except BaseException:
                terminate([(recipe.name, proc, recipe.stop_signal)])
                raise
            return ServerProcess(recipe.name, proc.pid, chosen, log_path)
        raise AssertionError("unreachable: the last attempt raises")

    def _child(self, recipe: Recipe, log: BinaryIO) -> dict[str, Any]:
        """How the stack runs each child: no stdin, both output streams to ``log``, the
        recipe's environment, dying with its parent, as the recipe's user."""
        return {
            "stdin": subprocess.DEVNULL,
            "stdout": log,
            "stderr": subprocess.STDOUT,
            "env": dict(recipe.env),
            "preexec_fn": self._preexec,
            **_user_kwargs(recipe.run_as),
        }

    def _spawn(self, recipe: Recipe, port: int, log_path: Path) -> subprocess.Popen[bytes]:
        argv = recipe.argv(port)  # before the lock: it may look up other servers' ports

        def spawn() -> subprocess.Popen[bytes]:
            with self._lock:  # stop() snapshots the processes under the same lock
                if self._closing.is_set():
                    raise ServerFailed("the stack is stopping")
                with log_path.open("ab") as log:  # the child keeps its own descriptor
                    proc = subprocess.Popen(
                        argv,
                        cwd=recipe.cwd,
                        start_new_session=True,  # its own group: Ctrl-C is ours to handle
                        **self._child(recipe, log),
                    )
                self._procs[recipe.name] = proc
                return proc

        return self._spawner.call(spawn)

    def _await_ready(
        self, recipe: Recipe, proc: subprocess.Popen[bytes], port: int, log_offset: int
    ) -> None:
        deadline = time.monotonic() + self._start_timeout
        while True:
            if self._closing.is_set():
                raise ServerFailed("the stack is stopping")
            if has_exited(proc):  # not reaped: terminate still signals its group
                log = self._logs / f"{recipe.name}.log"
                raise ServerFailed(
                    f"exited before answering on port {port}",
                    bind_conflict=bool(BIND_CONFLICT.search(tail(log, log_offset, ()))),
                )
            if recipe.probe(port):
                return
            if time.monotonic() > deadline:
                raise ServerFailed(f"did not answer within {self._start_timeout:g}s")
            time.sleep(POLL_SECONDS)


def _user_kwargs(user: OsUser | None) -> dict[str, Any]:
    if user is None:
        return {}
    return {"user": user.uid, "group": user.gid, "extra_groups": []}
