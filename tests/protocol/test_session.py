"""Statement classification and the audit's answer (session.py), without sockets.

Every form issue 8 lists in cases 1, 2, 5 and 6 is classified here: what is followed as a
SET / RESET, what makes the audit due, what drops state, what is refused when pinning is off.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgpool import session
from pgpool.session import AUDIT, DROPS, REFUSE, STATELESS, UNDO, audit_sql, classify, parse_audit, prefilter, \
    verdict_of
from tests.protocol.fakes import (
    SYNC, Plane, bind, complete, data_row, execute, parameter_status, parse, query, ready, row_description,
    server_of,
)


def verdict(sql: str):
    return verdict_of(sql.encode())


def changes(sql: str) -> list[tuple[str, str, str]]:
    return [(c.kind, c.name, c.statement) for c in verdict(sql).changes]


# ---- what ORMs send never reaches the parser ---------------------------------------------------

PLAIN = [
    "BEGIN", "COMMIT", "ROLLBACK", "begin;", "END", "START TRANSACTION ISOLATION LEVEL REPEATABLE READ",
    "SHOW search_path",
    "SELECT 1",
    "SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
    "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)",
    "DELETE FROM t WHERE id = ANY($1::uuid[])",
    "SELECT count(*), max(updated), coalesce(sum(x), 0) FROM flow_run WHERE state_type IN ($1, $2) GROUP BY 1",
    "INSERT INTO flow_run (id, name) VALUES ($1::UUID, $2::VARCHAR) ON CONFLICT (id) DO UPDATE SET name = "
    "excluded.name RETURNING flow_run.id, now()",
    "WITH x AS (SELECT jsonb_build_object('a', 1) AS j) SELECT j FROM x",
    "SELECT CAST(x AS numeric(10, 2)), date_trunc('day', now()) FROM t ORDER BY 1 LIMIT 10",
    "SELECT count(*) FILTER (WHERE a) OVER (PARTITION BY (b)) FROM t GROUP BY (c)",
]


@pytest.mark.parametrize("sql", ["SELECT over(1)", "SELECT conflict(1)", "SELECT x FROM t GROUP BY by(1)",
                                 "SELECT set(1)", "SELECT pg_advisory_lock (1)", 'SELECT "pg_advisory_lock"(1)',
                                 "SELECT pg_catalog . pg_advisory_lock(1)", "SELECT pg_advisory_lock/**/(1)"])
def test_calls_that_look_like_grammar_are_left_to_the_parser(sql):
    assert not prefilter(sql.encode())
    assert verdict(sql).flags & AUDIT, sql


@pytest.mark.parametrize("sql", PLAIN)
def test_plain_statements_are_proven_stateless_by_the_byte_prefilter(sql, monkeypatch):
    monkeypatch.setattr(session.parser, "parse_sql", lambda *a: pytest.fail("the parser was called"))
    assert prefilter(sql.encode())
    assert verdict(sql) is STATELESS


@pytest.mark.parametrize("sql", [
    "SELECT 'LISTEN to PREPARE a TEMP table'",
    "SELECT * FROM temperatures",
    "/* a comment */ SELECT 1",
    "SELECT now() -- trailing",
    "CREATE TABLE t (a int)",
    "SELECT $$ LISTEN x $$",
])
def test_statements_the_prefilter_leaves_to_the_parser_are_stateless_when_they_are(sql):
    assert verdict(sql) is STATELESS


# ---- settings: SET / RESET / set_config --------------------------------------------------------

def test_a_single_set_is_followed_with_its_statement():
    assert changes("SET search_path TO app, public") == [("set", "search_path", "SET search_path TO app, public")]
    assert changes("set time zone 'UTC'") == [("set", "TimeZone", "set time zone 'UTC'")]
    assert changes("SET SCHEMA 'app'") == [("set", "search_path", "SET SCHEMA 'app'")]
    assert changes("SET myapp.tenant = '42'") == [("set", "myapp.tenant", "SET myapp.tenant = '42'")]


def test_a_set_inside_a_statement_list_is_followed_with_its_own_text():
    """Case 5: `SET statement_timeout=1; SELECT 1` leaked to the next client."""
    assert changes("SET statement_timeout=1; SELECT 1") == [("set", "statement_timeout", "SET statement_timeout=1")]
    assert changes("SELECT 1; SET a = 1; SET b TO 2;") == [("set", "a", "SET a = 1"), ("set", "b", "SET b TO 2")]


def test_set_local_and_set_transaction_are_not_session_state():
    for sql in ("SET LOCAL search_path TO app", "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
                "SET LOCAL ROLE bob", "SET CONSTRAINTS ALL DEFERRED"):
        assert verdict(sql) is STATELESS, sql


@pytest.mark.parametrize("sql", [
    "RESET ALL", "reset all;", "DISCARD ALL",
    # asyncpg's pool reset on every release (case 1)
    "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;",
    "/* psql */ RESET ALL",
])
def test_reset_all_in_every_form(sql):
    assert [c.kind for c in verdict(sql).changes] == ["reset_all"]


def test_reset_one_and_set_to_default_go_back_to_the_startup_value():
    assert changes("RESET search_path") == [("reset", "search_path", "")]
    assert changes("SET statement_timeout TO DEFAULT") == [("reset", "statement_timeout", "")]
    assert changes("RESET timezone") == [("reset", "TimeZone", "")]


@pytest.mark.parametrize("sql", [
    "SELECT set_config('statement_timeout', '1', false)",
    "SELECT set_config('search_path', 'tenant_b', false)",
    "SELECT pg_catalog.set_config('role', 'app2', false)",
    "SELECT 1 FROM (SELECT set_config('a.b', '1', false)) s",
    "DO $$ BEGIN PERFORM set_config('statement_timeout', '1', false); END $$",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
    "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "SET work_mem FROM CURRENT",
    "SELECT my_function()",
    "SELECT public.lower('x')",
    "CALL my_procedure()",
    "SELECT setseed(0.5)",
])
def test_settings_only_the_server_knows_make_the_audit_due(sql):
    """Case 5: set_config in SELECT / DO / functions, SET SESSION CHARACTERISTICS."""
    assert verdict(sql).flags & AUDIT, sql


def test_a_set_beside_transaction_control_in_one_query_is_checked_with_the_server():
    """Found by the property test: `BEGIN; SET work_mem = '6MB'; ROLLBACK` ends with ReadyForQuery 'I'."""
    assert verdict("BEGIN; SET work_mem = '6MB'; ROLLBACK").flags & AUDIT
    assert verdict("BEGIN; RESET ALL; COMMIT").flags & AUDIT
    assert not verdict("SET work_mem = '6MB'; SELECT 1").flags & AUDIT


def test_rollback_to_savepoint_is_marked_so_a_set_before_it_is_checked():
    assert verdict("ROLLBACK TO SAVEPOINT a").flags & UNDO
    assert verdict("ROLLBACK TO a").flags & UNDO
    assert verdict("rollback   to a").flags & UNDO
    assert verdict("SAVEPOINT a").flags == 0


# ---- state that cannot move ----------------------------------------------------------------------

@pytest.mark.parametrize("sql", [
    "LISTEN ch", "/* comment */ LISTEN ch", "-- c\nLISTEN ch", "SELECT 1; LISTEN ch",
    "PREPARE p AS SELECT 1", "/* c */ PREPARE p AS SELECT 1",
    "CREATE TEMP TABLE t (a int)", "CREATE TEMPORARY TABLE t (a int)", "CREATE LOCAL TEMP TABLE t (a int)",
    "CREATE TABLE pg_temp.x (a int)", "SELECT 1 AS a INTO TEMP t", "CREATE TEMP TABLE t AS SELECT 1",
    "CREATE TABLE pg_temp.t AS SELECT 1", "CREATE TEMP VIEW v AS SELECT 1", "CREATE TEMP SEQUENCE s",
    "CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
    "SELECT pg_advisory_lock(1)", "SELECT pg_try_advisory_lock(1)", "SELECT pg_advisory_lock_shared(1, 2)",
    "WITH l AS (SELECT pg_advisory_lock(42)) SELECT * FROM l",
    "SELECT pg_catalog.pg_advisory_lock($1)",
    "SET ROLE app2", "SET SESSION AUTHORIZATION app2", "SET SESSION ROLE app2",
])
def test_state_that_cannot_move_makes_the_audit_due_and_is_refused_without_pinning(sql):
    flags = verdict(sql).flags
    assert flags & AUDIT and flags & REFUSE, sql


@pytest.mark.parametrize("sql", [
    "SELECT lock_it()",                                # case 6: advisory lock taken inside a function
    "DO $$ BEGIN EXECUTE 'LISTEN ch'; END $$",         # case 6: dynamic SQL
    "EXECUTE p",
    "SELECT query_to_xml('LISTEN x', true, true, '')",
])
def test_code_pgpool_cannot_read_makes_the_audit_due(sql):
    assert verdict(sql).flags & AUDIT, sql


@pytest.mark.parametrize("sql", [
    "UNLISTEN *", "UNLISTEN ch", "CLOSE ALL", "CLOSE c", "DEALLOCATE p", "DEALLOCATE ALL", "DISCARD TEMP",
    "DISCARD ALL", "DROP TABLE t", "SELECT pg_advisory_unlock(1)", "SELECT pg_advisory_unlock_all()",
    "RESET ROLE", "SET ROLE NONE", "RESET SESSION AUTHORIZATION",
    "SET SESSION AUTHORIZATION DEFAULT",
])
def test_statements_that_may_drop_state_are_marked(sql):
    flags = verdict(sql).flags
    assert flags & DROPS and not flags & REFUSE, sql


def test_a_transaction_scoped_lock_and_a_non_hold_cursor_are_not_session_state():
    assert verdict("SELECT pg_advisory_xact_lock(1)") is STATELESS
    assert verdict("DECLARE c CURSOR FOR SELECT 1") is STATELESS
    assert verdict("CREATE TEMP TABLE t (a int) ON COMMIT DROP").flags & AUDIT   # the audit finds it gone


def test_text_the_parser_refuses_is_audited_not_trusted():
    assert verdict("LISTEN").flags & AUDIT
    assert verdict_of(b"LISTEN \xff").flags & AUDIT   # another client_encoding: the server knows


def test_huge_or_deep_statements_are_audited_without_parsing(monkeypatch):
    """One client's 300 KB expression must neither stall every client nor crash the parser."""
    monkeypatch.setattr(session.parser, "parse_sql", lambda *a: pytest.fail("the parser was called"))
    assert verdict_of(b"SELECT f(" + b"1+" * 100_000 + b"1)").flags & AUDIT
    assert verdict_of(b"SELECT f(" + b"1+" * 1_000 + b"1)").flags & AUDIT      # 2 KB, 2000 tokens
    assert verdict_of(b"INSERT INTO t VALUES " + b"($1, now()), " * 10_000 + b"($1, now())") is STATELESS


