"""Running pgpool: the command line, configuration errors, a pgbouncer.ini used unchanged, log lines."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from benchmarks.targets import free_port

REPO = Path(__file__).resolve().parents[2]


def run_pgpool(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PGPOOL_")}
    full_env["PYTHONPATH"] = str(REPO)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "pgpool", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=REPO)


def test_invalid_value_stops_startup_naming_key_value_and_allowed(tmp_path):
    config = tmp_path / "pgpool.toml"
    config.write_text('[pgpool]\ndefault_pool_size = -3\npool_mode = "sometimes"\n')
    result = run_pgpool("--config", str(config))
    assert result.returncode == 2
    assert "default_pool_size" in result.stderr and "-3" in result.stderr
    assert "pool_mode" in result.stderr and "sometimes" in result.stderr and "transaction" in result.stderr


def test_unknown_setting_suggests_the_right_name(tmp_path):
    config = tmp_path / "pgpool.toml"
    config.write_text("[pgpool]\ndefault_pool_sise = 5\n")
    result = run_pgpool("--config", str(config))
    assert result.returncode == 2
    assert "default_pool_sise" in result.stderr and "default_pool_size" in result.stderr


def test_check_refuses_unimplemented_pgbouncer_settings_with_the_reason(tmp_path):
    config = tmp_path / "pgbouncer.ini"
    config.write_text("[databases]\n* = host=127.0.0.1\n[pgbouncer]\nresolv_conf = /etc/x.conf\npkt_buf = 8192\n")
    result = run_pgpool("--config", str(config), "--check")
    assert result.returncode == 2
    assert "setting resolv_conf = '/etc/x.conf'" in result.stderr and "pgpool does not implement" in result.stderr
    assert "pkt_buf" not in result.stderr    # accepted: documented as having no effect in pgpool


def test_shipped_examples_are_valid():
    for name in ("pgpool.toml", "pgbouncer.ini"):
        result = run_pgpool("--config", str(REPO / "config" / name), "--check")
        assert result.returncode == 0, (name, result.stderr)


async def test_unchanged_pgbouncer_ini_serves_clients(tmp_path, postgres):
    """A PgBouncer setup (ini + userlist.txt, md5 secret) switches with one command."""
    port = free_port()
    (tmp_path / "userlist.txt").write_text('"app" "md5' + hashlib.md5(b"appapp").hexdigest() + '"\n'
                                           '"md5user" "md5pass"\n')
    (tmp_path / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"app = host=127.0.0.1 port={postgres.port} dbname=app\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\n"
        "auth_type = md5\nauth_file = userlist.txt\npool_mode = transaction\ndefault_pool_size = 2\n"
        "logfile = pgpool.log\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGPOOL_")}
    env["PYTHONPATH"] = str(REPO)
    env["PGPOOL_METRICS_PORT"] = "0"
    proc = subprocess.Popen([sys.executable, "-m", "pgpool", "--config", str(tmp_path / "pgbouncer.ini")],
                            env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        conn = None
        for _ in range(100):
            try:
                conn = await asyncpg.connect(f"postgresql://md5user:md5pass@127.0.0.1:{port}/app")
                break
            except OSError:
                await asyncio.sleep(0.1)   # bounded: 100 tries while pgpool starts
        assert conn is not None, "pgpool did not start listening"
        assert await conn.fetchval("SELECT current_user") == "md5user"
        await conn.close()
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(f"postgresql://md5user:wrong@127.0.0.1:{port}/app")
    finally:
        proc.terminate()
        proc.wait(20)
    log = (tmp_path / "pgpool.log").read_text()
    # Connect, login failure and disconnect lines name the address, database, user and reason.
    assert "app/md5user@127.0.0.1:" in log and "login ok" in log
    assert "login failed: db=app user=md5user: password authentication failed" in log
    assert "closing: client close request" in log


def test_environment_and_set_override_the_file(tmp_path):
    config = tmp_path / "pgpool.toml"
    config.write_text("[pgpool]\ndefault_pool_size = 5\nmax_client_conn = 50\n")
    # Invalid values make the precedence visible in the error: the later source is the one reported.
    env_wins = run_pgpool("--config", str(config), env={"PGPOOL_DEFAULT_POOL_SIZE": "-1"})
    assert env_wins.returncode == 2 and "default_pool_size" in env_wins.stderr
    set_wins = run_pgpool("--config", str(config), "--set", "default_pool_size=7", "--check",
                          env={"PGPOOL_DEFAULT_POOL_SIZE": "-1"})
    assert set_wins.returncode == 0, set_wins.stderr
