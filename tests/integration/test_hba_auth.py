"""auth_type = hba against a real Postgres, side by side with PgBouncer 1.18.

Each line of one pg_hba.conf decides one case; what the pooler asks the client for (the
AuthenticationRequest code) and whether it lets the client in must be the same in both.
The last tests add client TLS (hostssl / hostnossl / cert with map=) and the Unix socket (local /
peer with map=), which PgBouncer 1.18 runs differently (no TLS set up here, no peer map).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import asyncpg
import pytest

from pgpool.protocol import messages as m
from pgpool.protocol.errors import parse_error_fields
from tests.integration.helpers import RawClient, connect
from tests.integration.test_admin import ADMIN, console

HBA = """\
# TYPE    DATABASE  USER       ADDRESS        METHOD
hostssl   all       all        0.0.0.0/0      cert
host      all       plainuser  127.0.0.1/32   reject
host      app       md5user    127.0.0.1/32   md5
host      app       app        127.0.0.1/32   scram-sha-256
host      postgres  app        127.0.0.1 255.255.255.255  password
host      sameuser  postgres   0.0.0.0/0      trust
"""

CLEARTEXT, MD5, SASL = 3, 5, 10


async def first_answer(proc, user: str, database: str) -> tuple[str, object]:
    """("auth", code) for an AuthenticationRequest, or ("error", fields) for an ErrorResponse."""
    client = await RawClient.open(proc.port)
    try:
        client.send(m.startup_message({"user": user, "database": database}))
        kind, body = await client.read_message()
        if kind == b"E":
            return "error", parse_error_fields(body)
        assert kind == b"R", (kind, body)
        return "auth", m.parse_authentication(body)[0]
    finally:
        client.close()


@pytest.fixture
def hba_file():
    # Outside pytest's private tmp_path: PgBouncer runs as an unprivileged user and must read it.
    directory = Path(tempfile.mkdtemp(prefix="pgpool-hba-"))
    directory.chmod(0o755)
    path = directory / "pg_hba.conf"
    path.write_text(HBA)
    path.chmod(0o644)
    yield path
    shutil.rmtree(directory)


async def test_methods_chosen_line_by_line_as_pgbouncer(pgpool_proc, pgbouncer_proc, hba_file):
    settings = {"auth_type": "hba", "auth_hba_file": str(hba_file)}
    results = {}
    for proc in (pgpool_proc(settings), pgbouncer_proc(settings)):
        answers = {}
        for user, database in [("md5user", "app"), ("app", "app"), ("app", "postgres"), ("postgres", "postgres"),
                               ("plainuser", "app"), ("postgres", "app"), ("md5user", "postgres")]:
            kind, detail = await first_answer(proc, user, database)
            answers[(user, database)] = detail if kind == "auth" else ("error", detail["C"])
        results[proc.name] = answers
    ours, theirs = results["pgpool"], results["pgbouncer"]
    assert ours[("md5user", "app")] == MD5
    assert ours[("app", "app")] == SASL
    assert ours[("app", "postgres")] == CLEARTEXT
    assert ours[("postgres", "postgres")] == 0           # trust: AuthenticationOk at once
    assert ours[("plainuser", "app")][0] == "error"     # reject
    assert ours[("postgres", "app")][0] == "error"      # sameuser does not match: no line
    # PgBouncer answers the same requests; its SQLSTATEs for refusals are 08P01, pgpool's 28000.
    assert {k: v if isinstance(v, int) else "error" for k, v in ours.items()} == \
        {k: v if isinstance(v, int) else "error" for k, v in theirs.items()}


async def test_logins_and_refusals_with_real_clients(pgpool_proc, hba_file):
    proc = pgpool_proc({**ADMIN, "auth_type": "hba", "auth_hba_file": str(hba_file)})
    for user, database in [("md5user", "app"), ("app", "app"), ("app", "postgres")]:
        conn = await connect(proc, user=user, dbname=database)
        assert await conn.fetchval("SELECT current_user") == user
        await conn.close()
    with pytest.raises(asyncpg.InvalidPasswordError, match="password authentication failed"):
        await connect(proc, user="app", password="wrong", dbname="app")
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError,
                       match=r'^login rejected: .*pg_hba.conf line 3 rejects host "127.0.0.1", user "plainuser"'):
        await connect(proc, user="plainuser", dbname="app")
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError,
                       match=r'^no authentication method is found: no .*pg_hba.conf entry for host "127.0.0.1", '
                             r'user "postgres", database "app", no encryption'):
        await connect(proc, user="postgres", dbname="app")
    # The admin console is matched like any database: postgres/pgbouncer has no line either.
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="no authentication method is found"):
        await connect(proc, user="postgres", dbname="pgbouncer")


async def test_reload_reads_the_hba_file_again_and_refuses_a_broken_one(pgpool_proc, hba_file):
    hba_file.write_text(HBA + "host pgbouncer postgres all md5\n")
    proc = pgpool_proc({**ADMIN, "auth_type": "hba", "auth_hba_file": str(hba_file)})
    admin = await console(proc)
    try:
        hba_file.write_text(HBA.replace("host      all       plainuser  127.0.0.1/32   reject\n", "")
                            + "host app plainuser all password\nhost pgbouncer postgres all md5\n")
        await admin.execute("RELOAD")
        conn = await connect(proc, user="plainuser", dbname="app")
        await conn.close()
        hba_file.write_text("host all all all ldap ldapserver=x\n")
        with pytest.raises(Exception, match="unsupported authentication method 'ldap'"):
            await admin.execute("RELOAD")
        conn = await connect(proc, user="plainuser", dbname="app")   # the running rules stay
        await conn.close()
    finally:
        await admin.close()


def test_start_refuses_a_broken_hba_file(tmp_path):
    from tests.integration.test_cli import run_pgpool
    (tmp_path / "hba").write_text("host all all all trust\nhost all all samenet md5\n")
    config = tmp_path / "pgpool.toml"
    config.write_text('[pgpool]\nauth_type = "hba"\nauth_hba_file = "hba"\nmetrics_port = 0\nlisten_port = 0\n')
    result = run_pgpool("--config", str(config), timeout=30)
    assert result.returncode == 2
    assert "hba line 2: samenet is not supported" in result.stderr
    config.write_text('[pgpool]\nauth_type = "hba"\n')
    result = run_pgpool("--config", str(config), "--check", timeout=30)
    assert result.returncode == 2 and "auth_type = hba needs auth_hba_file" in result.stderr


async def test_local_lines_and_peer_authentication_on_the_unix_socket(pgpool_proc, hba_file):
    import getpass
    me = getpass.getuser()          # the Unix user this test (and its socket connection) runs as
    (hba_file.parent / "ident").write_text(f"m {me} postgres\n")
    hba_file.write_text("local all postgres peer map=m\nlocal all app peer\nlocal all md5user md5\n"
                        "host all all 127.0.0.1/32 scram-sha-256\n")
    proc = pgpool_proc({"auth_type": "hba", "auth_hba_file": str(hba_file),
                        "auth_ident_file": str(hba_file.parent / "ident"), "unix_socket_dir": str(hba_file.parent)})
    socket_dir = str(hba_file.parent)
    conn = await asyncpg.connect(host=socket_dir, port=proc.port, user="postgres", password="not-asked",
                                 database="app")
    assert await conn.fetchval("SELECT current_user") == "postgres"   # peer + map, no password asked
    await conn.close()
    if me != "app":
        with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError,
                           match=rf'^peer authentication failed for user "app" .*line 2\): the socket belongs to '
                                 rf'Unix user "{me}"'):
            await asyncpg.connect(host=socket_dir, port=proc.port, user="app", password="app", database="app")
    conn = await asyncpg.connect(host=socket_dir, port=proc.port, user="md5user", password="md5pass", database="app")
    await conn.close()
    # Over TCP the local lines do not apply.
    conn = await connect(proc, user="app", dbname="app")
    await conn.close()


async def test_hostssl_hostnossl_and_cert_with_client_tls(pgpool_proc, hba_file, tmp_path):
    from tests.integration.test_tls import Certs, client_tls, verify_ctx
    certs = Certs(tmp_path)
    (hba_file.parent / "ident").write_text("m app md5user\n")
    hba_file.write_text("hostssl app app 127.0.0.1/32 cert\nhostssl app md5user 127.0.0.1/32 cert map=m\n"
                        "hostnossl all all 127.0.0.1/32 scram-sha-256\n")
    proc = pgpool_proc({**client_tls(certs, "prefer", client_tls_ca_file=certs.ca_file), "auth_type": "hba",
                        "auth_hba_file": str(hba_file), "auth_ident_file": str(hba_file.parent / "ident")})
    app_cert = verify_ctx(certs, (certs.app_cert, certs.app_key))
    for user in ("app", "md5user"):   # CN "app": itself, and md5user through the map
        conn = await asyncpg.connect(f"postgresql://{user}@localhost:{proc.port}/app", ssl=app_cert)
        assert await conn.fetchval("SELECT current_user") == user
        await conn.close()
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError,
                       match=r'^certificate authentication failed for user "app" .*line 1\): certificate common '
                             r'name "certuser" may not log in as this user'):
        await asyncpg.connect(f"postgresql://app@localhost:{proc.port}/app",
                              ssl=verify_ctx(certs, (certs.cert_cert, certs.cert_key)))
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="no client certificate"):
        await asyncpg.connect(f"postgresql://app@localhost:{proc.port}/app", ssl=verify_ctx(certs))
    # Without TLS only the hostnossl line matches: a password login.
    conn = await asyncpg.connect(proc.dsn("app"), ssl=False)
    assert await conn.fetchval("SELECT current_user") == "app"
    await conn.close()