# ---- the cache ---------------------------------------------------------------------------------

def test_the_verdict_is_cached_per_text_and_read_from_the_given_slice(monkeypatch):
    session.clear_cache()
    raw = b"Q....SELECT my_function()\x00"
    first = classify(raw, 5, len(raw) - 1)
    monkeypatch.setattr(session, "verdict_of", lambda text: pytest.fail("classified twice"))
    assert classify(b"xx" + raw, 7, len(raw) + 1) is first


STATEMENTS = st.sampled_from([
    "SELECT 1", "SET a = 1", "RESET ALL", "LISTEN x", "SELECT pg_advisory_lock(1)", "SELECT f()",
    "BEGIN", "COMMIT", "DO $$ BEGIN END $$", "SELECT set_config('a', 'b', false)", "/* c */ PREPARE p AS SELECT 1",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", "ROLLBACK TO a", "CREATE TABLE pg_temp.t (a int)",
    "'", "$$", "/*", "--", ";", "(", "\"", "SELECT", "", " ", "é", "\x00",
])


@given(st.lists(STATEMENTS, max_size=6), st.sampled_from(["; ", ";", " ", "\n"]))
def test_random_statement_lists_never_crash_and_cached_equals_uncached(parts, joiner):
    text = joiner.join(parts).encode()
    uncached = verdict_of(text)
    session.clear_cache()
    assert classify(text, 0, len(text)) == uncached
    assert classify(text, 0, len(text)) == uncached


