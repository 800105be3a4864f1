"""Clean reuse and lifecycle: session parameters follow clients, abandoned transactions are rolled back,
cancel reaches the right query, timeouts, servers closed behind pgpool's back."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap

import asyncpg
import psycopg
import pytest

from tests.integration.helpers import connect, server_connections, sessions_in_state
from tests.waiting import wait_until


async def test_set_timezone_follows_client_across_servers(pgpool_proc):
    proc = pgpool_proc({"default_pool_size": 2})
    tokyo = await connect(proc)
    paris = await connect(proc)
    plain = await connect(proc)
    try:
        await tokyo.execute("SET TimeZone = 'Asia/Tokyo'")
        await paris.execute("SET TIME ZONE 'Europe/Paris'")
        await tokyo.execute("SET search_path TO pg_catalog")
        pids = set()
        clients = ((tokyo, "Asia/Tokyo"), (paris, "Europe/Paris"), (plain, "UTC"))
        for round_ in range(6):
            # One client holds a server inside a transaction, so the others must use the other one.
            holder = clients[round_ % 3][0]
            await holder.execute("BEGIN")
            await holder.fetchval("SELECT 1")
            for conn, tz in clients:
                pids.add(await conn.fetchval("SELECT pg_backend_pid()"))
                assert await conn.fetchval("SHOW TimeZone") in (tz, "Etc/UTC")
                expected_path = "pg_catalog" if conn is tokyo else '"$user", public'
                assert await conn.fetchval("SHOW search_path") == expected_path
            await holder.execute("COMMIT")
        assert len(pids) == 2
        assert tokyo.get_settings().TimeZone == "Asia/Tokyo"
        await tokyo.execute("RESET TimeZone")
        assert await tokyo.fetchval("SHOW TimeZone") != "Asia/Tokyo"
    finally:
        for conn in (tokyo, paris, plain):
            await conn.close()


async def test_set_inside_rolled_back_transaction_is_not_kept(pgpool_proc):
    proc = pgpool_proc({"default_pool_size": 1})
    conn = await connect(proc)
    other = await connect(proc)
    try:
        await conn.execute("BEGIN")
        await conn.execute("SET search_path TO pg_catalog")
        await conn.execute("ROLLBACK")
        await other.fetchval("SELECT 1")              # the server moves between clients
        assert await conn.fetchval("SHOW search_path") == '"$user", public'
        await conn.execute("BEGIN")
        await conn.execute("SET search_path TO pg_catalog")
        await conn.execute("COMMIT")
        await other.fetchval("SELECT 1")
        assert await conn.fetchval("SHOW search_path") == "pg_catalog"
        assert await other.fetchval("SHOW search_path") == '"$user", public'
    finally:
        await conn.close()
        await other.close()


CLIENT_THAT_DIES = textwrap.dedent("""
    import asyncio, asyncpg, os, sys
    async def main():
        conn = await asyncpg.connect(sys.argv[1])
        await conn.execute("BEGIN")
        await conn.execute("INSERT INTO abandoned VALUES (1)")
        if sys.argv[2] == "query":
            print("running", flush=True)
            await conn.execute("SELECT pg_sleep(60)")
        print("in transaction", flush=True)
        await asyncio.sleep(60)
    asyncio.run(main())
