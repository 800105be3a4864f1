"""The fast pre-filters of session.py give exactly the verdicts of the pre-filter they replace.

The reference below is session.prefilter as it was before prefilter_at and _plain_shape existed
(copied verbatim). Hypothesis generates SQL texts from the pieces that decide the pre-filter's
answer (statement heads, calls, schema-qualified and quoted names, comments, statement lists,
literals, dollar quotes, INTO TEMP, case, blanks) and checks, for each text:

- prefilter, prefilter_at (in place, inside surrounding bytes) and the reference agree;
- a text _plain_shape matches is one the reference passes, and prefilter_at calls it PLAIN;
- classify, in both of its builds' paths, gives the verdict the reference and the parser give,
  from the cache too;
- what the reference passes, PostgreSQL's own parser (pglast) finds stateless or cannot parse.

The same file runs against the compiled build (C loops) and the pure-Python one (.ci/run).
"""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pgpool import session
from pgpool.session import (
    _AFTER_PAREN_WORDS, _AFTER_WORD, _DML_HEADS, _INSERT_TARGET_RE, _SAFE_CALLS, _TRIVIAL_HEADS, CHECKED, PLAIN,
    STATELESS, classify, prefilter, prefilter_at,
)

# ---- the reference: prefilter before this change, verbatim ----------------------------------------

_IDENT = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789_$")
_SPACE = frozenset(b" \t\r\n")


def reference_prefilter(text: bytes) -> bool:
    lower = text.lower()
    pos = 0
    end = len(lower)
    while pos < end and lower[pos] in _SPACE:
        pos += 1
    head = lower[pos:pos + 3]
    semicolon = lower.find(b";", pos)
    if semicolon >= 0 and lower[semicolon + 1:].strip(b" \t\r\n;"):
        return False
    if b"/*" in lower or b"--" in lower:
        return False
    if head in _TRIVIAL_HEADS:
        return b"(" not in lower
    if head == b"rol":
        return end - pos < 64 and b"to" not in lower[pos + 8:].split()
    if head not in _DML_HEADS:
        return False
    if head != b"ins" and head != b"upd" and head != b"del" and b"temp" in lower:
        return False
    if head == b"ins":
        target = _INSERT_TARGET_RE.match(lower, pos)
        if target is not None:
            pos = target.end()
    return _reference_calls_are_safe(lower, pos)


def _reference_calls_are_safe(lower: bytes, start: int) -> bool:
    paren = lower.find(b"(", start)
    while paren >= 0:
        last = paren - 1
        while last >= start and lower[last] in _SPACE:
            last -= 1
        first = last
        while first >= start and lower[first] in _IDENT:
            first -= 1
        if first < last:
            if first >= start and lower[first] in b'."':
                return False
            word = lower[first + 1:last + 1]
            if word not in _SAFE_CALLS and not _reference_grammar_word(lower, start, first, word):
                return False
        elif last >= start and lower[last] in b'."\'':
            return False
        paren = lower.find(b"(", paren + 1)
    return True


def _reference_grammar_word(lower: bytes, start: int, before: int, word: bytes) -> bool:
    while before >= start and lower[before] in _SPACE:
        before -= 1
    if word in _AFTER_PAREN_WORDS:
        return before >= start and lower[before] == 41
    previous = _AFTER_WORD.get(word)
    if previous is None:
        return False
    first = before
    while first >= start and lower[first] in _IDENT:
        first -= 1
    return lower[first + 1:before + 1] in previous


# ---- generated SQL ----------------------------------------------------------------------------------