@given(st.binary(max_size=80))
def test_arbitrary_bytes_never_crash_the_classifier(text):
    verdict_of(text)


# ---- the audit -----------------------------------------------------------------------------------

def test_audit_sql_quotes_the_login_user():
    assert "'o''brien'" in audit_sql("o'brien")


def test_audit_rows_become_settings_and_pins():
    result = parse_audit(["ssearch_path=tenant_b, public", "sstatement_timeout=1ms", "srole=app2",
                          "sTimeZone=UTC", "plisten", "padvisory_lock", "prole"])
    assert result.settings == {"search_path": "tenant_b, public", "statement_timeout": "1ms", "TimeZone": "UTC"}
    assert result.pins == ("listen", "advisory_lock", "role")
    assert parse_audit([]).pins == () and parse_audit([]).settings == {}


@pytest.mark.parametrize("rows", [[None], ["x"], ["pnothing"], ["snovalue"]])
def test_an_audit_answer_that_is_not_ours_is_an_error(rows):
    with pytest.raises(ValueError):
        parse_audit(rows)


# ---- the data plane: the verdict at every execution, the audit, RESET (fake sockets) ------------

PARSE_COMPLETE = b"1\x00\x00\x00\x04"
BIND_COMPLETE = b"2\x00\x00\x00\x04"
NO_DATA = b"n\x00\x00\x00\x04"


