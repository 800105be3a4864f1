"""pgpool.prepared without sockets: what clients see through the tracker equals what one session gives.

`ModelSession` is a small model of one PostgreSQL backend, written from the protocol docs
and postgres.c's rules (skip to Sync after an error, 25P02 in a failed transaction, the
order Parse checks syntax / failed transaction / duplicate name). Each test runs client
scripts twice: every client on its own model session ("direct"), and all clients
interleaved over one or two model sessions through pgpool's tracker ("pooled"), with
the server's replies delivered at random points between the client's messages. The
client-visible message streams must be byte-identical.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgpool import prepared
from pgpool.params import SessionParams, search_path_key
from pgpool.prepared import (
    CLIENT_TYPES, SERVER_TYPES, WATCH_CLIENT, WATCH_SERVER, ClientStatements, ServerStatements,
    StatementRegistry, classify_deallocate, drops_all_statements, is_session_bound, scan_deallocations,
)
from pgpool.protocol.errors import ProtocolError, error_response, parse_error_fields
from pgpool.protocol.framing import MessageScanner
from tests.frontend import FLUSH, SYNC, bind, close, describe, execute, msg, parse, query, split_messages
from tests.protocol.fakes import Plane, complete, ready

# ---- message bytes (PostgreSQL docs, "Message Formats") ---------------------------------------


def show(messages: list[bytes]) -> list[str]:
    """Readable form for assertion diffs: type, plus SQLSTATE and text for errors."""
    out = []
    for m in messages:
        if m[:1] == b"E":
            fields = parse_error_fields(m[5:])
            out.append(f"E {fields.get('C')} {fields.get('M')}")
        elif m[:1] in (b"D", b"C", b"Z"):
            out.append(f"{m[:1].decode()} {m[5:].rstrip(bytes(1))!r}")
        else:
            out.append(m[:1].decode())
    return out


# ---- a model of one PostgreSQL session -----------------------------------------------------------

TX_EXIT = ("commit", "rollback", "end", "abort")
IN_FAILED_TX = "current transaction is aborted, commands ignored until end of transaction block"


_COMMENT = re.compile(r"/\*.*?\*/|--[^\n]*(\n|$)", re.DOTALL)


def _model_deallocate(sql: str) -> tuple[str, bytes] | None:
    """The model's own reading of DEALLOCATE [PREPARE] ALL | name and DISCARD ALL (comments allowed)."""
    words = _COMMENT.sub(" ", sql).replace(";", " ").split()
    low = [w.lower() for w in words]
    if low == ["discard", "all"]:
        return "discard", b""
    if low[:1] == ["deallocate"]:
        rest = words[2:] if low[1:2] == ["prepare"] else words[1:]
        if len(rest) == 1:
            if rest[0].lower() == "all":
                return "all", b""
            return "name", rest[0][1:-1].replace('""', '"').encode() if rest[0][0] == '"' else rest[0].lower().encode()
    return None


def _cstring(body: bytes, pos: int) -> tuple[str, int]:
    nul = body.index(0, pos)
    return body[pos:nul].decode(), nul + 1


