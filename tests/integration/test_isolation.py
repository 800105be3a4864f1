"""No client ever sees another client's session state (issue 8): the differential isolation suite.

For each form of session state, client A does it and ends its transaction, then client B
looks on the same pool: B must see what a fresh direct connection sees, and A must keep
seeing its own state (tests/differential.py: every step runs through pgpool and on a direct
connection, observations compared). Every form runs on each path a driver uses at its
defaults: simple Query (asyncpg execute), extended (psycopg), named prepared statements
(psycopg prepare_threshold=0, asyncpg statement cache).

Settings run on a pool of 1 (B gets A's very server). State that pins runs on a pool of 2:
servers are reused LIFO, so B gets A's server unless A is pinned to it.
"""

from __future__ import annotations

import asyncio
import urllib.request

import asyncpg
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from benchmarks.targets import free_port
from tests.differential import Twin, open_twin
from tests.waiting import wait_until

PATHS = {
    # path -> (driver, how A runs its setup statements)
    "simple": "asyncpg",        # conn.execute(sql): the simple Query protocol
    "extended": "psycopg",      # unnamed statements (default prepare_threshold)
    "prepared": "psycopg-prepare0",   # a named statement from the first execution
    "asyncpg": "asyncpg",       # fetch(): asyncpg's statement cache, named statements
}


def simple(sql: str):
    async def step(conn):
        await conn.execute(sql)
        return "ok"
    step.__name__ = f"simple: {sql}"
    return step


async def run_setup(twin: Twin, path: str, steps: list[str]) -> None:
    for sql in steps:
        await twin.same(simple(sql) if path == "simple" else sql)


@pytest.fixture(scope="module")
def helper_functions(postgres):
    """Functions that change session state out of the statement's sight."""
    async def create() -> None:
        conn = await asyncpg.connect(postgres.dsn(dbname="app"))
        try:
            await conn.execute("""
                CREATE OR REPLACE FUNCTION pgpool_test_set_it() RETURNS text LANGUAGE plpgsql AS
                  $$ BEGIN RETURN set_config('statement_timeout', '5555', false); END $$;
                CREATE OR REPLACE FUNCTION pgpool_test_lock_it(k bigint) RETURNS boolean LANGUAGE plpgsql AS
                  $$ BEGIN PERFORM pg_advisory_lock_shared(k); RETURN true; END $$;
                GRANT EXECUTE ON FUNCTION pgpool_test_set_it(), pgpool_test_lock_it(bigint) TO PUBLIC;
                CREATE TABLE IF NOT EXISTS pgpool_isolation_scratch (a int);
                GRANT ALL ON pgpool_isolation_scratch TO PUBLIC;
            """)
        finally:
            await conn.close()
    asyncio.run(create())


# ---- settings: follow the client, never reach another (pool of 1) -------------------------------

SETTING_FORMS = {
    "set": (["SET statement_timeout = 4321"], "SHOW statement_timeout"),
    "set_config-select": (["SELECT set_config('statement_timeout', '4321', false)"], "SHOW statement_timeout"),
    "set_config-search_path": (["SELECT set_config('search_path', 'tenant_b, public', false)"], "SHOW search_path"),
    "set_config-cte": (["WITH s AS (SELECT set_config('work_mem', '6666kB', false) AS v) SELECT v FROM s"],
                       "SHOW work_mem"),
    "set_config-do": (["DO $$ BEGIN PERFORM set_config('work_mem', '7777kB', false); END $$"], "SHOW work_mem"),
    "set_config-function": (["SELECT pgpool_test_set_it()"], "SHOW statement_timeout"),
    "characteristics-read-only": (["SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"],
                                  "INSERT INTO pgpool_isolation_scratch VALUES (1)"),
    "characteristics-serializable": (["SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE"],
                                     "SHOW transaction_isolation"),
    "set-rolled-back-to-savepoint": (["BEGIN", "SET statement_timeout = 4321", "SAVEPOINT s",
                                      "SET work_mem = '3333kB'", "ROLLBACK TO SAVEPOINT s", "COMMIT"],
                                     "SELECT current_setting('work_mem'), current_setting('statement_timeout')"),
}
SIMPLE_ONLY_FORMS = {
    "multi-statement-set": (["SET statement_timeout = 4321; SELECT 1"], "SHOW statement_timeout"),
    "multi-statement-set_config": (["SELECT 1; SELECT set_config('work_mem', '5555kB', false)"], "SHOW work_mem"),
    "savepoint-in-one-query": (["BEGIN; SAVEPOINT s; SET work_mem = '3333kB'; ROLLBACK TO SAVEPOINT s; COMMIT"],
                               "SHOW work_mem"),
}


