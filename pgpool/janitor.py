"""Periodic upkeep: timeouts, idle and lifetime reaping, min_pool_size, idle pools.

Owns: every timer-driven decision (query_wait_timeout and query_wait_notify, client_idle_timeout,
idle_transaction_timeout, transaction_timeout, query_timeout, server_fast_close,
server_idle_timeout, server_lifetime, min_pool_size, pool_idle_timeout, autodb_idle_timeout),
each with PgBouncer's precedence between global, [databases] and [users] values (config.py
computes them). Reads pools and clients; acts only through their own methods.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from .config import ClientLimits, PoolMode
from .clientregistry import at_transaction_boundary
from .pool import ServerState
from .protocol import messages as m
from .protocol.errors import (
    ADMIN_SHUTDOWN, IDLE_IN_TRANSACTION_SESSION_TIMEOUT, IDLE_SESSION_TIMEOUT, QUERY_CANCELED, ProtocolError,
)
from .protocol.constants import TX_IDLE

if TYPE_CHECKING:
    from .app import App
    from .pool import Pool

log = logging.getLogger("pgpool.janitor")

TICK = 0.2   # seconds; the precision of every timeout below

# PgBouncer's words (src/janitor.c), which people search for; pgpool adds the pool and the wait.
WAIT_NOTICE = "No server connection available in postgres backend, client being queued"


class Janitor:
    """State the upkeep keeps between passes: who was told it is queued, when pools were last used."""

    def __init__(self, app: "App"):
        self.app = app
        self.notified: dict[int, float] = {}        # client id -> wait_start it was notified for
        self.pool_last_active: dict[tuple[str, str], float] = {}
        self.db_last_active: dict[str, float] = {}

    def run_pass(self, now: float) -> None:
        app = self.app
        notified: dict[int, float] = {}
        limits: dict[tuple[str, str], ClientLimits] = {}
        for pool in list(app.pools.values()):
            check_pool(app, pool, now, limits, self.notified, notified)
        self.notified = notified
        self.reap_idle_pools(now)

    def reap_idle_pools(self, now: float) -> None:
        """pool_idle_timeout frees an empty pool; autodb_idle_timeout frees the pools of a '*' database."""
        app = self.app
        settings = app.settings
        in_use: set[str] = set()
        for key, pool in list(app.pools.items()):
            if pool.client_count() or pool.server_count():
                self.pool_last_active[key] = now
                in_use.add(pool.db.name)
                continue
            last = self.pool_last_active.setdefault(key, now)
            keeps_servers = bool(pool.db.user) and pool.conf.min_pool_size > 0
            if settings.pool_idle_timeout and not keeps_servers and now - last > settings.pool_idle_timeout:
                log.info("pool %s: freed after %.0fs without clients or servers (pool_idle_timeout)",
                         pool.name, now - last)
                self.free_pool(key)
        databases = {pool.db.name for pool in app.pools.values() if pool.db.name not in settings.databases}
        for name in databases:
            if name in in_use:
                self.db_last_active[name] = now
                continue
            last = self.db_last_active.setdefault(name, now)
            if settings.autodb_idle_timeout and now - last > settings.autodb_idle_timeout:
                log.info("database %s (from the '*' entry): freed after %.0fs unused (autodb_idle_timeout)",
                         name, now - last)
                for key in [key for key, pool in app.pools.items() if pool.db.name == name]:
                    self.free_pool(key)
                del self.db_last_active[name]

    def free_pool(self, key: tuple[str, str]) -> None:
        self.app.pools.pop(key, None)
        self.pool_last_active.pop(key, None)


async def run_janitor(app: "App") -> None:
    janitor = Janitor(app)
    while True:
        await asyncio.sleep(TICK)
        try:
            janitor.run_pass(time.monotonic())
        except Exception:   # upkeep must go on whatever one pool did
            log.exception("janitor pass failed")


def _client_limits(app: "App", pool: "Pool", client: Any, cache: dict[tuple[str, str], ClientLimits]) -> ClientLimits:
    user = getattr(client, "user", None) or pool.user   # pgpool's own borrowers have no user
    key = (pool.db.name, user)
    found = cache.get(key)
    if found is None:
        found = cache[key] = app.settings.client_limits(pool.db, user)
    return found


def check_pool(app: "App", pool: "Pool", now: float, limits: dict[tuple[str, str], ClientLimits] | None = None,
               was_notified: dict[int, float] | None = None, notified: dict[int, float] | None = None) -> None:
    settings = app.settings
    conf = pool.conf
    limits = {} if limits is None else limits
    was_notified = {} if was_notified is None else was_notified
    notified = {} if notified is None else notified
    # Waiting clients: query_wait_timeout (user > database > global), query_timeout, query_wait_notify.
    for waiter in list(pool.waiting):
        waited = now - waiter.wait_start
        wait_limit = _client_limits(app, pool, waiter, limits).query_wait_timeout
        if conf.query_timeout and waited >= conf.query_timeout:
            pool.stats.count_error("query_timeout")
            waiter.fail(ProtocolError(
                QUERY_CANCELED, f"query_timeout: query waited {waited:.1f}s for a server of pool {pool.name}, "
                                f"longer than query_timeout {conf.query_timeout:g}s"))
        elif wait_limit and waited >= wait_limit:
            waiter.fail(pool.wait_timeout_error(waited))
            pool.stats.count_error("query_wait_timeout")
        elif settings.query_wait_notify and hasattr(waiter, "transport"):
            client_id = waiter.id
            if was_notified.get(client_id) == waiter.wait_start:
                notified[client_id] = waiter.wait_start
            elif waited >= settings.query_wait_notify:
                notified[client_id] = waiter.wait_start
                waiter.transport.write(m.notice_response(
                    f"{WAIT_NOTICE} (pool {pool.name}: waited {waited:.1f}s, {len(pool.active)} of "
                    f"{conf.pool_size} servers busy)"))
    # Linked clients: a query running too long, a transaction open or idle too long, fast close.
    session_mode = conf.pool_mode == PoolMode.SESSION
    for client in list(pool.active_clients):
        server = client.server
        if server is None:
            continue
        busy = client.busy
        in_transaction = server.tx_status != TX_IDLE
        if busy and conf.query_timeout and now - client.query_start >= conf.query_timeout:
            pool.stats.count_error("query_timeout")
            client.disconnect("query_timeout", ProtocolError(
                QUERY_CANCELED, f"query_timeout: query ran longer than query_timeout {conf.query_timeout:g}s "
                                f"(pool {pool.name})"))
        elif (not busy and in_transaction and conf.idle_transaction_timeout
              and now - client.last_activity >= conf.idle_transaction_timeout):
            pool.stats.count_error("idle_transaction_timeout")
            client.disconnect("idle_transaction_timeout", ProtocolError(
                IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
                f"idle transaction timeout: idle in transaction for more than idle_transaction_timeout "
                f"{conf.idle_transaction_timeout:g}s "
                f"(pool {pool.name})"))
        elif ((busy or in_transaction) and conf.transaction_timeout
              and now - client.xact_start >= conf.transaction_timeout):
            pool.stats.count_error("transaction_timeout")
            client.disconnect("transaction_timeout", ProtocolError(
                IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
                f"transaction timeout: transaction open for more than transaction_timeout {conf.transaction_timeout:g}s "
                f"(pool {pool.name})"))
        elif session_mode and server.close_needed and settings.server_fast_close and at_transaction_boundary(client):
            # Between transactions the session may end: the client sees why and reconnects.
            client.disconnect(f"server_fast_close: {server.close_needed}", ProtocolError(
                ADMIN_SHUTDOWN, f"database configuration changed: server connection closed by server_fast_close "
                                f"(pool {pool.name}: {server.close_needed})"))
        elif not busy and session_mode:
            idle_limit = _client_limits(app, pool, client, limits).client_idle_timeout
            if idle_limit and now - client.last_activity >= idle_limit:
                client.disconnect("client_idle_timeout", ProtocolError(
                    IDLE_SESSION_TIMEOUT, f"client_idle_timeout: idle for more than {idle_limit:g}s"))
    any_idle_limit = settings.client_idle_timeout or any(u.client_idle_timeout for u in settings.users.values())
    for client in list(pool.idle_clients) if any_idle_limit else ():
        idle_limit = _client_limits(app, pool, client, limits).client_idle_timeout
        if idle_limit and now - client.last_activity >= idle_limit:
            client.disconnect("client_idle_timeout", ProtocolError(
                IDLE_SESSION_TIMEOUT, f"client_idle_timeout: idle for more than {idle_limit:g}s"))
    # Idle servers: lifetime and idle timeout, keeping min_pool_size.
    keep = conf.min_pool_size
    for server in list(pool.idle):
        if server.state != ServerState.IDLE:
            continue
        if conf.server_lifetime and now - server.created_at >= conf.server_lifetime:
            server.close(f"server_lifetime ({conf.server_lifetime:g}s) reached")
        elif (settings.server_idle_timeout and now - server.last_used >= settings.server_idle_timeout
              and pool.server_count() > keep):
            server.close(f"server_idle_timeout ({settings.server_idle_timeout:g}s) reached")
    # min_pool_size: open what is missing, within the usual limits. As PgBouncer: for a forced-user
    # database always, otherwise once clients have used the pool.
    if keep and not pool.paused and (pool.db.user or pool.server_params is not None):
        missing = keep - pool.server_count()
        while missing > 0 and pool.may_launch():
            pool.launch_server()
            missing -= 1
    if pool.waiting:
        pool.dispatch()
