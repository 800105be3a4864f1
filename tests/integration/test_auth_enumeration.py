"""No user enumeration through the method asked for (issue 8, case 11): with auth_type md5 and an
auth_file mixing SCRAM verifiers, md5 secrets and plain passwords, what an unknown name is asked for
is what known users are asked for, in the same proportions, and the same on every attempt."""

from __future__ import annotations

import asyncpg
import pytest

from pgpool.protocol import messages as m
from tests.integration.helpers import RawClient

SASL, MD5 = 10, 5


async def asked_for(port: int, user: str) -> int:
    client = await RawClient.open(port)
    try:
        client.send(m.startup_message({"user": user, "database": "app"}))
        msg_type, body = await client.read_message()
        assert msg_type == b"R", (msg_type, body)
        return m.parse_authentication(body)[0]
    finally:
        client.close()


async def test_unknown_users_are_asked_like_known_ones_under_md5_with_mixed_secrets(pgpool_proc, postgres):
    # The secrets Postgres stores: app's is a SCRAM verifier, md5user's an md5 secret.
    stored = dict(line.split("|", 1) for line in postgres.run_sql(
        "SELECT rolname, rolpassword FROM pg_authid WHERE rolname IN ('app', 'md5user')").splitlines())
    assert stored["app"].startswith("SCRAM-SHA-256$") and stored["md5user"].startswith("md5")
    users = {"app": stored["app"], "md5user": stored["md5user"], "plainuser": "plainpass", "postgres": "postgres"}
    proc = pgpool_proc({"auth_type": "md5"}, users=users)

    assert await asked_for(proc.port, "app") == SASL
    assert await asked_for(proc.port, "md5user") == MD5
    unknown = {f"nobody_{i}": await asked_for(proc.port, f"nobody_{i}") for i in range(60)}
    # One known user in four is asked for SASL: so are some unknown names, and the others for md5.
    assert set(unknown.values()) == {SASL, MD5}, unknown
    for name in list(unknown)[:10]:
        assert await asked_for(proc.port, name) == unknown[name]

    # Known users still log in, with the method their secret allows.
    for user, password in (("app", "app"), ("md5user", "md5pass"), ("plainuser", "plainpass")):
        conn = await asyncpg.connect(proc.dsn(user, password=password))
        assert await conn.fetchval("SELECT current_user") == user
        await conn.close()
    # An unknown user fails exactly like a wrong password, whichever method it was asked for.
    for method in (SASL, MD5):
        name = next(n for n, asked in unknown.items() if asked == method)
        with pytest.raises(asyncpg.InvalidPasswordError, match=f'password authentication failed for user "{name}"'):
            await asyncpg.connect(proc.dsn(name, password="guess"))
    with pytest.raises(asyncpg.InvalidPasswordError, match='password authentication failed for user "app"'):
        await asyncpg.connect(proc.dsn("app", password="guess"))
