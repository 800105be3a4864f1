"""Drivers with their defaults in transaction mode: named prepared statements across server
connections, extended-protocol SET, SQLAlchemy from two processes, psycopg server-side prepare and
pipelines, pgbench -M prepared."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import asyncpg
import psycopg
import pytest

from benchmarks.targets import find_client_program
from pgpool.protocol import messages as m
from tests.frontend import SYNC, bind, close, execute, parse
from tests.integration.helpers import RawClient


async def run(raw: RawClient, data: bytes) -> list[tuple[bytes, bytes]]:
    raw.send(data)
    return await raw.read_until(b"Z")


def types(replies) -> str:
    return "".join(t.decode() for t, _ in replies)


def first_value(replies) -> str:
    for t, body in replies:
        if t == b"D":
            return m.first_column(body, 0, len(body))
    raise AssertionError(f"no DataRow in {types(replies)}")


async def test_asyncpg_default_cache_300_clients_pool_of_5(pgpool_proc):
    proc = pgpool_proc({"default_pool_size": 5, "max_client_conn": 400})

    async def client(i: int):
        conn = await asyncpg.connect(proc.dsn())          # asyncpg defaults: named statements, cache 100
        try:
            for j in range(5):
                assert await conn.fetchval("SELECT $1::int * 2", i) == i * 2
                async with conn.transaction():
                    assert await conn.fetchval("SELECT $1::text || $2::text", str(i), str(j)) == f"{i}{j}"
                    rows = await conn.fetch("SELECT g FROM generate_series(1, $1::int) g", j + 1)
                    assert len(rows) == j + 1
                stmt = await conn.prepare("SELECT $1::int + 1")
                assert await stmt.fetchval(i) == i + 1
        finally:
            await conn.close()

    results = await asyncio.gather(*(client(i) for i in range(300)), return_exceptions=True)
    assert [r for r in results if r is not None] == []


async def test_same_names_different_sql_and_close_reparse(pgpool_proc):
    proc = pgpool_proc({"default_pool_size": 1})
    a, b = await RawClient.open(proc.port), await RawClient.open(proc.port)
    await a.login_md5("app", "app")
    await b.login_md5("app", "app")
    await run(a, parse("s", "SELECT 'from a'") + SYNC)
    await run(b, parse("s", "SELECT 'from b'") + SYNC)
    for _ in range(3):   # interleaved over the single server
        assert first_value(await run(a, bind("s") + execute() + SYNC)) == "from a"
        assert first_value(await run(b, bind("s") + execute() + SYNC)) == "from b"
    # Close, then the name is free again, as in a plain session.
    assert types(await run(a, close("S", "s") + SYNC)) == "3Z"
    error = await run(a, bind("s") + execute() + SYNC)
    assert types(error) == "EZ" and b"26000" in error[0][1] and b'"s"' in error[0][1]
    await run(a, parse("s", "SELECT 'a again'") + SYNC)
    assert first_value(await run(a, bind("s") + execute() + SYNC)) == "a again"
    # Reusing a live name gets Postgres' own 42P05, and the connection stays usable.
    dup = await run(b, parse("s", "SELECT 1") + SYNC)
    assert types(dup) == "EZ" and b"42P05" in dup[0][1]
    assert first_value(await run(b, bind("s") + execute() + SYNC)) == "from b"
    a.close()
    b.close()


async def test_parse_error_inside_pipeline_and_deallocate_all(pgpool_proc):
    proc = pgpool_proc({"default_pool_size": 1})
    raw = await RawClient.open(proc.port)
    await raw.login_md5("app", "app")
    replies = await run(raw, parse("good", "SELECT 1") + parse("bad", "SELEC oops") + parse("later", "SELECT 2")
                        + bind("good") + execute() + SYNC)
    assert types(replies) == "1EZ"          # Postgres skips everything after the error up to Sync
    assert b"42601" in replies[1][1]
    # "good" was parsed before the error: it exists; "later" was skipped: it does not.
    assert first_value(await run(raw, bind("good") + execute() + SYNC)) == "1"
    missing = await run(raw, bind("later") + execute() + SYNC)
    assert types(missing) == "EZ" and b"26000" in missing[0][1]
    await run(raw, m.query("DEALLOCATE ALL"))
    gone = await run(raw, bind("good") + execute() + SYNC)
    assert types(gone) == "EZ" and b"26000" in gone[0][1]
    raw.close()


async def test_max_prepared_statements_eviction(pgpool_proc):
    proc = pgpool_proc({"default_pool_size": 1, "max_prepared_statements": 2})
    raw = await RawClient.open(proc.port)
    await raw.login_md5("app", "app")
    names = [f"q{i}" for i in range(5)]
    for i, name in enumerate(names):
        await run(raw, parse(name, f"SELECT {i}") + SYNC)
    for _ in range(2):
        for i, name in enumerate(names):    # each use re-prepares what was evicted
            assert first_value(await run(raw, bind(name) + execute() + SYNC)) == str(i)
    count = first_value(await run(raw, m.query("SELECT count(*) FROM pg_prepared_statements")))
    assert int(count) <= 2
    raw.close()


async def test_extended_protocol_set_follows_client(pgpool_proc):
    proc = pgpool_proc({"default_pool_size": 2})
    setter = await asyncpg.connect(proc.dsn())
    other = await asyncpg.connect(proc.dsn())
    try:
        await setter.execute("SET search_path TO pg_catalog")          # simple protocol
        await setter.fetch("SET statement_timeout = '4s'")             # extended protocol (prepared)
        for _ in range(4):
            await other.execute("BEGIN")
            assert await setter.fetchval("SHOW statement_timeout") == "4s"
            assert await setter.fetchval("SHOW search_path") == "pg_catalog"
            await other.execute("COMMIT")
            assert await other.fetchval("SHOW statement_timeout") == "0"
    finally:
        await setter.close()
        await other.close()


SQLALCHEMY_WORKER = textwrap.dedent("""
    import asyncio, sys
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    async def main(url):
        engine = create_async_engine(url, pool_size=10, max_overflow=0, pool_pre_ping=True)
        async def job(i):
            for j in range(10):
                async with engine.begin() as conn:
                    row = (await conn.execute(text("SELECT CAST(:a AS int) + CAST(:b AS int) AS s, current_setting('application_name') AS app"),
                                              {"a": i, "b": j})).one()
                    assert row.s == i + j, row
        await asyncio.gather(*(job(i) for i in range(20)))
        await engine.dispose()
        print("ok")
    asyncio.run(main(sys.argv[1]))
