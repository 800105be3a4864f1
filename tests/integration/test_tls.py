"""TLS on both sides against a cluster that accepts TCP only over TLS (as RDS with rds.force_ssl = 1).

Certificates come from a throwaway CA (trustme). The Postgres certificate names only
"localhost", so a database entry with host=127.0.0.1 is a hostname mismatch under verify-full.
"""

from __future__ import annotations

import asyncio
import re
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import asyncpg
import psycopg
import pytest
import trustme

from benchmarks import burst
from benchmarks.targets import PgpoolProcess, PostgresCluster, TlsFiles, find_client_program
from pgpool.protocol import messages as m
from tests.integration.helpers import RawClient
from tests.waiting import wait_until

USERS = {"app": "app", "md5user": "md5pass", "plainuser": "plainpass", "certuser": "certpass"}


class Certs:
    """Files of one test CA: Postgres' certificate, pgpool's for clients, client certificates, a stranger CA."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.ca = trustme.CA()
        self.other_ca = trustme.CA()
        self.ca_file = self._write("ca.pem", self.ca.cert_pem.bytes())
        self.other_ca_file = self._write("other-ca.pem", self.other_ca.cert_pem.bytes())
        postgres = self.ca.issue_cert("localhost")
        self.postgres = TlsFiles(postgres.private_key_and_cert_chain_pem.bytes().decode(),
                                 postgres.private_key_pem.bytes().decode(),
                                 client_ca=self.ca.cert_pem.bytes().decode())
        self.pgpool_cert, self.pgpool_key = self.issue(self.ca, "pgpool", "localhost", "127.0.0.1")
        self.app_cert, self.app_key = self.issue(self.ca, "client-app", "app@example.com", common_name="app")
        self.cert_cert, self.cert_key = self.issue(self.ca, "client-certuser", "certuser@example.com",
                                                   common_name="certuser")

    def _write(self, name: str, data: bytes) -> str:
        path = self.dir / name
        path.write_bytes(data)
        return str(path)

    def issue(self, ca: trustme.CA, name: str, *identities: str, common_name: str | None = None) -> tuple[str, str]:
        cert = ca.issue_cert(*identities, common_name=common_name)
        return (self._write(f"{name}.crt", cert.cert_chain_pems[0].bytes()),
                self._write(f"{name}.key", cert.private_key_pem.bytes()))


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    return Certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_postgres(certs):
    cluster = PostgresCluster(tls=certs.postgres).start()
    cluster.run_sql("SET password_encryption = 'scram-sha-256'; CREATE ROLE certuser LOGIN PASSWORD 'certpass';"
                    "GRANT ALL ON DATABASE app TO certuser;")
    yield cluster
    cluster.stop()


@pytest.fixture
def start_pgpool(tls_postgres):
    """Factory: pgpool in front of the TLS-only cluster; host is the database entry's host."""
    started: list[PgpoolProcess] = []

    def start(settings=None, *, host="127.0.0.1", users=USERS, databases=None, backend=None) -> PgpoolProcess:
        backend = backend or tls_postgres
        proc = PgpoolProcess(backend_host=host, backend_port=backend.port, users=dict(users),
                             settings=dict(settings or {}),
                             databases=databases or {"*": f"host={host} port={backend.port}"})
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop()
        print(f"--- pgpool log tail ---\n{proc.log_text()[-4000:]}")


def client_tls(certs: Certs, mode: str = "require", **more) -> dict:
    return {"client_tls_sslmode": mode, "client_tls_cert_file": certs.pgpool_cert,
            "client_tls_key_file": certs.pgpool_key, **more}


async def server_uses_tls(conn) -> bool:
    return await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")


def verify_ctx(certs: Certs, cert: tuple[str, str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=certs.ca_file)
    if cert is not None:
        ctx.load_cert_chain(*cert)
    return ctx


# ---- pgpool -> Postgres ------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["allow", "prefer", "require", "verify-ca", "verify-full"])
async def test_server_sslmodes_reach_a_tls_only_cluster(start_pgpool, certs, mode):
    proc = start_pgpool({"server_tls_sslmode": mode, "server_tls_ca_file": certs.ca_file}, host="localhost")
    conn = await asyncpg.connect(proc.dsn())
    try:
        assert await server_uses_tls(conn) is True
    finally:
        await conn.close()


async def test_server_sslmode_disable_is_refused_by_force_ssl(start_pgpool):
    proc = start_pgpool({"server_tls_sslmode": "disable"})
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="no encryption") as caught:
        await asyncpg.connect(proc.dsn())
    assert "pool app/app" in caught.value.detail


