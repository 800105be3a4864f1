"""pgpool.prepared against a real PostgreSQL: through the tracker, a client sees what its own session shows.

A harness opens raw protocol sessions to the throwaway Postgres and runs scripted
client message sequences two ways: (a) each client directly on its own session, and
(b) all clients interleaved over one or two server sessions through `ServerStatements`,
wired the way client.py / server.py wire it (MessageScanner with the tracker's watch
tables on both sides, made-up replies written to the client, release only on
ReadyForQuery 'I' with no extended message since Sync). The reply sequences each client
sees must be identical: every message byte for byte, except that ErrorResponses are
compared by SQLSTATE and message text.
"""

from __future__ import annotations

import random
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgpool import auth
from pgpool.prepared import WATCH_CLIENT, WATCH_SERVER, ClientStatements, ServerStatements, StatementRegistry
from pgpool.protocol import messages as m
from pgpool.protocol.errors import parse_error_fields
from pgpool.protocol.framing import MessageScanner
from pgpool.protocol.scram import ScramClient
from tests.frontend import COPY_DONE, FLUSH, SYNC, bind, close, copy_data, describe, execute, parse, query, split_messages

DATABASE = "prepared_tracker"

# ---- frontend messages ---------------------------------------------------------------------------


def comparable(message: bytes) -> object:
    if message[:1] == b"E":
        fields = parse_error_fields(message[5:])
        return ("E", fields.get("C"), fields.get("M"))
    return message


# ---- a raw session to the real server --------------------------------------------------------------

