"""Session parameters: recognising SET / RESET / DISCARD, the startup `options`, and the SQL
that gives a server the client's session (pure, no sockets)."""

from __future__ import annotations

import re
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgpool import params as params_module
from pgpool.params import SessionChange, SessionParams, parse_options, search_path_key, share_values, sync_sql
from pgpool.session import classify as classify_text

REPORTED = frozenset({"client_encoding", "DateStyle", "TimeZone", "application_name", "server_version"})


def classify_query(buf: bytes, start: int, end: int) -> SessionChange | None:
    """The one SET / RESET a Query body (NUL-terminated) makes, as session.py classifies it."""
    changes = classify_text(buf, start, end - 1).changes
    return changes[0] if len(changes) == 1 else None


def classify(sql: str) -> SessionChange | None:
    body = sql.encode("utf-8") + b"\x00"
    raw = b"Q" + struct.pack("!I", 4 + len(body)) + body
    return classify_query(raw, 5, len(raw))


def as_tuple(change: SessionChange | None):
    return None if change is None else (change.kind, change.name, change.statement)


def statements_of(sql: str) -> list[str]:
    """The statements of a sync_sql result (test inputs contain no ';' inside literals)."""
    return [part.strip() for part in sql.split(";") if part.strip()]


# ---- classify_query: what is tracked ---------------------------------------------------------

@pytest.mark.parametrize("sql, name", [
    ("SET x = 1", "x"),
    ("SET x TO 'a'", "x"),
    ("SET search_path TO app, public", "search_path"),
    ("SET SESSION statement_timeout = '5s'", "statement_timeout"),
    ("SET myapp.tenant = '42'", "myapp.tenant"),
    ('SET "search_path" TO app', "search_path"),
], ids=["equals", "to", "list", "session", "custom-dotted", "quoted-name"])
def test_set_is_tracked_with_its_statement(sql, name):
    assert as_tuple(classify(sql)) == ("set", name, sql)


@pytest.mark.parametrize("sql", ["SET TIME ZONE 'UTC'", "SET SESSION TIME ZONE 'Europe/Paris'"])
def test_set_time_zone_is_timezone(sql):
    assert as_tuple(classify(sql)) == ("set", "TimeZone", sql)


@pytest.mark.parametrize("sql, statement", [
    ("set Search_Path to app", "set Search_Path to app"),
    ("  \n\tSET   search_path   =   app  ", "SET   search_path   =   app"),
    ("SET search_path TO app;", "SET search_path TO app"),
    ("SET search_path TO app ;  \n", "SET search_path TO app "),
    ("sEt SeSsIoN search_path tO app", "sEt SeSsIoN search_path tO app"),
], ids=["case", "whitespace", "semicolon", "semicolon-space", "mixed-case"])
def test_case_whitespace_and_trailing_semicolon(sql, statement):
    change = classify(sql)
    assert change is not None and (change.kind, change.name) == ("set", "search_path")
    assert change.statement.strip() == statement.strip()


def test_reported_names_keep_postgres_spelling():
    assert classify("SET datestyle TO 'ISO, DMY'").name == "DateStyle"
    assert classify("SET APPLICATION_NAME = 'x'").name == "application_name"
    assert classify("set timezone = 'UTC'").name == "TimeZone"


@pytest.mark.parametrize("sql", [
    "SET LOCAL search_path TO app",
    "SET LOCAL TIME ZONE 'UTC'",
    "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "SET TRANSACTION SNAPSHOT '00000003-0000001B-1'",
    "SET CONSTRAINTS ALL DEFERRED",
    "SET ROLE bob",
    "SET ROLE NONE",
    "SET SESSION ROLE bob",
    "SET SESSION AUTHORIZATION bob",
    "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
], ids=["local", "local-tz", "transaction", "snapshot", "constraints", "role", "role-none", "session-role",
        "session-authorization", "session-characteristics"])
def test_set_forms_that_are_not_session_parameters_are_not_tracked(sql):
    assert classify(sql) is None


@pytest.mark.parametrize("sql, guc", [
    ("SET SCHEMA 'app'", "search_path"),
    ("SET NAMES 'LATIN1'", "client_encoding"),
    ("SET XML OPTION DOCUMENT", "xmloption"),
], ids=["schema", "names", "xml-option"])
def test_set_synonyms_are_tracked_under_the_parameter_they_set_or_not_at_all(sql, guc):
    """SET SCHEMA / NAMES / XML OPTION are grammar for search_path / client_encoding / xmloption.

    Tracking them under another name replays `RESET schema` on the next client's server, an
    "unrecognized configuration parameter" error that costs that client its connection.
    """
    change = classify(sql)
    assert change is None or change.name == guc