def _setting_cases():
    for name in SETTING_FORMS:
        for path in PATHS:
            yield pytest.param(name, path, SETTING_FORMS[name], id=f"{name}-{path}")
    for name in SIMPLE_ONLY_FORMS:
        yield pytest.param(name, "simple", SIMPLE_ONLY_FORMS[name], id=f"{name}-simple")


@pytest.mark.parametrize("name, path, form", list(_setting_cases()))
async def test_a_setting_follows_its_client_and_never_reaches_another(pgpool_proc, postgres, helper_functions,
                                                                      name, path, form):
    setup, check = form
    proc = pgpool_proc({"default_pool_size": 1, "query_wait_timeout": 5})
    driver = PATHS[path]
    trace: list[str] = []
    a = await open_twin(proc, postgres, name="A", driver=driver, trace=trace)
    b = await open_twin(proc, postgres, name="B", driver=driver, trace=trace)
    try:
        await run_setup(a, path, setup)
        await b.same(check)
        await a.same(check)
        await b.same(check)
    finally:
        await a.close()
        await b.close()


# ---- state that cannot move pins its client (pool of 2, LIFO) ------------------------------------

CHANNELS = "SELECT pg_listening_channels()"
TEMP = "SELECT relname FROM pg_class WHERE relnamespace = pg_my_temp_schema() AND relkind = 'r' ORDER BY 1"
LOCKS = "SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() ORDER BY 1"
PIN_FORMS = {
    "listen": (["LISTEN isolation_ch"], CHANNELS),
    "listen-commented": (["/* comment */ LISTEN isolation_ch"], CHANNELS),
    "listen-dynamic-sql": (["DO $$ BEGIN EXECUTE 'LISTEN isolation_ch'; END $$"], CHANNELS),
    "prepare-commented": (["/* c */ PREPARE isolation_q AS SELECT 1"],
                          "SELECT name FROM pg_prepared_statements WHERE from_sql"),
    "temp-table": (["CREATE TEMP TABLE iso_t (a int)"], TEMP),
    "temporary-table": (["CREATE TEMPORARY TABLE iso_t (a int)"], TEMP),
    "pg_temp-table": (["CREATE TABLE pg_temp.iso_t (a int)"], TEMP),
    "select-into-temp": (["SELECT 1 AS a INTO TEMP iso_t"], TEMP),
    "create-temp-as": (["CREATE TEMP TABLE iso_t AS SELECT 1 AS a"], TEMP),
    "with-hold-cursor": (["DECLARE iso_c CURSOR WITH HOLD FOR SELECT 1"], "SELECT name FROM pg_cursors"),
    "advisory-select": (["SELECT pg_advisory_lock_shared(11)"], LOCKS),
    "advisory-cte": (["WITH l AS (SELECT pg_advisory_lock_shared(12) AS v) SELECT 1 FROM l"], LOCKS),
    "advisory-function": (["SELECT pgpool_test_lock_it(13)"], LOCKS),
}
ROLE_FORMS = {
    "set-role": (["SET ROLE app"], "SELECT current_user, session_user"),
    "set-session-authorization": (["SET SESSION AUTHORIZATION app"], "SELECT current_user, session_user"),
    "set_config-role": (["SELECT set_config('role', 'app', false)"], "SELECT current_user, session_user"),
}


def _pin_cases():
    for forms, user in ((PIN_FORMS, "app"), (ROLE_FORMS, "postgres")):
        for name, form in forms.items():
            for path in PATHS:
                yield pytest.param(name, path, form, user, id=f"{name}-{path}")


@pytest.mark.parametrize("name, path, form, user", list(_pin_cases()))
async def test_state_that_cannot_move_pins_its_client(pgpool_proc, postgres, helper_functions, name, path, form,
                                                      user):
    setup, check = form
    proc = pgpool_proc({"default_pool_size": 2, "query_wait_timeout": 5})
    driver = PATHS[path]
    trace: list[str] = []
    a = await open_twin(proc, postgres, name="A", driver=driver, user=user, trace=trace)
    b = await open_twin(proc, postgres, name="B", driver=driver, user=user, trace=trace)
    try:
        await run_setup(a, path, setup)
        await b.same(check)
        await a.same(check)
        await b.same(check)
        await wait_until(lambda: "pinned to server" in proc.log_text(), timeout=5, message="no pin logged")
    finally:
        await a.close()
        await b.close()


