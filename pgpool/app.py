"""Wiring: listeners, the collaborators every client is handed, limits across pools, signals, shutdown.

Owns: the listening sockets, server counts per database and per user (max_db_connections,
max_user_connections) and shutdown; it builds and hands down what a client uses (the
`ClientHost` members: client_auth, cancel, client_registry, pool_directory, admin_gate), which
own the clients, the pools and the cancel keys. Operator actions (reload, pause, drain) live
in control.py, mixed in. Holds no protocol logic.
Must not import the operator surfaces (admin, http, janitor, statslog, metrics): they sit above
this module and read its pools; cli.py hands them down as `Surfaces` (imports run one way).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import grp
import logging
import os
import resource
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping, Protocol

from . import auth, hba, peers, tls
from .admingate import AdminGate
from .authquery import AuthQuery
from .cancel import CancelRegistry
from .clientauth import ClientAuth
from .clientregistry import ClientRegistry
from .control import Controls
from .client import ClientConnection
from .config import LoadedConfig, Settings
from .pool import Pool
from .pooldirectory import PoolDirectory
from .server import ServerConnection
from .suspension import Suspension
from .protocol.errors import ProtocolError

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
        self.tls: tls.TlsContexts = tls.build_contexts(self.settings)   # replaced whole by RELOAD
        self.unix_socket: str | None = None
        # What every client is handed (the ClientHost members): it asks these, never App.
        self.suspension = Suspension()              # SUSPEND: sockets not read until RESUME
        self.client_registry = ClientRegistry(self, self.suspension)
        self.pool_directory = PoolDirectory(self, self.client_registry)
        self.client_auth = ClientAuth(self, self._load_auth_users(self.settings), self._load_hba(self.settings),
                                      AuthQuery(self.pool_directory.own_pool))
        self.peer_forwarder = peers.PeerForwarder()
        self.cancel = CancelRegistry(self, self.peer_forwarder)
        self.admin_gate = AdminGate(None if surfaces.open_console is None
                                    else functools.partial(surfaces.open_console, self))
        self.db_servers: collections.Counter[str] = collections.Counter()
        self.user_servers: collections.Counter[str] = collections.Counter()
        self.listeners: list[asyncio.AbstractServer] = []
        self.started_at = time.time()
        self.stopped: asyncio.Future | None = None
        self.janitor_task: asyncio.Task | None = None
        self.http: Closeable | None = None
        self.bound_port = 0
        self.unix_listener: asyncio.AbstractServer | None = None
        self._unix_socket_inode = 0
        self.stats_log: Any = None   # statslog.StatsLog: admin's SHOW STATS reads its averages
        # Operations state (admin console, signals): see the "operations" section below.
        self.paused_all = False
        self.paused_dbs: set[str] = set()
        self.reloads = 0
        self.reload_failures = 0
        self.last_reload_ok = True
        self.drain_task: asyncio.Task | None = None
        self.pause_task: asyncio.Task | None = None     # SIGUSR1's PAUSE, finishing in the background

    # ---- what the operator surfaces read (owned by the collaborators above) ----------------------

    @property
    def clients(self) -> dict[ClientConnection, None]:
        return self.client_registry.clients

    @property
    def client_login_failures(self) -> int:
        return self.client_registry.login_failures

    @property
    def shutting_down(self) -> bool:
        return self.client_registry.shutting_down

    @property
    def suspended(self) -> bool:
        return self.suspension.active

    @property
    def pools(self) -> dict[tuple, Pool]:
        return self.pool_directory.pools

    @property
    def disabled_dbs(self) -> set[str]:
        return self.pool_directory.disabled_dbs

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
        self.pool_directory.open_forced_pools()
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
        self.client_registry.shutting_down = True
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

    # ---- what every pool is given (PoolHost): servers, limits across pools, cancels ------------

    def send_cancel(self, host: str, port: int, backend_pid: int, backend_key: int) -> None:
        if backend_pid:
            self.cancel.send(host, port, backend_pid, backend_key)

    def new_server(self, pool: Pool) -> ServerConnection:
        return ServerConnection(pool)

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
