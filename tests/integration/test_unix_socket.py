"""Unix sockets: clients through pgpool's socket (psql, asyncpg), pgpool to Postgres over Postgres' socket."""

from __future__ import annotations

import asyncio
import grp
import os
import stat
import subprocess

import asyncpg
import pytest

from benchmarks.targets import find_client_program
from tests.integration.helpers import connect
from tests.waiting import wait_until


def socket_path(directory, port: int) -> str:
    return os.path.join(str(directory), f".s.PGSQL.{port}")


async def test_psql_and_asyncpg_through_the_socket(pgpool_proc, tmp_path):
    group = grp.getgrgid(os.getgid()).gr_name
    proc = pgpool_proc({"unix_socket_dir": str(tmp_path), "unix_socket_mode": "0660", "unix_socket_group": group})
    path = socket_path(tmp_path, proc.port)
    info = os.stat(path)
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o660
    assert info.st_gid == grp.getgrnam(group).gr_gid
    out = subprocess.run([find_client_program("psql"), "-X", "-At", "-h", str(tmp_path), "-p", str(proc.port),
                          "-U", "app", "-d", "app", "-c", "SELECT 'via socket'"],
                         capture_output=True, text=True, timeout=30, env={**os.environ, "PGPASSWORD": "app"})
    assert out.stdout.strip() == "via socket", out.stderr
    conn = await asyncpg.connect(host=str(tmp_path), port=proc.port, user="app", password="app", database="app")
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()
    # TCP still listens beside the socket.
    conn = await connect(proc)
    await conn.close()
    assert "listening on unix:" + path in proc.log_text()


async def test_socket_only_and_removed_on_exit(pgpool_proc, tmp_path):
    """listen_addr empty: no TCP at all; the socket file goes away when pgpool stops."""
    proc = pgpool_proc({"unix_socket_dir": str(tmp_path), "listen_addr": ""})
    conn = await asyncpg.connect(host=str(tmp_path), port=proc.port, user="app", password="app", database="app")
    try:
        assert await conn.fetchval("SELECT 2") == 2
    finally:
        await conn.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", proc.port)
    proc.stop()
    assert not os.path.exists(socket_path(tmp_path, proc.port))


async def test_stale_socket_file_is_replaced(pgpool_proc, tmp_path):
    import socket as socketmod
    from benchmarks.targets import free_port
    port = free_port()
    stale = socketmod.socket(socketmod.AF_UNIX)
    stale.bind(socket_path(tmp_path, port))
    stale.close()   # the file stays, nobody listens: what a crash leaves
    proc = pgpool_proc({"unix_socket_dir": str(tmp_path)}, port=port)
    conn = await asyncpg.connect(host=str(tmp_path), port=proc.port, user="app", password="app", database="app")
    await conn.close()


async def test_pgpool_to_postgres_over_its_socket(pgpool_proc, postgres):
    proc = pgpool_proc(databases={"app": f"host={postgres.socket_dir} port={postgres.port}"})
    conn = await connect(proc)
    try:
        # A Unix-socket backend has no client address.
        assert await conn.fetchval("SELECT inet_client_addr() IS NULL") is True
        # Cancel goes over the socket too.
        task = asyncio.ensure_future(conn.fetchval("SELECT pg_sleep(30)"))

        async def running() -> int:
            direct = await asyncpg.connect(postgres.dsn())
            try:
                # Active only: an idle backend keeps showing its last query.
                return await direct.fetchval("SELECT count(*) FROM pg_stat_activity "
                                             "WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'")
            finally:
                await direct.close()
        await wait_until(running, message="pg_sleep running")
        task.cancel()   # asyncpg sends a CancelRequest; pgpool forwards it to the server's socket
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_until(lambda: _not(running), timeout=10, message="pg_sleep cancelled")
        assert await conn.fetchval("SELECT 3") == 3
    finally:
        await conn.close()
    assert "could not send cancel request" not in proc.log_text()


async def _not(predicate) -> bool:
    return not await predicate()
