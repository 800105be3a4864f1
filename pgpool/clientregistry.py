"""Every client connection, and what admits one: the client limits and the drain a login meets.

Owns: the set of connected clients (max_client_conn), logged-in clients per database and per
user (max_db_client_connections, max_user_client_connections), logins that failed, whether
pgpool is shutting down (new clients refused, logged-in ones drained at their transaction
boundary) and when the last one has left. App hands one to every client (`ClientHost.
client_registry`); a client enters, logs in and leaves through it, never through App.
Must not: hold pools or sockets of its own; when to drain or suspend is control.py's (App's).
"""

from __future__ import annotations

import asyncio
import collections
from typing import TYPE_CHECKING, Any, Protocol

from .pool import ClientState
from .protocol import messages as m
from .protocol.constants import TX_IDLE
from .protocol.errors import ADMIN_SHUTDOWN, CANNOT_CONNECT_NOW, TOO_MANY_CONNECTIONS, ProtocolError
from .suspension import Suspension

if TYPE_CHECKING:
    from .config import DatabaseEntry, Settings


class RegistryHost(Protocol):
    """The process the clients belong to (app.py's App): its settings and event loop, read at use
    (RELOAD replaces the settings whole)."""
    settings: "Settings"
    loop: asyncio.AbstractEventLoop


class ClientRegistry:
    __slots__ = ("host", "suspension", "clients", "db_clients", "user_clients", "login_failures", "shutting_down",
                 "all_left")

    def __init__(self, host: RegistryHost, suspension: Suspension):
        self.host = host
        self.suspension = suspension
        # Every client connection; a dict as an ordered set (values None), lighter than a set (pool.py).
        self.clients: dict[Any, None] = {}
        # Logged-in clients per database name and per client user (max_*_client_connections).
        self.db_clients: collections.Counter[str] = collections.Counter()
        self.user_clients: collections.Counter[str] = collections.Counter()
        self.login_failures = 0       # logins that named a user and did not complete
        self.shutting_down = False
        self.all_left = asyncio.Event()   # set once shutting down and no database client is left

    # ---- a client's life -----------------------------------------------------------------------

    def add(self, client: Any) -> None:
        self.clients[client] = None

    def check_client_limit(self) -> None:
        """A client named itself: refused while shutting down, or past max_client_conn."""
        if self.shutting_down:
            raise ProtocolError(CANNOT_CONNECT_NOW, "pgpool is shutting down: no new connections")
        limit = self.host.settings.max_client_conn
        if len(self.clients) > limit:
            raise ProtocolError(TOO_MANY_CONNECTIONS,
                                f"no more connections allowed (max_client_conn): {limit} clients already connected",
                                hint="raise max_client_conn, or lower the number of client connections")

    def check_database_limits(self, entry: "DatabaseEntry", user: str) -> None:
        limits = self.host.settings.client_limits(entry, user)
        if limits.max_db_client_connections and self.db_clients[entry.name] >= limits.max_db_client_connections:
            raise ProtocolError(TOO_MANY_CONNECTIONS,
                                f"client connections exceeded (max_db_client_connections): database "
                                f"\"{entry.name}\" has {self.db_clients[entry.name]} clients, the limit is "
                                f"{limits.max_db_client_connections}")
        if limits.max_user_client_connections and self.user_clients[user] >= limits.max_user_client_connections:
            raise ProtocolError(TOO_MANY_CONNECTIONS,
                                f"client connections exceeded (max_user_client_connections): user "
                                f"\"{user}\" has {self.user_clients[user]} clients, the limit is "
                                f"{limits.max_user_client_connections}")

    def count_database_client(self, database: str, user: str) -> None:
        """A client was given a pool of `database`; remove() uncounts it once it holds that pool."""
        self.db_clients[database] += 1
        self.user_clients[user] += 1

    def on_logged_in(self, client: Any) -> None:
        """A database client is in: the login notice, then SUSPEND and the drain apply to it too."""
        notice = self.host.settings.login_notify_message
        if notice:
            client.transport.write(m.notice_response(notice))
        if self.suspension.active:
            self.suspension.hold(client.transport)   # read from RESUME on
        if self.shutting_down:
            # Logged in while draining: it holds no transaction, so it may go at once.
            client.drain = True
            self.host.loop.call_soon(self.drain_client, client)

    def remove(self, client: Any) -> None:
        self.clients.pop(client, None)
        if client.pool is not None:
            self.db_clients[client.pool.db.name] -= 1
            self.user_clients[client.user] -= 1
        if client.login is not None and client.user:
            self.login_failures += 1
        self.check_all_left()

    # ---- the drain -----------------------------------------------------------------------------

    def check_all_left(self) -> None:
        if self.shutting_down and not any(c.admin is None for c in self.clients):
            self.all_left.set()

    def drain_client(self, client: Any) -> None:
        """Disconnect a draining client now if it is between transactions; else its RFQ will."""
        if client.closed or not at_transaction_boundary(client):
            return
        client.disconnect("shutting down: left between transactions", ProtocolError(
            ADMIN_SHUTDOWN, "pgpool is shutting down (client drained at transaction boundary)"))


def at_transaction_boundary(client: Any) -> bool:
    """True when the client holds no transaction and has nothing in flight."""
    if client.state == ClientState.IDLE:
        return not client.pending
    if client.state == ClientState.ACTIVE:
        server = client.server
        return (server is not None and server.tx_status == TX_IDLE and not client.busy
                and not client.syncing and not client.pending)
    return False
