"""Which pool a client gets: the map (database, user) -> Pool, and the pools made on the way.

Owns: every Pool of the process (made on first use, forced-user pools from the start), the
databases DISABLE closed to new logins, the database lookup a login makes, the server password
a pool logs in with, and replication clients' one-server pools (their server opened with the
client's own startup parameters, the pool dropped when the client leaves). App hands one to
every client (`ClientHost.pool_directory`); a client asks it, never App, for its pool.
Must not: lend servers (pool.py does) or decide pause and limits across pools (App's, through
the `PoolHost` every pool is given).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from typing import TYPE_CHECKING, Any, Mapping, Protocol

from . import auth
from .admingate import ADMIN_DATABASES
from .clientregistry import ClientRegistry
from .config import PoolMode
from .params import SessionParams
from .pool import Pool, PoolHost, ServerState
from .protocol.errors import CONNECTION_FAILURE, INVALID_CATALOG_NAME, OBJECT_NOT_IN_PREREQUISITE_STATE, ProtocolError
from .server import ServerConnection

if TYPE_CHECKING:
    from .clientauth import ClientAuth
    from .config import DatabaseEntry

log = logging.getLogger("pgpool")


class DirectoryHost(PoolHost, Protocol):
    """What every pool is given (app.py's App), and what a new one starts with: whether its
    database is paused, and the auth_file users a forced user's password comes from."""
    client_auth: "ClientAuth"

    def is_paused(self, database: str) -> bool: ...


class PoolDirectory:
    __slots__ = ("host", "registry", "pools", "disabled_dbs", "_replication_ids")

    def __init__(self, host: DirectoryHost, registry: ClientRegistry):
        self.host = host
        self.registry = registry      # per-database and per-user client limits, counted at get_pool
        self.pools: dict[tuple, Pool] = {}     # (database, server user[, replication n]) -> Pool
        self.disabled_dbs: set[str] = set()    # DISABLE: new client logins refused
        self._replication_ids = itertools.count(1)

    def find_database(self, name: str) -> "DatabaseEntry | None":
        settings = self.host.settings
        if name in ADMIN_DATABASES:
            # As in PgBouncer, the admin console wins over the "*" fallback; only an entry
            # of that very name (possible for "pgpool") routes it to a server instead.
            return settings.databases.get(name)
        return settings.find_database(name)

    def get_pool(self, database: str, user: str, creds: auth.Credentials | None,
                 replication: str | None = None) -> Pool:
        """A client's pool: refused while DISABLEd or at a client limit, and counted for the client."""
        entry = self._entry(database)
        if entry.name in self.disabled_dbs:
            raise ProtocolError(OBJECT_NOT_IN_PREREQUISITE_STATE,
                                f'database does not allow connections: "{entry.name}" (DISABLE on the admin '
                                f'console; ENABLE {entry.name} lifts it)')
        self.registry.check_database_limits(entry, user)
        if replication:
            pool = self._create_replication_pool(entry, user, creds, replication)
        else:
            pool = self._pool_for(entry, user, creds)
        # Counted from here; the registry uncounts once the client holds this pool.
        self.registry.count_database_client(entry.name, user)
        return pool

    def own_pool(self, database: str, user: str, creds: auth.Credentials | None) -> Pool:
        """A pool for pgpool's own queries (auth_query): no client is counted, no client limit applies."""
        return self._pool_for(self._entry(database), user, creds)

    def _pool_for(self, entry: "DatabaseEntry", user: str, creds: auth.Credentials | None) -> Pool:
        pool = self.pools.get((entry.name, entry.user or user))
        if pool is None:
            return self.create_pool(entry, user, creds)
        if pool.server_password is None and not entry.user:
            pool.server_password = auth.server_password_for(creds, entry.password)
        return pool

    def _entry(self, database: str) -> "DatabaseEntry":
        entry = self.host.settings.find_database(database)
        if entry is None:
            raise ProtocolError(INVALID_CATALOG_NAME, f'no such database: {database} (not in [databases], '
                                                      f'and no "*" fallback entry)')
        return entry

    def create_pool(self, entry: "DatabaseEntry", user: str, creds: auth.Credentials | None) -> Pool:
        host = self.host
        server_user = entry.user or user
        pool = Pool(host, entry, server_user, host.settings.pool_settings(entry, user), server_user,
                    self.server_password(entry, creds))
        pool.paused = host.is_paused(entry.name)
        self.pools[(entry.name, server_user)] = pool
        log.info("pool %s: created (pool_mode=%s pool_size=%d reserve=%d -> %s:%s/%s)", pool.name,
                 pool.conf.pool_mode.value, pool.conf.pool_size, pool.conf.reserve_pool_size,
                 entry.host, entry.port, entry.dbname)
        return pool

    def server_password(self, entry: "DatabaseEntry", creds: auth.Credentials | None) -> str | None:
        """A forced user (user= without password=) takes its password from the auth_file, as in
        PgBouncer; otherwise the client's own secret."""
        if entry.user:
            if entry.password:
                return entry.password
            users = self.host.client_auth.users
            return auth.server_password_for(auth.lookup_credentials(users, entry.user), None) \
                if entry.user in users else None
        return auth.server_password_for(creds, entry.password)

    def open_forced_pools(self) -> None:
        """Pools of forced-user databases exist from the start, so min_pool_size is kept before any
        client comes (PgBouncer enforces min_pool_size for them without clients)."""
        settings = self.host.settings
        for entry in settings.databases.values():
            if entry.user and entry.name != "*" and (entry.name, entry.user) not in self.pools \
                    and settings.pool_settings(entry, entry.user).min_pool_size:
                self.create_pool(entry, entry.user, None)

    # ---- replication: passed through in session mode, never pooled (PgBouncer 1.23+) ---------------

    def _create_replication_pool(self, entry: "DatabaseEntry", user: str, creds: auth.Credentials | None,
                                 kind: str) -> Pool:
        """One pool per replication client, holding exactly its own server connection."""
        host = self.host
        server_user = entry.user or user
        conf = dataclasses.replace(host.settings.pool_settings(entry, user), pool_mode=PoolMode.SESSION, pool_size=1,
                                   min_pool_size=0, reserve_pool_size=0, query_timeout=0.0,
                                   transaction_timeout=0.0, idle_transaction_timeout=0.0,
                                   server_lifetime=0.0)   # used once: never pooled
        pool = Pool(host, entry, server_user, conf, server_user, self.server_password(entry, creds))
        pool.replication = kind
        pool.disabled = True    # its one server is opened with the client's parameters, never by dispatch
        self.pools[(entry.name, server_user, f"replication {next(self._replication_ids)}")] = pool
        return pool

    async def open_replication_server(self, client: Any, pool: Pool, startup: Mapping[str, str]) -> SessionParams:
        """Log in to the server with the client's own startup parameters (replication included)
        and hand that server to this client alone; the welcome is the server's own."""
        server = ServerConnection(pool)
        server.extra_startup = {k: v for k, v in startup.items() if k not in ("user", "database")}
        # A host list: the first host (replication wants the primary, which lists put first).
        first = pool.db.host.split(",")[0].strip()
        server.set_target(first, first)
        pool.set_server_state(server, ServerState.CONNECTING)
        try:
            await server.connect_and_login()
        except BaseException:
            server.close_transport()
            pool.set_server_state(server, ServerState.CLOSED)
            raise
        if server.closed_reason is not None:
            pool.set_server_state(server, ServerState.CLOSED)
            raise ProtocolError(CONNECTION_FAILURE, f"server closed the replication connection for pool {pool.name} "
                                                    f"right after login: {server.closed_reason}")
        pool.server_available(server)   # idle for this client alone; server_lifetime 0 closes it at release
        log.info("%s: %s replication connection passed through to server (backend pid %d)", client.log_prefix,
                 pool.replication, server.backend_pid)
        return SessionParams(dict(server.params.reported))

    def free_replication_pool(self, pool: Pool) -> None:
        """Its replication client left: the pool and its server go with it."""
        for server in list(pool.idle) + list(pool.maintenance) + list(pool.connecting):
            server.close("replication client left")
        for key, candidate in list(self.pools.items()):
            if candidate is pool:
                del self.pools[key]
