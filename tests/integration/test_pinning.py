"""Session state that cannot be shared pins a client to its server until the state is gone."""

from __future__ import annotations

import asyncio
import urllib.request

import asyncpg
import psycopg
import pytest

from benchmarks.targets import free_port

from tests.integration.helpers import connect, server_connections
from tests.waiting import wait_until


async def test_listen_receives_every_notification_then_unlisten_releases(pgpool_proc, postgres):
    proc = pgpool_proc({"default_pool_size": 2})
    listener = await connect(proc)
    received: list[str] = []
    await listener.add_listener("prefect_automation_changes", lambda *args: received.append(args[3]))
    senders = [await connect(proc) for _ in range(4)]
    try:
        for round_ in range(5):
            await asyncio.gather(*(s.execute(f"BEGIN; SELECT pg_notify('prefect_automation_changes', '{round_}-{i}'); "
                                             f"COMMIT") for i, s in enumerate(senders)))
        expected = {f"{r}-{i}" for r in range(5) for i in range(4)}
        await wait_until(lambda: set(received) == expected, timeout=10,
                         message=f"notifications missing: {expected - set(received)}")
        assert len(received) == 20
        assert "pinned to server" in proc.log_text() and "LISTEN" in proc.log_text()
        # 4 senders shared the one other server while the listener kept its own.
        assert await server_connections(postgres) == 2
        await listener.execute("UNLISTEN *")
        await wait_until(lambda: "unpinned" in proc.log_text(), timeout=10)
        # The listener's server is back in the pool: two senders can now hold both servers at once.
        await asyncio.wait_for(senders[0].execute("BEGIN"), 5)
        await asyncio.wait_for(senders[1].execute("BEGIN"), 5)
        await senders[0].execute("COMMIT")
        await senders[1].execute("COMMIT")
    finally:
        for conn in senders + [listener]:
            await conn.close()


async def test_advisory_lock_pins_until_unlocked(pgpool_proc):
    proc = pgpool_proc({"default_pool_size": 2})
    holder = await connect(proc)
    other = await connect(proc)
    try:
        await holder.fetchval("SELECT pg_advisory_lock(42)")
        pid = await holder.fetchval("SELECT pg_backend_pid()")
        for _ in range(5):
            await other.fetchval("SELECT 1")
            assert await holder.fetchval("SELECT pg_backend_pid()") == pid   # same session: lock still held
        assert await other.fetchval("SELECT pg_try_advisory_lock(42)") is False
        await holder.fetchval("SELECT pg_advisory_unlock(42)")
        await wait_until(lambda: "unpinned" in proc.log_text(), timeout=10)
        assert await other.fetchval("SELECT pg_try_advisory_lock(42)") is True
        await other.fetchval("SELECT pg_advisory_unlock(42)")
    finally:
        await holder.close()
        await other.close()


async def test_temp_table_pins_and_is_not_seen_by_others(pgpool_proc):
    proc = pgpool_proc({"default_pool_size": 1, "query_wait_timeout": 1})
    owner = await connect(proc)
    await owner.execute("CREATE TEMP TABLE mine (x int)")
    await owner.execute("INSERT INTO mine VALUES (1), (2)")
    assert await owner.fetchval("SELECT count(*) FROM mine") == 2
    # The only server is pinned: another client waits (and times out) instead of seeing the table.
    other = await connect(proc)
    with pytest.raises((asyncpg.PostgresError, asyncpg.ConnectionDoesNotExistError), match="query_wait_timeout"):
        await other.fetchval("SELECT count(*) FROM pg_tables WHERE tablename = 'mine'")
    await owner.execute("DROP TABLE mine")
    await wait_until(lambda: "unpinned" in proc.log_text(), timeout=10)
    third = await connect(proc)
    assert await third.fetchval("SELECT 1") == 1
    await third.close()
    await owner.close()


