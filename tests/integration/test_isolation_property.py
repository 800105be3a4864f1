"""Property: through pgpool every client sees exactly what it would see on its own direct connection.

Hypothesis interleaves 2-3 asyncpg clients (defaults: statement cache on) over a pool of one
server, each step drawn from statements that change session state (every form pgpool must
follow or pin) and statements that look at it. Each client is a twin (tests/differential.py):
the same step runs through pgpool and on the client's own direct connection, and the two
observations must be equal.

Scheduling follows what a pool of one allows: while a client is inside a transaction or holds
state that cannot move to another server (listening channels, advisory locks, temp tables,
SQL prepared statements, WITH HOLD cursors, a changed role), only that client takes steps; the
others would wait for the server. Whether it holds such state is asked of its direct
connection (the oracle), never guessed from the steps.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.differential import Twin, create_twin_database, open_twins

THOROUGH = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"
# Direct sides live in their own database: advisory lock keys are per database, and a pooled and
# a direct side taking the same key would wait for each other.
TWIN_DATABASE = "app_direct"
QUERY_WAIT_TIMEOUT = 5          # a client pgpool keeps waiting shows up as an error (loaded CI: not less)
STEP_TIMEOUT = QUERY_WAIT_TIMEOUT + 3


@dataclass(frozen=True)
class Step:
    sql: str                # "{me}" becomes the client's own advisory-lock key prefix
    simple: bool = False    # simple query protocol (asyncpg execute) instead of fetch (prepared, cached)

    def __repr__(self) -> str:
        return f"{'simple' if self.simple else 'fetch'}({self.sql!r})"

    def for_client(self, index: int):
        sql = self.sql.replace("{me}", str(index + 1))
        if not self.simple:
            return sql

        async def simple(conn):
            return await conn.execute(sql)
        simple.__name__ = f"simple: {sql}"
        return simple


CHANGES = [Step(sql) for sql in (
    "SET search_path = tenant_x, public",
    "SET statement_timeout = '41s'",
    "SET LOCAL statement_timeout = '44s'",
    "RESET search_path",
    "RESET statement_timeout",
    "RESET ALL",
    "SELECT set_config('search_path', 'tenant_y, public', false)",
    "SELECT set_config('statement_timeout', '42s', false)",
    "SELECT set_config('search_path', 'tenant_local', true)",
    "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    "LISTEN ch_1",
    "LISTEN ch_2",
    "UNLISTEN ch_1",
    "UNLISTEN *",
    # Lock keys are per client ({me}1, {me}2), so a client never waits for another's lock.
    "SELECT pg_advisory_lock({me}1)",
    "SELECT pg_try_advisory_lock({me}2)",
    "SELECT pg_advisory_unlock({me}1)",
    "SELECT pg_advisory_unlock_all()",
    "SELECT pg_advisory_xact_lock({me}3)",
    "WITH l AS (SELECT pg_advisory_lock({me}4)) SELECT 1 FROM l",
    "SELECT pg_advisory_unlock({me}4)",
    "CREATE TEMP TABLE IF NOT EXISTS tt_1 (x int)",
    "CREATE TABLE IF NOT EXISTS pg_temp.tt_2 (x int)",
    "DROP TABLE IF EXISTS pg_temp.tt_1",
    "DROP TABLE IF EXISTS pg_temp.tt_2",
    "PREPARE p_1 AS SELECT 1",
    "EXECUTE p_1",
    "DEALLOCATE p_1",
    "DEALLOCATE ALL",
    "DISCARD ALL",
    "SET ROLE app",
    "RESET ROLE",
    "DECLARE c_1 CURSOR WITH HOLD FOR SELECT 1",
    "CLOSE c_1",
    "CLOSE ALL",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
)] + [Step(sql, simple=True) for sql in (
    "SET statement_timeout = '43s'; SELECT 1",
    "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;",   # asyncpg's own pool reset
    "/* c */ LISTEN ch_2",
    "DO $$BEGIN PERFORM set_config('search_path', 'tenant_do', false); END$$",
    "DO $$BEGIN EXECUTE 'LISTEN ch_3'; END$$",
    "DO $$BEGIN PERFORM pg_advisory_lock({me}5); END$$",
    "SELECT pg_advisory_unlock({me}5)",
    "BEGIN",
    "COMMIT",
)]

LOOKS = [Step(sql) for sql in (
    "SELECT current_setting('search_path')",
    "SELECT current_setting('statement_timeout')",
    "SELECT current_setting('application_name')",
    "SELECT current_setting('default_transaction_isolation'), current_setting('default_transaction_read_only')",
    "SELECT array(SELECT pg_listening_channels() ORDER BY 1)",
    "SELECT array(SELECT objid::int FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() "
    "ORDER BY 1)",
    "SELECT array(SELECT relname::text FROM pg_class WHERE relnamespace = pg_my_temp_schema() ORDER BY 1)",
    "SELECT array(SELECT name FROM pg_prepared_statements WHERE from_sql ORDER BY 1)",
    "SELECT count(*) FROM tt_1",
    "SELECT current_setting('role')",
    "SELECT array(SELECT name::text FROM pg_cursors ORDER BY 1)",
)]

# State that cannot follow a client to another server: while it exists the client keeps its server.
HOLDS_SERVER = """
SELECT (SELECT count(*) FROM pg_listening_channels())
     + (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid())
     + (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema())
     + (SELECT count(*) FROM pg_prepared_statements WHERE from_sql)
     + (SELECT count(*) FROM pg_cursors WHERE is_holdable)
     + (current_setting('role') <> 'none')::int   -- pgpool may pin a changed role rather than replay it
