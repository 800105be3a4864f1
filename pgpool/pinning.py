"""Session state that cannot be shared: when a client must keep its server connection.

Owns: recognising statements that may create such state (LISTEN, SQL PREPARE, session
advisory locks, temporary tables, WITH HOLD cursors, SET ROLE / SET SESSION AUTHORIZATION)
or drop it (UNLISTEN, DEALLOCATE, DISCARD, DROP, CLOSE, advisory unlocks, RESET ROLE), the query that asks the server whether any such
state is left, and the statement that refuses one when pinning is turned off. Pure.

Recognition only decides when to ask; the server's answer decides whether the client is
pinned. A keyword inside a string literal therefore costs one extra round trip, never a
wrong answer.
"""

from __future__ import annotations

import re

MAY_CREATE = 1
MAY_DROP = 2

_CREATE_RE = re.compile(
    rb"""(?:^|;)\s*(?:LISTEN|PREPARE)\b
       | pg_(?:try_)?advisory_lock(?:_shared)?\s*\(
       | \bCREATE\s+(?:(?:GLOBAL|LOCAL)\s+)?TEMP(?:ORARY)?\b
       | \bINTO\s+TEMP(?:ORARY)?\b
       | \bWITH\s+HOLD\b
       | (?:^|;)\s*SET\s+(?:SESSION\s+)?(?:ROLE|SESSION\s+AUTHORIZATION)\b""",
    re.IGNORECASE | re.VERBOSE)
_DROP_RE = re.compile(
    rb"""(?:^|;)\s*(?:UNLISTEN|DEALLOCATE|DISCARD|DROP|CLOSE|RESET)\b
       | (?:^|;)\s*SET\s+(?:SESSION\s+)?(?:ROLE|SESSION\s+AUTHORIZATION)\b
       | pg_advisory_unlock""",
    re.IGNORECASE | re.VERBOSE)
# Cheap pre-filter: every pattern above contains one of these letters sequences.
_HINT_RE = re.compile(rb"listen|prepare|advisory|temp|hold|dealloc|discard|drop|close|role|authoriz|reset",
                      re.IGNORECASE)

MAX_SCAN = 64 * 1024   # longer statements are not scanned (bulk INSERTs, not session state)

# One row, one column: how many pieces of unshareable session state the backend holds.
# A changed role counts too: current_user / session_user differ from the pool's login user.
_STATE_CHECK_SQL = (
    "SELECT (SELECT count(*) FROM pg_catalog.pg_listening_channels())"
    " + (SELECT count(*) FROM pg_catalog.pg_prepared_statements WHERE from_sql)"
    " + (SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory'"
    " AND pid = pg_catalog.pg_backend_pid() AND granted)"
    " + (SELECT count(*) FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema())"
    " + (SELECT count(*) FROM pg_catalog.pg_cursors WHERE is_holdable)"
    " + (CASE WHEN current_user = {login} AND session_user = {login} THEN 0 ELSE 1 END)"
)


def state_check_sql(login_user: str) -> str:
    return _STATE_CHECK_SQL.format(login="'" + login_user.replace("'", "''") + "'")


def classify_state(buf: bytes, start: int, end: int) -> int:
    """MAY_CREATE / MAY_DROP flags for a statement text (NUL-terminated Query or Parse query)."""
    if end - start > MAX_SCAN:
        return 0
    text = buf[start:end]
    if not _HINT_RE.search(text):
        return 0
    flags = 0
    if _CREATE_RE.search(text):
        flags |= MAY_CREATE
    if _DROP_RE.search(text):
        flags |= MAY_DROP
    return flags


def refusal_sql(pool_name: str, statement: str) -> str:
    """A statement the server fails with 0A000, so the error lands where the refused one would."""
    message = (f"pgpool pool {pool_name}: this statement creates session state (LISTEN, PREPARE, "
               f"advisory lock, temporary table or WITH HOLD cursor) and session_pinning is off: "
               f"{statement[:100]}").replace("'", "''").replace("$", "")
    return f"DO $pgpool$ BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', MESSAGE = '{message}'; END $pgpool$"