# ---- pins are released when the state is gone (pool of 1) ---------------------------------------

@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("make, drop", [
    ("LISTEN isolation_ch", "UNLISTEN *"),
    ("SELECT pg_advisory_lock(21)", "SELECT pg_advisory_unlock(21)"),
    ("CREATE TEMP TABLE iso_t (a int)", "DROP TABLE iso_t"),
    ("DECLARE iso_c CURSOR WITH HOLD FOR SELECT 1", "CLOSE iso_c"),
], ids=["listen", "advisory", "temp", "cursor"])
async def test_a_pin_is_released_when_the_state_is_gone(pgpool_proc, postgres, path, make, drop):
    proc = pgpool_proc({"default_pool_size": 1, "query_wait_timeout": 5})
    a = await open_twin(proc, postgres, name="A", driver=PATHS[path])
    b = await open_twin(proc, postgres, name="B", driver=PATHS[path])
    try:
        if "advisory" in make:     # pooled and direct A would block each other on one exclusive key
            await a.run(lambda conn: conn.execute(make.replace("21", "21" if conn is a.pooled else "22")))
            await a.run(lambda conn: conn.execute(drop.replace("21", "21" if conn is a.pooled else "22")))
        else:
            await run_setup(a, path, [make, drop])
        await b.same("SELECT 1")    # a pinned A would keep the only server: query_wait_timeout
        await wait_until(lambda: "unpinned" in proc.log_text(), timeout=5, message="no unpin logged")
    finally:
        await a.close()
        await b.close()


# ---- named statements: the verdict holds at every execution (case 2) ------------------------------

@pytest.mark.parametrize("driver", ["psycopg", "psycopg-prepare0", "asyncpg"])
async def test_lock_unlock_loop_never_leaks_the_lock(pgpool_proc, postgres, driver):
    """psycopg prepares a statement at its 6th execution, asyncpg at its first: each later
    execution by name must still pin (lock) and be checked (unlock). Pool of 2, LIFO: B gets
    A's server exactly when A is not pinned to it."""
    proc = pgpool_proc({"default_pool_size": 2, "query_wait_timeout": 5})
    a = await open_twin(proc, postgres, name="A", driver=driver)
    b = await open_twin(proc, postgres, name="B", driver=driver)

    def key(conn) -> int:
        return 31 if conn is a.pooled else 32

    async def lock(conn):
        if driver == "asyncpg":
            return await conn.fetchval("SELECT pg_advisory_lock($1)", key(conn))
        return await (await conn.execute("SELECT pg_advisory_lock(%s)", (key(conn),))).fetchall()

    async def unlock(conn):
        if driver == "asyncpg":
            return await conn.fetchval("SELECT pg_advisory_unlock($1)", key(conn))
        return await (await conn.execute("SELECT pg_advisory_unlock(%s)", (key(conn),))).fetchall()

    async def held(conn):
        sql = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        if driver == "asyncpg":
            return await conn.fetchval(sql)
        return (await (await conn.execute(sql)).fetchone())[0]

    try:
        for _ in range(8):
            await a.same(lock)
            await b.same(held)     # B (waiting while A is pinned) never sees A's lock
            assert await a.same(unlock) in (True, ((True,),))
            await b.same(held)
        assert await _locks_on(postgres, 31) == 0
    finally:
        await a.close()
        await b.close()


async def _locks_on(postgres, key: int) -> int:
    conn = await asyncpg.connect(postgres.dsn(dbname="app"))
    try:
        return await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = $1", key)
    finally:
        await conn.close()


async def test_a_try_lock_that_fails_does_not_pin(pgpool_proc, postgres):
    holder = await asyncpg.connect(postgres.dsn(dbname="app"))
    await holder.fetchval("SELECT pg_advisory_lock(41)")
    proc = pgpool_proc({"default_pool_size": 1, "query_wait_timeout": 5})
    a = await open_twin(proc, postgres, name="A", driver="asyncpg")
    b = await open_twin(proc, postgres, name="B", driver="asyncpg")
    try:
        assert await a.same("SELECT pg_try_advisory_lock(41)") == ("rows", ((False,),))
        await b.same("SELECT 1")
        assert "pinned to server" not in proc.log_text()
    finally:
        await a.close()
        await b.close()
        await holder.close()


