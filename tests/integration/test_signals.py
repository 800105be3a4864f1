"""Signals as PgBouncer users send them, and `--version` against SHOW VERSION.

SIGUSR1 / SIGUSR2 pause and resume as in PgBouncer 1.18 (run side by side); a second SIGTERM
during the drain stops at once (PgBouncer 1.23+'s documented behaviour, usage.md "Signals").
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

from tests.integration.helpers import connect
from tests.integration.test_admin import ADMIN, console, pool_row, show
from tests.integration.test_cli import REPO
from tests.waiting import wait_until


async def test_sigusr1_pauses_and_sigusr2_resumes_as_pgbouncer(pgpool_proc, pgbouncer_proc):
    mode = {"pool_mode": "transaction"}
    for proc in (pgpool_proc({**ADMIN, **mode}), pgbouncer_proc({"admin_users": "postgres", **mode})):
        admin = await console(proc)
        conn = await connect(proc)
        try:
            assert await conn.fetchval("SELECT 1") == 1
            proc.send_signal(signal.SIGUSR1)
            await wait_until(lambda: "got SIGUSR1, pausing all activity" in proc.log_text(),
                             message=f"{proc.name}: SIGUSR1 handled")
            query = asyncio.create_task(conn.fetchval("SELECT 2"))

            async def waiting():
                row = await pool_row(admin)
                return row["cl_waiting"] == 1
            await wait_until(waiting, message=f"{proc.name}: a query waits while paused")
            assert not query.done()
            proc.send_signal(signal.SIGUSR2)
            assert await asyncio.wait_for(query, 10) == 2, proc.name
            # The process lives on after both signals (pgpool used to die of them).
            assert proc.returncode is None
        finally:
            await conn.close()
            await admin.close()


async def test_sigusr1_shows_in_show_state_and_a_second_sigusr2_is_harmless(pgpool_proc):
    proc = pgpool_proc(ADMIN)
    admin = await console(proc)
    warm = await connect(proc)
    await warm.fetchval("SELECT 1")
    await warm.close()
    try:
        proc.send_signal(signal.SIGUSR1)

        async def state_paused():
            return dict((r["key"], r["value"]) for r in await show(admin, "STATE"))["paused"] == "yes"
        await wait_until(state_paused, message="SHOW STATE paused after SIGUSR1")

        async def servers_closed():
            row = await pool_row(admin)
            return row is None or row["sv_idle"] + row["sv_used"] + row["sv_active"] == 0
        await wait_until(servers_closed, message="idle servers closed by SIGUSR1's PAUSE")
        proc.send_signal(signal.SIGUSR2)
        await wait_until(lambda: "continuing from PAUSE" in proc.log_text(), message="SIGUSR2 handled")
        proc.send_signal(signal.SIGUSR2)   # sent after the first was handled: signals may coalesce
        await wait_until(lambda: "got SIGUSR2, but not paused" in proc.log_text(), message="second SIGUSR2 logged")
        conn = await connect(proc)
        assert await conn.fetchval("SELECT 3") == 3
        await conn.close()
    finally:
        await admin.close()


async def test_second_sigterm_during_the_drain_stops_at_once(pgpool_proc):
    proc = pgpool_proc({"shutdown_timeout": 60})
    conn = await connect(proc)
    try:
        await conn.execute("BEGIN")
        proc.send_signal(signal.SIGTERM)
        await wait_until(lambda: "graceful shutdown" in proc.log_text(), message="the drain to begin")
        assert proc.returncode is None          # the open transaction holds the drain
        proc.send_signal(signal.SIGTERM)
        await wait_until(lambda: proc.returncode is not None, timeout=10, message="pgpool to exit at once")
        assert "second SIGTERM while draining" in proc.log_text()
        await wait_until(conn.is_closed, message="the client to be disconnected")
    finally:
        await conn.close()


async def test_show_version_and_dash_dash_version_agree(pgpool_proc):
    printed = subprocess.run([sys.executable, "-m", "pgpool", "--version"], capture_output=True, text=True,
                             cwd=REPO, timeout=30).stdout.strip()
    proc = pgpool_proc(ADMIN)
    admin = await console(proc)
    try:
        assert (await show(admin, "VERSION"))[0]["version"] == printed
        assert printed.startswith("pgpool ")
    finally:
        await admin.close()
