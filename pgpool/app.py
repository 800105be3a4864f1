"""Wiring: listeners, pools, client registry, limits across pools, signals, shutdown.

Owns: the listening sockets, the map (database, user) -> Pool, the set of all clients
(max_client_conn), server counts per database and per user (max_db_connections,
max_user_connections), cancel keys, reload and shutdown. Holds no protocol logic.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import resource
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping

from . import auth
from .cancel import CancelRegistry
from .prepared import StatementRegistry
from .client import ADMIN_DATABASES, ClientConnection
from .config import ConfigError, LoadedConfig, Settings, diff_settings, load_settings
from .pool import ClientState, Pool
from .protocol import messages as m
from .protocol.constants import TX_IDLE
from .protocol.errors import (
    ADMIN_SHUTDOWN, CANNOT_CONNECT_NOW, INVALID_CATALOG_NAME, OBJECT_NOT_IN_PREREQUISITE_STATE, TOO_MANY_CONNECTIONS,
    ProtocolError,
)

if TYPE_CHECKING:
    from .config import DatabaseEntry

log = logging.getLogger("pgpool")


class App:
    def __init__(self, loaded: LoadedConfig, overrides: Mapping[str, str] | None = None):
        self.settings: Settings = loaded.settings
        self.overrides: dict[str, str] = dict(overrides or {})   # --set values, applied again on RELOAD
        self.config_warnings = loaded.warnings
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.auth_users: dict[str, str] = self._load_auth_users(self.settings)
        self.pools: dict[tuple[str, str], Pool] = {}
        self.clients: set[ClientConnection] = set()
        self.cancel = CancelRegistry()
        self.statement_registry = StatementRegistry()
        self.db_servers: collections.Counter[str] = collections.Counter()
        self.user_servers: collections.Counter[str] = collections.Counter()
        self.listeners: list[asyncio.AbstractServer] = []
        self.started_at = time.time()
        self.shutting_down = False
        self.stopped: asyncio.Future | None = None
        self.janitor_task: asyncio.Task | None = None
        self.admin_module: Any = None
        self.http: Any = None
        self.bound_port = 0
        self.stats_log: Any = None
        # Operations state (admin console, signals): see the "operations" section below.
        self.paused_all = False
        self.paused_dbs: set[str] = set()
        self.disabled_dbs: set[str] = set()
        self.client_login_failures = 0       # logins that named a user and did not complete
        self.reloads = 0
        self.reload_failures = 0
        self.last_reload_ok = True
        self.drain_task: asyncio.Task | None = None
        self._clients_gone = asyncio.Event()

    @staticmethod
    def _load_auth_users(settings: Settings) -> dict[str, str]:
        return auth.load_auth_file(settings.auth_file) if settings.auth_file else {}

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
            server = await self.loop.create_server(
                lambda: ClientConnection(self), None if host == "*" else host, settings.listen_port,
                reuse_address=True, backlog=4096)
            self.listeners.append(server)
            for sock in server.sockets:
                self.bound_port = sock.getsockname()[1]
                log.info("listening on %s:%s", *sock.getsockname()[:2])
        try:
            from . import admin
            self.admin_module = admin
        except ImportError:
            self.admin_module = None
        if settings.metrics_port:
            try:
                from . import http
            except ImportError:
                log.warning("metrics_port set but pgpool.http is not available")
            else:
                self.http = await http.start(self)
        from .janitor import run_janitor
        self.janitor_task = self.loop.create_task(run_janitor(self))
        from . import statslog
        self.stats_log = statslog.start(self)

    async def wait_stopped(self) -> None:
        assert self.stopped is not None
        await self.stopped

    def close_listeners(self) -> None:
        for server in self.listeners:
            server.close()
        self.listeners.clear()

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
        self.clients.add(client)

    def on_client_logged_in(self, client: ClientConnection) -> None:
        if self.shutting_down:
            # Logged in while draining: it holds no transaction, so it may go at once.
            client.drain = True
            self.loop.call_soon(self._drain_client, client)

    def on_client_closed(self, client: ClientConnection) -> None:
        self.clients.discard(client)
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

    def encryption_answer(self, kind: str) -> bytes:
        # The TLS seam: with TLS configured this would answer 'S' and wrap the transport.
        return b"N"

    def register_cancel_key(self, client: ClientConnection) -> tuple[int, int]:
        return self.cancel.register(client)

    def forward_cancel(self, pid: int, key: int) -> None:
        client = self.cancel.find(pid, key)
        if client is None:
            return
        server = client.server
        # Only a query in flight is cancelled: an idle link has nothing of this client's to stop.
        if server is not None and (client.pending_rfq or client.open_extended or client.copy_in) and server.backend_pid:
            # Until Postgres has handled it, the server is not lent to anyone else (see release_server).
            server.cancels_in_flight += 1
            self.cancel.send(server.pool.db.host, server.pool.db.port, server.backend_pid, server.backend_key,
                             done=server.on_cancel_done)

    def send_cancel(self, host: str, port: int, backend_pid: int, backend_key: int) -> None:
        if backend_pid:
            self.cancel.send(host, port, backend_pid, backend_key)

    # ---- admin console hooks -------------------------------------------------------------------

    def open_admin_console(self, client: ClientConnection, creds: auth.Credentials) -> Any:
        if self.admin_module is None:
            raise ProtocolError(INVALID_CATALOG_NAME, "the admin console is not available in this build")
        return self.admin_module.open_console(self, client, creds)

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

    def get_pool(self, database: str, user: str, creds: auth.Credentials | None) -> Pool:
        entry = self.settings.find_database(database)
        if entry is None:
            raise ProtocolError(INVALID_CATALOG_NAME, f'no such database: "{database}" (not in [databases], '
                                                      f'and no "*" fallback entry)')
        if entry.name in self.disabled_dbs:
            raise ProtocolError(OBJECT_NOT_IN_PREREQUISITE_STATE,
                                f'database does not allow connections: "{entry.name}" (DISABLE on the admin '
                                f'console; ENABLE {entry.name} lifts it)')
        server_user = entry.user or user
        key = (entry.name, server_user)
        pool = self.pools.get(key)
        if pool is None:
            password = entry.password if entry.user else auth.server_password_for(creds, entry.password)
            pool = Pool(self, entry, server_user, self.settings.pool_settings(entry, user), server_user, password)
            pool.paused = self.is_paused(entry.name)
            self.pools[key] = pool
            log.info("pool %s: created (pool_mode=%s pool_size=%d reserve=%d -> %s:%s/%s)", pool.name,
                     pool.conf.pool_mode.value, pool.conf.pool_size, pool.conf.reserve_pool_size,
                     entry.host, entry.port, entry.dbname)
        elif pool.server_password is None and not entry.user:
            pool.server_password = auth.server_password_for(creds, entry.password)
        return pool

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

    # ---- operations: RELOAD ---------------------------------------------------------------------

    def reload(self, source: str = "SIGHUP") -> tuple[bool, str]:
        """Re-read the config file and auth_file and apply what can change live.

        An invalid new configuration is refused whole and the running one stays. Settings
        that need a restart keep their running values and are named in a log line.
        Returns (ok, message) for the admin console.
        """
        old = self.settings
        try:
            loaded = load_settings(old.config_path, self.overrides)
            auth_users = self._load_auth_users(loaded.settings)
        except (ConfigError, auth.AuthFileError, OSError) as error:
            self.reload_failures += 1
            self.last_reload_ok = False
            message = f"RELOAD ({source}) refused, the running configuration stays: {error}"
            log.error("%s", message)
            return False, message
        new = loaded.settings
        changed, need_restart = diff_settings(old, new)
        if need_restart:
            new = new.model_copy(update={name: getattr(old, name) for name in need_restart})
            log.warning("RELOAD (%s): changed settings that need a restart, still running with their old "
                        "values: %s", source, ", ".join(need_restart))
        for warning in loaded.warnings:
            log.warning("config: %s", warning)
        self.settings = new
        self.auth_users = auth_users
        if old.verbose != new.verbose:
            logging.getLogger().setLevel(logging.DEBUG if new.verbose >= 2 else logging.INFO)
        self._apply_to_pools(new)
        self.reloads += 1
        self.last_reload_ok = True
        described = [_describe_change(name, old, new) for name in changed]
        summary = "; ".join(described) if described else "no setting changed"
        log.info("RELOAD (%s): %s; auth_file re-read (%d users)", source, summary, len(auth_users))
        return True, summary

    def _apply_to_pools(self, settings: Settings) -> None:
        """New limits for every pool; servers of a changed database entry are replaced at release."""
        for pool in list(self.pools.values()):
            entry = settings.find_database(pool.db.name)
            if entry is None:
                self.retire_servers(pool, "database removed from the config by RELOAD")
                continue
            if _server_side(entry) != _server_side(pool.db):
                self.retire_servers(pool, "database entry changed by RELOAD")
                if entry.user != pool.db.user:
                    continue    # clients of the new forced user get a new pool; this one winds down
                pool.db = entry
            if entry.user:
                pool.server_password = entry.password
            elif pool.server_user in self.auth_users:
                fresh = auth.server_password_for(auth.lookup_credentials(self.auth_users, pool.server_user),
                                                 entry.password)
                if fresh is not None:
                    pool.server_password = fresh
            pool.conf = settings.pool_settings(entry, pool.user)
            for server in list(pool.idle):
                if pool.server_count() <= pool.conf.pool_size:
                    break
                server.close(f"pool_size lowered to {pool.conf.pool_size} by RELOAD")
            pool.dispatch()

    def retire_servers(self, pool: Pool, reason: str) -> None:
        """Close idle servers now and the others when they are released (PgBouncer's close_needed)."""
        for server in list(pool.active) + list(pool.maintenance):
            server.close_needed = reason
        for server in list(pool.idle):
            server.close(reason)

    # ---- operations: PAUSE, RESUME, DISABLE, ENABLE, KILL, RECONNECT, WAIT_CLOSE -----------------

    def pools_of(self, database: str | None) -> list[Pool]:
        return [p for p in self.pools.values() if database is None or p.db.name == database]

    def is_paused(self, database: str) -> bool:
        return self.paused_all or database in self.paused_dbs

    def pause(self, database: str | None = None) -> None:
        """No new server assignments for `database` (or all); linked clients finish their transaction."""
        if database is None:
            self.paused_all = True
        else:
            self.paused_dbs.add(database)
        log.info("PAUSE %s: new transactions wait; servers close as their clients release them",
                 database or "(all databases)")
        self._apply_pause()

    def resume(self, database: str | None = None) -> None:
        if database is None:
            self.paused_all = False
            self.paused_dbs.clear()
        else:
            self.paused_dbs.discard(database)
        log.info("RESUME %s", database or "(all databases)")
        self._apply_pause()

    def _apply_pause(self) -> None:
        for pool in self.pools.values():
            paused = self.is_paused(pool.db.name)
            if pool.paused != paused:
                pool.paused = paused
                if not paused:
                    pool.dispatch()

    async def wait_paused(self, database: str | None = None) -> None:
        """Return once the paused pools hold no server connection (PgBouncer's PAUSE completes then)."""
        def released() -> bool:
            busy = False
            for pool in self.pools_of(database):
                if not pool.paused:
                    continue
                for server in list(pool.idle):
                    server.close("PAUSE")
                busy = busy or pool.server_count() > 0
            return not busy
        await _poll(released)

    def set_disabled(self, database: str, disabled: bool) -> None:
        if disabled:
            self.disabled_dbs.add(database)
        else:
            self.disabled_dbs.discard(database)
        log.info("%s %s: new client logins %s", "DISABLE" if disabled else "ENABLE", database,
                 "refused" if disabled else "allowed again")

    def kill(self, database: str | None = None) -> int:
        """PgBouncer's KILL: pause the database and drop its clients and servers at once."""
        self.pause(database)
        error = ProtocolError(ADMIN_SHUTDOWN, f"terminated by the admin console (KILL {database or ''})".strip())
        killed = 0
        for pool in self.pools_of(database):
            for client in list(pool.active_clients) + list(pool.waiting) + list(pool.idle_clients):
                if isinstance(client, ClientConnection):
                    client.disconnect("KILL command", error)
                    killed += 1
            for server in list(pool.idle) + list(pool.active) + list(pool.maintenance) + list(pool.connecting):
                server.close("KILL command")
        log.info("KILL %s: %d clients disconnected", database or "(all databases)", killed)
        return killed

    def kill_client(self, client_id: int) -> bool:
        for client in list(self.clients):
            if client.id == client_id and client.admin is None:
                client.disconnect("admin forced disconnect (KILL_CLIENT)",
                                  ProtocolError(ADMIN_SHUTDOWN, "terminated by the admin console (KILL_CLIENT)"))
                return True
        return False

    def reconnect(self, database: str | None = None) -> None:
        for pool in self.pools_of(database):
            self.retire_servers(pool, "RECONNECT command")
        log.info("RECONNECT %s: servers close when released", database or "(all databases)")

    async def wait_close(self, database: str | None = None) -> None:
        """Return once no server of `database` (or any) still waits to be closed (close_needed)."""
        def closed() -> bool:
            return not any(server.close_needed for pool in self.pools_of(database)
                           for server in list(pool.active) + list(pool.maintenance) + pool.idle)
        await _poll(closed)

    # ---- operations: graceful drain -------------------------------------------------------------

    def begin_drain(self, reason: str = "SIGTERM", *, serve_waiting: bool = True) -> None:
        """Stop accepting, then let each client finish its transaction and leave.

        Clients between transactions go at once; the others at their next transaction
        boundary; the process stops when none is left or after shutdown_timeout. With
        serve_waiting=False (SHUTDOWN WAIT_FOR_SERVERS) queued clients are cut instead of served.
        A second SIGTERM while draining shuts down at once, as in PgBouncer.
        """
        if self.shutting_down:
            if self.drain_task is not None and reason == "SIGTERM":
                self.shutdown_now("second SIGTERM while draining")
            return
        self.shutting_down = True
        self.close_listeners()
        clients = [c for c in self.clients if c.admin is None]
        log.info("%s: graceful shutdown: listeners closed, /readyz unready; %d clients leave at their next "
                 "transaction boundary (shutdown_timeout %gs)", reason, len(clients), self.settings.shutdown_timeout)
        if not serve_waiting:
            self.paused_all = True
            self._apply_pause()
        for client in clients:
            client.drain = True
            if not serve_waiting and client.state == ClientState.WAITING:
                client.disconnect(f"{reason}: queued client cut", ProtocolError(
                    ADMIN_SHUTDOWN, f"pgpool is shutting down ({reason}): no server will be assigned"))
            else:
                self._drain_client(client)
        if not any(c.admin is None for c in self.clients):
            self._clients_gone.set()
        self.drain_task = self.loop.create_task(self._finish_drain(reason))

    def _drain_client(self, client: ClientConnection) -> None:
        """Disconnect a draining client now if it is between transactions; else its RFQ will."""
        if client.closed or not at_transaction_boundary(client):
            return
        client.disconnect("shutting down: left between transactions", ProtocolError(
            ADMIN_SHUTDOWN, "pgpool is shutting down (client drained at transaction boundary)"))

    async def _finish_drain(self, reason: str) -> None:
        timeout = self.settings.shutdown_timeout
        started = time.monotonic()
        try:
            await asyncio.wait_for(self._clients_gone.wait(), timeout or None)
        except TimeoutError:
            left = [c for c in self.clients if c.admin is None]
            log.warning("shutdown_timeout (%gs) reached: cutting %d clients still connected", timeout, len(left))
            now = time.monotonic()
            for client in left:
                log.warning("cut: %s (%s, connected %.1fs)", client.log_prefix, describe_client_state(client),
                            now - client.connected_at)
        else:
            log.info("%s: every client left after %.1fs; stopping", reason, time.monotonic() - started)
        self.shutdown_now(f"{reason}: drained")


def at_transaction_boundary(client: ClientConnection) -> bool:
    """True when the client holds no transaction and has nothing in flight."""
    if client.state == ClientState.IDLE:
        return not client.pending
    if client.state == ClientState.ACTIVE:
        server = client.server
        return (server is not None and server.tx_status == TX_IDLE and not client.pending_rfq
                and not client.open_extended and not client.copy_in and not client.syncing and not client.pending)
    return False


def describe_client_state(client: ClientConnection) -> str:
    if client.state == ClientState.WAITING:
        return "waiting for a server"
    server = client.server
    if server is None:
        return "idle" if client.state == ClientState.IDLE else "logging in"
    if server.tx_status != TX_IDLE:
        return f"in a transaction for {time.monotonic() - client.xact_start:.1f}s"
    return "query in flight"


def _server_side(entry: "DatabaseEntry") -> tuple:
    """The fields of a [databases] entry that shape a server connection."""
    return (entry.host, entry.port, entry.dbname, entry.user, entry.password, entry.connect_query,
            entry.server_parameters())


def _describe_change(name: str, old: Settings, new: Settings) -> str:
    before, after = getattr(old, name), getattr(new, name)
    if isinstance(before, dict):
        # Entries may hold passwords: name what changed, never the values.
        added = sorted(set(after) - set(before))
        removed = sorted(set(before) - set(after))
        modified = sorted(k for k in set(before) & set(after) if before[k] != after[k])
        parts = [f"{label} {', '.join(keys)}" for label, keys in
                 (("added", added), ("removed", removed), ("changed", modified)) if keys]
        return f"[{name}] {'; '.join(parts)}"
    return f"{name} {_show(before)} -> {_show(after)}"


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value)) or "''"
    if hasattr(value, "value"):
        return str(value.value)
    return str(value) if value not in (None, "") else "''"


async def _poll(condition: Callable[[], bool], interval: float = 0.05) -> None:
    """Wait for a state reached through many callbacks; the admin command awaiting it stays cancellable."""
    while not condition():
        await asyncio.sleep(interval)


def raise_open_files_limit() -> None:
    """Hold many idle clients: lift the soft open-files limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as error:
            log.warning("could not raise the open-files limit from %d: %s", soft, error)
