"""Operating a running pgpool: RELOAD / SIGHUP, PAUSE and RESUME, graceful drain on SIGTERM,
SIGINT, SHUTDOWN, and /readyz — with real clients, and rows checked in Postgres afterwards."""

from __future__ import annotations

import asyncio
import signal
import urllib.error
import urllib.request

import asyncpg
import psycopg
import pytest

from benchmarks.targets import free_port
from tests.conftest import TEST_USERS
from tests.waiting import wait_until

ADMIN = {"admin_users": ["postgres"], "stats_users": ["md5user"]}


async def console(proc) -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(proc.dsn("postgres", dbname="pgbouncer"), autocommit=True,
                                                 prepare_threshold=None)


async def show(conn: psycopg.AsyncConnection, table: str) -> list[dict]:
    cur = await conn.execute(f"SHOW {table}")
    names = [d.name for d in cur.description]
    return [dict(zip(names, row)) for row in await cur.fetchall()]


async def app_pool(admin) -> dict:
    return next(r for r in await show(admin, "POOLS") if (r["database"], r["user"]) == ("app", "app"))


async def connect_app(proc, user: str = "app") -> asyncpg.Connection:
    return await asyncpg.connect(proc.dsn(user))


async def close_quietly(conn: asyncpg.Connection) -> None:
    try:
        await conn.close(timeout=2)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, asyncio.TimeoutError):
        pass     # pgpool may already have disconnected it, which is what these tests are about


async def http_get(port: int, path: str) -> tuple[int, str]:
    def get() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()
    return await asyncio.to_thread(get)


async def wait_http(port: int) -> None:
    """pgpool listens for clients a moment before its HTTP endpoint is up."""
    async def answers() -> bool:
        try:
            await http_get(port, "/healthz")
            return True
        except urllib.error.URLError:
            return False
    await wait_until(answers, message=f"the HTTP endpoint on port {port}")


def fresh_table(postgres, name: str) -> None:
    postgres.run_sql(f"DROP TABLE IF EXISTS {name}; CREATE TABLE {name} (client int, step int); "
                     f"GRANT ALL ON {name} TO app;", dbname="app")


def count_rows(postgres, table: str) -> int:
    return int(postgres.run_sql(f"SELECT count(*) FROM {table}", dbname="app"))


async def burst(proc, clients: int, seconds: float) -> None:
    conns = [await connect_app(proc) for _ in range(clients)]
    try:
        await asyncio.gather(*(c.execute(f"SELECT pg_sleep({seconds})") for c in conns))
    finally:
        for conn in conns:
            await conn.close()


async def server_count(admin) -> int:
    return len([r for r in await show(admin, "SERVERS") if r["database"] == "app"])


# ---- RELOAD --------------------------------------------------------------------------------------

async def test_sighup_reload_changes_pool_size_for_the_next_burst(pgpool_proc):
    proc = pgpool_proc({**ADMIN, "default_pool_size": 2})
    admin = await console(proc)
    survivor = await connect_app(proc)
    try:
        await burst(proc, 10, 0.3)
        assert await server_count(admin) == 2

        proc.settings["default_pool_size"] = 5
        proc.write_config()
        proc.send_signal(signal.SIGHUP)

        async def reloaded():
            return (await app_pool(admin))["pool_size"] == 5
        await wait_until(reloaded, message="SHOW POOLS pool_size 5 after SIGHUP")
        assert "RELOAD (SIGHUP): default_pool_size 2 -> 5" in proc.log_text()
        await burst(proc, 10, 0.3)
        assert await server_count(admin) == 5
        assert await survivor.fetchval("SELECT 1") == 1       # connected through the reload, still served
    finally:
        await survivor.close()
        await admin.close()


