"""The admin console as its users see it: psql, psycopg and monitoring tools against a real Postgres.

SHOW tables carry PgBouncer's column names and types (checked against the real PgBouncer and
against the lists in PgBouncer's source), counts match what a test arranged, each command does
what PgBouncer's does, and prometheus-community's pgbouncer_exporter finds every column it reads.
"""

from __future__ import annotations

import asyncio
import os
import subprocess

import asyncpg
import psycopg
import pytest

from benchmarks.targets import ROLES, find_client_program
from tests.waiting import wait_until

ADMIN = {"admin_users": ["postgres"], "stats_users": ["md5user"]}

TEXT, INT4, INT8, NUMERIC = 25, 23, 20, 1700


async def console(proc, user: str = "postgres", dbname: str = "pgbouncer") -> psycopg.AsyncConnection:
    # prepare_threshold=None: psycopg would otherwise prepare a query run five times, and the
    # console, like PgBouncer's, speaks only the simple query protocol.
    return await psycopg.AsyncConnection.connect(proc.dsn(user, dbname=dbname), autocommit=True,
                                                 prepare_threshold=None)


async def show(conn: psycopg.AsyncConnection, table: str) -> list[dict]:
    cur = await conn.execute(f"SHOW {table}")
    names = [d.name for d in cur.description]
    return [dict(zip(names, row)) for row in await cur.fetchall()]


async def described(conn: psycopg.AsyncConnection, query: str) -> list[tuple[str, int]]:
    cur = await conn.execute(query)
    await cur.fetchall()
    return [(d.name, d.type_code) for d in cur.description]


async def pool_row(conn, database: str = "app", user: str = "app") -> dict | None:
    return next((r for r in await show(conn, "POOLS") if (r["database"], r["user"]) == (database, user)), None)


async def connect_app(proc, **kw) -> asyncpg.Connection:
    return await asyncpg.connect(proc.dsn("app"), **kw)


# ---- SHOW tables ---------------------------------------------------------------------------------

async def test_show_pools_counts_what_the_test_arranged(pgpool_proc):
    proc = pgpool_proc({**ADMIN, "default_pool_size": 3})
    conns = [await connect_app(proc) for _ in range(10)]
    admin = await console(proc)
    try:
        for holder in conns[:3]:
            await holder.execute("BEGIN")
        queued = [asyncio.create_task(c.execute("SELECT pg_sleep(0)")) for c in conns[3:]]

        async def seven_waiting():
            row = await pool_row(admin)
            return row if row and row["cl_waiting"] == 7 else None
        row = await wait_until(seven_waiting, message="SHOW POOLS cl_waiting = 7")
        assert (row["cl_active"], row["sv_active"], row["sv_idle"], row["sv_login"]) == (3, 3, 0, 0)
        assert row["pool_mode"] == "transaction" and row["pool_size"] == 3

        clients = {r["state"] for r in await show(admin, "CLIENTS") if r["database"] == "app"}
        assert clients == {"active", "waiting"}
        servers = [r for r in await show(admin, "SERVERS") if r["database"] == "app"]
        assert [r["state"] for r in servers] == ["active"] * 3

        for holder in conns[:3]:
            await holder.execute("COMMIT")
        await asyncio.gather(*queued)

        async def all_idle():
            row = await pool_row(admin)
            return row if row and row["cl_waiting"] == 0 and row["sv_active"] == 0 else None
        row = await wait_until(all_idle, message="the queue to drain")
        assert row["cl_active"] == 10            # PgBouncer counts idle logged-in clients as cl_active
        assert row["sv_idle"] + row["sv_used"] == 3
    finally:
        await admin.close()
        for conn in conns:
            await conn.close()