class ModelSession:
    """Replies as one backend would, for the subset of SQL the scripts use.

    SQL: "select <x>" returns a row naming the statement and its parameters; a query
    containing "bad" is a syntax error at Parse; "fail" fails at Execute (22012);
    "begin" / "commit" / "rollback"; "deallocate all|<name>", "discard all"; anything
    else completes as "INSERT 0 1". Parameters are counted as "$" signs.
    """

    def __init__(self) -> None:
        self.statements: dict[str, tuple[str, bytes]] = {}     # name -> (query, type OIDs)
        self.portals: dict[str, tuple[str, str, tuple[str, ...]]] = {}   # name -> (statement, query, params)
        self.tx = "I"
        self.skipping = False
        self.implicit_failed = False

    # -- helpers
    def _error(self, sqlstate: str, text: str, extended: bool) -> list[bytes]:
        if self.tx == "T":
            self.tx = "E"
        if extended:
            self.skipping = True
        return [error_response(sqlstate, text)]

    def _aborted(self, sql: str) -> bool:
        return self.tx == "E" and sql.strip().lower() not in TX_EXIT

    @staticmethod
    def _missing(name: str) -> str:
        return f'prepared statement "{name}" does not exist' if name else "unnamed prepared statement does not exist"

    @staticmethod
    def _rows(sql: str) -> bool:
        return sql.strip().lower().startswith("select")

    def _end_implicit(self) -> None:
        if self.tx == "I":
            self.portals.clear()

    def _run(self, sql: str, params: tuple[str, ...], extended: bool) -> list[bytes]:
        """Execute one statement (the portal or simple-query part)."""
        low = sql.strip().lower()
        if self._aborted(sql):
            return self._error("25P02", IN_FAILED_TX, extended)
        if "fail" in low:
            return self._error("22012", "division by zero", extended)
        if low.startswith("select"):
            row = f"{sql}|{','.join(params)}".encode()
            return [msg(b"D", struct.pack("!hi", 1, len(row)) + row), msg(b"C", b"SELECT 1\x00")]
        if low == "begin":
            if self.tx == "I":
                self.tx = "T"
            return [msg(b"C", b"BEGIN\x00")]
        if low in TX_EXIT:
            tag = b"ROLLBACK" if self.tx == "E" or low in ("rollback", "abort") else b"COMMIT"
            self.tx = "I"
            self.portals.clear()
            return [msg(b"C", tag + b"\x00")]
        found = _model_deallocate(sql)
        if found is not None and found[0] == "discard":
            if self.tx != "I":
                return self._error("25001", "DISCARD ALL cannot run inside a transaction block", extended)
            self.statements.clear()
            self.portals.clear()
            return [msg(b"C", b"DISCARD ALL\x00")]
        if found is not None:
            what, name = found
            if what == "all":
                self.statements.clear()
                return [msg(b"C", b"DEALLOCATE ALL\x00")]
            name = name.decode()
            if name not in self.statements:
                return self._error("26000", f'prepared statement "{name}" does not exist', extended)
            del self.statements[name]
            return [msg(b"C", b"DEALLOCATE\x00")]
        if low.startswith("prepare "):   # only pgpool's own "PREPARE x AS SELECT; DEALLOCATE x"
            first, second = sql.split(";")
            name = first.split()[1].strip('"')
            self.statements[name] = ("SELECT", b"\x00\x00")
            return [msg(b"C", b"PREPARE\x00")] + self._run(second, (), extended)
        return [msg(b"C", b"INSERT 0 1\x00")]

    # -- frontend messages
    def feed(self, message: bytes) -> list[bytes]:
        t = message[:1]
        body = message[5:]
        if t == b"S":
            self.skipping = False
            self._end_implicit()
            return [msg(b"Z", self.tx.encode())]
        if self.skipping:
            return []
        if t == b"H":
            return []
        if t == b"Q":
            return self._query(body[:-1].decode())
        handler = {b"P": self._parse, b"B": self._bind, b"D": self._describe, b"E": self._execute,
                   b"C": self._close}[t]
        return handler(body)

    def _query(self, sql: str) -> list[bytes]:
        out = []
        if self.tx == "I":
            self.portals.clear()
        if "bad" in sql:
            out = self._error("42601", 'syntax error at or near "bad"', False)
        elif ";" in sql and not sql.lower().startswith("prepare "):
            out = self._statement_list(sql)
        else:
            result = self._run(sql, (), False)
            if self._rows(sql) and result[0][:1] == b"D":
                out.append(msg(b"T", b"\x00\x01col\x00" + bytes(18)))
            out.extend(result)
        self._end_implicit()
        out.append(msg(b"Z", self.tx.encode()))
        return out

    def _statement_list(self, sql: str) -> list[bytes]:
        """A multi-statement Query: one implicit transaction, stopping at the first error.
        DEALLOCATE is not transactional; DISCARD ALL refuses to run in a transaction block."""
        out: list[bytes] = []
        implicit = self.tx == "I"
        if implicit:
            self.tx = "T"
        for part in (p.strip() for p in sql.split(";")):
            if not _COMMENT.sub("", part).strip():
                continue
            if (_model_deallocate(part) or ("",))[0] == "discard":
                result = self._error("25001", "DISCARD ALL cannot run inside a transaction block", False)
            else:
                result = self._run(part, (), False)
                if self._rows(part) and result[0][:1] == b"D":
                    out.append(msg(b"T", b"\x00\x01col\x00" + bytes(18)))
            out.extend(result)
            if result[-1][:1] == b"E":
                break
        if implicit:
            self.tx = "I"
        return out

    def _parse(self, body: bytes) -> list[bytes]:
        name, pos = _cstring(body, 0)
        sql, _ = _cstring(body, pos)
        types = body[body.index(0, pos) + 1:]
        if "bad" in sql:
            return self._error("42601", 'syntax error at or near "bad"', True)
        if self._aborted(sql):
            return self._error("25P02", IN_FAILED_TX, True)
        if name and name in self.statements:
            return self._error("42P05", f'prepared statement "{name}" already exists', True)
        self.statements[name] = (sql, types)
        return [msg(b"1")]

    def _bind(self, body: bytes) -> list[bytes]:
        portal, pos = _cstring(body, 0)
        name, pos = _cstring(body, pos)
        nformats = struct.unpack_from("!h", body, pos)[0]
        pos += 2 + 2 * nformats
        nparams = struct.unpack_from("!h", body, pos)[0]
        pos += 2
        params = []
        for _ in range(nparams):
            size = struct.unpack_from("!i", body, pos)[0]
            params.append(body[pos + 4:pos + 4 + size].decode())
            pos += 4 + size
        if name not in self.statements:
            return self._error("26000", self._missing(name), True)
        sql = self.statements[name][0]
        if self._aborted(sql):
            return self._error("25P02", IN_FAILED_TX, True)
        wanted = sql.count("$")
        if wanted != nparams:
            return self._error("08P01", f'bind message supplies {nparams} parameters, but prepared statement "{name}" '
                                        f"requires {wanted}", True)
        self.portals[portal] = (name, sql, tuple(params))
        return [msg(b"2")]

    def _describe(self, body: bytes) -> list[bytes]:
        kind = body[:1]
        name, _ = _cstring(body, 1)
        if kind == b"S":
            if name not in self.statements:
                return self._error("26000", self._missing(name), True)
            sql, types = self.statements[name]
            if self.tx == "E" and self._rows(sql):
                return self._error("25P02", IN_FAILED_TX, True)
            head = [msg(b"t", struct.pack("!h", sql.count("$")) + bytes(4 * sql.count("$")))]
        else:
            if name not in self.portals:
                return self._error("34000", f'portal "{name}" does not exist', True)
            sql = self.portals[name][1]
            if self.tx == "E" and self._rows(sql):
                return self._error("25P02", IN_FAILED_TX, True)
            head = []
        return head + [msg(b"T", b"\x00\x01col\x00" + bytes(18)) if self._rows(sql) else msg(b"n")]

    def _execute(self, body: bytes) -> list[bytes]:
        portal, _ = _cstring(body, 0)
        if portal not in self.portals:
            return self._error("34000", f'portal "{portal}" does not exist', True)
        _, sql, params = self.portals[portal]
        return self._run(sql, params, True)

    def _close(self, body: bytes) -> list[bytes]:
        kind = body[:1]
        name, _ = _cstring(body, 1)
        if kind == b"S":
            # Portals made from the statement keep working: PostgreSQL 15 does so, whatever the
            # protocol docs say (tests/integration/test_prepared_tracker.py checks it).
            self.statements.pop(name, None)
        else:
            self.portals.pop(name, None)
        return [msg(b"3")]


# ---- running scripts -------------------------------------------------------------------------------

@dataclass
class Round:
    """Messages a client sends back to back before it reads the replies."""
    messages: list[bytes]

    @property
    def ends_with_sync(self) -> bool:
        return self.messages[-1][:1] in (b"S", b"Q")


def run_direct(script: list[Round]) -> list[bytes]:
    session = ModelSession()
    seen: list[bytes] = []
    for r in script:
        for m in r.messages:
            seen.extend(session.feed(m))
    return seen


@dataclass
class PooledServer:
    session: ModelSession = field(default_factory=ModelSession)
    tracker: ServerStatements | None = None
    inflight: list[bytes] = field(default_factory=list)     # replies not yet read by pgpool
    client: int | None = None
    last_status: bytes = b"I"


class PooledRun:
    """Clients interleaved over a few model servers through the tracker, as client.py/server.py would."""

    def __init__(self, n_servers: int, max_prepared: int, registry: StatementRegistry | None = None):
        self.registry = registry or StatementRegistry()
        self.servers = [PooledServer() for _ in range(n_servers)]
        for s in self.servers:
            s.tracker = ServerStatements(self.registry, max_prepared)
        self.namespaces: dict[int, ClientStatements] = {}
        self.seen: dict[int, list[bytes]] = {}
        self.holding: dict[int, PooledServer] = {}

    def server_for(self, client: int) -> PooledServer | None:
        if client in self.holding:
            return self.holding[client]
        for s in self.servers:
            if s.client is None:
                s.client = client
                s.tracker.link(self.namespaces.setdefault(client, ClientStatements()))
                self.holding[client] = s
                return s
        return None

    def send(self, client: int, server: PooledServer, message: bytes) -> None:
        out = server.tracker.on_client_message(message[0], message, 5, len(message))
        early = server.tracker.take_client_output()
        if early:
            self.seen[client].extend(split_messages(early))
        to_server = message if out is None else out
        for m in split_messages(to_server):
            server.inflight.extend(server.session.feed(m))

    def deliver(self, client: int, server: PooledServer, count: int) -> None:
        for _ in range(min(count, len(server.inflight))):
            m = server.inflight.pop(0)
            if WATCH_SERVER[m[0]]:
                out = server.tracker.on_server_message(m[0], m, 5, len(m))
            else:
                out = None
            if m[:1] == b"Z":
                server.last_status = m[5:6]
            forwarded = m if out is None else out
            if forwarded:
                self.seen[client].extend(split_messages(forwarded))

    def run_round(self, client: int, r: Round, delivery: list[int]) -> bool:
        """Send one round with replies read at the chosen points; False when no server is free."""
        server = self.server_for(client)
        if server is None:
            return False
        self.seen.setdefault(client, [])
        for i, m in enumerate(r.messages):
            self.send(client, server, m)
            self.deliver(client, server, delivery[i % len(delivery)] if delivery else 0)
        self.deliver(client, server, len(server.inflight))
        if r.ends_with_sync and server.tracker.releasable:
            # The one release rule (protocol/link.py): ReadyForQuery 'I', nothing outstanding, no
            # extended message since Sync, no COPY.
            assert server.last_status == b"I"
            assert server.tracker.unlink()
            server.client = None
            del self.holding[client]
        return True


