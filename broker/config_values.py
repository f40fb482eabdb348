"""The value types of settings (:class:`Secret`, :class:`SentinelUrl`) and the constants
:mod:`broker.config` and :mod:`broker.config_checks` share. No dependency on either."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

PREFIX = "BROKER_"
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel")
#: Longest an operator-signed install link may stay valid (seconds): 30 days.
MAX_INSTALL_LINK_TTL = 30 * 86400


class Secret:
    """A string that never shows itself in a repr, a log line or a traceback.

    :meth:`from_file` makes one backed by a file (``BROKER_<NAME>_FILE``, e.g. a mounted
    Kubernetes Secret): :meth:`get` reads the file again whenever it changed (its mtime,
    size or inode: Kubernetes swaps a symlink on rotation), so whoever calls ``get`` at use
    time sees a rotated secret without a restart. A file that cannot be read any more keeps
    the last value (and the next ``get`` tries again)."""

    __slots__ = ("_path", "_stamp", "_value")

    def __init__(self, value: str) -> None:
        self._value = value
        self._path = ""
        self._stamp: tuple[int, int, int] | None = None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Secret:
        """Raises OSError when the file cannot be read now."""
        secret = cls("")
        secret._path = os.fspath(path)
        secret._load(os.stat(secret._path))
        return secret

    def _load(self, stat: os.stat_result) -> None:
        with open(self._path, encoding="utf-8") as file:
            # Files written by `echo` or editors end in a newline the value never has.
            self._value = file.read().strip()
        self._stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    @property
    def path(self) -> str:
        """The file it comes from ('' for a plain value)."""
        return self._path

    def get(self) -> str:
        if self._path:
            try:
                stat = os.stat(self._path)
                if (stat.st_mtime_ns, stat.st_size, stat.st_ino) != self._stamp:
                    self._load(stat)
            except (OSError, UnicodeDecodeError):
                pass  # mid-rotation or gone: the last value, until the file is back
        return self._value

    def __bool__(self) -> bool:
        return bool(self.get())

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.get() == self.get()

    def __hash__(self) -> int:
        return hash(self.get())


@dataclass(frozen=True, slots=True)
class SentinelUrl:
    """``redis+sentinel://[[user]:password@]host:port[,host:port...]/MASTER[/DB]`` (``rediss+``
    for TLS): Redis through Sentinel, which names the current master of ``master``; the
    password, user and TLS apply to the master (and the sentinels, as they usually share
    them)."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    tls: bool = False

    @classmethod
    def parse(cls, url: str) -> SentinelUrl | None:
        """None for a plain ``redis://``/``rediss://``/``unix://`` URL; ValueError when a
        sentinel URL is malformed (the message never repeats the URL: it may hold a password)."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis+sentinel", "rediss+sentinel"):
            return None
        if parts.query or parts.fragment:
            raise ValueError("a sentinel URL takes no query parameters")
        credentials, _, hosts = parts.netloc.rpartition("@")
        username, _, password = credentials.partition(":")
        sentinels = []
        for host in hosts.split(","):
            name, _, port = host.rpartition(":")
            if not name or not port.isascii() or not port.isdigit():
                raise ValueError("each sentinel must be host:port ([v6 address]:port)")
            sentinels.append((name.removeprefix("[").removesuffix("]"), int(port)))
        path = [p for p in parts.path.split("/") if p]
        if not 1 <= len(path) <= 2 or (len(path) == 2 and not path[1].isdigit()):
            raise ValueError("the path must be /MASTER or /MASTER/DB")
        return cls(
            sentinels=tuple(sentinels),
            master=path[0],
            db=int(path[1]) if len(path) == 2 else 0,
            username=unquote(username) or None,
            password=unquote(password) or None,
            tls=parts.scheme == "rediss+sentinel",
        )
