"""The admin console's SET, side by side with PgBouncer 1.18: same replies, same errors, same effect.

A SET changes one setting as a RELOAD reading that value would: SHOW CONFIG shows it, pools get
the new limits at once, and the next RELOAD re-reads the file (PgBouncer does the same).
"""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from tests.integration.test_admin import ADMIN, connect_app, console, pool_row, show
from tests.waiting import wait_until


async def config_value(conn, key: str) -> str:
    return next(r["value"] for r in await show(conn, "CONFIG") if r["key"] == key)


async def run(conn, sql: str) -> tuple[str, list[str]]:
    """(command tag, notices) of one console command."""
    notices: list[str] = []
    conn.add_notice_handler(lambda diag: notices.append(diag.message_primary))
    cur = await conn.execute(sql)
    return cur.statusmessage, notices


async def failure(conn, sql: str) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as err:
        await conn.execute(sql)
    return err.value


@pytest.fixture
def both(pgpool_proc, pgbouncer_proc):
    def start(settings=None):
        settings = settings or {}
        ours = pgpool_proc({**ADMIN, **settings})
        theirs = pgbouncer_proc({"admin_users": "postgres", "stats_users": "md5user", **settings})
        return ours, theirs
    return start


async def test_set_replies_and_show_config_match_pgbouncer(both):
    ours, theirs = both({"default_pool_size": 5})
    for proc in (ours, theirs):
        admin = await console(proc)
        try:
            for sql, tag in [("SET default_pool_size = 7", "SET default_pool_size=7"),
                             ("set default_pool_size to 9", "SET default_pool_size=9"),
                             ("SET server_reset_query = ''", "SET server_reset_query="),
                             ("SET stats_users='md5user,app'", "SET stats_users=md5user,app"),
                             ("SET server_check_query = 'select 2'", "SET server_check_query=select 2"),
                             ("SET server_round_robin = 1", "SET server_round_robin=1")]:
                assert (await run(admin, sql))[0] == tag, (proc.name, sql)
            assert await config_value(admin, "default_pool_size") == "9", proc.name
            assert await config_value(admin, "server_reset_query") == "", proc.name
            assert await config_value(admin, "stats_users") == "md5user,app", proc.name
            assert await config_value(admin, "server_round_robin") == "1", proc.name
            # Drivers' session SETs are answered, not refused.
            assert await run(admin, "SET client_encoding = 'UTF8'") == ("SET", ["SET ignored"]), proc.name
        finally:
            await admin.close()


async def test_set_errors_start_with_pgbouncers_wording(both):
    ours, theirs = both()
    for proc in (ours, theirs):
        admin = await console(proc)
        stats = await console(proc, user="md5user")
        try:
            for sql in ("SET nosuch_setting = 1", "SET default_pool_size = 'abc'"):
                error = await failure(admin, sql)
                assert str(error).startswith("SET failed"), (proc.name, sql, str(error))
                assert error.sqlstate == "08P01"
            error = await failure(stats, "SET default_pool_size = 3")
            assert str(error).startswith("admin access needed"), (proc.name, str(error))
            # The console stays usable after a refused SET.
            assert await config_value(admin, "default_pool_size") == "20", proc.name
        finally:
            await admin.close()
            await stats.close()
    admin = await console(ours)
    try:
        error = await failure(admin, "SET default_pool_sise = 3")
        assert "unknown setting 'default_pool_sise'; did you mean default_pool_size" in str(error)
        error = await failure(admin, "SET default_pool_size = 'abc'")
        assert "invalid value 'abc' for default_pool_size (SET); allowed: an integer >= 0" in str(error)
        # PgBouncer 1.18 takes a negative pool size; pgpool checks it as in the config file.
        error = await failure(admin, "SET default_pool_size = '-3'")
        assert "invalid value '-3' for default_pool_size" in str(error)
        # PgBouncer 1.18 answers OK and changes nothing; pgpool says so instead (a deliberate difference).
        error = await failure(admin, "SET listen_port = 1")
        assert str(error).startswith("SET failed: listen_port cannot be changed on a running pgpool")
        error = await failure(admin, "SET resolv_conf = '/etc/x.conf'")
        assert "resolv_conf is a PgBouncer setting pgpool does not implement" in str(error)
    finally:
        await admin.close()


async def test_set_takes_effect_on_running_pools_and_reload_reverts_it(both):
    ours, theirs = both({"default_pool_size": 3, "pool_mode": "transaction"})
    for proc in (ours, theirs):
        admin = await console(proc)
        holders = [await connect_app(proc) for _ in range(2)]
        try:
            await holders[0].execute("SELECT 1")   # the pool exists with 3 allowed servers
            assert (await run(admin, "SET default_pool_size = 1"))[0] == "SET default_pool_size=1"
            await holders[0].execute("BEGIN")
            blocked = asyncio.create_task(holders[1].execute("SELECT 1"))

            async def one_waiting():
                row = await pool_row(admin)
                return row is not None and row["cl_waiting"] == 1 and row["sv_active"] == 1
            await wait_until(one_waiting, message=f"{proc.name}: second client queued behind pool_size 1")
            assert not blocked.done()
            await holders[0].execute("COMMIT")
            await asyncio.wait_for(blocked, 10)
            assert (await run(admin, "RELOAD"))[0] == "RELOAD"
            assert await config_value(admin, "default_pool_size") == "3", proc.name
        finally:
            for holder in holders:
                await holder.close()
            await admin.close()


async def test_set_timeout_applies_to_clients_already_connected(pgpool_proc):
    proc = pgpool_proc({**ADMIN, "query_wait_timeout": 0, "default_pool_size": 1})
    admin = await console(proc)
    holder = await connect_app(proc)
    waiter = await connect_app(proc)
    try:
        await holder.execute("BEGIN")
        assert (await run(admin, "SET query_wait_timeout = 1"))[0] == "SET query_wait_timeout=1"
        with pytest.raises(Exception, match="query_wait_timeout"):
            await asyncio.wait_for(waiter.execute("SELECT 1"), 10)
    finally:
        await holder.close()
        await waiter.close()
        await admin.close()
