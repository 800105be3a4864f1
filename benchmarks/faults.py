"""The fault bench: `python -m benchmarks.faults` runs every fault scenario under ledger load against
pgpool and Debian's PgBouncer in the same run and writes a results table (JSON, Markdown) and a plot.

Owns: the scenario matrix (what breaks, for how long), running each scenario once per pooler on a
fresh pooler process in front of throwaway Postgres clusters on loopback, and the results files.
Each run: `--clients` ledger clients over a pool of `--pool-size`, `--warmup` seconds of load, the
fault, `--after` seconds of load; then the ledger audit (benchmarks/ledger.py) read directly from
Postgres. Bounded: every scenario ends within warmup + fault + after + a few seconds.

Must not: decide pass/fail (the tests in tests/integration/test_faults.py do), or touch anything
but the clusters and processes it started. The machine may be shared: results say so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import struct
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

import asyncpg

from benchmarks.ledger import CREATE_SQL, LedgerLoad, audit, create_table
from benchmarks.targets import (
    ROLES, PgBouncerProcess, PgpoolProcess, PostgresCluster, start_primary_and_standby,
)
from tests.faultproxy import FaultProxy
from tests.integration.helpers import RawClient

USERS = dict(ROLES)


@dataclass
class Context:
    cluster: PostgresCluster
    proc: PgpoolProcess | PgBouncerProcess
    proxy: FaultProxy | None = None
    standby: PostgresCluster | None = None
    clients: int = 0            # ledger clients connected (max_client_conn minus these is free)


Fault = Callable[[Context], Awaitable[None]]


@dataclass
class Scenario:
    name: str
    description: str
    fault: Fault
    via_proxy: bool = False
    failover: bool = False


async def _restart(mode: str, ctx: Context) -> None:
    await asyncio.to_thread(ctx.cluster.restart, mode)


async def _stop_immediate_and_start(ctx: Context) -> None:
    await asyncio.to_thread(ctx.cluster.stop_server, "immediate")
    await asyncio.to_thread(ctx.cluster.start_server)


async def _terminate_random(ctx: Context) -> None:
    admin = await asyncpg.connect(ctx.cluster.dsn())
    try:
        for _ in range(20):
            await admin.execute("SELECT pg_terminate_backend(pid) FROM (SELECT pid FROM pg_stat_activity WHERE "
                                "usename = 'app' AND backend_type = 'client backend' ORDER BY random() LIMIT 1) v")
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def _rst(ctx: Context) -> None:
    assert ctx.proxy is not None
    for _ in range(3):
        ctx.proxy.reset()
        await asyncio.sleep(0.1)


async def _refuse_new(ctx: Context) -> None:
    assert ctx.proxy is not None
    ctx.proxy.reset(new_connections_too=True)
    await asyncio.sleep(1.0)
    ctx.proxy.heal()


async def _blackhole(ctx: Context) -> None:
    assert ctx.proxy is not None
    ctx.proxy.blackhole()
    await asyncio.sleep(2.0)
    ctx.proxy.heal()


async def _latency(ctx: Context) -> None:
    assert ctx.proxy is not None
    ctx.proxy.delay(0.3)
    await asyncio.sleep(2.0)
    ctx.proxy.heal()


async def _reloads(ctx: Context) -> None:
    proc = ctx.proc
    base = proc.settings["default_pool_size"]
    for size in (max(2, base // 2), base * 2, base):
        proc.settings["default_pool_size"] = size
        proc.write_config()
        proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)


async def _raw_login(ctx: Context) -> RawClient:
    raw = await RawClient.open(ctx.proc.port)
    await raw.login_md5("app", USERS["app"])
    return raw


def _kill(raw: RawClient) -> None:
    """The client process dies: RST, no Terminate."""
    sock = raw.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.writer.transport.abort()


def _q(sql: str) -> bytes:
    body = sql.encode() + b"\x00"
    return b"Q" + (4 + len(body)).to_bytes(4, "big") + body


async def _kill_clients(ctx: Context) -> None:
    """30 extra clients die: 10 inside a transaction with an insert, 10 inside COPY, 10 inside a pipeline."""
    raws = [await _raw_login(ctx) for _ in range(30)]
    for i, raw in enumerate(raws):
        if i % 3 == 0:
            raw.send(_q(f"BEGIN; INSERT INTO ledger (id, client) VALUES ('{uuid.uuid4()}', -1)"))
        elif i % 3 == 1:
            row = f"{uuid.uuid4()}\t-2\n".encode()
            raw.send(_q("COPY ledger (id, client) FROM STDIN") + b"d" + (4 + len(row)).to_bytes(4, "big") + row)
        else:
            insert = _q(f"INSERT INTO ledger (id, client) VALUES ('{uuid.uuid4()}', -3)")
            raw.send(_q("BEGIN") + insert + _q("SELECT 1"))   # pipelined, never awaited
    await asyncio.sleep(0.3)   # let them reach their servers
    for raw in raws:
        _kill(raw)


async def _slowloris(ctx: Context) -> None:
    """Half-sent startup packets on every free client slot for 2 s."""
    free = int(ctx.proc.settings["max_client_conn"]) - ctx.clients
    socks = []
    for _ in range(max(free, 0)):
        try:
            reader, writer = await asyncio.open_connection(ctx.proc.host, ctx.proc.port)
        except OSError:
            break
        writer.write(b"\x00\x00")
        socks.append(writer)
    await asyncio.sleep(2.0)
    for writer in socks:
        writer.close()


async def _never_reads(ctx: Context) -> None:
    """5 clients ask for 2 GB each and read nothing for 3 s (query_timeout is 2 s)."""
    raws = [await _raw_login(ctx) for _ in range(5)]
    for raw in raws:
        raw.send(_q("SELECT repeat('x', 100000) FROM generate_series(1, 20000)"))
    await asyncio.sleep(3.0)
    for raw in raws:
        raw.close()


async def _sigterm(ctx: Context) -> None:
    """SIGTERM: pgpool drains at transaction boundaries; PgBouncer's SIGTERM is an immediate shutdown."""
    ctx.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    while ctx.proc.returncode is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def _failover(ctx: Context) -> None:
    """The primary turns read-only, the standby catches up and is promoted."""
    assert ctx.standby is not None
    lsn = await asyncio.to_thread(ctx.cluster.turn_read_only)
    await asyncio.to_thread(ctx.standby.wait_replayed, lsn)
    await asyncio.to_thread(ctx.standby.promote)