""")


async def test_sqlalchemy_asyncpg_from_two_processes(pgpool_proc):
    proc = pgpool_proc({"default_pool_size": 5, "max_client_conn": 100})
    url = proc.dsn().replace("postgresql://", "postgresql+asyncpg://")
    procs = [await asyncio.create_subprocess_exec(sys.executable, "-c", SQLALCHEMY_WORKER, url,
                                                  stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
             for _ in range(2)]
    for p in procs:
        out, err = await asyncio.wait_for(p.communicate(), 120)
        assert p.returncode == 0, err.decode()[-3000:]
        assert out.decode().strip() == "ok"


def test_psycopg_server_side_prepare_and_pipeline(pgpool_proc):
    proc = pgpool_proc({"default_pool_size": 2})
    conns = [psycopg.connect(proc.dsn(), prepare_threshold=0, autocommit=True) for _ in range(4)]
    try:
        for round_ in range(5):
            for i, conn in enumerate(conns):
                # Each connection names its statements _pg3_0, _pg3_1, ...: same names, different SQL.
                query = f"SELECT %s::int + {i}" if i % 2 else f"SELECT %s::int * {i + 1}"
                expected = round_ + i if i % 2 else round_ * (i + 1)
                assert conn.execute(query, (round_,)).fetchone()[0] == expected
                with conn.pipeline():
                    cursors = [conn.execute("SELECT %s::int", (k,)) for k in range(5)]
                assert [c.fetchone()[0] for c in cursors] == list(range(5))
    finally:
        for conn in conns:
            conn.close()


def test_pgbench_prepared_100_clients_pool_of_10(pgpool_proc):
    proc = pgpool_proc({"default_pool_size": 10, "max_client_conn": 200})
    env = {"PGPASSWORD": "app", "PATH": "/usr/bin:/bin"}
    pgbench = find_client_program("pgbench")
    init = subprocess.run([pgbench, "-i", "-s", "1", "-h", "127.0.0.1", "-p", str(proc.port), "-U", "app", "app"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert init.returncode == 0, init.stderr
    run = subprocess.run([pgbench, "-n", "-M", "prepared", "-c", "100", "-j", "2", "-t", "30", "-h", "127.0.0.1",
                          "-p", str(proc.port), "-U", "app", "app"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "number of transactions actually processed: 3000/3000" in run.stdout, run.stdout
    assert "number of failed transactions: 0" in run.stdout


async def test_a_flush_after_the_transaction_takes_no_server(pgpool_proc):
    """psycopg sometimes sends Flush after its pipeline's ReadyForQuery. Nothing is pending then; a
    server taken for it would never be released (no reply comes), and a pool of 1 would deadlock."""
    proc = pgpool_proc({"default_pool_size": 1, "query_wait_timeout": 5})
    first = await RawClient.open(proc.port)
    await first.login_md5("app", "app")
    second = await RawClient.open(proc.port)
    await second.login_md5("app", "app")
    assert first_value(await run(first, m.query("SELECT 1"))) == "1"
    first.send(m.FLUSH)
    first.send(m.FLUSH + m.FLUSH)
    assert first_value(await run(second, m.query("SELECT 2"))) == "2"   # before: query_wait_timeout
    assert first_value(await run(first, m.query("SELECT 3"))) == "3"
    first.close()
    second.close()


async def test_known_statement_prepared_without_waiting_for_a_server(pgpool_proc):
    """libpq's PQprepare blocks its thread: a Parse of SQL some server already accepted is answered
    at once, even when every server is busy (pgbench -M prepared would deadlock otherwise)."""
    proc = pgpool_proc({"default_pool_size": 1})
    first = await RawClient.open(proc.port)
    await first.login_md5("app", "app")
    await run(first, parse("p1", "SELECT 42") + SYNC)
    await run(first, m.query("BEGIN"))                       # holds the only server
    second = await RawClient.open(proc.port)
    await second.login_md5("app", "app")
    assert types(await run(second, parse("mine", "SELECT 42") + SYNC)) == "1Z"
    second.send(parse("other", "SELECT 43") + SYNC)          # never parsed anywhere: needs the server
    with pytest.raises(asyncio.TimeoutError):
        await second.read_message(timeout=0.5)
    await run(first, m.query("COMMIT"))
    assert types(await second.read_until(b"Z")) == "1Z"
    assert first_value(await run(second, bind("mine") + execute() + SYNC)) == "42"
    first.close()
    second.close()
