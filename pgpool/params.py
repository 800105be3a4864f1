"""Session parameters that follow a client across server connections.

Owns: which parameters are tracked, recognising top-level SET / RESET / DISCARD in a
simple Query, and the SQL that makes a server's session match a client's. Pure: no
sockets. Two kinds of parameter are tracked:

* reported parameters (GUC_REPORT: client_encoding, DateStyle, TimeZone, ...): the server
  tells us their values in ParameterStatus, so we compare values and replay with
  set_config(), which takes the value exactly as the server reported it;
* everything else (search_path, default_transaction_isolation, statement_timeout, ...):
  the server says nothing, so we remember the statement that set it and replay that
  statement; two sessions with the same statement have the same value.
"""

from __future__ import annotations

import re

# Parameters PostgreSQL reports in ParameterStatus that a client may change.
REPORTED_TRACKED = ("client_encoding", "DateStyle", "TimeZone", "IntervalStyle",
                    "standard_conforming_strings", "application_name")
# Reported but fixed for the life of a server (or not the client's business).
REPORTED_FIXED = frozenset(("server_version", "server_encoding", "integer_datetimes", "is_superuser",
                            "session_authorization", "in_hot_standby", "default_transaction_read_only",
                            "scram_iterations"))

# Startup packet keys that are not run-time parameters.
STARTUP_CONTROL_KEYS = frozenset(("user", "database", "options", "replication"))


def canonical_name(name: str) -> str:
    """GUC names are case-insensitive; keep PostgreSQL's spelling for the reported ones."""
    lower = name.lower()
    for known in REPORTED_TRACKED:
        if known.lower() == lower:
            return known
    return lower


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


_PLAIN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")


def quote_name(name: str) -> str:
    return name if _PLAIN_NAME.match(name) else '"' + name.replace('"', '""') + '"'


def set_config_sql(name: str, value: str) -> str:
    return f"SELECT pg_catalog.set_config({quote_literal(name)}, {quote_literal(value)}, false)"


def parse_options(options: str) -> dict[str, str]:
    """The `options` startup key: `-c name=value` and `--name=value`, backslash escapes spaces."""
    words: list[str] = []
    current = []
    escaped = False
    for ch in options:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch.isspace():
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(ch)
    if current:
        words.append("".join(current))
    result: dict[str, str] = {}
    i = 0
    while i < len(words):
        word = words[i]
        setting = None
        if word == "-c" and i + 1 < len(words):
            setting = words[i + 1]
            i += 1
        elif word.startswith("-c"):
            setting = word[2:]
        elif word.startswith("--"):
            setting = word[2:]
        if setting and "=" in setting:
            name, value = setting.split("=", 1)
            result[name.replace("-", "_")] = value
        i += 1
    return result


# ---- recognising session statements in a simple Query --------------------------------------

# SET name {= | TO} value; the special forms (SET ROLE, SET SESSION AUTHORIZATION, SET NAMES,
# SET TRANSACTION, ...) have no = / TO and do not match.
_SET_RE = re.compile(
    r"""^\s*SET\s+(?:SESSION\s+)?(?!LOCAL\b)
        (?P<name>[A-Za-z_][A-Za-z0-9_$]*(?:\.[A-Za-z_][A-Za-z0-9_$]*)?|"[^"]+")
        \s*(?:=|\bTO\b)\s*(?P<value>.*?)\s*;?\s*$""",
    re.IGNORECASE | re.VERBOSE | re.DOTALL,
)
# Aliases with their own syntax: SET TIME ZONE, SET SCHEMA, SET XML OPTION.
_ALIASES = (
    ("TimeZone", re.compile(r"^\s*SET\s+(?:SESSION\s+)?TIME\s+ZONE\s+\S.*$", re.IGNORECASE | re.DOTALL)),
    ("search_path", re.compile(r"^\s*SET\s+(?:SESSION\s+)?SCHEMA\s+'.*$", re.IGNORECASE | re.DOTALL)),
    ("xmloption", re.compile(r"^\s*SET\s+(?:SESSION\s+)?XML\s+OPTION\s+\S.*$", re.IGNORECASE | re.DOTALL)),
)
_RESET_RE = re.compile(r"^\s*RESET\s+(?P<name>ALL|[A-Za-z_][A-Za-z0-9_$.]*|\"[^\"]+\")\s*;?\s*$", re.IGNORECASE)
_DISCARD_ALL_RE = re.compile(r"^\s*DISCARD\s+ALL\s*;?\s*$", re.IGNORECASE)

# First letters of statements this module recognises (lower-cased), to skip the rest cheaply.
_CANDIDATE_FIRST = frozenset(b"sSrRdD")
_CANDIDATE_HEADS = frozenset((b"set", b"res", b"dis"))


