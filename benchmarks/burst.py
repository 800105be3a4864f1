"""The burst load harness: run the Prefect-like workload against Postgres endpoints.

Owns running a burst against each target in turn (schema setup and cleanup,
client connections, flows, UI pollers, deadlines), the samplers that watch
Postgres (pg_stat_activity) and a pooler's admin console (SHOW POOLS), error
classification, progress lines, and the command line `python -m benchmarks.burst`.
The numbers it produces are plain dicts in the JSON schema documented in
benchmarks/report.py.

Must not: know what a target is (Postgres, pgpool, PgBouncer are all just
DSNs here; benchmarks/targets.py starts processes), render reports, or let a
failing target crash the run (every failure is counted as an error).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import random
import re
import sys
import time
import uuid
from array import array
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from benchmarks import report, workload

ASYNCPG_DEFAULT_STATEMENT_CACHE_SIZE = inspect.signature(asyncpg.connect).parameters["statement_cache_size"].default

# SQLSTATEs the harness assigns when no server ErrorResponse exists (libpq's codes).
CLIENT_CONNECT_FAILED = "08001"  # sqlclient_unable_to_establish_sqlconnection
CLIENT_CONNECTION_LOST = "08006"  # connection_failure
CLIENT_TIMEOUT = "57014"  # query_canceled: the harness gave up waiting
CLIENT_OTHER = "XX000"

_MAX_ERROR_KINDS = 50
_STMT_NAME = re.compile(r"__asyncpg_[a-z]*_?[0-9a-f]+__")


@dataclass
class Target:
    """One endpoint to burst: a label, the DSN clients use, optionally its admin console."""

    name: str
    dsn: str
    admin_dsn: str | None = None
    statement_cache_size: int | None = None  # None: BurstOptions' value
    notes: list[str] = field(default_factory=list)


@dataclass
class BurstOptions:
    flows: int = 200
    tasks_per_flow: int = 5
    clients: int = 100
    waves: int = 1
    wave_interval_s: float = 2.0
    burst_window_s: float = 0.5
    duration_s: float = 30.0
    seed: int = 1
    fail_rate: float = 0.1
    task_work_ms: float = 20.0
    ui_pollers: int | None = None  # None: one per 30 clients
    ui_interval_s: float = 0.5
    statement_cache_size: int | None = None  # None: asyncpg's default
    retries: int = 2
    connect_timeout_s: float = 10.0
    command_timeout_s: float = 10.0
    sample_interval_s: float = 0.2
    monitor_dsn: str | None = None
    progress: bool = True

    def effective_ui_pollers(self) -> int:
        return self.ui_pollers if self.ui_pollers is not None else max(1, self.clients // 30)


def mask_dsn(dsn: str | None) -> str | None:
    """The DSN with its password replaced, for reports and logs."""
    if dsn is None:
        return None
    if "://" in dsn:
        parts = urlsplit(dsn)
        if parts.password is not None:
            host = parts.hostname or ""
            netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
            return urlunsplit(parts._replace(netloc=netloc))
        return dsn
    return re.sub(r"(password\s*=\s*)(\S+)", r"\1***", dsn)


def classify_error(exc: BaseException, connecting: bool = False) -> tuple[str, str, str]:
    """(sqlstate, message, origin) for any failure; origin is 'server' when Postgres or the proxy sent it."""
    if isinstance(exc, asyncpg.PostgresError):
        # Server ErrorResponses carry a severity; errors asyncpg raises itself do not.
        origin = "server" if getattr(exc, "severity", None) else "client"
        sqlstate = getattr(exc, "sqlstate", None) or CLIENT_OTHER
        message = getattr(exc, "message", None) or str(exc)
    elif isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        sqlstate, message, origin = CLIENT_TIMEOUT, "client-side timeout (no reply in time)", "client"
    elif isinstance(exc, (ConnectionRefusedError, ConnectionResetError, BrokenPipeError)) or (
        isinstance(exc, OSError) and not isinstance(exc, asyncpg.InterfaceError)
    ):
        sqlstate = CLIENT_CONNECT_FAILED if connecting else CLIENT_CONNECTION_LOST
        message, origin = f"{type(exc).__name__}: {exc}", "client"
    elif isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc).lower():
        sqlstate, message, origin = CLIENT_CONNECTION_LOST, str(exc), "client"
    else:
        sqlstate, message, origin = CLIENT_OTHER, f"{type(exc).__name__}: {exc}", "client"
    message = _STMT_NAME.sub("__asyncpg_stmt_N__", " ".join(message.split()))[:300]
    return sqlstate, message, origin


class Recorder:
    """Everything measured for one target; times are seconds since `t0` (the connect phase start)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.burst_start = 0.0
        self.burst_end: float | None = None
        self.ends = {op: array("d") for op in workload.OP_TYPES}
        self.latencies = {op: array("d") for op in workload.OP_TYPES}
        self.errors: dict[tuple[str, str, str], Counter] = {}
        self.error_total = 0
        self.flows_completed = 0
        self.flows_failed = 0
        self.clients_connected = 0
        self.server_samples: list[dict] = []
        self.pool_samples: list[dict] = []
        self.max_connections: int | None = None
        self.notes: list[str] = []

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def record(self, op: str, started: float, ended: float) -> None:
        self.ends[op].append(ended - self.t0)
        self.latencies[op].append(ended - started)

    def record_error(self, op: str, exc: BaseException) -> None:
        key = classify_error(exc, connecting=op == workload.CONNECT)
        if key not in self.errors and len(self.errors) >= _MAX_ERROR_KINDS:
            key = (CLIENT_OTHER, "(more distinct errors than the report keeps)", "client")
        self.errors.setdefault(key, Counter())[op] += 1
        self.error_total += 1

    def transitions(self) -> int:
        return sum(len(self.latencies[op]) for op in workload.TRANSITION_OPS)