async def test_pinned_client_leaving_gets_its_state_discarded(pgpool_proc):
    proc = pgpool_proc({"default_pool_size": 1})
    owner = await connect(proc)
    await owner.execute("PREPARE sqlprep AS SELECT 1")
    await owner.execute("LISTEN leftover")
    await owner.close()
    nxt = await connect(proc)
    try:
        assert await nxt.fetchval("SELECT count(*) FROM pg_prepared_statements WHERE from_sql") == 0
        assert await nxt.fetchval("SELECT count(*) FROM pg_listening_channels()") == 0
    finally:
        await nxt.close()


async def test_pinning_off_refuses_with_clear_error(pgpool_proc):
    proc = pgpool_proc({"session_pinning": False})
    conn = await connect(proc)
    try:
        with pytest.raises(asyncpg.FeatureNotSupportedError, match="session_pinning is off"):
            await conn.execute("LISTEN nope")
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


async def test_keyword_in_a_string_does_not_pin(pgpool_proc):
    proc = pgpool_proc({"default_pool_size": 1})
    conn = await connect(proc)
    other = await connect(proc)
    try:
        assert await conn.fetchval("SELECT 'LISTEN to PREPARE a TEMP table'") == "LISTEN to PREPARE a TEMP table"
        assert await other.fetchval("SELECT 2") == 2     # the single server was not kept
        assert "pinned to server" not in proc.log_text()
    finally:
        await conn.close()
        await other.close()


async def test_set_role_pins_until_reset(pgpool_proc):
    proc = pgpool_proc({"default_pool_size": 1, "query_wait_timeout": 1})
    admin = await connect(proc, user="postgres", password="postgres", dbname="app")
    try:
        await admin.execute("SET ROLE app")
        assert await admin.fetchval("SELECT current_user") == "app"
        await wait_until(lambda: "pinned to server" in proc.log_text(), timeout=5)
        await admin.execute("RESET ROLE")
        await wait_until(lambda: "unpinned" in proc.log_text(), timeout=5)
        other = await connect(proc, user="postgres", password="postgres", dbname="app")
        assert await other.fetchval("SELECT current_user") == "postgres"
        await other.close()
    finally:
        await admin.close()


async def test_session_lock_taken_inside_a_transaction_is_released_when_the_client_leaves(pgpool_proc):
    """ROLLBACK does not release a session advisory lock: the server is also reset before reuse."""
    proc = pgpool_proc({"default_pool_size": 1})
    leaver = await connect(proc)
    await leaver.execute("BEGIN")
    await leaver.fetchval("SELECT pg_advisory_lock(7)")
    await leaver.close()                       # leaves idle inside the transaction, lock held
    nxt = await connect(proc)
    try:
        # (pg_try_advisory_lock would succeed even if held: the lock is re-entrant in its own session.)
        assert await nxt.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                  "AND pid = pg_backend_pid()") == 0
    finally:
        await nxt.close()


async def test_pinned_client_is_shown_in_show_pools_and_metrics(pgpool_proc):
    metrics_port = free_port()
    proc = pgpool_proc({"default_pool_size": 2, "admin_users": "postgres", "metrics_port": metrics_port})
    listener = await connect(proc)
    await listener.execute("LISTEN pinned_channel")
    await wait_until(lambda: "pinned to server" in proc.log_text(), timeout=5)
    try:
        async with await psycopg.AsyncConnection.connect(proc.dsn("postgres", dbname="pgbouncer"), autocommit=True,
                                                         prepare_threshold=None) as console:
            cur = await console.execute("SHOW POOLS")
            names = [d.name for d in cur.description]
            rows = [dict(zip(names, row)) for row in await cur.fetchall()]
        app_pool = next(r for r in rows if r["database"] == "app" and r["user"] == "app")
        assert int(app_pool["cl_pinned"]) == 1
        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode())
        assert 'pgpool_clients_pinned{database="app",user="app"} 1.0' in body
    finally:
        await listener.close()
