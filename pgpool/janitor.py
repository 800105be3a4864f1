"""Periodic upkeep: timeouts, idle and lifetime reaping, min_pool_size.

Owns: every timer-driven decision (query_wait_timeout, client_idle_timeout,
idle_transaction_timeout, query_timeout, server_idle_timeout, server_lifetime,
min_pool_size). Reads pools and clients; acts only through their own methods.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from .config import PoolMode
from .pool import ServerState
from .protocol.errors import (
    IDLE_IN_TRANSACTION_SESSION_TIMEOUT, IDLE_SESSION_TIMEOUT, QUERY_CANCELED, ProtocolError,
)
from .protocol.constants import TX_IDLE

if TYPE_CHECKING:
    from .app import App
    from .pool import Pool

log = logging.getLogger("pgpool.janitor")

TICK = 0.2   # seconds; the precision of every timeout below


async def run_janitor(app: "App") -> None:
    while True:
        await asyncio.sleep(TICK)
        try:
            now = time.monotonic()
            for pool in list(app.pools.values()):
                check_pool(app, pool, now)
        except Exception:   # upkeep must go on whatever one pool did
            log.exception("janitor pass failed")


def check_pool(app: "App", pool: "Pool", now: float) -> None:
    settings = app.settings
    # Clients waiting too long for a server.
    wait_limit = settings.query_wait_timeout
    if wait_limit:
        while pool.waiting and now - pool.waiting[0].wait_start >= wait_limit:
            waiter = pool.waiting[0]
            waiter.fail(pool.wait_timeout_error(now - waiter.wait_start))
            pool.stats.count_error("query_wait_timeout")
    # Linked clients: idle in transaction, or a query running too long.
    for client in list(pool.active_clients):
        server = client.server
        if server is None:
            continue
        busy = client.pending_rfq or client.open_extended or client.copy_in
        if busy and settings.query_timeout and now - client.query_start >= settings.query_timeout:
            pool.stats.count_error("query_timeout")
            client.disconnect("query_timeout", ProtocolError(
                QUERY_CANCELED, f"query_timeout: query ran longer than {settings.query_timeout:g}s (pool {pool.name})"))
        elif (not busy and server.tx_status != TX_IDLE and settings.idle_transaction_timeout
              and now - client.last_activity >= settings.idle_transaction_timeout):
            pool.stats.count_error("idle_transaction_timeout")
            client.disconnect("idle_transaction_timeout", ProtocolError(
                IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
                f"idle_transaction_timeout: idle in transaction for more than {settings.idle_transaction_timeout:g}s "
                f"(pool {pool.name})"))
        elif (not busy and settings.client_idle_timeout and pool.conf.pool_mode == PoolMode.SESSION
              and now - client.last_activity >= settings.client_idle_timeout):
            client.disconnect("client_idle_timeout", ProtocolError(
                IDLE_SESSION_TIMEOUT, f"client_idle_timeout: idle for more than {settings.client_idle_timeout:g}s"))
    if settings.client_idle_timeout:
        for client in list(pool.idle_clients):
            if now - client.last_activity >= settings.client_idle_timeout:
                client.disconnect("client_idle_timeout", ProtocolError(
                    IDLE_SESSION_TIMEOUT, f"client_idle_timeout: idle for more than {settings.client_idle_timeout:g}s"))
    # Idle servers: lifetime and idle timeout, keeping min_pool_size.
    keep = pool.conf.min_pool_size
    for server in list(pool.idle):
        if server.state != ServerState.IDLE:
            continue
        if settings.server_lifetime and now - server.created_at >= settings.server_lifetime:
            server.close(f"server_lifetime ({settings.server_lifetime:g}s) reached")
        elif (settings.server_idle_timeout and now - server.last_used >= settings.server_idle_timeout
              and pool.server_count() > keep):
            server.close(f"server_idle_timeout ({settings.server_idle_timeout:g}s) reached")
    # min_pool_size: open what is missing, within the usual limits.
    if keep and pool.server_params is not None and not pool.paused:
        missing = keep - pool.server_count()
        while missing > 0 and pool.may_launch():
            pool.launch_server()
            missing -= 1
    if pool.waiting:
        pool.dispatch()