def run_pooled(scripts: list[list[Round]], order: list[int], n_servers: int, max_prepared: int,
               delivery: list[int], path_keys: list[bytes] = ()) -> dict[int, list[bytes]]:
    run = PooledRun(n_servers, max_prepared)
    for client, key in enumerate(path_keys):
        run.namespaces[client] = ClientStatements(path_key=key)
    positions = [0] * len(scripts)
    pending = [i for i in range(len(scripts)) if scripts[i]]
    step = 0
    while pending:
        # The schedule picks who goes next; a client that cannot get a server waits its turn.
        candidates = [c for c in pending if c in run.holding] or pending
        client = candidates[order[step % len(order)] % len(candidates)] if order else candidates[0]
        step += 1
        if not run.run_round(client, scripts[client][positions[client]], delivery):
            holders = [c for c in pending if c in run.holding]
            client = holders[0]
            assert run.run_round(client, scripts[client][positions[client]], delivery)
        positions[client] += 1
        if positions[client] == len(scripts[client]):
            pending.remove(client)
    for c in range(len(scripts)):
        run.seen.setdefault(c, [])
    return run.seen


def assert_same(scripts: list[list[Round]], order: list[int] = (), n_servers: int = 1, max_prepared: int = 100,
                delivery: list[int] = (), path_keys: list[bytes] = ()) -> dict[int, list[bytes]]:
    pooled = run_pooled(scripts, list(order), n_servers, max_prepared, list(delivery), list(path_keys))
    for c, script in enumerate(scripts):
        assert show(pooled[c]) == show(run_direct(script)), f"client {c}"
        assert pooled[c] == run_direct(script), f"client {c}"
    return pooled


def rounds(*groups: list[bytes]) -> list[Round]:
    return [Round(list(g)) for g in groups]


# ---- targeted scenarios ----------------------------------------------------------------------------

def test_same_name_different_sql_in_two_clients_over_one_server():
    a = rounds([parse("s1", "select a"), bind("s1"), execute(), SYNC], [bind("s1"), execute(), SYNC])
    b = rounds([parse("s1", "select b"), bind("s1"), execute(), SYNC], [bind("s1"), execute(), SYNC])
    seen = assert_same([a, b], order=[0, 1, 0, 1])
    assert b"select a" in seen[0][2] and b"select b" in seen[1][2]


def test_same_sql_from_two_clients_is_prepared_once_per_server():
    run = PooledRun(1, 10)
    for c in (0, 1):
        run.run_round(c, Round([parse(f"c{c}", "select 1"), bind(f"c{c}"), execute(), SYNC]), [])
    assert run.servers[0].tracker.stats.server_parse_count == 1
    assert len(run.servers[0].session.statements) == 1
    assert show(run.seen[1]) == show(run.seen[0]) == ["1", "2", "D b'\\x00\\x01\\x00\\x00\\x00\\tselect 1|'",
                                                      "C b'SELECT 1'", "Z b'I'"]


def test_statement_prepared_on_demand_on_another_server():
    a = rounds([parse("s", "select $1", (23,)), SYNC], [bind("s", ("7",)), execute(), SYNC])
    holder = rounds([query("begin")], [query("select 1")], [query("commit")])
    # Client 1 holds server 0 in a transaction, so client 0's second round lands on server 1.
    assert_same([a, holder], order=[0, 1, 0, 1, 1], n_servers=2)


def test_injected_parse_reply_is_swallowed_and_bind_answered_in_place():
    run = PooledRun(2, 10)
    run.run_round(0, Round([parse("s", "select 1"), SYNC]), [])
    other = run.servers[1]
    run.servers[0].client = 99       # force the next link onto server 1
    run.run_round(0, Round([bind("s"), execute(), SYNC]), [])
    assert show(run.seen[0])[2:] == ["2", "D b'\\x00\\x01\\x00\\x00\\x00\\tselect 1|'", "C b'SELECT 1'", "Z b'I'"]
    assert len(other.session.statements) == 1


def test_close_then_reparse_with_other_sql():
    a = rounds([parse("s", "select 1"), bind("s"), execute(), SYNC],
               [close("S", "s"), SYNC],
               [parse("s", "select 2"), bind("s"), execute(), SYNC],
               [bind("s"), execute(), SYNC])
    seen = assert_same([a])
    assert b"select 2" in seen[0][-3]


def test_close_keeps_server_statement_cached():
    run = PooledRun(1, 10)
    run.run_round(0, Round([parse("s", "select 1"), SYNC]), [])
    run.run_round(0, Round([close("S", "s"), SYNC]), [])
    assert len(run.servers[0].session.statements) == 1
    assert show(run.seen[0]) == ["1", "Z b'I'", "3", "Z b'I'"]


def test_reused_name_gets_42P05_and_pipeline_skips_to_sync():
    a = rounds([parse("s", "select 1"), SYNC],
               [parse("s", "select 2"), bind("s"), execute(), SYNC],
               [bind("s"), execute(), SYNC])
    seen = assert_same([a])
    assert show(seen[0])[2:4] == ['E 42P05 prepared statement "s" already exists', "Z b'I'"]


def test_reused_name_with_bad_sql_reports_the_syntax_error_first():
    assert_same([rounds([parse("s", "select 1"), SYNC], [parse("s", "bad"), SYNC])])


def test_reused_name_in_a_failed_transaction_on_a_server_lacking_it():
    # Postgres checks syntax, then the failed transaction, then the name: pgpool cannot inject the
    # existing statement there, yet must answer the same (found by the generated test below).
    a = rounds([parse("s", "select 1"), SYNC], [query("begin")], [parse("t", "select 2"), SYNC],
               [query("select fail")], [parse("s", "bad"), SYNC], [parse("s", "select 5"), SYNC],
               [parse("s", "rollback"), SYNC], [query("rollback")], [bind("s"), execute(), SYNC])
    seen = assert_same([a], max_prepared=1)
    errors = [x.split(" ")[1] for x in show(seen[0]) if x.startswith("E")]
    assert errors == ["22012", "42601", "25P02", "42P05"]


def test_unknown_name_gets_26000_without_disconnect():
    a = rounds([bind("nope"), execute(), SYNC], [describe("S", "nope"), SYNC], [query("select 1")])
    seen = assert_same([a])
    assert show(seen[0])[0] == 'E 26000 prepared statement "nope" does not exist'


def test_unknown_name_that_looks_like_ours_never_reaches_our_statements():
    run = PooledRun(1, 10)
    run.run_round(0, Round([parse("s", "select 1"), SYNC]), [])
    ours = run.servers[0].tracker.cache[next(iter(run.servers[0].tracker.cache))].name.decode()
    a = rounds([bind(ours), execute(), SYNC], [describe("S", ours), SYNC], [close("S", ours), SYNC],
               [query(f'deallocate "{ours}"')])
    run.run_round(1, a[0], [])
    for r in a[1:]:
        run.run_round(1, r, [])
    assert show(run.seen[1]) == show(run_direct(a))
    assert ours in run.servers[0].session.statements