# ---- RESET goes back to the client's startup values, in every form (case 1) ----------------------

STARTUP = {"search_path": "tenant_b", "statement_timeout": "4321", "application_name": "tenant-app"}
SETTINGS_NOW = ("SELECT current_setting('search_path'), current_setting('statement_timeout'), "
                "current_setting('application_name'), current_setting('work_mem')")


def startup_kwargs(driver: str) -> dict:
    if driver == "asyncpg":
        return {"server_settings": dict(STARTUP)}
    return {"options": "-c search_path=tenant_b -c statement_timeout=4321", "application_name": "tenant-app"}


RESET_FORMS = {
    "reset-all": ["RESET ALL"],
    "discard-all": ["DISCARD ALL"],
    "reset-each": ["RESET search_path", "RESET statement_timeout", "RESET application_name", "RESET work_mem"],
    "set-to-default": ["SET search_path TO DEFAULT", "SET statement_timeout TO DEFAULT",
                       "SET application_name TO DEFAULT", "SET work_mem TO DEFAULT"],
    "reset-all-in-transaction": ["BEGIN", "RESET ALL", SETTINGS_NOW, "COMMIT"],
    "reset-all-rolled-back": ["BEGIN", "RESET ALL", SETTINGS_NOW, "ROLLBACK"],
}
RESET_SIMPLE_ONLY = {
    "asyncpg-pool-reset": ["SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;"],
    "multi-statement": ["SELECT 1; RESET ALL; SELECT 2"],
}


def _reset_cases():
    for name, steps in RESET_FORMS.items():
        for path in PATHS:
            yield pytest.param(path, steps, id=f"{name}-{path}")
    for name, steps in RESET_SIMPLE_ONLY.items():
        yield pytest.param("simple", steps, id=f"{name}-simple")


@pytest.mark.parametrize("path, reset", list(_reset_cases()))
async def test_reset_goes_back_to_the_clients_startup_values(pgpool_proc, postgres, path, reset):
    proc = pgpool_proc({"default_pool_size": 1, "query_wait_timeout": 5})
    driver = PATHS[path]
    trace: list[str] = []
    a = await open_twin(proc, postgres, name="A", driver=driver, trace=trace, **startup_kwargs(driver))
    b = await open_twin(proc, postgres, name="B", driver=driver, trace=trace)
    try:
        await a.same(SETTINGS_NOW)
        await run_setup(a, path, ["SET search_path TO other", "SET statement_timeout = 1000",
                                  "SET application_name = 'changed'", "SET work_mem = '2MB'"])
        await b.same(SETTINGS_NOW)
        await run_setup(a, path, reset)
        await a.same(SETTINGS_NOW)
        await b.same(SETTINGS_NOW)
        await a.same(SETTINGS_NOW)
        if driver == "asyncpg":   # what the driver was told in ParameterStatus
            await a.same(lambda conn: asyncio.sleep(0, conn.get_settings().application_name))
    finally:
        await a.close()
        await b.close()


async def test_one_clients_reset_all_never_drops_another_clients_own_set(pgpool_proc, postgres):
    proc = pgpool_proc({"default_pool_size": 1})
    trace: list[str] = []
    a = await open_twin(proc, postgres, name="A", driver="asyncpg", trace=trace)
    b = await open_twin(proc, postgres, name="B", driver="asyncpg", trace=trace)
    try:
        await b.same(simple("SET work_mem = '3MB'"))
        await a.same(simple("SET work_mem = '5MB'"))
        await a.same(simple("SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;"))
        for _ in range(3):
            await b.same("SHOW work_mem")
            await a.same("SHOW work_mem")
    finally:
        await a.close()
        await b.close()


async def test_asyncpg_pool_with_server_settings_keeps_its_search_path(pgpool_proc, postgres):
    """asyncpg's pool sends its reset query (ending in RESET ALL) at every release."""
    proc = pgpool_proc({"default_pool_size": 1})
    settings = {"search_path": "tenant_b"}
    pooled = await asyncpg.create_pool(proc.dsn(), min_size=1, max_size=1, server_settings=settings)
    direct = await asyncpg.create_pool(postgres.dsn(user="app", password="app", dbname="app"), min_size=1,
                                       max_size=1, server_settings=settings)
    other = await open_twin(proc, postgres, name="other", driver="asyncpg")
    try:
        for cycle in range(6):
            seen = []
            for pool in (pooled, direct):
                async with pool.acquire() as conn:
                    seen.append(await conn.fetchval("SHOW search_path"))
                    await conn.execute("SET work_mem = '3MB'")
            assert seen[0] == seen[1] == "tenant_b", (cycle, seen)
            if cycle >= 3:    # then another client takes the server between acquires
                await other.same("SELECT current_setting('search_path'), current_setting('work_mem')")
    finally:
        await other.close()
        await pooled.close()
        await direct.close()


