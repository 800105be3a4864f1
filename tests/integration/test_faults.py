"""Faults under load, each asserting the ledger's invariants: no acknowledged commit lost, none
duplicated, no row from a transaction that failed before COMMIT, every error with a cause, and
service back within a bound. These run against a Postgres cluster of their own (module scope),
because they restart, stop and cut it.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Iterator

import asyncpg
import pytest

from benchmarks.ledger import LedgerLoad, audit, cause_of, create_table
from benchmarks.targets import PgpoolProcess, PostgresCluster, find_pg_bindir
from tests.conftest import TEST_USERS
from tests.faultproxy import FaultProxy
from tests.integration.helpers import RawClient
from tests.waiting import wait_until

# The outage clients may see beyond the restart itself: the retry schedule's cap (0.5 s), the
# janitor's tick and this machine's noise. server_login_retry (15 s) is far above it on purpose.
RIDE_THROUGH_SLACK = 1.5


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    find_pg_bindir()
    # synchronous_commit on: an immediate shutdown must not lose what Postgres acknowledged.
    server = PostgresCluster(max_connections=60, settings={"synchronous_commit": "on"}).start()
    server.run_sql("CREATE ROLE faultuser LOGIN PASSWORD 'pw1'; GRANT ALL ON DATABASE app TO faultuser;")
    server.run_sql("GRANT ALL ON SCHEMA public TO faultuser;", dbname="app")
    yield server
    server.stop()


@pytest.fixture
def pooler(cluster: PostgresCluster) -> Iterator:
    """Factory: pooler(settings, databases=None) -> a started pgpool in front of `cluster`."""
    started: list[PgpoolProcess] = []

    def start(settings: dict | None = None, databases: dict | None = None) -> PgpoolProcess:
        proc = PgpoolProcess(backend_host=cluster.host, backend_port=cluster.port, users=dict(TEST_USERS),
                             settings={"log_disconnections": False, **(settings or {})}, databases=databases)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop()
        tail = "\n".join(proc.log_text().splitlines()[-60:])
        print(f"--- pgpool on port {proc.port} log tail ---\n{tail}")


def _superuser(cluster: PostgresCluster):
    return asyncpg.connect(cluster.dsn())


async def _terminate(cluster: PostgresCluster, user: str) -> int:
    conn = await _superuser(cluster)
    try:
        return await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = $1", user)
    finally:
        await conn.close()


# ---- restarts cost clients only the restart ------------------------------------------------------

@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_restart_under_load_costs_only_the_restart(cluster, pooler, mode):
    """30 ledger clients over a pool of 5; Postgres restarts (fast, or immediate = crash recovery).

    Clients inside a transaction when it went down get an error with a cause; clients that were
    queued or arrived during the outage wait and are served when Postgres is back, long before
    server_login_retry (15 s); nothing acknowledged is lost or duplicated.
    """
    proc = pooler({"default_pool_size": 5, "max_client_conn": 100, "server_login_retry": 15,
                   "query_wait_timeout": 30})
    await create_table(cluster.dsn(dbname="app"))
    async with LedgerLoad(proc.dsn(), 30) as load:
        ledger = load.ledger
        await wait_until(lambda: len(ledger.commits) > 200, timeout=20, message="load running")
        before = ledger.now()
        took = await asyncio.to_thread(cluster.restart, mode)
        back = ledger.now()
        first = await wait_until(lambda: ledger.first_commit_after(back), timeout=15, message="commits after restart")
        await wait_until(lambda: len([t for t in ledger.commits if t > first]) > 100, timeout=15)
    result = await audit(ledger, cluster.dsn(dbname="app"))
    assert result.violations() == []
    outage = ledger.longest_gap(before, first + 0.5)   # commits were flowing at `before`
    print(f"restart -m {mode}: pg_ctl took {took:.2f}s, clients saw no commit for {outage:.2f}s, "
          f"{result.errors} errors, {result.in_doubt} in doubt ({result.in_doubt_present} committed)")
    assert outage < took + RIDE_THROUGH_SLACK, (outage, took)
    # Only transactions in flight when Postgres went down may fail, each once, each with a cause.
    assert result.errors <= 30, ledger.errors
    assert result.errors_without_cause == 0, [e for e in ledger.errors if not e.sqlstate]
    assert not [e for e in ledger.errors if e.sqlstate in ("57P03", "28P01") or "server_login_retry" in e.message]
    assert not [e for e in ledger.errors if e.stage == "connect"]


async def test_waiting_client_gets_the_server_error_when_its_wait_ends(cluster, pooler):
    """Postgres stays down: a queued client waits its query_wait_timeout while logins are retried on the
    documented backoff, then gets the cause (08006 naming the server), not a generic timeout."""
    proc = pooler({"default_pool_size": 2, "query_wait_timeout": 2, "server_login_retry": 15})
    conn = await asyncpg.connect(proc.dsn())
    assert await conn.fetchval("SELECT 1") == 1
    await asyncio.to_thread(cluster.stop_server, "fast")
    down = True
    try:
        started = time.monotonic()
        with pytest.raises(asyncpg.PostgresError) as info:
            await conn.fetchval("SELECT 2")
        waited = time.monotonic() - started
        late = await asyncpg.connect(proc.dsn())   # logs in while Postgres is down: pgpool knows the welcome
        late_query = asyncio.create_task(late.fetchval("SELECT 3"))
        await asyncio.to_thread(cluster.start_server)
        down = False
        assert await asyncio.wait_for(late_query, 10) == 3
        await late.close()
    finally:
        if down:
            await asyncio.to_thread(cluster.start_server)
    error = cause_of(info.value)
    assert error is not None, info.value
    message = str(error)
    assert error.sqlstate in ("08006", "57P03"), message
    assert "query_wait_timeout" in message and "app/app" in message
    assert "could not connect to server" in message or "starting up" in message or "shutting down" in message
    assert 1.8 <= waited < 4.0, waited
    attempts = int(message.split("(")[1].split(" attempts")[0])
    # 2 s on the schedule 0.05 * 1.5**n (cap 0.5 s, jitter x0.5-1) is 6 to 16 attempts; 15 s retry: 1.
    assert 4 <= attempts <= 25, message


async def test_password_change_fails_queued_clients_fast(cluster, pooler):
    """A forced user's password changes on the server: clients queued for a new server get the server's
    28P01 at once (never a hang until query_wait_timeout), while a client holding a server goes on."""
    cluster.run_sql("ALTER ROLE faultuser PASSWORD 'pw1'")
    proc = pooler({"default_pool_size": 2, "query_wait_timeout": 30, "server_login_retry": 15},
                  databases={"app": f"host={cluster.host} port={cluster.port} dbname=app user=faultuser password=pw1"})
    holder = await asyncpg.connect(proc.dsn())
    others = [await asyncpg.connect(proc.dsn()) for _ in range(4)]
    try:
        await holder.execute("BEGIN")
        assert await holder.fetchval("SELECT current_user") == "faultuser"
        cluster.run_sql("ALTER ROLE faultuser PASSWORD 'pw2'")
        started = time.monotonic()
        results = await asyncio.gather(*(c.fetchval("SELECT 1") for c in others), return_exceptions=True)
        took = time.monotonic() - started
        failures = [r for r in results if isinstance(r, BaseException)]
        assert failures, results   # at least the ones that needed a new server
        for failure in failures:
            error = cause_of(failure)
            assert isinstance(error, asyncpg.InvalidPasswordError), failure
            assert 'password authentication failed for user "faultuser"' in str(error)
        assert took < 5, took
        assert await holder.fetchval("SELECT 2") == 2   # the client holding a server is untouched
        await holder.execute("COMMIT")
    finally:
        cluster.run_sql("ALTER ROLE faultuser PASSWORD 'pw1'")
        for conn in (holder, *others):
            conn.terminate()


async def test_client_in_transaction_gets_08006_when_its_server_dies(cluster, pooler):
    """Never silently moved: the client learns its transaction is gone (pool and cause), then is closed."""
    proc = pooler({"default_pool_size": 2})
    raw = await RawClient.open(proc.port)
    try:
        await raw.login_md5("app", TEST_USERS["app"])
        raw.send(b"Q" + (4 + len(b"BEGIN") + 1).to_bytes(4, "big") + b"BEGIN\x00")
        await raw.read_until(b"Z")
        assert await _terminate(cluster, "app") >= 1
        errors = []
        while True:
            try:
                t, body = await raw.read_message()
            except asyncio.IncompleteReadError:
                break
            if t == b"E":
                errors.append(body)
        text = b" ".join(errors).decode()
        assert "08006" in text and "server connection lost for pool app/app" in text, text
    finally:
        raw.close()


# ---- network faults ----------------------------------------------------------------------------

def _tcp_timers(pid: int) -> list[tuple[int, int, int, float]]:
    """(local port, remote port, timer kind, seconds left) of pid's established TCP sockets, read from
    /proc (no ss needed): timer kind 2 is the keepalive timer; times are in USER_HZ (100) ticks."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    with open(f"/proc/{pid}/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[3] != "01" or fields[9] not in inodes:   # 01 = ESTABLISHED
                continue
            kind, when = fields[5].split(":")
            found.append((int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16), int(kind, 16),
                          int(when, 16) / os.sysconf("SC_CLK_TCK")))
    return found


