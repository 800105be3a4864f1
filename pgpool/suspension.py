"""SUSPEND's state: whether sockets are held unread, and which, so RESUME reads them again.

Owns: the flag and the list of transports SUSPEND (or a client logging in while suspended)
stopped reading. Must not: decide when to suspend or resume (control.py does, for the admin
console) nor know what a transport belongs to.
"""

from __future__ import annotations

from typing import Any


class Suspension:
    __slots__ = ("active", "transports")

    def __init__(self) -> None:
        self.active = False                   # SUSPEND: sockets not read until RESUME
        self.transports: list[Any] = []       # what RESUME reads again

    def hold(self, transport: Any) -> None:
        """Stop reading `transport` until release(); one already closing or paused is left alone."""
        if transport is not None and not transport.is_closing() and transport.is_reading():
            transport.pause_reading()
            self.transports.append(transport)

    def release(self) -> int:
        """RESUME: read every held transport again; returns how many were held."""
        self.active = False
        transports, self.transports = self.transports, []
        for transport in transports:
            if not transport.is_closing():
                transport.resume_reading()
        return len(transports)
