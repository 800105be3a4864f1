"""python -m benchmarks.soak --minutes N: steady mixed load with periodic faults; is pgpool flat?

Owns: a bounded soak run on loopback. It starts a throwaway Postgres (or uses
PGPOOL_TEST_DSN, as benchmarks/targets.py does) and pgpool in transaction mode with a pool
of --pool-size servers, then runs for the given time:

- load: asyncpg clients (defaults: statement cache on) doing simple queries, queries with
  parameters, explicitly prepared statements and INSERT transactions with SET LOCAL;
  psycopg clients (default prepare_threshold, so repeated queries become named prepared
  statements) doing the same with commits; one LISTEN client and NOTIFY traffic;
- faults every --fault-interval seconds, in turn: pg_terminate_backend of a random pgpool
  server, an admin console RELOAD, and a client killed in the middle of a transaction;
- samples every --sample-interval seconds: pgpool's RSS (/proc/<pid>/status VmRSS), its
  open fds (/proc/<pid>/fd), SHOW POOLS counts, operations and errors so far.

Client errors are "explained" when they are what a fault must cause: a lost server
connection (SQLSTATE 57P01 / 08006 / 08003, a closed connection, or asyncpg's
"cannot switch to state N; another operation (2) is in progress", which a direct
connection to a terminated backend gives as well) within a few seconds of a
pg_terminate_backend. Anything else is unexplained. At the end it reports the slope of
RSS and fds (least squares over the second half of the samples, per minute), writes
soak.json and soak.png to --out, and exits 1 on unexplained errors or if pgpool died.

Must not: run unbounded (it stops itself), leave processes behind, or touch anything but
the servers it started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import psycopg

from benchmarks.targets import ROLES, PgpoolProcess, start_postgres

TABLE = "pgpool_soak"
EXPLAIN_WINDOW = 5.0             # seconds after a server was terminated in which losing it is expected
LOST_SERVER_STATES = {"57P01", "08006", "08003", "08000"}
ADMIN_USER = "postgres"
ASYNCPG_ERROR_CONSUME = "another operation (2) is in progress"


def read_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def count_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, in value per minute (0 for fewer than 2 points)."""
    n = len(points)
    if n < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return cov / var * 60


def sqlstate_of(error: BaseException) -> str:
    return getattr(error, "sqlstate", None) or getattr(getattr(error, "diag", None), "sqlstate", None) or ""


def describe_error(error: BaseException) -> str:
    """The error and what it masked (an exception raised during another's handling hides it)."""
    parts = []
    seen: BaseException | None = error
    while seen is not None and len(parts) < 4:
        parts.append(f"{type(seen).__name__}: {seen}"[:300])
        seen = seen.__cause__ or seen.__context__
    return " <- ".join(parts)


