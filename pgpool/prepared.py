"""Named protocol-level prepared statements across server connections.

Owns: each client's namespace of statement names (`ClientStatements`); per pool, the
registry of shared statements (`StatementRegistry`), keyed by everything that changes a
statement's meaning: the Parse content (query text + parameter type OIDs) and the
client's search_path (`ClientStatements.path_key`); per server connection, the LRU of
statements pgpool prepared there under its own names (`PGPOOL_<n>`) and the FIFO of
requests sent to that server in reply order (`ServerStatements`). With these it rewrites
Parse / Bind / Describe / Close / DEALLOCATE from client names to server names, injects a
Parse where the linked server lacks a statement and a Close to evict one, and puts the
replies back in the order and shape one PostgreSQL session would give. Also owns
recognising the SQL that drops every prepared statement (DEALLOCATE ALL, DISCARD ALL):
PostgreSQL's own grammar (pglast) behind a byte pre-filter and a cache keyed by the text.
Pure and sans-IO: bytes in, bytes out. Must not import asyncio, hold sockets, or know
pools; the caller routes the bytes.

Sharing. A Parse is answered locally (ParseComplete without server work) only when the
linked server already holds the statement of the same key, or, for a client holding no
server (`parse_without_server`), when some server of the same pool accepted it. Resets:
DEALLOCATE ALL / DISCARD ALL in any form (simple Query, inside a statement list, behind
comments, as a named or unnamed prepared statement run by Execute) clear only the
client's own names; every statement pgpool had on that server is retired (re-prepared on
demand for other clients; its Close is sent, harmless if it is gone). The effect counts
from the statement's CommandComplete, as DEALLOCATE is not transactional.

Invalidation. 26000 on Bind / Describe of a statement pgpool believed present drops it
from that server's LRU. 0A000 ("cached plan must not change result type": DDL changed
the result type) retires the Statement from the registry: the same SQL parsed again by
any client of the pool is prepared afresh on every server (so asyncpg's own re-prepare
recovers as on a direct connection), while clients still holding the old statement get
0A000 at each use, as their own session would (on a server lacking it, a Bind to a name
the server lacks draws 26000, turned into that 0A000, so the server skips to Sync alike).

Reply order. Every request sent to the server is queued with what its reply needs:
forward it, swallow it (pgpool's own Parse / Close), or make it up (a ParseComplete for
a Parse the server already has; a CloseComplete for a client's Close, which only drops
the client's name). Only the messages that END a reply are looked at: ParseComplete,
BindComplete, CloseComplete, NoData, RowDescription, CommandComplete,
EmptyQueryResponse, PortalSuspended, ErrorResponse, ReadyForQuery (plus CopyInResponse),
never a DataRow or CopyData, so big results stream through without per-row work.
An ErrorResponse ends an extended-protocol request and, as PostgreSQL skips every
message up to the next Sync, drops those requests too, undoing what they did to the
namespaces (made-up replies among them are dropped as well).

Errors Postgres gives are given by Postgres: a Bind / Describe of a name the client
never prepared goes to the server under a name the server lacks, and a Parse of a name
the client already uses goes under the server name of its statement, so the server
answers 26000 / 42P05 at the right point of the pipeline, aborts the transaction and
skips to Sync exactly as a plain session would; pgpool only puts the client's name back
into the message text. Nobody is disconnected.

Effects on names are applied when a message is sent (so a pipelined Bind after a Parse
finds the name) and undone if the server fails or skips the message. This is exact
within a Sync-terminated segment and whenever a client waits for ReadyForQuery between
segments. Known differences from a plain session, all outside what drivers do:
- a client that pipelines past a Sync and reuses a name whose fate depends on an error
  in an earlier, still unanswered segment can get a reply a plain session would not give;
- Describe of a known statement in a failed transaction, on a server that lacks it,
  gets 25P02 (Postgres would describe a statement that returns no rows);
- a Query over _SCAN_LIMIT (16 KB) is not split: a DEALLOCATE ALL / DISCARD ALL in it is
  learnt from its CommandComplete, so messages pipelined behind it without waiting are
  rewritten as if it had not run; a Parse content that long is never taken for one;
- DEALLOCATE name (not ALL) inside a statement list is not rewritten: for a protocol-level
  name the server answers 26000; SQL-level PREPARE / EXECUTE names are not rewritten
  either (those pin the client);
- after DDL changes a statement's result type, the first client of the pool whose Parse
  of it is answered from a stale server copy, before anyone got 0A000, gets that 0A000
  although its own fresh session would not (pgpool cannot see DDL made elsewhere);
- the search_path key follows tracked settings (startup, SET); SET LOCAL search_path or
  a set_config() not adopted as a tracked setting does not change it, so a statement
  parsed then is shared under the session's key (the server re-plans it under the
  current search_path; only a changed result type shows, as 0A000).

Eviction (max_prepared_statements per server connection) retires the least recently
used statement and sends its Close (reply swallowed) in front of the client's next
extended-protocol message, never in front of a simple Query: if the Close were skipped
after an error, the server would skip the Query too. A Close the server skipped is sent
again later. (PostgreSQL keeps a portal working after its statement is closed, despite
what the protocol docs say, so evicting inside a transaction is safe.)

Integration contract (client.py / server.py / pool.py):

    pool.statement_registry = StatementRegistry()   # one per pool: never shared across pools
    client.prepared = ClientStatements()            # one per client, for its lifetime
    client.prepared.path_key = params.search_path_key(client.params)  # after login, after each change
    server.prepared = ServerStatements(pool.statement_registry, max_prepared_statements)  # per server

    # link / unlink (attach_server / detach_server):
    server.prepared.link(client.prepared)           # before the client's pending bytes flow
    ...
    if not server.prepared.unlink():                # requests were outstanding: state unknown
        server.close("prepared statement state unknown")

    # client -> server (client scanner watch must include CLIENT_TYPES; a big Bind must
    # still be handed over whole: give the client scanner max_inspect = max_packet_size):
    def _on_message(self, msg_type, buf, start, end):
        out = self.server.prepared.on_client_message(msg_type, buf, start, end)
        ...                                         # the core's own bookkeeping
        return out                                  # None | b"" | replacement bytes
    # after scanner.feed(), replies pgpool made up that are due now:
    early = self.server.prepared.take_client_output()
    if early: self.transport.write(early)

    # server -> client (server scanner watch must include SERVER_TYPES), not while the
    # core's own injected queries are running (server.injected):
    def _on_message(self, msg_type, buf, start, end):
        out = self.prepared.on_server_message(msg_type, buf, start, end)
        ...                                         # the core's own bookkeeping (Z, E, ...)
        return out                                  # None | b"" | replacement bytes

    # after pgpool itself ran DISCARD ALL / DEALLOCATE ALL on the server (server_reset_query):
    if drops_all_statements(sql): server.prepared.forget_all()

A server is released only on ReadyForQuery 'I' with nothing outstanding; at that point
`server.prepared.idle` is True. ErrorResponse and ReadyForQuery are never swallowed or
made up here, so the core's own accounting of them stays valid.
"""

