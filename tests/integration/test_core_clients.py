"""Real clients through pgpool in transaction mode: asyncpg, psycopg 3, psql, pgbench; bursts, COPY, modes."""

from __future__ import annotations

import asyncio
import io
import subprocess

import asyncpg
import psycopg
import pytest

from benchmarks.targets import find_client_program
from tests.integration.helpers import connect, server_connections
from tests.waiting import wait_until


async def test_burst_500_clients_over_pool_of_10(pgpool_proc, postgres):
    proc = pgpool_proc({"default_pool_size": 10, "reserve_pool_size": 2, "max_client_conn": 600,
                        "reserve_pool_timeout": 0.5})
    peak = 0
    done = asyncio.Event()

    async def sample():
        nonlocal peak
        monitor = await asyncpg.connect(postgres.dsn())
        try:
            while not done.is_set():
                n = await monitor.fetchval("SELECT count(*) FROM pg_stat_activity "
                                           "WHERE backend_type = 'client backend' AND usename = 'app'")
                peak = max(peak, n)
                await asyncio.sleep(0.02)
        finally:
            await monitor.close()

    async def client(i: int):
        conn = await connect(proc)
        try:
            for j in range(20):
                async with conn.transaction():
                    assert await conn.fetchval("SELECT $1::int + $2::int", i, j) == i + j
        finally:
            await conn.close()

    sampler = asyncio.create_task(sample())
    results = await asyncio.gather(*(client(i) for i in range(500)), return_exceptions=True)
    done.set()
    await sampler
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    assert 1 <= peak <= 12, f"Postgres saw {peak} server connections; pool 10 + reserve 2 allowed"


async def test_asyncpg_defaults_simple_and_extended(pgpool_proc):
    proc = pgpool_proc({"default_pool_size": 2})
    conn = await connect(proc)
    try:
        assert await conn.fetchval("SELECT 41 + 1") == 42
        rows = await conn.fetch("SELECT g, repeat('x', g) FROM generate_series(1, 100) g")
        assert len(rows) == 100 and rows[-1][1] == "x" * 100
        await conn.execute("SELECT 1; SELECT 2")   # multi-statement simple query
        with pytest.raises(asyncpg.DivisionByZeroError):
            await conn.fetchval("SELECT 1/0")
        assert await conn.fetchval("SELECT 'still fine'") == "still fine"
    finally:
        await conn.close()


def test_psycopg_pipeline_and_errors(pgpool_proc):
    proc = pgpool_proc({"default_pool_size": 1})
    with psycopg.connect(proc.dsn()) as conn:
        with conn.pipeline():
            cursors = [conn.execute("SELECT %s::int * 2", (i,)) for i in range(50)]
        assert [c.fetchone()[0] for c in cursors] == [i * 2 for i in range(50)]
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM no_such_table")
        conn.rollback()
        with conn.transaction():
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS tmp_pipe (x int)")
            conn.execute("INSERT INTO tmp_pipe SELECT generate_series(1, 10)")
            assert conn.execute("SELECT count(*) FROM tmp_pipe").fetchone()[0] == 10