""")


@pytest.mark.parametrize("where", ["idle", "query"])
async def test_killed_client_leaves_no_open_transaction(pgpool_proc, postgres, where):
    postgres.run_sql("DROP TABLE IF EXISTS abandoned; CREATE TABLE abandoned (x int); GRANT ALL ON abandoned TO app",
                     dbname="app")
    proc = pgpool_proc({"default_pool_size": 1})
    child = subprocess.Popen([sys.executable, "-c", CLIENT_THAT_DIES, proc.dsn(), where],
                             stdout=subprocess.PIPE, text=True)
    try:
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 15)
        assert line.strip() in ("running", "in transaction")
        await wait_until(lambda: _busy(postgres), timeout=10, message="the client's transaction never started")
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(10)
    await wait_until(lambda: _no_open_transaction(postgres), timeout=10,
                     message="an 'idle in transaction' or active session was left behind")
    # The pool is usable and the abandoned insert was rolled back.
    conn = await connect(proc)
    try:
        assert await conn.fetchval("SELECT count(*) FROM abandoned") == 0
    finally:
        await conn.close()


async def _busy(postgres) -> bool:
    return (await sessions_in_state(postgres, "idle in transaction") + await sessions_in_state(postgres, "active")) > 0


async def _no_open_transaction(postgres) -> bool:
    return (await sessions_in_state(postgres, "idle in transaction") == 0
            and await sessions_in_state(postgres, "active") == 0)


async def test_cancel_request_cancels_own_query_only(pgpool_proc):
    proc = pgpool_proc({"default_pool_size": 2})
    victim = await connect(proc)
    bystander = await connect(proc)
    try:
        other = asyncio.create_task(bystander.fetchval("SELECT 'done' FROM pg_sleep(1.5)"))
        started = asyncio.get_running_loop().time()
        with pytest.raises(asyncio.TimeoutError):
            # asyncpg's timeout sends a CancelRequest with the BackendKeyData pgpool gave it.
            await victim.fetchval("SELECT pg_sleep(30)", timeout=0.5)
        assert await victim.fetchval("SELECT 'alive'") == "alive"
        assert asyncio.get_running_loop().time() - started < 5       # the sleep was cancelled, not waited out
        assert await other == "done"                                  # the other client's query was untouched
    finally:
        await victim.close()
        await bystander.close()


def test_psycopg_cancel(pgpool_proc):
    proc = pgpool_proc({"default_pool_size": 1})
    with psycopg.connect(proc.dsn(), autocommit=True) as conn:
        conn.execute("SET statement_timeout = 0")

        async def noop():
            pass
        import threading
        timer = threading.Timer(0.5, conn.cancel)
        timer.start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(30)")
        assert conn.execute("SELECT 1").fetchone() == (1,)


async def test_server_terminated_while_pooled_is_dropped(pgpool_proc, postgres):
    proc = pgpool_proc({"default_pool_size": 1})
    conn = await connect(proc)
    try:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        postgres.run_sql(f"SELECT pg_terminate_backend({pid})")
        await wait_until(lambda: _server_gone(postgres, pid), timeout=10)
        # The next transaction gets a fresh server, never the dead one.
        new_pid = await conn.fetchval("SELECT pg_backend_pid()")
        assert new_pid != pid
    finally:
        await conn.close()


async def _server_gone(postgres, pid: int) -> bool:
    c = await asyncpg.connect(postgres.dsn())
    try:
        return not await c.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid)
    finally:
        await c.close()


async def test_idle_session_timeout_on_server(pgpool_proc, postgres):
    """Postgres' own idle_session_timeout closes a pooled server: noticed, never handed out."""
    postgres.run_sql("ALTER ROLE md5user SET idle_session_timeout = '300ms'")
    try:
        proc = pgpool_proc({"default_pool_size": 1})
        conn = await connect(proc, user="md5user", password="md5pass")
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        await asyncio.sleep(0.8)   # let Postgres' timer fire: this is the condition under test
        assert await conn.fetchval("SELECT pg_backend_pid()") != pid
        await conn.close()
    finally:
        postgres.run_sql("ALTER ROLE md5user RESET idle_session_timeout")


@pytest.mark.parametrize("check_query", ["SELECT 1", "<empty>"])
async def test_server_check_query_before_reuse(pgpool_proc, check_query):
    proc = pgpool_proc({"default_pool_size": 1, "server_check_delay": 0, "server_check_query": check_query})
    conn = await connect(proc)
    try:
        # The check passes before every reuse, so the same server keeps serving (a failing check closes it).
        pids = {await conn.fetchval("SELECT pg_backend_pid()") for _ in range(3)}
        assert len(pids) == 1
        assert "failed" not in proc.log_text()
    finally:
        await conn.close()