from __future__ import annotations

import functools
import itertools
import re
import struct
import weakref
from collections import OrderedDict

import pglast
from pglast import ast
from pglast.enums import DiscardMode

from .protocol.constants import (
    F_BIND, F_CLOSE, F_COPY_DONE, F_COPY_FAIL, F_DESCRIBE, F_EXECUTE, F_FLUSH, F_FUNCTION_CALL, F_PARSE,
    F_QUERY, F_SYNC, TX_FAILED,
)
from .protocol.errors import FEATURE_NOT_SUPPORTED, INVALID_SQL_STATEMENT_NAME, \
    PROTOCOL_VIOLATION, ProtocolError, error_response, parse_error_fields
from .protocol.framing import MessageScanner, watch_table
from .protocol.link import (
    _BIND_FWD, _CLOSE_FWD, _DESCRIBE_FWD, _EXECUTE_FWD, _PARSE_FWD, _QUERY_FWD, A_FORWARD, A_SWALLOW, A_SYNTH,
    K_BIND, K_CLOSE, K_DESCRIBE, K_EXECUTE, K_PARSE, K_QUERY, REPLY_TYPES, Link,
)

_int32 = struct.Struct("!I")

# Server-side names are PREFIX + a process-wide counter: never reused, so a statement
# left behind on a server can never be mistaken for another one.
PREFIX = b"PGPOOL_"
# Sent instead of a client name that looks like ours but is unknown: pgpool never prepares it.
MISSING = b"PGPOOL_missing"
# Sent instead of a stale statement (see StatementRegistry.retire) on a server lacking it: the server
# answers 26000 and skips to Sync, which pgpool turns into the 0A000 the client's own session would give.
STALE = b"PGPOOL_stale"
CACHED_PLAN_CHANGED = error_response(FEATURE_NOT_SUPPORTED, "cached plan must not change result type")
_ids = itertools.count(1)

PARSE_COMPLETE = b"1\x00\x00\x00\x04"
CLOSE_COMPLETE = b"3\x00\x00\x00\x04"

CLIENT_TYPES = (F_PARSE, F_BIND, F_DESCRIBE, F_EXECUTE, F_CLOSE, F_SYNC, F_FLUSH, F_QUERY, F_FUNCTION_CALL,
                F_COPY_DONE, F_COPY_FAIL)
SERVER_TYPES = REPLY_TYPES
WATCH_CLIENT = watch_table(*CLIENT_TYPES)
WATCH_SERVER = watch_table(*SERVER_TYPES)

# The reply queue's kinds, actions and shared entries live in protocol/link.py. info, when not None:
#   A_SWALLOW (our Parse / Close):    the ServerStatement
#   A_SYNTH (made-up reply):          (reply bytes, client name, Statement, _ADDED / _REMOVED / 0)
#   A_FORWARD Parse:                  (server name, client name, Statement, new ServerStatement or None,
#                                      names to restore if it fails, existing ServerStatement, name taken?)
#   A_FORWARD Bind / Describe:        (server name, client name, ServerStatement or None)
#   A_FORWARD Query (DEALLOCATE):     (server name, client name, None, None, names to restore if it fails,
#                                      ServerStatements it deallocates, swallow one CommandComplete?)
# A server name in info is put back to the client name in the text of an ErrorResponse.
# A Query too long to split that may drop every statement: its CommandComplete tags are watched.
_QUERY_WATCH_DROPS = (K_QUERY, A_FORWARD, (None, None, None, None, None, None, False))

# Name effects carried by made-up replies, undone when the server skips them.
_ADDED, _REMOVED = 1, 2

# Server statement states.
PENDING, CONFIRMED, DEAD = 0, 1, 2

_ORD_S = ord("S")
_CLOSE_BEFORE = watch_table(F_PARSE, F_BIND, F_DESCRIBE, F_EXECUTE, F_CLOSE, F_SYNC, F_FLUSH)