def test_parse_error_inside_a_pipeline_reaches_the_client_at_its_place():
    a = rounds([parse("ok", "select 1"), parse("broken", "bad"), bind("ok"), execute(), parse("later", "select 2"),
                SYNC],
               [bind("broken"), execute(), SYNC],
               [bind("later"), execute(), SYNC],
               [bind("ok"), execute(), SYNC])
    seen = assert_same([a], delivery=[1])
    assert show(seen[0])[:3] == ["1", 'E 42601 syntax error at or near "bad"', "Z b'I'"]


def test_skipped_parse_of_a_cached_statement_is_undone_after_an_earlier_error():
    # Client 0 caches "select 1" on the server; client 1's Parse of it is answered by pgpool,
    # but an error earlier in the pipeline means Postgres would have skipped it.
    a = rounds([parse("x", "select 1"), SYNC])
    b = rounds([parse("p", "bad"), parse("q", "select 1"), SYNC], [bind("q"), execute(), SYNC])
    seen = assert_same([a, b], order=[0, 1, 1])
    assert show(seen[1])[-2] == 'E 26000 prepared statement "q" does not exist'


def test_error_before_a_close_keeps_the_name():
    a = rounds([parse("s", "select 1"), SYNC],
               [bind("zz"), close("S", "s"), SYNC],
               [bind("s"), execute(), SYNC])
    assert_same([a])


def test_asyncpg_style_prepare_with_flush_and_no_sync():
    a = rounds([parse("__asyncpg_stmt_1__", "select $1", (23,)), describe("S", "__asyncpg_stmt_1__"), FLUSH],
               [bind("__asyncpg_stmt_1__", ("1",)), execute(), SYNC])
    b = rounds([parse("__asyncpg_stmt_1__", "select 9"), describe("S", "__asyncpg_stmt_1__"), FLUSH],
               [bind("__asyncpg_stmt_1__"), execute(), SYNC])
    assert_same([a, b], order=[0, 1, 0, 1], n_servers=2)
    assert_same([a, b], order=[0, 0, 1, 1], n_servers=1)


def test_asyncpg_style_prepare_error_then_sync():
    a = rounds([parse("__asyncpg_stmt_2__", "bad"), describe("S", "__asyncpg_stmt_2__"), FLUSH],
               [SYNC], [parse("__asyncpg_stmt_2__", "select 1"), describe("S", "__asyncpg_stmt_2__"), FLUSH],
               [bind("__asyncpg_stmt_2__"), execute(), SYNC])
    assert_same([a])


def test_messages_after_an_error_and_before_sync_are_not_owed_replies():
    run = PooledRun(1, 10)
    run.run_round(0, Round([parse("s", "bad"), FLUSH]), [])
    # pgpool saw the error: what follows until Sync is skipped by the server, and by the tracker.
    run.run_round(0, Round([parse("t", "select 1"), bind("t"), execute(), close("S", "t"), SYNC]), [])
    assert show(run.seen[0]) == ['E 42601 syntax error at or near "bad"', "Z b'I'"]
    assert run.servers[0].client is None


def test_deallocate_all_clears_the_namespace():
    a = rounds([parse("s", "select 1"), SYNC], [query("deallocate all")], [bind("s"), execute(), SYNC],
               [parse("s", "select 2"), bind("s"), execute(), SYNC])
    seen = assert_same([a])
    assert show(seen[0])[4] == 'E 26000 prepared statement "s" does not exist'


def test_discard_all_clears_the_namespace_and_fails_inside_a_transaction():
    a = rounds([parse("s", "select 1"), SYNC], [query("begin")], [query("discard all")], [query("rollback")],
               [bind("s"), execute(), SYNC], [query("discard all")], [bind("s"), execute(), SYNC])
    assert_same([a])


def test_deallocate_all_in_extended_protocol():
    a = rounds([parse("s", "select 1"), SYNC],
               [parse("", "deallocate all"), bind(""), execute(), SYNC],
               [bind("s"), execute(), SYNC])
    assert_same([a])


def test_sql_deallocate_of_a_protocol_name():
    a = rounds([parse("s", "select 1"), SYNC], [query("deallocate s")], [bind("s"), execute(), SYNC],
               [query("deallocate s")], [parse("s", "select 2"), bind("s"), execute(), SYNC])
    assert_same([a])


def test_sql_deallocate_on_a_server_lacking_the_statement_and_in_a_failed_transaction():
    a = rounds([parse("s", "select 1"), SYNC], [query("begin")], [query("select fail")], [query("deallocate s")],
               [query("rollback")], [query("deallocate s")])
    holder = rounds([query("begin")], [query("commit")])
    assert_same([a, holder], order=[0, 1, 0, 0, 0, 0, 1], n_servers=2)


def test_lru_eviction_closes_in_front_of_the_next_extended_message():
    run = PooledRun(1, 2)
    server = run.servers[0]

    def on_server() -> set[str]:
        return {sql for sql, _ in server.session.statements.values()}

    for i in range(3):
        run.run_round(0, Round([parse(f"s{i}", f"select {i}"), bind(f"s{i}"), execute(), SYNC]), [])
    # The third Parse retired "select 0"; its Close went in front of that round's Bind.
    assert on_server() == {"select 1", "select 2"}
    run.run_round(0, Round([bind("s0"), execute(), SYNC]), [])
    # "select 0" came back (a Parse injected before the Bind) and retired "select 1".
    assert on_server() == {"select 2", "select 0"}
    assert [sst.stmt.content[:8] for sst in server.tracker.cache.values()] == [b"select 2", b"select 0"]
    assert show(run.seen[0])[-4:] == ["2", "D b'\\x00\\x01\\x00\\x00\\x00\\tselect 0|'", "C b'SELECT 1'", "Z b'I'"]
    run.run_round(0, Round([query("select 1")]), [])
    assert server.tracker.stats.server_parse_count == 4


def test_close_skipped_after_an_error_is_sent_again_later():
    run = PooledRun(1, 1)
    server = run.servers[0]
    run.run_round(0, Round([parse("a", "select 1"), SYNC]), [])
    # The Close retiring "select 1" goes behind a failing Bind: the server skips it.
    run.run_round(0, Round([bind("zz"), parse("b", "select 2"), parse("c", "select 3"), SYNC]), [])
    assert [sql for sql, _ in server.session.statements.values()] == ["select 1"]
    run.run_round(0, Round([SYNC]), [])
    assert server.session.statements == {}
    assert show(run.seen[0])[2:] == ['E 26000 prepared statement "zz" does not exist', "Z b'I'", "Z b'I'"]


def test_eviction_inside_a_transaction_keeps_named_portals_working():
    a = rounds([query("begin")],
               [parse("a", "select 1"), bind("a", portal="p"), SYNC],
               [parse("b", "select 2"), bind("b"), execute(), SYNC],
               [parse("c", "select 3"), bind("c"), execute(), SYNC],
               [parse("d", "select 4"), bind("d"), execute(), SYNC],
               [execute("p"), SYNC],
               [query("commit")])
    assert_same([a], max_prepared=1)


