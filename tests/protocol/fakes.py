"""Fake transports and a socket-free data plane for driving ClientConnection / ServerConnection.

Owns: `FakeTransport` (records writes, pause/resume of reading, close), `Plane` (a real App,
Pool, logged-in clients and data-plane servers wired without sockets or an event loop),
and byte builders for frontend and backend messages written from the protocol docs.
Must not reach into pgpool beyond what the connection classes' own login code sets up.
"""

from __future__ import annotations

import struct
from typing import Any, Callable, Iterable

from pgpool.app import App
from pgpool.client import ClientConnection
from pgpool.config import load_settings
from pgpool.params import SessionParams
from pgpool.pool import ClientState, Pool, ServerState
from pgpool.server import ServerConnection

# Reported parameters of the fake PostgreSQL, as a 15.x server sends them at login.
SERVER_PARAMS = {
    "application_name": "", "client_encoding": "UTF8", "DateStyle": "ISO, MDY", "integer_datetimes": "on",
    "IntervalStyle": "postgres", "is_superuser": "off", "server_encoding": "UTF8", "server_version": "15.4",
    "session_authorization": "app", "standard_conforming_strings": "on", "TimeZone": "UTC",
}


# ---- message bytes (PostgreSQL docs, "Message Formats") ---------------------------------------

def msg(msg_type: bytes, body: bytes = b"") -> bytes:
    return msg_type + struct.pack("!I", len(body) + 4) + body


def cstr(text: str) -> bytes:
    return text.encode() + b"\x00"


# Frontend
def query(sql: str) -> bytes:
    return msg(b"Q", cstr(sql))


def parse(sql: str, name: str = "") -> bytes:
    return msg(b"P", cstr(name) + cstr(sql) + struct.pack("!h", 0))


def bind(portal: str = "", statement: str = "") -> bytes:
    return msg(b"B", cstr(portal) + cstr(statement) + struct.pack("!hhh", 0, 0, 0))


def describe(kind: bytes = b"S", name: str = "") -> bytes:
    return msg(b"D", kind + cstr(name))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return msg(b"E", cstr(portal) + struct.pack("!I", max_rows))


SYNC = msg(b"S")
FLUSH = msg(b"H")
TERMINATE = msg(b"X")
COPY_DONE = msg(b"c")


def copy_data(data: bytes) -> bytes:
    return msg(b"d", data)


def copy_fail(reason: str) -> bytes:
    return msg(b"f", cstr(reason))


def extended(sql: str) -> bytes:
    """Parse / Bind / Describe portal / Execute / Sync, as libpq's PQexecParams sends them."""
    return parse(sql) + bind() + describe(b"P") + execute() + SYNC


# Backend
def ready(status: bytes = b"I") -> bytes:
    return msg(b"Z", status)


def complete(tag: str) -> bytes:
    return msg(b"C", cstr(tag))


def row_description(*names: str) -> bytes:
    body = struct.pack("!h", len(names))
    for name in names:
        body += cstr(name) + struct.pack("!IhIhih", 0, 0, 25, -1, -1, 0)
    return msg(b"T", body)


def data_row(*values: bytes | None) -> bytes:
    body = struct.pack("!h", len(values))
    for value in values:
        body += struct.pack("!i", -1) if value is None else struct.pack("!i", len(value)) + value
    return msg(b"D", body)


def error(sqlstate: str = "42601", message: str = "syntax error", severity: str = "ERROR") -> bytes:
    return msg(b"E", b"S" + cstr(severity) + b"V" + cstr(severity) + b"C" + cstr(sqlstate) + b"M" + cstr(message) + b"\x00")


def notice(message: str = "hello") -> bytes:
    return msg(b"N", b"SNOTICE\x00VNOTICE\x00C00000\x00M" + cstr(message) + b"\x00")


def notification(channel: str = "ch", payload: str = "x", pid: int = 4242) -> bytes:
    return msg(b"A", struct.pack("!I", pid) + cstr(channel) + cstr(payload))


def parameter_status(name: str, value: str) -> bytes:
    return msg(b"S", cstr(name) + cstr(value))


def copy_in_response(columns: int = 1) -> bytes:
    return msg(b"G", struct.pack("!bh", 0, columns) + struct.pack("!h", 0) * columns)


def copy_out_response(columns: int = 1) -> bytes:
    return msg(b"H", struct.pack("!bh", 0, columns) + struct.pack("!h", 0) * columns)


PARSE_COMPLETE = msg(b"1")
BIND_COMPLETE = msg(b"2")
NO_DATA = msg(b"n")


def select_reply(*rows: bytes, status: bytes = b"I") -> bytes:
    """A simple Query's answer: RowDescription, DataRows, CommandComplete, ReadyForQuery."""
    return row_description("v") + b"".join(data_row(r) for r in rows) + complete(f"SELECT {len(rows)}") + ready(status)


def extended_reply(*rows: bytes, status: bytes = b"I") -> bytes:
    """The answer to `extended()`: ParseComplete, BindComplete, RowDescription, rows, tag, ReadyForQuery."""
    return (PARSE_COMPLETE + BIND_COMPLETE + row_description("v") + b"".join(data_row(r) for r in rows)
            + complete(f"SELECT {len(rows)}") + ready(status))