async def test_keepalive_is_set_on_client_and_server_sockets(cluster, pooler):
    """tcp_keepalive / tcp_keepidle reach both sides: the kernel runs a keepalive timer of <= 7 s on
    pgpool's client socket and on its server socket (the OS default would be 7200 s)."""
    proc = pooler({"tcp_keepidle": 7, "tcp_keepintvl": 3, "tcp_keepcnt": 2, "tcp_user_timeout": 4000})
    conn = await asyncpg.connect(proc.dsn())
    try:
        await conn.execute("BEGIN")   # hold the server so both sockets stay established
        assert await conn.fetchval("SELECT 1") == 1

        def keepalive_timers() -> list[float] | None:
            sockets = [(kind, left) for local, remote, kind, left in _tcp_timers(proc.pid)
                       if local == proc.port or remote == cluster.port]
            # Another timer runs while data is unacknowledged; look again until both sides are quiet.
            if len(sockets) < 2 or any(kind != 2 for kind, _ in sockets):
                return None
            return [left for _, left in sockets]

        timers = await wait_until(keepalive_timers, timeout=5, message="keepalive timers on both sockets")
        assert all(0 < left <= 7.0 for left in timers), timers
    finally:
        conn.terminate()


async def test_server_that_stops_answering_mid_query_is_bounded_by_query_timeout(cluster, pooler):
    """A blackholed route between pgpool and Postgres: the client gets 57014 naming query_timeout after
    ~1 s, the stuck server is dropped, and once the route heals the pool serves again."""
    async with FaultProxy(cluster.host, cluster.port) as proxy:
        proc = pooler({"default_pool_size": 2, "query_timeout": 1, "server_connect_timeout": 2},
                      databases={"app": f"host=127.0.0.1 port={proxy.port} dbname=app"})
        conn = await asyncpg.connect(proc.dsn())
        assert await conn.fetchval("SELECT 1") == 1
        proxy.blackhole()
        started = time.monotonic()
        with pytest.raises(asyncpg.PostgresError) as info:
            await conn.fetchval("SELECT 2")
        took = time.monotonic() - started
        error = cause_of(info.value)
        assert error is not None and error.sqlstate == "57014", info.value
        assert "query_timeout" in str(error) and "app/app" in str(error)
        assert 0.9 <= took < 3.0, took
        proxy.heal()
        again = await asyncpg.connect(proc.dsn())
        assert await asyncio.wait_for(again.fetchval("SELECT 3"), 10) == 3
        await again.close()
        assert "sent error 57014: query_timeout" in proc.log_text()   # reported