async def test_show_clients_and_servers_describe_each_connection(pgpool_proc):
    proc = pgpool_proc({**ADMIN, "default_pool_size": 1})
    conn = await connect_app(proc, server_settings={"application_name": "billing"})
    admin = await console(proc)
    try:
        await conn.execute("BEGIN")
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        clients = [r for r in await show(admin, "CLIENTS") if r["application_name"] == "billing"]
        assert len(clients) == 1
        client = clients[0]
        assert (client["type"], client["user"], client["database"], client["state"]) == ("C", "app", "app", "active")
        assert client["addr"] == "127.0.0.1" and client["port"] > 0 and client["local_port"] == proc.port
        assert client["connect_time"].endswith(" UTC") and client["link"].startswith("0x")
        server = next(r for r in await show(admin, "SERVERS") if r["database"] == "app")
        assert (server["type"], server["state"], server["remote_pid"]) == ("S", "active", pid)
        assert server["link"] == client["ptr"] and server["application_name"] == "billing"
        consoles = [r for r in await show(admin, "CLIENTS") if r["database"] == "pgbouncer"]
        assert [r["user"] for r in consoles] == ["postgres"]
        await conn.execute("COMMIT")
    finally:
        await admin.close()
        await conn.close()


async def test_show_stats_totals_and_averages_follow_traffic(pgpool_proc):
    proc = pgpool_proc({**ADMIN, "stats_period": 1})
    conn = await connect_app(proc)
    admin = await console(proc)
    try:
        for _ in range(20):
            async with conn.transaction():
                await conn.execute("SELECT 1")
        totals = next(r for r in await show(admin, "STATS_TOTALS") if r["database"] == "app")
        assert totals["xact_count"] >= 20 and totals["query_count"] >= 60   # BEGIN, SELECT, COMMIT
        assert totals["bytes_received"] > 0 and totals["bytes_sent"] > 0 and totals["xact_time"] > 0
        assert totals["server_assignment_count"] >= 20 and totals["client_login_count"] == 1

        async def averaged():
            rows = [r for r in await show(admin, "STATS_AVERAGES") if r["database"] == "app"]
            return rows[0] if rows and rows[0]["xact_count"] > 0 else None
        averages = await wait_until(averaged, timeout=5, message="a stats_period with traffic")
        assert averages["xact_time"] > 0 and averages["bytes_sent"] > 0
        stats = next(r for r in await show(admin, "STATS") if r["database"] == "app")
        assert stats["total_xact_count"] >= 20 and stats["total_received"] == totals["bytes_received"]
        totals_rows = {r["name"]: r["value"] for r in await show(admin, "TOTALS")}
        assert totals_rows["total_xact_count"] >= 20
    finally:
        await admin.close()
        await conn.close()


async def test_show_databases_users_config_lists_mem_version_state(pgpool_proc, postgres):
    databases = {"app": f"host={postgres.host} port={postgres.port} dbname=app pool_size=4 reserve_pool=1",
                 "*": f"host={postgres.host} port={postgres.port}"}
    proc = pgpool_proc({**ADMIN, "default_pool_size": 7, "max_client_conn": 55}, databases=databases)
    conn = await connect_app(proc)
    admin = await console(proc)
    try:
        await conn.execute("SELECT 1")
        dbs = {r["name"]: r for r in await show(admin, "DATABASES")}
        assert dbs["app"]["pool_size"] == 4 and dbs["app"]["reserve_pool_size"] == 1 == dbs["app"]["reserve_pool"]
        assert dbs["app"]["port"] == postgres.port and dbs["app"]["database"] == "app"
        assert dbs["app"]["current_connections"] >= 1 and dbs["app"]["current_client_connections"] == 1
        assert (dbs["app"]["paused"], dbs["app"]["disabled"]) == (0, 0)
        assert "pgbouncer" in dbs and "*" not in dbs
        users = {r["name"]: r for r in await show(admin, "USERS")}
        assert set(ROLES) <= set(users) and users["app"]["current_connections"] >= 1
        config = {r["key"]: r for r in await show(admin, "CONFIG")}
        assert config["default_pool_size"]["value"] == "7" and config["default_pool_size"]["default"] == "20"
        assert config["max_client_conn"]["value"] == "55" and config["admin_users"]["value"] == "postgres"
        assert config["default_pool_size"]["changeable"] == "yes" and config["listen_port"]["changeable"] == "no"
        lists = {r["list"]: r["items"] for r in await show(admin, "LISTS")}
        assert lists["pools"] == 1 and lists["used_clients"] == 2 and lists["databases"] == len(dbs)
        mem = {r["name"]: r for r in await show(admin, "MEM")}
        assert mem["client_cache"]["used"] == 2 and mem["client_cache"]["memtotal"] > 0
        (version,) = await show(admin, "VERSION")
        assert version["version"].startswith("pgpool ")
        state = {r["key"]: r["value"] for r in await show(admin, "STATE")}
        assert state == {"active": "yes", "paused": "no", "suspended": "no", "shutting_down": "no"}
    finally:
        await admin.close()
        await conn.close()