def test_bind_parameter_count_error_names_the_client_statement():
    a = rounds([parse("s", "select $1"), SYNC], [bind("s"), execute(), SYNC])
    seen = assert_same([a])
    assert "prepared statement \"s\" requires 1" in show(seen[0])[2]


def test_unnamed_statements_pass_through_untouched():
    registry = StatementRegistry()
    tracker = ServerStatements(registry, 10)
    tracker.link(ClientStatements())
    for m in (parse("", "select 1"), bind(""), describe("P", ""), execute(), describe("S", ""), close("S", ""),
              close("P", ""), SYNC):
        assert tracker.on_client_message(m[0], m, 5, len(m)) is None
    assert len(registry) == 0


def test_parse_in_a_failed_transaction_is_refused_like_postgres():
    a = rounds([parse("x", "select 1"), SYNC])
    b = rounds([query("begin")], [query("select fail")], [parse("y", "select 1"), SYNC], [query("rollback")],
               [parse("y", "select 1"), bind("y"), execute(), SYNC])
    assert_same([a, b], order=[0, 1])


def test_copy_in_ignores_syncs_sent_before_copy_done():
    tracker = ServerStatements(StatementRegistry(), 10)
    tracker.link(ClientStatements())
    for m in (parse("", "copy t from stdin"), bind(""), execute(), SYNC):
        tracker.on_client_message(m[0], m, 5, len(m))
    for reply in (msg(b"1"), msg(b"2")):
        assert tracker.on_server_message(reply[0], reply, 5, len(reply)) is None
    copy_in = msg(b"G", b"\x00\x00\x00")
    tracker.on_server_message(copy_in[0], copy_in, 5, len(copy_in))
    for m in (SYNC, msg(b"c"), SYNC):
        tracker.on_client_message(m[0], m, 5, len(m))
    for reply in (msg(b"C", b"COPY 1\x00"), msg(b"Z", b"I")):
        assert tracker.on_server_message(reply[0], reply, 5, len(reply)) is None
    assert tracker.idle


def test_lost_reply_order_is_a_protocol_error_not_a_silent_mixup():
    tracker = ServerStatements(StatementRegistry(), 10)
    tracker.link(ClientStatements())
    m = bind("")
    tracker.on_client_message(m[0], m, 5, len(m))
    z = msg(b"Z", b"I")
    with pytest.raises(ProtocolError):
        tracker.on_server_message(z[0], z, 5, len(z))


def test_forget_all_makes_the_next_bind_prepare_again():
    run = PooledRun(1, 10)
    server = run.servers[0]
    run.run_round(0, Round([parse("s", "select 1"), SYNC]), [])
    # pgpool itself ran DISCARD ALL on the server (server_reset_query), outside the tracker.
    server.session.statements.clear()
    server.tracker.forget_all()
    run.run_round(0, Round([bind("s"), execute(), SYNC]), [])
    assert show(run.seen[0])[2:] == ["2", "D b'\\x00\\x01\\x00\\x00\\x00\\tselect 1|'", "C b'SELECT 1'", "Z b'I'"]


def test_unlink_with_requests_outstanding_says_the_server_state_is_unknown():
    tracker = ServerStatements(StatementRegistry(), 10)
    tracker.link(ClientStatements())
    m = parse("s", "select 1")
    tracker.on_client_message(m[0], m, 5, len(m))
    assert not tracker.idle
    assert tracker.unlink() is False
    assert not tracker.cache


def test_oversized_messages():
    tracker = ServerStatements(StatementRegistry(), 10)
    tracker.link(ClientStatements())
    # The scanner announces a message too large to inspect with buf=None: a Bind cannot be rewritten...
    with pytest.raises(ProtocolError):
        tracker.on_client_message(ord("B"), None, 0, 5 << 20)
    # ...but a huge simple Query or Execute streams through, still owed its replies.
    assert tracker.on_client_message(ord("Q"), None, 0, 5 << 20) is None
    z = msg(b"Z", b"I")
    assert tracker.on_server_message(z[0], z, 5, len(z)) is None
    assert tracker.idle


def test_watch_tables_cover_the_types():
    assert all(WATCH_CLIENT[t] for t in CLIENT_TYPES) and sum(WATCH_CLIENT) == len(CLIENT_TYPES)
    assert all(WATCH_SERVER[t] for t in SERVER_TYPES) and sum(WATCH_SERVER) == len(SERVER_TYPES)
    assert not WATCH_SERVER[ord("D")] and not WATCH_SERVER[ord("d")]


def test_classify_deallocate():
    assert classify_deallocate(b"DEALLOCATE ALL") == ("all", b"")
    assert classify_deallocate(b" deallocate prepare all ;") == ("all", b"")
    assert classify_deallocate(b"DISCARD ALL") == ("all", b"")
    assert classify_deallocate(b"DEALLOCATE Foo") == ("name", b"foo")
    assert classify_deallocate(b'DEALLOCATE PREPARE "Fo""o"') == ("name", b'Fo"o')
    assert classify_deallocate(b"DEALLOCATE a; SELECT 1") is None
    assert classify_deallocate(b"DISCARD PLANS") is None


def through_tracker(pieces, step: int) -> tuple[bytes, ServerStatements]:
    """Client bytes fed in `pieces` through real scanners around a tracker, a model server answering;
    its replies go back `step` bytes at a time. Returns what the client receives, and the tracker."""
    session = ModelSession()
    tracker = ServerStatements(StatementRegistry(), 10)
    tracker.link(ClientStatements())
    seen = bytearray()
    server_in = MessageScanner(WATCH_CLIENT, tracker.on_client_message, max_message=1 << 20)
    server_out = MessageScanner(WATCH_SERVER, tracker.on_server_message, max_message=1 << 20, peer="server")
    for piece in pieces:
        to_server = server_in.feed(piece)
        seen += tracker.take_client_output()
        replies = b"".join(r for m in split_messages(to_server) for r in session.feed(m)) if to_server else b""
        for i in range(0, len(replies), step):
            seen += server_out.feed(replies[i:i + step])
    return bytes(seen), tracker


def test_scanner_driven_stream_split_at_every_offset_gives_the_same_replies():
    """The tracker behind real MessageScanners, fed in every split: the client sees the same bytes."""
    client_bytes = b"".join([parse("s", "select 1"), describe("S", "s"), FLUSH, bind("s"), execute(), SYNC,
                             close("S", "s"), parse("s", "select 2"), bind("s"), execute(), SYNC])
    expected = None
    for cut in range(0, len(client_bytes) + 1, 3):
        seen, _ = through_tracker((client_bytes[:cut], client_bytes[cut:]), 7)
        if expected is None:
            expected = seen
        assert seen == expected
    assert show(split_messages(expected)) == show(run_direct([Round(split_messages(client_bytes))]))


# ---- generated interleavings -----------------------------------------------------------------------

NAMES = ["s1", "s2", "PGPOOL_1"]
SQLS = ["select 1", "select 2", "select $1", "bad", "select fail", "insert", "begin", "rollback", "discard all",
        "deallocate all"]


