"""login_notify_message: the NOTICE every client gets after logging in, as PgBouncer sends it."""

from __future__ import annotations


async def test_login_notify_message_reaches_the_client(pgpool_proc):
    from pgpool.protocol.errors import parse_error_fields
    from tests.integration.helpers import RawClient
    proc = pgpool_proc({"login_notify_message": "you are talking to pgpool"})
    client = await RawClient.open(proc.port)
    try:
        await client.login_md5("md5user", "md5pass")
        kind, body = await client.read_message()
        assert kind == b"N" and parse_error_fields(body)["M"] == "you are talking to pgpool"
    finally:
        client.close()
