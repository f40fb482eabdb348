"""The lean HTTP/1.1 client (broker/adapters/http1.py) against a raw server that writes
exact bytes: interim answers, stray bytes, close-delimited bodies, idle expiry, the
connection cap, connect timeouts; and what HubSpot's adapter makes of them. Its streamed
mode (broker/adapters/http1_stream.py, the gateway's): bodies in chunks, large ones read
under back-pressure, connections kept only when the body was read to its end."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest

from broker.adapters import tls
from broker.adapters.http1 import BadAnswer, CannotConnect, Http1Pool
from broker.adapters.http1_stream import StreamPool
from broker.adapters.hubspot_http import HubSpotHttp, NotSent
from broker.config import load_settings
from tests.tls import CertificateAuthority

#: Answers one request: (its head and body as read, the stream to write to).
Answer = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]


def ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


class Raw:
    """A server that hands each request (head, then Content-Length bytes) to ``answer``."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.open = 0
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                await self.answer(request, writer)
                if writer.is_closing():
                    return
        finally:
            self.open -= 1
            writer.close()


@asynccontextmanager
async def serving(
    answer: Answer, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[str, Raw]]:
    raw = Raw(answer)
    server = await asyncio.start_server(raw.handle, "127.0.0.1", 0, ssl=ssl_context)
    port = server.sockets[0].getsockname()[1]
    scheme = "https" if ssl_context else "http"
    try:
        yield f"{scheme}://127.0.0.1:{port}", raw
    finally:
        server.close()


def pool(**options: object) -> Http1Pool:
    return Http1Pool(timeout=5.0, tls=tls.context(), **options)  # type: ignore[arg-type]