# Column lists of PgBouncer's console as its source defines them (src/admin.c, src/stats.c, 1.24);
# pgpool must start with exactly these and may only add columns after them.
PGBOUNCER_COLUMNS = {
    "POOLS": ["database", "user", "cl_active", "cl_waiting", "cl_active_cancel_req", "cl_waiting_cancel_req",
              "sv_active", "sv_active_cancel", "sv_being_canceled", "sv_idle", "sv_used", "sv_tested", "sv_login",
              "maxwait", "maxwait_us", "pool_mode", "load_balance_hosts"],
    "DATABASES": ["name", "host", "port", "database", "force_user", "pool_size", "min_pool_size",
                  "reserve_pool_size", "server_lifetime", "pool_mode", "load_balance_hosts", "max_connections",
                  "current_connections", "max_client_connections", "current_client_connections", "paused",
                  "disabled"],
    "USERS": ["name", "pool_size", "reserve_pool_size", "pool_mode", "max_user_connections", "current_connections",
              "max_user_client_connections", "current_client_connections"],
    "CLIENTS": ["type", "user", "database", "replication", "state", "addr", "port", "local_addr", "local_port",
                "connect_time", "request_time", "wait", "wait_us", "close_needed", "ptr", "link", "remote_pid", "tls",
                "application_name", "prepared_statements", "id"],
    "STATS_TOTALS": ["database", "server_assignment_count", "xact_count", "query_count", "bytes_received",
                     "bytes_sent", "xact_time", "query_time", "wait_time", "client_parse_count",
                     "server_parse_count", "bind_count", "client_login_count"],
    "STATS_AVERAGES": ["database", "server_assignment_count", "xact_count", "query_count", "bytes_received",
                       "bytes_sent", "xact_time", "query_time", "wait_time", "avg_client_parse_count",
                       "avg_server_parse_count", "avg_bind_count", "avg_client_login_count"],
    "LISTS": ["list", "items"],
    "CONFIG": ["key", "value", "default", "changeable"],
    "MEM": ["name", "size", "used", "free", "memtotal"],
    "VERSION": ["version"],
    "STATE": ["key", "value"],
    "TOTALS": ["name", "value"],
}
PGBOUNCER_COLUMNS["SERVERS"] = PGBOUNCER_COLUMNS["CLIENTS"]
PGBOUNCER_COLUMNS["STATS"] = ["database"] + [
    f"{kind}_{name}" for kind, names in (
        ("total", ["server_assignment_count", "xact_count", "query_count", "received", "sent", "xact_time",
                   "query_time", "wait_time", "client_parse_count", "server_parse_count", "bind_count",
                   "client_login_count"]),
        ("avg", ["server_assignment_count", "xact_count", "query_count", "recv", "sent", "xact_time", "query_time",
                 "wait_time", "client_parse_count", "server_parse_count", "bind_count", "client_login_count"]))
    for name in names]


async def test_show_columns_start_with_pgbouncers_own(pgpool_proc):
    proc = pgpool_proc(ADMIN)
    conn = await connect_app(proc)
    admin = await console(proc)
    try:
        await conn.execute("SELECT 1")
        for table, expected in PGBOUNCER_COLUMNS.items():
            names = [name for name, _ in await described(admin, f"SHOW {table}")]
            assert names[:len(expected)] == expected, table
    finally:
        await admin.close()
        await conn.close()


