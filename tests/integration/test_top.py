"""`pgpool top` as a user sees it: run in a real terminal (tmux, 80x24) against a pgpool under a
small bounded load; keys sort and quit; the captured screen is what is asserted.

The busy pool (app/md5user: 6 clients over 2 servers, short transactions) sorts first by waiting
clients; `n` sorts by name (app/app first); `r` reverses; `q` quits and the terminal is restored.
"""

from __future__ import annotations

import asyncio
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest

from benchmarks.targets import free_port
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
BUSY, QUIET = "app/md5user", "app/app"
LOAD_SECONDS = 60          # upper bound; the load stops when the test ends


class Tmux:
    """A private tmux server (its own socket), one 80x24 session running one command."""

    def __init__(self) -> None:
        self.socket = f"pgpool-top-{uuid.uuid4().hex[:8]}"

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["tmux", "-L", self.socket, "-f", "/dev/null", *args],
                              capture_output=True, text=True, timeout=10)

    def start(self, command: list[str], env: dict[str, str], record: Path) -> None:
        """Run `command` in the pane; `record` gets the terminal modes before and after, and its exit status."""
        line = "env " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " " + shlex.join(command)
        script = (f"stty -g > {record}/before; {line}; echo $? > {record}/status; stty -g > {record}/after")
        result = self.run("new-session", "-d", "-s", "top", "-x", "80", "-y", "24", script)
        assert result.returncode == 0, result.stderr

    def screen(self) -> str:
        result = self.run("capture-pane", "-p", "-t", "top")
        return result.stdout if result.returncode == 0 else ""

    def keys(self, *keys: str) -> None:
        assert self.run("send-keys", "-t", "top", *keys).returncode == 0

    def alive(self) -> bool:
        return self.run("has-session", "-t", "top").returncode == 0

    def kill(self) -> None:
        self.run("kill-server")


def pool_order(screen: str) -> list[str]:
    """Pool names in the order of the table rows on screen."""
    return [line.split()[0] for line in screen.splitlines() if line.split()[:1] and "/" in line.split()[0]
            and line.split()[0] in (BUSY, QUIET)]


def row(screen: str, pool: str) -> list[str]:
    return next(line.split() for line in screen.splitlines() if line.split()[:1] == [pool])


async def run_load(proc, stop: asyncio.Event, counts: dict[str, int]) -> None:
    async def one_client(user: str, pause: float) -> None:
        conn = await asyncpg.connect(proc.dsn(user))
        try:
            while not stop.is_set():
                async with conn.transaction():
                    await conn.execute("SELECT pg_sleep(0.02)")
                counts[user] = counts.get(user, 0) + 1
                if pause:
                    await asyncio.sleep(pause)   # pacing: the quiet pool is busy now and then
        finally:
            await conn.close()

    # Six clients compete for two servers of app/md5user; one slow client uses app/app.
    tasks = [one_client("md5user", 0) for _ in range(6)] + [one_client("app", 0.2)]
    await asyncio.wait_for(asyncio.gather(*tasks), LOAD_SECONDS)


async def test_top_in_a_terminal_sorts_by_keys_and_quits(pgpool_proc, tmp_path):
    proc = pgpool_proc({"admin_users": ["postgres"], "default_pool_size": 2})
    stop = asyncio.Event()
    counts: dict[str, int] = {}
    load = asyncio.create_task(run_load(proc, stop, counts))
    tmux = Tmux()
    env = {"PYTHONPATH": str(REPO), "TERM": "xterm-256color", "COLUMNS": "80", "LINES": "24"}
    try:
        await wait_until(lambda: counts.get("md5user", 0) > 20 and counts.get("app", 0) > 0, timeout=30,
                         message="load running on both pools")
        tmux.start([sys.executable, "-m", "pgpool", "top", "--interval", "0.5", proc.dsn("postgres", dbname="pgbouncer")],
                   env, tmp_path)

        def busy_on_screen():
            screen = tmux.screen()
            if BUSY in screen and QUIET in screen and row(screen, BUSY)[6] not in ("-", "0"):
                return screen
            return None

        screen = await wait_until(busy_on_screen, timeout=30, message="pgpool top showing both pools with rates")
        assert "pgpool top" in screen and "sort: waiting clients" in screen
        header = next(line for line in screen.splitlines() if line.split()[:1] == ["POOL"])
        assert header.split() == ["POOL", "ACT", "WAIT", "MAXWAIT", "SV", "A/I/U/L", "SIZE", "TX/S", "P99WAIT",
                                  "PIN", "ERR"]
        busy = row(screen, BUSY)
        assert len(busy) == 10, busy                       # the whole row fits in 80 columns
        active, waiting, servers, size, tps = int(busy[1]), int(busy[2]), busy[4], int(busy[5]), float(busy[6])
        assert active + waiting == 6 and size == 2 and tps > 0     # SHOW POOLS: cl_active counts idle clients too
        assert sum(int(n) for n in servers.split("/")) <= 2   # servers against the pool's limit
        assert busy[9] == "0"                              # no errors
        # Default sort: most waiting clients first, which is the busy pool.
        await wait_until(lambda: pool_order(tmux.screen())[:1] == [BUSY], timeout=15,
                         message="busy pool first by waiting clients")

        tmux.keys("n")
        screen = await wait_until(lambda: (s := tmux.screen()) and "sort: pool name" in s and s, timeout=10,
                                  message="sorted by name")
        assert pool_order(screen) == [QUIET, BUSY]
        tmux.keys("r")
        screen = await wait_until(lambda: (s := tmux.screen()) and "pool name (reversed)" in s and s, timeout=10,
                                  message="reversed")
        assert pool_order(screen) == [BUSY, QUIET]
        tmux.keys("t")     # a new sort key starts in its natural order again
        screen = await wait_until(lambda: (s := tmux.screen()) and "sort: transactions/s" in s and s, timeout=10,
                                  message="sorted by transactions/s")
        assert pool_order(screen)[0] == BUSY

        assert all(len(line) <= 80 for line in screen.splitlines())
        tmux.keys("q")
        await wait_until(lambda: not tmux.alive(), timeout=10, message="pgpool top exits on q")
        assert (tmp_path / "status").read_text().strip() == "0"
        assert (tmp_path / "after").read_text() == (tmp_path / "before").read_text(), "terminal modes restored"
    finally:
        tmux.kill()
        stop.set()
        await asyncio.wait_for(load, 30)


@pytest.mark.parametrize("auth_type", ["md5", "scram-sha-256"])
async def test_top_once_prints_one_view_and_names_an_unreachable_console(pgpool_proc, auth_type):
    proc = pgpool_proc({"admin_users": ["postgres"], "default_pool_size": 2, "auth_type": auth_type})
    conn = await asyncpg.connect(proc.dsn("app"))
    try:
        assert await conn.fetchval("SELECT 1") == 1
        dead = f"postgresql://postgres:x@127.0.0.1:{free_port()}/pgbouncer"
        result = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "pgpool", "top", "--once", "--interval", "0.2",
                             proc.dsn("postgres", dbname="pgbouncer"), dead],
            capture_output=True, text=True, timeout=30, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    finally:
        await conn.close()
    assert result.returncode == 1, result.stderr          # one console could not be read
    assert row(result.stdout, QUIET)[1:3] == ["1", "0"]  # one client, none waiting
    assert "cannot connect" in result.stdout
    assert all(len(line) <= 80 for line in result.stdout.splitlines())