async def test_server_reset_query_always_with_asyncpg_defaults(pgpool_proc, postgres):
    """Case 3: after DISCARD ALL on every release, the shared prepared statements are gone too."""
    proc = pgpool_proc({"default_pool_size": 1, "server_reset_query_always": 1})
    trace: list[str] = []
    a = await open_twin(proc, postgres, name="A", driver="asyncpg", trace=trace)
    b = await open_twin(proc, postgres, name="B", driver="asyncpg", trace=trace)
    try:
        for i in range(6):
            for twin in (a, b):
                await twin.same(lambda conn, i=i: conn.fetchval("SELECT $1::int + 1", i))
                await twin.same("SELECT current_setting('search_path')")
    finally:
        await a.close()
        await b.close()


# ---- settings: session_pinning = false, session_audit = always, counters --------------------------

async def test_state_found_by_the_audit_is_not_handed_over_when_pinning_is_off(pgpool_proc, postgres,
                                                                                helper_functions):
    """Nothing can refuse a lock taken inside a function: the server is reset before its next client."""
    proc = pgpool_proc({"default_pool_size": 1, "session_pinning": False})
    a = await open_twin(proc, postgres, name="A", driver="asyncpg")
    b = await open_twin(proc, postgres, name="B", driver="asyncpg")
    try:
        await a.same("SELECT pgpool_test_lock_it(51)")
        await b.same(LOCKS)
        await wait_until(lambda: "session_pinning is off" in proc.log_text(), timeout=5)
    finally:
        await a.close()
        await b.close()


@pytest.fixture
def locking_trigger(postgres):
    async def run(sql: str) -> None:
        conn = await asyncpg.connect(postgres.dsn(dbname="app"))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()
    asyncio.run(run("""
        CREATE TABLE IF NOT EXISTS pgpool_isolation_locked (a int);
        GRANT ALL ON pgpool_isolation_locked TO PUBLIC;
        CREATE OR REPLACE FUNCTION pgpool_test_lock_trigger() RETURNS trigger LANGUAGE plpgsql AS
          $$ BEGIN PERFORM pg_advisory_lock_shared(61); RETURN NEW; END $$;
        CREATE OR REPLACE TRIGGER pgpool_isolation_lock BEFORE INSERT ON pgpool_isolation_locked
          FOR EACH ROW EXECUTE FUNCTION pgpool_test_lock_trigger();
    """))
    yield
    asyncio.run(run("DROP TABLE pgpool_isolation_locked; DROP FUNCTION pgpool_test_lock_trigger()"))


async def test_session_audit_always_sees_state_no_statement_shows(pgpool_proc, postgres, locking_trigger):
    """A trigger takes the lock: the INSERT's text is plain, only an audit of every transaction sees it."""
    proc = pgpool_proc({"default_pool_size": 2, "session_audit": "always"})
    a = await open_twin(proc, postgres, name="A", driver="asyncpg")
    b = await open_twin(proc, postgres, name="B", driver="asyncpg")
    try:
        await a.same("INSERT INTO pgpool_isolation_locked VALUES (1)")
        await b.same(LOCKS)
        await a.same(LOCKS)
        await wait_until(lambda: "pinned to server" in proc.log_text(), timeout=5)
    finally:
        await a.close()
        await b.close()


