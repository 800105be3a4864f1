"""A CancelRequest sent right after a query reaches that query, even while pgpool is still giving
the server the client's own parameters (issue 8, case 10)."""

from __future__ import annotations

import asyncio

import asyncpg

from pgpool.protocol import messages as m
from pgpool.protocol.errors import parse_error_fields
from tests.frontend import query
from tests.integration.helpers import RawClient


async def test_cancel_sent_during_parameter_replay_cancels_the_query(pgpool_proc):
    proc = pgpool_proc({"default_pool_size": 1})
    other = await asyncpg.connect(proc.dsn())
    client = await RawClient.open(proc.port)
    # Startup values unlike `other`'s: each time the server comes back from `other`, pgpool replays them.
    key = await client.login_md5("app", "app", application_name="cancel_me", search_path="cancel_schema, public",
                                 statement_timeout="60s")
    assert key is not None
    loop = asyncio.get_running_loop()
    outcomes = []
    try:
        for _ in range(5):
            assert await other.fetchval("SELECT current_setting('application_name')") == ""
            canceller = await RawClient.open(proc.port)     # connected first: the cancel follows at once
            started = loop.time()
            client.send(query("SELECT pg_sleep(2)"))
            canceller.send(m.cancel_request(*key))
            replies = await client.read_until(b"Z")
            errors = [parse_error_fields(body)["C"] for t, body in replies if t == b"E"]
            outcomes.append((errors, round(loop.time() - started, 2)))
            canceller.close()
        assert all(errors == ["57014"] and elapsed < 1.0 for errors, elapsed in outcomes), outcomes
        # The cancel hit the query, not the replay: the client's own values are in place.
        client.send(query("SELECT current_setting('application_name')"))
        rows = [body for t, body in await client.read_until(b"Z") if t == b"D"]
        assert len(rows) == 1 and b"cancel_me" in rows[0]
    finally:
        client.close()
        await other.close()
