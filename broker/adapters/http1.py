"""A small HTTP/1.1 client on the event loop, for the two hosts the broker calls per cache
miss or refresh: Vault (Transit) and HubSpot's token endpoint. Pooled keep-alive
connections, one ``write`` per request, responses parsed by ``httptools`` (the parser
uvicorn serves with).

Why not httpx: a Transit batch or a token refresh is one small request, and a cold cache or
a busy refresher sends hundreds per second. httpx spent more CPU per request than the rest of
the work (the request written in two system calls, a cookie jar consulted on every response,
URL and header models, and httpcore polling every idle pooled connection before each
request), about a third of a cache miss's or a refresh's CPU. Neither host needs any of
that: one origin, a small body in, JSON out, no redirects, no cookies.

Failures are the caller's to map: :class:`CannotConnect` (an :class:`OSError`: refused, no
route, TLS refused; the request was not sent), any other :class:`OSError` (reset),
:class:`TimeoutError` (the whole exchange, or the connect, took too long) and
:class:`BadAnswer` (not HTTP, or the connection closed mid-answer). A connection that did not
finish its exchange cleanly is never reused.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import NamedTuple, cast
from urllib.parse import SplitResult, urlsplit

import httptools


class BadAnswer(Exception):
    """The server's answer was not a complete HTTP response."""


class CannotConnect(OSError):
    """No connection to the server (refused, unreachable, TLS handshake refused): the
    request never left."""


class Answer(NamedTuple):
    status: int
    body: bytes
    #: The values of the headers the pool was asked to keep (lower-case names).
    headers: dict[str, str]


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one exchange at a time (the pool sees to it)."""

    def __init__(self, keep_headers: frozenset[bytes]) -> None:
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._answer: asyncio.Future[Answer] | None = None
        self._body: list[bytes] = []
        self._keep_headers = keep_headers
        self._headers: dict[str, str] = {}
        self.reusable = False
        #: Whether the server answered anything to the current exchange.
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
        if self._headers:
            self._headers = {}

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._keep_headers and (name := name.lower()) in self._keep_headers:
            self._headers[name.decode("latin-1")] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.reusable = self._parser.should_keep_alive()
        answer, self._answer = self._answer, None
        if answer is not None and not answer.done():
            status = self._parser.get_status_code()
            answer.set_result(Answer(status, b"".join(self._body), self._headers))

    def _fail(self, exc: Exception) -> None:
        self.reusable = False
        answer, self._answer = self._answer, None
        if answer is not None and not answer.done():
            answer.set_exception(exc)
        if self._transport is not None:
            self._transport.close()

    async def exchange(self, request: bytes) -> Answer:
        assert self._transport is not None, "connected"
        assert self._answer is None, "one exchange at a time"
        self.reusable = self.answered = False
        answer: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._answer = answer
        self._transport.write(request)
        return await answer

    def close(self) -> None:
        self.reusable = False
        if self._transport is not None:
            self._transport.close()


class Http1Pool:
    """``await request(base, method, path, headers, body)`` -> :class:`Answer`, on a pooled
    connection to ``base`` (``http[s]://host[:port][/prefix]``).

    ``resend_stale``: a kept connection the server closed just as the request went out (its
    idle timeout: nothing was answered) sends the request again on a new one. Right for
    Vault; not for a call that must never go out twice unknowingly (HubSpot's token
    endpoint: the failure surfaces, outcome unknown, as httpx's did)."""

    def __init__(
        self,
        *,
        timeout: float,
        tls: ssl.SSLContext,
        keep: int = 16,
        connect_timeout: float | None = None,
        resend_stale: bool = True,
        keep_headers: tuple[str, ...] = (),
    ) -> None:
        self._timeout = timeout
        self._connect_timeout = connect_timeout or timeout
        self._tls = tls
        self._keep = keep
        self._resend_stale = resend_stale
        self._keep_headers = frozenset(name.lower().encode("latin-1") for name in keep_headers)
        self._idle: dict[str, list[_Connection]] = {}
        self._targets: dict[str, SplitResult] = {}

    def _target(self, base: str) -> SplitResult:
        target = self._targets.get(base)
        if target is None:
            target = self._targets[base] = urlsplit(base)
        return target

    async def request(
        self, base: str, method: str, path: str, headers: dict[str, str], body: bytes | None
    ) -> Answer:
        target = self._target(base)
        head = [f"{method} {target.path.rstrip('/')}{path} HTTP/1.1", f"Host: {target.netloc}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        if body is not None:
            head.append(f"Content-Length: {len(body)}")
        request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b"")
        async with asyncio.timeout(self._timeout):
            while True:
                connection, reused = await self._connection(base, target)
                try:
                    return await connection.exchange(request)
                except BadAnswer:
                    # A kept connection the server closed just now (its idle timeout): the
                    # request never reached it, so it may go again on a new connection.
                    if not (self._resend_stale and reused) or connection.answered:
                        raise
                finally:
                    idle = self._idle.setdefault(base, [])
                    if connection.reusable and len(idle) < self._keep:
                        idle.append(connection)
                    else:
                        connection.close()

    async def _connection(self, base: str, target: SplitResult) -> tuple[_Connection, bool]:
        """A kept connection to ``base`` (True) or a new one (False)."""
        idle = self._idle.get(base)
        while idle:
            connection = idle.pop()
            if connection.reusable:
                return connection, True
        secure = target.scheme == "https"
        host = target.hostname or "localhost"
        port = target.port or (443 if secure else 80)
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, connection = await asyncio.get_running_loop().create_connection(
                    lambda: _Connection(self._keep_headers),
                    host,
                    port,
                    ssl=self._tls if secure else None,
                    server_hostname=host if secure else None,
                )
        except TimeoutError:
            raise
        except OSError as exc:  # ssl.SSLError is one
            raise CannotConnect(f"cannot connect ({type(exc).__name__})") from exc
        return connection, False

    def close(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()
