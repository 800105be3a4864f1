"""Awaiting a sans-IO login machine's next event: the one wait loop both adapters' logins share.

Owns: turning `data_received` calls into the wake-ups a login coroutine awaits while its
machine (protocol/startup.py's ClientLogin / ServerLogin) needs more bytes, and writing what
the machine has to send before each event is reported, also when it raises (a
NegotiateProtocolVersion may precede an error). Used only during login, never on the data plane.
"""

from __future__ import annotations

import asyncio
from typing import Callable

from .protocol.startup import NEED_DATA, ClientLogin, Event, ServerLogin


class LoginWaiter:
    """What a connection's login coroutine awaits; `wake()` from data_received / connection_lost."""
    __slots__ = ("_future",)

    def __init__(self) -> None:
        self._future: asyncio.Future | None = None

    def wake(self) -> None:
        future = self._future
        if future is not None and not future.done():
            future.set_result(None)

    async def next_event(self, machine: ClientLogin | ServerLogin, write: Callable[[bytes], None],
                         peer: str) -> Event:
        """The machine's next event, awaiting bytes while it needs some; `peer` words the EOF error."""
        while True:
            try:
                event = machine.next_event()
            finally:
                out = machine.data_to_send()
                if out:
                    write(out)
            if event is not NEED_DATA:
                return event  # type: ignore[return-value]
            if machine.eof:
                raise ConnectionResetError(f"{peer} closed the connection during login")
            self._future = asyncio.get_running_loop().create_future()
            try:
                await self._future
            finally:
                self._future = None
