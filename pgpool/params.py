"""Session parameters that follow a client across server connections.

Owns: which parameters are tracked, what a SET / RESET / RESET ALL does to them (RESET goes
back to the client's startup values, as on a direct connection), and the SQL that makes a
server's session match a client's. Recognising those statements is session.py's job (the
real parser); this module must not parse SQL. Pure: no sockets. Two kinds of parameter are
tracked:

* reported parameters (GUC_REPORT: client_encoding, DateStyle, TimeZone, ...): the server
  tells us their values in ParameterStatus, so we compare values and replay with
  set_config(), which takes the value exactly as the server reported it;
* everything else (search_path, default_transaction_isolation, statement_timeout, ...):
  the server says nothing, so we remember the statement that set it and replay that
  statement (two sessions with the same statement have the same value), or, for a value the
  session audit read from the server, set_config(name, value, false) with that value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

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


class SessionChange:
    """What a statement does to the tracked session state, once it has succeeded."""
    __slots__ = ("kind", "name", "statement")

    def __init__(self, kind: str, name: str = "", statement: str = ""):
        self.kind = kind          # "set" | "reset" | "reset_all"
        self.name = name
        self.statement = statement

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SessionChange) and (self.kind, self.name, self.statement) == \
            (other.kind, other.name, other.statement)

    def __hash__(self) -> int:
        return hash((self.kind, self.name, self.statement))

    def __repr__(self) -> str:
        return f"SessionChange({self.kind!r}, {self.name!r}, {self.statement!r})"


# Read-only copies of startup values, shared by every session that logged in with the same ones
# (usually all clients of a pool): value tuple -> mappingproxy. Bounded: when full it starts
# over; sessions keep the copies they hold, new ones share afresh.
_SHARED_VALUES: dict[tuple[tuple[str, str], ...], MappingProxyType] = {}
SHARED_VALUES_LIMIT = 1024
_NO_VALUES: MappingProxyType = MappingProxyType({})


def share_values(values: Mapping[str, str]) -> MappingProxyType:
    """One read-only copy of `values` for every session with equal ones (a few hundred bytes per client
    saved: an idle client's values are almost always its pool's defaults)."""
    if not values:
        return _NO_VALUES
    key = tuple(values.items())
    shared = _SHARED_VALUES.get(key)
    if shared is None:
        if len(_SHARED_VALUES) >= SHARED_VALUES_LIMIT:
            _SHARED_VALUES.clear()
        shared = _SHARED_VALUES[key] = MappingProxyType(dict(values))
    return shared


class SessionParams:
    """A session's tracked parameters: reported values and remembered SET statements.

    `startup_*` are the values the client logged in with: what RESET and RESET ALL go back
    to. A server's own SessionParams has none (its RESET goes to the server's defaults).

    Memory: after `remember_startup`, `startup_*` are read-only copies shared with every session
    that has the same values, and a session whose current values are still its startup values
    holds no dict of its own (`_reported` / `_statements` None). The first use of `reported` or
    `statements` takes a private copy (copy on write), so a caller can never change another
    session's values; code that only reads uses `reported_items`, `get_reported`, and friends,
    which take no copy. Idle clients thus cost no dicts here.
    """
    __slots__ = ("_reported", "_statements", "startup_reported", "startup_statements")

    def __init__(self, reported: dict[str, str] | None = None, statements: dict[str, str] | None = None):
        self._reported: dict[str, str] | None = dict(reported or {})
        self._statements: dict[str, str] | None = dict(statements or {})
        self.startup_reported: Mapping[str, str] = _NO_VALUES
        self.startup_statements: Mapping[str, str] = _NO_VALUES

    @property
    def reported(self) -> dict[str, str]:
        """The session's reported values, this session's own dict (taken now if it shared its startup values)."""
        if self._reported is None:
            self._reported = dict(self.startup_reported)
        return self._reported

    @reported.setter
    def reported(self, values: dict[str, str]) -> None:
        self._reported = values

    @property
    def statements(self) -> dict[str, str]:
        """name -> the statement that set it, this session's own dict (taken now if it shared its startup values)."""
        if self._statements is None:
            self._statements = dict(self.startup_statements)
        return self._statements

    @statements.setter
    def statements(self, values: dict[str, str]) -> None:
        self._statements = values

    def reported_view(self) -> Mapping[str, str]:
        """The reported values to read, without taking a private copy."""
        return self.startup_reported if self._reported is None else self._reported

    def statements_view(self) -> Mapping[str, str]:
        """The remembered statements to read, without taking a private copy."""
        return self.startup_statements if self._statements is None else self._statements

    def reported_items(self):   # -> ItemsView[str, str]
        return self.reported_view().items()

    def get_reported(self, name: str, default: str | None = None) -> str | None:
        return self.reported_view().get(name, default)

    def copy_statements(self) -> dict[str, str]:
        return dict(self.statements_view())

    def remember_startup(self) -> None:
        """The current values are the client's startup values (called once, at login). They are
        shared read-only with other sessions that have the same ones, and this session holds no
        copy of its own until one changes."""
        self.startup_reported = share_values(self.reported_view())
        self.startup_statements = share_values(self.statements_view())
        self._reported = None
        self._statements = None

    def apply(self, change: SessionChange, reported_names: frozenset[str]) -> None:
        """Record a change that succeeded on the server.

        A SET of a reported parameter arrives as ParameterStatus; a RESET of one is put back
        to the startup value here, after the server reported its own default.
        """
        if change.kind == "reset_all":
            self._statements = None   # the startup statements again, shared
            reported = self.reported
            for name, value in self.startup_reported.items():
                if name in reported_names:
                    reported[name] = value
        elif change.kind == "reset":
            name = change.name
            if name in reported_names:
                if name in self.startup_reported:
                    self.reported[name] = self.startup_reported[name]
            elif name in self.startup_statements:
                self.statements[name] = self.startup_statements[name]
            elif name in self.statements_view():
                del self.statements[name]
        elif change.name not in reported_names:
            self.statements[change.name] = change.statement


def search_path_key(params: SessionParams) -> bytes:
    """Bytes equal for sessions with the same search_path, b"" for the server default.

    Part of the key under which pgpool shares prepared statements (prepared.py): the same
    SQL under another search_path can name other tables. Equal SET statements give equal
    search_paths (the pool is per user, so "$user" is the same too); different spellings of
    one search_path only share less, never wrongly.
    """
    value = params.get_reported("search_path")   # PostgreSQL 18 reports it
    if value is not None:
        return value.encode()
    statement = params.statements_view().get("search_path")
    return statement.encode() if statement else b""


def sync_sql(client: SessionParams, server: SessionParams, reported_names: frozenset[str]) -> str:
    """SQL that makes the server's session match the client's (empty when they match)."""
    client_reported, server_reported = client.reported_view(), server.reported_view()
    client_statements, server_statements = client.statements_view(), server.statements_view()
    if client_reported == server_reported and client_statements == server_statements:
        return ""   # the common case, on every link: one comparison in C
    statements = []
    for name, value in client_reported.items():
        if name in reported_names and server_reported.get(name) != value:
            statements.append(set_config_sql(name, value))
    for name, statement in server_statements.items():
        if name not in client_statements:
            statements.append(f"RESET {quote_name(name)}")
    for name, statement in client_statements.items():
        if server_statements.get(name) != statement:
            statements.append(statement)
    # A newline after each statement: a trailing -- comment must not swallow the next one.
    return ";\n".join(statements)