def numbered() -> Answer:
    """Answers ``answer-1``, ``answer-2``... in the order requests arrive."""
    count = 0

    async def answer(request: bytes, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        count += 1
        writer.write(ok(b"answer-%d" % count))

    return answer


async def test_an_interim_answer_is_skipped_and_its_final_answer_stays_with_its_request() -> None:
    count = 0

    async def answer(request: bytes, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        count += 1
        if count == 1:  # the final answer a moment after the interim one
            writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.2)
        if count == 2:  # both in one write
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        writer.write(ok(b"answer-%d" % count))

    async with serving(answer) as (base, raw):
        client = pool()
        first = await client.request(base, "POST", "/token", {}, b"portal=1")
        second = await client.request(base, "POST", "/token", {}, b"portal=2")
        third = await client.request(base, "POST", "/token", {}, b"portal=3")
        client.close()
    assert (first.status, first.body) == (200, b"answer-1")
    assert (second.status, second.body) == (200, b"answer-2")
    assert (third.status, third.body) == (200, b"answer-3")
    assert raw.connections == 1  # the connection stays usable after interim answers


async def test_bytes_between_exchanges_retire_the_connection() -> None:
    count = 0

    async def answer(request: bytes, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        count += 1
        writer.write(ok(b"answer-%d" % count))
        if count == 1:  # then the start of an answer nobody asked for
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\nstray")

    async with serving(answer) as (base, raw):
        client = pool()
        first = await client.request(base, "GET", "/a", {}, None)
        await asyncio.sleep(0.3)  # the stray bytes arrive while the connection is idle
        second = await client.request(base, "GET", "/b", {}, None)
        client.close()
    assert first.body == b"answer-1"
    assert (second.status, second.body) == (200, b"answer-2")
    assert raw.connections == 2


async def test_a_close_delimited_answer_ends_with_the_connection() -> None:
    async def answer(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\n\r\nupstream ")
        await writer.drain()
        writer.write(b"unreachable")
        writer.close()

    async with serving(answer) as (base, raw):
        client = pool(resend_stale=False)
        got = await client.request(base, "POST", "/token", {}, b"x")
        again = await client.request(base, "POST", "/token", {}, b"x")
        client.close()
    assert (got.status, got.body) == (502, b"upstream unreachable")
    assert (again.status, again.body) == (502, b"upstream unreachable")
    assert raw.connections == 2  # never reused


async def test_an_answer_cut_short_of_its_length_is_still_a_bad_answer() -> None:
    async def answer(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"access_tok')
        writer.close()

    async with serving(answer) as (base, _):
        client = pool(resend_stale=False)
        with pytest.raises(BadAnswer):
            await client.request(base, "POST", "/token", {}, b"x")
        client.close()


async def test_kept_connections_expire_after_keepalive_expiry() -> None:
    async with serving(numbered()) as (base, raw):
        lasting, expiring = pool(keepalive_expiry=60.0), pool(keepalive_expiry=0.05)
        for client in (lasting, expiring):
            await client.request(base, "GET", "/", {}, None)
            await asyncio.sleep(0.2)
            await client.request(base, "GET", "/", {}, None)
            client.close()
    assert raw.connections == 1 + 2  # kept by the one, a new connection for the other


async def test_at_most_limit_requests_are_out_at_once() -> None:
    release = asyncio.Event()

    async def answer(request: bytes, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.write(ok(b"done"))

    async with serving(answer) as (base, raw):
        client = pool(limit=2)
        calls = [asyncio.create_task(client.request(base, "GET", "/", {}, None)) for _ in range(5)]
        for _ in range(100):
            if raw.connections >= 2:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # room for more connections, were any allowed
        opened = raw.connections
        release.set()
        answers = await asyncio.gather(*calls)
        client.close()
    assert opened == 2
    assert [a.body for a in answers] == [b"done"] * 5
    assert raw.connections == 2  # the waiting requests took the kept connections


@contextmanager
def unaccepted_listener() -> Iterator[str]:
    """A port whose accept queue is full: a connect to it hangs (SYNs dropped)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):  # fill the queue
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        yield f"http://127.0.0.1:{port}"
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def test_a_connect_that_times_out_is_cannot_connect() -> None:
    with unaccepted_listener() as base:
        client = pool(connect_timeout=0.3)
        with pytest.raises(CannotConnect):  # the request never left
            await client.request(base, "POST", "/token", {}, b"x")
        client.close()


def hubspot(env: dict[str, str], base: str) -> HubSpotHttp:
    settings = load_settings({**env, "BROKER_HUBSPOT_API_URL": base, "BROKER_HUBSPOT_TIMEOUT": "1"})
    http = HubSpotHttp(settings)
    assert not http.uses_httpx
    return http


async def test_hubspot_connect_timeout_is_not_sent(env: dict[str, str]) -> None:
    with unaccepted_listener() as base:
        http = hubspot(env, base)
        with pytest.raises(NotSent):  # retried once by the adapter, outcome known
            await http.send("POST", "/oauth/v1/token", {"grant_type": "refresh_token"})
        await http.close()


async def test_hubspot_requests_ask_for_an_unencoded_body_and_read_a_proxys_502(
    env: dict[str, str],
) -> None:
    async def answer(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\n\r\n<html>bad</html>")
        writer.close()

    async with serving(answer) as (base, raw):
        http = hubspot(env, base)
        reply = await http.send("POST", "/oauth/v1/token", {"grant_type": "refresh_token"})
        await http.close()
    assert (reply.status_code, reply.body) == (502, b"<html>bad</html>")  # not NoAnswer
    assert b"\r\naccept-encoding: identity\r\n" in raw.requests[0].lower()


@pytest.fixture
def fresh_public_context() -> Iterator[None]:
    tls._public.cache_clear()
    yield
    tls._public.cache_clear()


@pytest.mark.usefixtures("fresh_public_context")
async def test_ssl_cert_file_adds_cas_for_public_hosts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = CertificateAuthority.create(tmp_path / "pki", name="company CA")
    cert, key = tmp_path / "pki" / "server.crt", tmp_path / "pki" / "server.key"
    ca.issue(cert, key, serial=21)
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)
    async with serving(numbered(), served) as (base, _):
        untrusted = Http1Pool(timeout=5.0, tls=tls.context())
        with pytest.raises(CannotConnect):  # certifi alone: the certificate is refused
            await untrusted.request(base, "GET", "/", {}, None)
        untrusted.close()

        tls._public.cache_clear()
        monkeypatch.setenv("SSL_CERT_FILE", str(ca.pem))
        trusted = Http1Pool(timeout=5.0, tls=tls.context())
        got = await trusted.request(base, "GET", "/", {}, None)
        trusted.close()
    assert got.status == 200
    public = tls.context().get_ca_certs()
    assert len(public) > 100  # certifi's CAs are still there


async def read_all(client: StreamPool, base: str, method: str = "GET", body: bytes = b"") -> bytes:
    answer = await client.open(base, method, "/x?q=1", [(b"x-a", b"1")], body, resend_stale=True)
    try:
        return b"".join([chunk async for chunk in answer.chunks(5.0)])
    finally:
        answer.close()


async def test_a_streamed_answer_arrives_whole_in_chunks_and_keeps_its_connection() -> None:
    big = bytes(range(256)) * 8192  # 2 MiB: reading pauses and resumes on the way

    async def answer(request: bytes, writer: asyncio.StreamWriter) -> None:
        if request.startswith(b"POST"):  # chunked, then close-delimited
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for part in (b"abc", b"defg"):
                writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            return
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-B: 2\r\n\r\n" % len(big))
        for start in range(0, len(big), 65536):
            writer.write(big[start : start + 65536])
            await writer.drain()

    async with serving(answer) as (base, raw):
        client = StreamPool(timeout=5.0, tls=tls.context())
        opened = await client.open(base, "GET", "/x", [], b"", resend_stale=True)
        assert opened.status == 200
        assert (b"x-b", b"2") in opened.headers
        await asyncio.sleep(0.3)  # the server writes ahead until reading pauses
        got = b"".join([chunk async for chunk in opened.chunks(5.0)])
        opened.close()
        chunked = await read_all(client, base, "POST", b"body")
        again = await read_all(client, base)
        client.close()
    assert got == big
    assert chunked == b"abcdefg"
    assert again == big
    assert raw.connections == 1
    assert raw.requests[0].startswith(b"GET /x HTTP/1.1\r\nHost: 127.0.0.1:")
    assert raw.requests[1].endswith(b"content-length: 4\r\n\r\nbody")
    assert b"x-a: 1\r\n" in raw.requests[2]


async def test_a_streamed_answer_left_unread_or_cut_off_retires_its_connection() -> None:
    count = 0

    async def answer(request: bytes, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        count += 1
        if count == 3:  # cut short of its length
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
            await writer.drain()
            writer.close()
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 70000\r\n\r\n" + b"y" * 1000)
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(b"y" * 69000)

    async with serving(answer) as (base, raw):
        client = StreamPool(timeout=5.0, tls=tls.context())
        left = await client.open(base, "GET", "/", [], b"", resend_stale=True)
        left.close()  # its body not read: the connection cannot carry another request
        assert len(await read_all(client, base)) == 70000
        assert raw.connections == 2
        cut = await client.open(base, "GET", "/", [], b"", resend_stale=True)
        with pytest.raises(BadAnswer):
            b"".join([chunk async for chunk in cut.chunks(5.0)])
        cut.close()
        client.close()
