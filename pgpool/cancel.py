"""Cancel keys and CancelRequest forwarding.

Owns: the BackendKeyData pgpool gives each client (random, unique among live clients),
routing a CancelRequest pgpool received to the client whose key it is (or, with peer_id set,
to the peer that issued the key), and sending a CancelRequest to the server connection a
client is linked to. Pgpool's keys are never the server's, so a client can only ever cancel
its own query. What a cancel means to the client is the client's own (its cancel_query).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any, Callable

from . import peers
from .config import SettingsHost
from .peers import PeerForwarder, shape_key
from .protocol import messages as m

log = logging.getLogger("pgpool.cancel")


class CancelRegistry:
    def __init__(self, host: SettingsHost, peer_forwarder: PeerForwarder) -> None:
        self.host = host                          # peer_id and [peers], read at use (RELOAD)
        self.peer_forwarder = peer_forwarder      # cancels for other peers' keys go out through it
        self._clients: dict[tuple[int, int], Any] = {}
        self._tasks: set[asyncio.Task] = set()

    def register(self, client: Any, peer_id: int = 0) -> tuple[int, int]:
        """A fresh key; with peer_id set, shaped as PgBouncer's peering expects (see peers.py)."""
        while True:
            key = (secrets.randbits(31) or 1, secrets.randbits(32))
            if peer_id:
                key = shape_key(*key, peer_id)
            if key not in self._clients:
                self._clients[key] = client
                return key

    def unregister(self, key: tuple[int, int] | None) -> None:
        if key is not None:
            self._clients.pop(key, None)

    def find(self, pid: int, key: int) -> Any:
        return self._clients.get((pid, key))

    def forward(self, pid: int, key: int) -> None:
        """A CancelRequest pgpool received: to this process's client with that key, or its peer."""
        settings = self.host.settings
        peer_id = settings.peer_id
        if peer_id:
            owner = peers.peer_of(pid)
            if owner != peer_id:
                self._forward_to_peer(owner, pid, key)
                return
            key |= peers.TTL_MASK     # our keys are issued with TTL 3; a forwarded copy has less
        client = self.find(pid, key)
        if client is not None:
            client.cancel_query()   # what a cancel means depends on the client's own state

    def _forward_to_peer(self, owner: int, pid: int, key: int) -> None:
        """As PgBouncer: a cancel for another peer goes there, at most three hops."""
        settings = self.host.settings
        entry = settings.peers.get(str(owner))
        if entry is None:
            log.warning("cancel request for peer %d, which is not in [peers]: dropped", owner)
        elif not peers.ttl_of(key):
            log.warning("cancel request for peer %d: forwarded too often (TTL exhausted), dropped", owner)
        else:
            self.peer_forwarder.forward(entry, entry.pool_size or settings.default_pool_size, pid, key)

    def send(self, host: str, port: int, backend_pid: int, backend_key: int,
             done: Callable[[], None] | None = None) -> None:
        """Fire a CancelRequest at a server; failures are logged, never raised. `done()` once Postgres
        has handled it (it closes the cancel connection after signalling the backend) or it failed."""
        task = asyncio.get_running_loop().create_task(self._send(host, port, backend_pid, backend_key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if done is not None:
            task.add_done_callback(lambda _: done())

    async def _send(self, host: str, port: int, backend_pid: int, backend_key: int) -> None:
        try:
            async with asyncio.timeout(10):
                if host.startswith("/"):   # the server's Unix socket directory
                    reader, writer = await asyncio.open_unix_connection(f"{host.rstrip('/')}/.s.PGSQL.{port}")
                else:
                    reader, writer = await asyncio.open_connection(host, port)
                writer.write(m.cancel_request(backend_pid, backend_key))
                await writer.drain()
                await reader.read()   # the server closes when done
                writer.close()
        except (OSError, TimeoutError) as error:
            log.warning("could not send cancel request to %s:%s (backend pid %d): %s", host, port, backend_pid, error)