def split_messages(stream: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(stream):
        (length,) = struct.unpack_from("!I", stream, pos + 1)
        out.append(stream[pos:pos + 1 + length])
        pos += 1 + length
    assert pos == len(stream)
    return out


# ---- transports --------------------------------------------------------------------------------

class FakeTransport:
    """An asyncio.Transport stand-in that records what the protocol object does to it."""

    def __init__(self, name: str, peer: tuple[str, int] = ("127.0.0.1", 40000)):
        self.name = name
        self.peer = peer
        self.writes: list[bytes] = []
        self.calls: list[str] = []          # "pause_reading" / "resume_reading" / "close", in order
        self.reading = True
        self.closed = False
        self.writes_after_close: list[bytes] = []
        self.write_limits: tuple[int, int] | None = None

    # what the connection classes call
    def write(self, data: bytes) -> None:
        # A view of a reused buffer could be queued uncopied by uvloop: only immutable bytes.
        assert type(data) is bytes, f"{self.name}: write() got {type(data).__name__}"
        if self.closed:
            self.writes_after_close.append(data)
        else:
            self.writes.append(data)

    def pause_reading(self) -> None:
        self.calls.append("pause_reading")
        self.reading = False

    def resume_reading(self) -> None:
        self.calls.append("resume_reading")
        self.reading = True

    def close(self) -> None:
        self.calls.append("close")
        self.closed = True

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self.closed

    def is_reading(self) -> bool:
        return self.reading

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.write_limits = (high, low)   # type: ignore[assignment]

    # what tests read
    @property
    def written(self) -> bytes:
        return b"".join(self.writes)

    def take(self) -> bytes:
        data = self.written
        self.writes.clear()
        return data

    def count(self, call: str) -> int:
        return self.calls.count(call)


class FakeLoop:
    """Collects call_soon callbacks so a test runs them when it chooses."""

    def __init__(self) -> None:
        self.soon: list[tuple[Callable, tuple]] = []

    def call_soon(self, callback: Callable, *args: Any) -> None:
        self.soon.append((callback, args))

    def run_soon(self) -> None:
        while self.soon:
            callback, args = self.soon.pop(0)
            callback(*args)


class FakeApp(App):
    """The real App with settings from load_settings(None) and cancel requests recorded, not sent."""

    def __init__(self, **overrides: Any):
        sets = {"databases.appdb": "host=127.0.0.1 port=5432 dbname=appdb"}
        sets.update({key: str(value) for key, value in overrides.items()})
        super().__init__(load_settings(None, sets, environ={}))
        self.loop = FakeLoop()   # type: ignore[assignment]
        self.cancels: list[tuple[str, int, int, int]] = []

    def send_cancel(self, host: str, port: int, backend_pid: int, backend_key: int) -> None:
        self.cancels.append((host, port, backend_pid, backend_key))


# ---- the data plane without sockets ------------------------------------------------------------

class Plane:
    """One App and one Pool with logged-in clients and idle data-plane servers, no event loop.

    `releases` records every Pool.release_server call as (server, bytes the server's client
    had been sent by then), so a test can check a server went back once, and after what.
    """

    def __init__(self, *, servers: int = 1, **settings: Any):
        self.app = FakeApp(**settings)
        self.pool: Pool = self.app.pool_directory.get_pool("appdb", "app", None)
        self.pool.server_params = dict(SERVER_PARAMS)
        self.pool.reported_names = frozenset(SERVER_PARAMS)
        self.releases: list[tuple[ServerConnection, int]] = []
        original = self.pool.release_server

        def release_server(server: ServerConnection) -> None:
            client = server.client
            self.releases.append((server, len(client.transport.written) if client is not None else -1))
            original(server)

        self.pool.release_server = release_server   # type: ignore[method-assign]
        self.servers = [self.add_server() for _ in range(servers)]

    def add_server(self, pid: int = 0) -> ServerConnection:
        """A server past its login: reported parameters known, idle in the pool."""
        server = ServerConnection(self.pool)
        server.connection_made(FakeTransport(f"S-{server.id}", ("127.0.0.1", 5432)))
        server.params.reported.update(SERVER_PARAMS)
        server.backend_pid, server.backend_key = pid or 1000 + server.id, 77
        self.pool.set_server_state(server, ServerState.IDLE)
        return server

    def add_client(self, *, statements: dict[str, str] | None = None,
                   reported: dict[str, str] | None = None) -> ClientConnection:
        """A client as _login leaves it: session params set, then _end_login puts it on the data plane."""
        client = ClientConnection(self.app)
        client.transport = FakeTransport(f"C-{client.id}")   # type: ignore[assignment]
        self.app.client_registry.add(client)
        client.user, client.database = "app", "appdb"
        client.pool = self.pool
        client.mode = self.pool.conf.pool_mode
        client.params = SessionParams({**SERVER_PARAMS, **(reported or {})}, statements)
        client.params.remember_startup()
        client.cancel_key = self.app.cancel.register(client, self.app.settings.peer_id)
        client._end_login(admin=False)
        assert client.state == ClientState.IDLE
        return client

    def link(self, client: ClientConnection, server: ServerConnection | None = None) -> ServerConnection:
        """Hand `server` (default: the most recently idled) to `client` through Pool.link."""
        server = server or self.pool.idle[-1]
        self.pool.set_client_state(client, ClientState.WAITING)
        self.pool.link(client, server)
        assert client.server is server and server.client is client
        return server

    def released(self, server: ServerConnection) -> int:
        return sum(1 for s, _ in self.releases if s is server)


def server_of(client: ClientConnection) -> ServerConnection:
    assert client.server is not None, "client holds no server"
    return client.server


def feed(conn: Any, chunks: Iterable[bytes]) -> None:
    for chunk in chunks:
        conn.data_received(chunk)