@st.composite
def extended_round(draw) -> Round:
    """A driver-like round: statement ops, then Sync (or Flush, as asyncpg prepares)."""
    messages: list[bytes] = []
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["prepare", "prepare_describe", "run", "run_unnamed", "close", "describe_portal"]))
        name = draw(st.sampled_from(NAMES))
        sql = draw(st.sampled_from(SQLS))
        params = ("5",) if draw(st.booleans()) else ()
        if op == "prepare":
            messages.append(parse(name, sql))
        elif op == "prepare_describe":
            messages += [parse(name, sql), describe("S", name)]
        elif op == "run":
            messages += [bind(name, params), execute()]
        elif op == "run_unnamed":
            messages += [parse("", sql), bind("", params), execute()]
        elif op == "close":
            messages.append(close("S", name))
        else:
            messages += [bind(name, params), describe("P", ""), execute()]
    messages.append(FLUSH if draw(st.integers(0, 5)) == 0 else SYNC)
    return Round(messages)


simple_round = st.sampled_from(["begin", "commit", "rollback", "select 1", "select fail", "deallocate all",
                                "discard all", "deallocate s1", "deallocate s2", "select 1; deallocate all",
                                "/* c */ deallocate all; select fail", "select fail; deallocate all",
                                "select 2; discard all"]).map(lambda sql: Round([query(sql)]))


@st.composite
def client_script(draw) -> list[Round]:
    script = draw(st.lists(st.one_of(extended_round(), extended_round(), simple_round), min_size=1, max_size=6))
    # Every client finishes its work: a last Sync, then out of any transaction.
    return script + [Round([SYNC]), Round([query("rollback")])]


@settings(max_examples=max(300, settings.default.max_examples))
@given(scripts=st.lists(client_script(), min_size=2, max_size=3),
       order=st.lists(st.integers(0, 5), min_size=1, max_size=12),
       n_servers=st.integers(1, 2), max_prepared=st.integers(1, 4),
       delivery=st.lists(st.integers(0, 3), max_size=6))
def test_interleaved_clients_see_what_their_own_session_would_show(scripts, order, n_servers, max_prepared, delivery):
    assert_same(scripts, order=order, n_servers=n_servers, max_prepared=max_prepared, delivery=delivery)


# ---- issue 8: sharing keyed by meaning, invalidation, resets in every form --------------------------

def _send(tracker: ServerStatements, *messages: bytes) -> list[bytes]:
    """Client messages through the tracker: what goes to the server (made-up replies are checked apart)."""
    out: list[bytes] = []
    for message in messages:
        rewritten = tracker.on_client_message(message[0], message, 5, len(message))
        out.extend(split_messages(message if rewritten is None else rewritten))
    return out


def _reply(tracker: ServerStatements, *messages: bytes) -> list[bytes]:
    seen: list[bytes] = []
    for message in messages:
        out = tracker.on_server_message(message[0], message, 5, len(message)) if WATCH_SERVER[message[0]] else None
        seen.extend(split_messages(message if out is None else out))
    return seen


CACHED_PLAN = "cached plan must not change result type"


def test_registry_keys_statements_by_search_path_too():
    registry = StatementRegistry()
    content = b"select * from t\x00\x00\x00"
    assert registry.intern(content, b"SET search_path TO a") is registry.intern(content, b"SET search_path TO a")
    assert registry.intern(content, b"SET search_path TO a") is not registry.intern(content, b"SET search_path TO b")
    assert registry.intern(content) is not registry.intern(content, b"SET search_path TO a")


def test_same_sql_under_another_search_path_is_prepared_again_not_shared():
    run = PooledRun(1, 10)
    run.namespaces[0] = ClientStatements(path_key=b"SET search_path TO tenant_a")
    run.namespaces[1] = ClientStatements(path_key=b"SET search_path TO tenant_b")
    run.namespaces[2] = ClientStatements(path_key=b"SET search_path TO tenant_a")
    for c in (0, 1, 2):
        run.run_round(c, Round([parse(f"c{c}", "select * from t"), bind(f"c{c}"), execute(), SYNC]), [])
    # tenant_b's statement means another table: it gets its own server statement; tenant_a's is shared.
    assert run.servers[0].tracker.stats.server_parse_count == 2
    assert len(run.servers[0].session.statements) == 2
    assert [show(run.seen[c])[0] for c in (0, 1, 2)] == ["1", "1", "1"]


def test_parse_without_server_needs_a_statement_parsed_under_the_same_search_path():
    registry = StatementRegistry()
    sync = b"S\x00\x00\x00\x04"
    tenant_a = ClientStatements(path_key=b"SET search_path TO a")
    tracker = ServerStatements(registry, 10)
    tracker.link(tenant_a)
    _send(tracker, parse("s", "select * from t"), SYNC)
    _reply(tracker, msg(b"1"), msg(b"Z", b"I"))
    assert tracker.unlink()
    assert ClientStatements(path_key=b"SET search_path TO a").parse_without_server(
        registry, parse("x", "select * from t") + sync)
    assert not ClientStatements(path_key=b"SET search_path TO b").parse_without_server(
        registry, parse("x", "select * from t") + sync)
    assert not ClientStatements().parse_without_server(StatementRegistry(), parse("x", "select * from t") + sync), \
        "another pool's registry never saw it"


@pytest.mark.parametrize("where", ["bind", "describe"])
def test_cached_plan_error_invalidates_the_statement_so_a_reprepare_reaches_the_server(where):
    """After DDL changed a result type: 0A000 on Bind (or Describe) of a shared statement; asyncpg then
    closes its statement and prepares the same SQL under a new name, which must really be prepared."""
    registry = StatementRegistry()
    tracker = ServerStatements(registry, 10)
    other = ServerStatements(registry, 10)      # a second server holding the same, now stale, statement
    asyncpg_client = ClientStatements()
    tracker.link(asyncpg_client)
    sent = _send(tracker, parse("__asyncpg_stmt_1__", "select * from t"), describe("S", "__asyncpg_stmt_1__"), FLUSH)
    _reply(tracker, msg(b"1"), msg(b"t", b"\x00\x00"), msg(b"T", b"\x00\x00"))
    server_name = sent[0][5:sent[0].index(0, 5)]
    old_statement = asyncpg_client.names[b"__asyncpg_stmt_1__"]
    other.link(ClientStatements())
    _send(other, parse("p", "select * from t"), SYNC)
    _reply(other, msg(b"1"), msg(b"Z", b"I"))
    assert other.unlink()

    if where == "bind":
        _send(tracker, bind("__asyncpg_stmt_1__"), execute(), SYNC)
    else:
        _send(tracker, describe("S", "__asyncpg_stmt_1__"), SYNC)
    seen = _reply(tracker, error_response("0A000", CACHED_PLAN), msg(b"Z", b"I"))
    assert show(seen)[0] == f"E 0A000 {CACHED_PLAN}"
    # A client still holding the old statement gets what its own session would give: the same error.
    sent = _send(tracker, bind("__asyncpg_stmt_1__"), execute(), SYNC)
    assert sent[0][5:].startswith(b"\x00" + server_name + b"\x00")
    _reply(tracker, error_response("0A000", CACHED_PLAN), msg(b"Z", b"I"))
    # asyncpg drops its cache and prepares the same SQL again: that Parse must reach the server.
    sent = _send(tracker, close("S", "__asyncpg_stmt_1__"), parse("__asyncpg_stmt_2__", "select * from t"),
                 describe("S", "__asyncpg_stmt_2__"), FLUSH)
    assert [m[:1] for m in sent] == [b"P", b"D", b"H"], "the same SQL is prepared afresh"
    assert sent[0][5:sent[0].index(0, 5)] != server_name
    assert tracker.take_client_output() == b"3\x00\x00\x00\x04", "only the client's Close was answered locally"
    # A new client of the pool on the other server: the stale copy there is not used either.
    other.link(ClientStatements())
    sent = _send(other, parse("_pg3_0", "select * from t"), SYNC)
    assert [m[:1] for m in sent] == [b"P", b"S"], "a Parse of a statement known stale must reach a server"
    _reply(other, msg(b"1"), msg(b"Z", b"I"))
    assert other.unlink()
    # The asyncpg client still holding the old statement, on a third server that never had it: parsing
    # it there would return the new columns under the old row description; its own session says 0A000.
    third = ServerStatements(registry, 10)
    holder = ClientStatements()
    holder.names[b"__asyncpg_stmt_9__"] = old_statement
    third.link(holder)
    sent = _send(third, bind("__asyncpg_stmt_9__"), execute(), SYNC)
    assert [m[:1] for m in sent] == [b"B", b"E", b"S"]
    seen = _reply(third, error_response("26000", 'prepared statement "PGPOOL_stale" does not exist'),
                  msg(b"Z", b"I"))
    assert show(seen) == [f"E 0A000 {CACHED_PLAN}", "Z b'I'"]
    assert third.unlink()


