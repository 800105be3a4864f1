"""Hostile byte streams against a live pgpool, while a healthy client keeps working.

Hypothesis generates streams (random bytes; a valid prefix such as a startup packet, a
whole login or a Query, then garbage or well-framed messages of random types) and sends
each from several connections at once, which then half-close or reset. Meanwhile one
asyncpg client with its defaults runs queries on its own thread. The healthy client must
never fail, pgpool must never die or log an internal error, every hostile connection must
be closed by pgpool once it hangs up, and pgpool's RSS and open fds must come back near
where they started.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import threading
import time

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgpool.auth import md5_response
from pgpool.protocol import messages as m
from tests.waiting import wait_until_sync

SSL_REQUEST = struct.pack("!II", 8, 80877103)
CLIENT_TYPES = b"PBDESHQFCcdfXp"


def read_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def count_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class HealthyClient:
    """asyncpg with its defaults (statement cache on) on its own thread and loop, querying until stopped."""

    def __init__(self, dsn: str):
        self.dsn = dsn
        self.ok = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        try:
            conn = await asyncpg.connect(self.dsn)
        except BaseException as error:  # noqa: BLE001 - any failure is the finding
            self.errors.append(error)
            return
        i = 0
        try:
            while not self._stop.is_set():
                i += 1
                if i % 5:
                    assert await conn.fetchval("SELECT $1::int + 1", i) == i + 1
                else:
                    async with conn.transaction():
                        assert await conn.fetchval("SELECT count(*) FROM generate_series(1, $1::int)", i) == i
                self.ok += 1
        except BaseException as error:  # noqa: BLE001
            self.errors.append(error)
        finally:
            await conn.close()

    def __enter__(self) -> "HealthyClient":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "healthy client did not stop"


# ---- hostile connections (plain blocking sockets, every read bounded) --------------------------

def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionResetError("pgpool closed the connection")
        data += chunk
    return data


def read_message(sock: socket.socket) -> tuple[bytes, bytes]:
    header = recv_exactly(sock, 5)
    return header[:1], recv_exactly(sock, struct.unpack("!I", header[1:])[0] - 4)


def login(sock: socket.socket) -> None:
    sock.sendall(m.startup_message({"user": "app", "database": "app"}))
    msg_type, body = read_message(sock)
    assert msg_type == b"R", (msg_type, body)
    code, salt = m.parse_authentication(body)
    assert code == 5
    sock.sendall(m.password_message(md5_response("app", "app", salt)))
    while read_message(sock)[0] != b"Z":
        pass


def apply_prefix(sock: socket.socket, prefix: str) -> None:
    if prefix == "startup":
        sock.sendall(m.startup_message({"user": "app", "database": "app"}))
    elif prefix == "ssl":
        sock.sendall(SSL_REQUEST)
        assert recv_exactly(sock, 1) in (b"N", b"S")
    elif prefix in ("login", "login_query", "login_parse"):
        login(sock)
        if prefix == "login_query":
            sock.sendall(m.query("SELECT 1"))
        elif prefix == "login_parse":
            sock.sendall(m.message(b"P", b"s1\x00SELECT $1\x00\x00\x00") + m.message(b"B", b"\x00s1\x00"))


def wait_for_close(sock: socket.socket, seconds: float) -> None:
    """Read until pgpool closes the connection; fail if it keeps a hung-up client open."""
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "pgpool kept a half-closed hostile connection open"
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return
        except (ConnectionResetError, BrokenPipeError):
            return
        except socket.timeout:
            raise AssertionError("pgpool kept a half-closed hostile connection open") from None


def run_hostile(port: int, streams: list[tuple[str, bytes, str]]) -> None:
    socks = []
    try:
        for prefix, garbage, ending in streams:
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            socks.append((sock, ending))
            try:
                apply_prefix(sock, prefix)
                sock.sendall(garbage)
            except (ConnectionResetError, BrokenPipeError):
                continue   # pgpool refused early: fine
        for sock, ending in socks:
            if ending == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                try:
                    sock.shutdown(socket.SHUT_WR)
                    wait_for_close(sock, 10)
                except OSError:
                    pass   # already reset by pgpool
    finally:
        for sock, _ in socks:
            sock.close()


def framed(messages: list[tuple[int, bytes]]) -> bytes:
    return b"".join(bytes((t,)) + struct.pack("!I", len(body) + 4) + body for t, body in messages)


garbage = st.one_of(
    st.binary(max_size=300),
    st.lists(st.tuples(st.one_of(st.sampled_from(CLIENT_TYPES), st.integers(0, 255)), st.binary(max_size=40)),
             max_size=8).map(framed),
    st.tuples(st.lists(st.tuples(st.sampled_from(CLIENT_TYPES), st.binary(max_size=40)), max_size=4).map(framed),
              st.binary(max_size=60)).map(lambda pair: pair[0] + pair[1]),
)
stream = st.tuples(st.sampled_from(["none", "startup", "ssl", "login", "login_query", "login_parse"]), garbage,
                   st.sampled_from(["half_close", "reset"]))


def test_hostile_bytes_do_not_harm_a_healthy_client(pgpool_proc):
    proc = pgpool_proc({"default_pool_size": 2, "pool_mode": "transaction", "max_client_conn": 200})
    pid = proc.pid
    with HealthyClient(proc.dsn()) as healthy:
        wait_until_sync(lambda: healthy.ok > 0 or healthy.errors, timeout=20, message="healthy client started")
        run_hostile(proc.port, [("login", b"", "half_close")])   # warm up: first logins allocate caches
        rss_start, fds_start = read_rss_kb(pid), count_fds(pid)
        rss_peak = rss_start

        @settings(max_examples=200, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(streams=st.lists(stream, min_size=1, max_size=3))
        def feed(streams):
            nonlocal rss_peak
            run_hostile(proc.port, streams)
            assert proc.returncode is None, "pgpool died"
            assert not healthy.errors, f"healthy client failed: {healthy.errors[0]!r}"
            rss_peak = max(rss_peak, read_rss_kb(pid))

        feed()
        progress = healthy.ok
        wait_until_sync(lambda: healthy.ok > progress + 10 or healthy.errors, timeout=20,
                        message="healthy client still making progress")
    assert not healthy.errors, f"healthy client failed: {healthy.errors[0]!r}"
    assert proc.returncode is None, "pgpool died"
    # Every hostile connection is gone: the fd count returns to where it was.
    wait_until_sync(lambda: count_fds(pid) <= fds_start + 2, timeout=20,
                    message=f"pgpool fds back near {fds_start} (leaked sockets?)")
    rss_end = read_rss_kb(pid)
    assert rss_peak - rss_start < 64 * 1024, f"RSS grew from {rss_start} kB to a peak of {rss_peak} kB"
    assert rss_end - rss_start < 32 * 1024, f"RSS grew from {rss_start} kB to {rss_end} kB"
    log = proc.log_text()
    assert "Traceback" not in log and "internal error" not in log, log[-4000:]


async def test_malformed_flush_left_behind_does_not_reach_the_next_client(pgpool_proc):
    # Found by the test above: Postgres fails a Flush that has a body ("invalid message format")
    # and then skips to the next Sync. pgpool counted no reply for it, released the server after
    # the Query's ReadyForQuery, and the next client got the stale error and its own messages skipped.
    proc = pgpool_proc({"default_pool_size": 1, "pool_mode": "transaction"})
    sock = socket.create_connection(("127.0.0.1", proc.port), timeout=10)
    try:
        login(sock)
        sock.sendall(m.query("SELECT 1") + m.message(b"H", b"\x00\x00\x00\x00"))
        while read_message(sock)[0] != b"Z":
            pass
    finally:
        sock.close()
    conn = await asyncpg.connect(proc.dsn())   # defaults: statement cache on
    try:
        for i in range(5):
            assert await conn.fetchval("SELECT $1::int", i) == i
    finally:
        await conn.close()
