"""One pool of server connections per (database, user): lend, give back, limits, queue.

Owns: the containers every client and server of the pool lives in (state == container,
moved only by `set_client_state` / `set_server_state`), the FIFO of waiting clients, the
LIFO of idle servers, pool_size / reserve_pool / max_db_connections / max_user_connections,
the bound on parallel server connects, and the cached outcome of failed server logins.
Must not know the wire protocol: client.py and server.py do the talking.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import random
import time
from typing import TYPE_CHECKING, Any, Callable, Protocol

from .config import PoolMode
from .hosts import ROLE_QUERY, DnsCache, HostPlan, Role, accepts
from .params import REPORTED_FIXED, SessionParams, set_config_sql
from .prepared import StatementRegistry, drops_all_statements
from .session import classify
from .protocol.constants import TX_IDLE
from .protocol.errors import (
    ADMIN_SHUTDOWN, CANNOT_CONNECT_NOW, CONNECTION_FAILURE, CRASH_SHUTDOWN, PROTOCOL_VIOLATION, TOO_MANY_CONNECTIONS,
    ProtocolError,
)
from .stats import PoolStats

if TYPE_CHECKING:
    from .config import DatabaseEntry, EffectivePoolSettings, Settings

log = logging.getLogger("pgpool.pool")

DNS = DnsCache()   # one per process, as PgBouncer's; bounded by dns_max_ttl / dns_nxdomain_ttl

# Server login failures that heal by themselves: Postgres starting up / shutting down / restarting,
# out of connection slots. Unreachable, refused, reset and timed-out connects are flagged transient
# where they are raised (server.py). Everything else (28P01, 28000, 3D000, TLS verification) is permanent.
TRANSIENT_LOGIN_SQLSTATES = frozenset({CANNOT_CONNECT_NOW, TOO_MANY_CONNECTIONS, ADMIN_SHUTDOWN, CRASH_SHUTDOWN})
# Retry schedule after a transient failure: attempt n+1 waits min(cap, FIRST * GROWTH**(n-1)) scaled
# by a random factor in [0.5, 1] (jitter: pools and processes do not retry in step), cap =
# min(LAST, server_login_retry), never below FIRST. One connect at a time while failing, so a pool
# makes at most 1/(LAST/2) = 4 attempts a second however many clients wait (docs/faults.md).
LOGIN_RETRY_FIRST = 0.05
LOGIN_RETRY_GROWTH = 1.5
LOGIN_RETRY_LAST = 0.5


def is_transient(error: ProtocolError) -> bool:
    return error.transient or error.sqlstate in TRANSIENT_LOGIN_SQLSTATES


def login_retry_delay(failures: int, server_login_retry: float, rand: float) -> float:
    """Seconds before the next login attempt after `failures` transient failures in a row."""
    cap = max(LOGIN_RETRY_FIRST, min(LOGIN_RETRY_LAST, server_login_retry))
    return min(cap, LOGIN_RETRY_FIRST * LOGIN_RETRY_GROWTH ** min(failures - 1, 30)) * (0.5 + 0.5 * rand)


class ServerState(enum.IntEnum):
    CONNECTING = 0   # Pool.connecting: TCP connect and login in progress
    IDLE = 1         # Pool.idle: logged in, lent to nobody (LIFO list)
    ACTIVE = 2       # Pool.active: linked to a client
    MAINTENANCE = 3  # Pool.maintenance: running pgpool's own query (check, reset, rollback, probe)
    CLOSED = 4       # in no container


class ClientState(enum.IntEnum):
    LOGIN = 0        # App.login_clients: not yet in a pool
    IDLE = 1         # Pool.idle_clients: logged in, holds no server
    WAITING = 2      # Pool.waiting: queued for a server (FIFO deque)
    ACTIVE = 3       # Pool.active_clients: linked to a server
    CLOSED = 4       # in no container


class PooledServer(Protocol):
    """What a pool needs of a server connection (server.py's ServerConnection). Defined here, not
    imported from server.py: server.py sits above this module (imports run one way)."""
    state: ServerState
    client: Any
    params: SessionParams
    prepared: Any
    host: Any
    last_used: float
    tx_status: int
    needs_reset: bool
    needs_check: bool
    close_needed: str | None
    close_reason_on_release: str | None
    closed_reason: str | None
    cancels_in_flight: int
    injected_rows: Any
    parked: Any

    def set_target(self, host: str, address: Any) -> None: ...
    async def connect_and_login(self) -> None: ...
    def close(self, reason: str) -> None: ...
    def close_transport(self) -> None: ...
    def cancel_and_close(self, reason: str) -> None: ...
    async def run_query(self, sql: str) -> tuple[ProtocolError | None, None]: ...
    def run_maintenance(self, sql: str, then: Callable[[Any], None]) -> None: ...
    def start_check(self) -> None: ...


class PoolHost(Protocol):
    """What a pool needs from the process that owns every pool (app.py's App): the settings, the
    limits across pools, and the server factory. Handed down to Pool, never imported from app.py."""
    settings: "Settings"
    tls: Any   # tls.TlsContexts, replaced whole by RELOAD

    def new_server(self, pool: "Pool") -> PooledServer: ...
    def count_server(self, pool: "Pool", delta: int) -> None: ...
    def may_open_server(self, pool: "Pool") -> bool: ...
    def on_server_idle(self, pool: "Pool") -> None: ...
    def on_server_slot_freed(self, pool: "Pool") -> None: ...
    def send_cancel(self, host: str, port: int, backend_pid: int, backend_key: int) -> None: ...


class Pool:
    # Compiled, an extension type (pool.pxd): its fields are C slots; __dict__ stays for the
    # attributes tests wrap on an instance (tests/protocol/fakes.py).
    __slots__ = ("app", "db", "user", "conf", "server_user", "server_password", "scram_keys", "name", "stats",
                 "statement_registry", "connecting", "idle", "active", "maintenance", "idle_clients", "waiting",
                 "active_clients", "server_params", "reported_names", "_server_params_probe", "normalized",
                 "_normalizing", "login_error", "login_error_at", "login_failures", "login_failing_since",
                 "next_login_at", "_login_retry_timer", "paused", "disabled", "replication", "_reserve_timer",
                 "hosts", "__dict__")

    def __init__(self, app: PoolHost, db: "DatabaseEntry", user: str, conf: "EffectivePoolSettings",
                 server_user: str, server_password: str | None):
        self.app = app
        self.db = db
        self.user = user
        self.conf = conf
        self.server_user = server_user
        self.server_password = server_password
        self.scram_keys: tuple[bytes, bytes] | None = None   # from a client's SCRAM login (pass-through)
        self.name = f"{db.name}/{user}"
        self.stats = PoolStats()
        # Shared prepared statements: a Parse is answered locally only for what THIS pool prepared.
        self.statement_registry = StatementRegistry()
        # Server containers.
        self.connecting: set[PooledServer] = set()
        self.idle: list[PooledServer] = []
        self.active: set[PooledServer] = set()
        self.maintenance: set[PooledServer] = set()
        # Client containers. Dicts as ordered sets (values None): 30-50 bytes an entry where a set takes
        # 40-105 (docs/benchmarks.md, "Memory per idle client"); they iterate in arrival order too.
        self.idle_clients: dict[Any, None] = {}
        self.waiting: collections.deque[Any] = collections.deque()
        self.active_clients: dict[Any, None] = {}
        # Reported parameters of a fresh server: the base of every client's welcome.
        self.server_params: dict[str, str] | None = None
        # Every parameter the server reports is tracked by value; the rest by SET statement.
        self.reported_names: frozenset[str] = frozenset()
        self._server_params_probe: asyncio.Task | None = None
        # (name, raw startup value) -> value as the server reports it, learned once per pool.
        self.normalized: dict[tuple[str, str], str] = {}
        self._normalizing: dict[tuple[str, str], asyncio.Future] = {}
        # The last server login failure, while no login succeeded since: what waiters are told.
        self.login_error: ProtocolError | None = None
        self.login_error_at = 0.0
        self.login_failures = 0            # failed logins in a row
        self.login_failing_since = 0.0     # when the first of them failed
        self.next_login_at = 0.0           # no new login attempt before this (monotonic)
        self._login_retry_timer: asyncio.TimerHandle | None = None
        self.paused = False
        self.disabled = False
        self.replication: str | None = None   # "physical"/"logical": one replication client's own pool
        self._reserve_timer: asyncio.TimerHandle | None = None
        self.hosts = HostPlan()            # which host of db.host the next server connection tries first

    # ---- state moves ---------------------------------------------------------------------------

    def set_server_state(self, server: PooledServer, state: ServerState) -> None:
        old = server.state
        if old == state:
            return
        if old == ServerState.CONNECTING:
            self.connecting.discard(server)
        elif old == ServerState.IDLE:
            self.idle.remove(server)
        elif old == ServerState.ACTIVE:
            self.active.discard(server)
        elif old == ServerState.MAINTENANCE:
            self.maintenance.discard(server)
        elif old == ServerState.CLOSED:
            self.app.count_server(self, +1)
        server.state = state
        if state == ServerState.CONNECTING:
            self.connecting.add(server)
        elif state == ServerState.IDLE:
            self.idle.append(server)
        elif state == ServerState.ACTIVE:
            self.active.add(server)
        elif state == ServerState.MAINTENANCE:
            self.maintenance.add(server)
        else:
            self.app.count_server(self, -1)

    def set_client_state(self, client: Any, state: ClientState) -> None:
        old = client.state
        if old == state:
            return
        if old == ClientState.IDLE:
            self.idle_clients.pop(client, None)
        elif old == ClientState.WAITING:
            self.waiting.remove(client)
        elif old == ClientState.ACTIVE:
            self.active_clients.pop(client, None)
        client.state = state
        if state == ClientState.IDLE:
            self.idle_clients[client] = None
        elif state == ClientState.WAITING:
            client.wait_start = time.monotonic()
            self.waiting.append(client)
        elif state == ClientState.ACTIVE:
            self.active_clients[client] = None

    # ---- counts --------------------------------------------------------------------------------

    def server_count(self) -> int:
        return len(self.connecting) + len(self.idle) + len(self.active) + len(self.maintenance)

    def client_count(self) -> int:
        return len(self.idle_clients) + len(self.waiting) + len(self.active_clients)

    def max_wait(self) -> float:
        return time.monotonic() - self.waiting[0].wait_start if self.waiting else 0.0

    # ---- lending -------------------------------------------------------------------------------

    def request_server(self, client: Any) -> None:
        """Queue a client that has something to send; it is linked as soon as a server is free."""
        if not self.waiting and self.idle and not self.paused:
            server = self._next_idle()
            if not server.needs_check():   # the common case: straight to a server, no queueing
                client.wait_start = time.monotonic()
                self.link(client, server)
                return
        self.set_client_state(client, ClientState.WAITING)
        self.dispatch()
        if client.state == ClientState.WAITING and self.server_count() == 0 and self._login_failing() \
                and not self._rides_through():
            self._fail_waiters(self._cached_login_error())

    def dispatch(self) -> None:
        """Give idle servers to waiting clients in arrival order; open new ones within limits."""
        if self.paused:
            return
        waiting = self.waiting
        while waiting:
            if self.idle:
                server = self._next_idle()
                if server.needs_check():
                    server.start_check()
                    continue
                self.link(waiting[0], server)
                continue
            on_the_way = len(self.connecting) + len(self.maintenance)
            if len(waiting) <= on_the_way or not self.may_launch():
                break
            self.launch_server()
        if waiting and self._reserve_timer is None and self.conf.reserve_pool_size:
            delay = max(0.0, self.app.settings.reserve_pool_timeout - self.max_wait())
            self._reserve_timer = asyncio.get_running_loop().call_later(delay + 0.001, self._on_reserve_timer)

    def _next_idle(self) -> PooledServer:
        """Most recently used (LIFO), or the longest idle with server_round_robin."""
        return self.idle[0] if self.app.settings.server_round_robin else self.idle[-1]

    def _on_reserve_timer(self) -> None:
        self._reserve_timer = None
        self.dispatch()

    def link(self, client: Any, server: PooledServer) -> None:
        waited = time.monotonic() - client.wait_start
        self.stats.wait_time += waited
        self.stats.wait_count += 1
        self.stats.wait_hist.observe(waited)
        self.set_client_state(client, ClientState.ACTIVE)
        self.set_server_state(server, ServerState.ACTIVE)
        client.attach_server(server)

    def may_launch(self) -> bool:
        if self.disabled or self._login_failing():
            return False
        settings = self.app.settings
        if len(self.connecting) >= settings.server_connect_concurrency:
            return False
        if self.login_error is not None and self.connecting:
            return False   # still failing: one probe login at a time, never a connect storm
        limit = self.conf.pool_size
        if self.waiting and self.conf.reserve_pool_size and self.max_wait() >= settings.reserve_pool_timeout:
            limit += self.conf.reserve_pool_size
        if self.server_count() >= limit:
            return False
        return self.app.may_open_server(self)

    def _login_failing(self) -> bool:
        """True while the last login failed and the next attempt is not due yet."""
        return self.login_error is not None and time.monotonic() < self.next_login_at

    def _rides_through(self) -> bool:
        """Waiters keep waiting (up to query_wait_timeout) instead of getting the error now.

        Only for a transient failure of a pool that has served before: a restart or failover
        in progress. A pool that never logged in is misconfigured until proven otherwise.
        """
        error = self.login_error
        return error is not None and self.server_params is not None and is_transient(error)

    def _cached_login_error(self) -> ProtocolError:
        error = self.login_error
        assert error is not None
        retry = self.next_login_at - time.monotonic()
        return ProtocolError(error.sqlstate,
                             f"server login has been failing, try again later (server_login_retry): "
                             f"pool {self.name}: {error.message}",
                             detail=f"next attempt in {max(retry, 0):.1f}s")

    def wait_timeout_error(self, waited: float) -> ProtocolError:
        """What a client whose query_wait_timeout ran out is told: the server's error when logins fail."""
        error = self.login_error
        if error is not None:
            return ProtocolError(error.sqlstate,
                                 f"query_wait_timeout: pool {self.name} waited {waited:.1f}s while server login "
                                 f"has been failing ({self.login_failures} attempts): {error.message}",
                                 detail=error.detail)
        return ProtocolError(
            PROTOCOL_VIOLATION,
            f"query_wait_timeout: pool {self.name} had no free server connection for "
            f"{waited:.1f}s (pool_size {self.conf.pool_size}, reserve_pool_size "
            f"{self.conf.reserve_pool_size}, {len(self.active)} in use, {len(self.connecting)} connecting, "
            f"{len(self.waiting)} waiting)")

    def launch_server(self) -> None:
        asyncio.get_running_loop().create_task(self._connect(self._new_server()))

    def _new_server(self) -> PooledServer:
        server = self.app.new_server(self)
        self.set_server_state(server, ServerState.CONNECTING)
        return server

    def _drop_attempt(self, server: PooledServer) -> None:
        server.close_transport()
        if server.state != ServerState.CLOSED:
            self.set_server_state(server, ServerState.CLOSED)

    async def _connect(self, server: PooledServer) -> None:
        started = time.monotonic()
        try:
            server = await self._login_some_host(server)
        except ProtocolError as error:
            self._on_login_failed(error)
            return
        except Exception as error:   # a bug in login must not leak a CONNECTING slot
            log.exception("pool %s: unexpected error in server login", self.name)
            self._on_login_failed(ProtocolError(CONNECTION_FAILURE, f"server login failed for pool {self.name}: {error!r}"))
            return
        if server.closed_reason is not None:   # lost right after login: never hand it out
            self.set_server_state(server, ServerState.CLOSED)
            self.dispatch()
            return
        elapsed = time.monotonic() - started
        self.stats.server_connects += 1
        self.stats.connect_hist.observe(elapsed)
        recovering = self.login_error is not None
        self._on_login_succeeded()
        if self.server_params is None:
            self.server_params = dict(server.params.reported)
            self.reported_names = frozenset(self.server_params) - REPORTED_FIXED
        if server.state == ServerState.CONNECTING:
            self.server_available(server)
        if recovering:
            self.dispatch()   # open the rest of what the queue needs, not one server per janitor tick

    async def _login_some_host(self, server: PooledServer) -> PooledServer:
        """Log `server` (or its replacements) into the first host of the plan that works and has the
        role target_session_attrs asks for. Unresolvable, unreachable and wrong-role hosts are skipped
        (transient); a permanent failure (wrong password) ends the walk at once, as in libpq.
        Failed attempts are closed here; the returned server is logged in."""
        db = self.db
        attrs = db.target_session_attrs
        settings = self.app.settings
        last_error: ProtocolError | None = None
        attempt: PooledServer | None = server
        for second_pass in range(HostPlan.passes(db)):
            for host in self.hosts.order(db):
                try:
                    # A directory is a Unix socket (PgBouncer's host=/var/run/postgresql): no DNS.
                    addresses = [host] if host.startswith("/") else await DNS.resolve(host, db.port, settings)
                except OSError as error:
                    last_error = ProtocolError(CONNECTION_FAILURE, f"could not resolve host \"{host}\" for pool "
                                               f"{self.name}: {error.strerror or error}", transient=True)
                    continue
                if attempt is None:
                    attempt = self._new_server()
                attempt.set_target(host, addresses[0])
                try:
                    await attempt.connect_and_login()
                    role = await self._learn_role(attempt) if attrs != "any" else None
                except ProtocolError as error:
                    self._drop_attempt(attempt)
                    attempt = None
                    if not is_transient(error):
                        raise
                    last_error = error
                    continue
                except BaseException:
                    self._drop_attempt(attempt)
                    raise
                if role is None or accepts(attrs, role, second_pass=bool(second_pass)):
                    return attempt
                what = "in hot standby" if role.standby else "read-only"
                last_error = ProtocolError(CONNECTION_FAILURE, f"server {host}:{db.port} is {what}; pool {self.name} "
                                           f"needs target_session_attrs={attrs}", transient=True)
                attempt.close(f"{what}, not what target_session_attrs={attrs} asks for")
                self._drop_attempt(attempt)
                attempt = None
        if attempt is not None:
            self._drop_attempt(attempt)
        assert last_error is not None
        raise last_error

    async def _learn_role(self, server: PooledServer) -> Role:
        role = Role.from_reported(server.params.reported)
        if role is not None:
            return role
        error, _ = await server.run_query(ROLE_QUERY)   # PostgreSQL < 14 reports neither parameter
        if error is not None:
            raise error
        return Role.from_query(server.injected_rows[0] if server.injected_rows else None)

    def on_read_only_error(self, server: PooledServer) -> None:
        """A server of a read-write pool answered 25006: if it reports being read-only (a failover
        turned it into a standby, or the old primary was made read-only), retire every server of this
        pool on that host and forget the host's DNS answer, so new connections find the new writer.
        A 25006 from a server that reports read-write came from the client's own READ ONLY transaction."""
        role = Role.from_reported(server.params.reported)
        if role is not None and accepts(self.db.target_session_attrs, role):
            return
        host = server.host
        reason = f"server {host} answered 25006 (read-only) in pool {self.name} (target_session_attrs=" \
                 f"{self.db.target_session_attrs})"
        log.warning("pool %s: %s: closing its servers on that host and re-resolving it", self.name, reason)
        DNS.forget(host)
        for other in list(self.active) + list(self.maintenance):
            if other.host == host:
                other.close_needed = reason
        for other in list(self.idle):
            if other.host == host:
                other.close(reason)

    def _on_login_failed(self, error: ProtocolError) -> None:
        self.stats.server_login_failures += 1
        self.stats.count_error("server_login")
        settings = self.app.settings
        now = time.monotonic()
        self.login_error = error
        self.login_error_at = now
        if not self.login_failures:
            self.login_failing_since = now
        self.login_failures += 1
        transient = is_transient(error)
        if transient:
            delay = login_retry_delay(self.login_failures, settings.server_login_retry, random.random())
        else:
            delay = settings.server_login_retry
        self.next_login_at = now + delay
        rides = self._rides_through()
        if self.login_failures == 1 or not transient or log.isEnabledFor(logging.DEBUG):
            log.warning("pool %s: server login failed: %s (%s); %s; next attempt in %.2fs%s", self.name,
                        error.message, error.sqlstate, "transient" if transient else "permanent", delay,
                        f", {len(self.waiting)} waiting client(s) keep waiting (query_wait_timeout)" if rides
                        else " (server_login_retry)")
        if not rides and (not transient or self.server_count() == 0):
            # Permanent (wrong password, no such database): every waiter learns it now, none hangs.
            self._fail_waiters(error)
        if self._login_retry_timer is not None:
            self._login_retry_timer.cancel()
        self._login_retry_timer = asyncio.get_running_loop().call_later(delay, self._on_login_retry_due)

    def _on_login_retry_due(self) -> None:
        self._login_retry_timer = None
        self.dispatch()

    def _on_login_succeeded(self) -> None:
        if self.login_error is not None:
            log.info("pool %s: server login works again after %d failed attempt(s) over %.1fs", self.name,
                     self.login_failures, time.monotonic() - self.login_failing_since)
        self.login_error = None
        self.login_failures = 0
        self.next_login_at = 0.0

    def _fail_waiters(self, error: ProtocolError) -> None:
        while self.waiting:
            self.waiting[0].fail(error)

    # ---- giving back ---------------------------------------------------------------------------

    def release_server(self, server: PooledServer) -> None:
        """The link ended (transaction done, or client gone): clean the server and reuse it."""
        client = server.client
        if client is not None:
            client.detach_server()
            if client.state == ClientState.ACTIVE:
                self.set_client_state(client, ClientState.IDLE)
        if server.state == ServerState.CLOSED:
            return
        reason = server.close_reason_on_release()
        if reason:
            server.close(reason)
            return
        if server.cancels_in_flight:
            # A client's cancel may still land: lend the server to nobody until Postgres handled it.
            self.set_server_state(server, ServerState.MAINTENANCE)
            server.parked = True
            return
        self._clean(server)

    def release_abandoned(self, server: PooledServer, reason: str, mid_query: bool, session_left: bool) -> None:
        """The client holding `server` left. Mid-query (its own or pgpool's query): cancel what runs
        and drop the server rather than wait. Otherwise (maybe inside a transaction) release rolls
        back, and resets session state the client may have left before reuse, or closes the server
        when server_reset_query is empty."""
        if mid_query:
            server.client.server = None
            server.client = None
            server.cancel_and_close(f"client left mid-query ({reason})")
            return
        server.needs_reset = session_left
        if session_left and not self.app.settings.server_reset_query and self.conf.pool_mode != PoolMode.SESSION:
            server.close_needed = "client left session state on it and server_reset_query is empty"
        self.release_server(server)

    def _clean(self, server: PooledServer) -> None:
        """Roll back an open transaction, then run server_reset_query where owed, then reuse."""
        settings = self.app.settings
        if server.tx_status != TX_IDLE:
            server.run_maintenance("ROLLBACK", self._clean)
        elif settings.server_reset_query and (server.needs_reset or settings.server_reset_query_always):
            server.needs_reset = False
            server.run_maintenance(settings.server_reset_query, self._after_reset)
        else:
            self.server_available(server)

    def _after_reset(self, server: PooledServer) -> None:
        """server_reset_query ran: forget what it undid (tracked SETs, prepared statements)."""
        text = self.app.settings.server_reset_query.encode("utf-8")
        for change in classify(text, 0, len(text)).changes:   # DISCARD ALL / RESET ALL: every tracked SET
            server.params.apply(change, self.reported_names)
        if server.prepared is not None and drops_all_statements(text):
            server.prepared.forget_all()   # the server has none of pgpool's statements any more
        self.server_available(server)

    def server_available(self, server: PooledServer) -> None:
        if server.close_needed:   # retired (RELOAD, failover) while it was being cleaned or checked
            server.close(server.close_needed)
            return
        server.needs_reset = False
        server.last_used = time.monotonic()
        if self.waiting and not self.paused:
            # Straight to the next waiter: a server handed over never passes through the idle list.
            self.link(self.waiting[0], server)
            return
        self.set_server_state(server, ServerState.IDLE)
        if self.conf.max_db_connections or self.conf.max_user_connections:
            self.app.on_server_idle(self)

    def on_server_closed(self, server: PooledServer) -> None:
        if server.state != ServerState.CLOSED:
            self.set_server_state(server, ServerState.CLOSED)
        self.app.on_server_slot_freed(self)

    # ---- welcome parameters --------------------------------------------------------------------

    async def ensure_server_params(self) -> dict[str, str]:
        """Reported parameters of a fresh server, connecting one (within limits) if none was ever seen."""
        if self.server_params is not None:
            return self.server_params
        if self._login_failing():
            raise self._cached_login_error()
        if self._server_params_probe is None:
            self._server_params_probe = asyncio.get_running_loop().create_task(self._probe_server_params())
        await asyncio.shield(self._server_params_probe)
        assert self.server_params is not None
        return self.server_params

    async def _probe_server_params(self) -> None:
        try:
            server = await self.borrow_server()   # the first successful login fills server_params
            self.release_server(server)
        finally:
            self._server_params_probe = None

    async def client_session(self, startup: dict[str, str]) -> SessionParams:
        """A new client's session: the server's values overlaid with its startup parameters.

        Reported values must be shown as the server would show them ("utf8" -> "UTF8"), so
        each (name, value) is applied once on a server and the reported value remembered.
        """
        base = await self.ensure_server_params()
        session = SessionParams({k: v for k, v in base.items()})
        unknown = []
        for name, value in startup.items():
            if name in self.reported_names:
                key = (name, value)
                if key not in self.normalized:
                    unknown.append(key)
            else:
                session.statements[name] = set_config_sql(name, value)
        if unknown:
            await self._normalize(unknown)
        for name, value in startup.items():
            if name in self.reported_names:
                session.reported[name] = self.normalized[(name, value)]
        return session

    async def _normalize(self, keys: list[tuple[str, str]]) -> None:
        loop = asyncio.get_running_loop()
        mine = [k for k in keys if k not in self._normalizing]
        if mine:
            futures = {k: loop.create_future() for k in mine}
            self._normalizing.update(futures)
            try:
                server = await self.borrow_server()
                sql = ";".join(set_config_sql(name, value) for name, value in mine)
                error, _ = await server.run_query(sql)
                if error is not None:
                    raise error
                for name, value in mine:
                    self.normalized[(name, value)] = server.params.reported.get(name, value)
                self.release_server(server)
                for future in futures.values():
                    future.set_result(None)
            except BaseException as error:
                for future in futures.values():
                    if not future.done():
                        future.set_exception(error if isinstance(error, Exception) else ProtocolError(
                            CONNECTION_FAILURE, "login cancelled"))
                        future.exception()  # mark retrieved
                raise
            finally:
                for key in mine:
                    self._normalizing.pop(key, None)
        for key in keys:
            if key not in self.normalized:
                future = self._normalizing.get(key)
                if future is not None:
                    await future

    async def borrow_server(self) -> PooledServer:
        """Take a server out of the pool for pgpool's own use (give it back with release_server)."""
        borrower = _Borrower(self)
        self.request_server(borrower)
        try:
            return await borrower.future
        except asyncio.CancelledError:
            if borrower.state == ClientState.WAITING:
                self.set_client_state(borrower, ClientState.CLOSED)
            elif borrower.future.done() and not borrower.future.cancelled() and borrower.future.exception() is None:
                self.release_server(borrower.future.result())
            raise


class _Borrower:
    """A waiter standing in the client queue on behalf of pgpool itself."""
    __slots__ = ("pool", "state", "wait_start", "future")

    def __init__(self, pool: Pool):
        self.pool = pool
        self.state = ClientState.LOGIN
        self.wait_start = 0.0
        self.future: asyncio.Future = asyncio.get_running_loop().create_future()

    def attach_server(self, server: PooledServer) -> None:
        # A borrowed server runs pgpool's queries: MAINTENANCE, and the borrower leaves the queue.
        self.pool.set_client_state(self, ClientState.CLOSED)
        self.pool.set_server_state(server, ServerState.MAINTENANCE)
        if self.future.done():
            self.pool.release_server(server)
        else:
            self.future.set_result(server)

    def detach_server(self) -> None:
        pass

    def fail(self, error: ProtocolError) -> None:
        self.pool.set_client_state(self, ClientState.CLOSED)
        if not self.future.done():
            self.future.set_exception(error)