@pytest.mark.parametrize("sql, name", [
    ("SET x = 1; SELECT 1", "x"),
    ("SELECT 1; SET x = 1", "x"),
    ("DISCARD ALL; SELECT 1", ""),
], ids=["set-select", "select-set", "discard-select"])
def test_a_set_or_reset_inside_a_statement_list_is_tracked(sql, name):
    """Issue 8, case 5: `SET statement_timeout=1; SELECT 1` leaked to the next client."""
    change = classify(sql)
    assert change is not None and change.name == name


@pytest.mark.parametrize("sql", [
    "SET x = 1; SET y = 2",
    "SET search_path TO app; RESET ALL",
    "SELECT set_config('search_path', 'app', false)",
    "SHOW search_path",
    "SELECT 1",
    "",
    "   ",
    "settle",
], ids=["set-set", "set-reset", "set-config", "show", "select", "empty", "blank", "word"])
def test_statements_without_exactly_one_set_or_reset(sql):
    assert classify(sql) is None


@pytest.mark.parametrize("sql, name", [
    ("RESET search_path", "search_path"),
    ("reset Statement_Timeout;", "statement_timeout"),
    ("RESET timezone", "TimeZone"),
    ("RESET myapp.tenant", "myapp.tenant"),
    ("SET statement_timeout TO DEFAULT", "statement_timeout"),   # SET TO DEFAULT is RESET (startup value)
    ("set time zone local", "TimeZone"),
])
def test_reset_one_parameter(sql, name):
    change = classify(sql)
    assert change is not None and (change.kind, change.name) == ("reset", name)


@pytest.mark.parametrize("sql", ["RESET ALL", "reset all;", "DISCARD ALL", "  discard   ALL ; "])
def test_reset_all_and_discard_all(sql):
    change = classify(sql)
    assert change is not None and change.kind == "reset_all"


@pytest.mark.parametrize("sql", ["DISCARD PLANS", "DISCARD TEMP", "DISCARD SEQUENCES"])
def test_other_discards_are_not_tracked(sql):
    assert classify(sql) is None


def test_only_the_given_body_is_read():
    raw = b"xxxxxQ....SET a = 1\x00SET b = 2\x00"
    start = raw.index(b"SET b")
    assert as_tuple(classify_query(raw, start, len(raw))) == ("set", "b", "SET b = 2")


def test_non_utf8_query_is_not_tracked():
    raw = b"SET x = '\xff'\x00"
    assert classify_query(raw, 0, len(raw)) is None


@given(st.binary(max_size=60))
def test_classify_never_raises(body):
    classify_query(body, 0, len(body))


# ---- SessionParams.apply -----------------------------------------------------------------------

def test_apply_records_resets_and_clears_statements():
    params = SessionParams({"TimeZone": "UTC"})
    params.apply(classify("SET search_path TO app"), REPORTED)
    params.apply(classify("SET statement_timeout = 5"), REPORTED)
    assert params.statements == {"search_path": "SET search_path TO app", "statement_timeout": "SET statement_timeout = 5"}
    params.apply(classify("SET search_path TO other"), REPORTED)
    assert params.statements["search_path"] == "SET search_path TO other"
    params.apply(classify("RESET statement_timeout"), REPORTED)
    assert params.statements == {"search_path": "SET search_path TO other"}
    params.apply(classify("DISCARD ALL"), REPORTED)
    assert params.statements == {}


def test_apply_leaves_reported_parameters_to_parameter_status():
    params = SessionParams({"TimeZone": "UTC"})
    params.apply(classify("SET TIME ZONE 'Europe/Paris'"), REPORTED)
    params.apply(classify("SET application_name = 'x'"), REPORTED)
    assert params.statements == {}
    assert params.reported == {"TimeZone": "UTC"}


# ---- sync_sql ----------------------------------------------------------------------------------

BASE = {"client_encoding": "UTF8", "DateStyle": "ISO, MDY", "TimeZone": "UTC", "application_name": "",
        "server_version": "15.4"}


def test_equal_sessions_need_no_sql():
    client = SessionParams(BASE, {"search_path": "SET search_path TO app"})
    server = SessionParams(BASE, {"search_path": "SET search_path TO app"})
    assert sync_sql(client, server, REPORTED) == ""