SCENARIOS = [
    Scenario("restart_fast", "pg_ctl restart -m fast", lambda ctx: _restart("fast", ctx)),
    Scenario("restart_immediate", "pg_ctl stop -m immediate, then start (crash recovery)", _stop_immediate_and_start),
    Scenario("terminate_every_100ms", "pg_terminate_backend of a random server every 100 ms, 2 s", _terminate_random),
    Scenario("rst", "RST on every pooler-Postgres connection, 3 times 100 ms apart", _rst, via_proxy=True),
    Scenario("refuse_new_1s", "RST on every connection, new ones refused with RST for 1 s", _refuse_new,
             via_proxy=True),
    Scenario("blackhole_2s", "pooler-Postgres route swallows everything for 2 s (query_timeout 2 s)", _blackhole,
             via_proxy=True),
    Scenario("latency_300ms_2s", "300 ms added to every chunk each way for 2 s", _latency, via_proxy=True),
    Scenario("reload", "three SIGHUP reloads changing default_pool_size", _reloads),
    Scenario("kill_clients", "30 extra clients die (RST) inside a transaction, COPY or pipeline", _kill_clients),
    Scenario("slowloris", "every free client slot taken by a half-sent startup packet for 2 s", _slowloris),
    Scenario("never_reads", "5 clients ask for 2 GB each and read nothing for 3 s", _never_reads),
    Scenario("sigterm", "SIGTERM under load (pgpool: drain; PgBouncer: immediate shutdown)", _sigterm),
    Scenario("failover", "primary turned read-only, standby promoted (host=primary,standby; PgBouncer 1.18: "
             "host=primary, it has no host lists)", _failover, failover=True),
]


@dataclass
class Run:
    scenario: str
    target: str
    clients: int
    pool_size: int
    fault_s: float
    commits: int
    client_errors: int
    errors_without_cause: int
    error_kinds: dict[str, int]
    outage_s: float             # longest time without a commit from the fault's start to the end
    recovered_s: float | None   # fault end to the first commit after it (None: never within the run)
    acked_lost: int
    duplicated: int
    in_doubt: int
    in_doubt_committed: int
    unexplained: int
    rss_before_kib: int | None
    rss_after_kib: int | None
    timeline: list[tuple[float, int, int]] = field(default_factory=list)  # (t from fault start, commits, errors)


def _rss_kib(pid: int | None) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _pooler_settings(pool_size: int, clients: int) -> dict[str, object]:
    return {"pool_mode": "transaction", "default_pool_size": pool_size, "max_client_conn": clients * 2 + 50,
            "query_wait_timeout": 30, "query_timeout": 2, "server_connect_timeout": 3,
            "log_connections": 0, "log_disconnections": 0}


