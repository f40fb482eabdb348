"""A small TCP fault proxy for tests: put it between the broker and a real server, then
switch it between ``pass``, ``latency`` (added to every chunk each way), ``blackhole``
(connections accepted, nothing forwarded, nothing answered), ``reset`` (connections reset
at once) and ``down`` (connection refused). Switching to a bad mode also breaks the
connections already open, so pooled clients feel it at once."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from typing import Literal

Mode = Literal["pass", "latency", "blackhole", "reset", "down"]


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.mode: Mode = "pass"
        self.latency = 0.0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._call(self._listen())

    def _call(self, coro: object) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=5)  # type: ignore[arg-type]

    def set(self, mode: Mode, latency_ms: float = 0.0) -> None:
        self._call(self._set(mode, latency_ms / 1000))

    def close(self) -> None:
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _shutdown(self) -> None:
        """Refuse, then end every connection task and close what they held, so nothing is
        left for the garbage collector to find on a closed loop."""
        await self._set("down", 0.0)
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for writer in list(self._writers):
            _abort(writer)
        self._writers.clear()

    async def _set(self, mode: Mode, latency: float) -> None:
        self.mode, self.latency = mode, latency
        if mode in ("blackhole", "reset", "down"):
            for writer in list(self._writers):
                _abort(writer)
            self._writers.clear()
        if mode == "down" and self._server is not None:
            self._server.close()
            self._server = None
        elif mode != "down" and self._server is None:
            await self._listen()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "reset":
            _abort(writer)
            return
        self._writers.add(writer)
        if self.mode == "blackhole":
            try:
                with contextlib.suppress(ConnectionError):
                    while await reader.read(65536):
                        pass
            finally:
                self._writers.discard(writer)
                _abort(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _abort(writer)
            return
        self._writers.add(up_writer)
        try:
            await asyncio.gather(
                self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True
            )
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            if self.mode == "blackhole":
                continue  # swallow: the peer waits forever
            if self.latency:
                await asyncio.sleep(self.latency)
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), not a polite FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
