"""Buffered message reads for the login phases (client and server side).

Owns: turning `data_received` chunks into awaited whole messages while a connection
logs in. Login runs as a coroutine; once it ends, the data plane takes over and this
buffer's leftover bytes are handed to it. Never used on the data plane.
"""

from __future__ import annotations

import asyncio
import struct

from .protocol.errors import PROTOCOL_VIOLATION, ProtocolError

_int32 = struct.Struct("!I")


class LoginStream:
    __slots__ = ("buffer", "_waiter", "_eof", "max_message", "peer")

    def __init__(self, max_message: int, peer: str):
        self.buffer = bytearray()
        self._waiter: asyncio.Future | None = None
        self._eof = False
        self.max_message = max_message
        self.peer = peer

    def feed(self, data: bytes) -> None:
        self.buffer += data
        self._wake()

    def feed_eof(self) -> None:
        self._eof = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _need(self, size: int) -> None:
        while len(self.buffer) < size:
            if self._eof:
                raise ConnectionResetError(f"{self.peer} closed the connection during login")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def read_startup_packet(self, max_size: int) -> bytes:
        """A length-prefixed packet without a type byte (StartupMessage and friends)."""
        await self._need(4)
        length = _int32.unpack_from(self.buffer, 0)[0]
        if length < 8 or length > max_size:
            raise ProtocolError(PROTOCOL_VIOLATION, f"invalid startup packet length {length}")
        await self._need(length)
        packet = bytes(self.buffer[:length])
        del self.buffer[:length]
        return packet

    async def peek_byte(self) -> int:
        """The first byte not yet read, left in the buffer (0x16 = a direct TLS ClientHello)."""
        await self._need(1)
        return self.buffer[0]

    async def read_byte(self) -> bytes:
        """One byte: a server's answer to SSLRequest."""
        await self._need(1)
        byte = bytes(self.buffer[:1])
        del self.buffer[:1]
        return byte

    async def read_message(self) -> tuple[int, bytes]:
        """(type, body) of the next typed message."""
        await self._need(5)
        msg_type = self.buffer[0]
        length = _int32.unpack_from(self.buffer, 1)[0]
        if length < 4 or length > self.max_message:
            raise ProtocolError(PROTOCOL_VIOLATION, f"invalid message length {length} from {self.peer} during login")
        await self._need(1 + length)
        body = bytes(self.buffer[5:1 + length])
        del self.buffer[:1 + length]
        return msg_type, body

    def take_rest(self) -> bytes:
        rest = bytes(self.buffer)
        self.buffer.clear()
        return rest