async def test_server_lifetime_closes_idle_and_not_mid_transaction(pgpool_proc, postgres):
    proc = pgpool_proc({"default_pool_size": 1, "server_lifetime": 0.5})
    conn = await connect(proc)
    try:
        await conn.execute("BEGIN")
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        await asyncio.sleep(1.0)   # past server_lifetime while inside the transaction
        assert await conn.fetchval("SELECT pg_backend_pid()") == pid
        await conn.execute("COMMIT")
        assert await conn.fetchval("SELECT pg_backend_pid()") != pid
    finally:
        await conn.close()


async def test_server_idle_timeout(pgpool_proc, postgres):
    proc = pgpool_proc({"default_pool_size": 2, "server_idle_timeout": 0.3})
    conn = await connect(proc)
    await conn.fetchval("SELECT 1")
    await wait_until(lambda: _count(postgres, 0), timeout=5, message="idle server not closed")
    assert await conn.fetchval("SELECT 2") == 2
    await conn.close()


async def _count(postgres, n: int) -> bool:
    return await server_connections(postgres) == n


async def test_client_idle_timeout(pgpool_proc):
    proc = pgpool_proc({"client_idle_timeout": 0.3})
    conn = await connect(proc)
    await conn.fetchval("SELECT 1")
    await wait_until(lambda: conn.is_closed() or _probe_closed(conn), timeout=5)
    assert "client_idle_timeout" in proc.log_text()


def _probe_closed(conn) -> bool:
    return conn._protocol.is_connected() is False  # asyncpg notices the server-side close


async def test_idle_transaction_timeout(pgpool_proc, postgres):
    proc = pgpool_proc({"default_pool_size": 1, "idle_transaction_timeout": 0.3})
    conn = await connect(proc)
    await conn.execute("BEGIN")
    await wait_until(lambda: "idle_transaction_timeout" in proc.log_text(), timeout=5)
    await wait_until(lambda: _no_open_transaction(postgres), timeout=5)
    other = await connect(proc)
    assert await other.fetchval("SELECT 1") == 1
    await other.close()


async def test_query_timeout(pgpool_proc, postgres):
    proc = pgpool_proc({"default_pool_size": 1, "query_timeout": 0.5})
    conn = await connect(proc)
    with pytest.raises((asyncpg.QueryCanceledError, asyncpg.ConnectionDoesNotExistError), match="query_timeout"):
        await conn.fetchval("SELECT pg_sleep(10)")
    await wait_until(lambda: _no_open_transaction(postgres), timeout=5)
    other = await connect(proc)
    assert await other.fetchval("SELECT 1") == 1
    await other.close()


async def test_cancel_while_queued_drops_the_query(pgpool_proc, postgres):
    """asyncpg's timeout fires while the pool is saturated: the queued query never runs."""
    postgres.run_sql("DROP TABLE IF EXISTS queued_cancel; CREATE TABLE queued_cancel (x int); "
                     "GRANT ALL ON queued_cancel TO app", dbname="app")
    proc = pgpool_proc({"default_pool_size": 1})
    holder = await connect(proc)
    waiter = await connect(proc)
    try:
        await holder.execute("BEGIN")
        with pytest.raises(asyncio.TimeoutError):
            await waiter.execute("INSERT INTO queued_cancel VALUES (1)", timeout=0.5)
        # asyncpg sends its CancelRequest in the background: wait until pgpool has acted on it.
        await wait_until(lambda: "cancelled while waiting for a server" in proc.log_text(), timeout=10)
        await holder.execute("COMMIT")
        assert await waiter.fetchval("SELECT count(*) FROM queued_cancel") == 0
        assert await holder.fetchval("SELECT count(*) FROM queued_cancel") == 0
    finally:
        await holder.close()
        await waiter.close()