def test_reported_values_are_replayed_with_set_config_exactly_as_reported():
    client = SessionParams({**BASE, "TimeZone": "Europe/Paris", "application_name": "O'Brien's app"})
    server = SessionParams(BASE)
    assert sorted(statements_of(sync_sql(client, server, REPORTED))) == sorted([
        "SELECT pg_catalog.set_config('TimeZone', 'Europe/Paris', false)",
        "SELECT pg_catalog.set_config('application_name', 'O''Brien''s app', false)",
    ])


def test_reported_values_outside_the_reported_names_are_not_replayed():
    client = SessionParams({**BASE, "made_up": "1"})
    assert sync_sql(client, SessionParams(BASE), REPORTED) == ""


def test_statements_are_replayed_when_missing_or_different():
    client = SessionParams(BASE, {"search_path": "SET search_path TO app", "statement_timeout": "SET statement_timeout = 5"})
    server = SessionParams(BASE, {"search_path": "SET search_path TO other"})
    assert sorted(statements_of(sync_sql(client, server, REPORTED))) == [
        "SET search_path TO app", "SET statement_timeout = 5"]


def test_statements_the_server_has_and_the_client_lacks_are_reset():
    client = SessionParams(BASE, {"search_path": "SET search_path TO app"})
    server = SessionParams(BASE, {"search_path": "SET search_path TO app", "statement_timeout": "SET statement_timeout = 5",
                                  "myapp.tenant": "SET myapp.tenant = 1", "Odd-Name": 'SET "Odd-Name" = 1'})
    assert sorted(statements_of(sync_sql(client, server, REPORTED))) == sorted([
        "RESET statement_timeout", "RESET myapp.tenant", 'RESET "Odd-Name"'])


def test_resets_come_before_sets():
    client = SessionParams({**BASE, "TimeZone": "Asia/Tokyo"}, {"b": "SET b = 2"})
    server = SessionParams(BASE, {"a": "SET a = 1"})
    parts = statements_of(sync_sql(client, server, REPORTED))
    assert parts.index("RESET a") < parts.index("SET b = 2")
    assert len(parts) == 3


def test_a_trailing_comment_in_a_tracked_set_does_not_hide_the_statements_after_it():
    """`SET a = 1 -- why` is accepted by Postgres and tracked as written; joined to the next
    statement with a bare ';' the comment would swallow the rest of the line."""
    first = classify("SET a = 1 -- tenant default")
    second = classify("SET b = 2")
    assert first is not None and second is not None
    client = SessionParams(BASE)
    client.apply(first, REPORTED)
    client.apply(second, REPORTED)
    sql = sync_sql(client, SessionParams(BASE), REPORTED)
    visible = re.sub(r"--[^\n]*", "", sql)   # what the server's lexer keeps
    assert "SET a = 1" in visible and "SET b = 2" in visible, sql


# ---- parse_options -----------------------------------------------------------------------------

@pytest.mark.parametrize("options, expected", [
    ("-c search_path=app", {"search_path": "app"}),
    ("-csearch_path=app", {"search_path": "app"}),
    ("--search_path=app", {"search_path": "app"}),
    ("--statement-timeout=5s", {"statement_timeout": "5s"}),
    ("-c a=b -c c=d --e=f", {"a": "b", "c": "d", "e": "f"}),
    ("-c search_path=a\\ b", {"search_path": "a b"}),
    ("-c application_name=my\\ app\\\\x", {"application_name": "my app\\x"}),
    ("  -c   a=b  ", {"a": "b"}),
    ("-c a=b=c", {"a": "b=c"}),
    ("-c a=", {"a": ""}),
    ("", {}),
    ("-c", {}),
    ("-c noequals", {}),
    ("-d 5 -c a=b", {"a": "b"}),
], ids=["c", "c-joined", "long", "long-dashes", "several", "escaped-space", "escaped-backslash", "spaces",
        "value-with-equals", "empty-value", "empty", "c-alone", "no-equals", "other-switch"])
def test_parse_options(options, expected):
    assert parse_options(options) == expected


# ---- RESET goes back to the client's startup values (issue 8, case 1) --------------------------

def startup_session() -> SessionParams:
    params = SessionParams({**BASE, "application_name": "tenant-app"},
                           {"search_path": "SELECT pg_catalog.set_config('search_path', 'tenant_b', false)"})
    params.remember_startup()
    return params


def test_reset_all_goes_back_to_the_startup_values_not_to_the_servers():
    params = startup_session()
    params.apply(classify("SET search_path TO other"), REPORTED)
    params.apply(classify("SET work_mem = '1MB'"), REPORTED)
    params.reported["application_name"] = ""      # the server reported its own default after RESET ALL
    params.apply(classify("RESET ALL"), REPORTED)
    assert params.statements == {"search_path": "SELECT pg_catalog.set_config('search_path', 'tenant_b', false)"}
    assert params.reported["application_name"] == "tenant-app"


