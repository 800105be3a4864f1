"""Cancel keys and CancelRequest forwarding.

Owns: the BackendKeyData pgpool gives each client (random, unique among live clients)
and sending a CancelRequest to the server connection the client is linked to. Pgpool's
keys are never the server's, so a client can only ever cancel its own query.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any, Callable

from .peers import shape_key
from .protocol import messages as m

log = logging.getLogger("pgpool.cancel")


class CancelRegistry:
    def __init__(self) -> None:
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