async def test_reload_command_refuses_an_invalid_config_and_names_restart_settings(pgpool_proc):
    proc = pgpool_proc({**ADMIN, "default_pool_size": 3})
    admin = await console(proc)
    conn = await connect_app(proc)
    try:
        proc.settings["default_pool_size"] = -4
        proc.write_config()
        with pytest.raises(psycopg.Error, match="RELOAD .*refused.*default_pool_size") as info:
            await admin.execute("RELOAD")
        assert info.value.sqlstate == "F0000"
        config = {r["key"]: r["value"] for r in await show(admin, "CONFIG")}
        assert config["default_pool_size"] == "3"
        assert await conn.fetchval("SELECT 1") == 1

        old_port = proc.port
        proc.settings.update(default_pool_size=6, listen_port=free_port())
        proc.write_config()
        cur = await admin.execute("RELOAD")
        assert cur.statusmessage == "RELOAD"
        config = {r["key"]: r["value"] for r in await show(admin, "CONFIG")}
        assert config["default_pool_size"] == "6" and config["listen_port"] == str(old_port)
        assert "changed settings that need a restart, still running with their old values: listen_port" \
            in proc.log_text()
        assert await conn.fetchval("SELECT 2") == 2
    finally:
        await conn.close()
        await admin.close()


async def test_reload_replaces_servers_of_a_changed_database_entry_at_release(pgpool_proc, postgres):
    entry = f"host={postgres.host} port={postgres.port} dbname=app"
    proc = pgpool_proc({**ADMIN, "default_pool_size": 1}, databases={"app": entry})
    admin = await console(proc)
    conn = await connect_app(proc)
    try:
        await conn.execute("BEGIN")
        old_pid = await conn.fetchval("SELECT pg_backend_pid()")
        proc.databases["app"] = entry + " pool_size=1 timezone=UTC"
        proc.write_config()
        await admin.execute("RELOAD")
        assert [r["close_needed"] for r in await show(admin, "SERVERS")] == [1]
        assert await conn.fetchval("SELECT pg_backend_pid()") == old_pid    # mid-transaction: untouched
        await conn.execute("COMMIT")
        assert await conn.fetchval("SELECT pg_backend_pid()") != old_pid
        assert "RELOAD (RELOAD command): [databases] changed app" in proc.log_text()
    finally:
        await conn.close()
        await admin.close()


async def test_reload_rereads_the_auth_file(pgpool_proc):
    users = {name: secret for name, secret in TEST_USERS.items() if name != "md5user"}
    proc = pgpool_proc(ADMIN, users=users)
    with pytest.raises(asyncpg.InvalidPasswordError):
        await connect_app(proc, "md5user")
    proc.users = dict(TEST_USERS)
    proc.write_config()
    proc.send_signal(signal.SIGHUP)
    await wait_until(lambda: "auth_file re-read (4 users)" in proc.log_text(), message="the reload log line")
    conn = await connect_app(proc, "md5user")
    assert await conn.fetchval("SELECT current_user") == "md5user"
    await conn.close()


# ---- PAUSE / RESUME ------------------------------------------------------------------------------

async def test_pause_holds_new_transactions_and_resume_releases_them(pgpool_proc, postgres):
    fresh_table(postgres, "ops_pause")
    proc = pgpool_proc({**ADMIN, "default_pool_size": 2})
    admin = await console(proc)
    pauser = await console(proc)
    holder = await connect_app(proc)
    latecomer = await connect_app(proc)
    try:
        await holder.execute("BEGIN; INSERT INTO ops_pause VALUES (1, 1)")
        pausing = asyncio.create_task(pauser.execute("PAUSE"))
        await wait_until(lambda: "PAUSE (all databases)" in proc.log_text(), message="PAUSE to begin")
        assert {r["key"]: r["value"] for r in await show(admin, "STATE")}["paused"] == "yes"
        late = asyncio.create_task(latecomer.execute("INSERT INTO ops_pause VALUES (2, 1)"))

        async def queued():
            return (await app_pool(admin))["cl_waiting"] == 1
        await wait_until(queued, message="the latecomer to queue")
        assert not pausing.done()                      # PAUSE waits for the open transaction
        await holder.execute("INSERT INTO ops_pause VALUES (1, 2); COMMIT")
        await asyncio.wait_for(pausing, 10)            # ... and completes once its server is released
        row = await app_pool(admin)
        assert (row["cl_waiting"], row["sv_active"], row["sv_idle"]) == (1, 0, 0)
        assert not late.done()

        await admin.execute("RESUME")
        await asyncio.wait_for(late, 10)
        assert count_rows(postgres, "ops_pause") == 3
        assert await holder.fetchval("SELECT count(*) FROM ops_pause") == 3
    finally:
        for conn in (holder, latecomer):
            await conn.close()
        await admin.close()
        await pauser.close()


