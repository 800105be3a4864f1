"""tcp_keepalive, tcp_keepidle/intvl/cnt on client and server sockets, as PgBouncer sets them.

What the kernel has on pgpool's sockets is read with `ss -o` (the keepalive timer), for the
socket facing the client and the one facing Postgres.
"""

from __future__ import annotations

import subprocess

from tests.integration.helpers import connect
from tests.waiting import wait_until


def keepalive_timers(pid: int, port_filter: str) -> list[str]:
    """The `timer:(...)` field of each TCP socket of process `pid` matching the ss filter."""
    out = subprocess.run(["ss", "-tnopH", "state", "established", port_filter], capture_output=True, text=True,
                         check=True).stdout
    return [line.split("timer:(", 1)[1].split(")", 1)[0] if "timer:(" in line else ""
            for line in out.splitlines() if f"pid={pid}," in line]


async def test_keepalive_on_client_and_server_sockets_as_pgbouncer(pgpool_proc, pgbouncer_proc, postgres):
    settings = {"tcp_keepalive": 1, "tcp_keepidle": 77, "tcp_keepintvl": 5, "tcp_keepcnt": 4,
                "tcp_user_timeout": 30000}
    for proc in (pgpool_proc(settings), pgbouncer_proc(settings)):
        conn = await connect(proc)
        try:
            await conn.fetchval("SELECT 1")

            def settled() -> list[str]:
                # Right after traffic a socket may show its retransmission timer ("on") instead.
                timers = keepalive_timers(proc.pid, f"sport = :{proc.port}")
                server_side = keepalive_timers(proc.pid, f"dport = :{postgres.port}")
                both = timers + server_side
                return both if timers and server_side and all(t.startswith("keepalive") for t in both) else []
            for timer in await wait_until(settled, message=f"{proc.name}: keepalive timers on both sockets"):
                remaining = timer.split(",")[1]
                # The first probe is due within tcp_keepidle (77s), far sooner than Linux's 2h default.
                assert remaining.startswith(("1min", "5", "6", "7")) and "hr" not in remaining, (proc.name, timer)
        finally:
            await conn.close()


async def test_keepalive_off(pgpool_proc, postgres):
    proc = pgpool_proc({"tcp_keepalive": 0})
    conn = await connect(proc)
    try:
        await conn.fetchval("SELECT 1")
        timers = keepalive_timers(proc.pid, f"sport = :{proc.port}") + \
            keepalive_timers(proc.pid, f"dport = :{postgres.port}")
        assert timers and not any(t.startswith("keepalive") for t in timers), timers
    finally:
        await conn.close()


async def test_login_notify_message_reaches_the_client(pgpool_proc):
    from pgpool.protocol.errors import parse_error_fields
    from tests.integration.helpers import RawClient
    proc = pgpool_proc({"login_notify_message": "you are talking to pgpool"})
    client = await RawClient.open(proc.port)
    try:
        await client.login_md5("md5user", "md5pass")
        kind, body = await client.read_message()
        assert kind == b"N" and parse_error_fields(body)["M"] == "you are talking to pgpool"
    finally:
        client.close()