class Client:
    """One client connection, like one connection of an API replica's SQLAlchemy pool:
    used by one request at a time, (re)connected lazily after a failure."""

    __slots__ = ("index", "conn", "lock", "_connect")

    def __init__(self, index: int, connect: Callable) -> None:
        self.index = index
        self.conn: asyncpg.Connection | None = None
        self.lock = asyncio.Lock()
        self._connect = connect

    async def ensure_connected(self, rec: Recorder) -> bool:
        if self.conn is not None and not self.conn.is_closed():
            return True
        started = time.perf_counter()
        conn = None
        try:
            conn = await self._connect()
            await workload.warm_up(conn)
        except Exception as exc:  # every failure is data, never a crash
            if conn is not None:
                conn.terminate()
            rec.record_error(workload.CONNECT, exc)
            return False
        self.conn = conn
        rec.record(workload.CONNECT, started, time.perf_counter())
        return True

    async def call(self, rec: Recorder, op: str, func, args: tuple) -> tuple[bool, object]:
        """Run one transaction function; (True, its result) or (False, None) after recording the error."""
        async with self.lock:
            if not await self.ensure_connected(rec):
                return False, None
            started = time.perf_counter()
            try:
                value = await func(self.conn, *args)
            except Exception as exc:
                rec.record_error(op, exc)
                if self.conn is not None and self.conn.is_closed():
                    self.conn = None
                return False, None
            rec.record(op, started, time.perf_counter())
            return True, value

    def terminate(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.terminate()

    async def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is None or conn.is_closed():
            return
        try:
            await asyncio.wait_for(conn.close(), 2.0)
        except Exception:
            conn.terminate()


def connector(dsn: str, opts: BurstOptions, statement_cache_size: int | None, **extra) -> Callable:
    kwargs = dict(timeout=opts.connect_timeout_s, command_timeout=opts.command_timeout_s, **extra)
    if statement_cache_size is not None:
        kwargs["statement_cache_size"] = statement_cache_size
    return lambda: asyncpg.connect(dsn, **kwargs)


async def _sleep_until(rec: Recorder, at: float) -> None:
    delay = at - rec.now()
    if delay > 0:
        await asyncio.sleep(delay)


async def _run_flow(rec: Recorder, client: Client, plan: workload.FlowPlan, opts: BurstOptions) -> None:
    await _sleep_until(rec, rec.burst_start + plan.start_offset_s)
    for step in plan.steps:
        if step.work_s:
            await asyncio.sleep(step.work_s)
        # Like Prefect's client retrying a failed API call, with a short backoff.
        for attempt in range(opts.retries + 1):
            ok, _ = await client.call(rec, step.op, step.func, step.args)
            if ok:
                break
            if attempt < opts.retries:
                await asyncio.sleep(0.05 * 2**attempt)
        else:
            rec.flows_failed += 1
            return
    rec.flows_completed += 1


async def _poll_ui(rec: Recorder, clients: list[Client], opts: BurstOptions, rng: random.Random,
                   done: asyncio.Event, deadline: float) -> None:
    """The UI dashboard: list recent flow runs, then count their task runs by state."""
    max_polls = int(opts.duration_s / opts.ui_interval_s) + 2
    await asyncio.sleep(rng.uniform(0, opts.ui_interval_s))
    for _ in range(max_polls):
        if done.is_set() or rec.now() >= deadline:
            return
        client = clients[rng.randrange(len(clients))]
        ok, runs = await client.call(rec, workload.READ_FLOW_RUNS, workload.read_flow_runs, ())
        if ok and runs:
            await client.call(rec, workload.COUNT_TASK_RUNS, workload.count_task_runs, (runs,))
        try:
            await asyncio.wait_for(done.wait(), opts.ui_interval_s)
        except asyncio.TimeoutError:
            pass


SERVER_CONNECTIONS_SQL = """
SELECT count(*) AS total,
       count(*) FILTER (WHERE state = 'active') AS active,
       count(*) FILTER (WHERE state = 'idle') AS idle,
       count(*) FILTER (WHERE state LIKE 'idle in transaction%') AS idle_in_transaction
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
"""


class ServerConnectionSampler:
    """Counts Postgres' client backends (the server connections that clients or a pooler hold)
    every ~200 ms over one monitor connection, plus once on demand at the end of the burst."""

    def __init__(self, rec: Recorder, dsn: str, opts: BurstOptions) -> None:
        self.rec, self.dsn, self.opts = rec, dsn, opts
        self.conn: asyncpg.Connection | None = None
        self.lock = asyncio.Lock()

    async def start(self) -> None:
        try:
            # No named statements: the monitor DSN may point at a pooler without support for them.
            self.conn = await asyncpg.connect(self.dsn, timeout=self.opts.connect_timeout_s, command_timeout=5,
                                              statement_cache_size=0)
            self.rec.max_connections = int(await self.conn.fetchval("SHOW max_connections"))
        except Exception as exc:
            self._give_up("not sampled: monitor connection failed", exc)

    def _give_up(self, why: str, exc: BaseException) -> None:
        sqlstate, message, _ = classify_error(exc)
        self.rec.notes.append(f"server connections {why} ({sqlstate} {message})")
        if self.conn is not None:
            self.conn.terminate()
            self.conn = None

    async def sample(self) -> None:
        async with self.lock:
            if self.conn is None:
                return
            try:
                row = await self.conn.fetchrow(SERVER_CONNECTIONS_SQL)
            except Exception as exc:
                self._give_up("sampling stopped", exc)
                return
            self.rec.server_samples.append({"t": round(self.rec.now(), 3), **{k: int(v) for k, v in row.items()}})

    async def run(self, stop: asyncio.Event) -> None:
        # Bounded even if nobody sets `stop`: the run itself is bounded by duration + setup.
        max_samples = int((self.opts.duration_s + self.opts.connect_timeout_s + 60) / self.opts.sample_interval_s)
        for _ in range(max_samples):
            if self.conn is None:
                return
            await self.sample()
            try:
                await asyncio.wait_for(stop.wait(), self.opts.sample_interval_s)
                return
            except asyncio.TimeoutError:
                pass

    async def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            await _close_quietly(conn)


async def _sample_pools(rec: Recorder, admin_dsn: str, opts: BurstOptions, stop: asyncio.Event) -> None:
    """Sample the pooler's admin console (PgBouncer-compatible SHOW POOLS): waiting clients and max wait."""
    import psycopg

    try:
        # ClientCursor sends the simple Query message; the admin console speaks nothing else.
        conn = await psycopg.AsyncConnection.connect(
            admin_dsn, autocommit=True, cursor_factory=psycopg.AsyncClientCursor,
            connect_timeout=max(1, int(opts.connect_timeout_s)))
    except Exception as exc:
        rec.notes.append(f"admin console not sampled: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
        return
    try:
        max_samples = int((opts.duration_s + opts.connect_timeout_s + 60) / opts.sample_interval_s)
        for _ in range(max_samples):
            try:
                cur = await asyncio.wait_for(conn.execute("SHOW POOLS"), 5)
                names = [c.name for c in cur.description or []]
                rows = [dict(zip(names, r, strict=True)) for r in await cur.fetchall()]
            except Exception as exc:
                rec.notes.append(f"admin console sampling stopped: {type(exc).__name__}: {str(exc)[:200]}")
                return
            rec.pool_samples.append(_summarize_pools(rec.now(), rows))
            try:
                await asyncio.wait_for(stop.wait(), opts.sample_interval_s)
                return
            except asyncio.TimeoutError:
                pass
    finally:
        try:
            await asyncio.wait_for(conn.close(), 2)
        except Exception:
            pass


def _summarize_pools(t: float, rows: list[dict]) -> dict:
    def num(row, key) -> int:
        value = row.get(key)
        return int(value) if value not in (None, "") else 0

    pools = [r for r in rows if r.get("database") != "pgbouncer"]
    maxwait = max((num(r, "maxwait") + num(r, "maxwait_us") / 1e6 for r in pools), default=0.0)
    return {
        "t": round(t, 3),
        "cl_active": sum(num(r, "cl_active") for r in pools),
        "cl_waiting": sum(num(r, "cl_waiting") for r in pools),
        "sv_active": sum(num(r, "sv_active") for r in pools),
        "sv_idle": sum(num(r, "sv_idle") for r in pools),
        "sv_used": sum(num(r, "sv_used") for r in pools),
        "maxwait_s": round(maxwait, 6),
        # pgpool's counter of session-state audits; PgBouncer has no such column.
        "session_audits": sum(num(r, "session_audits") for r in pools)
        if any("session_audits" in r for r in pools) else None,
    }


async def _close_quietly(conn) -> None:
    try:
        await asyncio.wait_for(conn.close(), 2)
    except Exception:
        conn.terminate()


async def _setup_schema(rec: Recorder, target: Target, opts: BurstOptions, cache: int | None,
                        flow_ids: list[uuid.UUID]) -> bool:
    started = time.perf_counter()
    try:
        conn = await connector(target.dsn, opts, cache)()
    except Exception as exc:
        rec.record_error(workload.CONNECT, exc)
        return False
    rec.record(workload.CONNECT, started, time.perf_counter())
    try:
        await workload.create_schema(conn, flow_ids)
        return True
    except Exception as exc:
        sqlstate, message, _ = classify_error(exc)
        rec.notes.append(f"schema setup failed: {sqlstate} {message}")
        rec.record_error("setup", exc)
        return False
    finally:
        await _close_quietly(conn)


async def _drop_schema(rec: Recorder, target: Target, opts: BurstOptions, cache: int | None) -> None:
    try:
        conn = await connector(target.dsn, opts, cache)()
    except Exception as exc:
        rec.notes.append(f"schema not dropped (connect failed): {classify_error(exc)[1]}")
        return
    try:
        await workload.drop_schema(conn)
    except Exception as exc:
        rec.notes.append(f"schema not dropped: {classify_error(exc)[1]}")
    finally:
        await _close_quietly(conn)


def _progress_line(target: Target, rec: Recorder, planned: int) -> str:
    t = rec.now() - rec.burst_start
    done = rec.flows_completed + rec.flows_failed
    transitions = rec.transitions()
    rate = transitions / t if t > 0 else 0.0
    parts = [f"[{target.name}] {t:5.1f}s flows {done}/{planned}", f"transitions {transitions} ({rate:.0f}/s)",
             f"errors {rec.error_total}"]
    if rec.server_samples:
        parts.append(f"server conns {rec.server_samples[-1]['total']}")
    if rec.pool_samples:
        parts.append(f"waiting {rec.pool_samples[-1]['cl_waiting']}")
    return ", ".join(parts)


async def _progress(target: Target, rec: Recorder, planned: int, done: asyncio.Event, deadline: float,
                    out) -> None:
    for _ in range(int(deadline) + 2):
        try:
            await asyncio.wait_for(done.wait(), 1.0)
            return
        except asyncio.TimeoutError:
            print(_progress_line(target, rec, planned), file=out, flush=True)
        if rec.now() >= deadline:
            return


async def run_target(target: Target, opts: BurstOptions, *, out=sys.stderr) -> dict:
    """Run one burst against `target` and return its result dict (see report.py for the schema).

    Never raises for target failures: they become errors in the result."""
    rec = Recorder()
    cache = target.statement_cache_size if target.statement_cache_size is not None else opts.statement_cache_size
    monitor_dsn = opts.monitor_dsn or target.dsn
    flow_ids = [uuid.uuid4() for _ in range(max(1, min(10, opts.flows)))]
    plans = workload.plan_flows(
        flows=opts.flows, tasks_per_flow=opts.tasks_per_flow, flow_ids=flow_ids, waves=opts.waves,
        wave_interval_s=opts.wave_interval_s, burst_window_s=opts.burst_window_s, fail_rate=opts.fail_rate,
        task_work_ms=opts.task_work_ms, seed=opts.seed,
    )
    status = "finished"
    clients: list[Client] = []
    running: list[asyncio.Task] = []  # flows and helpers, cancelled on the way out
    monitor = ServerConnectionSampler(rec, monitor_dsn, opts)
    stop_sampling = asyncio.Event()
    samplers: list[asyncio.Task] = []
    started_at = datetime.now(timezone.utc)
    if opts.progress:
        print(f"[{target.name}] {mask_dsn(target.dsn)}: {opts.flows} flows x {opts.tasks_per_flow} tasks, "
              f"{opts.clients} clients, statement_cache_size="
              f"{cache if cache is not None else ASYNCPG_DEFAULT_STATEMENT_CACHE_SIZE}", file=out, flush=True)
    try:
        if not await _setup_schema(rec, target, opts, cache, flow_ids):
            status = "unreachable"
            rec.burst_end = rec.burst_start  # nothing was burst: no elapsed time, no rates
            return _result(target, opts, rec, plans, cache, status, started_at)
        await monitor.start()
        samplers.append(asyncio.create_task(monitor.run(stop_sampling)))
        if target.admin_dsn:
            samplers.append(asyncio.create_task(_sample_pools(rec, target.admin_dsn, opts, stop_sampling)))

        # Connect phase: every client connects at once, as API replicas do at startup.
        connect = connector(target.dsn, opts, cache)
        clients = [Client(i, connect) for i in range(opts.clients)]
        connected = await asyncio.gather(*(c.ensure_connected(rec) for c in clients))
        rec.clients_connected = sum(connected)

        rec.burst_start = rec.now()
        deadline = rec.burst_start + opts.duration_s
        done = asyncio.Event()
        rng = random.Random(opts.seed)
        flow_tasks = [asyncio.create_task(_run_flow(rec, clients[p.index % len(clients)], p, opts)) for p in plans]
        helpers = [asyncio.create_task(_poll_ui(rec, clients, opts, rng, done, deadline))
                   for _ in range(opts.effective_ui_pollers())]
        if opts.progress:
            helpers.append(asyncio.create_task(_progress(target, rec, len(plans), done, deadline, out)))
        running += flow_tasks + helpers
        _, pending = await asyncio.wait(flow_tasks, timeout=max(0.0, deadline - rec.now()))
        if pending:
            status = "deadline"
            rec.notes.append(f"{len(pending)} flows unfinished when the {opts.duration_s:g}s duration ran out")
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        rec.burst_end = rec.now()
        done.set()
        await monitor.sample()  # the connections at the very end, however short the burst
        await asyncio.wait(helpers, timeout=5)
    finally:
        if sys.exc_info()[1] is not None:
            # Interrupted (Ctrl-C, cancellation): abort the sockets first, or every task cancelled
            # mid-query makes asyncpg open a connection for a CancelRequest while the loop shuts down.
            for client in clients:
                client.terminate()
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        stop_sampling.set()
        if samplers:
            await asyncio.wait(samplers, timeout=5)
            for task in samplers:
                task.cancel()
            await asyncio.gather(*samplers, return_exceptions=True)
        await monitor.close()
        if status != "unreachable":
            try:
                await asyncio.wait_for(_drop_schema(rec, target, opts, cache), opts.connect_timeout_s + 5)
            except asyncio.TimeoutError:
                rec.notes.append("schema not dropped: timed out")
    result = _result(target, opts, rec, plans, cache, status, started_at)
    if opts.progress:
        print(report.summary_line(result), file=out, flush=True)
    return result


def _result(target: Target, opts: BurstOptions, rec: Recorder, plans, cache, status, started_at) -> dict:
    planned = len(plans)
    return report.build_target_result(
        name=target.name,
        dsn=mask_dsn(target.dsn),
        admin_dsn=mask_dsn(target.admin_dsn),
        monitor_dsn=mask_dsn(opts.monitor_dsn or target.dsn),
        status=status,
        statement_cache_size=cache if cache is not None else ASYNCPG_DEFAULT_STATEMENT_CACHE_SIZE,
        started_at=started_at.isoformat(),
        burst_start_s=rec.burst_start,
        burst_end_s=rec.burst_end if rec.burst_end is not None else rec.now(),
        flows_planned=planned,
        flows_completed=rec.flows_completed,
        flows_failed=rec.flows_failed,
        clients_requested=opts.clients,
        clients_connected=rec.clients_connected,
        latencies={op: rec.latencies[op] for op in workload.OP_TYPES},
        ends={op: rec.ends[op] for op in workload.OP_TYPES},
        errors=[
            {"sqlstate": k[0], "message": k[1], "origin": k[2], "count": sum(c.values()), "ops": dict(c)}
            for k, c in rec.errors.items()
        ],
        server_samples=rec.server_samples,
        max_connections=rec.max_connections,
        pool_samples=rec.pool_samples if target.admin_dsn else None,
        notes=[*target.notes, *rec.notes],
    )


async def run_burst(targets: list[Target], opts: BurstOptions, *, out=sys.stderr) -> dict:
    """Run the same burst against every target, one after another; returns the whole report dict."""
    started = datetime.now(timezone.utc)
    results = [await run_target(t, opts, out=out) for t in targets]
    return report.build_report(config=config_dict(opts), targets=results, started_at=started.isoformat())


def config_dict(opts: BurstOptions) -> dict:
    cfg = asdict(opts)
    cfg["monitor_dsn"] = mask_dsn(opts.monitor_dsn)
    cfg["ui_pollers"] = opts.effective_ui_pollers()
    cfg["statement_cache_size"] = (opts.statement_cache_size if opts.statement_cache_size is not None
                                   else ASYNCPG_DEFAULT_STATEMENT_CACHE_SIZE)
    del cfg["progress"]
    return cfg


def install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


# libpq connection keywords: "host=... port=..." is a DSN, not a NAME=DSN label.
_LIBPQ_KEYWORDS = {"host", "hostaddr", "port", "dbname", "user", "password", "passfile", "options",
                   "connect_timeout", "application_name", "sslmode", "service", "target_session_attrs"}


def parse_named(value: str, default_prefix: str, index: int) -> tuple[str, str]:
    """`NAME=DSN` (labelled target) or a bare DSN (labelled target1, target2, ...)."""
    head, sep, tail = value.partition("=")
    if sep and head not in _LIBPQ_KEYWORDS and re.fullmatch(r"[A-Za-z0-9_.-]+", head) and tail:
        return head, tail
    return f"{default_prefix}{index}", value


def add_workload_arguments(parser: argparse.ArgumentParser, defaults: BurstOptions) -> None:
    """The workload knobs shared by `benchmarks.burst` and `benchmarks.demo`."""
    a = parser.add_argument
    a("--flows", type=int, default=defaults.flows, help="flows started per target (default %(default)s)")
    a("--tasks-per-flow", type=int, default=defaults.tasks_per_flow, help="task runs per flow (default %(default)s)")
    a("--clients", type=int, default=defaults.clients,
      help="client connections, e.g. 300 = 5 API replicas x 60; flows are spread over them (default %(default)s)")
    a("--waves", type=int, default=defaults.waves, help="bursts the flows are split into (default %(default)s)")
    a("--wave-interval", type=float, default=defaults.wave_interval_s, dest="wave_interval_s",
      help="seconds between waves (default %(default)s)")
    a("--burst-window", type=float, default=defaults.burst_window_s, dest="burst_window_s",
      help="the flows of one wave start within this many seconds (default %(default)s)")
    a("--duration", type=float, default=defaults.duration_s, dest="duration_s",
      help="hard time limit of one target's burst in seconds; unfinished flows are reported (default %(default)s)")
    a("--seed", type=int, default=defaults.seed, help="random seed of the workload plan (default %(default)s)")
    a("--fail-rate", type=float, default=defaults.fail_rate,
      help="fraction of task runs that fail once and are retried (default %(default)s)")
    a("--task-work-ms", type=float, default=defaults.task_work_ms,
      help="simulated task work between state changes, up to this many ms (default %(default)s)")
    a("--ui-pollers", type=int, default=defaults.ui_pollers,
      help="UI dashboards polling flow runs and task counts (default: one per 30 clients)")
    a("--ui-interval", type=float, default=defaults.ui_interval_s, dest="ui_interval_s",
      help="seconds between one UI poller's polls (default %(default)s)")
    a("--statement-cache-size", action="append", default=[], metavar="[NAME=]N",
      help=f"asyncpg statement_cache_size, for all targets or (NAME=N, repeatable) one target; default: "
           f"asyncpg's default, {ASYNCPG_DEFAULT_STATEMENT_CACHE_SIZE} (named prepared statements). "
           "Use 0 for a target without prepared statement support, e.g. PgBouncer before 1.21")
    a("--retries", type=int, default=defaults.retries, help="retries of a failed API call (default %(default)s)")
    a("--quiet", action="store_true", help="no progress lines")


def statement_cache_sizes(values: list[str]) -> tuple[int | None, dict[str, int]]:
    """--statement-cache-size values: (the global one or None, {target name: size})."""
    default, per_target = None, {}
    for value in values:
        name, sep, size = value.rpartition("=")
        if not size.isdigit():
            raise argparse.ArgumentTypeError(f"--statement-cache-size {value!r}: expected N or NAME=N")
        if sep:
            per_target[name] = int(size)
        else:
            default = int(size)
    return default, per_target


def targets_from_args(args: argparse.Namespace) -> list[Target]:
    """Targets from --dsn, with --admin-dsn NAME=DSN and --statement-cache-size NAME=N attached;
    ValueError names the option that does not fit."""
    targets = [Target(*parse_named(v, "target", i + 1)) for i, v in enumerate(args.dsn)]
    by_name = {t.name: t for t in targets}
    if len(by_name) != len(targets):
        raise ValueError("--dsn: two targets have the same name")
    for value in args.admin_dsn:
        name, dsn = parse_named(value, "target", 1)
        if name not in by_name:
            raise ValueError(f"--admin-dsn {name}=...: no --dsn named {name!r} (have: {', '.join(by_name)})")
        by_name[name].admin_dsn = dsn
    try:
        _, per_target = statement_cache_sizes(args.statement_cache_size)
    except argparse.ArgumentTypeError as exc:
        raise ValueError(str(exc)) from None
    for name, size in per_target.items():
        if name not in by_name:
            raise ValueError(f"--statement-cache-size {name}=...: no --dsn named {name!r}")
        by_name[name].statement_cache_size = size
    return targets


def options_from_args(args: argparse.Namespace, **overrides) -> BurstOptions:
    fields = {f for f in BurstOptions.__dataclass_fields__}
    values = {k: v for k, v in vars(args).items() if k in fields}
    try:
        values["statement_cache_size"] = statement_cache_sizes(args.statement_cache_size)[0]
    except argparse.ArgumentTypeError as exc:
        raise ValueError(str(exc)) from None
    values["progress"] = not args.quiet
    values.update(overrides)
    return BurstOptions(**values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.burst",
        description="Burst a Prefect-like state-change workload at Postgres endpoints and report the results.",
    )
    parser.add_argument("--dsn", action="append", required=True, metavar="[NAME=]DSN",
                        help="target to burst (repeatable, run one after another)")
    parser.add_argument("--admin-dsn", action="append", default=[], metavar="NAME=DSN",
                        help="admin console of the target NAME (SHOW POOLS is sampled: cl_waiting, maxwait)")
    parser.add_argument("--monitor-dsn", help="superuser DSN of the Postgres behind the targets, for "
                                              "pg_stat_activity sampling (default: the first target's DSN)")
    add_workload_arguments(parser, BurstOptions())
    parser.add_argument("--json", type=Path, help="write the JSON report to this file")
    parser.add_argument("--report", type=Path, metavar="DIR", help="write JSON, Markdown, HTML and PNG plots here")
    args = parser.parse_args(argv)

    try:
        targets = targets_from_args(args)
        opts = options_from_args(args, monitor_dsn=args.monitor_dsn or targets[0].dsn)
    except ValueError as exc:
        parser.error(str(exc))

    install_uvloop()
    result = asyncio.run(run_burst(targets, opts))
    print()
    print(report.render_table(result))
    if args.json:
        report.write_json(result, args.json)
        print(f"JSON: {args.json}")
    if args.report:
        files = report.write_report(result, args.report)
        print(f"report: {files['markdown']} (also {files['html'].name}, {len(files['plots'])} plots)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
