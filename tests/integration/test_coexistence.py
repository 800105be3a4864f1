"""Two pgpools on one host: a metrics endpoint nobody configured never stops start-up.

Two unchanged pgbouncer.ini files (different listen ports, nothing about metrics) start two
pgpools while 127.0.0.1:9127, the metrics default, is taken; both serve clients. A metrics
port that IS configured and taken stops start-up with an error naming the port and setting.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import asyncpg

from benchmarks.targets import free_port
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
DEFAULT_METRICS_PORT = 9127


@contextmanager
def port_taken(port: int):
    """Make sure something listens on 127.0.0.1:port for the block (us, or whoever already does)."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen()
    except OSError as error:
        assert error.errno == errno.EADDRINUSE, error   # already taken: the case we want anyway
    try:
        yield
    finally:
        sock.close()


def write_pgbouncer_ini(directory: Path, listen_port: int, backend_port: int, extra: str = "") -> Path:
    directory.mkdir()
    # A plain password: pgpool logs in to the server (SCRAM) with it, as from a PgBouncer userlist.txt.
    (directory / "userlist.txt").write_text('"app" "app"\n')
    path = directory / "pgbouncer.ini"
    path.write_text(
        "[databases]\n"
        f"app = host=127.0.0.1 port={backend_port} dbname=app\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {listen_port}\n"
        "auth_type = md5\nauth_file = userlist.txt\npool_mode = transaction\ndefault_pool_size = 2\n"
        + extra)
    return path


def start_pgpool(config: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGPOOL_")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.Popen([sys.executable, "-m", "pgpool", "--config", str(config)], env=env,
                            cwd=config.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


async def connect_when_listening(port: int, proc: subprocess.Popen) -> asyncpg.Connection:
    async def attempt():
        assert proc.poll() is None, f"pgpool exited: {proc.stderr.read()}"
        try:
            return await asyncpg.connect(f"postgresql://app:app@127.0.0.1:{port}/app")
        except OSError:
            return None
    return await wait_until(attempt, timeout=20, message=f"pgpool listening on {port}")


def stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    return proc.stderr.read() if proc.stderr else ""


async def test_two_pgpools_from_two_pgbouncer_ini_files_run_side_by_side(tmp_path, postgres):
    ports = free_port(), free_port()
    configs = [write_pgbouncer_ini(tmp_path / f"pgb{i}", port, postgres.port) for i, port in enumerate(ports)]
    with port_taken(DEFAULT_METRICS_PORT):
        procs = [start_pgpool(config) for config in configs]
        try:
            conns = [await connect_when_listening(port, proc) for port, proc in zip(ports, procs)]
            # Both serve at the same time, each through its own pool.
            values = await asyncio.gather(*(conn.fetchval("SELECT $1::int * 2", i) for i, conn in enumerate(conns)))
            assert values == [0, 2]
            for conn in conns:
                await conn.close()
            assert all(proc.poll() is None for proc in procs)
        finally:
            logs = [stop(proc) for proc in procs]
    for log in logs:
        assert "metrics and health on" not in log     # no endpoint was started
        assert "cannot" not in log, log


async def test_configured_metrics_port_that_is_taken_stops_startup_naming_it(tmp_path, postgres):
    metrics_port = free_port()
    config = write_pgbouncer_ini(tmp_path / "pgb", free_port(), postgres.port, f"metrics_port = {metrics_port}\n")
    with port_taken(metrics_port):
        proc = start_pgpool(config)
        try:
            proc.wait(30)
        finally:
            log = stop(proc)
    assert proc.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{metrics_port} (metrics_addr, metrics_port)" in log, log
    assert "metrics_port = 0" in log