# The keywords that start a statement dropping prepared statements, in any letter case.
_reset_word = re.compile(rb"[dD][eE][aA][lL][lL][oO][cC][aA][tT][eE]|[dD][iI][sS][cC][aA][rR][dD]").search
_BLANKS = b" \t\r\n\f"
_BLANKS_SEMI = b" \t\r\n\f;"
# A text whose first byte is not one of these holds such a statement only if it is a statement list.
_MAY_START = b"dD/-"
# Texts longer than this are split every time rather than kept in the cache.
_SCAN_CACHE_TEXT = 8192
# Texts longer than this are not split at all (it would stall every client for milliseconds): the
# tracker follows the CommandComplete tags of such a Query instead.
_SCAN_LIMIT = 16 * 1024
# A statement that may drop prepared statements starts with one of these words.
_reset_head = re.compile(r"(?:deallocate|discard)\b", re.IGNORECASE).match
# CommandComplete tags of a statement that dropped every prepared statement of the session.
_DROPPED_ALL_TAGS = (b"DEALLOCATE ALL\x00", b"DISCARD ALL\x00")
_NO_RESET: tuple[bool | None, tuple[str, bytes] | None] = (False, None)
_TOO_LONG: tuple[bool | None, tuple[str, bytes] | None] = (None, None)


def _message(msg_type: bytes, body: bytes) -> bytes:
    return msg_type + _int32.pack(len(body) + 4) + body


def parse_message(name: bytes, content: bytes) -> bytes:
    """A Parse message; `content` is everything after the statement name (query, parameter types)."""
    return b"".join((b"P", _int32.pack(len(name) + len(content) + 5), name, b"\x00", content))


def close_statement_message(name: bytes) -> bytes:
    return b"C" + _int32.pack(len(name) + 6) + b"S" + name + b"\x00"


def _find_nul(buf: bytes, pos: int, end: int, what: str) -> int:
    nul = buf.find(b"\x00", pos, end)
    if nul < 0:
        raise ProtocolError(PROTOCOL_VIOLATION, f"invalid {what} message: unterminated string")
    return nul


def _scan(sql: bytes) -> tuple[bool | None, tuple[str, bytes] | None]:
    """Split with PostgreSQL's own grammar (pglast: comments, quoting, dollar quoting and statement
    lists as the server reads them), then parse only the statements that start with the keywords."""
    text = sql.decode("utf-8", "replace")
    try:
        parts = pglast.parser.split(text, only_slices=True)
    except Exception:   # noqa: BLE001 - a syntax error anywhere: the server runs none of it
        return _NO_RESET
    drops_all = False
    found: list[tuple[str, bytes] | None] = []
    for part in parts:
        what = _classify_statement(text[part]) if _reset_head(text, part.start) else None
        drops_all = drops_all or (what is not None and what[0] == "all")
        found.append(what)
    return drops_all, (found[0] if len(found) == 1 else None)


def _classify_statement(text: str) -> tuple[str, bytes] | None:
    try:
        node = pglast.parse_sql(text)[0].stmt
    except Exception:   # noqa: BLE001 - refused by the server as well
        return None
    if isinstance(node, ast.DeallocateStmt):
        return ("all", b"") if node.isall or node.name is None else ("name", node.name.encode())
    if isinstance(node, ast.DiscardStmt) and node.target == DiscardMode.DISCARD_ALL:
        return ("all", b"")
    return None


_scan_cached = functools.lru_cache(maxsize=512)(_scan)


def _may_reset(buf: bytes, start: int, end: int) -> bool:
    """Cheap byte pre-filter, so ordinary SQL never reaches the parser: one statement that does not
    start with D (or a comment) is no DEALLOCATE / DISCARD; otherwise look for the keywords."""
    pos = start
    while pos < end and buf[pos] in _BLANKS:
        pos += 1
    # A trailing ";" (as pgbench and psql send) ends the one statement: no statement list.
    last = end
    while last > pos and buf[last - 1] in _BLANKS_SEMI:
        last -= 1
    if pos >= last or (buf[pos] not in _MAY_START and buf.find(b";", pos, last) < 0):
        return False
    return _reset_word(buf, pos, end) is not None


def scan_deallocations(buf: bytes, start: int, end: int) -> tuple[bool | None, tuple[str, bytes] | None]:
    """For the SQL text buf[start:end]: (does any statement drop every prepared statement (DEALLOCATE
    [PREPARE] ALL, DISCARD ALL)?, the deallocation when the text is that single statement: ("all", b"")
    or ("name", name)). Ordinary SQL is answered by a byte search; the rest is split once per text.
    (None, None): a text over _SCAN_LIMIT that may hold one; not split."""
    if not _may_reset(buf, start, end):
        return _NO_RESET
    if end - start > _SCAN_LIMIT:
        return _TOO_LONG
    sql = buf[start:end]
    return _scan(sql) if len(sql) > _SCAN_CACHE_TEXT else _scan_cached(sql)


def drops_all_statements(sql: bytes) -> bool:
    """Whether running `sql` drops every prepared statement of the session (for server_reset_query)."""
    return scan_deallocations(sql, 0, len(sql))[0] is not False


def classify_deallocate(sql: bytes) -> tuple[str, bytes] | None:
    """("all", b"") for DEALLOCATE [PREPARE] ALL / DISCARD ALL, ("name", name) for DEALLOCATE name.

    Only a whole single statement is recognised (comments allowed); names follow SQL
    identifier rules (unquoted ones fold to lower case).
    """
    return scan_deallocations(sql, 0, len(sql))[1]


