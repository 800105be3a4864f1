"""Operator actions on a running pgpool: RELOAD, PAUSE/RESUME, KILL, RECONNECT, DISABLE/ENABLE and
the graceful drain.

Owns: what each admin command and signal does to pools, clients and servers. A mixin of App
(app.py keeps the wiring); it acts only through the pools' and connections' own methods.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Callable

from . import auth, hba, tls
from .client import ClientConnection
from .config import ConfigError, Settings, change_setting, diff_settings, load_settings
from .pool import ClientState, Pool
from .protocol.constants import TX_IDLE
from .protocol.errors import ADMIN_SHUTDOWN, ProtocolError

if TYPE_CHECKING:
    from .config import DatabaseEntry

log = logging.getLogger("pgpool")


class Controls:
    """Mixed into App: every name used here (settings, pools, clients, ...) is App's."""

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
            hba_config = self._load_hba(loaded.settings)
            contexts = tls.build_contexts(loaded.settings)   # new certificates: new connections use them
        except (ConfigError, auth.AuthFileError, hba.HbaError, OSError) as error:
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
        self._apply_settings(new, auth_users, hba_config, contexts)
        self.reloads += 1
        self.last_reload_ok = True
        described = [_describe_change(name, old, new) for name in changed]
        summary = "; ".join(described) if described else "no setting changed"
        log.info("RELOAD (%s): %s; auth_file re-read (%d users)", source, summary, len(auth_users))
        return True, summary

    def change_setting(self, key: str, value: str) -> tuple[bool, str]:
        """The console's SET: one setting changed as a RELOAD reading that value would change it.

        As in PgBouncer the change lives until the next RELOAD, which re-reads the file.
        Returns (ok, message); a refused value leaves everything as it was.
        """
        old = self.settings
        try:
            new = change_setting(old, key, value)
            auth_users = self._load_auth_users(new) if new.auth_file != old.auth_file else self.client_auth.users
            hba_config = self._load_hba(new)
            contexts = tls.build_contexts(new)    # a changed *_tls_* setting applies to new connections
        except (ConfigError, auth.AuthFileError, hba.HbaError, OSError) as error:
            return False, str(error)
        name = key.strip().lower()
        self._apply_settings(new, auth_users, hba_config, contexts)
        message = _describe_change(name, old, new) if getattr(old, name) != getattr(new, name) else f"{name} unchanged"
        log.info("SET (admin console): %s", message)
        return True, message

    def _apply_settings(self, new: Settings, auth_users: dict[str, str], hba_config: "hba.HbaConfig | None",
                        contexts: "tls.TlsContexts") -> None:
        old = self.settings
        self.settings = new
        self.client_auth.replace(auth_users, hba_config)
        self.tls = contexts
        if old.verbose != new.verbose:
            logging.getLogger().setLevel(logging.DEBUG if new.verbose >= 2 else logging.INFO)
        self._apply_to_pools(new)

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
                pool.server_password = self.pool_directory.server_password(entry, None)
            elif pool.server_user in self.client_auth.users:
                fresh = auth.server_password_for(auth.lookup_credentials(self.client_auth.users, pool.server_user),
                                                 entry.password)
                if fresh is not None:
                    pool.server_password = fresh
            pool.conf = settings.pool_settings(entry, pool.user)
            for server in list(pool.idle):
                if pool.server_count() <= pool.conf.pool_size:
                    break
                server.close(f"pool_size lowered to {pool.conf.pool_size} by RELOAD")
            pool.dispatch()
        self.pool_directory.open_forced_pools()

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

    async def suspend(self, keep: Any = None) -> None:
        """PgBouncer's SUSPEND: every client and server socket stops being read (admin consoles
        excepted, so RESUME can come), new clients wait before their first byte is read; returns
        once what was already on its way out has been written, or after suspend_timeout."""
        suspension = self.suspension
        suspension.active = True
        log.info("SUSPEND: reading stopped on every client and server socket until RESUME")
        for client in list(self.clients):
            if client.admin is None:
                suspension.hold(client.transport)
        for pool in self.pools.values():
            for server in [*pool.idle, *pool.active, *pool.maintenance]:
                suspension.hold(server.transport)

        def flushed() -> bool:
            return all(t.is_closing() or t.get_write_buffer_size() == 0 for t in suspension.transports)
        timeout = self.settings.suspend_timeout
        try:
            await asyncio.wait_for(_poll(flushed), timeout)
        except TimeoutError:
            log.warning("SUSPEND: some sockets still had unsent data after suspend_timeout (%gs)", timeout)

    def resume_suspended(self) -> None:
        log.info("RESUME: %d sockets read again after SUSPEND", self.suspension.release())

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
        registry = self.client_registry
        if registry.shutting_down:
            if self.drain_task is not None and reason == "SIGTERM":
                self.shutdown_now("second SIGTERM while draining")
            return
        registry.shutting_down = True
        self.close_listeners(keep_unix=True)
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
                registry.drain_client(client)
        registry.check_all_left()
        self.drain_task = self.loop.create_task(self._finish_drain(reason))

    async def _finish_drain(self, reason: str) -> None:
        timeout = self.settings.shutdown_timeout
        started = time.monotonic()
        try:
            await asyncio.wait_for(self.client_registry.all_left.wait(), timeout or None)
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
            entry.server_parameters(), entry.load_balance_hosts, entry.target_session_attrs)


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