def _start_pooler(target: str, host_entry: str, backend_host: str, port: int, pool_size: int,
                  clients: int) -> PgpoolProcess | PgBouncerProcess:
    cls = PgpoolProcess if target == "pgpool" else PgBouncerProcess
    settings = _pooler_settings(pool_size, clients)
    if target == "pgpool":
        settings = {k: bool(v) if k.startswith("log_") else v for k, v in settings.items()}
    proc = cls(backend_host=backend_host, backend_port=port, users=USERS, settings=settings,
               databases={"app": f"{host_entry} port={port} dbname=app"})
    return proc.start()


async def run_one(scenario: Scenario, target: str, args: argparse.Namespace,
                  cluster: PostgresCluster | None) -> Run:
    standby = None
    proxy = None
    if scenario.failover:
        # A fresh pair per run: the failover consumes it. The table reaches the standby through WAL.
        cluster, standby = await asyncio.to_thread(start_primary_and_standby)
        cluster.run_sql(f"{CREATE_SQL}; GRANT ALL ON ledger TO PUBLIC;", dbname="app")
        entry = ("host=127.0.0.1,127.0.0.2 load_balance_hosts=disable target_session_attrs=read-write"
                 if target == "pgpool" else "host=127.0.0.1")
    assert cluster is not None
    port = cluster.port
    if scenario.via_proxy:
        proxy = await FaultProxy(cluster.host, cluster.port).start()
        port = proxy.port
    if not scenario.failover:
        entry = f"host={cluster.host}"
    proc = await asyncio.to_thread(_start_pooler, target, entry, cluster.host, port, args.pool_size, args.clients)
    ctx = Context(cluster, proc, proxy, standby, args.clients)
    audit_dsn = (standby or cluster).dsn(dbname="app")
    try:
        if not scenario.failover:
            await create_table(cluster.dsn(dbname="app"))
        connect_kwargs = {"statement_cache_size": 0} if target == "pgbouncer" else None
        async with LedgerLoad(proc.dsn(), args.clients, connect_kwargs=connect_kwargs) as load:
            ledger = load.ledger
            await asyncio.sleep(args.warmup)
            rss_before = _rss_kib(proc.pid)
            fault_start = ledger.now()
            await scenario.fault(ctx)
            fault_end = ledger.now()
            await asyncio.sleep(args.after)
            run_end = ledger.now()
            rss_after = _rss_kib(proc.pid)
        result = await audit(ledger, audit_dsn)
        kinds: dict[str, int] = {}
        for error in ledger.errors:
            key = error.sqlstate or "no cause"
            kinds[key] = kinds.get(key, 0) + 1
        recovered = ledger.first_commit_after(fault_end)
        return Run(
            scenario=scenario.name, target=target, clients=args.clients, pool_size=args.pool_size,
            fault_s=round(fault_end - fault_start, 3), commits=len(ledger.commits),
            client_errors=result.errors, errors_without_cause=result.errors_without_cause, error_kinds=kinds,
            outage_s=round(ledger.longest_gap(fault_start, run_end), 3),
            recovered_s=None if recovered is None else round(recovered - fault_end, 3),
            acked_lost=result.missing, duplicated=result.duplicated, in_doubt=result.in_doubt,
            in_doubt_committed=result.in_doubt_present, unexplained=result.unexplained,
            rss_before_kib=rss_before, rss_after_kib=rss_after,
            timeline=[(round(t - fault_start, 2), c, e) for t, c, e in ledger.throughput(0.25)],
        )
    finally:
        await asyncio.to_thread(proc.stop)
        if proxy is not None:
            await proxy.close()
        if standby is not None:
            await asyncio.to_thread(standby.stop)
            await asyncio.to_thread(cluster.stop)


# ---- output --------------------------------------------------------------------------------------

COLUMNS = [("scenario", "scenario"), ("target", "pooler"), ("clients", "clients"), ("pool_size", "pool"),
           ("fault_s", "fault (s)"), ("commits", "commits"), ("client_errors", "client errors"),
           ("errors_without_cause", "errors w/o cause"), ("outage_s", "longest gap (s)"),
           ("recovered_s", "recovered after (s)"), ("acked_lost", "acked & lost"), ("duplicated", "duplicated"),
           ("in_doubt", "in doubt (committed)"), ("rss", "RSS before→after (MiB)")]


def _cell(run: Run, key: str) -> str:
    if key == "in_doubt":
        return f"{run.in_doubt} ({run.in_doubt_committed})"
    if key == "rss":
        if run.rss_before_kib is None or run.rss_after_kib is None:
            return "?"
        return f"{run.rss_before_kib / 1024:.1f}→{run.rss_after_kib / 1024:.1f}"
    value = getattr(run, key)
    if value is None:
        return "not in the run"
    if key == "client_errors" and run.error_kinds:
        return f"{value} (" + ", ".join(f"{k}×{n}" for k, n in sorted(run.error_kinds.items())) + ")"
    return str(value)