def test_copy_round_trips_10_mb(pgpool_proc, postgres):
    proc = pgpool_proc({"default_pool_size": 2})
    postgres.run_sql("DROP TABLE IF EXISTS copy_test; CREATE TABLE copy_test (id int, payload text); "
                     "GRANT ALL ON copy_test TO app", dbname="app")
    line = "x" * 1000
    rows = 10_500   # about 10.5 MB
    with psycopg.connect(proc.dsn(), autocommit=True) as conn:
        with conn.cursor().copy("COPY copy_test (id, payload) FROM STDIN") as copy:
            for i in range(rows):
                copy.write_row((i, line))
        out = io.BytesIO()
        with conn.cursor().copy("COPY copy_test TO STDOUT") as copy:
            for block in copy:
                out.write(block)
        assert out.getbuffer().nbytes > 10_000_000
        assert conn.execute("SELECT count(*), sum(length(payload)) FROM copy_test").fetchone() == (rows, rows * 1000)
    # The server went back to the pool: a second client can run on a pool of... the same two servers.
    with psycopg.connect(proc.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_copy_in_extended_protocol_then_more_queries(pgpool_proc, postgres):
    """psycopg runs COPY through the extended protocol: the Sync sent before CopyInResponse is ignored by Postgres."""
    proc = pgpool_proc({"default_pool_size": 1})
    postgres.run_sql("DROP TABLE IF EXISTS copy_ext; CREATE TABLE copy_ext (x int); GRANT ALL ON copy_ext TO app",
                     dbname="app")
    with psycopg.connect(proc.dsn()) as conn:
        with conn.cursor() as cur:
            with cur.copy("COPY copy_ext FROM STDIN") as copy:
                for i in range(1000):
                    copy.write_row((i,))
            conn.commit()
            cur.execute("SELECT count(*) FROM copy_ext")
            assert cur.fetchone() == (1000,)
        conn.commit()
    # Another client gets the single server: it was released cleanly.
    with psycopg.connect(proc.dsn()) as other:
        assert other.execute("SELECT count(*) FROM copy_ext").fetchone() == (1000,)


async def test_notices_notifications_and_parameter_status_pass_through(pgpool_proc):
    proc = pgpool_proc({"default_pool_size": 2})
    conn = await connect(proc)
    notices = []
    conn.add_log_listener(lambda c, msg: notices.append(msg.message))
    try:
        await conn.execute("DO $$ BEGIN RAISE NOTICE 'hello from plpgsql'; END $$")
        await wait_until(lambda: notices, message="NoticeResponse not delivered")
        assert notices == ["hello from plpgsql"]
        await conn.execute("SET application_name = 'notice-test'")
        assert conn.get_settings().application_name == "notice-test"
    finally:
        await conn.close()


def test_psql_and_pgbench_simple_and_extended(pgpool_proc, postgres):
    proc = pgpool_proc({"default_pool_size": 4, "max_client_conn": 50})
    env = {"PGPASSWORD": "app", "PATH": "/usr/bin:/bin"}
    psql = find_client_program("psql")
    out = subprocess.run([psql, "-X", "-At", "-h", "127.0.0.1", "-p", str(proc.port), "-U", "app", "-d", "app",
                          "-c", "SELECT 'through pgpool'", "-c", "SHOW client_encoding"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["through", "pgpool", "UTF8"]
    pgbench = find_client_program("pgbench")
    init = subprocess.run([pgbench, "-i", "-s", "1", "-h", "127.0.0.1", "-p", str(proc.port), "-U", "app", "app"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert init.returncode == 0, init.stderr
    for mode in ("simple", "extended"):
        run = subprocess.run([pgbench, "-n", "-M", mode, "-c", "20", "-j", "2", "-t", "50", "-h", "127.0.0.1",
                              "-p", str(proc.port), "-U", "app", "app"],
                             capture_output=True, text=True, env=env, timeout=120)
        assert run.returncode == 0, run.stderr
        assert "number of failed transactions: 0" in run.stdout or "failed" not in run.stdout
        assert "number of transactions actually processed: 1000/1000" in run.stdout, run.stdout


async def test_session_mode_keeps_server_and_resets_on_release(pgpool_proc, postgres):
    proc = pgpool_proc({"pool_mode": "session", "default_pool_size": 1})
    first = await connect(proc)
    pid = await first.fetchval("SELECT pg_backend_pid()")
    await first.execute("CREATE TEMP TABLE session_tmp (x int)")
    assert await first.fetchval("SELECT pg_backend_pid()") == pid      # same server for the whole session
    await first.close()
    second = await connect(proc)
    try:
        assert await second.fetchval("SELECT pg_backend_pid()") == pid   # reused ...
        # ... after DISCARD ALL: the first session's temp table is gone.
        assert await second.fetchval("SELECT count(*) FROM pg_tables WHERE tablename = 'session_tmp'") == 0
    finally:
        await second.close()


async def test_statement_mode_refuses_transaction_blocks(pgpool_proc):
    proc = pgpool_proc({"pool_mode": "statement", "default_pool_size": 1})
    conn = await connect(proc)
    assert await conn.fetchval("SELECT 1") == 1
    with pytest.raises(asyncpg.FeatureNotSupportedError,
                       match=r"transaction blocks not allowed in statement pooling mode \(pool app/app\)"):
        await conn.execute("BEGIN")
    # The BEGIN was rolled back: the same client goes on, outside any transaction.
    assert await conn.fetchval("SELECT now() = statement_timestamp()") is not None
    assert not conn.is_in_transaction()
    await conn.close()
    other = await connect(proc)
    try:
        assert await other.fetchval("SELECT 2") == 2   # the server was rolled back and reused
    finally:
        await other.close()


async def test_transaction_pooling_shares_servers(pgpool_proc, postgres):
    proc = pgpool_proc({"default_pool_size": 2})
    conns = [await connect(proc) for _ in range(10)]
    try:
        for conn in conns:
            assert await conn.fetchval("SELECT 1") == 1
        assert await server_connections(postgres) <= 2
    finally:
        for conn in conns:
            await conn.close()