"""


async def holds_server(twin: Twin) -> bool:
    direct = twin.direct
    if direct.is_in_transaction():
        return True
    # prepare(), not fetch(): the probe must not touch the direct side's statement cache,
    # which has to stay the twin of the pooled side's (DISCARD ALL invalidates both).
    return bool(await (await direct.prepare(HOLDS_SERVER)).fetchval())


def startup_settings(index: int) -> dict[str, str]:
    # Every client starts with its own values, so a server changing hands must be given them.
    return {"search_path": f"home_{index}, public", "statement_timeout": f"{30 + index}s",
            "application_name": f"twin_{index}"}


async def run_interleaving(proc, postgres, data) -> None:
    clients = data.draw(st.integers(2, 3), label="clients")
    steps = data.draw(st.integers(2, 16), label="steps")
    async with open_twins(proc, postgres, n=clients, direct_dbname=TWIN_DATABASE, timeout=STEP_TIMEOUT,
                          kw_for=lambda i: {"server_settings": startup_settings(i)}) as twins:
        owner: Twin | None = None   # the client that holds the only server, if any
        for _ in range(steps):
            candidates = [owner] if owner is not None else twins
            if len(candidates) > 1:   # drawn by name: Hypothesis prints the draws of a failing example
                name = data.draw(st.sampled_from([t.name for t in candidates]), label="client")
                twin = next(t for t in candidates if t.name == name)
            else:
                twin = candidates[0]
            step = data.draw(st.sampled_from(LOOKS) | st.sampled_from(CHANGES), label=f"step of {twin.name}")
            await twin.same(step.for_client(twins.index(twin)))
            owner = twin if await holds_server(twin) else None


@pytest.mark.timeout(900)   # passing takes well under a minute; shrinking a failure takes longer
def test_every_client_sees_what_its_direct_connection_sees(pgpool_proc, postgres):
    create_twin_database(postgres, TWIN_DATABASE)

    @settings(max_examples=300 if THOROUGH else 25)
    @given(data=st.data())
    def interleavings(data):
        # A fresh pgpool per example: an example must replay the same way when Hypothesis shrinks it.
        proc = pgpool_proc({"default_pool_size": 1, "query_wait_timeout": QUERY_WAIT_TIMEOUT})
        try:
            asyncio.run(run_interleaving(proc, postgres, data))
        finally:
            proc.stop()

    interleavings()
