"""pytest plugin: a TCP proxy between the daemon and a database, to break the route.

``cut()`` closes every connection through it (the peer sees a reset); ``blackhole()``
stops forwarding in both directions without closing anything (the sockets look
healthy, nothing arrives: what a dead route or a half-open connection looks like);
``restore()`` forwards again for new connections, closing the ones that went dark.
``swallow(marker)`` makes the next client message containing ``marker`` vanish: the
server never sees it, the client waits for an answer (a server that hangs on one
command, START_REPLICATION say); the connection stays open until the client gives up.
Runs its own event loop in a thread; loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

import pytest


class TcpProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.forwarding = True
        self.swallowed = 0  # client messages swallowed so far
        self._swallow: bytes | None = None
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._started.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._started.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        # either side closing ends the connection for both, as it would without a proxy:
        # a server that restarts must not leave its client waiting on a dead half
        pumps = [
            asyncio.ensure_future(self._pump(reader, up_writer, from_client=True)),
            asyncio.ensure_future(self._pump(up_reader, writer)),
        ]
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for p in pumps:
            p.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, from_client=False
    ) -> None:
        swallowing = False
        while True:
            while not self.forwarding:  # dark: neither read nor forward, close nothing
                await asyncio.sleep(0.05)
            data = await reader.read(65536)
            if not data:
                break
            if from_client and self._swallow is not None and self._swallow in data:
                self._swallow = None
                self.swallowed += 1
                swallowing = True  # this connection forwards nothing more to the server
            if swallowing:
                continue
            while not self.forwarding:
                await asyncio.sleep(0.05)
            writer.write(data)
            await writer.drain()

    def _close_all(self) -> None:
        for w in list(self._writers):
            with contextlib.suppress(Exception):
                w.transport.abort()
        self._writers.clear()

    def cut(self) -> None:
        self._loop.call_soon_threadsafe(self._close_all)

    def swallow(self, marker: bytes) -> None:
        self._swallow = marker

    def blackhole(self) -> None:
        self.forwarding = False

    def restore(self) -> None:
        self._loop.call_soon_threadsafe(self._close_all)
        self.forwarding = True

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._close_all)
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture
def tcp_proxy() -> Iterator[type[TcpProxy]]:
    made: list[TcpProxy] = []

    def make(upstream_port: int) -> TcpProxy:
        p = TcpProxy(upstream_port)
        made.append(p)
        return p

    yield make  # type: ignore[misc]
    for p in made:
        p.close()