async def _ledger_through_proxy(cluster, pooler, fault, *, clients: int = 20, settings: dict | None = None):
    """Run the ledger through pgpool -> proxy -> Postgres, apply `fault(proxy)` mid-run, heal, audit."""
    async with FaultProxy(cluster.host, cluster.port) as proxy:
        proc = pooler({"default_pool_size": 5, "max_client_conn": 100, "query_wait_timeout": 20,
                       "server_connect_timeout": 2, **(settings or {})},
                      databases={"app": f"host=127.0.0.1 port={proxy.port} dbname=app"})
        await create_table(cluster.dsn(dbname="app"))
        async with LedgerLoad(proc.dsn(), clients) as load:
            ledger = load.ledger
            await wait_until(lambda: len(ledger.commits) > 100, timeout=20, message="load running")
            await fault(proxy)
            proxy.heal()
            healed = ledger.now()
            await wait_until(lambda: len([t for t in ledger.commits if t > healed]) > 100, timeout=20,
                             message="commits after the fault healed")
            recovered = ledger.first_commit_after(healed) - healed
        result = await audit(ledger, cluster.dsn(dbname="app"))
    assert result.violations() == []
    assert result.errors_without_cause == 0, [e for e in ledger.errors if not e.sqlstate]
    return ledger, result, recovered


async def test_rst_between_pgpool_and_postgres(cluster, pooler):
    """Every server connection is reset three times, 100 ms apart: in-flight transactions fail with a
    cause (08006 naming the pool), nothing acknowledged is lost, service resumes at once."""
    async def fault(proxy: FaultProxy) -> None:
        for _ in range(3):
            proxy.reset()
            await asyncio.sleep(0.1)   # the fault's own rhythm, not synchronisation
    ledger, result, recovered = await _ledger_through_proxy(cluster, pooler, fault)
    assert result.errors >= 1
    assert all(e.sqlstate in ("08006", "57P01") for e in ledger.errors), ledger.errors
    assert recovered < 2.0