def test_reset_one_goes_back_to_its_startup_value_or_to_nothing():
    params = startup_session()
    params.apply(classify("SET search_path TO other"), REPORTED)
    params.apply(classify("SET work_mem = '1MB'"), REPORTED)
    params.apply(classify("RESET search_path"), REPORTED)
    params.apply(classify("RESET work_mem"), REPORTED)
    assert params.statements == startup_session().statements
    params.reported["application_name"] = ""
    params.apply(classify("RESET application_name"), REPORTED)
    assert params.reported["application_name"] == "tenant-app"


def test_a_servers_reset_all_forgets_every_statement():
    server = SessionParams(BASE, {"search_path": "SET search_path TO x"})
    server.apply(classify("RESET ALL"), REPORTED)
    assert server.statements == {}


def test_search_path_key_is_equal_exactly_when_the_tracked_search_path_is():
    a, b = SessionParams(BASE), SessionParams(BASE)
    assert search_path_key(a) == search_path_key(b) == b""
    a.apply(classify("SET search_path TO tenant_a"), REPORTED)
    assert search_path_key(a) != search_path_key(b)
    b.apply(classify("SET search_path TO tenant_a"), REPORTED)
    assert search_path_key(a) == search_path_key(b)
    a.apply(classify("SET work_mem = '1MB'"), REPORTED)
    assert search_path_key(a) == search_path_key(b)


# ---- idle clients share their startup values (issue 10: memory per idle client) -----------------

def test_sessions_with_the_same_startup_values_share_one_read_only_copy():
    a, b = startup_session(), startup_session()
    assert a.startup_reported is b.startup_reported and a.startup_statements is b.startup_statements
    assert a._reported is None and a._statements is None, "an unchanged session holds no dict of its own"
    with pytest.raises(TypeError):
        a.startup_reported["application_name"] = "x"   # type: ignore[index]
    with pytest.raises(TypeError):
        a.startup_statements["work_mem"] = "x"   # type: ignore[index]


def test_reading_takes_no_copy_and_sync_sql_of_equal_sessions_is_empty():
    a, b = startup_session(), startup_session()
    assert a.get_reported("application_name") == "tenant-app"
    assert dict(a.reported_items()) == {**BASE, "application_name": "tenant-app"}
    assert search_path_key(a) == b"SELECT pg_catalog.set_config('search_path', 'tenant_b', false)"
    assert sync_sql(a, b, REPORTED) == ""
    assert a.copy_statements() == b.statements_view() and a.copy_statements() is not a.startup_statements
    assert a._reported is None and a._statements is None


def test_a_change_to_one_session_never_reaches_another_sharing_its_values():
    a, b = startup_session(), startup_session()
    a.reported["application_name"] = "other"        # a ParameterStatus for a's server
    a.apply(classify("SET work_mem = '1MB'"), REPORTED)
    a.apply(classify("RESET search_path"), REPORTED)
    assert b.reported == {**BASE, "application_name": "tenant-app"}
    assert b.statements == {"search_path": "SELECT pg_catalog.set_config('search_path', 'tenant_b', false)"}
    assert dict(a.startup_reported) == b.reported and dict(a.startup_statements) == b.statements
    assert sync_sql(a, b, REPORTED) == \
        "SELECT pg_catalog.set_config('application_name', 'other', false);\nSET work_mem = '1MB'"
    a.apply(classify("RESET ALL"), REPORTED)
    assert a.statements == b.statements and a.reported == b.reported


def test_a_session_without_startup_values_shares_the_empty_ones():
    params = SessionParams()
    params.remember_startup()
    assert params.startup_statements is SessionParams().startup_statements
    params.apply(classify("SET work_mem = '1MB'"), REPORTED)
    assert params.statements == {"work_mem": "SET work_mem = '1MB'"} and dict(params.startup_statements) == {}


def test_the_shared_copies_are_bounded(monkeypatch):
    monkeypatch.setattr(params_module, "_SHARED_VALUES", {})
    first = share_values({"application_name": "app-0"})
    for i in range(1, params_module.SHARED_VALUES_LIMIT + 5):
        share_values({"application_name": f"app-{i}"})
    assert len(params_module._SHARED_VALUES) <= params_module.SHARED_VALUES_LIMIT
    again = share_values({"application_name": "app-0"})
    assert again == first and again is not first, "the table started over: a new copy of equal values"