async def test_server_require_without_tls_is_refused_never_downgraded(start_pgpool, postgres):
    """A cluster with ssl = off: require/verify-full fail with libpq's words; prefer goes on in clear."""
    proc = start_pgpool({"server_tls_sslmode": "require"}, backend=postgres)
    with pytest.raises(asyncpg.ConnectionFailureError,
                       match=r"server does not support SSL, but SSL was required .*pool app/app"):
        await asyncpg.connect(proc.dsn())
    proc = start_pgpool({"server_tls_sslmode": "prefer"}, backend=postgres)
    conn = await asyncpg.connect(proc.dsn())
    try:
        assert await server_uses_tls(conn) is False
    finally:
        await conn.close()


async def test_verify_full_refuses_a_wrong_ca(start_pgpool, certs):
    proc = start_pgpool({"server_tls_sslmode": "verify-full", "server_tls_ca_file": certs.other_ca_file},
                        host="localhost")
    with pytest.raises(asyncpg.ConnectionFailureError) as caught:
        await asyncpg.connect(proc.dsn())
    message = str(caught.value)
    assert "TLS connection to server localhost:" in message and "pool app/app" in message
    assert re.search("certificate verify failed: (self-signed certificate in certificate chain|"
                     "unable to get local issuer certificate)", message)
    # The failure is cached and retried like any failed login: the next client gets it at once, named.
    with pytest.raises(asyncpg.ConnectionFailureError, match="server login has been failing.*certificate verify"):
        await asyncpg.connect(proc.dsn())


async def test_verify_full_refuses_a_wrong_hostname(start_pgpool, certs):
    proc = start_pgpool({"server_tls_sslmode": "verify-full", "server_tls_ca_file": certs.ca_file},
                        host="127.0.0.1")
    with pytest.raises(asyncpg.ConnectionFailureError,
                       match=r"server 127\.0\.0\.1:\d+ for pool app/app failed: certificate verify failed: "
                             r"IP address mismatch"):
        await asyncpg.connect(proc.dsn())
    # verify-ca does not check the name: the same entry works.
    proc = start_pgpool({"server_tls_sslmode": "verify-ca", "server_tls_ca_file": certs.ca_file}, host="127.0.0.1")
    conn = await asyncpg.connect(proc.dsn())
    await conn.close()


async def test_scram_md5_and_cleartext_server_logins_over_tls(start_pgpool, certs):
    proc = start_pgpool({"server_tls_sslmode": "verify-full", "server_tls_ca_file": certs.ca_file},
                        host="localhost")
    for user in ("app", "md5user", "plainuser"):
        conn = await asyncpg.connect(proc.dsn(user=user))
        try:
            assert await conn.fetchval("SELECT current_user") == user
            assert await server_uses_tls(conn) is True
        finally:
            await conn.close()