def is_session_bound(content: bytes) -> bool:
    """True for a Parse content whose result columns come from this session's own objects.

    Postgres fixes a statement's RowDescription at Parse: for `EXECUTE p` from the session's
    PREPAREd p, for `FETCH` from its cursor. Shared with another client, it would describe
    that client's p (or none) instead. Leading white space and comments are skipped in one pass.
    """
    pos, end = 0, len(content)
    while pos < end:
        if content[pos] in b" \t\r\n\f":
            pos += 1
        elif content.startswith(b"--", pos):
            newline = content.find(b"\n", pos)
            pos = end if newline < 0 else newline + 1
        elif content.startswith(b"/*", pos):
            pos = _skip_block_comment(content, pos)
        else:
            break
    word = content[pos:pos + 8].lower()
    return (word.startswith(b"execute") and not _is_word_char(word[7:8])) or \
        (word.startswith(b"fetch") and not _is_word_char(word[5:6]))


def _skip_block_comment(content: bytes, pos: int) -> int:
    """The position after the /* ... */ comment at `pos`; Postgres block comments nest.

    The next opening and closing marks are searched once each and reused until passed: linear.
    """
    depth, pos, end = 1, pos + 2, len(content)
    opening = content.find(b"/*", pos)
    closing = content.find(b"*/", pos)
    while depth:
        if closing < 0:
            return end
        if 0 <= opening < closing:
            depth, pos = depth + 1, opening + 2
            opening = content.find(b"/*", pos)
            if closing < pos:
                closing = content.find(b"*/", pos)
        else:
            depth, pos = depth - 1, closing + 2
            closing = content.find(b"*/", pos)
            if 0 <= opening < pos:
                opening = content.find(b"/*", pos)
    return pos


def _is_word_char(ch: bytes) -> bool:
    return ch.isalnum() or ch in (b"_", b"$")


class Statement:
    """One Parse content (query text + parameter type OIDs) under one search_path, shared by every client
    of the pool that prepares it there."""
    __slots__ = ("content", "path_key", "parsed_ok", "stale", "drops_all", "__weakref__")

    def __init__(self, content: bytes, path_key: bytes = b""):
        self.content = content
        self.path_key = path_key
        self.parsed_ok = False   # some server accepted this content: a Parse of it can be answered locally
        self.stale = False       # retired after 0A000: its result type changed since clients prepared it
        query_end = content.find(b"\x00")
        # Executing it drops every prepared statement of the server session (psycopg prepares DISCARD ALL).
        self.drops_all = scan_deallocations(content, 0, query_end if query_end >= 0 else len(content))[0] is True

    def __repr__(self) -> str:
        return f"Statement({self.content[:60]!r})"


class StatementRegistry:
    """Interns Parse contents per search_path, so equal SQL meaning the same thing from any client of
    one pool is one Statement (one server statement per server). One registry per pool: a statement
    another database or user prepared says nothing about this one.

    Weak: a content disappears when no client names it and no server holds it.
    """
    __slots__ = ("_by_key",)

    def __init__(self) -> None:
        self._by_key: weakref.WeakValueDictionary[tuple[bytes, bytes], Statement] = weakref.WeakValueDictionary()

    def intern(self, content: bytes, path_key: bytes = b"") -> Statement:
        key = (path_key, content)
        stmt = self._by_key.get(key)
        if stmt is None:
            stmt = Statement(content, path_key)
            self._by_key[key] = stmt
        return stmt

    def retire(self, stmt: Statement) -> None:
        """Server copies of `stmt` are stale (DDL changed its result type): the next Parse of the same
        content gets a new Statement, prepared afresh, while clients holding the old one keep it."""
        stmt.stale = True
        key = (stmt.path_key, stmt.content)
        if self._by_key.get(key) is stmt:
            del self._by_key[key]

    def __len__(self) -> int:
        return len(self._by_key)


class ClientStatements:
    """One client's own namespace: its statement names -> Statement. Lives as long as the client.

    `path_key` stands for the client's search_path (params.search_path_key): equal bytes for
    the same search_path. It is part of the sharing key, as the same SQL names other tables
    under another search_path; the connection layer updates it when the search_path changes.
    A statement whose result shape Postgres takes from the session itself (SQL-level EXECUTE
    of the session's own PREPAREd statement, FETCH from its own cursor) is never shared: its key
    also names this client.
    """
    __slots__ = ("_names", "path_key", "_own_key")

    def __init__(self, path_key: bytes = b"") -> None:
        self._names: dict[bytes, Statement] | None = None   # made at the first use: idle clients hold none
        self.path_key = path_key
        self._own_key: bytes | None = None   # numbered at the first session-bound statement

    @property
    def names(self) -> dict[bytes, Statement]:
        """statement name -> Statement, this client's own dict (made now if it had none)."""
        if self._names is None:
            self._names = {}
        return self._names

    def count(self) -> int:
        """How many statements this client named (without making the dict)."""
        return len(self._names) if self._names is not None else 0

    def key_for(self, content: bytes) -> bytes:
        """The sharing key of a Parse content for this client (see the class docstring)."""
        if not is_session_bound(content):
            return self.path_key
        if self._own_key is None:
            self._own_key = b"\x00client " + str(next(_ids)).encode()
        return self.path_key + self._own_key

    def parse_without_server(self, registry: StatementRegistry, data: bytes) -> bool:
        """Take `data` = one named Parse + Sync from a client holding no server, if no server is needed.

        libpq's PQprepare (pgbench -M prepared) waits for this reply before its thread serves any
        other connection: making it wait for a server can deadlock the pool. A content some server
        already parsed needs no server now; it is prepared on one at its first Bind. True when taken:
        the caller answers ParseComplete + ReadyForQuery itself.
        """
        if data[:1] != b"P" or not data.endswith(b"S\x00\x00\x00\x04"):
            return False
        length = _int32.unpack_from(data, 1)[0]
        if 1 + length + 5 != len(data):
            return False
        name_end = data.find(b"\x00", 5, 1 + length)
        if name_end <= 5:
            return False   # the unnamed statement, or malformed: let the server answer
        name = data[5:name_end]
        if self._names is not None and name in self._names:
            return False   # Postgres answers 42P05: let the server say it
        content = data[name_end + 1:1 + length]
        stmt = registry.intern(content, self.key_for(content))
        if not stmt.parsed_ok:
            return False
        self.names[name] = stmt
        return True


