"""The header walk over received bytes.

Owns: message boundaries in a byte stream (type byte + Int32 length), the carry of
split headers and split watched messages across reads, "bytes left in the current
message" so that a huge DataRow or CopyData streams through without being buffered,
and the max_packet_size check. Must not import asyncio or allocate per message.

A `MessageScanner` forwards everything by default. Only message types marked in its
`watch` table are handed to the owner's handler, whole, and the handler may keep,
drop or replace them. Watched messages larger than `max_inspect` are announced at
their header (buf=None) and stream through unread, so memory stays bounded.
"""

from __future__ import annotations

import struct
from typing import Callable, Optional

from .errors import PROGRAM_LIMIT_EXCEEDED, PROTOCOL_VIOLATION, ProtocolError

unpack_int32 = struct.Struct("!I").unpack_from

# handler(msg_type, buf, body_start, body_end) -> None (keep) | b"" (drop) | bytes (replace)
# buf is None for a watched message too large to inspect; body_end - body_start is then its body size.
Handler = Callable[[int, Optional[bytes], int, int], Optional[bytes]]

WATCH_NONE = bytes(256)


def watch_table(*types: int) -> bytes:
    """A 256-entry table with 1 at each watched message type."""
    table = bytearray(256)
    for t in types:
        table[t] = 1
    return bytes(table)


class MessageScanner:
    __slots__ = ("watch", "handler", "max_message", "max_inspect", "_remaining", "_partial", "_partial_need", "peer")

    def __init__(self, watch: bytes, handler: Handler, *, max_message: int, max_inspect: int = 1 << 20,
                 peer: str = "client"):
        self.watch = watch
        self.handler = handler
        self.max_message = max_message
        self.max_inspect = max_inspect
        self.peer = peer
        self._remaining = 0          # bytes of a streamed message still to pass through
        self._partial: bytearray | None = None   # held start of a split header or watched message
        self._partial_need = 0       # full size of the held message once its header is known

    @property
    def at_boundary(self) -> bool:
        """True when no message is half received."""
        return not self._remaining and self._partial is None

    def feed(self, data: bytes) -> bytes:
        """Walk `data`; return the bytes to forward (`data` itself when nothing changed)."""
        if self._remaining:
            if self._remaining >= len(data):
                self._remaining -= len(data)
                return data
            pos = self._remaining
            self._remaining = 0
        elif self._partial is not None:
            partial = self._partial
            if self._partial_need and len(partial) + len(data) < self._partial_need:
                partial += data
                return b""
            # The held bytes were never forwarded: walk them again together with the new ones.
            data = bytes(partial) + data
            self._partial = None
            self._partial_need = 0
            pos = 0
        else:
            pos = 0

        n = len(data)
        watch = self.watch
        pieces: list[bytes] | None = None
        run_start = 0
        hold_from = n
        while pos < n:
            if n - pos < 5:
                hold_from = pos
                self._partial = bytearray(data[pos:])
                self._partial_need = 0
                break
            msg_type = data[pos]
            length = unpack_int32(data, pos + 1)[0]
            if length < 4:
                raise ProtocolError(PROTOCOL_VIOLATION, f"invalid message length {length} from {self.peer}")
            if length > self.max_message:
                raise ProtocolError(PROGRAM_LIMIT_EXCEEDED,
                                    f"message of {length} bytes from {self.peer} exceeds max_packet_size ({self.max_message})")
            end = pos + 1 + length
            if watch[msg_type]:
                if length - 4 > self.max_inspect:
                    self.handler(msg_type, None, 0, length - 4)
                elif end > n:
                    hold_from = pos
                    self._partial = bytearray(data[pos:])
                    self._partial_need = 1 + length
                    break
                else:
                    replacement = self.handler(msg_type, data, pos + 5, end)
                    watch = self.watch    # the handler may have switched tables
                    if replacement is not None:
                        if pieces is None:
                            pieces = []
                        if pos > run_start:
                            pieces.append(data[run_start:pos])
                        if replacement:
                            pieces.append(replacement)
                        run_start = end
                    pos = end
                    continue
            if end > n:
                self._remaining = end - n
                break
            pos = end

        if pieces is None:
            if run_start == 0 and hold_from == n:
                return data
            return data[run_start:hold_from]
        if hold_from > run_start:
            pieces.append(data[run_start:hold_from])
        return b"".join(pieces)