@dataclass
class Soak:
    pgpool: PgpoolProcess
    backend_dsn: str
    deadline: float
    started: float = field(default_factory=time.monotonic)
    ops: int = 0
    notifications: int = 0
    errors: list[dict] = field(default_factory=list)
    faults: list[dict] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)
    last_terminate: float = -1e9

    @property
    def running(self) -> bool:
        return time.monotonic() < self.deadline

    def now(self) -> float:
        return round(time.monotonic() - self.started, 3)

    def record_error(self, worker: str, error: BaseException) -> None:
        state = sqlstate_of(error)
        lost = state in LOST_SERVER_STATES or isinstance(
            error, (asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError, psycopg.OperationalError,
                    ConnectionError, OSError)) or (
            # asyncpg's own reaction to a FATAL in mid-operation: it happens on a direct connection too.
            isinstance(error, asyncpg.InternalClientError) and ASYNCPG_ERROR_CONSUME in str(error))
        explained = lost and time.monotonic() - self.last_terminate < EXPLAIN_WINDOW
        self.errors.append({"t": self.now(), "worker": worker, "sqlstate": state, "explained": explained,
                            "error": describe_error(error)})

    # ---- load --------------------------------------------------------------------------------

    async def asyncpg_worker(self, n: int) -> None:
        rng = random.Random(n)
        while self.running:
            try:
                conn = await asyncpg.connect(self.pgpool.dsn())
            except Exception as error:
                self.record_error(f"asyncpg-{n}", error)
                await asyncio.sleep(0.2)
                continue
            try:
                stmt = await conn.prepare("SELECT $1::int * 2")
                while self.running:
                    roll = rng.random()
                    if roll < 0.25:
                        await conn.execute("SELECT 1")                       # simple protocol
                    elif roll < 0.5:
                        value = rng.randrange(1000)
                        assert await conn.fetchval("SELECT $1::int + 1", value) == value + 1
                    elif roll < 0.7:
                        value = rng.randrange(1000)
                        assert await stmt.fetchval(value) == value * 2        # explicit prepared statement
                    elif roll < 0.95:
                        async with conn.transaction():
                            await conn.execute("SET LOCAL statement_timeout = '5s'")
                            await conn.execute(f"INSERT INTO {TABLE} (worker, note) VALUES ($1, $2)",
                                               f"asyncpg-{n}", "x" * rng.randrange(200))
                    else:
                        await conn.execute("SET application_name = 'soak'")   # tracked session setting
                    self.ops += 1
                    await asyncio.sleep(rng.random() * 0.01)
            except Exception as error:
                self.record_error(f"asyncpg-{n}", error)
            finally:
                conn.terminate()

    async def psycopg_worker(self, n: int) -> None:
        rng = random.Random(1000 + n)
        while self.running:
            try:
                conn = await psycopg.AsyncConnection.connect(self.pgpool.dsn())
            except Exception as error:
                self.record_error(f"psycopg-{n}", error)
                await asyncio.sleep(0.2)
                continue
            try:
                while self.running:
                    roll = rng.random()
                    if roll < 0.5:
                        value = rng.randrange(1000)
                        cur = await conn.execute("SELECT %s::int + 1", (value,))   # prepared after 5 runs
                        assert (await cur.fetchone())[0] == value + 1
                    elif roll < 0.8:
                        await conn.execute(f"INSERT INTO {TABLE} (worker, note) VALUES (%s, %s)",
                                           (f"psycopg-{n}", "y" * rng.randrange(100)))
                    else:
                        await conn.execute("SELECT count(*) FROM pg_class")
                    await conn.commit()
                    self.ops += 1
                    await asyncio.sleep(rng.random() * 0.01)
            except Exception as error:
                self.record_error(f"psycopg-{n}", error)
            finally:
                await conn.close()

    async def listener(self) -> None:
        """LISTEN pins its client to a server; NOTIFY from other clients must reach it."""
        while self.running:
            try:
                conn = await asyncpg.connect(self.pgpool.dsn())
            except Exception as error:
                self.record_error("listener", error)
                await asyncio.sleep(0.2)
                continue
            try:
                await conn.add_listener("soak", lambda *args: self._notified())
                while self.running and not conn.is_closed():
                    await conn.execute("SELECT 1")
                    await asyncio.sleep(0.2)
                if conn.is_closed():
                    raise asyncpg.ConnectionDoesNotExistError("listener connection closed")
            except Exception as error:
                self.record_error("listener", error)
            finally:
                conn.terminate()

    def _notified(self) -> None:
        self.notifications += 1

    async def notifier(self) -> None:
        while self.running:
            try:
                conn = await asyncpg.connect(self.pgpool.dsn())
                try:
                    while self.running:
                        await conn.execute("NOTIFY soak, 'tick'")
                        await asyncio.sleep(0.5)
                finally:
                    conn.terminate()
            except Exception as error:
                self.record_error("notifier", error)
                await asyncio.sleep(0.2)

    # ---- faults --------------------------------------------------------------------------------

    async def faults_loop(self, interval: float) -> None:
        kinds = ("terminate_server", "reload", "kill_client_in_transaction")
        i = 0
        while True:
            await asyncio.sleep(min(interval, max(0.0, self.deadline - time.monotonic())))
            if not self.running:
                return
            kind = kinds[i % len(kinds)]
            i += 1
            try:
                detail = await getattr(self, kind)()
                self.faults.append({"t": self.now(), "kind": kind, "detail": detail})
            except Exception as error:
                self.faults.append({"t": self.now(), "kind": kind, "failed": f"{type(error).__name__}: {error}"})

    async def terminate_server(self) -> str:
        conn = await asyncpg.connect(self.backend_dsn)
        try:
            pids = [r["pid"] for r in await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE usename = 'app' AND backend_type = 'client backend'")]
            if not pids:
                return "no server to terminate"
            pid = random.choice(pids)
            self.last_terminate = time.monotonic()
            await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
            return f"backend pid {pid} of {len(pids)}"
        finally:
            await conn.close()

    async def reload(self) -> str:
        async with await psycopg.AsyncConnection.connect(
                self.pgpool.dsn(ADMIN_USER, dbname="pgbouncer"), autocommit=True, prepare_threshold=None) as admin:
            await admin.execute("RELOAD")
        return "RELOAD"

    async def kill_client_in_transaction(self) -> str:
        conn = await asyncpg.connect(self.pgpool.dsn())
        await conn.execute("BEGIN")
        await conn.execute(f"INSERT INTO {TABLE} (worker, note) VALUES ('killed', 'never committed')")
        conn.terminate()    # the socket goes away mid-transaction: pgpool must not pool that server dirty
        return "client closed inside BEGIN ... INSERT"

    # ---- sampling ------------------------------------------------------------------------------

    async def sample_loop(self, interval: float) -> None:
        pid = self.pgpool.pid
        admin = await psycopg.AsyncConnection.connect(
            self.pgpool.dsn(ADMIN_USER, dbname="pgbouncer"), autocommit=True, prepare_threshold=None)
        try:
            while True:
                pools = {}
                try:
                    cur = await admin.execute("SHOW POOLS")
                    names = [d.name for d in cur.description]
                    for row in await cur.fetchall():
                        pool = dict(zip(names, row))
                        if pool["database"] == "app":
                            pools = {k: pool[k] for k in ("cl_active", "cl_waiting", "sv_active", "sv_idle",
                                                         "sv_used", "sv_login", "cl_pinned")}
                except psycopg.Error as error:
                    pools = {"error": str(error)}
                if not self.running:
                    return      # clients are leaving now: a sample here is not steady state
                self.samples.append({"t": self.now(), "rss_kb": read_rss_kb(pid), "fds": count_fds(pid),
                                     "ops": self.ops, "errors": len(self.errors),
                                     "notifications": self.notifications, **pools})
                await asyncio.sleep(min(interval, max(0.0, self.deadline - time.monotonic())))
        finally:
            await admin.close()


def summarize(soak: Soak, pgpool_alive: bool, pool_size: int, clients: int, duration: float) -> dict:
    half = [s for s in soak.samples if s["t"] >= soak.samples[-1]["t"] / 2] if soak.samples else []
    unexplained = [e for e in soak.errors if not e["explained"]]
    return {
        "duration_s": round(duration, 1),
        "pool_size": pool_size,
        "clients": clients,
        "operations": soak.ops,
        "ops_per_s": round(soak.ops / max(duration, 1e-9), 1),
        "notifications_received": soak.notifications,
        "faults": {kind: sum(1 for f in soak.faults if f["kind"] == kind and "failed" not in f)
                   for kind in ("terminate_server", "reload", "kill_client_in_transaction")},
        "failed_faults": [f for f in soak.faults if "failed" in f],
        "errors_explained": len(soak.errors) - len(unexplained),
        "errors_unexplained": len(unexplained),
        "unexplained": unexplained[:50],
        "rss_kb_first": soak.samples[0]["rss_kb"] if soak.samples else None,
        "rss_kb_last": soak.samples[-1]["rss_kb"] if soak.samples else None,
        "fds_first": soak.samples[0]["fds"] if soak.samples else None,
        "fds_last": soak.samples[-1]["fds"] if soak.samples else None,
        "rss_slope_kb_per_min": round(slope_per_minute([(s["t"], s["rss_kb"]) for s in half]), 2),
        "fds_slope_per_min": round(slope_per_minute([(s["t"], s["fds"]) for s in half]), 3),
        "pgpool_alive": pgpool_alive,
        "samples": soak.samples,
        "fault_log": soak.faults,
        "errors": soak.errors[:200],
    }


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = report["samples"]
    t = [s["t"] / 60 for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    axes[0].plot(t, [s["rss_kb"] / 1024 for s in samples])
    axes[0].set_ylabel("pgpool RSS (MB)")
    axes[0].set_title(f"soak: {report['duration_s'] / 60:.1f} min, RSS slope {report['rss_slope_kb_per_min']} kB/min, "
                      f"fd slope {report['fds_slope_per_min']}/min", fontsize=9)
    axes[1].plot(t, [s["fds"] for s in samples], label="open fds")
    for key in ("cl_active", "sv_active", "sv_idle"):
        axes[1].plot(t, [s.get(key, 0) for s in samples], label=key)
    axes[1].legend(fontsize=7)
    rates = [0.0] + [(b["ops"] - a["ops"]) / max(b["t"] - a["t"], 1e-9) for a, b in zip(samples, samples[1:])]
    axes[2].plot(t, rates, label="ops/s")
    axes[2].set_ylabel("ops/s")
    axes[2].set_xlabel("minutes")
    for fault in report["fault_log"]:
        color = {"terminate_server": "red", "reload": "green"}.get(fault["kind"], "orange")
        for ax in axes:
            ax.axvline(fault["t"] / 60, color=color, alpha=0.15, linewidth=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


async def run_soak(*, seconds: float, backend, out_dir: Path, pool_size: int = 10, asyncpg_clients: int = 12,
                   psycopg_clients: int = 6, fault_interval: float = 10.0, sample_interval: float = 5.0) -> dict:
    """Run one soak against `backend` (a started benchmarks.targets Postgres); return the report."""
    backend.run_sql(f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigserial PRIMARY KEY, worker text, note text, "
                    f"at timestamptz DEFAULT now()); GRANT ALL ON {TABLE} TO app; "
                    f"GRANT ALL ON SEQUENCE {TABLE}_id_seq TO app; TRUNCATE {TABLE};", dbname="app")
    pgpool = PgpoolProcess(backend_host=backend.host, backend_port=backend.port, users=dict(ROLES),
                           settings={"pool_mode": "transaction", "default_pool_size": pool_size,
                                     "max_client_conn": 500, "admin_users": [ADMIN_USER],
                                     "log_connections": False, "log_disconnections": False})
    pgpool.start()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        soak = Soak(pgpool, backend.dsn(), deadline=time.monotonic() + seconds)
        tasks = [asyncio.create_task(soak.asyncpg_worker(i)) for i in range(asyncpg_clients)]
        tasks += [asyncio.create_task(soak.psycopg_worker(i)) for i in range(psycopg_clients)]
        tasks += [asyncio.create_task(soak.listener()), asyncio.create_task(soak.notifier()),
                  asyncio.create_task(soak.faults_loop(fault_interval)),
                  asyncio.create_task(soak.sample_loop(sample_interval))]
        # Every task ends by itself at the deadline; the bound covers a worker stuck in a query.
        done, pending = await asyncio.wait(tasks, timeout=seconds + 60)
        for task in pending:
            task.cancel()
            soak.errors.append({"t": soak.now(), "worker": "harness", "sqlstate": "", "explained": False,
                                "error": f"task still running 60 s after the deadline: {task.get_coro()!r}"})
        for task in done:
            if task.exception() is not None:
                soak.record_error("harness", task.exception())
        duration = time.monotonic() - soak.started
        report = summarize(soak, pgpool.returncode is None, pool_size,
                           asyncpg_clients + psycopg_clients + 2, duration)
    finally:
        pgpool.stop()
    report["pgpool_log_tail"] = pgpool.log_text().splitlines()[-30:]
    (out_dir / "soak.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    if report["samples"]:
        plot(report, out_dir / "soak.png")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to run (default 10)")
    parser.add_argument("--pool-size", type=int, default=10)
    parser.add_argument("--asyncpg-clients", type=int, default=12)
    parser.add_argument("--psycopg-clients", type=int, default=6)
    parser.add_argument("--fault-interval", type=float, default=10.0, help="seconds between faults")
    parser.add_argument("--sample-interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--out", type=Path, default=Path("reports/soak"), help="where soak.json and soak.png go")
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= 24 * 60:
        parser.error("--minutes must be in (0, 1440]")
    backend = start_postgres()
    try:
        report = asyncio.run(run_soak(seconds=args.minutes * 60, backend=backend, out_dir=args.out,
                                      pool_size=args.pool_size, asyncpg_clients=args.asyncpg_clients,
                                      psycopg_clients=args.psycopg_clients, fault_interval=args.fault_interval,
                                      sample_interval=args.sample_interval))
    finally:
        backend.stop()
    print(f"soak: {report['duration_s']:.0f} s, {report['operations']} operations ({report['ops_per_s']}/s), "
          f"pool_size {report['pool_size']}, {report['clients']} clients, {report['notifications_received']} "
          f"notifications")
    print(f"faults: {report['faults']}; failed faults: {len(report['failed_faults'])}")
    print(f"client errors: {report['errors_explained']} explained by faults, {report['errors_unexplained']} unexplained")
    for error in report["unexplained"][:10]:
        print(f"  unexplained at {error['t']}s {error['worker']}: {error['error']}")
    print(f"RSS {report['rss_kb_first']} -> {report['rss_kb_last']} kB, slope over the second half "
          f"{report['rss_slope_kb_per_min']} kB/min; fds {report['fds_first']} -> {report['fds_last']}, "
          f"slope {report['fds_slope_per_min']}/min; pgpool alive: {report['pgpool_alive']}")
    print(f"wrote {args.out / 'soak.json'} and {args.out / 'soak.png'}")
    return 0 if report["pgpool_alive"] and not report["errors_unexplained"] else 1


if __name__ == "__main__":
    sys.exit(main())
