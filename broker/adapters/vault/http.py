"""A small HTTP/1.1 client for Vault's API, on the event loop: pooled keep-alive connections,
one ``write`` per request, responses parsed by ``httptools`` (the parser uvicorn serves with).

Why not httpx: a Transit batch is one small JSON request, and a cold cache or a busy refresher
sends hundreds per second. httpx spent more CPU per request than the batch itself (the request
written in two system calls, a cookie jar consulted on every response, URL and header models),
about a third of a cache miss's CPU. Vault needs none of that: one origin per node, JSON in,
JSON out, no redirects, no cookies.

Failures are the caller's to map (``broker.adapters.vault.base``): :class:`OSError` (refused,
reset, TLS), :class:`TimeoutError` (the whole exchange took longer than ``timeout``) and
:class:`BadAnswer` (not HTTP, or the connection closed mid-answer) mean "this node cannot
answer now". A connection that did not finish its exchange cleanly is never reused.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import cast
from urllib.parse import urlsplit

import httptools


class BadAnswer(Exception):
    """The node's answer was not a complete HTTP response."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one exchange at a time (the pool sees to it)."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._answer: asyncio.Future[tuple[int, bytes]] | None = None
        self._body: list[bytes] = []
        self.reusable = False
        #: Whether the node answered anything to the current exchange.
        self.answered = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's or uvloop's (not an asyncio.Transport subclass): both write and close.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.answered = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(BadAnswer(f"not an HTTP answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        self._fail(BadAnswer("the connection closed before the answer was complete"))

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._body = []

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.reusable = self._parser.should_keep_alive()
        answer, self._answer = self._answer, None
        if answer is not None and not answer.done():
            answer.set_result((self._parser.get_status_code(), b"".join(self._body)))

    def _fail(self, exc: Exception) -> None:
        self.reusable = False
        answer, self._answer = self._answer, None
        if answer is not None and not answer.done():
            answer.set_exception(exc)
        if self._transport is not None:
            self._transport.close()

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        assert self._transport is not None, "connected"
        assert self._answer is None, "one exchange at a time"
        self.reusable = self.answered = False
        answer: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self._answer = answer
        self._transport.write(request)
        return await answer

    def close(self) -> None:
        self.reusable = False
        if self._transport is not None:
            self._transport.close()


class VaultHttp:
    """``await request(base, method, path, headers, body)`` -> (status, body), on a pooled
    connection to ``base`` (``http[s]://host[:port]``)."""

    def __init__(self, *, timeout: float, tls: ssl.SSLContext, keep: int = 16) -> None:
        self._timeout = timeout
        self._tls = tls
        self._keep = keep
        self._idle: dict[str, list[_Connection]] = {}

    async def request(
        self, base: str, method: str, path: str, headers: dict[str, str], body: bytes | None
    ) -> tuple[int, bytes]:
        target = urlsplit(base)
        head = [f"{method} {target.path.rstrip('/')}{path} HTTP/1.1", f"Host: {target.netloc}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        if body is not None:
            head.append(f"Content-Length: {len(body)}")
        request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b"")
        async with asyncio.timeout(self._timeout):
            while True:
                connection, reused = await self._connection(base)
                try:
                    return await connection.exchange(request)
                except BadAnswer:
                    # A kept connection the node closed just now (its idle timeout): the
                    # request never reached it, so it goes again on a new connection.
                    if not reused or connection.answered:
                        raise
                finally:
                    if connection.reusable and len(self._idle.setdefault(base, [])) < self._keep:
                        self._idle[base].append(connection)
                    else:
                        connection.close()

    async def _connection(self, base: str) -> tuple[_Connection, bool]:
        """A kept connection to ``base`` (True) or a new one (False)."""
        idle = self._idle.get(base)
        while idle:
            connection = idle.pop()
            if connection.reusable:
                return connection, True
        target = urlsplit(base)
        secure = target.scheme == "https"
        host = target.hostname or "localhost"
        port = target.port or (443 if secure else 80)
        _, connection = await asyncio.get_running_loop().create_connection(
            _Connection,
            host,
            port,
            ssl=self._tls if secure else None,
            server_hostname=host if secure else None,
        )
        return connection, False

    def close(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()