BLANKS = ["", " ", "  ", "\t", "\n", "\r\n", "\x0b", "\x0c"]
HEADS = [
    "SELECT", "select", "SeLeCt", "sel", "selectemp", "INSERT INTO t", "INSERT INTO pgbench_history (tid, aid)",
    "insert into s.t as x (a)", "INSERT INTO \"T\" (a)", "INSERT INTO t(", "UPDATE", "update t set", "DELETE FROM",
    "WITH x AS (", "WITH", "withemp", "VALUES", "TABLE", "tabletemp", "BEGIN", "begin", "COMMIT", "END",
    "ABORT", "START TRANSACTION", "SHOW", "FETCH", "MOVE", "ROLLBACK", "ROLLBACK TO", "rollback   to sp",
    "ROLLBACK AND CHAIN", "SET", "SET LOCAL", "RESET ALL", "LISTEN", "DEALLOCATE", "DISCARD ALL", "CALL", "DO",
    "CREATE TEMP TABLE t", "PREPARE p AS SELECT", "EXECUTE", "", "(", ";", "/*", "--", "é",
]
TOKENS = [
    # names and grammar
    "abalance", "FROM", "pgbench_accounts", "WHERE", "aid", "=", "AND", "OR", "IN", "INTO", "TEMP", "temp",
    "Temporary", "tempo", "TeMp", "attempt", "AS", "ON", "CONFLICT", "GROUP", "ORDER", "PARTITION", "BY", "OVER",
    "FILTER", "LIMIT", "x", "t.a", '"Quoted"', '"q"."x"', "s.t", "$1", "$2", "*", ",", ".", "-", "/", "+", "::",
    "||", "<>", ")", "(", ") OVER (", ") FILTER (", "ON CONFLICT (", "GROUP BY (", "ORDER BY (",
    # calls: safe built-ins, state-changing ones, unknown, qualified, quoted, grammar-looking
    "count(", "now(", "coalesce(", "lower (", "set_config(", "SET_CONFIG(", "setseed(", "pg_advisory_lock(",
    "pg_advisory_unlock_all(", "pg_advisory_xact_lock(", "my_function(", "pg_catalog.lower(", "public.lower(",
    '"lower"(', '"my"(', "lower\t(", "over(", "filter(", "by(", "conflict(", "in (", "VALUES (", "exists(",
    "cast(", "query_to_xml(",
    # literals, comments, statement lists
    "48213", "-5", "1.5e3", "'text'", "'it''s'", "'a(b'", "'--'", "'/*'", "';'", "E'\\n'", "$$ LISTEN x $$",
    "$tag$ SELECT set_config('a', 'b', false) $tag$", "/* c */", "/**/", "-- c\n", "--", "/", "*", ";",
    "; ", ";;", "; SELECT 1", "; SET a = 1", ";\n", "\x00", "\xff", "é",
]


PLAIN_TOKENS = [token for token in TOKENS if "(" not in token]


@st.composite
def sql_texts(draw, heads=tuple(HEADS), tokens=tuple(TOKENS)) -> bytes:
    parts = [draw(st.sampled_from(BLANKS)), draw(st.sampled_from(heads))]
    for token in draw(st.lists(st.sampled_from(tokens) | st.text(alphabet=" ();-/*'\"$.,tTeEmMpPx\t\n", max_size=6),
                               max_size=14)):
        parts.append(draw(st.sampled_from([" ", "", "\t", "\n"])))
        parts.append(token)
    parts.append(draw(st.sampled_from(["", ";", "; ", ";;\n", " ;", "\n", ";x", "; END"])))
    text = "".join(parts)
    if draw(st.booleans()):   # any mix of cases
        rng = draw(st.randoms(use_true_random=False))
        text = "".join(c.swapcase() if rng.random() < 0.5 else c for c in text)
    return text.encode("utf-8", "surrogateescape")


texts = sql_texts() | st.binary(max_size=60)
# Mostly the commonest shape: statements without "(" after the heads _plain_shape knows.
plain_texts = sql_texts(heads=("SELECT", "select", "UPDATE", "DELETE FROM", "WITH", "VALUES", "TABLE", "BEGIN", "END",
                               "COMMIT", "SHOW", "selectemp", "withemp", "tabletemp", "sel", "start", "ABORT",
                               "ROLLBACK", "ROLLBACK TO", "rollback  to sp", "ROLLBACK AND CHAIN", "ROLLBACK PREPARED"),
                        tokens=tuple(PLAIN_TOKENS))
# Mostly calls and grammar before "(", as ORMs write them, so that the call check runs to its end.
CALLS = ("count(", "now(", "coalesce(", "lower (", "in (", "VALUES (", "exists(", "cast(", ") OVER (", ") FILTER (",
         "ON CONFLICT (", "GROUP BY (", "ORDER BY (", "PARTITION BY (", "over(", "filter(", "by(", "conflict(", ")",
         ")", "set_config(", '"lower"(', "pg_catalog.lower(", "my_function(")
call_texts = sql_texts(heads=("SELECT", "select", "WITH x AS (", "INSERT INTO t (a, b) VALUES", "INSERT INTO t (",
                              "insert into s.t as x(", "UPDATE t SET", "DELETE FROM t WHERE", "VALUES", "BEGIN"),
                       tokens=tuple(PLAIN_TOKENS[:40]) + CALLS)
sql = plain_texts | call_texts | texts
PGBENCH = b"SELECT abalance FROM pgbench_accounts WHERE aid = 48213;"


def parsed_or_stateless(text: bytes):
    return STATELESS if reference_prefilter(text) else session._parsed_verdict(text)


# ---- the properties ------------------------------------------------------------------------------------

