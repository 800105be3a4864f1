"""Start the real servers that tests, benchmarks and the demo talk to.

This module owns how to bring up and tear down a throwaway PostgreSQL
cluster (or adopt an external one), a pgpool subprocess and a PgBouncer
subprocess on loopback ports, with the same fixed set of roles everywhere.
It must not hold test assertions or benchmark logic, and must not touch any
server it did not start itself (an external DSN only gets the known roles).
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Self, Sequence
from urllib.parse import quote

REPO_ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"

# The roles every target knows, with their passwords. Each one exercises a
# different way Postgres checks a password (see PostgresCluster.start).
ROLES: dict[str, str] = {
    "postgres": "postgres",
    "app": "app",
    "md5user": "md5pass",
    "plainuser": "plainpass",
}
APP_DATABASE = "app"

INSTALL_HINT = (
    "install the PostgreSQL server binaries (Debian/Ubuntu: "
    "`apt-get install postgresql`, or run `bash scripts/install.sh`), "
    "or set PGPOOL_PG_BINDIR to a directory containing initdb, "
    "or set PGPOOL_TEST_DSN to a superuser DSN of a running server"
)


class PostgresNotFound(RuntimeError):
    """No usable PostgreSQL server binaries (and no other way to get a server)."""


def find_pg_bindir() -> Path:
    """Directory holding initdb/pg_ctl/postgres/psql: env override, newest Debian install, pg_config."""
    override = os.environ.get("PGPOOL_PG_BINDIR")
    if override:
        path = Path(override)
        if not (path / "initdb").is_file():
            raise PostgresNotFound(f"PGPOOL_PG_BINDIR={override} has no initdb; {INSTALL_HINT}")
        return path

    def major(path: Path) -> tuple[int, ...]:
        try:
            return tuple(int(part) for part in path.parent.name.split("."))
        except ValueError:
            return (-1,)

    candidates = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")]
    if candidates:
        return max(candidates, key=major)

    pg_config = shutil.which("pg_config")
    if pg_config:
        result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        path = Path(result.stdout.strip())
        if result.returncode == 0 and (path / "initdb").is_file():
            return path
    raise PostgresNotFound(
        "PostgreSQL server binaries not found (no $PGPOOL_PG_BINDIR, no "
        f"/usr/lib/postgresql/*/bin/initdb, no initdb next to pg_config); {INSTALL_HINT}"
    )


def find_client_program(name: str) -> str:
    """A client program (psql, pgbench) from the server bindir if any, else from PATH."""
    try:
        candidate = find_pg_bindir() / name
        if candidate.is_file():
            return str(candidate)
    except PostgresNotFound:
        pass
    found = shutil.which(name)
    if found:
        return found
    raise PostgresNotFound(f"{name} not found; install postgresql-client (apt-get install postgresql)")


def free_port() -> int:
    """A TCP port on loopback that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