class ServerStatement:
    """A statement pgpool prepared (or is preparing) on one server connection."""
    __slots__ = ("stmt", "name", "state")

    def __init__(self, stmt: Statement, name: bytes, state: int = PENDING):
        self.stmt = stmt
        self.name = name
        self.state = state      # PENDING until ParseComplete, CONFIRMED, DEAD once gone

    def __repr__(self) -> str:
        return f"ServerStatement({self.name!r}, {('pending', 'confirmed', 'dead')[self.state]})"


class PreparedCounters:
    """PgBouncer's prepared statement counters; any object with these int attributes will do."""
    __slots__ = ("client_parse_count", "server_parse_count", "bind_count")

    def __init__(self) -> None:
        self.client_parse_count = 0
        self.server_parse_count = 0
        self.bind_count = 0


class ServerStatements(Link):
    """One server connection's conversation (Link) with its statement LRU and the linked client's names."""
    __slots__ = ("registry", "max_prepared_statements", "stats", "cache", "_client", "_names", "_to_close",
                 "_drop_portals", "_unnamed_drops")

    rewrites_names = True

    def __init__(self, registry: StatementRegistry, max_prepared_statements: int,
                 stats: object | None = None, scanner: MessageScanner | None = None):
        if max_prepared_statements < 1:
            raise ValueError("max_prepared_statements must be at least 1 (0 means: do not track)")
        Link.__init__(self, scanner)
        self.registry = registry
        self.max_prepared_statements = max_prepared_statements
        self.stats = stats if stats is not None else PreparedCounters()
        self.cache: OrderedDict[Statement, ServerStatement] = OrderedDict()   # LRU first
        self._client: ClientStatements | None = None
        self._names: dict[bytes, Statement] | None = None
        self._to_close: list[ServerStatement] = []   # retired from the cache, Close not yet sent
        self._drop_portals: set[bytes] = set()   # portals bound from a DEALLOCATE ALL / DISCARD ALL statement
        self._unnamed_drops = False  # the server's unnamed statement is a DEALLOCATE ALL / DISCARD ALL

    # ---- linking -------------------------------------------------------------------------------

    def link(self, client: ClientStatements | None = None) -> None:  # type: ignore[override]
        """A client got this server (it is idle: ReadyForQuery 'I', nothing outstanding)."""
        Link.link(self)
        if client is not None:
            self._client = client
            self._names = client.names
        self._drop_portals.clear()

    def unlink(self) -> bool:
        """The link ended. False when requests were still outstanding: the server's statements are unknown."""
        clean = Link.unlink(self)
        self._client = None
        self._names = None
        if not clean:
            self.forget_all()
        return clean

    def forget_all(self) -> None:
        """The server dropped every prepared statement (DISCARD ALL / DEALLOCATE ALL run by pgpool)."""
        for sst in self.cache.values():
            sst.state = DEAD
        self.cache.clear()
        self._to_close.clear()

    # ---- client -> server ----------------------------------------------------------------------

    def on_request(self, msg_type: int, buf: bytes, start: int, end: int) -> bytes | None:
        """A whole client message (body is buf[start:end]); returns None (send as is), b"" or replacement bytes."""
        prefix = b""
        # Our Closes go only in front of extended-protocol messages: if one failed, the server would
        # skip to Sync, and a simple Query behind it would never be answered.
        if self._to_close and _CLOSE_BEFORE[msg_type]:
            prefix = self._send_closes()
        if msg_type == F_BIND:
            out = self._on_bind(buf, start, end)
        elif msg_type == F_EXECUTE:
            out = None
            if self._drop_portals:
                self._on_execute_drop(buf, start, end)
            else:
                self._queue.append(_EXECUTE_FWD)
        elif msg_type == F_PARSE:
            out = self._on_parse(buf, start, end)
        elif msg_type == F_DESCRIBE:
            out = self._on_describe(buf, start, end)
        elif msg_type == F_QUERY:
            out = self._on_query(buf, start, end)
        elif msg_type == F_CLOSE:
            out = self._on_close(buf, start, end)
        else:
            out = Link.on_request(self, msg_type, buf, start, end)   # Sync, FunctionCall, Flush
        if prefix:
            return prefix + (buf[start - 5:end] if out is None else out)
        return out

    def _on_parse(self, buf: bytes, start: int, end: int) -> bytes | None:
        name_end = _find_nul(buf, start, end, "Parse")
        names = self._names
        if name_end == start:
            # The unnamed statement is the client's own business; only DEALLOCATE/DISCARD in it matter,
            # when a portal made from it runs.
            self._queue.append(_PARSE_FWD)
            if self._unnamed_drops or _may_reset(buf, start + 1, end):
                query_end = _find_nul(buf, start + 1, end, "Parse")
                self._unnamed_drops = scan_deallocations(buf, start + 1, query_end)[0] is True
            return None
        cname = buf[start:name_end]
        content = buf[name_end + 1:end]
        stmt = self.registry.intern(content, self._client.key_for(content))
        self.stats.client_parse_count += 1
        existing = names.get(cname)
        if existing is not None:
            # The name is taken: let the server say so by parsing under the server name of the existing
            # statement. Postgres checks syntax, then a failed transaction, then the name, and so does
            # the server. In a failed transaction the existing statement cannot be injected first, so
            # the client's query is parsed twice under an unused name: the first answers syntax or
            # 25P02 (reply swallowed if it passes, as ROLLBACK does), the second draws 42P05.
            if existing not in self.cache and self.tx_status == TX_FAILED:
                sst = ServerStatement(stmt, PREFIX + str(next(_ids)).encode())
                self._to_close.append(sst)
                self._queue.append((K_PARSE, A_SWALLOW, sst))
                prefix, sname, sst = parse_message(sst.name, content), sst.name, None
            else:
                sst, prefix = self._ensure(existing)
                sname = sst.name
            self._queue.append((K_PARSE, A_FORWARD, (sname, cname, stmt, None, None, sst, True)))
            return prefix + parse_message(sname, content)
        names[cname] = stmt
        sst = self.cache.get(stmt)
        if sst is not None and self.tx_status != TX_FAILED:
            # Already prepared here: no server work. (In a failed transaction Postgres would refuse
            # the Parse, so then it goes to the server, under a new name, to get that answer.)
            self.cache.move_to_end(stmt)
            self._synth(K_PARSE, PARSE_COMPLETE, cname, stmt, _ADDED)
            return b""
        sst = self._add(stmt)
        self.stats.server_parse_count += 1
        self._queue.append((K_PARSE, A_FORWARD, (sst.name, cname, stmt, sst, None, None, False)))
        return parse_message(sst.name, content)

    def _on_bind(self, buf: bytes, start: int, end: int) -> bytes | None:
        portal_end = _find_nul(buf, start, end, "Bind")
        name_start = portal_end + 1
        name_end = _find_nul(buf, name_start, end, "Bind")
        if name_end == name_start:
            self._queue.append(_BIND_FWD)
            if self._unnamed_drops or self._drop_portals:
                self._note_portal(buf[start:portal_end], self._unnamed_drops)
            return None
        self.stats.bind_count += 1
        cname = buf[name_start:name_end]
        stmt = self._names.get(cname)
        if stmt is None:
            if self._drop_portals:
                self._note_portal(buf[start:portal_end], False)
            return self._forward_unknown(K_BIND, b"B", buf, start, end, name_start, name_end, cname)
        if stmt.drops_all or self._drop_portals:
            self._note_portal(buf[start:portal_end], stmt.drops_all)
        if stmt.stale and stmt not in self.cache:
            return self._forward_stale(K_BIND, b"B", buf, start, end, name_start, name_end, cname)
        sst, prefix = self._ensure(stmt)
        self._queue.append((K_BIND, A_FORWARD, (sst.name, cname, sst)))
        # Parameters can be large: copy them once, into the rewritten message.
        view = memoryview(buf)
        size = end - start - len(cname) + len(sst.name) + 4
        return b"".join((prefix, b"B", _int32.pack(size), view[start:name_start], sst.name, view[name_end:end]))

    def _note_portal(self, portal: bytes, drops_all: bool) -> None:
        if drops_all:
            self._drop_portals.add(portal)
        else:
            self._drop_portals.discard(portal)

    def _on_execute_drop(self, buf: bytes, start: int, end: int) -> None:
        """An Execute while some portal would drop every statement: is it that portal?"""
        portal_end = _find_nul(buf, start, end, "Execute")
        if buf[start:portal_end] not in self._drop_portals:
            self._queue.append(_EXECUTE_FWD)
            return
        # The client's names go now (a pipelined Bind behind it must not find them); every server
        # statement is retired, its Close harmless if the statement is gone. Undone if it fails.
        restore, retired = self._deallocate_all()
        self._queue.append((K_EXECUTE, A_FORWARD, (None, None, None, None, restore, retired, False)))

    def _on_describe(self, buf: bytes, start: int, end: int) -> bytes | None:
        name_end = _find_nul(buf, start + 1, end, "Describe")
        if end - start < 2 or buf[start] != _ORD_S or name_end == start + 1:
            self._queue.append(_DESCRIBE_FWD)
            return None
        cname = buf[start + 1:name_end]
        stmt = self._names.get(cname)
        if stmt is None:
            return self._forward_unknown(K_DESCRIBE, b"D", buf, start, end, start + 1, name_end, cname)
        if stmt.stale and stmt not in self.cache:
            return self._forward_stale(K_DESCRIBE, b"D", buf, start, end, start + 1, name_end, cname)
        sst, prefix = self._ensure(stmt)
        self._queue.append((K_DESCRIBE, A_FORWARD, (sst.name, cname, sst)))
        return prefix + _message(b"D", b"S" + sst.name + b"\x00")

    def _on_close(self, buf: bytes, start: int, end: int) -> bytes | None:
        name_end = _find_nul(buf, start + 1, end, "Close")
        if end - start < 2 or buf[start] != _ORD_S or name_end == start + 1:
            self._queue.append(_CLOSE_FWD)
            return None
        cname = buf[start + 1:name_end]
        stmt = self._names.pop(cname, None)
        if stmt is not None:
            # Only the client's name goes; the server statement stays cached for whoever needs it next.
            self._synth(K_CLOSE, CLOSE_COMPLETE, cname, stmt, _REMOVED)
            return b""
        if cname.startswith(PREFIX):
            # Closing an unknown name is no error in Postgres; never let a client close one of ours.
            self._synth(K_CLOSE, CLOSE_COMPLETE, None, None, 0)
            return b""
        self._queue.append(_CLOSE_FWD)
        return None

    def _on_query(self, buf: bytes, start: int, end: int) -> bytes | None:
        drops_all, found = scan_deallocations(buf, start, end - 1 if end > start and buf[end - 1] == 0 else end)
        if drops_all is None:
            # Too long to split: if the server says it dropped every statement, pgpool follows.
            self._queue.append(_QUERY_WATCH_DROPS)
            return None
        if found is None and not drops_all:
            # Ordinary SQL; also DEALLOCATE name inside a statement list (not rewritten: see the docstring).
            self._queue.append(_QUERY_FWD)
            return None
        what, cname = found if found is not None else ("all", b"")
        if what == "all":
            # The server drops every statement too, alone or in a statement list: retire them all
            # (their Closes become no-ops). The client's names come back if it fails before that.
            restore, retired = self._deallocate_all()
            self._queue.append((K_QUERY, A_FORWARD, (None, None, None, None, restore, retired, False)))
            return None
        stmt = self._names.get(cname)
        if stmt is None:
            if cname.startswith(PREFIX.lower()) or cname.startswith(PREFIX):
                self._queue.append((K_QUERY, A_FORWARD, (MISSING, cname, None, None, None, None, False)))
                return _message(b"Q", b'DEALLOCATE "' + MISSING + b'"\x00')
            self._queue.append(_QUERY_FWD)
            return None
        # DEALLOCATE of a protocol-level name: the client must get what only DEALLOCATE gives
        # (its CommandComplete, or 25P02 in a failed transaction), so a server statement is
        # deallocated in its place: ours if this server has it, else a throwaway one prepared
        # in the same Query (no Parse may go before a Query: if it failed, the Query would be skipped).
        del self._names[cname]
        restore = {cname: stmt}
        sst = self.cache.get(stmt)
        if sst is not None:
            del self.cache[stmt]
            self._to_close.append(sst)
            self._queue.append((K_QUERY, A_FORWARD, (sst.name, cname, None, None, restore, [sst], False)))
            return _message(b"Q", b'DEALLOCATE "' + sst.name + b'"\x00')
        temp = PREFIX + str(next(_ids)).encode()
        self._queue.append((K_QUERY, A_FORWARD, (temp, cname, None, None, restore, None, True)))
        return _message(b"Q", b'PREPARE "' + temp + b'" AS SELECT; DEALLOCATE "' + temp + b'"\x00')

    def _forward_unknown(self, kind: int, msg_type: bytes, buf: bytes, start: int, end: int,
                         name_start: int, name_end: int, cname: bytes) -> bytes | None:
        """A name the client never prepared: the server answers 26000 and skips to Sync, like Postgres."""
        if not cname.startswith(PREFIX):
            # Sent as is: the server has no such name (ours all start with PREFIX).
            self._queue.append((kind, A_FORWARD, None))
            return None
        self._queue.append((kind, A_FORWARD, (MISSING, cname, None)))
        return _message(msg_type, buf[start:name_start] + MISSING + buf[name_end:end])

    def _forward_stale(self, kind: int, msg_type: bytes, buf: bytes, start: int, end: int,
                       name_start: int, name_end: int, cname: bytes) -> bytes:
        """A statement prepared before DDL changed its result type, on a server lacking it: parsing it
        here would silently return other columns; its own session would say 0A000 (and skip to Sync)."""
        self._queue.append((kind, A_FORWARD, (STALE, cname, None)))
        return _message(msg_type, buf[start:name_start] + STALE + buf[name_end:end])

    def _deallocate_all(self) -> tuple[dict[bytes, Statement], list[ServerStatement]]:
        names = self._names
        restore = dict(names)
        names.clear()
        retired = list(self.cache.values())
        self.cache.clear()
        self._to_close.extend(retired)
        return restore, retired

    def _ensure(self, stmt: Statement) -> tuple[ServerStatement, bytes]:
        """The server statement for `stmt`, and the Parse to inject first if this server lacks it."""
        sst = self.cache.get(stmt)
        if sst is not None:
            self.cache.move_to_end(stmt)
            return sst, b""
        sst = self._add(stmt)
        self.stats.server_parse_count += 1
        self._queue.append((K_PARSE, A_SWALLOW, sst))
        return sst, parse_message(sst.name, stmt.content)

    def _add(self, stmt: Statement) -> ServerStatement:
        old = self.cache.pop(stmt, None)
        if old is not None:
            self._to_close.append(old)
        sst = ServerStatement(stmt, PREFIX + str(next(_ids)).encode())
        self.cache[stmt] = sst
        if len(self.cache) > self.max_prepared_statements:
            self._to_close.append(self.cache.popitem(last=False)[1])
        return sst

    def _send_closes(self) -> bytes:
        out = []
        for sst in self._to_close:
            if sst.state != DEAD:
                self._queue.append((K_CLOSE, A_SWALLOW, sst))
                out.append(close_statement_message(sst.name))
        self._to_close = []
        return b"".join(out)

    def _synth(self, kind: int, payload: bytes, cname: bytes | None, stmt: Statement | None, effect: int) -> None:
        self.synth(kind, payload, (cname, stmt, effect))

    # ---- server -> client (the Link calls these) ----------------------------------------------

    def on_request_error(self, head: tuple, buf: bytes | None, start: int,
                         end: int) -> tuple[bytes | None, str]:
        info = head[2]
        if buf is not None and head[1] == A_FORWARD and info is not None and info[0] is not None:
            sqlstate = parse_error_fields(buf[start:end]).get("C", "")
            if info[0] is STALE and sqlstate == INVALID_SQL_STATEMENT_NAME:
                return CACHED_PLAN_CHANGED, sqlstate
            return self._fix_error(buf, start, end, info[0], info[1]), sqlstate
        return None, ""

    def on_query_error(self, head: tuple, buf: bytes | None, start: int, end: int) -> bytes | None:
        info = head[2]
        if info is not None and info[0] is not None and buf is not None:
            return self._fix_error(buf, start, end, info[0], info[1])
        return None

    def on_tag(self, head: tuple, buf: bytes | None, start: int, end: int) -> bytes | None:
        info = head[2]
        if info[6]:
            # The throwaway PREPARE in front of a client's DEALLOCATE: not the client's reply.
            self._queue[0] = (K_QUERY, A_FORWARD, info[:6] + (False,))
            return b""
        if info[4] is not None and buf is not None and buf[start:end] in _DROPPED_ALL_TAGS:
            # DEALLOCATE is not transactional: done now, even if a later statement of the list fails.
            self.commit(head)
            self._queue[0] = (K_QUERY, A_FORWARD, info[:4] + (None, None, False))
        elif head is _QUERY_WATCH_DROPS and buf is not None and buf[start:end] in _DROPPED_ALL_TAGS:
            # Learnt only now: the client's names go, and everything pgpool had on this server.
            self._names.clear()
            self.forget_all()
        return None

    @staticmethod
    def _fix_error(buf: bytes, start: int, end: int, sname: bytes, cname: bytes) -> bytes | None:
        """The server named our statement: put the client's name back in the error's text."""
        body = buf[start:end]
        fixed = body.replace(b'"' + sname + b'"', b'"' + cname + b'"')
        return None if fixed == body else _message(b"E", fixed)

    # ---- effects of a finished request ---------------------------------------------------------

    def commit(self, entry: tuple) -> None:
        kind, action, info = entry
        if action == A_SWALLOW:
            # Our own Parse is now on the server; our own Close took a statement off it.
            info.state = CONFIRMED if kind == K_PARSE else DEAD
            if kind == K_PARSE:
                info.stmt.parsed_ok = True
        elif kind == K_PARSE:
            if info[3] is not None:
                info[3].state = CONFIRMED
                info[3].stmt.parsed_ok = True
            elif info[6]:
                self._parse_over_existing(info)
        elif (kind == K_QUERY or kind == K_EXECUTE) and info[5] is not None:
            # DEALLOCATE ran: the statements it took off the server need no Close.
            for sst in info[5]:
                sst.state = DEAD

    def _parse_over_existing(self, info: tuple) -> None:
        """A Parse sent to draw 42P05 succeeded: the existing statement was not on the server after all
        (or, in a failed transaction, the query was ROLLBACK / COMMIT).

        The server now has that name with the client's new query, as the client asked.
        """
        sname, cname, stmt, _, _, existing, _ = info
        if existing is not None:
            existing.state = DEAD
            if self.cache.get(existing.stmt) is existing:
                del self.cache[existing.stmt]
        sst = ServerStatement(stmt, sname, CONFIRMED)
        if stmt in self.cache:
            self._to_close.append(sst)
        else:
            self.cache[stmt] = sst
            if len(self.cache) > self.max_prepared_statements:
                self._to_close.append(self.cache.popitem(last=False)[1])
        self._names[cname] = stmt

    def undo(self, entry: tuple, sqlstate: str = "") -> None:
        """The request failed or was skipped by the server: undo what sending it did."""
        kind, action, info = entry
        if info is None:
            return
        names = self._names
        if action == A_SYNTH:
            _, cname, stmt, effect = info
            if effect == _ADDED:
                if names.get(cname) is stmt:
                    del names[cname]
            elif effect == _REMOVED:
                names.setdefault(cname, stmt)
        elif kind == K_PARSE:
            if action == A_SWALLOW:
                self._kill(info)
                return
            sname, cname, stmt, sst, restore, _, _ = info
            if sst is not None:
                self._kill(sst)
                if names.get(cname) is stmt:
                    del names[cname]
            if restore:
                for name, old in restore.items():
                    names.setdefault(name, old)
        elif kind == K_CLOSE:
            if action == A_SWALLOW and info.state == CONFIRMED:
                self._to_close.append(info)   # skipped, so still on the server: send it again
        elif kind == K_QUERY or kind == K_EXECUTE:
            if info[4]:
                for name, old in info[4].items():
                    names.setdefault(name, old)
        elif info[2] is None:
            return
        elif sqlstate == INVALID_SQL_STATEMENT_NAME:
            # Bind / Describe of a statement we believed was here: it is not (someone deallocated it).
            self._kill(info[2])
        elif sqlstate == FEATURE_NOT_SUPPORTED:
            # "cached plan must not change result type": DDL changed what the statement returns. The same
            # SQL parsed again, by this client (asyncpg re-prepares) or any other of the pool, becomes a new
            # Statement, prepared afresh on every server. Server copies of the old one stay: a client still
            # holding it gets this error again, as its own session would give it (psycopg then re-prepares).
            self.registry.retire(info[2].stmt)

    def _kill(self, sst: ServerStatement) -> None:
        sst.state = DEAD
        if self.cache.get(sst.stmt) is sst:
            del self.cache[sst.stmt]