async def test_client_certificate_to_the_server(start_pgpool, certs, tls_postgres):
    """server_tls_cert_file/key_file: Postgres' cert auth (pg_hba `cert` for certuser) accepts pgpool's certificate."""
    proc = start_pgpool({"server_tls_sslmode": "verify-full", "server_tls_ca_file": certs.ca_file,
                         "server_tls_cert_file": certs.cert_cert, "server_tls_key_file": certs.cert_key},
                        host="localhost")
    conn = await asyncpg.connect(proc.dsn(user="certuser"))
    try:
        dn = await conn.fetchval("SELECT client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        assert dn.endswith("/CN=certuser")
    finally:
        await conn.close()


async def test_protocols_and_ciphers_are_applied(start_pgpool, certs):
    proc = start_pgpool({"server_tls_sslmode": "require", "server_tls_protocols": "tlsv1.2",
                         "server_tls_ciphers": "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256"})
    conn = await asyncpg.connect(proc.dsn())
    try:
        row = await conn.fetchrow("SELECT version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        assert row["version"] == "TLSv1.2" and "AES128-GCM" in row["cipher"]
    finally:
        await conn.close()
    proc = start_pgpool({"server_tls_sslmode": "require", "server_tls13_ciphers": "TLS_CHACHA20_POLY1305_SHA256"})
    conn = await asyncpg.connect(proc.dsn())
    try:
        row = await conn.fetchrow("SELECT version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        assert (row["version"], row["cipher"]) == ("TLSv1.3", "TLS_CHACHA20_POLY1305_SHA256")
    finally:
        await conn.close()


# ---- clients -> pgpool ---------------------------------------------------------------------------

async def test_psql_psycopg_asyncpg_with_require_and_verify_full(start_pgpool, certs, postgres):
    proc = start_pgpool(client_tls(certs), backend=postgres)
    base = f"postgresql://app:app@localhost:{proc.port}/app"
    psql = find_client_program("psql")
    for mode in ("require", f"verify-full&sslrootcert={certs.ca_file}"):
        out = subprocess.run([psql, "-X", "-At", f"{base}?sslmode={mode}", "-c",
                              "SELECT 'psql ok'"], capture_output=True, text=True, timeout=30)
        assert out.stdout.strip() == "psql ok", out.stderr
        async with await psycopg.AsyncConnection.connect(f"{base}?sslmode={mode}") as conn:
            assert conn.pgconn.ssl_in_use
            assert (await (await conn.execute("SELECT 2")).fetchone()) == (2,)
        conn = await asyncpg.connect(f"{base}?sslmode={mode}")
        try:
            assert await conn.fetchval("SELECT 3") == 3
        finally:
            await conn.close()


async def test_asyncpg_direct_tls(start_pgpool, certs, postgres):
    """PostgreSQL 17's sslnegotiation=direct: ClientHello first, ALPN "postgresql"."""
    proc = start_pgpool(client_tls(certs), backend=postgres)
    dsn = f"postgresql://app:app@localhost:{proc.port}/app?sslmode=verify-full&sslrootcert={certs.ca_file}"
    for _ in range(2):   # two in a row: the second must not depend on anything the first left
        conn = await asyncpg.connect(dsn, direct_tls=True)
        try:
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()
    assert "TLS (direct) established" in proc.log_text()
    # Without ALPN pgpool refuses, as PostgreSQL 17 does.
    no_alpn = verify_ctx(certs)
    with pytest.raises((ConnectionError, asyncpg.PostgresError, OSError)):
        await asyncpg.connect(f"postgresql://app:app@localhost:{proc.port}/app", ssl=no_alpn, direct_tls=True)


async def test_require_refuses_clear_text_clients_with_postgres_error(start_pgpool, certs, postgres):
    proc = start_pgpool(client_tls(certs), backend=postgres)
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError,
                       match=r'no pg_hba.conf entry for host "127.0.0.1", user "app", database "app", no encryption'):
        await asyncpg.connect(proc.dsn(), ssl=False)
    # prefer/allow accept both.
    proc = start_pgpool(client_tls(certs, "prefer"), backend=postgres)
    for ssl_arg in (False, verify_ctx(certs)):
        conn = await asyncpg.connect(f"postgresql://app:app@localhost:{proc.port}/app", ssl=ssl_arg)
        await conn.close()


async def test_tls_on_both_sides(start_pgpool, certs):
    proc = start_pgpool({**client_tls(certs, "verify-full", client_tls_ca_file=certs.ca_file),
                         "server_tls_sslmode": "verify-full", "server_tls_ca_file": certs.ca_file,
                         "default_pool_size": 1}, host="localhost")
    dsn = f"postgresql://app:app@localhost:{proc.port}/app"
    ctx = verify_ctx(certs, (certs.app_cert, certs.app_key))
    a = await asyncpg.connect(dsn, ssl=ctx)
    b = await asyncpg.connect(dsn, ssl=ctx)
    try:
        for conn in (a, b, a, b):   # one server changes hands between two TLS clients
            assert await server_uses_tls(conn) is True
            assert await conn.fetchval("SELECT $1::int + 1", 41) == 42
    finally:
        await a.close()
        await b.close()
    # verify-full on the client side: a client without a certificate is refused in the handshake.
    with pytest.raises((ConnectionError, ssl.SSLError, OSError, asyncpg.PostgresError)):
        await asyncpg.connect(dsn, ssl=verify_ctx(certs))


async def test_cert_auth(start_pgpool, certs, postgres):
    proc = start_pgpool(client_tls(certs, "require", client_tls_ca_file=certs.ca_file, auth_type="cert"),
                        backend=postgres)
    dsn = f"postgresql://app@localhost:{proc.port}/app"
    conn = await asyncpg.connect(dsn, ssl=verify_ctx(certs, (certs.app_cert, certs.app_key)))
    try:
        assert await conn.fetchval("SELECT current_user") == "app"
    finally:
        await conn.close()
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError,
                       match='certificate authentication failed for user "app"'):
        await asyncpg.connect(dsn, ssl=verify_ctx(certs, (certs.cert_cert, certs.cert_key)))
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError,
                       match="connection requires a valid client certificate"):
        await asyncpg.connect(dsn, ssl=verify_ctx(certs))


