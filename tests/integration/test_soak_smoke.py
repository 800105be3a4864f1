"""The soak harness itself, run for ~20 s: load with every kind of fault, zero unexplained errors, a report;
and what the soak found, as a differential test against a direct connection."""

from __future__ import annotations

import json

import asyncpg
import psycopg
import pytest

from benchmarks.soak import run_soak, slope_per_minute
from tests.waiting import wait_until


def test_slope_is_least_squares_per_minute():
    assert slope_per_minute([(0, 5), (60, 5), (120, 5)]) == 0
    assert abs(slope_per_minute([(0, 0), (30, 1), (60, 2), (90, 3)]) - 2.0) < 1e-9
    assert abs(slope_per_minute([(0, 1), (60, 0), (120, 3)]) - 1.0) < 1e-9
    assert slope_per_minute([(5, 1)]) == 0


async def test_soak_smoke(postgres, tmp_path):
    report = await run_soak(seconds=20, backend=postgres, out_dir=tmp_path, pool_size=4, asyncpg_clients=4,
                            psycopg_clients=2, fault_interval=2.0, sample_interval=1.0)
    assert report["pgpool_alive"]
    assert report["errors_unexplained"] == 0, report["unexplained"]
    assert all(count >= 2 for count in report["faults"].values()), report["fault_log"]
    assert not report["failed_faults"], report["failed_faults"]
    assert report["operations"] > 100
    assert report["notifications_received"] > 0
    assert len(report["samples"]) >= 10
    assert all("sv_active" in sample for sample in report["samples"]), report["samples"][:3]
    written = json.loads((tmp_path / "soak.json").read_text())
    assert written["rss_slope_kb_per_min"] == report["rss_slope_kb_per_min"]
    assert (tmp_path / "soak.png").stat().st_size > 0


async def commit_after_backend_terminated(dsn: str, postgres) -> psycopg.Error:
    """psycopg (defaults) inside a transaction whose backend is terminated: the error COMMIT gets."""
    conn = await psycopg.AsyncConnection.connect(dsn)
    try:
        cur = await conn.execute("SELECT pg_backend_pid()")   # psycopg opened a transaction: the server stays linked
        pid = (await cur.fetchone())[0]
        admin = await asyncpg.connect(postgres.dsn())
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
            await wait_until(lambda: admin.fetchval("SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)",
                                                    pid), message="terminated backend gone")
        finally:
            await admin.close()
        with pytest.raises(psycopg.Error) as failed:
            await conn.commit()
        return failed.value
    finally:
        await conn.close()


async def test_terminated_backend_gives_psycopg_one_error(postgres, pgpool_proc):
    # Found by the soak: pgpool forwarded the server's FATAL 57P01 and then added its own 08006,
    # and psycopg reported "received 2 results from command 'COMMIT'" (InternalError), which a
    # direct connection never gives. Now one error: 08006 naming the pool and the server's cause.
    proc = pgpool_proc({"pool_mode": "transaction", "default_pool_size": 1})
    direct = await commit_after_backend_terminated(postgres.dsn("app", dbname="app"), postgres)
    pooled = await commit_after_backend_terminated(proc.dsn(), postgres)
    assert (type(direct).__name__, direct.sqlstate) == ("AdminShutdown", "57P01")
    assert (type(pooled).__name__, pooled.sqlstate) == ("ConnectionFailure", "08006"), repr(pooled)
    assert "server connection lost for pool app/app" in str(pooled)
    assert "terminating connection due to administrator command (57P01)" in str(pooled)