def test_invalid_statement_name_invalidates_the_statement_on_that_server():
    tracker = ServerStatements(StatementRegistry(), 10)
    tracker.link(ClientStatements())
    _send(tracker, parse("s", "select 1"), SYNC)
    _reply(tracker, msg(b"1"), msg(b"Z", b"I"))
    # Someone removed it from the server behind pgpool's back.
    _send(tracker, bind("s"), execute(), SYNC)
    _reply(tracker, error_response("26000", 'prepared statement "PGPOOL_x" does not exist'), msg(b"Z", b"I"))
    sent = _send(tracker, bind("s"), execute(), SYNC)
    assert [m[:1] for m in sent] == [b"P", b"B", b"E", b"S"]


def test_deallocate_all_inside_a_multi_statement_query_only_clears_the_clients_own_names():
    a = rounds([parse("s", "select 1"), SYNC], [bind("s"), execute(), SYNC], [bind("s"), execute(), SYNC])
    b = rounds([parse("t", "select 2"), SYNC], [query("select 3; deallocate all")], [bind("t"), execute(), SYNC])
    seen = assert_same([a, b], order=[0, 1, 1, 0, 1, 0])
    assert show(seen[1])[-2] == 'E 26000 prepared statement "t" does not exist'
    assert "E" not in "".join(x[0] for x in show(seen[0]))


@pytest.mark.parametrize("sql", ["/* pool reset */ DEALLOCATE ALL", "select 1; -- bye\n DeAllocate Prepare All",
                                 "deallocate all; select fail", "select fail; deallocate all",
                                 "select 1; discard all"])
def test_deallocate_all_in_any_spelling_keeps_other_clients_working(sql):
    a = rounds([parse("s", "select 1"), SYNC], [bind("s"), execute(), SYNC], [bind("s"), execute(), SYNC])
    b = rounds([parse("t", "select 2"), SYNC], [query(sql)], [bind("t"), execute(), SYNC])
    seen = assert_same([a, b], order=[0, 1, 1, 0, 1, 0])
    assert "E" not in "".join(x[0] for x in show(seen[0]))


@pytest.mark.parametrize("sql", ["discard all", "deallocate all"])
@pytest.mark.parametrize("name", ["_pg3_0", ""])
def test_discard_all_as_a_prepared_statement_only_clears_the_clients_own_names(sql, name):
    """psycopg with prepare_threshold=0 sends DISCARD ALL as a named statement."""
    a = rounds([parse("s", "select 1"), SYNC], [bind("s"), execute(), SYNC], [bind("s"), execute(), SYNC])
    b = rounds([parse("t", "select 2"), SYNC], [parse(name, sql), bind(name), execute(), SYNC],
               [bind("t"), execute(), SYNC], [bind(name), execute(), SYNC])
    for n_servers in (1, 2):
        seen = assert_same([a, b], order=[0, 1, 1, 0, 1, 1, 0], n_servers=n_servers)
        assert "E" not in "".join(x[0] for x in show(seen[0]))
        assert show(seen[1])[-4] == 'E 26000 prepared statement "t" does not exist'


def test_discard_all_as_a_prepared_statement_that_fails_keeps_the_names():
    a = rounds([parse("s", "select 1"), SYNC], [query("begin")],
               [parse("d", "discard all"), bind("d"), execute(), SYNC], [query("rollback")],
               [bind("s"), execute(), SYNC], [bind("d"), execute(), SYNC], [bind("s"), execute(), SYNC])
    seen = assert_same([a])
    assert [x.split(" ")[1] for x in show(seen[0]) if x.startswith("E")] == ["25001", "26000"]


def test_split_streams_with_resets_give_the_same_bytes():
    """Multi-statement and named resets through real scanners, split at every offset."""
    client_bytes = b"".join([parse("s", "select 1"), SYNC, query("select 2; /* x */ deallocate all"),
                             parse("d", "discard all"), bind("d"), execute(), SYNC,
                             parse("s", "select 3"), bind("s"), execute(), SYNC])

    @given(cuts=st.lists(st.integers(0, len(client_bytes)), max_size=4), step=st.integers(1, 9))
    @settings(max_examples=200)
    def check(cuts, step):
        bounds = [0, *sorted(cuts), len(client_bytes)]
        seen, tracker = through_tracker([client_bytes[lo:hi] for lo, hi in zip(bounds, bounds[1:])], step)
        assert show(split_messages(seen)) == show(run_direct([Round(split_messages(client_bytes))]))
        assert tracker.idle
        # Each reset retired what the server had: only "select 3" is left to share.
        assert [sst.stmt.content[:8] for sst in tracker.cache.values()] == [b"select 3"]
    check()


def test_scan_deallocations_recognises_every_spelling_and_only_those():
    for sql in (b"DEALLOCATE ALL", b"discard all;", b"select 1; DEALLOCATE PREPARE ALL", b"/* c */ Discard All",
                b"SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL; DISCARD ALL"):
        assert drops_all_statements(sql), sql
    for sql in (b"SELECT 'deallocate all'", b"-- discard all\nSELECT 1", b"DISCARD PLANS", b"DISCARD TEMP",
                b"DEALLOCATE foo", b"select * from discard_all", b"not sql at all deallocate", b"",
                b"SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL"):
        assert not drops_all_statements(sql), sql
    # Comments and multi-statement strings: the single-statement form is still recognised.
    assert classify_deallocate(b"/* hi */ DEALLOCATE foo") == ("name", b"foo")


