"""The floor of any asyncio + uvloop pooler: a 1:1 TCP forwarder with no protocol work at all.

Owns a reference point for benchmarks/syscalls.py (target `floor`): each client connection gets
its own server connection, and every `data_received` is one `transport.write` to the other side,
which is what pgpool's data plane does per message batch at best. What this process spends per
transaction is what uvloop, the interpreter's callback dispatch and the kernel cost; whatever
pgpool spends above it is pgpool's own Python. It must not grow features: it is a yardstick.

    python -m benchmarks.floor_proxy --port 6433 --backend-host 127.0.0.1 --backend-port 5432
"""

from __future__ import annotations

import argparse
import asyncio
import socket

import uvloop


class Side(asyncio.Protocol):
    """One socket of a client/server pair; whatever it reads goes to the other side."""

    __slots__ = ("transport", "other", "pending")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.other: Side | None = None
        self.pending: list[bytes] = []      # client bytes that arrived before its server connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        other = self.other
        if other is not None and other.transport is not None:
            other.transport.write(data)
        else:
            self.pending.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        other = self.other
        if other is not None and other.transport is not None:
            other.transport.close()


def serve(port: int, backend: tuple[str, int]) -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()

        async def dial(client: Side) -> None:
            server = Side()
            server.other, client.other = client, server
            try:
                await loop.create_connection(lambda: server, *backend)
            except OSError:
                assert client.transport is not None
                client.transport.close()
                return
            assert server.transport is not None
            for data in client.pending:
                server.transport.write(data)
            client.pending.clear()

        class Client(Side):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                super().connection_made(transport)
                loop.create_task(dial(self))

        server = await loop.create_server(Client, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    uvloop.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floor_proxy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend-host", default="127.0.0.1")
    parser.add_argument("--backend-port", type=int, required=True)
    args = parser.parse_args()
    serve(args.port, (args.backend_host, args.backend_port))


if __name__ == "__main__":
    main()
