"""Peering: several pgpool (or PgBouncer) processes behind one port or one load balancer.

Owns: the cancel-key layout PgBouncer 1.21+ uses when peer_id is set (bytes 1-2 of the key,
i.e. of the 32-bit "process id" half, carry the peer_id; the two low bits of the last byte
are a forwarding TTL, 3 when issued, decremented at each hop), and forwarding a CancelRequest
whose key names another peer to that peer's address, at most pool_size in flight per peer.
Because the layout is PgBouncer's, pgpool and PgBouncer processes can be peers of each other.

Must not: know about clients or pools. cancel.py decides whether a key is its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .protocol import messages as m

if TYPE_CHECKING:
    from .config import PeerEntry

log = logging.getLogger("pgpool.peers")

TTL_MASK = 0x03          # PgBouncer's CANCELLATION_TTL_MASK: low bits of the key's last byte


def shape_key(pid: int, key: int, peer_id: int) -> tuple[int, int]:
    """A random (pid, key) made into a peered key: peer_id in pid bytes 1-2, TTL 3, pid > 0."""
    pid = (pid & 0x7F0000FF) | ((peer_id & 0xFF) << 16) | (((peer_id >> 8) & 0xFF) << 8)
    return pid, key | TTL_MASK


def peer_of(pid: int) -> int:
    """The peer_id a cancel key's pid half names (PgBouncer: key[1] + key[2] << 8)."""
    return ((pid >> 16) & 0xFF) | (((pid >> 8) & 0xFF) << 8)


def ttl_of(key: int) -> int:
    return key & TTL_MASK


@dataclass
class PeerPool:
    """What SHOW PEER_POOLS counts for one peer."""

    peer_id: int
    in_flight: int = 0        # cl_active_cancel_req / sv_active_cancel
    waiting: int = 0          # cl_waiting_cancel_req
    connecting: int = 0       # sv_login
    forwarded: int = 0
    failed: int = 0


class PeerForwarder:
    """Sends CancelRequests on to peers; failures are logged, never raised."""

    def __init__(self) -> None:
        self.pools: dict[int, PeerPool] = {}
        self._limits: dict[int, asyncio.Semaphore] = {}
        self._tasks: set[asyncio.Task] = set()

    def forward(self, entry: "PeerEntry", pool_size: int, pid: int, key: int) -> None:
        """Forward to `entry` with the TTL taken down by one (the caller checked it is not 0)."""
        peer_id = int(entry.name)
        stats = self.pools.setdefault(peer_id, PeerPool(peer_id))
        limit = self._limits.get(peer_id)
        if limit is None:
            limit = self._limits[peer_id] = asyncio.Semaphore(pool_size)
        task = asyncio.get_running_loop().create_task(self._send(entry, stats, limit, pid, key - 1))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, entry: "PeerEntry", stats: PeerPool, limit: asyncio.Semaphore, pid: int, key: int) -> None:
        stats.waiting += 1
        try:
            async with limit:
                stats.waiting -= 1
                stats.in_flight += 1
                try:
                    await self._deliver(entry, stats, pid, key)
                    stats.forwarded += 1
                except (OSError, TimeoutError) as error:
                    stats.failed += 1
                    log.warning("could not forward a cancel request to peer %s (%s:%s): %s", entry.name, entry.host,
                                entry.port, error)
                finally:
                    stats.in_flight -= 1
        except asyncio.CancelledError:
            stats.waiting = max(0, stats.waiting - 1)
            raise

    @staticmethod
    async def _deliver(entry: "PeerEntry", stats: PeerPool, pid: int, key: int) -> None:
        async with asyncio.timeout(10):
            stats.connecting += 1
            try:
                if entry.host.startswith("/"):
                    reader, writer = await asyncio.open_unix_connection(
                        os.path.join(entry.host, f".s.PGSQL.{entry.port}"))
                else:
                    reader, writer = await asyncio.open_connection(entry.host, entry.port)
            finally:
                stats.connecting -= 1
            writer.write(m.cancel_request(pid, key))
            await writer.drain()
            await reader.read()    # the peer closes once it has passed the request on
            writer.close()
