"""Host lists and failover against a real primary (127.0.0.1) and streaming standby (127.0.0.2),
one port, as PgBouncer's host=a,b: load_balance_hosts, unresolvable and unreachable hosts,
target_session_attrs, reload, and a promotion under ledger load."""

from __future__ import annotations

import asyncio
from typing import Iterator

import asyncpg
import pytest

from benchmarks.ledger import CREATE_SQL, LedgerLoad, audit
from benchmarks.targets import PgpoolProcess, PostgresCluster, start_primary_and_standby
from tests.conftest import TEST_USERS
from tests.waiting import wait_until

PRIMARY, STANDBY, NOBODY = "127.0.0.1", "127.0.0.2", "127.0.0.3"


def _pair() -> tuple[PostgresCluster, PostgresCluster]:
    """Primary and standby, the ledger table created before the base backup so both have it."""
    primary, standby = start_primary_and_standby(STANDBY)
    primary.run_sql(f"{CREATE_SQL}; GRANT ALL ON ledger TO PUBLIC;", dbname="app")
    return primary, standby


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[PostgresCluster, PostgresCluster]]:
    primary, standby = _pair()
    yield primary, standby
    standby.stop()
    primary.stop()


@pytest.fixture
def pooler(pair) -> Iterator:
    started: list[PgpoolProcess] = []

    def start(entry: str, settings: dict | None = None) -> PgpoolProcess:
        primary = pair[0]
        proc = PgpoolProcess(backend_host=primary.host, backend_port=primary.port, users=dict(TEST_USERS),
                             settings={"log_disconnections": False, **(settings or {})},
                             databases={"app": f"port={primary.port} dbname=app {entry}"})
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop()
        print("\n".join(proc.log_text().splitlines()[-40:]))


async def _server_addrs(proc: PgpoolProcess, n: int) -> list[tuple[str, bool]]:
    """(server address, in recovery) seen by n clients holding a server each at the same time."""
    conns = [await asyncpg.connect(proc.dsn()) for _ in range(n)]
    try:
        for conn in conns:
            await conn.execute("BEGIN")
        return [(str(await c.fetchval("SELECT inet_server_addr()")).split("/")[0],
                 await c.fetchval("SELECT pg_is_in_recovery()")) for c in conns]
    finally:
        for conn in conns:
            conn.terminate()


async def test_unresolvable_and_unreachable_hosts_are_skipped(pooler):
    proc = pooler(f"host=no-such-host.invalid,{NOBODY},{PRIMARY} load_balance_hosts=disable")
    seen = await _server_addrs(proc, 3)
    assert seen == [(PRIMARY, False)] * 3


async def test_round_robin_spreads_and_disable_takes_the_first(pooler):
    spread = await _server_addrs(pooler(f"host={PRIMARY},{STANDBY}", {"default_pool_size": 4}), 4)
    assert {addr for addr, _ in spread} == {PRIMARY, STANDBY}
    first = await _server_addrs(pooler(f"host={STANDBY},{PRIMARY} load_balance_hosts=disable"), 3)
    assert {addr for addr, _ in first} == {STANDBY}


@pytest.mark.parametrize("attrs, expected", [
    ("read-write", (PRIMARY, False)),
    ("primary", (PRIMARY, False)),
    ("standby", (STANDBY, True)),
    ("read-only", (STANDBY, True)),
    ("prefer-standby", (STANDBY, True)),
])
async def test_target_session_attrs(pooler, attrs, expected):
    """Both orders of the list, round-robin on: every server has the asked-for role."""
    for hosts in (f"{PRIMARY},{STANDBY}", f"{STANDBY},{PRIMARY}"):
        proc = pooler(f"host={hosts} target_session_attrs={attrs}", {"default_pool_size": 4})
        assert set(await _server_addrs(proc, 4)) == {expected}, (attrs, hosts)


async def test_prefer_standby_falls_back_and_standby_alone_waits(pooler):
    """prefer-standby with no standby in the list takes the primary; standby with none reports why."""
    proc = pooler(f"host={NOBODY},{PRIMARY} target_session_attrs=prefer-standby")
    assert set(await _server_addrs(proc, 2)) == {(PRIMARY, False)}
    proc = pooler(f"host={PRIMARY} target_session_attrs=standby")
    with pytest.raises(asyncpg.PostgresError) as info:
        await asyncpg.connect(proc.dsn())
    assert "is read-write" not in str(info.value)
    assert "needs target_session_attrs=standby" in str(info.value), info.value


async def test_reload_changes_the_host_list(pooler):
    proc = pooler(f"host={PRIMARY}")
    assert set(await _server_addrs(proc, 2)) == {(PRIMARY, False)}
    proc.databases["app"] = f"port={proc.backend_port} dbname=app host={NOBODY},{STANDBY}"
    proc.write_config()
    proc.send_signal(1)   # SIGHUP
    await wait_until(lambda: "RELOAD (SIGHUP)" in proc.log_text(), timeout=5)
    assert set(await _server_addrs(proc, 2)) == {(STANDBY, True)}


async def test_failover_under_load_reaches_the_new_writer():
    """Old primary made read-only, standby promoted, 20 ledger clients in a read-write pool over
    host=primary,standby: pgpool retires the old primary's servers (on the ParameterStatus that says
    read-only, or on a 25006, which then reaches only the client that ran into it), waiters ride through
    until the promotion, and every acknowledged commit is on the new primary, once."""
    primary, standby = _pair()
    proc = PgpoolProcess(backend_host=primary.host, backend_port=primary.port, users=dict(TEST_USERS),
                         settings={"log_disconnections": False, "log_connections": False, "default_pool_size": 5,
                                   "query_wait_timeout": 30},
                         databases={"app": f"host={PRIMARY},{STANDBY} port={primary.port} dbname=app "
                                           f"load_balance_hosts=disable target_session_attrs=read-write"})
    try:
        proc.start()
        async with LedgerLoad(proc.dsn(), 20) as load:
            ledger = load.ledger
            await wait_until(lambda: len(ledger.commits) > 100, timeout=20, message="load running")
            fault_at = ledger.now()
            lsn = await asyncio.to_thread(primary.turn_read_only)
            # pgpool notices through ParameterStatus (servers closed at release, before any 25006) or
            # through a 25006; either way new logins skip the old primary, and clients wait.
            await wait_until(lambda: "needs target_session_attrs=read-write" in proc.log_text(), timeout=10,
                             message="old primary skipped")
            await asyncio.to_thread(standby.wait_replayed, lsn)
            await asyncio.to_thread(standby.promote)
            promoted = ledger.now()
            first = await wait_until(lambda: ledger.first_commit_after(promoted), timeout=15,
                                     message="commits on the new primary")
            await wait_until(lambda: len([t for t in ledger.commits if t > first]) > 100, timeout=15)
        result = await audit(ledger, standby.dsn(dbname="app"))
        assert result.violations() == []
        assert result.errors_without_cause == 0
        assert all(e.sqlstate in ("25006", "08006", "57P01") for e in ledger.errors), ledger.errors
        assert first - promoted < 3.0
        print(f"failover: read-only at {fault_at:.2f}s, promoted at {promoted:.2f}s, first commit on the new "
              f"primary {first - promoted:.2f}s later; {result.errors} errors")
    finally:
        proc.stop()
        print("\n".join([line for line in proc.log_text().splitlines() if "login ok" not in line][-60:]))
        standby.stop()
        primary.stop()

