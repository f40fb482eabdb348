"""What every part of the dev stack shares: names, addresses, errors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

HOST = "127.0.0.1"
ServerName = Literal[
    "postgres",
    "valkey",
    "openbao",
    # failover topologies (EmbeddedStack(postgres_standby=True, redis_sentinel=True)):
    "postgres_standby",
    "valkey_replica",
    "sentinel_1",
    "sentinel_2",
    "sentinel_3",
]
#: The master name the sentinels watch.
SENTINEL_MASTER = "broker"


class StackError(Exception):
    """The dev stack cannot do what was asked."""


class StackStartError(StackError):
    """Servers did not become ready. ``failures`` maps each to its reason and log tail."""

    def __init__(self, failures: Mapping[ServerName, str]) -> None:
        self.failures = dict(failures)
        super().__init__(
            "\n".join(f"could not start {name}: {why}" for name, why in self.failures.items())
        )


class VaultBootstrapError(StackError):
    """A mount or key exists with an incompatible type; bootstrap never "fixes" it."""


@dataclass(frozen=True)
class BackendUrls:
    """Where the three backends answer. ``vault_token`` is out of the repr: it may be root."""

    database_url: str
    redis_url: str
    vault_addr: str
    vault_token: str = field(repr=False)


@dataclass(frozen=True)
class ServerProcess:
    """One running server: its leader pid (also its process group id), port and log file."""

    name: ServerName
    pid: int
    port: int
    log_path: Path


@dataclass(frozen=True)
class OsUser:
    name: str
    uid: int
    gid: int
