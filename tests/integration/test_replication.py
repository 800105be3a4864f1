"""Replication connections through pgpool, as PgBouncer 1.23+ passes them: session mode, never pooled.

pg_receivewal (physical) and pg_recvlogical with a logical slot (replication=database) run
through pgpool against a cluster with wal_level=logical; the WAL segment and the decoded rows
they receive are checked, and each replication client has had its own server connection,
closed when it left (PgBouncer's documentation, config.md / usage.md "replication").
"""

from __future__ import annotations

import signal
import subprocess

import asyncpg
import pytest

from benchmarks.targets import PgpoolProcess, PostgresCluster, find_pg_bindir
from tests.conftest import TEST_USERS
from tests.integration.test_admin import ADMIN, console, show
from tests.waiting import wait_until


@pytest.fixture(scope="module")
def cluster():
    server = PostgresCluster(replication=True).start()
    yield server
    server.stop()


@pytest.fixture
def pooler(cluster):
    started: list[PgpoolProcess] = []

    def start(settings=None) -> PgpoolProcess:
        proc = PgpoolProcess(backend_host=cluster.host, backend_port=cluster.port, users=dict(TEST_USERS),
                             settings={**ADMIN, **(settings or {})})
        started.append(proc)
        return proc.start()
    yield start
    for proc in started:
        proc.stop()
        print(proc.log_text()[-4000:])


def tool(name: str) -> str:
    return str(find_pg_bindir() / name)


def conninfo(proc, dbname: str | None = None) -> str:
    text = f"host=127.0.0.1 port={proc.port} user=postgres password=postgres"
    return text + (f" dbname={dbname}" if dbname else "")


async def replication_rows(admin) -> list[dict]:
    return [r for r in await show(admin, "CLIENTS") if r["replication"] != "none"]


async def test_pg_receivewal_streams_wal_through_pgpool(pooler, cluster, tmp_path):
    proc = pooler()
    admin = await console(proc)
    wal_dir = tmp_path / "wal"
    wal_dir.mkdir()
    receiver = subprocess.Popen([tool("pg_receivewal"), "-D", str(wal_dir), "-d", conninfo(proc), "--no-loop",
                                 "--no-sync"], stderr=subprocess.PIPE, text=True)
    try:
        rows = await wait_until(lambda: replication_rows(admin), message="pg_receivewal connected through pgpool")
        assert rows[0]["replication"] == "physical" and rows[0]["user"] == "postgres"
        direct = await asyncpg.connect(cluster.dsn())
        try:
            await wait_until(lambda: direct.fetchval("SELECT count(*) FROM pg_stat_replication"),
                             message="a walsender for the pgpool connection")
            segment = await direct.fetchval("SELECT pg_walfile_name(pg_current_wal_lsn())")
            await direct.execute("CREATE TABLE IF NOT EXISTS wal_filler (x int)")
            await direct.execute("INSERT INTO wal_filler SELECT generate_series(1, 1000)")
            await direct.execute("SELECT pg_switch_wal()")
            done = wal_dir / segment
            await wait_until(done.exists, timeout=20, message=f"completed WAL segment {segment} received")
            assert done.stat().st_size == 16 * 1024 * 1024
        finally:
            await direct.close()
        # A normal client of the same pgpool is unaffected.
        conn = await asyncpg.connect(proc.dsn("app"))
        assert await conn.fetchval("SELECT 1") == 1
        await conn.close()
    finally:
        receiver.send_signal(signal.SIGINT)
        receiver.wait(15)
    # Never pooled: the server connection went with its client.
    await wait_until(lambda: _no_replication(admin), message="replication client and its pool gone")
    await wait_until(lambda: _walsenders(cluster, 0), message="the walsender ended with its client")
    await admin.close()


async def _no_replication(admin) -> bool:
    return not await replication_rows(admin) and all(r["user"] != "postgres" or r["sv_active"] == 0
                                                     for r in await show(admin, "POOLS"))


async def _walsenders(cluster, expected: int) -> bool:
    conn = await asyncpg.connect(cluster.dsn())
    try:
        return await conn.fetchval("SELECT count(*) FROM pg_stat_replication") == expected
    finally:
        await conn.close()


async def test_logical_slot_through_pgpool(pooler, cluster, tmp_path):
    proc = pooler()
    admin = await console(proc)
    direct = await asyncpg.connect(cluster.dsn(dbname="app"))
    out = tmp_path / "changes.txt"
    info = conninfo(proc, "app")
    create = subprocess.run([tool("pg_recvlogical"), "-d", info, "--slot", "pgpool_slot", "--create-slot",
                             "-P", "test_decoding"], capture_output=True, text=True, timeout=30)
    assert create.returncode == 0, create.stderr
    receiver = subprocess.Popen([tool("pg_recvlogical"), "-d", info, "--slot", "pgpool_slot", "--start", "-f", str(out),
                                 "--no-loop", "-F", "1", "-s", "1"], stderr=subprocess.PIPE, text=True)
    try:
        rows = await wait_until(lambda: replication_rows(admin), message="pg_recvlogical connected through pgpool")
        assert rows[0]["replication"] == "logical" and rows[0]["database"] == "app"
        await direct.execute("CREATE TABLE IF NOT EXISTS logical_rows (id int primary key, note text)")
        await direct.execute("INSERT INTO logical_rows VALUES (1, 'through pgpool'), (2, 'second')")

        def received() -> bool:
            text = out.read_text() if out.exists() else ""
            return "through pgpool" in text and "second" in text and "COMMIT" in text
        await wait_until(received, timeout=20, message="decoded INSERTs from the logical slot")
        assert "table public.logical_rows: INSERT: id[integer]:1 note[text]:'through pgpool'" in out.read_text()
    finally:
        receiver.send_signal(signal.SIGINT)
        receiver.wait(15)
        drop = subprocess.run([tool("pg_recvlogical"), "-d", info, "--slot", "pgpool_slot", "--drop-slot"],
                              capture_output=True, text=True, timeout=30)
        await direct.close()
    assert drop.returncode == 0, drop.stderr
    await wait_until(lambda: _no_replication(admin), message="replication client gone")
    await admin.close()


async def test_physical_replication_needs_the_replication_keyword_under_hba(pooler, tmp_path):
    hba = tmp_path / "hba.conf"
    hba.write_text("host all postgres 127.0.0.1/32 scram-sha-256\n")
    proc = pooler({"auth_type": "hba", "auth_hba_file": str(hba)})
    result = subprocess.run([tool("pg_receivewal"), "-D", str(tmp_path), "-d", conninfo(proc), "--no-loop"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "no authentication method is found" in result.stderr
    # Logical replication is matched by its database, like any other connection.
    result = subprocess.run([tool("pg_recvlogical"), "-d", conninfo(proc, "app"), "--slot", "hba_slot",
                             "--create-slot", "-P", "test_decoding"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    subprocess.run([tool("pg_recvlogical"), "-d", conninfo(proc, "app"), "--slot", "hba_slot", "--drop-slot"],
                   capture_output=True, text=True, timeout=30, check=True)


async def test_replication_parameter_values_as_postgres(pooler):
    proc = pooler()
    with pytest.raises(asyncpg.ProtocolViolationError, match='invalid value for parameter "replication": "maybe"'):
        await asyncpg.connect(proc.dsn("app"), server_settings={"replication": "maybe"})
    # "false" is an ordinary connection.
    conn = await asyncpg.connect(proc.dsn("app"), server_settings={"replication": "false"})
    assert await conn.fetchval("SELECT 1") == 1
    await conn.close()