def audit_answer(*rows: bytes) -> bytes:
    return row_description("v") + b"".join(data_row(r) for r in rows) + complete(f"SELECT {len(rows)}") + ready()


def test_a_named_statement_is_audited_at_every_execution_not_at_parse():
    """Case 2: psycopg and asyncpg prepare once and execute by name in later transactions."""
    plane = Plane(servers=1)
    client = plane.add_client()
    client.data_received(parse("LISTEN ch", "s1") + SYNC)
    server = server_of(client)
    server.transport.take()
    server.data_received(PARSE_COMPLETE + ready())
    assert b"pg_listening_channels" not in server.transport.take(), "a Parse alone changes nothing"
    assert plane.released(server) == 1
    for round_ in range(2):
        client.data_received(bind("", "s1") + execute() + SYNC)
        server = server_of(client)
        server.transport.take()
        server.data_received(BIND_COMPLETE + complete("LISTEN") + ready())
        assert b"pg_listening_channels" in server.transport.take(), f"execution {round_ + 1} not audited"
        server.data_received(audit_answer(b"plisten"))
        assert client.pinned and client.server is server


def test_an_audit_that_finds_nothing_releases_the_server_and_adopts_settings():
    plane = Plane(servers=1)
    client = plane.add_client()
    client.data_received(query("SELECT set_config('work_mem', '5MB', false)"))
    server = server_of(client)
    server.data_received(row_description("set_config") + data_row(b"5MB") + complete("SELECT 1") + ready())
    assert plane.released(server) == 0, "the audit comes first"
    server.data_received(audit_answer(b"swork_mem=5MB"))
    assert not client.pinned and plane.released(server) == 1
    assert client.params.statements == {"work_mem": "SELECT pg_catalog.set_config('work_mem', '5MB', false)"}
    assert plane.pool.stats.session_audits == 1 and plane.pool.stats.settings_adopted == 1


def test_plain_traffic_is_never_audited():
    plane = Plane(servers=1)
    client = plane.add_client()
    for sql in ("BEGIN", "SELECT count(*) FROM t WHERE id IN ($1)", "COMMIT"):
        client.data_received(query(sql))
        server_of(client).data_received(complete("X") + ready(b"I" if sql == "COMMIT" else b"T"))
    assert plane.pool.stats.session_audits == 0 and plane.released(plane.servers[0]) == 1


def test_reset_all_in_a_statement_list_goes_back_to_startup_values_and_tells_the_client():
    """Case 1: asyncpg's pool reset at every release."""
    plane = Plane(servers=1)
    client = plane.add_client(statements={"search_path": "SELECT pg_catalog.set_config('search_path', 'tenant_b', "
                                                         "false)"},
                              reported={"application_name": "tenant-app"})
    client.params.remember_startup()
    plane.servers[0].params.statements = dict(client.params.statements)   # as if synced before
    plane.servers[0].params.reported["application_name"] = "tenant-app"
    client.data_received(query("SET search_path TO other"))
    server = server_of(client)
    server.data_received(complete("SET") + ready())
    assert client.params.statements == {"search_path": "SET search_path TO other"}
    client.transport.take()
    client.data_received(query("SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;"))
    server = server_of(client)
    server.data_received(row_description("v") + data_row(b"") + complete("SELECT 1") + complete("CLOSE CURSOR ALL")
                         + complete("UNLISTEN") + parameter_status("application_name", "") + complete("RESET")
                         + ready())
    assert client.params.statements == client.params.startup_statements
    assert client.params.reported["application_name"] == "tenant-app"
    told = client.transport.take()
    assert told.endswith(parameter_status("application_name", "tenant-app") + ready()), told[-80:]
    assert server.params.statements == {}, "the server's own RESET ALL went to its defaults"
