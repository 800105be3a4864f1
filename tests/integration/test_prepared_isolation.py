"""Shared prepared statements with real drivers at their defaults, each step compared with a direct connection.

pgpool shares a named statement between the clients of a pool that prepare the same SQL under
the same search_path. These tests check that sharing is invisible: DDL that changes a result
type, schema-per-tenant search_paths, resets run by pgpool (server_reset_query) or by clients
(DISCARD ALL / DEALLOCATE ALL, simple, in a statement list, as a named statement), and clients
of another database all see what their own direct session shows (issue 8).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator

import asyncpg
import psycopg
import pytest
from psycopg.pq import DiagnosticField, ExecStatus

from tests.differential import Twin, direct_dsn, open_twin
from tests.waiting import wait_until


@contextlib.asynccontextmanager
async def twins(proc: Any, postgres: Any, *specs: tuple[str, str, dict]) -> AsyncIterator[list[Twin]]:
    """Twins (name, driver, connect keywords) sharing one trace, closed on exit."""
    trace: list[str] = []
    opened: list[Twin] = []
    try:
        for name, driver, kw in specs:
            opened.append(await open_twin(proc, postgres, name=name, driver=driver, trace=trace, **kw))
        yield opened
    finally:
        for twin in opened:
            await twin.close()


async def run_direct_sql(postgres: Any, sql: str, dbname: str = "app") -> None:
    conn = await asyncpg.connect(direct_dsn(postgres, dbname=dbname))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


# ---- DDL that changes a result type --------------------------------------------------------------

@pytest.mark.parametrize("pool_size", [1, 2])
async def test_ddl_changing_a_result_type_recovers_as_on_direct(pgpool_proc, postgres, pool_size):
    table = f"ddl_items_{pool_size}"
    sql = f"SELECT * FROM {table} ORDER BY 1"
    await run_direct_sql(postgres, f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (a int); "
                                   f"INSERT INTO {table} VALUES (1)")
    proc = pgpool_proc({"default_pool_size": pool_size})
    async with twins(proc, postgres, ("A", "asyncpg", {}), ("B", "asyncpg", {}), ("P", "psycopg-prepare0", {}),
                     ("Q", "psycopg", {}), ("S", "sqlalchemy", {})) as old:
        for _ in range(6):   # psycopg's default threshold prepares from the 6th execution
            for twin in old:
                assert await twin.same(sql) == ("rows", ((1,),))
        await run_direct_sql(postgres, f"ALTER TABLE {table} ADD COLUMN b int DEFAULT 7")
        # asyncpg re-prepares after 0A000 and answers; SQLAlchemy shows the error once, then prepares
        # again; psycopg keeps its stale statement and its error: through pgpool exactly as directly.
        for _ in range(3):
            for twin in old:
                await twin.same(sql)
        for twin in old:
            seen = await twin.same(sql)
            if twin.driver in ("asyncpg", "sqlalchemy"):
                assert seen == ("rows", ((1, 7),))
            else:   # psycopg keeps its stale statement, on a direct connection too
                assert seen[:2] == ("error", "0A000")
        async with twins(proc, postgres, ("C", "asyncpg", {}), ("R", "psycopg-prepare0", {}),
                         ("T", "psycopg", {}), ("U", "sqlalchemy", {})) as new:
            for _ in range(2):
                for twin in new:
                    assert await twin.same(sql) == ("rows", ((1, 7),))


# ---- schema per tenant: same SQL, other tables -----------------------------------------------------

TENANTS_SQL = """
DROP SCHEMA IF EXISTS tenant_a CASCADE; DROP SCHEMA IF EXISTS tenant_b CASCADE;
CREATE SCHEMA tenant_a; CREATE SCHEMA tenant_b;
CREATE TABLE tenant_a.items (v int); INSERT INTO tenant_a.items VALUES (1);
CREATE TABLE tenant_b.items (v text, w text); INSERT INTO tenant_b.items VALUES ('one', 'b');
"""


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg-prepare0", "sqlalchemy"])
async def test_tenant_schemas_set_at_startup_are_not_mixed_up(pgpool_proc, postgres, driver):
    await run_direct_sql(postgres, TENANTS_SQL)
    proc = pgpool_proc({"default_pool_size": 1})
    if driver == "asyncpg":
        a_kw, b_kw = ({"server_settings": {"search_path": s}} for s in ("tenant_a", "tenant_b"))
    elif driver == "sqlalchemy":
        a_kw, b_kw = ({"connect_args": {"server_settings": {"search_path": s}}} for s in ("tenant_a", "tenant_b"))
    else:
        a_kw, b_kw = ({"options": f"-c search_path={s}"} for s in ("tenant_a", "tenant_b"))
    async with twins(proc, postgres, ("A", driver, a_kw), ("B", driver, b_kw), ("A2", driver, a_kw)) as (a, b, a2):
        for _ in range(3):
            assert await a.same("SELECT * FROM items") == ("rows", ((1,),))
            assert await b.same("SELECT * FROM items") == ("rows", (("one", "b"),))
            assert await a2.same("SELECT * FROM items") == ("rows", ((1,),))


async def test_tenant_schemas_chosen_with_set_are_not_mixed_up(pgpool_proc, postgres):
    await run_direct_sql(postgres, TENANTS_SQL)
    proc = pgpool_proc({"default_pool_size": 1})
    async with twins(proc, postgres, ("A", "asyncpg", {}), ("B", "asyncpg", {}), ("P", "psycopg-prepare0", {})) \
            as (a, b, p):
        await a.same("SET search_path TO tenant_a")
        await b.same("SET search_path TO tenant_b")
        # (psycopg's SET goes unprepared here: a prepared SET is issue 8's session-state part, not this test's)
        await p.same(_unprepared("SET search_path TO tenant_b"))
        for _ in range(3):
            assert await a.same("SELECT * FROM items") == ("rows", ((1,),))
            assert await b.same("SELECT * FROM items") == ("rows", (("one", "b"),))
            assert await p.same("SELECT * FROM items") == ("rows", (("one", "b"),))
        # A moves to the other tenant: its next statements follow it.
        await a.same("SET search_path TO tenant_b")
        assert await a.same("SELECT v FROM items") == ("rows", (("one",),))


def _unprepared(sql: str) -> Any:
    async def step(conn: Any) -> None:
        await conn.execute(sql, prepare=False)
    step.__name__ = f"{sql} (prepare=False)"
    return step


# ---- resets run by pgpool ----------------------------------------------------------------------------

async def test_server_reset_query_always_with_asyncpg_defaults(pgpool_proc, postgres):
    proc = pgpool_proc({"default_pool_size": 1, "server_reset_query_always": 1})
    async with twins(proc, postgres, ("A", "asyncpg", {}), ("B", "asyncpg", {}), ("S", "sqlalchemy", {})) as clients:
        for i in range(8):
            for twin in clients:
                assert await twin.same(lambda c, i=i: _fetch_param(c, i)) == i + 1
                assert await twin.same("SELECT 'x' AS x") == ("rows", (("x",),))


async def _fetch_param(conn: Any, i: int) -> Any:
    if isinstance(conn, asyncpg.Connection):
        return await conn.fetchval("SELECT $1::int + 1", i)
    result = await conn.exec_driver_sql("SELECT $1::int + 1", (i,))
    value = result.scalar()
    await conn.commit()
    return value


async def test_pinned_client_exit_resets_the_server_and_others_keep_their_statements(pgpool_proc, postgres):
    proc = pgpool_proc({"default_pool_size": 1})
    async with twins(proc, postgres, ("A", "asyncpg", {}), ("P", "psycopg-prepare0", {})) as (a, p):
        for twin in (a, p):
            assert await twin.same("SELECT 40 + 2 AS answer") == ("rows", ((42,),))
        for round_ in range(2):
            # A client that pins its server (an advisory lock is session state), then leaves:
            # pgpool runs server_reset_query (DISCARD ALL) before lending the server again.
            pinned = await asyncpg.connect(proc.dsn())
            await pinned.execute("SELECT pg_advisory_lock(8)")
            await pinned.close()
            await wait_until(lambda: _no_advisory_locks(postgres), timeout=10, message="server_reset_query ran")
            for twin in (a, p):
                assert await twin.same("SELECT 40 + 2 AS answer") == ("rows", ((42,),))


async def _no_advisory_locks(postgres: Any) -> bool:
    """True once no session holds an advisory lock (DISCARD ALL released the pinned client's)."""
    conn = await asyncpg.connect(direct_dsn(postgres))
    try:
        return await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0
    finally:
        await conn.close()


# ---- another database ---------------------------------------------------------------------------------

def _prepare_error(dsn: str, sql: str) -> tuple[str, str | None]:
    """libpq's PQprepare: Parse + Sync, the reply read at once (what pgbench -M prepared does)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        result = conn.pgconn.prepare(b"s1", sql.encode())
        state = result.error_field(DiagnosticField.SQLSTATE)
        return ExecStatus(result.status).name, state.decode() if state else None


async def test_client_of_another_database_gets_its_own_parse_error(pgpool_proc, postgres):
    await run_direct_sql(postgres, "DROP TABLE IF EXISTS only_in_app; CREATE TABLE only_in_app (v int)")
    proc = pgpool_proc({"default_pool_size": 1})
    sql = "SELECT v FROM only_in_app"
    async with twins(proc, postgres, ("A", "asyncpg", {})) as (a,):
        assert await a.same(sql) == ("rows", ())
        pooled = await asyncio.to_thread(_prepare_error, proc.dsn(dbname="postgres"), sql)
        direct = await asyncio.to_thread(_prepare_error, direct_dsn(postgres, dbname="postgres"), sql)
        assert pooled == direct == ("FATAL_ERROR", "42P01")
        # The first database still answers it, without asking a server.
        assert await asyncio.to_thread(_prepare_error, proc.dsn(), sql) == ("COMMAND_OK", None)


# ---- resets run by clients: DISCARD ALL / DEALLOCATE ALL in every form --------------------------------

async def _discarding_worker(conn: Any, worker: int, rounds: int) -> list[str]:
    """psycopg with prepare_threshold=0: DISCARD ALL runs as a named prepared statement; psycopg then
    sends DEALLOCATE ALL itself. Returns the SQLSTATEs of the errors it got."""
    errors = []
    for i in range(rounds):
        for sql, params in (("SELECT %s::int + 1", (i,)), ("SELECT 'w' || %s::text", (worker,)),
                            ("DISCARD ALL" if (i + worker) % 3 == 0 else "SELECT 1", None)):
            try:
                cursor = await conn.execute(sql, params)
                if cursor.description is not None:
                    await cursor.fetchall()
            except psycopg.Error as error:
                errors.append(error.sqlstate or "?")
    return errors


async def _bystander_worker(conn: asyncpg.Connection, worker: int, rounds: int) -> list[str]:
    """asyncpg with its statement cache: its statements must survive other clients' resets."""
    errors = []
    for i in range(rounds):
        try:
            assert await conn.fetchval("SELECT $1::int * 2", i) == i * 2
            await conn.fetch("SELECT $1::text AS w, 2 AS two", str(worker))
        except asyncpg.PostgresError as error:
            errors.append(error.sqlstate)
    return errors


async def _resetting_worker(conn: asyncpg.Connection, rounds: int) -> list[str]:
    """Statement lists with DEALLOCATE ALL, simple protocol (a client with no prepared statement of its own)."""
    errors = []
    for i in range(rounds):
        try:
            await conn.execute("SELECT 1; DEALLOCATE ALL" if i % 2 else
                               "SELECT pg_advisory_unlock_all(); CLOSE ALL; /* reset */ DEALLOCATE PREPARE ALL")
        except asyncpg.PostgresError as error:
            errors.append(error.sqlstate)
    return errors


async def _run_workload(dsn: str, rounds: int) -> list[str]:
    """10 clients: 6 psycopg (DISCARD ALL as a named statement), 3 asyncpg bystanders, 1 statement-list resetter."""
    psy = [await psycopg.AsyncConnection.connect(dsn, autocommit=True, prepare_threshold=0) for _ in range(6)]
    apg = [await asyncpg.connect(dsn) for _ in range(4)]
    try:
        results = await asyncio.gather(*[_discarding_worker(c, n, rounds) for n, c in enumerate(psy)],
                                       *[_bystander_worker(c, n, rounds) for n, c in enumerate(apg[:3])],
                                       _resetting_worker(apg[3], rounds))
    finally:
        for conn in psy:
            await conn.close()
        for conn in apg:
            await conn.close()
    return [state for errors in results for state in errors]


async def test_ten_clients_resetting_on_a_pool_of_two_never_lose_each_others_statements(pgpool_proc, postgres):
    proc = pgpool_proc({"default_pool_size": 2})
    direct = await _run_workload(direct_dsn(postgres), rounds=12)
    pooled = await _run_workload(proc.dsn(), rounds=12)
    assert direct == []
    assert pooled.count("26000") == 0, pooled
    assert pooled == direct


# ---- statements whose result shape comes from the session itself -------------------------------

@pytest.mark.parametrize("driver", ["asyncpg", "psycopg-prepare0"])
async def test_sql_execute_and_fetch_describe_the_clients_own_objects(pgpool_proc, postgres, driver):
    # Postgres fixes the RowDescription of `EXECUTE p` / `FETCH` at Parse from the session's own
    # PREPAREd statement or cursor: shared between clients, B would get A's shape (or none).
    proc = pgpool_proc({"default_pool_size": 1})
    async with twins(proc, postgres, ("A", driver, {}), ("B", driver, {})) as (a, b):
        seen = await a.same("EXECUTE p_1")
        assert seen[:2] == ("error", "26000")
        await b.same("PREPARE p_1 AS SELECT 1 AS one, 'x' AS two")
        assert await b.same("EXECUTE p_1") == ("rows", ((1, "x"),))
        await b.same("DEALLOCATE p_1")
        await a.same("PREPARE p_1 AS SELECT 2")
        await a.same("EXECUTE p_1")   # whatever A's own cached statement gives on a direct connection
        await a.same("DEALLOCATE p_1")
        for twin, columns in ((a, "1 AS a"), (b, "1 AS a, 2 AS b, 3 AS c")):
            await twin.same("BEGIN")
            await twin.same(f"DECLARE c CURSOR FOR SELECT {columns}")
            await twin.same("FETCH 1 FROM c")
            await twin.same("COMMIT")