class RawSession:
    """A logged-in protocol-3 session on a blocking socket."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = b""

    @classmethod
    def open(cls, postgres) -> "RawSession":
        socket_dir = getattr(postgres, "socket_dir", None)
        if socket_dir is not None:
            # The throwaway cluster trusts its unix socket.
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(Path(socket_dir) / f".s.PGSQL.{postgres.port}"))
        else:
            sock = socket.create_connection((postgres.host, postgres.port))
        sock.settimeout(15)
        session = cls(sock)
        session.login(postgres.superuser, postgres.password or "")
        return session

    def login(self, user: str, password: str) -> None:
        self.sock.sendall(m.startup_message({"user": user, "database": DATABASE}))
        scram = None
        while True:
            message = self.read_message()
            t, body = message[:1], message[5:]
            if t == b"R":
                code, data = m.parse_authentication(body)
                if code == 10:
                    scram = ScramClient(password)
                    self.sock.sendall(m.sasl_initial_response("SCRAM-SHA-256", scram.client_first()))
                elif code == 11:
                    self.sock.sendall(m.sasl_response(scram.handle_server_first(data)))
                elif code == 12:
                    scram.handle_server_final(data)
                elif code == 5:
                    self.sock.sendall(m.password_message(auth.md5_response(password, user, data)))
                elif code == 3:
                    self.sock.sendall(m.password_message(password))
            elif t == b"E":
                raise AssertionError(f"login failed: {parse_error_fields(body)}")
            elif t == b"Z":
                return

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise AssertionError("server closed the session")
        return data

    def read_message(self) -> bytes:
        while True:
            if len(self.buffer) >= 5:
                length = struct.unpack_from("!I", self.buffer, 1)[0]
                if len(self.buffer) >= 1 + length:
                    message, self.buffer = self.buffer[:1 + length], self.buffer[1 + length:]
                    return message
            self.buffer += self.recv()

    def close(self) -> None:
        try:
            self.sock.sendall(m.TERMINATE)
        finally:
            self.sock.close()


# ---- scripts -------------------------------------------------------------------------------------

@dataclass
class Round:
    """Messages sent back to back, then replies read until `until` says the round is answered."""
    messages: list[bytes]
    until: bytes = b""      # reply types that end a round without Sync (Flush rounds, COPY start)

    def done(self, replies: list[bytes]) -> bool:
        if self.until:
            return any(r[:1] in self.until for r in replies)
        owed = sum(1 for x in self.messages if x[:1] in (b"S", b"Q"))
        return sum(1 for r in replies if r[:1] == b"Z") >= owed

    @property
    def releases(self) -> bool:
        return not self.until


def rounds(*groups) -> list[Round]:
    return [g if isinstance(g, Round) else Round(list(g)) for g in groups]


def run_direct(postgres, script: list[Round]) -> list[bytes]:
    session = RawSession.open(postgres)
    seen: list[bytes] = []
    try:
        for r in script:
            session.send(b"".join(r.messages))
            replies: list[bytes] = []
            while not r.done(replies):
                replies.append(session.read_message())
            seen.extend(replies)
    finally:
        session.close()
    return seen


@dataclass
class Server:
    session: RawSession
    tracker: ServerStatements
    scanner: MessageScanner = None  # type: ignore[assignment]
    client: int | None = None
    status: bytes = b"I"


@dataclass
class Client:
    names: ClientStatements = field(default_factory=ClientStatements)
    scanner: MessageScanner = None  # type: ignore[assignment]
    server: Server | None = None
    seen: list[bytes] = field(default_factory=list)


def run_pooled(postgres, scripts: list[list[Round]], n_servers: int, max_prepared: int,
               order: list[int]) -> list[list[bytes]]:
    registry = StatementRegistry()
    servers = []
    for _ in range(n_servers):
        server = Server(RawSession.open(postgres), ServerStatements(registry, max_prepared))
        server.scanner = MessageScanner(WATCH_SERVER, server.tracker.on_server_message, max_message=1 << 30,
                                        peer="server")
        servers.append(server)
    clients = [Client() for _ in scripts]
    for c in clients:
        c.scanner = MessageScanner(WATCH_CLIENT, lambda *message, c=c: c.server.tracker.on_client_message(*message),
                                   max_message=1 << 30)
    positions = [0] * len(scripts)
    pending = [i for i, s in enumerate(scripts) if s]
    step = 0
    try:
        while pending:
            # A client holding a server (transaction, Flush round) may always go on; others need a free one.
            free = [s for s in servers if s.client is None]
            able = [i for i in pending if clients[i].server is not None or free]
            index = able[order[step % len(order)] % len(able)]
            step += 1
            run_round(clients[index], index, scripts[index][positions[index]], free)
            positions[index] += 1
            if positions[index] == len(scripts[index]):
                pending.remove(index)
        for server in servers:
            if server.client is None:
                check_server_statements(server)
    finally:
        for s in servers:
            s.session.close()
    return [c.seen for c in clients]


def check_server_statements(server: Server) -> None:
    """What the tracker believes is prepared on the server is what the server has (retired ones closed)."""
    checker = Client()
    checker.scanner = MessageScanner(WATCH_CLIENT, server.tracker.on_client_message, max_message=1 << 30)
    run_round(checker, -1, Round([parse("", "SELECT name FROM pg_prepared_statements ORDER BY name"), bind(""),
                                  execute(), SYNC]), [server])
    on_server = sorted(row[11:] for row in checker.seen if row[:1] == b"D")
    assert on_server == sorted(sst.name for sst in server.tracker.cache.values())
    assert len(on_server) <= server.tracker.max_prepared_statements


def run_round(client: Client, index: int, r: Round, free: list[Server]) -> None:
    server = client.server
    if server is None:
        server = free[0]
        server.client = index
        client.server = server
        server.tracker.link(client.names)
    data = b"".join(r.messages)
    # The client's bytes go through the scanner in small pieces, as TCP may deliver them.
    replies: list[bytes] = []
    pending_out = b""
    for i in range(0, len(data), 11):
        to_server = client.scanner.feed(data[i:i + 11])
        pending_out += to_server
        early = server.tracker.take_client_output()
        if early:
            replies.extend(split_messages(early))
    server.session.send(pending_out)
    stream = b""
    while not r.done(replies):
        stream += server.scanner.feed(server.session.recv())
        complete = split_messages_prefix(stream)
        replies.extend(complete[0])
        stream = complete[1]
    assert not stream
    for reply in replies:
        if reply[:1] == b"Z":
            server.status = reply[5:6]
    client.seen.extend(replies)
    if r.releases and server.tracker.releasable:   # the one release rule (protocol/link.py)
        assert server.status == b"I"
        assert server.tracker.unlink()
        server.client = None
        client.server = None


def split_messages_prefix(data: bytes) -> tuple[list[bytes], bytes]:
    out = []
    pos = 0
    while len(data) - pos >= 5:
        length = struct.unpack_from("!I", data, pos + 1)[0]
        if len(data) - pos < 1 + length:
            break
        out.append(data[pos:pos + 1 + length])
        pos += 1 + length
    return out, data[pos:]


def assert_same(postgres, scripts: list[list[Round]], *, n_servers: int = 1, max_prepared: int = 100,
                orders: int = 4) -> list[list[bytes]]:
    direct = [run_direct(postgres, s) for s in scripts]
    rng = random.Random(len(scripts) * 1000 + n_servers * 10 + max_prepared)
    schedules = [[0], [1, 0]] + [[rng.randrange(100) for _ in range(20)] for _ in range(orders - 2)]
    pooled = None
    for order in schedules:
        pooled = run_pooled(postgres, scripts, n_servers, max_prepared, order)
        for c in range(len(scripts)):
            assert [comparable(x) for x in pooled[c]] == [comparable(x) for x in direct[c]], \
                f"client {c}, servers {n_servers}, max_prepared {max_prepared}, schedule {order}"
    return pooled  # type: ignore[return-value]


def types(replies: list[bytes]) -> str:
    return "".join(r[:1].decode() for r in replies)


# ---- fixtures --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pg(postgres):
    if not postgres.run_sql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"):
        postgres.run_sql(f"CREATE DATABASE {DATABASE};")
    postgres.run_sql("DROP TABLE IF EXISTS items; CREATE TABLE items (id int PRIMARY KEY, label text);"
                     "INSERT INTO items VALUES (1, 'one'), (2, 'two'), (3, 'three');", dbname=DATABASE)
    return postgres


BOTH = pytest.mark.parametrize("n_servers", [1, 2])


# ---- scenarios -------------------------------------------------------------------------------------

@BOTH
def test_same_name_different_sql_from_two_clients(pg, n_servers):
    a = rounds([parse("s1", "SELECT label FROM items WHERE id = $1", (23,)), bind("s1", ("1",)), execute(), SYNC],
               [bind("s1", ("2",)), execute(), SYNC])
    b = rounds([parse("s1", "SELECT id * 10 FROM items WHERE id = $1", (23,)), bind("s1", ("3",)), execute(), SYNC],
               [bind("s1", ("1",)), execute(), SYNC])
    seen = assert_same(pg, [a, b], n_servers=n_servers)
    assert types(seen[0]) == "12DCZ2DCZ"
    assert seen[0][2].endswith(b"one") and seen[1][2].endswith(b"30")


@BOTH
def test_asyncpg_prepare_with_describe_and_flush(pg, n_servers):
    prepare = Round([parse("__asyncpg_stmt_1__", "SELECT label FROM items WHERE id = $1", (23,)),
                     describe("S", "__asyncpg_stmt_1__"), FLUSH], until=b"TnE")
    a = [prepare, Round([bind("__asyncpg_stmt_1__", ("1",)), execute(), SYNC]),
         Round([bind("__asyncpg_stmt_1__", ("2",)), execute(), SYNC])]
    other = Round([parse("__asyncpg_stmt_1__", "SELECT count(*) FROM items"), describe("S", "__asyncpg_stmt_1__"),
                   FLUSH], until=b"TnE")
    b = [other, Round([bind("__asyncpg_stmt_1__"), execute(), SYNC])]
    same_sql = [prepare, Round([bind("__asyncpg_stmt_1__", ("3",)), execute(), SYNC])]
    seen = assert_same(pg, [a, b, same_sql], n_servers=n_servers)
    assert types(seen[0][:3]) == "1tT"


def test_asyncpg_prepare_error_without_sync(pg):
    a = [Round([parse("__asyncpg_stmt_9__", "SELECT nope FROM items"), describe("S", "__asyncpg_stmt_9__"), FLUSH],
               until=b"TnE"),
         # The server skips everything until Sync after the error: no replies are owed for these.
         Round([parse("y", "SELECT 5"), bind("y"), execute(), close("S", "y"), SYNC]),
         Round([bind("y"), execute(), SYNC]),
         Round([parse("__asyncpg_stmt_9__", "SELECT id FROM items"), describe("S", "__asyncpg_stmt_9__"), FLUSH],
               until=b"TnE"),
         Round([bind("__asyncpg_stmt_9__"), execute(), SYNC])]
    seen = assert_same(pg, [a])
    assert comparable(seen[0][0])[1] == "42703"


@BOTH
def test_close_then_reparse(pg, n_servers):
    a = rounds([parse("s", "SELECT 1"), bind("s"), execute(), SYNC],
               [close("S", "s"), SYNC],
               [bind("s"), execute(), SYNC],
               [parse("s", "SELECT 2"), bind("s"), execute(), SYNC],
               [close("S", "s"), parse("s", "SELECT 3"), bind("s"), execute(), SYNC])
    b = rounds([parse("s", "SELECT 1"), SYNC], [bind("s"), execute(), SYNC])
    assert_same(pg, [a, b], n_servers=n_servers)


@BOTH
def test_parse_error_inside_a_pipeline(pg, n_servers):
    a = rounds([parse("ok", "SELECT id FROM items ORDER BY id"), parse("broken", "SELEC 1"), bind("ok"), execute(),
                parse("later", "SELECT 2"), SYNC],
               [bind("broken"), execute(), SYNC],
               [bind("later"), execute(), SYNC],
               [bind("ok"), execute(), SYNC])
    b = rounds([parse("later", "SELECT 2"), bind("later"), execute(), SYNC])
    seen = assert_same(pg, [a, b], n_servers=n_servers)
    assert [comparable(x)[1] if x[:1] == b"E" else x[:1] for x in seen[0][:3]] == [b"1", "42601", b"Z"]


@BOTH
def test_reused_and_unknown_names_get_postgres_errors(pg, n_servers):
    a = rounds([parse("s", "SELECT 1"), SYNC],
               [parse("s", "SELECT 2"), bind("s"), execute(), SYNC],
               [parse("s", "SELEC 2"), SYNC],
               [bind("nope"), execute(), SYNC],
               [describe("S", "nope"), SYNC],
               [close("S", "nope"), SYNC],
               [bind("PGPOOL_1"), execute(), SYNC],
               [bind("s", ("1",)), execute(), SYNC],
               # Skipped after the error: the Close must not take "s" away, nor the Parse replace it.
               [bind("nope"), close("S", "s"), parse("s", "SELECT 9"), SYNC],
               [bind("s"), execute(), SYNC])
    b = rounds([parse("x", "SELECT 2"), SYNC], [parse("s", "SELECT 1"), SYNC])
    seen = assert_same(pg, [a, b], n_servers=n_servers)
    errors = [comparable(x)[1] for x in seen[0] if x[:1] == b"E"]
    assert errors == ["42P05", "42601", "26000", "26000", "26000", "08P01", "26000"]
    assert seen[0][-3].endswith(b"\x011")


@BOTH
def test_transactions_and_failed_transactions(pg, n_servers):
    a = rounds([query("BEGIN")],
               [parse("q", "SELECT label FROM items WHERE id = $1", (23,)), bind("q", ("1",)), execute(), SYNC],
               [query("SELECT 1/0")],
               [parse("fresh", "SELECT count(*) FROM items"), SYNC],
               [bind("q", ("2",)), execute(), SYNC],
               [describe("S", "q"), SYNC],
               [close("S", "q"), SYNC],
               [query("ROLLBACK")],
               [bind("q", ("2",)), execute(), SYNC],
               [parse("fresh", "SELECT count(*) FROM items"), bind("fresh"), execute(), SYNC])
    # b prepares "fresh"'s SQL first, so a's Parse of it in the failed transaction finds it cached.
    b = rounds([parse("c", "SELECT count(*) FROM items"), bind("c"), execute(), SYNC])
    assert_same(pg, [b, a], n_servers=n_servers)


def test_reused_name_in_a_failed_transaction_on_a_server_lacking_it(pg):
    a = rounds([parse("s", "SELECT 1"), SYNC], [query("BEGIN")], [parse("t", "SELECT 2"), SYNC],
               [query("SELECT 1/0")], [parse("s", "SELEC 1"), SYNC], [parse("s", "SELECT 5"), SYNC],
               [parse("s", "ROLLBACK"), SYNC], [query("ROLLBACK")], [bind("s"), execute(), SYNC])
    seen = assert_same(pg, [a], max_prepared=1)
    assert [comparable(x)[1] for x in seen[0] if x[:1] == b"E"] == ["22012", "42601", "25P02", "42P05"]


@BOTH
def test_deallocate_and_discard(pg, n_servers):
    a = rounds([parse("s", "SELECT 1"), parse("t", "SELECT 2"), SYNC],
               [query("DEALLOCATE s")],
               [bind("s"), execute(), SYNC],
               [bind("t"), execute(), SYNC],
               [query("DEALLOCATE s")],
               [query("DEALLOCATE ALL")],
               [bind("t"), execute(), SYNC],
               [parse("s", "SELECT 3"), SYNC],
               [query("BEGIN")], [query("DISCARD ALL")], [query("ROLLBACK")],
               [bind("s"), execute(), SYNC],
               [query("DISCARD ALL")],
               [bind("s"), execute(), SYNC],
               [parse("u", "SELECT 4"), SYNC],
               [parse("", "DEALLOCATE ALL"), bind(""), execute(), SYNC],
               [bind("u"), execute(), SYNC])
    b = rounds([parse("s", "SELECT 1"), SYNC], [bind("s"), execute(), SYNC], [parse("t", "SELECT 2"), SYNC])
    assert_same(pg, [a, b], n_servers=n_servers)


@pytest.mark.parametrize("max_prepared", [1, 2])
@BOTH
def test_lru_eviction(pg, n_servers, max_prepared):
    a = rounds(*[[parse(f"s{i}", f"SELECT {i}"), bind(f"s{i}"), execute(), SYNC] for i in range(4)],
               *[[bind(f"s{i}"), execute(), SYNC] for i in (0, 3, 1, 2)],
               [bind("s0"), execute(), bind("s1"), execute(), bind("s2"), execute(), bind("s3"), execute(), SYNC])
    b = rounds(*[[parse(f"t{i}", f"SELECT {i}"), bind(f"t{i}"), execute(), SYNC] for i in (3, 2, 1, 0)])
    assert_same(pg, [a, b], n_servers=n_servers, max_prepared=max_prepared)


@BOTH
def test_named_portal_survives_evictions_in_its_transaction(pg, n_servers):
    a = rounds([query("BEGIN")],
               [parse("a", "SELECT id FROM items ORDER BY id"), bind("a", portal="p"), execute("p", 1), SYNC],
               [parse("b", "SELECT 2"), bind("b"), execute(), SYNC],
               [parse("c", "SELECT 3"), bind("c"), execute(), SYNC],
               [execute("p", 1), SYNC],
               [query("COMMIT")])
    b = rounds([parse("x", "SELECT 1"), SYNC])
    assert_same(pg, [a, b], n_servers=n_servers, max_prepared=2)


def test_pipelined_segments(pg):
    a = rounds([parse("s", "SELECT label FROM items WHERE id = $1", (23,)), bind("s", ("1",)), execute(), SYNC,
                bind("s", ("2",)), execute(), SYNC,
                bind("s", ("9",)), execute(), bind("s", ("x",)), execute(), SYNC,
                bind("s", ("3",)), execute(), SYNC])
    b = rounds([parse("t", "SELECT label FROM items WHERE id = $1", (23,)), SYNC],
               [bind("t", ("1",)), execute(), SYNC, bind("t", ("3",)), execute(), SYNC])
    assert_same(pg, [b, a], n_servers=2)


@BOTH
def test_copy_in_through_the_extended_protocol(pg, n_servers):
    pg.run_sql("DROP TABLE IF EXISTS copied; CREATE TABLE copied (v text);", dbname=DATABASE)
    a = [Round([parse("cp", "COPY copied FROM STDIN"), bind("cp"), execute(), SYNC], until=b"G"),
         Round([copy_data("a\n"), copy_data("b\n"), COPY_DONE, SYNC]),
         Round([parse("n", "SELECT count(*) FROM copied"), bind("n"), execute(), SYNC]),
         Round([query("TRUNCATE copied")])]
    assert_same(pg, [a, rounds([parse("n", "SELECT 1"), SYNC])], n_servers=n_servers)


def test_unnamed_statements_and_simple_queries_pass_through(pg):
    a = rounds([parse("", "SELECT label FROM items WHERE id = $1", (23,)), bind("", ("2",)), describe("P", ""),
                execute(), SYNC],
               [query("SELECT id FROM items ORDER BY id; SELECT 'x'")],
               [parse("", "SELEC"), bind(""), execute(), SYNC],
               [close("S", ""), close("P", ""), SYNC])
    assert_same(pg, [a, a], n_servers=1)


# ---- generated scripts against the real server -----------------------------------------------------

REAL_NAMES = ["s1", "s2", "PGPOOL_1"]
REAL_SQLS = ["SELECT 1", "SELECT label FROM items WHERE id = 2", "SELECT $1::int", "SELEC 1", "SELECT 1/0",
             "BEGIN", "ROLLBACK"]


@st.composite
def real_round(draw) -> Round:
    messages: list[bytes] = []
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["prepare", "prepare_describe", "run", "run_unnamed", "close"]))
        name = draw(st.sampled_from(REAL_NAMES))
        sql = draw(st.sampled_from(REAL_SQLS))
        params = ("5",) if draw(st.booleans()) else ()
        if op == "prepare":
            messages.append(parse(name, sql))
        elif op == "prepare_describe":
            messages += [parse(name, sql), describe("S", name)]
        elif op == "run":
            messages += [bind(name, params), execute()]
        elif op == "run_unnamed":
            messages += [parse("", sql), bind("", params), execute()]
        else:
            messages.append(close("S", name))
    return Round(messages + [SYNC])


real_simple = st.sampled_from(["BEGIN", "COMMIT", "ROLLBACK", "SELECT 1", "SELECT 1/0", "DEALLOCATE ALL",
                               "DISCARD ALL", "DEALLOCATE s1"]).map(lambda sql: Round([query(sql)]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scripts=st.lists(st.lists(st.one_of(real_round(), real_round(), real_simple), min_size=1, max_size=5)
                        .map(lambda s: s + [Round([query("ROLLBACK")])]), min_size=2, max_size=3),
       n_servers=st.integers(1, 2), max_prepared=st.integers(1, 3))
def test_generated_scripts_match_a_plain_session(pg, scripts, n_servers, max_prepared):
    assert_same(pg, scripts, n_servers=n_servers, max_prepared=max_prepared, orders=2)
