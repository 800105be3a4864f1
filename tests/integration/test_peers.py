"""Peers: several pgpool processes on one port (so_reuseport), cancel requests forwarded by peer_id.

PgBouncer 1.19+ behaviour (config.md "[peers]", peer_id, so_reuseport); 1.18 has no peering,
so the comparison is with the documentation and with PgBouncer's cancel-key layout.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import asyncpg
import psycopg
import pytest

from benchmarks.targets import free_port
from pgpool import peers
from pgpool.protocol import messages as m
from tests.integration.test_admin import ADMIN, console, show
from tests.waiting import wait_until, wait_until_sync


@pytest.fixture
def socket_dirs():
    dirs = []

    def make() -> Path:
        directory = Path(tempfile.mkdtemp(prefix="pgpool-peer-"))
        directory.chmod(0o755)
        dirs.append(directory)
        return directory
    yield make
    for directory in dirs:
        shutil.rmtree(directory, ignore_errors=True)


def peer_group(pgpool_proc, socket_dirs, count: int, port: int, extra: dict | None = None):
    """`count` pgpool processes on one TCP port, peered through a Unix socket each."""
    dirs = [socket_dirs() for _ in range(count)]
    peer_entries = {f"peers.{i + 1}": f"host={d} port={port}" for i, d in enumerate(dirs)}
    procs = []
    for i, directory in enumerate(dirs):
        procs.append(pgpool_proc({**ADMIN, "so_reuseport": 1, "peer_id": i + 1, "unix_socket_dir": str(directory),
                                  **(extra or {})}, port=port,
                                 extra_args=[arg for key, value in peer_entries.items()
                                             for arg in ("--set", f"{key}={value}")]))
        # The shared port answers as soon as any process listens: wait for this one's own socket.
        wait_until_sync(lambda: "started (pid" in procs[-1].log_text(), message=f"peer {i + 1} started")
    return procs, dirs


async def unix_admin(directory: Path, port: int) -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(host=str(directory), port=port, user="postgres",
                                                 password="postgres", dbname="pgbouncer", autocommit=True,
                                                 prepare_threshold=None)


async def send_cancel_via(directory: Path, port: int, pid: int, key: int) -> None:
    reader, writer = await asyncio.open_unix_connection(str(directory / f".s.PGSQL.{port}"))
    writer.write(m.cancel_request(pid, key))
    await writer.drain()
    await asyncio.wait_for(reader.read(), 10)
    writer.close()


def test_cancel_key_layout_is_pgbouncers():
    pid, key = peers.shape_key(0x7FFFFFFF, 0xFFFFFFF0, 0x1234)
    raw = pid.to_bytes(4, "big") + key.to_bytes(4, "big")
    assert raw[1] == 0x34 and raw[2] == 0x12          # key[1] + (key[2] << 8) is the peer_id
    assert raw[7] & peers.TTL_MASK == 3 and raw[0] < 0x80   # TTL 3; the pid half stays positive
    assert peers.peer_of(pid) == 0x1234 and peers.ttl_of(key) == 3


def running_on_postgres(postgres, sql: str) -> bool:
    """`sql` is running on Postgres: a cancel now stops a query, not a client in the queue."""
    return postgres.run_sql(f"SELECT count(*) FROM pg_stat_activity WHERE query = '{sql}' "
                            "AND state = 'active'").strip() == "1"


async def test_cancel_through_process_b_reaches_a_query_in_process_a(pgpool_proc, socket_dirs, postgres):
    port = free_port()
    (a, b, c), (dir_a, dir_b, dir_c) = peer_group(pgpool_proc, socket_dirs, 3, port)
    # The client talks to A (its own socket), so the test knows where its query runs.
    conn = await asyncpg.connect(host=str(dir_a), port=port, user="app", password="app", database="app",
                                 statement_cache_size=0)
    admin_b = await unix_admin(dir_b, port)
    try:
        # asyncpg keeps the key as a signed int; on the wire it is 32 unsigned bits.
        pid, key = conn._protocol.backend_pid & 0xFFFFFFFF, conn._protocol.backend_secret & 0xFFFFFFFF
        assert peers.peer_of(pid) == 1
        slow = asyncio.create_task(conn.fetchval("SELECT pg_sleep(30.1)"))
        await wait_until(lambda: running_on_postgres(postgres, "SELECT pg_sleep(30.1)"), message="the query running")
        started = time.monotonic()
        await send_cancel_via(dir_b, port, pid, key)
        with pytest.raises(asyncpg.QueryCanceledError):
            await asyncio.wait_for(slow, 10)
        assert time.monotonic() - started < 5
        pools = await show(admin_b, "PEER_POOLS")
        assert [r["peer_id"] for r in pools] == [1]
        peers_b = await show(admin_b, "PEERS")
        assert [(r["peer_id"], r["host"], r["port"]) for r in peers_b] == [
            (1, str(dir_a), port), (2, str(dir_b), port), (3, str(dir_c), port)]
        # The connection is still usable afterwards.
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()
        await admin_b.close()


async def test_driver_cancels_work_whichever_process_the_cancel_lands_on(pgpool_proc, socket_dirs):
    port = free_port()
    peer_group(pgpool_proc, socket_dirs, 3, port)
    conns = [await asyncpg.connect(host="127.0.0.1", port=port, user="app", password="app", database="app",
                                   command_timeout=0.5) for _ in range(9)]
    try:
        async def timed_out(conn) -> float:
            started = time.monotonic()
            with pytest.raises((asyncio.TimeoutError, asyncpg.QueryCanceledError)):
                await conn.fetchval("SELECT pg_sleep(20)")
            # asyncpg cancels on timeout; the connection answers again only once the cancel landed.
            assert await conn.fetchval("SELECT 2", timeout=10) == 2
            return time.monotonic() - started
        durations = await asyncio.gather(*(timed_out(conn) for conn in conns))
        assert max(durations) < 8, durations
    finally:
        for conn in conns:
            await conn.close()


async def test_a_cancel_for_an_unknown_peer_or_without_ttl_is_dropped(pgpool_proc, socket_dirs):
    port = free_port()
    (a,), (dir_a,) = peer_group(pgpool_proc, socket_dirs, 1, port)
    pid, key = peers.shape_key(1, 8, 99)
    await send_cancel_via(dir_a, port, pid, key)
    await wait_until(lambda: "cancel request for peer 99, which is not in [peers]: dropped" in a.log_text(),
                     message="unknown peer logged")
    assert a.returncode is None


async def test_show_sockets_dns_and_suspend_resume(pgpool_proc):
    proc = pgpool_proc(ADMIN)
    admin = await console(proc)
    conn = await asyncpg.connect(proc.dsn("app"), statement_cache_size=0)
    try:
        await conn.fetchval("SELECT 1")
        sockets = await show(admin, "SOCKETS")
        states = {r["state"] for r in sockets}
        assert {"cl_active", "sv_idle"} <= states
        assert "send_remain" in sockets[0] and "pkt_avail" in sockets[0]
        assert await show(admin, "ACTIVE_SOCKETS") == []
        assert await show(admin, "DNS_ZONES") == []
        await admin.execute("SUSPEND")
        assert {r["key"]: r["value"] for r in await show(admin, "STATE")}["suspended"] == "yes"
        query = asyncio.create_task(conn.fetchval("SELECT 3"))
        await asyncio.sleep(0.5)   # nothing may answer while suspended
        assert not query.done()
        await admin.execute("RESUME")
        assert await asyncio.wait_for(query, 10) == 3
    finally:
        await conn.close()
        await admin.close()


# ---- --workers and rolling restarts ----------------------------------------------------------------

async def test_workers_share_one_port_and_forward_cancels(pgpool_proc):
    proc = pgpool_proc({**ADMIN}, extra_args=["--workers", "3"])
    await wait_until(lambda: proc.log_text().count("started (pid") == 3, timeout=20, message="3 workers started")
    conns = [await asyncpg.connect(proc.dsn("app"), command_timeout=0.5) for _ in range(9)]
    try:
        async def cancelled(conn) -> None:
            with pytest.raises((asyncio.TimeoutError, asyncpg.QueryCanceledError)):
                await conn.fetchval("SELECT pg_sleep(20)")
            assert await conn.fetchval("SELECT 2", timeout=10) == 2
        await asyncio.wait_for(asyncio.gather(*(cancelled(conn) for conn in conns)), 20)
        admin = await console(proc)
        assert [r["peer_id"] for r in await show(admin, "PEERS")] == [1, 2, 3]
        await admin.close()
    finally:
        for conn in conns:
            await conn.close()
    # A worker that dies is started again; the port keeps serving meanwhile.
    worker_pids = [int(line.split("started (pid ")[1].split(")")[0])
                   for line in proc.log_text().splitlines() if "started (pid" in line]
    os.kill(worker_pids[0], signal.SIGKILL)
    await wait_until(lambda: "starting it again" in proc.log_text(), timeout=10, message="worker restarted")
    await wait_until(lambda: proc.log_text().count("started (pid") == 4, timeout=20, message="replacement up")
    conn = await asyncpg.connect(proc.dsn("app"))
    assert await conn.fetchval("SELECT 1") == 1
    await conn.close()
    assert proc.stop() == 0
    for pid in worker_pids[1:]:
        await wait_until(lambda: not _alive(pid), message=f"worker {pid} gone with the supervisor")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_rolling_restart_under_load_loses_no_transaction(pgpool_proc, postgres):
    from tests.integration.test_lifecycle_ops import fresh_table
    fresh_table(postgres, "rolling")
    postgres.run_sql("ALTER TABLE rolling ADD PRIMARY KEY (client, step)", dbname="app")
    port = free_port()
    settings = {"so_reuseport": 1, "shutdown_timeout": 30}
    old = pgpool_proc(settings, port=port)
    stop = asyncio.Event()
    acknowledged: dict[int, set[int]] = {}
    cut_between_transactions = 0

    async def worker(n: int) -> None:
        nonlocal cut_between_transactions
        acknowledged[n] = set()
        conn = None
        step = 0
        while not stop.is_set():
            if conn is None or conn.is_closed():
                try:
                    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="app", password="app",
                                                 database="app", statement_cache_size=0)
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    await asyncio.sleep(0.02)   # the port is between processes: try again
                    continue
            try:
                # One round trip: the transaction either ran whole or did not reach the server.
                await conn.execute(f"BEGIN; INSERT INTO rolling VALUES ({n}, {step}); SELECT pg_sleep(0.005); COMMIT")
            except (asyncpg.ConnectionDoesNotExistError, asyncpg.AdminShutdownError, asyncpg.InternalClientError):
                # The drain ends the session between transactions (57P01 while idle; asyncpg then
                # refuses the next query locally). A transaction that ran anyway would show up as
                # a stored row nobody acknowledged: the check below fails on it.
                cut_between_transactions += 1
                await conn.close(timeout=1) if not conn.is_closed() else None
                conn = None
                step += 1
                continue
            acknowledged[n].add(step)
            step += 1
        if conn is not None:
            await conn.close()

    tasks = [asyncio.create_task(worker(n)) for n in range(6)]
    await wait_until(lambda: sum(map(len, acknowledged.values())) > 50, timeout=20, message="load running")
    new = pgpool_proc(settings, port=port)
    await wait_until(lambda: "started (pid" in new.log_text(), message="new process listening")
    old.send_signal(signal.SIGTERM)
    await wait_until(lambda: old.returncode is not None, timeout=30, message="old process drained and gone")
    before = sum(map(len, acknowledged.values()))
    await wait_until(lambda: sum(map(len, acknowledged.values())) > before + 50, timeout=20,
                     message="load continuing on the new process")
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    stored = postgres.run_sql("SELECT client || ':' || step FROM rolling ORDER BY 1", dbname="app").split()
    expected = sorted(f"{n}:{s}" for n, steps in acknowledged.items() for s in steps)
    # Every acknowledged COMMIT is stored, nothing else is (a cut never happened mid-transaction).
    assert sorted(stored) == expected
    assert "every client left" in old.log_text() and "cutting" not in old.log_text()
    assert cut_between_transactions >= 1     # the old process really had clients to hand over


async def test_a_draining_peer_still_receives_forwarded_cancels(pgpool_proc, socket_dirs, postgres):
    port = free_port()
    (a, b), (dir_a, dir_b) = peer_group(pgpool_proc, socket_dirs, 2, port, {"shutdown_timeout": 30})
    conn = await asyncpg.connect(host=str(dir_a), port=port, user="app", password="app", database="app",
                                 statement_cache_size=0)
    try:
        pid, key = conn._protocol.backend_pid & 0xFFFFFFFF, conn._protocol.backend_secret & 0xFFFFFFFF
        slow = asyncio.create_task(conn.fetchval("SELECT pg_sleep(30.2)"))
        await wait_until(lambda: running_on_postgres(postgres, "SELECT pg_sleep(30.2)"), message="the query running")
        a.send_signal(signal.SIGTERM)
        await wait_until(lambda: "graceful shutdown" in a.log_text(), message="A draining")
        # A's TCP listener is closed (new clients go to B); its Unix socket still takes the forwarded cancel.
        await send_cancel_via(dir_b, port, pid, key)
        with pytest.raises(asyncpg.QueryCanceledError):
            await asyncio.wait_for(slow, 10)
    finally:
        # Draining, A closes the client at the end of its query: a Terminate may find the socket gone.
        conn.terminate()
    await wait_until(lambda: a.returncode is not None, timeout=15, message="A gone once its client left")


async def test_socket_and_dns_tables_have_pgbouncers_columns(pgpool_proc, pgbouncer_proc):
    from tests.integration.test_admin import described
    ours = await console(pgpool_proc(ADMIN))
    theirs = await console(pgbouncer_proc({"admin_users": "postgres"}))
    try:
        for table in ("SOCKETS", "ACTIVE_SOCKETS", "DNS_HOSTS", "DNS_ZONES"):
            reference = await described(theirs, f"SHOW {table}")
            mine = dict(await described(ours, f"SHOW {table}"))
            for name, type_oid in reference:
                assert mine.get(name) == type_oid, f"SHOW {table} column {name}: PgBouncer {type_oid}, pgpool {mine.get(name)}"
    finally:
        await ours.close()
        await theirs.close()


async def test_show_dns_hosts_lists_the_names_pgpool_resolved(pgpool_proc, postgres):
    proc = pgpool_proc({**ADMIN, "dns_max_ttl": 30},
                       databases={"app": f"host=localhost port={postgres.port} dbname=app"})
    admin = await console(proc)
    conn = await asyncpg.connect(proc.dsn("app"))
    try:
        await conn.fetchval("SELECT 1")
        rows = await show(admin, "DNS_HOSTS")
        (localhost,) = [r for r in rows if r["hostname"] == "localhost"]
        assert 0 < int(localhost["ttl"]) <= 30
        assert f"127.0.0.1:{postgres.port}" in localhost["addrs"].split(",")
    finally:
        await conn.close()
        await admin.close()
