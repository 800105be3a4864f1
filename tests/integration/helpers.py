"""Small helpers shared by the integration tests: direct superuser queries and raw sockets."""

from __future__ import annotations

import asyncio
import struct

import asyncpg

from pgpool.auth import md5_response
from pgpool.protocol import messages as m
from pgpool.protocol.errors import parse_error_fields


async def server_connections(postgres, user: str = "app") -> int:
    """Client backends Postgres has for `user` (what pgpool opened), read from pg_stat_activity."""
    conn = await asyncpg.connect(postgres.dsn())
    try:
        return await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND usename = $1", user)
    finally:
        await conn.close()


async def sessions_in_state(postgres, state: str, user: str = "app") -> int:
    conn = await asyncpg.connect(postgres.dsn())
    try:
        return await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND state = $2", user, state)
    finally:
        await conn.close()


def connect(proc, user: str = "app", password: str | None = None, dbname: str = "app", **kw):
    return asyncpg.connect(proc.dsn(user=user, password=password, dbname=dbname), **kw)


class RawClient:
    """A bare socket speaking just enough protocol to send what real drivers never would."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> "RawClient":
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def read_message(self, timeout: float = 10.0) -> tuple[bytes, bytes]:
        """(type, body); raises asyncio.IncompleteReadError at EOF."""
        header = await asyncio.wait_for(self.reader.readexactly(5), timeout)
        length = struct.unpack("!I", header[1:])[0]
        body = await asyncio.wait_for(self.reader.readexactly(length - 4), timeout)
        return header[:1], body

    async def read_until(self, msg_type: bytes, timeout: float = 10.0) -> list[tuple[bytes, bytes]]:
        seen = []
        while True:
            t, body = await self.read_message(timeout)
            seen.append((t, body))
            if t == msg_type:
                return seen

    async def read_error(self, timeout: float = 10.0) -> dict[str, str]:
        """The next ErrorResponse's fields (skipping other messages)."""
        while True:
            t, body = await self.read_message(timeout)
            if t == b"E":
                return parse_error_fields(body)

    async def login_md5(self, user: str, password: str, database: str = "app",
                        **startup: str) -> tuple[int, int] | None:
        """Log in (extra startup parameters as keywords); the BackendKeyData (pid, key) if sent."""
        self.send(m.startup_message({"user": user, "database": database, **startup}))
        t, body = await self.read_message()
        assert t == b"R", (t, body)
        code, salt = m.parse_authentication(body)
        assert code == 5, code
        self.send(m.password_message(md5_response(password, user, salt)))
        replies = await self.read_until(b"Z")
        return next((m.parse_backend_key_data(body) for t, body in replies if t == b"K"), None)

    async def at_eof(self, timeout: float = 10.0) -> bool:
        try:
            data = await asyncio.wait_for(self.reader.read(), timeout)
        except ConnectionResetError:
            return True
        return True if data is not None else False

    def close(self) -> None:
        self.writer.close()
