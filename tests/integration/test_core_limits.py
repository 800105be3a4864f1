"""Limits and queueing: max_client_conn, query_wait_timeout, reserve pool, min_pool_size, per-db/user caps,
FIFO service, server login failures."""

from __future__ import annotations

import asyncio
import signal
import socket
import time

import asyncpg
import pytest

from tests.integration.helpers import connect, server_connections
from tests.waiting import wait_until


async def test_max_client_conn(pgpool_proc):
    proc = pgpool_proc({"max_client_conn": 3})
    held = [await connect(proc) for _ in range(3)]
    try:
        with pytest.raises(asyncpg.TooManyConnectionsError, match=r"no more connections allowed \(max_client_conn\)"):
            await connect(proc)
    finally:
        for conn in held:
            await conn.close()
    # Room again once clients leave.
    conn = await connect(proc)
    await conn.close()


async def test_query_wait_timeout_names_pool_and_limit(pgpool_proc):
    proc = pgpool_proc({"default_pool_size": 1, "query_wait_timeout": 0.5})
    holder = await connect(proc)
    await holder.execute("BEGIN")       # keeps the only server
    waiter = await connect(proc)
    started = time.monotonic()
    with pytest.raises((asyncpg.PostgresError, asyncpg.ConnectionDoesNotExistError)) as info:
        await waiter.fetchval("SELECT 1")
    waited = time.monotonic() - started
    message = str(info.value)
    assert "query_wait_timeout" in message and "pool app/app" in message and "pool_size 1" in message
    assert 0.4 <= waited < 5
    await holder.execute("ROLLBACK")
    await holder.close()


async def test_waiting_clients_served_in_arrival_order(pgpool_proc):
    proc = pgpool_proc({"default_pool_size": 1})
    holder = await connect(proc)
    await holder.execute("BEGIN")
    clients = [await connect(proc) for _ in range(5)]
    order: list[int] = []

    async def run(i: int, conn):
        await conn.fetchval("SELECT 1")
        order.append(i)

    tasks = []
    for i, conn in enumerate(clients):
        tasks.append(asyncio.create_task(run(i, conn)))
        await asyncio.sleep(0.05)   # arrival order, not a wait for a result
    await holder.execute("COMMIT")
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert order == [0, 1, 2, 3, 4]
    for conn in clients + [holder]:
        await conn.close()


async def test_reserve_pool_after_timeout(pgpool_proc, postgres):
    proc = pgpool_proc({"default_pool_size": 1, "reserve_pool_size": 1, "reserve_pool_timeout": 0.3})
    holder = await connect(proc)
    await holder.execute("BEGIN")
    other = await connect(proc)
    started = time.monotonic()
    assert await asyncio.wait_for(other.fetchval("SELECT 1"), 5) == 1
    assert time.monotonic() - started >= 0.25      # waited reserve_pool_timeout first
    assert await server_connections(postgres) == 2
    await holder.execute("ROLLBACK")
    for conn in (holder, other):
        await conn.close()


async def test_min_pool_size_opened_and_kept(pgpool_proc, postgres):
    proc = pgpool_proc({"default_pool_size": 5, "min_pool_size": 3, "server_idle_timeout": 0.2})
    conn = await connect(proc)
    await conn.fetchval("SELECT 1")
    await wait_until(lambda: _count(postgres, 3), timeout=10, message="min_pool_size servers not opened")
    # server_idle_timeout does not close below min_pool_size.
    await asyncio.sleep(0.6)
    assert await server_connections(postgres) == 3
    await conn.close()


async def _count(postgres, expected: int) -> bool:
    return await server_connections(postgres) == expected


