"""Bad input never harms another client or the process: garbage, malformed and oversized messages,
unknown types, and a client that stops reading a huge result."""

from __future__ import annotations

import asyncio
import struct

import pytest

from pgpool.protocol import messages as m
from tests.integration.helpers import RawClient, connect


async def assert_pool_healthy(proc) -> None:
    conn = await connect(proc)
    try:
        assert await conn.fetchval("SELECT 'healthy'") == "healthy"
    finally:
        await conn.close()


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",           # an HTTP probe at the Postgres port
    struct.pack("!I", 3) + b"xxxx",                   # length below the minimum
    struct.pack("!I", 1 << 30),                       # absurd startup length
    struct.pack("!II", 8, 1234),                      # unknown protocol version
    struct.pack("!I", 12) + struct.pack("!I", 196608) + b"user",   # no terminator
])
async def test_garbage_before_startup(pgpool_proc, garbage):
    proc = pgpool_proc()
    bystander = await connect(proc)
    raw = await RawClient.open(proc.port)
    raw.send(garbage)
    error = await raw.read_error()
    assert error["C"] in ("08P01", "0A000")
    assert await raw.at_eof()
    assert await bystander.fetchval("SELECT 1") == 1
    await bystander.close()
    await assert_pool_healthy(proc)


async def test_unknown_message_type_after_login(pgpool_proc):
    proc = pgpool_proc()
    bystander = await connect(proc)
    raw = await RawClient.open(proc.port)
    await raw.login_md5("app", "app")
    raw.send(b"@" + struct.pack("!I", 4))
    error = await raw.read_error()
    assert error["C"] == "08P01" and "invalid frontend message type" in error["M"]
    assert await raw.at_eof()
    assert await bystander.fetchval("SELECT 1") == 1
    await bystander.close()


async def test_invalid_length_after_login(pgpool_proc):
    proc = pgpool_proc()
    raw = await RawClient.open(proc.port)
    await raw.login_md5("app", "app")
    raw.send(b"Q" + struct.pack("!I", 2))
    error = await raw.read_error()
    assert error["C"] == "08P01"
    await assert_pool_healthy(proc)


async def test_oversized_message_refused(pgpool_proc):
    proc = pgpool_proc({"max_packet_size": 65536})
    raw = await RawClient.open(proc.port)
    await raw.login_md5("app", "app")
    raw.send(b"Q" + struct.pack("!I", 1_000_000) + b"SELECT ")   # announces 1 MB, over the limit
    error = await raw.read_error()
    assert error["C"] == "54000" and "max_packet_size" in error["M"]
    await assert_pool_healthy(proc)


async def test_truncated_message_then_disconnect(pgpool_proc, postgres):
    proc = pgpool_proc({"default_pool_size": 1})
    raw = await RawClient.open(proc.port)
    await raw.login_md5("app", "app")
    raw.send(b"Q" + struct.pack("!I", 100) + b"SELECT 1")   # promises 100 bytes, sends 8, then leaves
    await asyncio.sleep(0.1)   # let the half message reach pgpool before the close: the case under test
    raw.close()
    await assert_pool_healthy(proc)


async def test_wrong_password_message_type_during_login(pgpool_proc):
    proc = pgpool_proc()
    raw = await RawClient.open(proc.port)
    raw.send(m.startup_message({"user": "app", "database": "app"}))
    await raw.read_message()
    raw.send(m.query("SELECT 1"))          # a query instead of a password
    error = await raw.read_error()
    assert error["C"] == "08P01"
    await assert_pool_healthy(proc)


async def test_slow_reader_is_backpressured(pgpool_proc):
    """A client that stops reading a huge result: pgpool's memory stays bounded, others keep working."""
    proc = pgpool_proc({"default_pool_size": 2})
    raw = await RawClient.open(proc.port)
    await raw.login_md5("app", "app")
    rss_before = _rss_kib(proc.pid)
    raw.send(m.query("SELECT repeat('x', 1000) FROM generate_series(1, 2000000)"))   # about 2 GB of rows
    await asyncio.sleep(2.0)   # the server streams while the client reads nothing: the condition under test
    rss_after = _rss_kib(proc.pid)
    assert rss_after - rss_before < 64 * 1024, f"pgpool grew by {rss_after - rss_before} KiB"
    await assert_pool_healthy(proc)
    raw.close()
    await assert_pool_healthy(proc)


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_many_bad_clients_process_survives(pgpool_proc):
    proc = pgpool_proc()
    payloads = [b"\x00" * 64, b"\xff" * 64, struct.pack("!II", 16, 80877102) + b"\x00" * 8, b"Q" * 10]
    for _ in range(20):
        for payload in payloads:
            raw = await RawClient.open(proc.port)
            raw.send(payload)
            raw.close()
    await assert_pool_healthy(proc)
    assert proc.returncode is None