async def test_new_connections_reset_then_heal(cluster, pooler):
    """Connections are reset and new ones refused (RST) for 0.5 s: waiters ride through it."""
    async def fault(proxy: FaultProxy) -> None:
        proxy.reset(new_connections_too=True)
        await asyncio.sleep(0.5)
    ledger, result, recovered = await _ledger_through_proxy(cluster, pooler, fault)
    assert not [e for e in ledger.errors if e.stage == "connect"], ledger.errors
    assert recovered < 2.0


async def test_latency_spike(cluster, pooler):
    """300 ms added each way for a second: slower, never an error."""
    async def fault(proxy: FaultProxy) -> None:
        proxy.delay(0.3)
        await asyncio.sleep(1.0)
    ledger, result, recovered = await _ledger_through_proxy(cluster, pooler, fault)
    assert result.errors == 0, ledger.errors


async def test_blackhole_under_load_is_bounded_and_recovers(cluster, pooler):
    """The route to Postgres swallows everything for 1.5 s: transactions stuck in it end with query_timeout
    (in doubt if COMMIT was among them), nothing acknowledged is lost, service resumes after the heal."""
    async def fault(proxy: FaultProxy) -> None:
        proxy.blackhole()
        await asyncio.sleep(1.5)
    ledger, result, recovered = await _ledger_through_proxy(cluster, pooler, fault, settings={"query_timeout": 1})
    assert all(e.sqlstate in ("57014", "08006") for e in ledger.errors), ledger.errors
    assert recovered < 3.0


# ---- bounded everything ------------------------------------------------------------------------

def _rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _query(sql: str) -> bytes:
    body = sql.encode() + b"\x00"
    return b"Q" + (4 + len(body)).to_bytes(4, "big") + body


async def test_client_that_never_reads(cluster, pooler):
    """A client asks for 2 GB and reads nothing: pgpool's memory stays flat (backpressure reaches
    Postgres), other clients are served by the rest of the pool, and query_timeout ends it."""
    proc = pooler({"default_pool_size": 2, "query_timeout": 3})
    warm = await asyncpg.connect(proc.dsn())
    assert await warm.fetchval("SELECT 1") == 1
    rss_before = _rss_kib(proc.pid)
    raw = await RawClient.open(proc.port)
    try:
        await raw.login_md5("app", TEST_USERS["app"])
        raw.send(_query("SELECT repeat('x', 100000) FROM generate_series(1, 20000)"))
        for i in range(10):   # others keep working while it stalls
            assert await warm.fetchval("SELECT $1::int", i) == i
        await wait_until(lambda: "sent error 57014: query_timeout" in proc.log_text(), timeout=10)
        assert _rss_kib(proc.pid) - rss_before < 32 * 1024
    finally:
        raw.close()
    assert await warm.fetchval("SELECT 2") == 2
    await warm.close()


async def test_console_flood_is_bounded_and_harms_no_one(cluster, pooler):
    """Console commands sent faster than they run are all answered; a console that never reads its
    replies is read no further (pgpool's memory stays flat); another console and the data plane go on."""
    proc = pooler({"admin_users": ["postgres"]})
    flood = await RawClient.open(proc.port)
    await flood.login_md5("postgres", TEST_USERS["postgres"], database="pgbouncer")
    flood.send(_query("SHOW VERSION") * 3000)
    for _ in range(3000):
        await flood.read_until(b"Z")
    flood.close()

    rss_before = _rss_kib(proc.pid)
    reader = await RawClient.open(proc.port)
    await reader.login_md5("postgres", TEST_USERS["postgres"], database="pgbouncer")
    sent = 0
    try:
        for _ in range(200):   # up to 32 MB of SHOW CONFIG (2 million of them) sent, no reply read
            reader.send(_query("SHOW CONFIG") * 10_000)
            sent += 10_000
            try:
                await asyncio.wait_for(reader.writer.drain(), 1.0)
            except TimeoutError:
                break   # pgpool stopped reading this console: backpressure reached this client
        assert sent < 2_000_000, "pgpool kept reading a console that reads nothing"
        assert _rss_kib(proc.pid) - rss_before < 32 * 1024
        other = await RawClient.open(proc.port)
        await other.login_md5("postgres", TEST_USERS["postgres"], database="pgbouncer")
        other.send(_query("SHOW VERSION"))
        assert (await other.read_until(b"Z"))[-1][0] == b"Z"
        other.close()
        conn = await asyncpg.connect(proc.dsn())
        assert await conn.fetchval("SELECT 1") == 1
        await conn.close()
    finally:
        reader.close()