def test_ordinary_sql_never_reaches_the_parser_and_the_rest_is_parsed_once():
    prepared._scan_cached.cache_clear()
    for sql in (b"SELECT abalance FROM pgbench_accounts WHERE aid = 1", b"UPDATE t SET v = 1; SELECT 1",
                b"BEGIN", b"  select 'discard all'", b"INSERT INTO deallocations VALUES (1)"):
        assert scan_deallocations(sql, 0, len(sql)) == (False, None)
    assert prepared._scan_cached.cache_info().currsize == 0, "the byte pre-filter let ordinary SQL through"
    for _ in range(3):
        assert scan_deallocations(b"SELECT 1; DEALLOCATE ALL", 0, 24) == (True, None)
    info = prepared._scan_cached.cache_info()
    assert (info.misses, info.hits) == (1, 2)


# ---- wiring: per-pool registry, reset forgets the server's statements, the search_path key ---------

def test_each_pool_has_its_own_statement_registry():
    plane = Plane(**{"databases.otherdb": "host=127.0.0.1 port=5432 dbname=otherdb"})
    other = plane.app.pool_directory.get_pool("otherdb", "app", None)
    assert plane.pool.statement_registry is not other.statement_registry
    assert plane.servers[0].prepared.registry is plane.pool.statement_registry


@pytest.mark.parametrize("reset, forgets", [("DISCARD ALL", True), ("DEALLOCATE ALL; RESET ALL", True),
                                            ("RESET ALL", False)])
def test_server_reset_query_forgets_the_statements_it_dropped(reset, forgets):
    plane = Plane(server_reset_query_always="1", server_reset_query=reset)
    server = plane.servers[0]
    client = plane.add_client()
    client.data_received(parse("s", "select 1") + SYNC)
    sent = server.transport.take()
    assert sent[:1] == b"P"
    server.data_received(msg(b"1") + ready())
    assert server.transport.take() == query(reset)
    server.data_received(complete(reset.split(";")[0]) + ready())
    client.data_received(bind("s") + execute() + SYNC)
    sent = split_messages(server.transport.take())
    assert [m[:1] for m in sent] == ([b"P"] if forgets else []) + [b"B", b"E", b"S"]


def test_search_path_key_follows_startup_and_set():
    assert search_path_key(SessionParams()) == b""
    a = SessionParams(statements={"search_path": "SELECT pg_catalog.set_config('search_path', 'a', false)"})
    b = SessionParams(statements={"search_path": "SELECT pg_catalog.set_config('search_path', 'b', false)"})
    assert search_path_key(a) != search_path_key(b) and search_path_key(a) == search_path_key(SessionParams(
        statements=dict(a.statements)))
    assert search_path_key(SessionParams(reported={"search_path": "x"})) == search_path_key(
        SessionParams(reported={"search_path": "x"})) != b""

    plane = Plane()
    server = plane.servers[0]
    client = plane.add_client(statements=dict(a.statements))
    assert client.statements.path_key == search_path_key(a)
    client.data_received(query("SET search_path TO tenant_b"))
    server.transport.take()
    server.data_received(complete("SET") + ready())   # pgpool's replay of the startup search_path
    server.transport.take()
    server.data_received(complete("SET") + ready())
    assert client.statements.path_key == search_path_key(client.params) != search_path_key(a)


@settings(max_examples=max(100, settings.default.max_examples // 2))
@given(scripts=st.lists(client_script(), min_size=2, max_size=3),
       order=st.lists(st.integers(0, 5), min_size=1, max_size=12),
       n_servers=st.integers(1, 2), max_prepared=st.integers(1, 4),
       path_keys=st.lists(st.sampled_from([b"", b"SET search_path TO a"]), min_size=3, max_size=3))
def test_interleaved_clients_under_different_search_paths_see_their_own_session(scripts, order, n_servers,
                                                                                 max_prepared, path_keys):
    """Clients whose equal SQL is shared, or not, by search_path: still each sees its own session."""
    assert_same(scripts, order=order, n_servers=n_servers, max_prepared=max_prepared, path_keys=path_keys)


def test_big_statement_lists_are_split_not_parsed_and_huge_ones_are_followed_by_their_tags():
    # A 14 KB statement list: split by PostgreSQL's grammar, only the DEALLOCATE statement itself parsed.
    rows = ",".join(f"({i}, 'discard me')" for i in range(800)).encode()
    big = b"INSERT INTO t VALUES " + rows + b"; DEALLOCATE ALL"
    assert scan_deallocations(big, 0, len(big)) == (True, None)
    assert scan_deallocations(big[:-16], 0, len(big) - 16) == (False, None)
    # Above the parse limit, nothing is parsed: the tracker follows the statement's CommandComplete tag.
    huge = b"INSERT INTO t VALUES " + rows * 3 + b"; DEALLOCATE ALL"
    assert scan_deallocations(huge, 0, len(huge)) == (None, None)
    a = rounds([parse("s", "select 1"), SYNC], [bind("s"), execute(), SYNC], [bind("s"), execute(), SYNC])
    b = rounds([parse("t", "select 2"), SYNC], [query("select 3; deallocate all; " + "-- discard\n" * 2000)],
               [bind("t"), execute(), SYNC])
    seen = assert_same([a, b], order=[0, 1, 1, 0, 1, 0])
    assert show(seen[1])[-2] == 'E 26000 prepared statement "t" does not exist'
    assert "E" not in "".join(x[0] for x in show(seen[0]))


@pytest.mark.parametrize("content, bound", [
    (b"EXECUTE p_1\x00\x00\x00", True),
    (b"  execute p(1)\x00\x00\x00", True),
    (b"-- why\nFETCH 10 FROM c\x00\x00\x00", True),
    (b"/* a /* nested */ still */ EXECUTE p\x00\x00\x00", True),
    (b"/* a /* unclosed */ EXECUTE p\x00\x00\x00", False),   # still inside the outer comment
    (b"SELECT 1\x00\x00\x00", False),
    (b"executed\x00\x00\x00", False),
    (b"fetch_rows()\x00\x00\x00", False),
    (b"SELECT 'EXECUTE p'\x00\x00\x00", False),
])
def test_session_bound_statements_are_recognised(content, bound):
    assert is_session_bound(content) is bound


def test_session_bound_statements_are_never_shared_between_clients():
    registry = StatementRegistry()
    a, b = ClientStatements(), ClientStatements()
    execute = b"EXECUTE p_1\x00\x00\x00"
    assert registry.intern(execute, a.key_for(execute)) is not registry.intern(execute, b.key_for(execute))
    select = b"SELECT 1\x00\x00\x00"
    assert registry.intern(select, a.key_for(select)) is registry.intern(select, b.key_for(select))


def test_a_clients_session_bound_key_is_made_once_and_only_when_needed():
    client = ClientStatements()
    select, execute = b"SELECT 1\x00\x00\x00", b"EXECUTE p_1\x00\x00\x00"
    assert client.key_for(select) == b"" and client._own_key is None, "an idle client holds no key"
    assert client.key_for(execute) == client.key_for(execute) != b""


def test_an_idle_client_holds_no_statement_dict_until_it_names_one():
    client = ClientStatements()
    assert client.count() == 0 and client._names is None
    registry = StatementRegistry()
    client.names[b"s1"] = registry.intern(b"SELECT 1\x00\x00\x00")
    assert client.count() == 1 and client._names == {b"s1": registry.intern(b"SELECT 1\x00\x00\x00")}


@given(st.binary(max_size=64).map(lambda junk: b"/*" * 200 + junk))
def test_session_bound_scan_never_fails_on_comment_soup(content):
    assert is_session_bound(content) in (True, False)