async def test_max_db_connections_across_users(pgpool_proc, postgres):
    proc = pgpool_proc({"default_pool_size": 5, "max_db_connections": 2})
    a = await connect(proc, user="app")
    b = await connect(proc, user="md5user", password="md5pass")
    c = await connect(proc, user="plainuser", password="plainpass")
    await a.execute("BEGIN")
    await b.execute("BEGIN")
    blocked = asyncio.create_task(c.fetchval("SELECT 1"))
    await asyncio.sleep(0.3)
    assert not blocked.done()                     # the database already has 2 server connections
    await a.execute("COMMIT")                     # a's server goes idle; it is closed to make room
    assert await asyncio.wait_for(blocked, 10) == 1
    await b.execute("COMMIT")
    for conn in (a, b, c):
        await conn.close()


async def test_max_user_connections(pgpool_proc, postgres):
    proc = pgpool_proc({"default_pool_size": 5, "max_user_connections": 1})
    a = await connect(proc)
    b = await connect(proc)
    await a.execute("BEGIN")
    blocked = asyncio.create_task(b.fetchval("SELECT 1"))
    await asyncio.sleep(0.3)
    assert not blocked.done()
    await a.execute("COMMIT")
    assert await asyncio.wait_for(blocked, 10) == 1
    assert await server_connections(postgres) == 1
    for conn in (a, b):
        await conn.close()


async def test_server_connects_bounded_during_burst(pgpool_proc, postgres):
    """server_connect_concurrency bounds parallel logins; the pool still fills up to pool_size."""
    proc = pgpool_proc({"default_pool_size": 12, "server_connect_concurrency": 2, "max_client_conn": 200})
    conns = [await connect(proc) for _ in range(60)]

    async def txn(conn):
        async with conn.transaction():
            await conn.fetchval("SELECT pg_sleep(0.05)")

    await asyncio.gather(*(txn(c) for c in conns))
    assert 2 <= await server_connections(postgres) <= 12
    for conn in conns:
        await conn.close()


async def test_server_login_failure_reaches_clients_and_is_not_retried_fast(pgpool_proc, postgres):
    proc = pgpool_proc({"server_login_retry": 30},
                       databases={"app": "host=127.0.0.1 port=%d dbname=app user=app password=wrong" % postgres.port})
    with pytest.raises(asyncpg.InvalidPasswordError) as first:
        await connect(proc)
    assert first.value.sqlstate == "28P01"           # the server's own SQLSTATE and message
    assert 'password authentication failed for user "app"' in str(first.value)
    # Within server_login_retry, no new attempt: the cached error is returned at once.
    with pytest.raises(asyncpg.InvalidPasswordError, match="server_login_retry"):
        await connect(proc)
    assert proc.log_text().count("server login failed") == 1


async def test_unreachable_server_error_names_pool(pgpool_proc):
    proc = pgpool_proc({"server_login_retry": 0.5, "server_connect_timeout": 2},
                       databases={"app": "host=127.0.0.1 port=1 dbname=app"})
    with pytest.raises(asyncpg.PostgresError) as info:
        await connect(proc)
    assert info.value.sqlstate == "08006"
    assert "127.0.0.1:1" in str(info.value) and "pool app/app" in str(info.value)


def test_listen_backlog_bounds_the_connections_the_kernel_queues_for_pgpool(pgpool_proc):
    # With pgpool stopped (SIGSTOP) nothing is accepted: the kernel completes about listen_backlog
    # handshakes into the accept queue (backlog or backlog + 1, by kernel version) and drops
    # further SYNs, so the next connect does not complete.
    def queued_while_stopped(backlog: int) -> int:
        proc = pgpool_proc({"listen_backlog": backlog, "unix_socket_dir": ""})
        sockets: list[socket.socket] = []
        proc.send_signal(signal.SIGSTOP)
        try:
            for _ in range(backlog + 4):
                sock = socket.socket()
                sock.settimeout(0.5)
                sockets.append(sock)
                try:
                    sock.connect((proc.host, proc.port))
                except OSError:
                    return len(sockets) - 1
            return len(sockets)
        finally:
            proc.send_signal(signal.SIGCONT)
            for sock in sockets:
                sock.close()

    small, large = queued_while_stopped(2), queued_while_stopped(5)
    assert small in (2, 3)
    assert large - small == 3