def _skip_space_and_comments(buf: bytes, pos: int, end: int) -> int:
    while pos < end:
        ch = buf[pos]
        if ch in b" \t\r\n":
            pos += 1
        elif buf.startswith(b"--", pos):
            newline = buf.find(b"\n", pos, end)
            pos = end if newline < 0 else newline + 1
        elif buf.startswith(b"/*", pos):
            close = buf.find(b"*/", pos + 2, end)
            pos = end if close < 0 else close + 2
        else:
            break
    return pos


class SessionChange:
    """What a statement does to the tracked session state, once it has succeeded."""
    __slots__ = ("kind", "name", "statement")

    def __init__(self, kind: str, name: str = "", statement: str = ""):
        self.kind = kind          # "set" | "reset" | "reset_all"
        self.name = name
        self.statement = statement

    def __repr__(self) -> str:
        return f"SessionChange({self.kind!r}, {self.name!r}, {self.statement!r})"


def classify_query(buf: bytes, start: int, end: int) -> SessionChange | None:
    """Recognise a single top-level SET / RESET / DISCARD ALL in a Query body (NUL-terminated)."""
    pos = _skip_space_and_comments(buf, start, end)
    if pos >= end or buf[pos] not in _CANDIDATE_FIRST or end - pos > 4096:
        return None
    if buf[pos:pos + 3].lower() not in _CANDIDATE_HEADS:   # SELECT, DELETE, ... leave here
        return None
    try:
        sql = buf[pos:end].rstrip(b"\x00").decode("utf-8")
    except UnicodeDecodeError:
        return None
    head = sql[:8].lower()
    if head.startswith("set"):
        # A statement list ("SET a=1; SELECT ...") is not tracked: only whole single SETs.
        if sql.rstrip().rstrip(";").count(";"):
            return None
        for name, pattern in _ALIASES:
            if pattern.match(sql):
                return SessionChange("set", name, sql.strip().rstrip(";"))
        match = _SET_RE.match(sql)
        if not match:
            return None
        name = match.group("name").strip('"')
        return SessionChange("set", canonical_name(name), sql.strip().rstrip(";"))
    if head.startswith("reset"):
        match = _RESET_RE.match(sql)
        if not match:
            return None
        name = match.group("name").strip('"')
        if name.lower() == "all":
            return SessionChange("reset_all")
        return SessionChange("reset", canonical_name(name), sql.strip().rstrip(";"))
    if head.startswith("discard") and _DISCARD_ALL_RE.match(sql):
        return SessionChange("reset_all")
    return None


class SessionParams:
    """A session's tracked parameters: reported values and remembered SET statements."""
    __slots__ = ("reported", "statements")

    def __init__(self, reported: dict[str, str] | None = None, statements: dict[str, str] | None = None):
        self.reported: dict[str, str] = dict(reported or {})
        self.statements: dict[str, str] = dict(statements or {})

    def apply(self, change: SessionChange, reported_names: frozenset[str]) -> None:
        """Record a change that succeeded on the server; reported values arrive as ParameterStatus."""
        if change.kind == "reset_all":
            self.statements.clear()
        elif change.name in reported_names:
            return
        elif change.kind == "set":
            self.statements[change.name] = change.statement
        else:
            self.statements.pop(change.name, None)


def search_path_key(params: SessionParams) -> bytes:
    """Bytes equal for sessions with the same search_path, b"" for the server default.

    Part of the key under which pgpool shares prepared statements (prepared.py): the same
    SQL under another search_path can name other tables. Equal SET statements give equal
    search_paths (the pool is per user, so "$user" is the same too); different spellings of
    one search_path only share less, never wrongly.
    """
    value = params.reported.get("search_path")   # PostgreSQL 18 reports it
    if value is not None:
        return value.encode()
    statement = params.statements.get("search_path")
    return statement.encode() if statement else b""


def sync_sql(client: SessionParams, server: SessionParams, reported_names: frozenset[str]) -> str:
    """SQL that makes the server's session match the client's (empty when they match)."""
    if client.reported == server.reported and client.statements == server.statements:
        return ""   # the common case, on every link: one comparison in C
    statements = []
    for name, value in client.reported.items():
        if name in reported_names and server.reported.get(name) != value:
            statements.append(set_config_sql(name, value))
    for name, statement in server.statements.items():
        if name not in client.statements:
            statements.append(f"RESET {quote_name(name)}")
    for name, statement in client.statements.items():
        if server.statements.get(name) != statement:
            statements.append(statement)
    # A newline after each statement: a trailing -- comment must not swallow the next one.
    return ";\n".join(statements)
