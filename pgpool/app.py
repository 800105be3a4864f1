"""Wiring: listeners, pools, client registry, limits across pools, signals, shutdown.

Owns: the listening sockets, the map (database, user) -> Pool, the set of all clients
(max_client_conn), server counts per database and per user (max_db_connections,
max_user_connections), cancel keys and shutdown. Operator actions (reload, pause, drain)
live in control.py, mixed in. Holds no protocol logic.
Must not import the operator surfaces (admin, http, janitor, statslog, metrics): they sit above
this module and read its pools; cli.py hands them down as `Surfaces` (imports run one way).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import grp
import itertools
import logging
import os
import resource
import signal
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping, Protocol

from . import auth, hba, peers, tls
from .authquery import AuthQuery
from .cancel import CancelRegistry
from .clientauth import ClientAuth
from .control import Controls
from .client import ADMIN_DATABASES, ClientConnection
from .config import LoadedConfig, PoolMode, Settings
from .params import SessionParams
from .pool import Pool, ServerState
from .server import ServerConnection
from .protocol import messages as m
from .protocol.errors import (
    CANNOT_CONNECT_NOW, CONNECTION_FAILURE, FEATURE_NOT_SUPPORTED, INVALID_CATALOG_NAME, OBJECT_NOT_IN_PREREQUISITE_STATE, TOO_MANY_CONNECTIONS, ProtocolError,
)

if TYPE_CHECKING:
    from .config import DatabaseEntry

log = logging.getLogger("pgpool")


class StartupError(OSError):
    """A listening socket could not be opened; str() names the address and the settings to change."""

    def __str__(self) -> str:
        return str(self.args[0])


class Closeable(Protocol):
    def close(self) -> None: ...


@dataclass(frozen=True)
class Surfaces:
    """The operator surfaces App starts with and stops with, handed down by cli.py. Each is
    optional: without one, App runs the data plane alone (as the tests' FakeApp does)."""
    open_console: Callable[["App", ClientConnection, auth.Credentials], Any] | None = None
    start_http: Callable[["App"], Awaitable[Closeable]] | None = None      # when metrics_port is set
    run_janitor: Callable[["App"], Awaitable[None]] | None = None
    start_stats_log: Callable[["App"], Closeable] | None = None


class App(Controls):
    def __init__(self, loaded: LoadedConfig, overrides: Mapping[str, str] | None = None,
                 surfaces: Surfaces = Surfaces()):
        self.surfaces = surfaces
        self.settings: Settings = loaded.settings
        self.overrides: dict[str, str] = dict(overrides or {})   # --set values, applied again on RELOAD
        self.config_warnings = loaded.warnings
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        # Who clients may be and how they prove it: handed to every client (ClientHost.client_auth).
        self.client_auth = ClientAuth(self, self._load_auth_users(self.settings), self._load_hba(self.settings),
                                      AuthQuery(self.get_pool))
        self.tls: tls.TlsContexts = tls.build_contexts(self.settings)   # replaced whole by RELOAD
        self.unix_socket: str | None = None
        self.pools: dict[tuple[str, str], Pool] = {}
        # Every client connection; a dict as an ordered set (values None), lighter than a set (pool.py).
        self.clients: dict[ClientConnection, None] = {}
        self.cancel = CancelRegistry()
        self.peer_forwarder = peers.PeerForwarder()
        self.db_servers: collections.Counter[str] = collections.Counter()
        self.user_servers: collections.Counter[str] = collections.Counter()
        # Logged-in clients per database name and per client user (max_*_client_connections).
        self._replication_ids = itertools.count(1)
        self.db_clients: collections.Counter[str] = collections.Counter()
        self.user_clients: collections.Counter[str] = collections.Counter()
        self.listeners: list[asyncio.AbstractServer] = []
        self.started_at = time.time()
        self.shutting_down = False
        self.stopped: asyncio.Future | None = None
        self.janitor_task: asyncio.Task | None = None
        self.http: Closeable | None = None
        self.bound_port = 0
        self.unix_listener: asyncio.AbstractServer | None = None
        self._unix_socket_inode = 0
        self.stats_log: Any = None   # statslog.StatsLog: admin's SHOW STATS reads its averages
        # Operations state (admin console, signals): see the "operations" section below.
        self.paused_all = False
        self.suspended = False                      # SUSPEND: sockets not read until RESUME
        self.suspended_transports: list[Any] = []
        self.paused_dbs: set[str] = set()
        self.disabled_dbs: set[str] = set()
        self.client_login_failures = 0       # logins that named a user and did not complete
        self.reloads = 0
        self.reload_failures = 0
        self.last_reload_ok = True
        self.drain_task: asyncio.Task | None = None
        self.pause_task: asyncio.Task | None = None     # SIGUSR1's PAUSE, finishing in the background
        self._clients_gone = asyncio.Event()

    @staticmethod
    def _load_auth_users(settings: Settings) -> dict[str, str]:
        return auth.load_auth_file(settings.auth_file) if settings.auth_file else {}

    @staticmethod
    def _load_hba(settings: Settings) -> hba.HbaConfig | None:
        if settings.auth_type != "hba" or settings.auth_hba_file is None:
            return None
        return hba.load_hba(settings.auth_hba_file, settings.auth_ident_file)

    # ---- start and stop ------------------------------------------------------------------------

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stopped = self.loop.create_future()
        raise_open_files_limit()
        for warning in self.config_warnings:
            log.warning("config: %s", warning)
        settings = self.settings
        hosts = [h.strip() for h in settings.listen_addr.split(",") if h.strip()]
        for host in hosts:
            try:
                server = await self.loop.create_server(
                    lambda: ClientConnection(self), None if host == "*" else host, settings.listen_port,
                    reuse_address=True, reuse_port=settings.so_reuseport or None, backlog=settings.listen_backlog)
            except OSError as error:
                self.close_listeners()
                raise StartupError(f"cannot listen for clients on {host}:{settings.listen_port} "
                                   f"(listen_addr, listen_port): {error.strerror or error}") from error
            self.listeners.append(server)
            for sock in server.sockets:
                self.bound_port = sock.getsockname()[1]
                log.info("listening on %s:%s", *sock.getsockname()[:2])
        if settings.unix_socket_dir:
            try:
                await self._listen_unix(settings.unix_socket_dir, self.bound_port or settings.listen_port)
            except OSError as error:
                self.close_listeners()
                raise StartupError(f"cannot listen on a Unix socket in {settings.unix_socket_dir} (unix_socket_dir): "
                                   f"{error.strerror or error}") from error
        surfaces = self.surfaces
        if settings.metrics_port and surfaces.start_http is not None:
            try:
                self.http = await surfaces.start_http(self)
            except OSError as error:
                self.close_listeners()
                raise StartupError(
                    f"cannot serve metrics on {settings.metrics_addr}:{settings.metrics_port} (metrics_addr, "
                    f"metrics_port): {error.strerror or error}; choose a free metrics_port, or "
                    f"metrics_port = 0 to turn the endpoint off") from error
        self.open_forced_pools()
        if surfaces.run_janitor is not None:
            self.janitor_task = self.loop.create_task(surfaces.run_janitor(self))
        if surfaces.start_stats_log is not None:
            self.stats_log = surfaces.start_stats_log(self)

    def install_signal_handlers(self) -> None:
        """Signals as PgBouncer's, except where pgpool's drain deliberately differs:
        SIGTERM drains at transaction boundaries (a second one: shut down at once), SIGINT shuts
        down at once (safe: open transactions roll back), SIGHUP reloads, SIGUSR1 pauses every
        database as PAUSE does, SIGUSR2 resumes them as RESUME does."""
        loop = self.loop
        loop.add_signal_handler(signal.SIGINT, self.shutdown_now, "SIGINT")
        loop.add_signal_handler(signal.SIGTERM, self.begin_drain, "SIGTERM")
        loop.add_signal_handler(signal.SIGHUP, self.reload, "SIGHUP")
        loop.add_signal_handler(signal.SIGUSR1, self.on_sigusr1)
        loop.add_signal_handler(signal.SIGUSR2, self.on_sigusr2)

    def on_sigusr1(self) -> None:
        if self.shutting_down or self.paused_all:
            log.info("got SIGUSR1, but already paused or shutting down")
            return
        log.info("got SIGUSR1, pausing all activity")
        self.pause(None)
        # As the PAUSE command: idle servers close now, busy ones when their clients release them.
        self.pause_task = self.loop.create_task(self.wait_paused(None))

    def on_sigusr2(self) -> None:
        if self.shutting_down:
            log.info("got SIGUSR2 while shutting down, ignoring")
        elif not (self.paused_all or self.paused_dbs):
            log.info("got SIGUSR2, but not paused")
        else:
            log.info("got SIGUSR2, continuing from PAUSE")
            self.resume(None)

    async def _listen_unix(self, directory: str, port: int) -> None:
        """<unix_socket_dir>/.s.PGSQL.<port>, with unix_socket_mode and unix_socket_group, as PgBouncer."""
        path = os.path.join(directory, f".s.PGSQL.{port}")
        remove_stale_socket(path)
        server = await self.loop.create_unix_server(lambda: ClientConnection(self), path, backlog=self.settings.listen_backlog)
        self.listeners.append(server)
        self.unix_listener = server
        self.unix_socket = path
        self._unix_socket_inode = os.stat(path).st_ino
        os.chmod(path, int(self.settings.unix_socket_mode, 8))
        if self.settings.unix_socket_group:
            try:
                gid = grp.getgrnam(self.settings.unix_socket_group).gr_gid
            except KeyError:
                raise OSError(f"unix_socket_group {self.settings.unix_socket_group!r}: no such group") from None
            os.chown(path, -1, gid)
        log.info("listening on unix:%s", path)

    async def wait_stopped(self) -> None:
        assert self.stopped is not None
        await self.stopped

    def close_listeners(self, keep_unix: bool = False) -> None:
        """Stop accepting. keep_unix (the drain): the Unix socket stays open, as PgBouncer's does on
        SIGTERM, so peers can still forward cancel requests for the clients still draining;
        new logins on it are refused while shutting down."""
        for server in list(self.listeners):
            if keep_unix and server is self.unix_listener:
                continue
            server.close()
            self.listeners.remove(server)
        if keep_unix:
            return
        self.unix_listener = None
        path, self.unix_socket = self.unix_socket, None
        try:
            # Only our own socket file: a successor may already have put its own at this path.
            if path is not None and os.stat(path).st_ino == self._unix_socket_inode:
                os.unlink(path)
        except OSError:
            pass

    def shutdown_now(self, reason: str = "shutdown") -> None:
        """Immediate safe shutdown: every client and server closed; open transactions roll back."""
        if self.stopped is not None and self.stopped.done():
            return
        log.info("shutting down now (%s): closing %d clients and every server connection", reason,
                 len(self.clients))
        self.shutting_down = True
        self.close_listeners()
        error = ProtocolError("57P01", f"pgpool is shutting down ({reason})")
        for client in list(self.clients):
            client.disconnect(reason, error)
        for pool in self.pools.values():
            for server in list(pool.idle) + list(pool.active) + list(pool.maintenance) + list(pool.connecting):
                server.close(reason)
        self._finish()

    def _finish(self) -> None:
        if self.janitor_task is not None:
            self.janitor_task.cancel()
        if self.drain_task is not None and self.drain_task is not asyncio.current_task():
            self.drain_task.cancel()
        if self.stats_log is not None:
            self.stats_log.close()
        if self.http is not None:
            self.http.close()
        if self.stopped is not None and not self.stopped.done():
            self.stopped.set_result(None)

    # ---- clients -------------------------------------------------------------------------------

    def on_client_connected(self, client: ClientConnection) -> None:
        self.clients[client] = None

    def on_client_logged_in(self, client: ClientConnection) -> None:
        if self.settings.login_notify_message:
            client.transport.write(m.notice_response(self.settings.login_notify_message))
        if self.suspended:
            self._suspend_transport(client.transport)   # a database client logged in: read from RESUME on
        if self.shutting_down:
            # Logged in while draining: it holds no transaction, so it may go at once.
            client.drain = True
            self.loop.call_soon(self._drain_client, client)

    def on_client_closed(self, client: ClientConnection) -> None:
        self.clients.pop(client, None)
        if client.pool is not None:
            self.db_clients[client.pool.db.name] -= 1
            self.user_clients[client.user] -= 1
            if client.pool.replication:
                self._free_replication_pool(client.pool)
        self.cancel.unregister(client.cancel_key)
        if client.login is not None and client.user:
            self.client_login_failures += 1
        if self.shutting_down and not any(c.admin is None for c in self.clients):
            self._clients_gone.set()

    def check_client_limit(self, client: ClientConnection) -> None:
        if self.shutting_down:
            raise ProtocolError(CANNOT_CONNECT_NOW, "pgpool is shutting down: no new connections")
        limit = self.settings.max_client_conn
        if len(self.clients) > limit:
            raise ProtocolError(TOO_MANY_CONNECTIONS,
                                f"no more connections allowed (max_client_conn): {limit} clients already connected",
                                hint="raise max_client_conn, or lower the number of client connections")

    def forward_cancel(self, pid: int, key: int) -> None:
        peer_id = self.settings.peer_id
        if peer_id:
            owner = peers.peer_of(pid)
            if owner != peer_id:
                self._forward_to_peer(owner, pid, key)
                return
            key |= peers.TTL_MASK     # our keys are issued with TTL 3; a forwarded copy has less
        client = self.cancel.find(pid, key)
        if client is not None:
            client.cancel_query()   # what a cancel means depends on the client's own state

    def _forward_to_peer(self, owner: int, pid: int, key: int) -> None:
        """As PgBouncer: a cancel for another peer goes there, at most three hops."""
        entry = self.settings.peers.get(str(owner))
        if entry is None:
            log.warning("cancel request for peer %d, which is not in [peers]: dropped", owner)
        elif not peers.ttl_of(key):
            log.warning("cancel request for peer %d: forwarded too often (TTL exhausted), dropped", owner)
        else:
            self.peer_forwarder.forward(entry, entry.pool_size or self.settings.default_pool_size, pid, key)

    def send_cancel(self, host: str, port: int, backend_pid: int, backend_key: int) -> None:
        if backend_pid:
            self.cancel.send(host, port, backend_pid, backend_key)

    # ---- admin console hooks -------------------------------------------------------------------

    def _free_replication_pool(self, pool: Pool) -> None:
        for server in list(pool.idle) + list(pool.maintenance) + list(pool.connecting):
            server.close("replication client left")
        for key, candidate in list(self.pools.items()):
            if candidate is pool:
                del self.pools[key]

    def open_admin_console(self, client: ClientConnection, creds: auth.Credentials) -> Any:
        if client.replication:
            raise ProtocolError(FEATURE_NOT_SUPPORTED, "replication connections to the admin console are not supported")
        if self.surfaces.open_console is None:
            raise ProtocolError(INVALID_CATALOG_NAME, "the admin console is not available in this build")
        return self.surfaces.open_console(self, client, creds)

    def admin_welcome(self, database: str) -> bytes:
        return b"".join((m.parameter_status("server_version", "15.0 (pgpool)"),
                         m.parameter_status("client_encoding", "UTF8"),
                         m.parameter_status("server_encoding", "UTF8"),
                         m.parameter_status("DateStyle", "ISO, MDY"),
                         m.parameter_status("standard_conforming_strings", "on"),
                         m.backend_key_data(0, 0), m.READY_FOR_QUERY_IDLE))

    # ---- pools ---------------------------------------------------------------------------------

    def find_database(self, name: str) -> "DatabaseEntry | None":
        if name in ADMIN_DATABASES:
            # As in PgBouncer, the admin console wins over the "*" fallback; only an entry
            # of that very name (possible for "pgpool") routes it to a server instead.
            return self.settings.databases.get(name)
        return self.settings.find_database(name)

    def get_pool(self, database: str, user: str, creds: auth.Credentials | None,
                 replication: str | None = None) -> Pool:
        entry = self.settings.find_database(database)
        if entry is None:
            raise ProtocolError(INVALID_CATALOG_NAME, f'no such database: {database} (not in [databases], '
                                                      f'and no "*" fallback entry)')
        if entry.name in self.disabled_dbs:
            raise ProtocolError(OBJECT_NOT_IN_PREREQUISITE_STATE,
                                f'database does not allow connections: "{entry.name}" (DISABLE on the admin '
                                f'console; ENABLE {entry.name} lifts it)')
        self.check_client_limits(entry, user)
        if replication:
            pool = self._create_replication_pool(entry, user, creds, replication)
        else:
            pool = self.pools.get((entry.name, entry.user or user))
        if pool is None:
            pool = self._create_pool(entry, user, creds)
        elif pool.server_password is None and not entry.user:
            pool.server_password = auth.server_password_for(creds, entry.password)
        # Counted from here; on_client_closed uncounts once the client holds this pool.
        self.db_clients[entry.name] += 1
        self.user_clients[user] += 1
        return pool

    def new_server(self, pool: Pool) -> ServerConnection:
        return ServerConnection(pool)

    def _create_pool(self, entry: "DatabaseEntry", user: str, creds: auth.Credentials | None) -> Pool:
        server_user = entry.user or user
        pool = Pool(self, entry, server_user, self.settings.pool_settings(entry, user), server_user,
                    self.server_password(entry, creds))
        pool.paused = self.is_paused(entry.name)
        self.pools[(entry.name, server_user)] = pool
        log.info("pool %s: created (pool_mode=%s pool_size=%d reserve=%d -> %s:%s/%s)", pool.name,
                 pool.conf.pool_mode.value, pool.conf.pool_size, pool.conf.reserve_pool_size,
                 entry.host, entry.port, entry.dbname)
        return pool

    # ---- replication: passed through in session mode, never pooled (PgBouncer 1.23+) ---------------

    def _create_replication_pool(self, entry: "DatabaseEntry", user: str, creds: auth.Credentials | None,
                                 kind: str) -> Pool:
        """One pool per replication client, holding exactly its own server connection."""
        server_user = entry.user or user
        conf = dataclasses.replace(self.settings.pool_settings(entry, user), pool_mode=PoolMode.SESSION, pool_size=1,
                                   min_pool_size=0, reserve_pool_size=0, query_timeout=0.0,
                                   transaction_timeout=0.0, idle_transaction_timeout=0.0,
                                   server_lifetime=0.0)   # used once: never pooled
        pool = Pool(self, entry, server_user, conf, server_user, self.server_password(entry, creds))
        pool.replication = kind
        pool.disabled = True    # its one server is opened with the client's parameters, never by dispatch
        self.pools[(entry.name, server_user, f"replication {next(self._replication_ids)}")] = pool
        return pool

    async def open_replication_server(self, client: ClientConnection, pool: Pool,
                                      startup: Mapping[str, str]) -> SessionParams:
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

    def server_password(self, entry: "DatabaseEntry", creds: auth.Credentials | None) -> str | None:
        """A forced user (user= without password=) takes its password from the auth_file, as in
        PgBouncer; otherwise the client's own secret."""
        if entry.user:
            if entry.password:
                return entry.password
            users = self.client_auth.users
            return auth.server_password_for(auth.lookup_credentials(users, entry.user), None) \
                if entry.user in users else None
        return auth.server_password_for(creds, entry.password)

    def open_forced_pools(self) -> None:
        """Pools of forced-user databases exist from the start, so min_pool_size is kept before any
        client comes (PgBouncer enforces min_pool_size for them without clients)."""
        for entry in self.settings.databases.values():
            if entry.user and entry.name != "*" and (entry.name, entry.user) not in self.pools \
                    and self.settings.pool_settings(entry, entry.user).min_pool_size:
                self._create_pool(entry, entry.user, None)

    def check_client_limits(self, entry: "DatabaseEntry", user: str) -> None:
        limits = self.settings.client_limits(entry, user)
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

    def count_server(self, pool: Pool, delta: int) -> None:
        self.db_servers[pool.db.name] += delta
        self.user_servers[pool.server_user] += delta

    def may_open_server(self, pool: Pool) -> bool:
        conf = pool.conf
        if conf.max_db_connections and self.db_servers[pool.db.name] >= conf.max_db_connections:
            self._evict_idle(lambda p: p.db.name == pool.db.name, pool)
            return False
        if conf.max_user_connections and self.user_servers[pool.server_user] >= conf.max_user_connections:
            self._evict_idle(lambda p: p.server_user == pool.server_user, pool)
            return False
        return True

    def _evict_idle(self, same_limit: Any, wanting: Pool) -> None:
        """Close the longest-idle server of another pool under the same limit, to make room."""
        candidates = [s for p in self.pools.values() if p is not wanting and same_limit(p) for s in p.idle]
        if candidates:
            oldest = min(candidates, key=lambda s: s.last_used)
            oldest.close(f"idle; room needed for pool {wanting.name} (max_db/max_user_connections)")

    def on_server_idle(self, pool: Pool) -> None:
        """An idle server under a shared limit may be closed for another pool's waiting client."""
        for other in self.pools.values():
            if other is not pool and other.waiting and (
                    other.db.name == pool.db.name or other.server_user == pool.server_user):
                other.dispatch()

    def on_server_slot_freed(self, pool: Pool) -> None:
        pool.dispatch()
        if pool.conf.max_db_connections or pool.conf.max_user_connections:
            for other in self.pools.values():
                if other is not pool and other.waiting and (
                        other.db.name == pool.db.name or other.server_user == pool.server_user):
                    other.dispatch()


def remove_stale_socket(path: str) -> None:
    """A socket file nobody answers on is left from a crash: remove it. A live one is an error."""
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
    else:
        raise OSError(f"{path} is in use by another process")
    finally:
        probe.close()


def raise_open_files_limit() -> None:
    """Hold many idle clients: lift the soft open-files limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as error:
            log.warning("could not raise the open-files limit from %d: %s", soft, error)