@functools.cache
def unprivileged_user() -> str | None:
    """The OS user to run initdb/postgres/pgbouncer as, which all refuse root; None when not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "pgpool"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            pass
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "pgpool"],
        check=True,
        capture_output=True,
    )
    return "pgpool"


def _as_user_kwargs(user: str | None) -> dict[str, object]:
    """subprocess keyword arguments that drop root privileges to `user` (no-op for None)."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _give_to(path: Path, user: str | None) -> None:
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _clean_env() -> dict[str, str]:
    """Our environment minus libpq's PG* variables, so a stray PGHOST or PGPASSWORD cannot redirect us."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGCONNECT_TIMEOUT"] = "10"
    return env


def _make_url(host: str, port: int, user: str, password: str | None, dbname: str) -> str:
    auth = quote(user, safe="")
    if password is not None:
        auth += ":" + quote(password, safe="")
    return f"postgresql://{auth}@{host}:{port}/{quote(dbname, safe='')}"


def _run_psql(args: Sequence[str], sql: str, env: Mapping[str, str]) -> str:
    """Feed `sql` to psql on stdin, so each statement runs on its own (CREATE DATABASE needs that)."""
    cmd = [*args, "-X", "-v", "ON_ERROR_STOP=1", "-At", "-f", "-"]
    result = subprocess.run(cmd, input=sql, capture_output=True, text=True, env=dict(env), timeout=120)
    if result.returncode != 0:
        raise subprocess.CalledProcessError(result.returncode, cmd, result.stdout, result.stderr)
    return result.stdout.rstrip("\n")


def _sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _roles_sql(existing: set[str], keep: str) -> list[str]:
    """Statements creating (or re-passwording) the known roles except `keep`; one string per psql session."""
    statements = []
    for role, password in ROLES.items():
        if role == keep:
            continue
        verb = "ALTER" if role in existing else "CREATE"
        # md5user's secret must be stored as md5 so the server can answer an md5 challenge.
        encryption = "md5" if role == "md5user" else "scram-sha-256"
        statements.append(
            f"SET password_encryption = '{encryption}';\n"
            f"{verb} ROLE {role} LOGIN PASSWORD {_sql_literal(password)};"
        )
    return statements


def _grants_sql() -> tuple[str, str]:
    """(in database postgres, in database app) grants for the roles that do not own app."""
    others = ", ".join(r for r in ROLES if r not in ("postgres", "app"))
    return (
        f"GRANT ALL ON DATABASE {APP_DATABASE} TO {others};",
        # Since PostgreSQL 15 only the database owner may create in schema public.
        f"GRANT ALL ON SCHEMA public TO {others};",
    )


@dataclass(frozen=True)
class TlsFiles:
    """A server certificate chain and key (PEM text), and optionally the CA that signs client certificates."""

    cert_pem: str
    key_pem: str
    client_ca: str = ""
    only: bool = True   # pg_hba accepts TCP only over TLS (hostssl); False: with or without (host)


class PostgresCluster:
    """A throwaway cluster in a temp dir on a loopback port, removed on stop()."""

    superuser = "postgres"
    password = "postgres"
    host = LOOPBACK

    def __init__(
        self,
        *,
        port: int | None = None,
        max_connections: int = 100,
        settings: dict[str, str] | None = None,
        replication: bool = False,
        tls: "TlsFiles | None" = None,
    ) -> None:
        self.bin_dir = find_pg_bindir()
        # replication=True: wal_level=logical and a pg_hba line for physical replication
        # connections, for pg_receivewal / pg_recvlogical through a pooler.
        self.replication = replication
        self.port = port or free_port()
        self.max_connections = max_connections
        self.settings = dict(settings or {})
        # With TLS files: ssl = on and pg_hba accepts TCP only over TLS (what RDS's rds.force_ssl = 1 does).
        self.tls = tls
        self.base_dir: Path | None = None
        self._user = unprivileged_user()
        self._running = False

    @property
    def data_dir(self) -> Path:
        assert self.base_dir is not None, "cluster not started"
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.base_dir is not None, "cluster not started"
        return self.base_dir

    @property
    def log_path(self) -> Path:
        assert self.base_dir is not None, "cluster not started"
        return self.base_dir / "postgres.log"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, AssertionError):
            return ""

    def _run_tool(self, *args: str, timeout: float = 120) -> None:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        result = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            cwd=self.base_dir,  # the unprivileged user may not be able to enter our cwd
            env=_clean_env(),
            timeout=timeout,
            **_as_user_kwargs(self._user),
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} failed with exit code {result.returncode}:\n"
                f"{result.stdout}{result.stderr}\n{self.log_text()[-3000:]}"
            )

    def _write_owned(self, path: Path, text: str) -> None:
        path.write_text(text)
        _give_to(path, self._user)

    def start(self) -> "PostgresCluster":
        self.base_dir = Path(tempfile.mkdtemp(prefix="pgpool-pg-"))
        _give_to(self.base_dir, self._user)
        atexit.register(self.stop)
        try:
            self._run_tool(
                "initdb", "-D", str(self.data_dir), "-U", self.superuser, "-A", "trust",
                "-E", "UTF8", "--locale=C", "--no-sync",
            )
            conf = {
                "listen_addresses": LOOPBACK,
                "port": str(self.port),
                "unix_socket_directories": str(self.socket_dir),
                "max_connections": str(self.max_connections),
                # Durability buys nothing in a cluster that is deleted afterwards.
                "fsync": "off",
                "synchronous_commit": "off",
                "full_page_writes": "off",
                **({"wal_level": "logical", "max_wal_senders": "10", "max_replication_slots": "10"}
                   if self.replication else {}),
                **self.settings,
            }
            if self.tls is not None:
                conf.update(self._install_tls(self.tls))
            with (self.data_dir / "postgresql.conf").open("a") as f:
                f.write("\n# added by benchmarks/targets.py\n")
                for key, value in conf.items():
                    f.write(f"{key} = {_sql_literal(str(value))}\n")
            # First match wins: the per-user md5/password lines must precede the catch-all.
            host = "hostssl" if self.tls is not None and self.tls.only else "host"
            cert_line = "" if self.tls is None or not self.tls.client_ca else \
                f"hostssl all certuser {LOOPBACK}/32 cert\n"
            self._write_owned(
                self.data_dir / "pg_hba.conf",
                "local all all trust\n"
                "local replication all trust\n"   # pg_basebackup for a standby (start_standby)
                + cert_line +
                f"{host} all md5user {LOOPBACK}/32 md5\n"
                f"{host} all plainuser {LOOPBACK}/32 password\n"
                f"{host} all all {LOOPBACK}/32 scram-sha-256\n"
                + (f"{host} replication all {LOOPBACK}/32 scram-sha-256\n" if self.replication else ""),
            )
            self._run_tool(
                "pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_path), "-w", "-t", "60", "start"
            )
            self._running = True
            self.run_sql(f"ALTER ROLE {self.superuser} PASSWORD {_sql_literal(self.password)};")
            for statement in _roles_sql(existing={self.superuser}, keep=self.superuser):
                self.run_sql(statement)
            self.run_sql(f"CREATE DATABASE {APP_DATABASE} OWNER app;")
            in_postgres, in_app = _grants_sql()
            self.run_sql(in_postgres)
            self.run_sql(in_app, dbname=APP_DATABASE)
        except BaseException:
            self.stop()
            raise
        return self

    def _install_tls(self, files: "TlsFiles") -> dict[str, str]:
        """Write the server's certificate and key (0600, owned by the cluster's user); the settings to use."""
        conf = {"ssl": "on", "ssl_cert_file": "server.crt", "ssl_key_file": "server.key"}
        self._write_owned(self.data_dir / "server.crt", files.cert_pem)
        self._write_owned(self.data_dir / "server.key", files.key_pem)
        os.chmod(self.data_dir / "server.key", 0o600)
        if files.client_ca:
            self._write_owned(self.data_dir / "client_ca.crt", files.client_ca)
            conf["ssl_ca_file"] = "client_ca.crt"
        return conf

    def stop(self) -> None:
        if self.base_dir is None:
            return
        if self._running:
            self._running = False
            try:
                self._run_tool("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60", "stop")
            except RuntimeError as exc:
                print(f"warning: {exc}", file=sys.stderr)
        shutil.rmtree(self.base_dir, ignore_errors=True)
        self.base_dir = None
        atexit.unregister(self.stop)

    # ---- faults: restart the server under its clients (tests/integration/test_faults.py) ----

    def restart(self, mode: str = "fast") -> float:
        """`pg_ctl restart -m mode`, waiting until it accepts connections again; returns the seconds it took."""
        started = time.monotonic()
        self._run_tool("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_path), "-m", mode, "-w", "-t", "60",
                       "restart")
        return time.monotonic() - started

    def stop_server(self, mode: str = "fast") -> None:
        """Stop the postmaster but keep the cluster (start_server brings it back)."""
        self._run_tool("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60", "stop")

    def start_server(self) -> None:
        self._run_tool("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_path), "-w", "-t", "60", "start")

    def start_standby(self, host: str = "127.0.0.2") -> "PostgresCluster":
        """A streaming standby of this (running) cluster: pg_basebackup -R into a throwaway dir,
        listening on another loopback address with the same port, so that a host list
        (host=127.0.0.1,127.0.0.2, one port, as PgBouncer's) reaches both. stop() removes it;
        promote() makes it a primary."""
        standby = PostgresCluster(port=self.port, max_connections=self.max_connections, settings=self.settings)
        standby.host = host
        standby.base_dir = Path(tempfile.mkdtemp(prefix="pgpool-standby-"))
        _give_to(standby.base_dir, standby._user)
        atexit.register(standby.stop)
        try:
            standby._run_tool("pg_basebackup", "-D", str(standby.data_dir), "-h", str(self.socket_dir),
                              "-p", str(self.port), "-U", self.superuser, "-R", "-X", "stream", "-c", "fast",
                              "--no-sync")
            with (standby.data_dir / "postgresql.conf").open("a") as f:
                f.write(f"\n# standby of {self.host}:{self.port}\nlisten_addresses = {_sql_literal(host)}\n"
                        f"unix_socket_directories = {_sql_literal(str(standby.socket_dir))}\n")
            with (standby.data_dir / "pg_hba.conf").open("a") as f:
                f.write("host all all 127.0.0.0/8 scram-sha-256\n")
            standby._run_tool("pg_ctl", "-D", str(standby.data_dir), "-l", str(standby.log_path), "-w", "-t", "60",
                              "start")
            standby._running = True
        except BaseException:
            standby.stop()
            raise
        return standby

    def turn_read_only(self, timeout: float = 20.0) -> str:
        """The old primary of a failover: default_transaction_read_only on, then wait until every
        transaction begun before that has ended (one begun read-write may still commit). Returns the
        WAL position after which nothing more is written."""
        self.run_sql("ALTER SYSTEM SET default_transaction_read_only = on; SELECT pg_reload_conf();")
        deadline = time.monotonic() + timeout
        while self.run_sql("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                           "AND xact_start <= pg_conf_load_time()").strip() != "0":
            if time.monotonic() > deadline:
                raise RuntimeError(f"transactions begun before read-only still open after {timeout}s")
            time.sleep(0.02)
        return self.run_sql("SELECT pg_current_wal_lsn()").strip()

    def wait_replayed(self, lsn: str, timeout: float = 20.0) -> None:
        """A standby: wait until it replayed up to `lsn`."""
        deadline = time.monotonic() + timeout
        while not self.run_sql(f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn").strip().endswith("t"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"standby did not replay up to {lsn} within {timeout}s")
            time.sleep(0.02)

    def promote(self) -> None:
        self._run_tool("pg_ctl", "-D", str(self.data_dir), "-w", "-t", "60", "promote")

    def __enter__(self) -> "PostgresCluster":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def dsn(self, user: str = "postgres", password: str | None = None, dbname: str = "postgres") -> str:
        return _make_url(self.host, self.port, user, password or ROLES.get(user), dbname)

    def run_sql(self, sql: str, dbname: str = "postgres") -> str:
        """Run SQL as the superuser over the unix socket; raises CalledProcessError (stderr set) on error."""
        args = [
            str(self.bin_dir / "psql"), "-h", str(self.socket_dir), "-p", str(self.port),
            "-U", self.superuser, "-d", dbname,
        ]
        return _run_psql(args, sql, _clean_env())


def start_primary_and_standby(standby_host: str = "127.0.0.2",
                              settings: dict[str, str] | None = None) -> tuple[PostgresCluster, PostgresCluster]:
    """A primary on 127.0.0.1 (synchronous_commit on: a crash must not lose acknowledged commits) and
    its streaming standby on `standby_host`, same port: `host=127.0.0.1,127.0.0.2` reaches both.
    The caller stops both (standby first)."""
    primary = PostgresCluster(max_connections=100, settings={"synchronous_commit": "on", **(settings or {})}).start()
    try:
        return primary, primary.start_standby(standby_host)
    except BaseException:
        primary.stop()
        raise


class ExternalPostgres:
    """A server someone else runs, reached through a superuser DSN; stop() leaves it running.

    It must be disposable: start() creates the known roles and database app,
    and resets the known roles' passwords (all but the DSN's own user).
    """

    def __init__(self, dsn: str, *, on_stop: Callable[[], object] | None = None) -> None:
        # psycopg parses every libpq DSN form (URL and key=value) exactly as libpq does.
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(dsn)
        self.admin_dsn = dsn
        self.host = str(params.get("hostaddr") or params.get("host") or LOOPBACK)
        self.port = int(params.get("port") or 5432)
        self.superuser = str(params.get("user") or "postgres")
        self.password = params.get("password")
        self._on_stop = on_stop
        psql = Path(find_client_program("psql"))
        self.bin_dir = psql.parent
        self._psql = str(psql)

    def start(self) -> "ExternalPostgres":
        existing = set(self.run_sql("SELECT rolname FROM pg_roles").split("\n"))
        for statement in _roles_sql(existing, keep=self.superuser):
            self.run_sql(statement)
        if not self.run_sql(f"SELECT 1 FROM pg_database WHERE datname = '{APP_DATABASE}'"):
            self.run_sql(f"CREATE DATABASE {APP_DATABASE} OWNER app;")
        in_postgres, in_app = _grants_sql()
        self.run_sql(in_postgres)
        self.run_sql(in_app, dbname=APP_DATABASE)
        return self

    def stop(self) -> None:
        on_stop, self._on_stop = self._on_stop, None
        if on_stop is not None:
            on_stop()

    def __enter__(self) -> "ExternalPostgres":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def dsn(self, user: str = "postgres", password: str | None = None, dbname: str = "postgres") -> str:
        if password is None:
            password = self.password if user == self.superuser else ROLES.get(user)
        return _make_url(self.host, self.port, user, password, dbname)

    def run_sql(self, sql: str, dbname: str = "postgres") -> str:
        from psycopg.conninfo import make_conninfo

        return _run_psql([self._psql, "-d", make_conninfo(self.admin_dsn, dbname=dbname)], sql, _clean_env())


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


def start_postgres(**kw: object) -> PostgresCluster | ExternalPostgres:
    """$PGPOOL_TEST_DSN if set, else a throwaway cluster (local binaries, else a Docker container)."""
    dsn = os.environ.get("PGPOOL_TEST_DSN")
    if dsn:
        return ExternalPostgres(dsn).start()
    try:
        return PostgresCluster(**kw).start()  # type: ignore[arg-type]
    except PostgresNotFound:
        if not _docker_answers():
            raise
    from testcontainers.postgres import PostgresContainer

    container = PostgresContainer("postgres:16-alpine", username="postgres", password="postgres", dbname="postgres")
    container.start()
    url = _make_url(
        container.get_container_host_ip(), int(container.get_exposed_port(5432)), "postgres", "postgres", "postgres"
    )
    return ExternalPostgres(url, on_stop=container.stop).start()


def _log_tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


class _ProxyProcess:
    """Shared lifecycle of a pooler subprocess: config in a temp dir, log file, wait for the port, stop."""

    name = "proxy"
    host = LOOPBACK

    def __init__(
        self,
        *,
        backend_host: str,
        backend_port: int,
        users: dict[str, str],
        settings: dict[str, object] | None = None,
        databases: dict[str, object] | None = None,
        port: int | None = None,
        user_entries: dict[str, str] | None = None,
    ) -> None:
        self.backend_host = backend_host
        self.user_entries = dict(user_entries or {})   # the [users] section: name -> "key=value ..."
        self.backend_port = backend_port
        self.users = dict(users)
        self.settings = dict(settings or {})
        self.databases = dict(databases or {"*": f"host={backend_host} port={backend_port}"})
        self.port = port or free_port()
        self._run_user = self._choose_user()
        self.dir = Path(tempfile.mkdtemp(prefix=f"{self.name}-proc-"))
        _give_to(self.dir, self._run_user)
        self.log_path = self.dir / f"{self.name}.log"
        self.userlist_path = self.dir / "userlist.txt"
        self.config_path = self._config_file()
        self._proc: subprocess.Popen[bytes] | None = None
        self._final_log: str | None = None
        self.write_config()

    def write_config(self) -> None:
        """(Re)write the config and auth_file from .settings/.databases/.users, e.g. before a SIGHUP reload."""
        self._write_owned(self.userlist_path, self._userlist_text())
        self._write_owned(self.config_path, self._config_text())

    # Subclass hooks.
    def _choose_user(self) -> str | None:
        return None

    def _config_file(self) -> Path:
        raise NotImplementedError

    def _config_text(self) -> str:
        raise NotImplementedError

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _environment(self) -> dict[str, str]:
        return dict(os.environ)

    def _write_owned(self, path: Path, text: str) -> None:
        path.write_text(text)
        _give_to(path, self._run_user)

    def _userlist_text(self) -> str:
        # auth_file syntax: both fields double-quoted, a literal quote doubled.
        def q(value: str) -> str:
            return '"' + value.replace('"', '""') + '"'

        return "".join(f"{q(user)} {q(secret)}\n" for user, secret in self.users.items())

    def _defaults(self) -> dict[str, object]:
        return {"listen_addr": LOOPBACK, "listen_port": self.port, "auth_type": "md5"}

    def _merged_settings(self) -> dict[str, object]:
        merged = {**self._defaults(), **self.settings}
        return {k: v for k, v in merged.items() if v is not None}  # None removes a default

    def _probe(self) -> None:
        """Raises OSError until the pooler accepts connections: on TCP, and on its Unix socket if it has one."""
        settings = self._merged_settings()
        if settings.get("unix_socket_dir"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(0.5)
                sock.connect(os.path.join(str(settings["unix_socket_dir"]), f".s.PGSQL.{self.port}"))
        if settings.get("listen_addr") != "":
            with socket.create_connection((self.host, self.port), timeout=0.5):
                pass

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, wait: float = 15.0) -> Self:
        if self._proc is not None or self._final_log is not None:
            raise RuntimeError(f"{self.name} already started (a stopped instance cannot restart)")
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env=self._environment(),
                start_new_session=True,  # a Ctrl-C meant for pytest must not reach it first
                **_as_user_kwargs(self._run_user),
            )
        atexit.register(self.stop)
        deadline = time.monotonic() + wait
        while True:
            code = self._proc.poll()
            if code is not None:
                self.stop()
                raise RuntimeError(
                    f"{self.name} exited with code {code} before listening on {self.host}:{self.port}; "
                    f"log tail:\n{_log_tail(self.log_text())}"
                )
            try:
                self._probe()
                return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"{self.name} did not listen on {self.host}:{self.port} within {wait}s; "
                    f"log tail:\n{_log_tail(self.log_text())}"
                )
            time.sleep(0.02)

    def stop(self, timeout: float = 15.0) -> int | None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._final_log is None:
            self._final_log = self.log_text()  # kept so a failing test can still show it
            shutil.rmtree(self.dir, ignore_errors=True)
            atexit.unregister(self.stop)
        return proc.returncode if proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def send_signal(self, sig: int) -> None:
        assert self._proc is not None, f"{self.name} not started"
        self._proc.send_signal(sig)

    def log_text(self) -> str:
        if self._final_log is not None:
            return self._final_log
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def dsn(self, user: str = "app", password: str | None = None, dbname: str = "app") -> str:
        return _make_url(self.host, self.port, user, password or self.users.get(user), dbname)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _toml_key(key: str) -> str:
    bare = key and all(c.isascii() and (c.isalnum() or c in "_-") for c in key)
    return key if bare else json.dumps(key)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, Path):
        return json.dumps(str(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} to TOML: {value!r}")


class PgpoolProcess(_ProxyProcess):
    """pgpool run as `python -m pgpool --config <tmp>/pgpool.toml`."""

    name = "pgpool"

    def __init__(
        self,
        *,
        backend_host: str,
        backend_port: int,
        users: dict[str, str],
        settings: dict[str, object] | None = None,
        databases: dict[str, object] | None = None,
        port: int | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        user_entries: dict[str, str] | None = None,
    ) -> None:
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        super().__init__(
            backend_host=backend_host,
            backend_port=backend_port,
            users=users,
            settings=settings,
            databases=databases,
            port=port,
            user_entries=user_entries,
        )

    def _config_file(self) -> Path:
        return self.dir / "pgpool.toml"

    def _defaults(self) -> dict[str, object]:
        # auth_file relative: pgpool resolves it against the config file's directory.
        # No Unix socket unless a test asks: socket files must not be shared between instances.
        return {**super()._defaults(), "auth_file": self.userlist_path.name, "metrics_port": 0,
                "unix_socket_dir": ""}

    def _config_text(self) -> str:
        lines = ["[pgpool]"]
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in self._merged_settings().items()]
        lines += ["", "[databases]"]
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in self.databases.items()]
        if self.user_entries:
            lines += ["", "[users]"]
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in self.user_entries.items()]
        return "\n".join(lines) + "\n"

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "pgpool", "--config", str(self.config_path), *self.extra_args]

    def _environment(self) -> dict[str, str]:
        # PGPOOL_* variables override the config file, so ours (PGPOOL_TEST_DSN, ...) must not leak in.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PGPOOL_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env.update(self.extra_env)
        return env


def find_pgbouncer() -> str | None:
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/local/sbin")


def _ini_value(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


class PgBouncerProcess(_ProxyProcess):
    """PgBouncer run in the foreground from a generated pgbouncer.ini (as an unprivileged user when root)."""

    name = "pgbouncer"

    @classmethod
    def available(cls) -> bool:
        return find_pgbouncer() is not None

    def _choose_user(self) -> str | None:
        return unprivileged_user()  # pgbouncer refuses to run as root

    def _defaults(self) -> dict[str, object]:
        return {
            **super()._defaults(),
            "auth_file": str(self.userlist_path),
            "unix_socket_dir": "",  # TCP only: no socket files shared between instances
        }

    def _config_file(self) -> Path:
        return self.dir / "pgbouncer.ini"

    def _config_text(self) -> str:
        settings = self._merged_settings()
        lines = ["[databases]"]
        lines += [f"{name} = {conn}" for name, conn in self.databases.items()]
        lines += ["", "[pgbouncer]"]
        lines += [f"{key} = {_ini_value(value)}" for key, value in settings.items()]
        if self.user_entries:
            lines += ["", "[users]"]
            lines += [f"{name} = {entry}" for name, entry in self.user_entries.items()]
        return "\n".join(lines) + "\n"

    def _command(self) -> list[str]:
        binary = find_pgbouncer()
        if binary is None:
            raise RuntimeError("pgbouncer not found; apt-get install pgbouncer (or bash scripts/install.sh)")
        return [binary, str(self.config_path)]