async def test_certificate_rotation_on_reload(start_pgpool, certs, postgres, tmp_path):
    cert_file, key_file = tmp_path / "pgpool.crt", tmp_path / "pgpool.key"
    cert_file.write_bytes(Path(certs.pgpool_cert).read_bytes())
    key_file.write_bytes(Path(certs.pgpool_key).read_bytes())
    proc = start_pgpool({"client_tls_sslmode": "require", "client_tls_cert_file": str(cert_file),
                         "client_tls_key_file": str(key_file)}, backend=postgres)
    dsn = f"postgresql://app:app@localhost:{proc.port}/app"
    old = await asyncpg.connect(dsn, ssl=verify_ctx(certs))
    try:
        # New certificate from another CA; live connections keep their session.
        new_cert, new_key = certs.issue(certs.other_ca, "rotated", "localhost")
        cert_file.write_bytes(Path(new_cert).read_bytes())
        key_file.write_bytes(Path(new_key).read_bytes())
        proc.send_signal(signal.SIGHUP)
        other = ssl.create_default_context(cafile=certs.other_ca_file)

        async def new_certificate_served() -> bool:
            try:
                conn = await asyncpg.connect(dsn, ssl=other)
            except (ssl.SSLError, ConnectionError, OSError):
                return False
            await conn.close()
            return True
        await wait_until(new_certificate_served, message="the rotated certificate")
        assert await old.fetchval("SELECT 'still here'") == "still here"
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncpg.connect(dsn, ssl=verify_ctx(certs))
    finally:
        await old.close()
    # A reload with an unusable key is refused whole: the running certificate stays.
    key_file.write_text("not a key")
    proc.send_signal(signal.SIGHUP)
    await wait_until(lambda: "RELOAD (SIGHUP) refused" in proc.log_text(), message="refused reload")
    conn = await asyncpg.connect(dsn, ssl=ssl.create_default_context(cafile=certs.other_ca_file))
    await conn.close()


# ---- bad input -----------------------------------------------------------------------------------

async def _ssl_request(proc) -> RawClient:
    raw = await RawClient.open(proc.port)
    raw.send(m.SSL_REQUEST)
    assert await asyncio.wait_for(raw.reader.readexactly(1), 10) == b"S"
    return raw


async def test_bad_input_after_ssl_request_stays_bounded(start_pgpool, certs, postgres):
    proc = start_pgpool(client_tls(certs, client_login_timeout=1), backend=postgres)
    # Garbage instead of a ClientHello.
    raw = await _ssl_request(proc)
    raw.send(b"\x00garbage that is no TLS record" * 10)
    assert await raw.at_eof()
    # Plain protocol bytes after 'S'.
    raw = await _ssl_request(proc)
    raw.send(m.startup_message({"user": "app", "database": "app"}))
    assert await raw.at_eof()
    # A TLS record header that promises more, then silence; and a client that says nothing after 'S'.
    stalled = await _ssl_request(proc)
    stalled.send(b"\x16\x03\x01\x40\x00")
    silent = await _ssl_request(proc)
    loop = asyncio.get_running_loop()
    started = loop.time()
    # Closed without a clear-text ErrorResponse: a client mid-handshake expects TLS records.
    assert await asyncio.wait_for(stalled.reader.read(), 10) == b""
    assert await asyncio.wait_for(silent.reader.read(), 10) == b""
    assert loop.time() - started < 5   # client_login_timeout = 1
    # Direct TLS garbage: first byte 0x16, then nonsense.
    raw = await RawClient.open(proc.port)
    raw.send(b"\x16\x03\x01\x00\x05hello")
    assert await raw.at_eof()
    # Nobody else was harmed.
    conn = await asyncpg.connect(f"postgresql://app:app@localhost:{proc.port}/app", ssl=verify_ctx(certs))
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()
    assert proc.returncode is None
    assert "TLS handshake failed" in proc.log_text()


