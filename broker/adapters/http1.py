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
route, TLS refused, the connect timed out, or the kept connection closed before the request
was written; the request was not sent), any other :class:`OSError` (reset),
:class:`TimeoutError` (the whole exchange took too long) and :class:`BadAnswer` (not HTTP, or
the connection closed mid-answer). A connection that did not finish its exchange cleanly, or
that the server wrote to or half-closed between exchanges, is never reused; nor is one idle
longer than the pool's ``keepalive_expiry``. An answer with neither ``Content-Length`` nor
chunked encoding ends when the server closes the connection; interim ``1xx`` answers are
skipped.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
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


#: The headers that say where an answer's body ends (else: where the connection closes).
_FRAMING = frozenset((b"content-length", b"transfer-encoding"))


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one exchange at a time (the pool sees to it)."""

    def __init__(self, keep_headers: frozenset[bytes]) -> None:
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._answer: asyncio.Future[Answer] | None = None
        self._body: list[bytes] = []
        self._keep_headers = keep_headers
        self._headers: dict[str, str] = {}
        #: Whether the answer being read says how long its body is (Content-Length, chunked);
        #: None before its headers are complete.
        self._framed: bool | None = None
        self.reusable = False
        #: Whether the server answered anything to the current exchange.
        self.answered = False
        #: The loop's time when the connection went back to the pool.
        self.idle_since = 0.0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's or uvloop's (not an asyncio.Transport subclass): both write and close.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self._expecting():
            # Bytes nobody asked for (a late answer, a second one): whatever comes next on
            # this connection cannot be told apart from them.
            self.close()
            return
        self.answered = True
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(BadAnswer(f"not an HTTP answer: {exc!r}"))

    def eof_received(self) -> None:
        self.reusable = False
        self._end_at_close()  # the transport closes itself (None returned)

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        self._end_at_close()
        self._fail(BadAnswer("the connection closed before the answer was complete"))

    def _expecting(self) -> bool:
        """Whether bytes from the server are part of an answer asked for."""
        return self._answer is not None

    def _end_at_close(self) -> None:
        """An answer that says neither its length nor chunked ends with the connection."""
        if self._framed is False:
            self._framed = None
            self._complete()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._body = []
        self._framed = None
        if self._headers:
            self._headers = {}
        if self._answer is None:  # a second answer in the same read: see data_received
            self.reusable = False

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in _FRAMING:
            self._framed = True
        if self._keep_headers and name in self._keep_headers:
            self._headers[name.decode("latin-1")] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._framed = bool(self._framed)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._framed = None
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # Interim (100 Continue, 103 Early Hints): the final answer follows.
            self._body = []
            self._headers = {}
            return
        keep = status != 101 and self._parser.should_keep_alive()
        self.reusable = keep and self._answer is not None
        self._complete()

    def _complete(self) -> None:
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
        if self._transport.is_closing():
            raise CannotConnect("the connection closed before the request went out")
        answer: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._answer = answer
        try:
            self._transport.write(request)
        except RuntimeError as exc:  # uvloop: the transport closed under us
            self._answer = None
            self.close()
            raise CannotConnect("the connection closed before the request went out") from exc
        return await answer

    def usable(self, now: float, expiry: float) -> bool:
        """Whether a pooled connection may carry the next request."""
        transport = self._transport
        return (
            self.reusable
            and transport is not None
            and not transport.is_closing()
            and now - self.idle_since <= expiry
        )

    def close(self) -> None:
        self.reusable = False
        if self._transport is not None:
            self._transport.close()


class Http1Pool:
    """``await request(base, method, path, headers, body)`` -> :class:`Answer`, on a pooled
    connection to ``base`` (``http[s]://host[:port][/prefix]``).

    At most ``limit`` requests are out at once (so at most that many connections open: the
    others wait, within their timeout); ``keep`` connections per base stay open between
    requests, each for at most ``keepalive_expiry`` seconds (under the server's own idle
    timeout, so that the server rarely closes one just as a request goes out on it).

    ``resend_stale``: a kept connection the server closed just as the request went out (its
    idle timeout: nothing was answered) sends the request again on a new one. Right for
    Vault; not for a call that must never go out twice unknowingly (HubSpot's token
    endpoint: the failure surfaces, outcome unknown, as httpx's did). A request that
    provably did not go out (:class:`CannotConnect` on a kept connection) always goes again
    on a new one."""

    def __init__(
        self,
        *,
        timeout: float,
        tls: ssl.SSLContext,
        keep: int = 16,
        limit: int = 100,
        keepalive_expiry: float = 5.0,
        connect_timeout: float | None = None,
        resend_stale: bool = True,
        keep_headers: tuple[str, ...] = (),
    ) -> None:
        self._timeout = timeout
        self._connect_timeout = connect_timeout or timeout
        self._tls = tls
        self._keep = keep
        self._slots = asyncio.Semaphore(limit)
        self._expiry = keepalive_expiry
        self._resend_stale = resend_stale
        self._keep_headers = frozenset(name.lower().encode("latin-1") for name in keep_headers)
        #: Per base, oldest first.
        self._idle: dict[str, deque[_Connection]] = {}
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
        async with asyncio.timeout(self._timeout), self._slots:
            connection, answer = await self._exchange(base, target, request, self._resend_stale)
            self._release(base, connection)
            return answer

    async def _exchange(
        self, base: str, target: SplitResult, request: bytes, resend_stale: bool
    ) -> tuple[_Connection, Answer]:
        """The answer and its connection (the caller's to release); a connection that
        brought no answer is released here."""
        while True:
            connection, reused = await self._connection(base, target)
            try:
                return connection, await connection.exchange(request)
            except CannotConnect:
                self._release(base, connection)
                if not reused:
                    raise  # a kept connection closing under us: try a new one
            except BadAnswer:
                self._release(base, connection)
                # A kept connection the server closed just now (its idle timeout): the
                # request never reached it, so it may go again on a new connection.
                if not (resend_stale and reused) or connection.answered:
                    raise
            except BaseException:
                self._release(base, connection)
                raise

    def _release(self, base: str, connection: _Connection) -> None:
        idle = self._idle.setdefault(base, deque())
        if connection.reusable and len(idle) < self._keep:
            connection.idle_since = asyncio.get_running_loop().time()
            idle.append(connection)
        else:
            connection.close()

    async def _connection(self, base: str, target: SplitResult) -> tuple[_Connection, bool]:
        """A kept connection to ``base`` (True) or a new one (False)."""
        idle = self._idle.get(base)
        if idle:
            now = asyncio.get_running_loop().time()
            while idle:
                connection = idle.pop()  # the most recently used
                if connection.usable(now, self._expiry):
                    return connection, True
                connection.close()
                # The older ones have been idle longer still.
                while idle and not idle[0].usable(now, self._expiry):
                    idle.popleft().close()
        secure = target.scheme == "https"
        host = target.hostname or "localhost"
        port = target.port or (443 if secure else 80)
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, connection = await asyncio.get_running_loop().create_connection(
                    self._new_connection,
                    host,
                    port,
                    ssl=self._tls if secure else None,
                    server_hostname=host if secure else None,
                )
        except OSError as exc:  # ssl.SSLError and the connect's TimeoutError are ones
            raise CannotConnect(f"cannot connect ({type(exc).__name__})") from exc
        return connection, False

    def _new_connection(self) -> _Connection:
        return _Connection(self._keep_headers)

    def close(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()
