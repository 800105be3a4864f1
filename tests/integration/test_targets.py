"""The harness itself: the throwaway Postgres, its roles and auth methods, the pooler processes.

Everything else in tests/integration and benchmarks/ stands on these; when
they break, this file should say so first and plainly.
"""

from __future__ import annotations

import socket
import subprocess
import tomllib

import asyncpg
import psycopg
import pytest

from benchmarks.targets import (
    ROLES,
    ExternalPostgres,
    PgBouncerProcess,
    PgpoolProcess,
    PostgresCluster,
)
from tests.conftest import TEST_USERS
from tests.waiting import wait_until, wait_until_sync

# (role, the pg_hba.conf method the throwaway cluster uses for it over TCP)
AUTH_METHODS = [
    ("postgres", "scram-sha-256"),
    ("app", "scram-sha-256"),
    ("md5user", "md5"),
    ("plainuser", "password"),
]


def accepts_tcp(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def require_own_pg_hba(postgres: PostgresCluster | ExternalPostgres) -> None:
    if isinstance(postgres, ExternalPostgres):
        pytest.skip("auth methods come from the external server's own pg_hba.conf (PGPOOL_TEST_DSN)")


def test_run_sql_returns_unaligned_rows(postgres):
    assert postgres.run_sql("SELECT 1, 'a'; SELECT current_user") == "1|a\npostgres"


def test_run_sql_raises_with_server_message(postgres):
    with pytest.raises(subprocess.CalledProcessError) as info:
        postgres.run_sql("SELECT no_such_column")
    assert 'column "no_such_column" does not exist' in info.value.stderr


def test_app_database_is_owned_by_app(postgres):
    owner = postgres.run_sql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'app'")
    assert owner == "app"


def test_dsn_carries_the_known_password(postgres):
    assert postgres.dsn("md5user", dbname="app") == (
        f"postgresql://md5user:md5pass@{postgres.host}:{postgres.port}/app"
    )


@pytest.mark.parametrize(("role", "method"), AUTH_METHODS)
def test_psycopg_logs_in_with_the_role_auth_method(postgres, role, method):
    require_own_pg_hba(postgres)
    # libpq's require_auth refuses any other method, so success proves which one the server asked for.
    with psycopg.connect(postgres.dsn(role, dbname="app"), require_auth=method) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (role,)


@pytest.mark.parametrize(("role", "method"), AUTH_METHODS)
def test_psycopg_sees_no_other_auth_method(postgres, role, method):
    require_own_pg_hba(postgres)
    other = "md5" if method != "md5" else "scram-sha-256"
    with pytest.raises(psycopg.OperationalError, match="server requested"):
        psycopg.connect(postgres.dsn(role, dbname="app"), require_auth=other)


@pytest.mark.parametrize("role", list(ROLES))
async def test_asyncpg_logs_in_and_rejects_a_wrong_password(postgres, role):
    conn = await asyncpg.connect(postgres.dsn(role, dbname="app"))
    try:
        assert await conn.fetchval("SELECT current_user") == role
    finally:
        await conn.close()
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(postgres.dsn(role, password="wrong", dbname="app"))


def test_other_roles_may_create_tables_in_app(postgres):
    with psycopg.connect(postgres.dsn("md5user", dbname="app"), autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE t (x int)")
        conn.execute("CREATE TABLE IF NOT EXISTS md5user_owned (x int)")
        conn.execute("DROP TABLE md5user_owned")


def test_throwaway_cluster_applies_settings_and_cleans_up():
    cluster = PostgresCluster(max_connections=30, settings={"work_mem": "8MB"})
    with cluster:
        base_dir = cluster.base_dir
        assert base_dir is not None and (base_dir / "data" / "PG_VERSION").is_file()
        assert cluster.run_sql("SHOW max_connections; SHOW work_mem; SHOW listen_addresses") == "30\n8MB\n127.0.0.1"
        assert accepts_tcp(cluster.host, cluster.port)
    assert not base_dir.exists()
    assert not accepts_tcp(cluster.host, cluster.port)
    cluster.stop()  # idempotent


def test_pgbouncer_is_available():
    assert PgBouncerProcess.available()


async def test_pgbouncer_proxies_queries(postgres, pgbouncer_proc):
    bouncer = pgbouncer_proc({"pool_mode": "transaction", "default_pool_size": 2})
    assert bouncer.port != postgres.port
    # inet_server_port() is the backend's port: the query really went through PgBouncer to our Postgres.
    with psycopg.connect(bouncer.dsn("md5user")) as conn:
        assert conn.execute("SELECT current_user, inet_server_port()").fetchone() == ("md5user", postgres.port)
    conn = await asyncpg.connect(bouncer.dsn("app"), statement_cache_size=0)
    try:
        assert await conn.fetchval("SELECT 40 + 2") == 42
    finally:
        await conn.close()


def test_pgbouncer_that_fails_to_start_reports_its_log(postgres):
    bouncer = PgBouncerProcess(
        backend_host=postgres.host, backend_port=postgres.port, users=TEST_USERS, settings={"pool_mode": "bogus"}
    )
    with pytest.raises(RuntimeError, match=r'exited with code 1[\s\S]*invalid value "bogus" for parameter pool_mode'):
        bouncer.start()
    assert not bouncer.dir.exists()


def test_pgbouncer_stop_is_idempotent(postgres):
    bouncer = PgBouncerProcess(backend_host=postgres.host, backend_port=postgres.port, users=TEST_USERS).start()
    assert bouncer.pid is not None and accepts_tcp(bouncer.host, bouncer.port)
    code = bouncer.stop()
    assert code is not None
    assert bouncer.stop() == code
    assert not accepts_tcp(bouncer.host, bouncer.port)
    assert "got SIGTERM" in bouncer.log_text()


def test_pgpool_config_is_written_for_the_agreed_format(postgres):
    proc = PgpoolProcess(
        backend_host=postgres.host,
        backend_port=postgres.port,
        users={"app": "app", 'we"ird': "pa ss"},
        settings={"pool_mode": "transaction", "default_pool_size": 5, "auth_type": "scram-sha-256"},
        databases={"app": f"host={postgres.host} port={postgres.port} dbname=app", "other": {"port": 1, "pool_size": 3}},
    )
    try:
        config = tomllib.loads(proc.config_path.read_text())
        assert config["pgpool"] == {
            "listen_addr": "127.0.0.1",
            "listen_port": proc.port,
            "auth_type": "scram-sha-256",
            "auth_file": "userlist.txt",
            "metrics_port": 0,
            "unix_socket_dir": "",
            "pool_mode": "transaction",
            "default_pool_size": 5,
        }
        assert config["databases"] == {
            "app": f"host={postgres.host} port={postgres.port} dbname=app",
            "other": {"port": 1, "pool_size": 3},
        }
        auth_file = proc.config_path.parent / config["pgpool"]["auth_file"]
        assert auth_file.read_text() == '"app" "app"\n"we""ird" "pa ss"\n'
        assert proc.dsn() == f"postgresql://app:app@127.0.0.1:{proc.port}/app"
    finally:
        assert proc.stop() is None  # never started
    assert not proc.config_path.exists()


def test_pgpool_config_defaults_and_removals(postgres):
    proc = PgpoolProcess(
        backend_host=postgres.host, backend_port=postgres.port, users=TEST_USERS, settings={"metrics_port": None}
    )
    try:
        config = tomllib.loads(proc.config_path.read_text())
        assert "metrics_port" not in config["pgpool"]
        assert config["pgpool"]["auth_type"] == "md5"
        assert config["databases"] == {"*": f"host={postgres.host} port={postgres.port}"}
    finally:
        proc.stop()


async def test_wait_until_accepts_async_predicates_and_returns_the_value():
    calls = []

    async def third_time() -> str | None:
        calls.append(1)
        return "ready" if len(calls) >= 3 else None

    assert await wait_until(third_time, timeout=5) == "ready"


def test_wait_until_sync_names_what_it_waited_for():
    with pytest.raises(AssertionError, match="timed out after 0.05s waiting for the moon"):
        wait_until_sync(lambda: False, timeout=0.05, message="the moon")