# ---- a Prefect-like burst ------------------------------------------------------------------------

async def test_prefect_like_burst_with_tls_on_both_sides(start_pgpool, certs, tls_postgres):
    """benchmarks/burst.py's workload, small: every client and every server connection over TLS, zero errors."""
    proc = start_pgpool({**client_tls(certs), "server_tls_sslmode": "verify-full", "server_tls_ca_file": certs.ca_file,
                         "default_pool_size": 4}, host="localhost")
    dsn = f"postgresql://app:app@localhost:{proc.port}/app?sslmode=verify-full&sslrootcert={certs.ca_file}"
    opts = burst.BurstOptions(flows=16, tasks_per_flow=3, clients=12, duration_s=60.0, burst_window_s=0.3,
                              task_work_ms=10.0, ui_interval_s=0.1, seed=5, progress=False,
                              monitor_dsn=tls_postgres.dsn() + "?sslmode=require")
    result = await burst.run_target(burst.Target("pgpool-tls", dsn), opts)
    assert result["errors"] == {"total": 0, "kinds": []}
    assert result["status"] == "finished"
    assert result["flows"] == {"planned": 16, "completed": 16, "failed": 0, "unfinished": 0}
    assert result["clients"] == {"requested": 12, "connected": 12}
    assert proc.log_text().count("TLS established") >= 12


async def test_unix_socket_clients_are_not_asked_for_tls(start_pgpool, certs, postgres, tmp_path):
    """As Postgres' hostssl never matches local connections: require applies to TCP clients only."""
    proc = start_pgpool({**client_tls(certs), "unix_socket_dir": str(tmp_path)}, backend=postgres)
    conn = await asyncpg.connect(host=str(tmp_path), port=proc.port, user="app", password="app", database="app")
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="no encryption"):
        await asyncpg.connect(proc.dsn(), ssl=False)


async def test_cancel_reaches_a_tls_only_server(start_pgpool, certs, tls_postgres):
    """CancelRequest goes to Postgres in clear (Postgres handles it before pg_hba), and stops the query."""
    proc = start_pgpool({**client_tls(certs), "server_tls_sslmode": "verify-full", "server_tls_ca_file": certs.ca_file},
                        host="localhost")
    conn = await asyncpg.connect(f"postgresql://app:app@localhost:{proc.port}/app", ssl=verify_ctx(certs))
    try:
        with pytest.raises(TimeoutError):
            await conn.fetchval("SELECT pg_sleep(30)", timeout=0.5)   # asyncpg sends a CancelRequest at its timeout

        async def sleeping() -> int:
            direct = await asyncpg.connect(tls_postgres.dsn(), ssl="require")
            try:
                return await direct.fetchval("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' "
                                             "AND state = 'active'")
            finally:
                await direct.close()
        await wait_until(lambda: _is_zero(sleeping), timeout=10, message="the query cancelled on the server")
        assert await conn.fetchval("SELECT 'after cancel'") == "after cancel"
    finally:
        await conn.close()
    assert "could not send cancel request" not in proc.log_text()


async def _is_zero(count) -> bool:
    return await count() == 0


def test_check_reads_the_certificate_files(tmp_path, certs):
    config = tmp_path / "pgpool.toml"
    config.write_text(f'[pgpool]\nclient_tls_sslmode = "require"\nclient_tls_cert_file = "{certs.pgpool_cert}"\n'
                      f'client_tls_key_file = "{tmp_path / "missing.key"}"\n')
    out = subprocess.run([sys.executable, "-m", "pgpool", "--config", str(config), "--check"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "client_tls_key_file" in out.stderr and "No such file" in out.stderr
    config.write_text(config.read_text().replace(str(tmp_path / "missing.key"), certs.pgpool_key))
    out = subprocess.run([sys.executable, "-m", "pgpool", "--config", str(config), "--check"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