async def test_show_columns_have_the_names_and_types_of_the_real_pgbouncer(pgpool_proc, pgbouncer_proc):
    """Every column the installed PgBouncer sends, pgpool sends too, with the same type."""
    ours = pgpool_proc(ADMIN)
    theirs = pgbouncer_proc({"admin_users": "postgres"})
    pgpool_admin = await console(ours)
    bouncer_admin = await console(theirs)
    try:
        for table in ("POOLS", "STATS", "STATS_TOTALS", "STATS_AVERAGES", "CLIENTS", "SERVERS", "DATABASES",
                      "USERS", "CONFIG", "LISTS", "MEM", "VERSION"):
            reference = await described(bouncer_admin, f"SHOW {table}")
            mine = dict(await described(pgpool_admin, f"SHOW {table}"))
            for name, type_oid in reference:
                assert mine.get(name) == type_oid, \
                    f"SHOW {table} column {name}: PgBouncer type {type_oid}, pgpool {mine.get(name)}"
        reference_lists = {r["list"] for r in await show(bouncer_admin, "LISTS")}
        assert reference_lists <= {r["list"] for r in await show(pgpool_admin, "LISTS")}
    finally:
        await pgpool_admin.close()
        await bouncer_admin.close()


def test_psql_shows_pools(pgpool_proc):
    proc = pgpool_proc(ADMIN)
    env = {**os.environ, "PGPASSWORD": ROLES["postgres"]}
    result = subprocess.run([find_client_program("psql"), "-X", "-h", proc.host, "-p", str(proc.port), "-U", "postgres",
                             "-d", "pgbouncer", "-c", "SHOW POOLS;", "-c", "SHOW VERSION"],
                            capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "cl_active" in result.stdout and "pgpool" in result.stdout


# ---- prometheus-community/pgbouncer_exporter -------------------------------------------------------

# What its collector.go runs, in order, and the columns it reads by name from each result.
# Label columns become label values (it accepts int and string types only); the others must
# convert to float. "requests" is PgBouncer's pre-1.8 name of query_count, absent since 1.8.
EXPORTER_QUERIES = {
    "SHOW STATS": None,          # its connection check: only has to succeed
    "SHOW VERSION;": None,
    "SHOW LISTS;": None,
    "SHOW CONFIG;": None,
    "SHOW databases;": {
        "labels": ["name", "host", "port", "database", "force_user", "pool_mode"],
        "values": ["pool_size", "reserve_pool", "max_connections", "current_connections", "paused", "disabled"]},
    "SHOW stats_totals;": {
        "labels": ["database"],
        "values": ["query_count", "query_time", "bytes_received", "bytes_sent", "wait_time", "xact_count",
                   "xact_time", "client_parse_count", "server_parse_count", "bind_count"]},
    "SHOW pools;": {
        "labels": ["database", "user"],
        "values": ["cl_active", "cl_active_cancel_req", "cl_waiting", "cl_waiting_cancel_req", "sv_active",
                   "sv_active_cancel", "sv_being_canceled", "sv_idle", "sv_used", "sv_tested", "sv_login",
                   "maxwait"]},
}
EXPORTER_LISTS = ["databases", "users", "pools", "free_clients", "used_clients", "login_clients", "free_servers",
                  "used_servers", "dns_names", "dns_zones", "dns_queries"]
EXPORTER_CONFIG = ["max_client_conn", "max_user_connections"]


def _as_float(value: object) -> float:
    return float(value) if not isinstance(value, str) else float(value.strip())


def test_pgbouncer_exporter_queries_find_every_column(pgpool_proc):
    proc = pgpool_proc({**ADMIN, "stats_users": ["md5user"]})
    with psycopg.connect(proc.dsn("app"), autocommit=True) as app_conn:
        app_conn.execute("SELECT 1")
        # The exporter logs in as a stats user; psycopg without parameters stays on the simple protocol.
        with psycopg.connect(proc.dsn("md5user", dbname="pgbouncer"), autocommit=True) as conn:
            results = {}
            for query in EXPORTER_QUERIES:
                cur = conn.execute(query, prepare=False)
                results[query] = ([(d.name, d.type_code) for d in cur.description], cur.fetchall())

    cols, rows = results["SHOW VERSION;"]
    assert [name for name, _ in cols] == ["version"] and len(rows) == 1

    cols, rows = results["SHOW LISTS;"]
    assert len(cols) == 2
    lists = {name: _as_float(items) for name, items in rows}
    assert set(EXPORTER_LISTS) <= set(lists)

    cols, rows = results["SHOW CONFIG;"]
    assert len(cols) in (3, 4)
    config = {row[0]: row[1] for row in rows}
    for key in EXPORTER_CONFIG:
        _as_float(config[key])

    for query, spec in EXPORTER_QUERIES.items():
        if spec is None:
            continue
        cols, rows = results[query]
        types = dict(cols)
        assert rows, f"{query} returned no rows"
        for label in spec["labels"]:
            assert types.get(label) in (TEXT, INT4, INT8), f"{query}: label column {label} is {types.get(label)}"
        for column in spec["values"]:
            assert column in types, f"{query}: no column {column}"
            index = [name for name, _ in cols].index(column)
            for row in rows:
                if row[index] is not None:
                    _as_float(row[index])
        assert "requests" not in types   # the exporter copes, as with PgBouncer >= 1.8


# ---- access --------------------------------------------------------------------------------------

async def test_stats_users_may_only_show(pgpool_proc):
    proc = pgpool_proc(ADMIN)
    stats = await console(proc, "md5user")
    try:
        assert await show(stats, "POOLS") == []
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="admin access needed"):
            await stats.execute("PAUSE")
        assert (await show(stats, "STATE"))[0]["value"] == "yes"   # still usable, nothing paused
    finally:
        await stats.close()