async def test_pause_one_database_leaves_the_others_running(pgpool_proc, postgres):
    backend = f"host={postgres.host} port={postgres.port}"
    proc = pgpool_proc(ADMIN, databases={"app": f"{backend} dbname=app", "other": f"{backend} dbname=app"})
    admin = await console(proc)
    other = await asyncpg.connect(proc.dsn("app", dbname="other"))
    try:
        await admin.execute("PAUSE app")
        databases = {r["name"]: r["paused"] for r in await show(admin, "DATABASES")}
        assert databases["app"] == 1 and databases["other"] == 0
        assert await other.fetchval("SELECT 7") == 7
        with pytest.raises(psycopg.Error, match="database other is not paused"):
            await admin.execute("RESUME other")
        await admin.execute("RESUME app")
        assert {r["name"]: r["paused"] for r in await show(admin, "DATABASES")}["app"] == 0
    finally:
        await other.close()
        await admin.close()


# ---- graceful drain ------------------------------------------------------------------------------

async def test_sigterm_lets_50_in_flight_transactions_commit_and_refuses_new_connections(pgpool_proc, postgres):
    fresh_table(postgres, "ops_drain")
    metrics_port = free_port()
    proc = pgpool_proc({**ADMIN, "default_pool_size": 10, "shutdown_timeout": 60, "metrics_port": metrics_port})
    admin = await console(proc)
    conns = [await connect_app(proc) for _ in range(50)]
    await wait_http(metrics_port)
    assert (await http_get(metrics_port, "/readyz"))[0] == 200

    async def transaction(n: int, conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            await conn.execute(f"INSERT INTO ops_drain VALUES ({n}, 1)")
            await conn.execute("SELECT pg_sleep(0.2)")
            await conn.execute(f"INSERT INTO ops_drain VALUES ({n}, 2)")

    tasks = [asyncio.create_task(transaction(n, conn)) for n, conn in enumerate(conns)]
    try:
        async def all_in_flight():
            row = await app_pool(admin)
            return row["sv_active"] == 10 and row["cl_waiting"] == 40
        await wait_until(all_in_flight, message="10 transactions running and 40 queued")
        proc.send_signal(signal.SIGTERM)

        # The signal is delivered asynchronously: wait (bounded) for pgpool to have handled it.
        async def not_ready():
            return await http_get(metrics_port, "/readyz") == (503, "not ready: shutting down\n")
        await wait_until(not_ready, timeout=10, message="/readyz to answer 503 after SIGTERM")
        with pytest.raises((OSError, asyncpg.PostgresError)):
            await connect_app(proc)

        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
        assert [r for r in results if r is not None] == []
        await wait_until(lambda: proc.returncode is not None, timeout=30, message="pgpool to exit")
        assert proc.returncode == 0
        assert count_rows(postgres, "ops_drain") == 100
        log = proc.log_text()
        assert "SIGTERM: graceful shutdown" in log and "every client left" in log and "cutting" not in log
    finally:
        for task in tasks:
            task.cancel()
        for conn in conns:
            await close_quietly(conn)
        await admin.close()


async def test_readyz_flips_at_once_on_sigterm_while_healthz_stays_ok(pgpool_proc):
    metrics_port = free_port()
    proc = pgpool_proc({"metrics_port": metrics_port, "shutdown_timeout": 30})
    conn = await connect_app(proc)
    await wait_http(metrics_port)
    try:
        await conn.execute("BEGIN")
        assert await http_get(metrics_port, "/readyz") == (200, "ready\n")
        proc.send_signal(signal.SIGTERM)
        await wait_until(lambda: "graceful shutdown" in proc.log_text(), message="the drain to begin")
        assert await http_get(metrics_port, "/readyz") == (503, "not ready: shutting down\n")
        assert await http_get(metrics_port, "/healthz") == (200, "ok\n")
        assert proc.returncode is None                 # still draining: one transaction is open
        await conn.execute("COMMIT")
        await wait_until(lambda: proc.returncode is not None, timeout=15, message="pgpool to exit")
    finally:
        await close_quietly(conn)


async def test_shutdown_timeout_cuts_what_is_left_and_logs_it(pgpool_proc, postgres):
    fresh_table(postgres, "ops_cut")
    proc = pgpool_proc({"shutdown_timeout": 1})
    stuck = await connect_app(proc)
    try:
        await stuck.execute("BEGIN; INSERT INTO ops_cut VALUES (1, 1)")
        proc.send_signal(signal.SIGTERM)
        await wait_until(lambda: proc.returncode is not None, timeout=15, message="pgpool to exit")
        log = proc.log_text()
        assert "shutdown_timeout (1s) reached: cutting 1 clients still connected" in log
        assert "cut: C-" in log and "in a transaction for" in log
        assert count_rows(postgres, "ops_cut") == 0       # the open transaction was rolled back
    finally:
        await close_quietly(stuck)


async def test_sigint_is_an_immediate_safe_shutdown(pgpool_proc, postgres):
    fresh_table(postgres, "ops_sigint")
    proc = pgpool_proc({"shutdown_timeout": 60})
    conn = await connect_app(proc)
    try:
        await conn.execute("BEGIN; INSERT INTO ops_sigint VALUES (1, 1)")
        proc.send_signal(signal.SIGINT)
        await wait_until(lambda: proc.returncode is not None, timeout=10, message="pgpool to exit")
        await wait_until(conn.is_closed, message="the client to be disconnected")
        assert count_rows(postgres, "ops_sigint") == 0

        async def no_backend_left():
            return postgres.run_sql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'") == "0"
        await wait_until(no_backend_left, message="pgpool's server connections to end")
    finally:
        await close_quietly(conn)


async def test_shutdown_wait_for_clients_on_the_console(pgpool_proc):
    proc = pgpool_proc(ADMIN)
    admin = await console(proc)
    conn = await connect_app(proc)
    await conn.execute("BEGIN")
    cur = await admin.execute("SHUTDOWN WAIT_FOR_CLIENTS")
    assert cur.statusmessage == "SHUTDOWN"
    with pytest.raises((OSError, asyncpg.PostgresError)):
        await connect_app(proc)
    assert {r["key"]: r["value"] for r in await show(admin, "STATE")}["shutting_down"] == "yes"
    await conn.execute("COMMIT")
    await wait_until(conn.is_closed, message="the client to leave after its transaction")
    await wait_until(lambda: proc.returncode is not None, timeout=15, message="pgpool to exit")
    await close_quietly(conn)
    await admin.close()


async def test_shutdown_command_stops_at_once(pgpool_proc):
    proc = pgpool_proc(ADMIN)
    admin = await console(proc)
    with pytest.raises(psycopg.Error, match="shutting down"):
        await admin.execute("SHUTDOWN")
    await wait_until(lambda: proc.returncode is not None, timeout=10, message="pgpool to exit")
    assert proc.returncode == 0
    await admin.close()


# ---- /readyz -------------------------------------------------------------------------------------

async def test_readyz_names_a_database_that_cannot_be_reached(pgpool_proc, postgres):
    metrics_port = free_port()
    backend = f"host={postgres.host} port={postgres.port}"
    databases = {"app": f"{backend} dbname=app", "ghost": f"host=127.0.0.1 port={free_port()} dbname=ghost"}
    proc = pgpool_proc({"metrics_port": metrics_port, "readyz_cache_seconds": 0}, databases=databases)
    await wait_http(metrics_port)
    status, body = await http_get(metrics_port, "/readyz")
    assert status == 503
    assert body.startswith("not ready: ghost: cannot reach 127.0.0.1") and "app:" not in body

    del proc.databases["ghost"]
    proc.write_config()
    proc.send_signal(signal.SIGHUP)

    async def ready():
        return await http_get(metrics_port, "/readyz") == (200, "ready\n")
    await wait_until(ready, message="/readyz to turn ready once the dead entries are gone")
