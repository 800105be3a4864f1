"""A fault-injecting TCP proxy for tests: put it between pgpool and Postgres, then break the network on command.

Owns: forwarding bytes both ways between accepted connections and one upstream address, and
the faults: blackhole (bytes swallowed both ways, connections stay open, as a dead route), reset
(RST on every connection, and on new ones until healed), delay (latency added to every chunk),
throttle (bytes per second), cut after N bytes (RST once that many more bytes went through).
`heal()` goes back to forwarding. Must not know the PostgreSQL protocol.

Loopback only: the kernel still acknowledges what the proxy swallows, so a blackhole here stalls
the conversation (what query_timeout must bound) but cannot make TCP keepalive probes go unanswered.
"""

from __future__ import annotations

import asyncio
import socket
import struct


class _Link:
    __slots__ = ("down_writer", "up_writer", "tasks")

    def __init__(self, down_writer: asyncio.StreamWriter, up_writer: asyncio.StreamWriter):
        self.down_writer = down_writer
        self.up_writer = up_writer
        self.tasks: list[asyncio.Task] = []

    def reset(self) -> None:
        for writer in (self.down_writer, self.up_writer):
            _reset(writer)
        for task in self.tasks:
            if task is not asyncio.current_task():
                task.cancel()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN (SO_LINGER 0), as a crashed peer or middlebox would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, host: str = "127.0.0.1"):
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self.port = 0
        self.links: set[_Link] = set()
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self.heal()

    # ---- commands ------------------------------------------------------------------------------

    def heal(self) -> None:
        self.blackholed = False
        self.resetting = False
        self.delay_seconds = 0.0
        self.rate: float | None = None
        self.cut_budget: int | None = None

    def blackhole(self) -> None:
        self.blackholed = True

    def reset(self, new_connections_too: bool = False) -> int:
        """RST every open connection; with new_connections_too, every new one until heal()."""
        self.resetting = new_connections_too
        links = list(self.links)
        for link in links:
            link.reset()
        self.links.clear()
        return len(links)

    def delay(self, seconds: float) -> None:
        self.delay_seconds = seconds

    def throttle(self, bytes_per_second: float | None) -> None:
        self.rate = bytes_per_second

    def cut_after(self, nbytes: int) -> None:
        """RST the connection that carries byte number `nbytes` from now on (either direction)."""
        self.cut_budget = nbytes

    # ---- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> "FaultProxy":
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.reset()
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> "FaultProxy":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- forwarding ----------------------------------------------------------------------------

    async def _accept(self, down_reader: asyncio.StreamReader, down_writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.resetting:
            _reset(down_writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            _reset(down_writer)
            return
        link = _Link(down_writer, up_writer)
        self.links.add(link)
        link.tasks = [asyncio.create_task(self._pump(link, down_reader, up_writer)),
                      asyncio.create_task(self._pump(link, up_reader, down_writer))]
        await asyncio.gather(*link.tasks, return_exceptions=True)
        self.links.discard(link)
        for writer in (down_writer, up_writer):
            writer.close()

    async def _pump(self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if self.blackholed:
                    continue
                if self.delay_seconds:
                    await asyncio.sleep(self.delay_seconds)
                if self.rate:
                    await asyncio.sleep(len(data) / self.rate)
                if self.cut_budget is not None:
                    if len(data) >= self.cut_budget:
                        writer.write(data[:self.cut_budget])
                        self.cut_budget = None
                        self.links.discard(link)
                        link.reset()
                        return
                    self.cut_budget -= len(data)
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()   # pass the FIN on; the other direction may still be talking
        except (ConnectionError, OSError):
            self.links.discard(link)
            link.reset()
        except asyncio.CancelledError:
            pass