async def test_other_users_are_refused_at_login_naming_the_settings(pgpool_proc):
    proc = pgpool_proc(ADMIN)
    with pytest.raises(psycopg.OperationalError, match="not in admin_users or stats_users"):
        await console(proc, "app")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        await psycopg.AsyncConnection.connect(proc.dsn("postgres", password="wrong", dbname="pgbouncer"))


async def test_the_pgpool_database_name_is_the_console_too(pgpool_proc):
    proc = pgpool_proc(ADMIN)
    admin = await console(proc, dbname="pgpool")
    try:
        assert (await show(admin, "VERSION"))[0]["version"].startswith("pgpool")
    finally:
        await admin.close()


async def test_unknown_commands_get_a_clear_error_and_the_console_goes_on(pgpool_proc, postgres):
    # No "*" entry: then, as in PgBouncer, a name that is not configured is no database.
    proc = pgpool_proc(ADMIN, databases={"app": f"host={postgres.host} port={postgres.port}"})
    admin = await console(proc)
    try:
        with pytest.raises(psycopg.Error, match="unknown command 'FROB'"):
            await admin.execute("FROB the pools")
        with pytest.raises(psycopg.Error, match="unknown SHOW table 'NOPE'.*POOLS"):
            await admin.execute("SHOW NOPE")
        with pytest.raises(psycopg.Error, match="invalid command 'SET default_pool_size 5', use SHOW HELP;"):
            await admin.execute("SET default_pool_size 5")
        with pytest.raises(psycopg.Error, match="no such database: nosuchdb"):
            await admin.execute("DISABLE nosuchdb")
        with pytest.raises(psycopg.Error, match="KILL_CLIENT needs a client id"):
            await admin.execute("KILL_CLIENT abc")
        assert [r["key"] for r in await show(admin, "state")][0] == "active"    # lower case works too
        cur = await admin.execute("SHOW VERSION; SHOW STATE")                    # two commands, two results
        assert cur.nextset() and [row[0] for row in await cur.fetchall()][0] == "active"
    finally:
        await admin.close()