def markdown(runs: list[Run], meta: dict) -> str:
    lines = [f"Run {meta['started_at']} on {meta['host']} ({meta['cpus']} CPUs, shared with other work: "
             f"numbers are indicative), PgBouncer {meta['pgbouncer']}, PostgreSQL {meta['postgres']}; "
             f"`{' '.join(['python -m benchmarks.faults', *meta['argv']])}`.", "",
             "| " + " | ".join(title for _, title in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    for run in runs:
        lines.append("| " + " | ".join(_cell(run, key) for key, _ in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def plot(runs: list[Run], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(dict.fromkeys(run.scenario for run in runs))
    fig, axes = plt.subplots(len(scenarios), 1, figsize=(10, 2.4 * len(scenarios)), squeeze=False)
    colours = {"pgpool": "tab:blue", "pgbouncer": "tab:orange"}
    for ax, name in zip(axes[:, 0], scenarios):
        for run in (r for r in runs if r.scenario == name):
            t = [row[0] for row in run.timeline]
            ax.plot(t, [row[1] * 4 for row in run.timeline], color=colours.get(run.target),
                    label=f"{run.target} commits/s")
            ax.bar(t, [row[2] * 4 for row in run.timeline], width=0.25, color=colours.get(run.target), alpha=0.35,
                   label=f"{run.target} errors/s")
        ax.axvline(0, color="red", linewidth=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("per s")
        ax.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("seconds since the fault started")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _versions() -> tuple[str, str]:
    import subprocess
    from benchmarks.targets import find_pg_bindir, find_pgbouncer
    bouncer = find_pgbouncer()
    pgb = "-"
    if bouncer:
        pgb = subprocess.run([bouncer, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    pg = subprocess.run([str(find_pg_bindir() / "postgres"), "--version"], capture_output=True,
                        text=True).stdout.strip()
    return pgb.replace("PgBouncer ", ""), pg.split()[2] if pg else "?"   # postgres (PostgreSQL) 15.18 (...)


async def main_async(args: argparse.Namespace) -> list[Run]:
    chosen = [s for s in SCENARIOS if not args.only or s.name in args.only]
    cluster = await asyncio.to_thread(lambda: PostgresCluster(max_connections=100,
                                                              settings={"synchronous_commit": "on"}).start())
    runs: list[Run] = []
    try:
        for scenario in chosen:
            for target in args.targets:
                print(f"{scenario.name} / {target} ...", flush=True)
                run = await run_one(scenario, target, args, cluster)
                print(f"  commits {run.commits}, errors {run.client_errors} {run.error_kinds}, longest gap "
                      f"{run.outage_s}s, recovered after {run.recovered_s}s, lost {run.acked_lost}, "
                      f"duplicated {run.duplicated}, in doubt {run.in_doubt}", flush=True)
                runs.append(run)
    finally:
        await asyncio.to_thread(cluster.stop)
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.faults", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--pool-size", type=int, default=16)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--after", type=float, default=4.0)
    parser.add_argument("--targets", type=lambda s: s.split(","), default=["pgpool", "pgbouncer"])
    parser.add_argument("--only", type=lambda s: s.split(","), default=[],
                        help="scenario names: " + ", ".join(s.name for s in SCENARIOS))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/faults"),
                        help="results.json, results.md, timeline.png go here (docs/faults.md quotes them)")
    parser.add_argument("--render", type=Path, metavar="RESULTS.json",
                        help="only re-render the Markdown table and the plot of a saved run into --out")
    args = parser.parse_args(argv)
    if args.render is not None:
        saved = json.loads(args.render.read_text())
        runs = [Run(**{**run, "timeline": [tuple(row) for row in run["timeline"]]}) for run in saved["runs"]]
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.md").write_text(markdown(runs, saved["meta"]))
        plot(runs, args.out / "timeline.png")
        print(markdown(runs, saved["meta"]))
        return 0
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    runs = asyncio.run(main_async(args))
    pgbouncer, postgres = _versions()
    meta = {"started_at": started, "host": platform.node() or "this machine", "cpus": os.cpu_count(),
            "pgbouncer": pgbouncer, "postgres": postgres, "python": sys.version.split()[0],
            "argv": list(argv if argv is not None else sys.argv[1:])}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "runs": [asdict(r) for r in runs]}, indent=1))
    (args.out / "results.md").write_text(markdown(runs, meta))
    plot(runs, args.out / "timeline.png")
    print(markdown(runs, meta))
    print(f"written: {args.out}/results.json, results.md, timeline.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
