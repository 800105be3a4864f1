"""[users], client-connection limits and the upkeep timeouts, as PgBouncer users rely on them.

Where PgBouncer 1.18 has the feature ([users] pool_mode / max_user_connections, forced users,
min_pool_size for a forced user) the same steps run against it too; newer settings are checked
against PgBouncer's documentation (doc/config.md): precedence user > database > global.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import psycopg
import pytest

from tests.integration.helpers import connect, server_connections
from tests.integration.test_admin import ADMIN, console, pool_row, show
from tests.waiting import wait_until


def backend(postgres, extra: str = "") -> str:
    return f"host=127.0.0.1 port={postgres.port} {extra}".strip()


# ---- compared with PgBouncer 1.18 ------------------------------------------------------------------

async def test_users_pool_mode_and_max_user_connections_as_pgbouncer(pgpool_proc, pgbouncer_proc):
    users = {"app": "pool_mode=session max_user_connections=1"}
    settings = {"admin_users": "postgres", "pool_mode": "transaction", "default_pool_size": 5}
    for proc in (pgpool_proc({**ADMIN, **settings}, user_entries=users),
                 pgbouncer_proc(settings, user_entries=users)):
        admin = await console(proc)
        first, second = await connect(proc), await connect(proc)
        try:
            await first.fetchval("SELECT 1")
            row = await pool_row(admin)
            assert row["pool_mode"] == "session", proc.name
            # Session mode: the first client keeps its server; max_user_connections=1 queues the second.
            blocked = asyncio.create_task(second.fetchval("SELECT 2"))

            async def queued():
                row = await pool_row(admin)
                return row["cl_waiting"] == 1 and row["sv_active"] == 1
            await wait_until(queued, message=f"{proc.name}: second client waits for the user's one server")
            await first.close()
            assert await asyncio.wait_for(blocked, 10) == 2
            users_row = next(r for r in await show(admin, "USERS") if r["name"] == "app")
            assert users_row["pool_mode"] == "session", proc.name
        finally:
            await first.close()
            await second.close()
            await admin.close()


async def test_forced_user_takes_its_password_from_the_auth_file(pgpool_proc, pgbouncer_proc, postgres):
    databases = {"forced": backend(postgres, "dbname=app user=md5user")}
    for proc in (pgpool_proc(databases=databases), pgbouncer_proc(databases=databases)):
        conn = await connect(proc, dbname="forced")
        try:
            assert await conn.fetchval("SELECT current_user") == "md5user", proc.name
        finally:
            await conn.close()


async def test_min_pool_size_filled_for_a_forced_user_database_before_any_client(pgpool_proc, postgres):
    # PgBouncer's documentation (min_pool_size): enforced for a forced-user database even without
    # clients. PgBouncer 1.18 opens them only after a first client, so the comparison is with the docs.
    databases = {"forced": backend(postgres, "dbname=app user=plainuser min_pool_size=2")}
    proc = pgpool_proc(databases=databases)
    await wait_until(lambda: _count(postgres, "plainuser", 2), timeout=15,
                     message="min_pool_size servers for the forced user without a client")
    proc.stop()
    await wait_until(lambda: _count(postgres, "plainuser", 0), message="servers closed with the pooler")


async def _count(postgres, user: str, expected: int) -> bool:
    return await server_connections(postgres, user) == expected


# ---- newer than PgBouncer 1.18: against PgBouncer's documentation -------------------------------

async def test_user_query_timeout_wins_over_the_global_one(pgpool_proc):
    proc = pgpool_proc({"query_timeout": 0}, user_entries={"app": "query_timeout=1"})
    slow = await connect(proc)
    other = await connect(proc, user="md5user")
    try:
        with pytest.raises((asyncpg.PostgresError, asyncpg.ConnectionDoesNotExistError), match="query_timeout: .*query_timeout 1s"):
            await slow.fetchval("SELECT pg_sleep(5)")
        # Another user keeps the global value (off).
        assert await other.fetchval("SELECT pg_sleep(1.5)::text") == ""
    finally:
        await slow.close()
        await other.close()


async def test_transaction_timeout_global_and_per_user(pgpool_proc):
    proc = pgpool_proc({"transaction_timeout": 1}, user_entries={"md5user": "transaction_timeout=30"})
    app, md5 = await connect(proc), await connect(proc, user="md5user")
    try:
        await app.execute("BEGIN")
        await md5.execute("BEGIN")
        started = time.monotonic()
        # A transaction doing work (not idle) is still cut: transaction_timeout counts from BEGIN.
        with pytest.raises((asyncpg.PostgresError, asyncpg.ConnectionDoesNotExistError), match="transaction timeout: .*transaction_timeout 1s"):
            for _ in range(100):
                await app.fetchval("SELECT pg_sleep(0.2)")
        assert time.monotonic() - started < 5
        assert await md5.fetchval("SELECT pg_sleep(1.5)::text") == ""
        await md5.execute("COMMIT")
    finally:
        await app.close()
        await md5.close()


async def test_user_idle_transaction_and_client_idle_timeouts(pgpool_proc):
    proc = pgpool_proc({}, user_entries={"app": "idle_transaction_timeout=1 client_idle_timeout=30",
                                         "md5user": "client_idle_timeout=1"})
    in_tx, idle, kept = await connect(proc), await connect(proc, user="md5user"), await connect(proc, user="plainuser")
    try:
        await in_tx.execute("BEGIN")
        await idle.fetchval("SELECT 1")
        await wait_until(lambda: in_tx.is_closed() and idle.is_closed(), timeout=10,
                         message="idle-in-transaction and idle clients disconnected by their users' timeouts")
        assert await kept.fetchval("SELECT 1") == 1   # plainuser: global values, both off
    finally:
        for conn in (in_tx, idle, kept):
            await conn.close()


async def test_query_wait_timeout_user_over_database_over_global(pgpool_proc, postgres):
    proc = pgpool_proc({"query_wait_timeout": 0, "default_pool_size": 1},
                       databases={"app": backend(postgres, "dbname=app query_wait_timeout=1")},
                       user_entries={"md5user": "query_wait_timeout=0"})
    holder = await connect(proc, user="md5user")
    holder_app = await connect(proc)
    try:
        await holder.execute("BEGIN")
        await holder_app.execute("BEGIN")
        waiter = await connect(proc)
        with pytest.raises((asyncpg.PostgresError, asyncpg.ConnectionDoesNotExistError), match="query_wait_timeout"):
            await asyncio.wait_for(waiter.fetchval("SELECT 1"), 10)   # the database's 1s
        patient = await connect(proc, user="md5user")
        waiting = asyncio.create_task(patient.fetchval("SELECT 7"))
        await asyncio.sleep(1.5)   # longer than the database's value; md5user's 0 means wait forever
        assert not waiting.done()
        await holder.execute("COMMIT")
        assert await asyncio.wait_for(waiting, 10) == 7
        await patient.close()
    finally:
        await holder.close()
        await holder_app.close()


async def test_max_db_and_user_client_connections(pgpool_proc, postgres):
    proc = pgpool_proc({**ADMIN, "max_db_client_connections": 2},
                       databases={"app": backend(postgres, "dbname=app"),
                                  "other": backend(postgres, "dbname=app max_db_client_connections=3"),
                                  "third": backend(postgres, "dbname=app max_db_client_connections=10")},
                       user_entries={"md5user": "max_user_client_connections=1"})
    held = [await connect(proc), await connect(proc)]
    try:
        with pytest.raises(asyncpg.TooManyConnectionsError,
                           match=r"^client connections exceeded \(max_db_client_connections\): database \"app\""):
            await connect(proc)
        held += [await connect(proc, dbname="other") for _ in range(3)]   # its own limit: 3
        with pytest.raises(asyncpg.TooManyConnectionsError, match=r"max_db_client_connections"):
            await connect(proc, dbname="other")
        await held.pop(0).close()
        held.append(await wait_until(lambda: _try_connect(proc), message="room again once a client left"))
        md5 = await connect(proc, user="md5user", dbname="third")
        with pytest.raises(asyncpg.TooManyConnectionsError,
                           match=r"^client connections exceeded \(max_user_client_connections\): user \"md5user\""):
            await connect(proc, user="md5user", dbname="third")
        await md5.close()
        # The admin console is not a database pool: its users are not counted.
        admin = await console(proc)
        await admin.close()
    finally:
        for conn in held:
            await conn.close()


async def _try_connect(proc):
    try:
        return await connect(proc)
    except asyncpg.TooManyConnectionsError:
        return None


async def test_query_wait_notify_tells_a_queued_client(pgpool_proc):
    proc = pgpool_proc({"query_wait_notify": 1, "default_pool_size": 1})
    holder = await psycopg.AsyncConnection.connect(proc.dsn("app"), autocommit=True)
    waiter = await psycopg.AsyncConnection.connect(proc.dsn("app"), autocommit=True)
    notices: list[str] = []
    waiter.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
    try:
        await holder.execute("BEGIN")
        task = asyncio.create_task(waiter.execute("SELECT 1"))
        await wait_until(lambda: notices, timeout=10, message="query_wait_notify NOTICE")
        assert notices[0].startswith("No server connection available in postgres backend, client being queued")
        assert "pool app/app" in notices[0]
        await holder.execute("COMMIT")
        await asyncio.wait_for(task, 10)
        assert len(notices) == 1   # once per wait
    finally:
        await holder.close()
        await waiter.close()


async def test_server_fast_close_ends_an_idle_session_after_reconnect(pgpool_proc):
    proc = pgpool_proc({**ADMIN, "pool_mode": "session", "server_fast_close": 1})
    admin = await console(proc)
    idle, busy = await connect(proc), await connect(proc)
    try:
        await idle.fetchval("SELECT 1")
        await busy.execute("BEGIN")
        await admin.execute("RECONNECT")
        await wait_until(lambda: idle.is_closed(), timeout=10, message="session between transactions closed")
        # The open transaction is not interrupted; its session ends once the transaction does.
        assert await busy.fetchval("SELECT 5") == 5
        await busy.execute("COMMIT")
        await wait_until(lambda: busy.is_closed(), timeout=10, message="session closed after its transaction")
    finally:
        await idle.close()
        await busy.close()
        await admin.close()


async def test_without_server_fast_close_a_session_outlives_reconnect(pgpool_proc):
    proc = pgpool_proc({**ADMIN, "pool_mode": "session"})
    admin = await console(proc)
    conn = await connect(proc)
    try:
        await conn.fetchval("SELECT 1")
        await admin.execute("RECONNECT")
        await asyncio.sleep(0.6)    # three janitor passes: nothing may close the session
        assert await conn.fetchval("SELECT 2") == 2
    finally:
        await conn.close()
        await admin.close()


async def test_pool_idle_timeout_and_autodb_idle_timeout_free_unused_pools(pgpool_proc, postgres):
    proc = pgpool_proc({**ADMIN, "server_idle_timeout": 0.3, "pool_idle_timeout": 1, "autodb_idle_timeout": 1},
                       databases={"app": backend(postgres, "dbname=app"), "*": backend(postgres)})
    admin = await console(proc)
    try:
        for dbname in ("app", "postgres"):
            conn = await connect(proc, user="postgres", dbname=dbname)
            await conn.fetchval("SELECT 1")
            await conn.close()

        async def pools() -> set[tuple[str, str]]:
            return {(r["database"], r["user"]) for r in await show(admin, "POOLS")}
        assert {("app", "postgres"), ("postgres", "postgres")} <= await pools()
        await wait_until(lambda: _no_pools(pools), timeout=15, message="idle pools freed")
        databases = {r["name"] for r in await show(admin, "DATABASES")}
        assert "postgres" not in databases and "app" in databases   # the '*' database is gone too
        conn = await connect(proc, user="postgres", dbname="postgres")   # and comes back on demand
        assert await conn.fetchval("SELECT 1") == 1
        await conn.close()
    finally:
        await admin.close()


async def _no_pools(pools) -> bool:
    return not await pools()


async def test_server_check_query_defaults_to_the_empty_query(pgpool_proc):
    proc = pgpool_proc({**ADMIN, "server_check_delay": 0, "default_pool_size": 1})
    admin = await console(proc)
    conn = await connect(proc)
    try:
        row = next(r for r in await show(admin, "CONFIG") if r["key"] == "server_check_query")
        assert (row["value"], row["default"]) == ("<empty>", "<empty>")
        for i in range(3):   # every reuse runs the check first; the empty query passes it
            assert await conn.fetchval(f"SELECT {i}") == i
    finally:
        await conn.close()
        await admin.close()