async def test_extended_protocol_is_refused_with_an_error(pgpool_proc):
    proc = pgpool_proc(ADMIN)
    admin = await console(proc)
    with pytest.raises(psycopg.Error, match="simple query protocol"):
        await admin.execute("SHOW %s", ["POOLS"])    # parameters: psycopg sends Parse/Bind/Execute
    assert admin.closed or admin.broken
    await admin.close()


# ---- commands ------------------------------------------------------------------------------------

async def test_kill_client_disconnects_that_client_only(pgpool_proc):
    proc = pgpool_proc(ADMIN)
    victim = await connect_app(proc, server_settings={"application_name": "victim"})
    bystander = await connect_app(proc)
    admin = await console(proc)
    try:
        row = next(r for r in await show(admin, "CLIENTS") if r["application_name"] == "victim")
        await admin.execute(f"KILL_CLIENT {row['id']}")
        await wait_until(victim.is_closed, message="the killed client's connection to close")
        assert await bystander.fetchval("SELECT 2") == 2
        assert all(r["application_name"] != "victim" for r in await show(admin, "CLIENTS"))
        with pytest.raises(psycopg.Error, match="client not found"):
            await admin.execute(f"KILL_CLIENT {row['id']}")
    finally:
        await admin.close()
        await victim.close(timeout=2)
        await bystander.close()


async def test_disable_refuses_new_logins_and_enable_allows_them(pgpool_proc):
    proc = pgpool_proc(ADMIN)
    existing = await connect_app(proc)
    admin = await console(proc)
    try:
        await admin.execute("DISABLE app")
        assert next(r for r in await show(admin, "DATABASES") if r["name"] == "app")["disabled"] == 1
        with pytest.raises(asyncpg.PostgresError, match="database does not allow connections"):
            await connect_app(proc)
        assert await existing.fetchval("SELECT 1") == 1     # clients already in keep working
        await admin.execute("ENABLE app")
        late = await connect_app(proc)
        assert await late.fetchval("SELECT 1") == 1
        await late.close()
    finally:
        await admin.close()
        await existing.close()


async def test_kill_drops_the_database_clients_and_resume_lets_new_ones_in(pgpool_proc):
    proc = pgpool_proc(ADMIN)
    conn = await connect_app(proc)
    admin = await console(proc)
    try:
        await conn.execute("SELECT 1")
        await admin.execute("KILL app")
        await wait_until(conn.is_closed, message="the killed database's client to be disconnected")
        row = await pool_row(admin)
        assert row["cl_active"] == 0 and row["sv_active"] + row["sv_idle"] == 0
        assert next(r for r in await show(admin, "DATABASES") if r["name"] == "app")["paused"] == 1
        await admin.execute("RESUME app")
        fresh = await connect_app(proc)
        assert await fresh.fetchval("SELECT 3") == 3
        await fresh.close()
    finally:
        await admin.close()
        await conn.close(timeout=2)


async def test_reconnect_replaces_servers_after_release_and_wait_close_waits_for_it(pgpool_proc):
    proc = pgpool_proc({**ADMIN, "default_pool_size": 1})
    conn = await connect_app(proc)
    admin = await console(proc)
    try:
        await conn.execute("BEGIN")
        old_pid = await conn.fetchval("SELECT pg_backend_pid()")
        await admin.execute("RECONNECT app")
        assert [r["close_needed"] for r in await show(admin, "SERVERS")] == [1]
        waiter_conn = await console(proc)
        waiting = asyncio.create_task(waiter_conn.execute("WAIT_CLOSE app"))
        await asyncio.sleep(0.3)    # give WAIT_CLOSE the chance to return early, which it must not
        assert not waiting.done()
        assert await conn.fetchval("SELECT 1") == 1     # the transaction goes on undisturbed
        await conn.execute("COMMIT")
        await asyncio.wait_for(waiting, 10)
        await waiter_conn.close()
        assert await conn.fetchval("SELECT pg_backend_pid()") != old_pid
    finally:
        await admin.close()
        await conn.close()
