"""Login on both sides: auth methods, wrong and unknown users, SSL/GSS answers, startup parameters."""

from __future__ import annotations

import struct

import asyncpg
import psycopg
import pytest

from pgpool.auth import md5_secret
from pgpool.protocol import messages as m
from tests.integration.helpers import RawClient, connect


@pytest.mark.parametrize("auth_type", ["md5", "scram-sha-256", "plain"])
async def test_client_auth_methods(pgpool_proc, auth_type):
    proc = pgpool_proc({"auth_type": auth_type})
    conn = await connect(proc)
    try:
        assert await conn.fetchval("SELECT current_user") == "app"
    finally:
        await conn.close()
    with pytest.raises(asyncpg.InvalidPasswordError, match='password authentication failed for user "app"'):
        await connect(proc, password="wrong")


async def test_auth_file_with_md5_and_scram_secrets(pgpool_proc):
    """Secrets stored as md5 hashes and SCRAM verifiers; the server side uses md5 / SCRAM pass-through."""
    users = {"md5user": md5_secret("md5user", "md5pass"), "app": "app"}
    proc = pgpool_proc({"auth_type": "md5"}, users=users)
    conn = await connect(proc, user="md5user", password="md5pass")   # client md5 vs md5 secret; server md5
    try:
        assert await conn.fetchval("SELECT current_user") == "md5user"
    finally:
        await conn.close()


async def test_scram_verifier_pass_through(pgpool_proc, postgres):
    """auth_file holds the exact verifier Postgres stores: pgpool logs in with the client's recovered key."""
    verifier = postgres.run_sql("SELECT rolpassword FROM pg_authid WHERE rolname = 'app'").strip()
    assert verifier.startswith("SCRAM-SHA-256$")
    proc = pgpool_proc({"auth_type": "scram-sha-256"}, users={"app": verifier})
    conn = await connect(proc, password="app")
    try:
        assert await conn.fetchval("SELECT current_user") == "app"
    finally:
        await conn.close()
    with pytest.raises(asyncpg.InvalidPasswordError):
        await connect(proc, password="nope")


async def test_server_side_methods(pgpool_proc):
    """Postgres asks pgpool for SCRAM (app), md5 (md5user) and cleartext (plainuser)."""
    proc = pgpool_proc({"auth_type": "md5"})
    for user, password in (("app", "app"), ("md5user", "md5pass"), ("plainuser", "plainpass")):
        conn = await connect(proc, user=user, password=password)
        try:
            assert await conn.fetchval("SELECT current_user") == user
        finally:
            await conn.close()


async def test_unknown_user_fails_like_wrong_password(pgpool_proc):
    proc = pgpool_proc({"auth_type": "scram-sha-256"})
    errors = []
    for user, password in (("app", "wrong"), ("nosuchuser", "whatever")):
        with pytest.raises(asyncpg.InvalidPasswordError) as info:
            await connect(proc, user=user, password=password)
        errors.append((info.value.sqlstate, str(info.value).replace(user, "USER")))
    assert errors[0] == errors[1] == ("28P01", 'password authentication failed for user "USER"')


async def test_trust_auth_still_requires_known_user(pgpool_proc):
    proc = pgpool_proc({"auth_type": "trust"})
    conn = await connect(proc, password="ignored")
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="trust"):
        await connect(proc, user="stranger", password="x")


async def test_ssl_request_answered_n_and_gssenc_too(pgpool_proc):
    proc = pgpool_proc()
    for code in (80877103, 80877104):
        raw = await RawClient.open(proc.port)
        raw.send(struct.pack("!II", 8, code))
        assert await raw.reader.readexactly(1) == b"N"
        await raw.login_md5("app", "app")
        raw.send(m.query("SELECT 1"))
        assert (await raw.read_until(b"Z"))[-1] == (b"Z", b"I")
        raw.close()
    # libpq: sslmode=prefer falls back to plain; sslmode=require is refused by the client itself.
    with psycopg.connect(proc.dsn() + "?sslmode=prefer") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError, match="SSL"):
        psycopg.connect(proc.dsn() + "?sslmode=require")


async def test_startup_parameters_of_real_drivers(pgpool_proc):
    proc = pgpool_proc({"default_pool_size": 1})
    settings = {"application_name": "prefect-api", "search_path": "pg_catalog, public",
                "default_transaction_isolation": "repeatable read", "DateStyle": "SQL, DMY",
                "TimeZone": "Europe/Paris"}
    conn = await connect(proc, server_settings=settings)
    try:
        assert await conn.fetchval("SHOW application_name") == "prefect-api"
        assert await conn.fetchval("SHOW search_path") == "pg_catalog, public"
        assert await conn.fetchval("SHOW default_transaction_isolation") == "repeatable read"
        assert await conn.fetchval("SHOW DateStyle") == "SQL, DMY"
        assert conn.get_settings().DateStyle == "SQL, DMY"
        assert conn.get_settings().client_encoding == "UTF8"   # asyncpg sent 'utf8' with quotes
    finally:
        await conn.close()
    # JDBC-style extra_float_digits and psycopg's options=-c ... are accepted too.
    with psycopg.connect(proc.dsn(), options="-c statement_timeout=1234 -c extra_float_digits=2") as pconn:
        assert pconn.execute("SHOW statement_timeout").fetchone() == ("1234ms",)
        assert pconn.execute("SHOW extra_float_digits").fetchone() == ("2",)


async def test_invalid_startup_parameter_value_is_reported_like_postgres(pgpool_proc):
    proc = pgpool_proc()
    with pytest.raises(asyncpg.PostgresError) as info:
        await connect(proc, server_settings={"TimeZone": "Not/AZone"})
    assert info.value.sqlstate == "22023"


async def test_ignore_startup_parameters(pgpool_proc):
    proc = pgpool_proc({"ignore_startup_parameters": "no_such_guc"})
    conn = await connect(proc, server_settings={"no_such_guc": "1"})
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


async def test_client_login_timeout(pgpool_proc):
    proc = pgpool_proc({"client_login_timeout": 0.5})
    raw = await RawClient.open(proc.port)
    raw.send(m.startup_message({"user": "app", "database": "app"}))
    t, _ = await raw.read_message()
    assert t == b"R"              # asked for a password, which never comes
    error = await raw.read_error(timeout=5)
    assert "client_login_timeout" in error["M"]
    raw.close()


async def test_unknown_database(pgpool_proc):
    proc = pgpool_proc(databases={"app": "host=127.0.0.1 port=1"})
    with pytest.raises(asyncpg.InvalidCatalogNameError, match='^no such database: other '):
        await connect(proc, dbname="other")