async def test_audits_adopted_settings_and_pins_are_counted_and_orm_traffic_pays_none(pgpool_proc, postgres):
    metrics_port = free_port()
    proc = pgpool_proc({"default_pool_size": 2, "admin_users": "postgres", "metrics_port": metrics_port})

    async def pools() -> dict:
        async with await psycopg.AsyncConnection.connect(proc.dsn("postgres", dbname="pgbouncer"), autocommit=True,
                                                         prepare_threshold=None) as console:
            cur = await console.execute("SHOW POOLS")
            names = [d.name for d in cur.description]
            rows = [dict(zip(names, row)) for row in await cur.fetchall()]
        return next(r for r in rows if r["database"] == "app" and r["user"] == "app")

    # What Prefect's API sends: SQLAlchemy 2 with the asyncpg dialect, defaults.
    engine = create_async_engine(proc.dsn().replace("postgresql://", "postgresql+asyncpg://", 1))
    try:
        for _ in range(5):
            async with engine.begin() as conn:
                await conn.execute(text("CREATE TABLE IF NOT EXISTS pgpool_orm (id int PRIMARY KEY, name text)"))
                await conn.execute(text("INSERT INTO pgpool_orm VALUES (:i, :n) ON CONFLICT (id) DO UPDATE SET "
                                        "name = excluded.name"), {"i": 1, "n": "x"})
                await conn.execute(text("SELECT count(*), max(name), now() FROM pgpool_orm WHERE id IN (:a, :b)"),
                                   {"a": 1, "b": 2})
    finally:
        await engine.dispose()
    assert int((await pools())["session_audits"]) == 0

    conn = await asyncpg.connect(proc.dsn())
    try:
        await conn.execute("SELECT set_config('work_mem', '5MB', false)")
        await conn.execute("LISTEN counted")
        await wait_until(lambda: "pinned to server" in proc.log_text(), timeout=5)   # the audit answered
        row = await pools()
        assert int(row["session_audits"]) == 2 and int(row["settings_adopted"]) == 1 and row["pins"] == "listen=1"
        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode())
        assert 'pgpool_session_audits_total{database="app",user="app"} 2.0' in body
        assert 'pgpool_session_settings_adopted_total{database="app",user="app"} 1.0' in body
        assert 'pgpool_session_pins_total{cause="listen",database="app",user="app"} 1.0' in body
    finally:
        await conn.close()


# ---- property: any interleaving of settings changes, 3 clients, a pool of 1 ------------------------

PROPERTY_STEPS = [
    "SET work_mem = '3MB'", "SELECT set_config('work_mem', '5MB', false)", "RESET work_mem", "RESET ALL",
    "SET search_path TO other", "SET search_path TO DEFAULT", "DISCARD ALL",
    "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ",
    "DO $$ BEGIN PERFORM set_config('statement_timeout', '7000', false); END $$",
    "SET statement_timeout = 9000; SELECT 1", "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;",
    "BEGIN; SET work_mem = '6MB'; ROLLBACK", "BEGIN; SAVEPOINT s; SET work_mem = '7MB'; ROLLBACK TO s; COMMIT",
    "SELECT 1",
]
PROPERTY_LOOK = ("SELECT current_setting('work_mem'), current_setting('search_path'), "
                 "current_setting('default_transaction_isolation'), current_setting('statement_timeout')")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 2), st.sampled_from(PROPERTY_STEPS)), min_size=1, max_size=8))
def test_any_interleaving_of_settings_matches_direct_connections(pgpool_proc, postgres, steps):
    proc = pgpool_proc({"default_pool_size": 1})

    async def scenario() -> None:
        trace: list[str] = []
        twins = [await open_twin(proc, postgres, name=name, driver="asyncpg", trace=trace, **kwargs)
                 for name, kwargs in (("A", {"server_settings": {"search_path": "tenant_a"}}),
                                      ("B", {"server_settings": {"work_mem": "2MB"}}), ("C", {}))]
        try:
            for who, sql in steps:
                await twins[who].same(simple(sql))
                for twin in twins:
                    await twin.same(PROPERTY_LOOK)
        finally:
            for twin in twins:
                await twin.close()

    asyncio.run(scenario())


async def test_a_set_prepared_without_a_server_is_still_followed(pgpool_proc, postgres):
    """Case 5: psycopg prepares (Parse + Sync) before executing; pgpool answers a Parse of SQL it
    already knows without a server, and the SET it names must still be followed at Execute."""
    proc = pgpool_proc({"default_pool_size": 1})
    trace: list[str] = []
    twins = [await open_twin(proc, postgres, name=name, driver="psycopg-prepare0", trace=trace) for name in "ABC"]
    a, b, c = twins
    try:
        await a.same("SET statement_timeout = 4321")
        await a.same("RESET statement_timeout")
        await b.same("SET statement_timeout = 4321")     # the same SQL: its Parse is answered locally
        await c.same("SHOW statement_timeout")
        await b.same("SHOW statement_timeout")
        await a.same("SHOW statement_timeout")
    finally:
        for twin in twins:
            await twin.close()