@settings(max_examples=1500, deadline=None)
@given(sql, st.binary(max_size=8), st.binary(max_size=8))
@example(PGBENCH, b"Q\x00\x00\x00\x3b", b"\x00")
@example(b"withemp", b"", b"")
@example(b"SELECT 1 INTO TEMP t", b"", b"")
@example(b"select x from t where a = 1 /", b"", b"*/")
@example(b"SELECT 1 -", b"", b"- x")
@example(b"ROLLBACK TO sp", b"", b"")
@example(b"INSERT INTO t (now(), 1)", b"", b"")
def test_prefilter_at_answers_as_the_reference_in_place(text, before, after):
    expected = reference_prefilter(text)
    assert prefilter(text) is expected
    code = prefilter_at(text, 0, len(text))
    assert code in (0, PLAIN, CHECKED)
    assert bool(code) is expected, (text, code)
    if code == PLAIN:
        assert b"(" not in text
    assert prefilter_at(text, 0, len(text), False) == (PLAIN if code == PLAIN else 0)   # stops at "("
    # In place: the bytes around the statement (message header, NUL, the next message) are not read.
    buf = before + text + after
    assert prefilter_at(buf, len(before), len(before) + len(text)) == code
    assert prefilter_at(text, 0, len(text) + 100) == code   # an end past the buffer reads as the slice does


@settings(max_examples=1000, deadline=None)
@given(sql)
@example(PGBENCH)
@example(b"SELECT * FROM temperatures")
@example(b"selectemp")
@example(b"select x from t where a = 1 /")
@example(b"SELECT TEMP")      # matched by the possessive version on CPython 3.11.2
@example(b"start --")
@example(b"select" + b" " * 5000 + b"--")   # fails in linear time
def test_the_plain_shape_is_only_ever_what_the_reference_passes(text):
    if session._plain_shape(text, 0, len(text)) is not None:
        assert reference_prefilter(text), text
        assert prefilter_at(text, 0, len(text)) == PLAIN


@settings(max_examples=600, deadline=None)
@given(sql, st.booleans())
@example(b"start --", False)
@example(b"SELECT * INTO TEMP t FROM x", False)
def test_classify_gives_the_reference_verdict_in_both_builds_paths(text, compiled):
    expected = parsed_or_stateless(text)
    assert session.verdict_of(text) == expected
    buf = b"Q\x00\x00\x00\x00" + text + b"\x00"
    saved = session._COMPILED
    session._COMPILED = compiled   # the compiled build's path (prefilter_at) or the interpreted one's
    try:
        session.clear_cache()
        first = classify(buf, 5, len(buf) - 1)
        again = classify(buf, 5, len(buf) - 1)
    finally:
        session._COMPILED = saved
    assert first == expected and again == expected
    if expected is STATELESS:
        assert first is STATELESS and again is STATELESS   # callers test `is STATELESS`


@settings(max_examples=600, deadline=None)
@given(sql)
@example(PGBENCH)
def test_what_the_prefilter_passes_the_parser_finds_stateless(text):
    """The pre-filter's own soundness, against PostgreSQL's grammar: a text it passes either parses
    to a stateless verdict or does not parse (the server refuses it too)."""
    if reference_prefilter(text):
        assert session._parsed_verdict(text) in (STATELESS, session._UNPARSABLE, session._TOO_BIG), text


# ---- the cache -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("compiled", [False, True], ids=["interpreted path", "compiled path"])
def test_inlined_literals_do_not_fill_the_cache_and_calls_and_parsed_texts_are_remembered(compiled, monkeypatch):
    monkeypatch.setattr(session, "_COMPILED", compiled)
    session.clear_cache()
    for aid in range(1, 2000):
        text = b"SELECT abalance FROM pgbench_accounts WHERE aid = %d;" % aid
        assert classify(text, 0, len(text)) is STATELESS
        text = b"UPDATE pgbench_accounts SET abalance = abalance + %d WHERE aid = %d;" % (aid, aid)
        assert classify(text, 0, len(text)) is STATELESS
    assert len(session._cache) == 0
    assert len(session._plain) == (0 if compiled else 2 * 1999)   # interpreted: remembered apart
    calls = b"SELECT count(*) FROM t WHERE a IN ($1, $2)"
    parsed = b"SELECT my_function()"
    assert classify(calls, 0, len(calls)) is STATELESS
    assert classify(parsed, 0, len(parsed)) != STATELESS
    assert set(session._cache) == {calls, parsed}
    monkeypatch.setattr(session, "_parsed_verdict", lambda text: pytest.fail("parsed twice"))
    monkeypatch.setattr(session, "verdict_of", lambda text: pytest.fail("classified twice"))
    assert classify(parsed, 0, len(parsed)) == session._cache[parsed]
