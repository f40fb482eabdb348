"""The lean HTTP/1.1 client (:mod:`broker.adapters.http1`) with the answer's body streamed:
``await pool.open(...)`` returns once the answer's status and headers arrived; its body
is read chunk by chunk (``chunks()``), at most :data:`_HIGH` bytes buffered before the
connection stops reading, and ``close()`` hands the connection back (kept alive when the
body was read to its end) or drops it.

The request is one ``write`` with its body held whole (the gateway's replayable bodies);
a request body that streams goes through httpx (:mod:`broker.adapters.hubspot_api`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Sequence

from broker.adapters.http1 import Answer, Http1Pool, _Connection

#: Buffered body bytes at which the connection pauses reading, and resumes below the low mark.
_HIGH = 256 * 1024
_LOW = 64 * 1024


class _StreamedConnection(_Connection):
    """A connection whose exchange resolves at the answer's headers; the body follows."""

    def __init__(self) -> None:
        super().__init__(frozenset())
        #: The answer's headers (names lower-case), in order.
        self.head: list[tuple[bytes, bytes]] = []
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        #: The body of the answer returned is arriving.
        self._reading = False
        self._ended = False
        self._error: Exception | None = None
        self._wake: asyncio.Future[None] | None = None

    def _expecting(self) -> bool:
        return self._reading or super()._expecting()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.head = []

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self.head.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            return  # interim: the final answer follows
        answer, self._answer = self._answer, None
        self._reading, self._ended, self._error = True, False, None
        self._chunks.clear()
        self._buffered = 0
        if answer is not None and not answer.done():
            answer.set_result(Answer(status, b"", {}))

    def on_body(self, body: bytes) -> None:
        if not self._reading:
            super().on_body(body)
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake_up()

    def on_message_complete(self) -> None:
        if not self._reading:
            super().on_message_complete()  # an interim answer
            return
        self._framed = None
        self.reusable = self._parser.should_keep_alive()
        self._end()

    def _complete(self) -> None:
        if self._reading:  # a body delimited by the connection's close
            self._end()
        else:
            super()._complete()

    def _fail(self, exc: Exception) -> None:
        super()._fail(exc)
        if self._reading:
            self._error = exc
            self._reading = False
            self._wake_up()

    def _end(self) -> None:
        self._reading = False
        self._ended = True
        self._wake_up()

    def _wake_up(self) -> None:
        wake, self._wake = self._wake, None
        if wake is not None and not wake.done():
            wake.set_result(None)

    def settle(self) -> None:
        """The answer is done with: its unread chunks dropped, reading resumed."""
        self._chunks.clear()
        self._buffered = 0
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()

    async def body(self, timeout: float) -> AsyncIterator[bytes]:
        """The answer's body as it arrives; :class:`TimeoutError` when nothing came for
        ``timeout`` seconds, :class:`~broker.adapters.http1.BadAnswer` when cut off."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._paused and self._buffered < _LOW and self._transport is not None:
                    self._paused = False
                    self._transport.resume_reading()
                yield chunk
            elif self._error is not None:
                raise self._error
            elif self._ended:
                return
            else:
                self._wake = asyncio.get_running_loop().create_future()
                async with asyncio.timeout(timeout):
                    await self._wake


class Streamed:
    """An answer whose body is still to read: ``status``, ``headers``, ``chunks()``,
    ``close()`` (always: it hands the connection back, or drops it)."""

    def __init__(
        self, pool: StreamPool, base: str, connection: _StreamedConnection, status: int
    ) -> None:
        self._pool: StreamPool | None = pool
        self._base = base
        self._connection = connection
        self.status = status
        self.headers: list[tuple[bytes, bytes]] = connection.head

    def chunks(self, timeout: float) -> AsyncIterator[bytes]:
        return self._connection.body(timeout)

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool._done(self._base, self._connection)


class StreamPool(Http1Pool):
    """:class:`Http1Pool` whose answers stream (``open``); ``limit`` bounds the answers open
    at once (their bodies being read included)."""

    def _new_connection(self) -> _Connection:
        return _StreamedConnection()

    async def open(
        self,
        base: str,
        method: str,
        target: str,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
        *,
        resend_stale: bool,
    ) -> Streamed:
        """Send ``method target`` (path and query, under ``base``'s path) with ``headers``
        (no framing ones) and ``body``; the answer once its headers arrived, within the
        pool's timeout. ``resend_stale``: as :class:`Http1Pool`'s, for this request."""
        where = self._target(base)
        head = b"%s %s%s HTTP/1.1\r\nHost: %s\r\n" % (
            method.encode("latin-1"),
            where.path.rstrip("/").encode("latin-1"),
            target.encode("latin-1"),
            where.netloc.encode("latin-1"),
        )
        lines = [head, *(b"%s: %s\r\n" % pair for pair in headers)]
        if body or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
            lines.append(b"content-length: %d\r\n" % len(body))
        lines += [b"\r\n", body]
        await self._slots.acquire()
        try:
            async with asyncio.timeout(self._timeout):
                connection, answer = await self._exchange(
                    base, where, b"".join(lines), resend_stale
                )
        except BaseException:
            self._slots.release()
            raise
        assert isinstance(connection, _StreamedConnection)
        return Streamed(self, base, connection, answer.status)

    def _done(self, base: str, connection: _StreamedConnection) -> None:
        connection.settle()
        self._release(base, connection)
        self._slots.release()
