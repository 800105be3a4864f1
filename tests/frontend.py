"""Frontend (client -> server) message builders for tests that speak the protocol by hand."""

from __future__ import annotations

import struct


def msg(msg_type: bytes, body: bytes = b"") -> bytes:
    return msg_type + struct.pack("!I", len(body) + 4) + body


def cstr(text: str) -> bytes:
    return text.encode() + b"\x00"


def parse(name: str, sql: str, types: tuple[int, ...] = ()) -> bytes:
    oids = b"".join(struct.pack("!I", t) for t in types)
    return msg(b"P", cstr(name) + cstr(sql) + struct.pack("!h", len(types)) + oids)


def bind(statement: str, params: tuple[str, ...] = (), portal: str = "") -> bytes:
    body = cstr(portal) + cstr(statement) + struct.pack("!hh", 0, len(params))
    for p in params:
        body += struct.pack("!i", len(p)) + p.encode()
    return msg(b"B", body + struct.pack("!h", 0))


def describe(kind: str, name: str) -> bytes:
    return msg(b"D", kind.encode() + cstr(name))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return msg(b"E", cstr(portal) + struct.pack("!I", max_rows))


def close(kind: str, name: str) -> bytes:
    return msg(b"C", kind.encode() + cstr(name))


def query(sql: str) -> bytes:
    return msg(b"Q", cstr(sql))


def copy_data(row: str) -> bytes:
    return msg(b"d", row.encode())


SYNC = msg(b"S")
FLUSH = msg(b"H")
COPY_DONE = msg(b"c")


def split_messages(data: bytes) -> list[bytes]:
    """A byte stream of whole messages, one message per item."""
    out = []
    pos = 0
    while pos < len(data):
        length = struct.unpack_from("!I", data, pos + 1)[0]
        out.append(data[pos:pos + 1 + length])
        pos += 1 + length
    return out
