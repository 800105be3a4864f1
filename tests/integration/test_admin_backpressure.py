"""The admin console gets backpressure like the data plane (issue 8, case 12): a console client that
pipelines 20,000 SHOW commands without reading the replies costs pgpool a bounded amount of memory."""

from __future__ import annotations

from pathlib import Path

from tests.frontend import query
from tests.integration.helpers import RawClient
from tests.waiting import wait_until

COMMANDS = 20_000
GROWTH_LIMIT = 4 * 1024 * 1024   # bytes: "a few MB"; with backpressure it is well under 1 MB


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak) of a process, in bytes."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {name: int(fields[name].split()[0]) * 1024 for name in ("VmRSS", "VmHWM")}


def socket_queues(pid: int, local_port: int, remote_port: int) -> tuple[int, int] | None:
    """(tx_queue, rx_queue) of the process's TCP socket local_port <-> remote_port, from /proc/<pid>/net/tcp."""
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, queues = fields[1], fields[2], fields[4]
        if int(local.split(":")[1], 16) == local_port and int(remote.split(":")[1], 16) == remote_port:
            tx, rx = queues.split(":")
            return int(tx, 16), int(rx, 16)
    return None


def main_thread_sleeping(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2] == "S"


async def test_console_pipelining_without_reading_costs_bounded_memory(pgpool_proc):
    proc = pgpool_proc({"admin_users": ["postgres"]})
    console = await RawClient.open(proc.port)
    await console.login_md5("postgres", "postgres", database="pgbouncer")
    for _ in range(200):   # warm up: what one SHOW allocates for good is not what this test is about
        console.send(query("SHOW POOLS"))
        await console.read_until(b"Z")
    before = memory(proc.pid)
    console_port = console.writer.get_extra_info("sockname")[1]

    # Padded, so most of the commands are still unread when pgpool stops reading.
    console.send(query("SHOW POOLS" + " " * 100) * COMMANDS)
    seen = []

    def stopped_reading_or_grew() -> bool:
        # Stopped reading: bytes wait in its socket while its main thread sleeps (it is not busy).
        queues = socket_queues(proc.pid, proc.port, console_port)
        stopped = queues is not None and queues[1] > 0 and main_thread_sleeping(proc.pid)
        seen.append(stopped)
        grew = memory(proc.pid)["VmHWM"] - before["VmRSS"] > GROWTH_LIMIT
        return grew or seen[-2:] == [True, True]
    await wait_until(stopped_reading_or_grew, timeout=120, message="pgpool to stop reading the console")

    # Now read every reply: the console answered all commands, in order, and never held many at once.
    for _ in range(COMMANDS):
        replies = await console.read_until(b"Z", timeout=30)
        assert replies[0][0] == b"T" and replies[-2][0] == b"C", replies[:2]
    growth = memory(proc.pid)["VmHWM"] - before["VmRSS"]
    assert growth < GROWTH_LIMIT, f"pgpool's peak RSS grew by {growth / 2**20:.1f} MB over {COMMANDS} SHOW commands"
    console.close()
