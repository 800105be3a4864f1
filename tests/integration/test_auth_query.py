"""auth_user / auth_query / auth_dbname: users not in auth_file, their secrets read from the server."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from tests.integration.helpers import connect

AUTH_FUNCTION = """
CREATE SCHEMA IF NOT EXISTS pgpool_auth;
CREATE OR REPLACE FUNCTION pgpool_auth.get_auth(p_usename text, OUT usename name, OUT passwd text)
RETURNS record LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS
$$ SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END
   FROM pg_authid WHERE rolname = p_usename AND rolcanlogin $$;
REVOKE ALL ON FUNCTION pgpool_auth.get_auth(text) FROM PUBLIC;
GRANT USAGE ON SCHEMA pgpool_auth TO plainuser;
GRANT EXECUTE ON FUNCTION pgpool_auth.get_auth(text) TO plainuser;
"""


@pytest.fixture
def auth_function(postgres):
    """The SECURITY DEFINER function RDS users need (pg_authid is not readable there), in database postgres."""
    postgres.run_sql(AUTH_FUNCTION)


async def login_as(proc, user: str, password: str) -> str:
    conn = await connect(proc, user=user, password=password)
    try:
        return await conn.fetchval("SELECT current_user")
    finally:
        await conn.close()


@pytest.mark.parametrize("auth_type", ["md5", "scram-sha-256"])
async def test_scram_and_md5_roles_with_the_default_query(pgpool_proc, auth_type):
    """Only auth_user is in auth_file. app's secret is a SCRAM verifier (the server login reuses the
    client's proof keys); md5user's is an md5 hash (md5 both ways)."""
    proc = pgpool_proc({"auth_type": auth_type, "auth_user": "postgres"}, users={"postgres": "postgres"})
    assert await login_as(proc, "app", "app") == "app"
    if auth_type == "md5":
        assert await login_as(proc, "md5user", "md5pass") == "md5user"
    with pytest.raises(asyncpg.InvalidPasswordError, match='password authentication failed for user "app"'):
        await login_as(proc, "app", "wrong")


async def test_missing_user_fails_like_a_wrong_password(pgpool_proc):
    proc = pgpool_proc({"auth_user": "postgres"}, users={"postgres": "postgres"})
    with pytest.raises(asyncpg.InvalidPasswordError, match='password authentication failed for user "nosuchuser"'):
        await login_as(proc, "nosuchuser", "whatever")


async def test_failing_auth_query_names_the_cause(pgpool_proc, postgres):
    """auth_user may not read pg_authid (as on RDS), or the function is missing: a clear error and a log line."""
    proc = pgpool_proc({"auth_user": "plainuser"}, users={"plainuser": "plainpass"},
                       databases={"app": f"host=127.0.0.1 port={postgres.port}",
                                  "other": f"host=127.0.0.1 port={postgres.port} dbname=app "
                                           f"auth_query='SELECT * FROM nosuch.get_auth($1)'"})
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError,
                       match=r'auth_query failed for user "app" in pool app/plainuser: permission denied for '
                             r'table pg_authid \(SQLSTATE 42501\)'):
        await login_as(proc, "app", "app")
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError,
                       match=r'auth_query failed for user "app".*schema "nosuch" does not exist'):
        await connect(proc, user="app", password="app", dbname="other")
    assert "auth_query failed for user 'app'" in proc.log_text()
    # auth_user itself still logs in from auth_file.
    assert await login_as(proc, "plainuser", "plainpass") == "plainuser"


async def test_security_definer_function_per_database(pgpool_proc, postgres, auth_function):
    """The RDS recipe: a non-superuser auth_user calling the SECURITY DEFINER function in auth_dbname."""
    entry = (f"host=127.0.0.1 port={postgres.port} auth_user=plainuser auth_dbname=postgres "
             f"auth_query='SELECT usename, passwd FROM pgpool_auth.get_auth($1)'")
    # auth_dbname names a [databases] entry, as in PgBouncer.
    proc = pgpool_proc({"auth_type": "scram-sha-256"}, users={"plainuser": "plainpass"},
                       databases={"app": entry, "postgres": f"host=127.0.0.1 port={postgres.port}"})
    assert await login_as(proc, "app", "app") == "app"
    # A burst of logins of the same user: one lookup, every login right, each server login by pass-through.
    results = await asyncio.gather(*(login_as(proc, "app", "app") for _ in range(20)))
    assert results == ["app"] * 20
    with pytest.raises(asyncpg.InvalidPasswordError):
        await login_as(proc, "nosuchuser", "x")
    # The lookups ran as plainuser in database postgres, in a pool of their own.
    assert "pool postgres/plainuser: created" in proc.log_text()


async def test_auth_query_lookups_count_no_client_against_the_limits(pgpool_proc):
    """pgpool's own auth_query runs on the auth database's pool without counting as a client of it:
    lookups must never fill max_db_client_connections / max_user_client_connections."""
    proc = pgpool_proc({"auth_type": "md5", "auth_user": "postgres", "max_db_client_connections": 2,
                        "max_user_client_connections": 2}, users={"postgres": "postgres"})
    for user, password in [("app", "app"), ("md5user", "md5pass"), ("app", "app"), ("md5user", "md5pass")]:
        assert await login_as(proc, user, password) == user
    # The limit itself still holds for real clients.
    held = [await connect(proc, user="app", password="app") for _ in range(2)]
    try:
        with pytest.raises(asyncpg.TooManyConnectionsError, match="max_db_client_connections"):
            await connect(proc, user="md5user", password="md5pass")
    finally:
        for conn in held:
            await conn.close()
