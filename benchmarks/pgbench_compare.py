"""pgbench select-only throughput through pgpool vs PgBouncer vs direct Postgres, measured in one run.

Owns the comparison: start the targets (via benchmarks/targets.py), run
`pgbench -S` against each, interleaved round by round so drift on the machine
hits every target alike, and report median TPS and the ratios between
targets, with each pooler's CPU per transaction (utime + stime from /proc/PID/stat over
the run, divided by the transactions pgbench counted). Optionally measures a pooler's memory per idle client. It must not
start servers itself (targets.py does) nor judge results (no pass/fail): a
target that fails to start or to run is reported as failed and the others go on.

    python -m benchmarks.pgbench_compare [--clients 100] [--pool-size 20] [--seconds 10]
        [--rounds 3] [--mode simple,extended,prepared] [--idle-clients 10000] [--json FILE]
        [--tls] [--burst-clients 300] [--targets direct,pgpool,pgbouncer,pgpool-pure] [--pgpool-env K=V]

--tls adds pgpool-tls and pgbouncer-tls: the same poolers with TLS on both sides (pgbench with
sslmode=require, client_tls_sslmode=require, server_tls_sslmode=require against a cluster with
ssl = on), interleaved with the clear-text ones, so the table shows the pgpool/PgBouncer ratio
with and without TLS from the same run; then the connect time (p50/p99) of a burst of
--burst-clients clients logging in at once through each pooler, where the TLS handshake shows.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import resource
import shutil
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.targets import (
    APP_DATABASE,
    ROLES,
    ExternalPostgres,
    PgBouncerProcess,
    PgpoolProcess,
    PostgresCluster,
    TlsFiles,
    find_client_program,
    find_pgbouncer,
)

TARGETS = ("direct", "pgpool", "pgbouncer", "pgpool-tls", "pgbouncer-tls", "pgpool-w2", "pgpool-pure")
TLS_TARGETS = ("pgpool-tls", "pgbouncer-tls")
MODES = ("simple", "extended", "prepared")
RATIOS = (("pgpool", "direct"), ("pgpool", "pgbouncer"), ("pgbouncer", "direct"), ("pgpool-tls", "pgbouncer-tls"),
          ("pgpool-tls", "pgpool"), ("pgpool-w2", "pgpool"), ("pgpool", "pgpool-pure"), ("pgpool-pure", "pgbouncer"))
# TLS targets come with --tls (which makes their certificates); w2 and pure are asked for by name.
DEFAULT_TARGETS = tuple(t for t in TARGETS if t not in (*TLS_TARGETS, "pgpool-w2", "pgpool-pure"))
USER = "app"

# pgbench 13+ says "without initial connection time"; older ones "excluding connections establishing".
TPS_RE = re.compile(r"^tps = ([0-9.]+) \((?:without initial connection time|excluding connections establishing)\)", re.M)
XACTS_RE = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Target:
    name: str
    host: str = ""
    port: int = 0
    proc: PgpoolProcess | PgBouncerProcess | None = None
    error: str | None = None  # why it could not start
    tls: bool = False         # clients connect with sslmode=require


@dataclass
class Cell:
    """One (mode, target) pair: TPS per successful round, errors of the failed ones."""

    tps: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)  # the pooler process's CPU per transaction
    errors: list[str] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return statistics.median(self.tps) if self.tps else None

    @property
    def median_cpu_us(self) -> float | None:
        return statistics.median(self.cpu_us) if self.cpu_us else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pgbench_compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", help="superuser DSN of an existing server (default: a throwaway cluster)")
    parser.add_argument("--clients", type=int, default=100, help="pgbench clients (-c)")
    parser.add_argument("--threads", type=int, default=None, help="pgbench threads (-j), default min(clients, CPUs)")
    parser.add_argument("--pool-size", type=int, default=20, help="default_pool_size of both poolers")
    parser.add_argument("--seconds", type=int, default=10, help="duration of one pgbench run (-T)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each runs every mode against every target")
    parser.add_argument("--scale", type=int, default=10, help="pgbench -i scale factor")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of direct pgbench before round 1 (not counted)")
    parser.add_argument("--mode", default=",".join(MODES), help="comma-separated pgbench -M modes")
    parser.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                        help="comma-separated subset of " + ",".join(TARGETS) + " (pgpool-pure: pgpool with "
                             "PGPOOL_PURE_PYTHON=1, beside the compiled build)")
    parser.add_argument("--idle-clients", type=int, default=0, help="also open N idle clients per pooler, report RSS/client")
    parser.add_argument("--pgpool-env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment of the pgpool processes (repeatable); target pgpool-pure adds "
                             "PGPOOL_PURE_PYTHON=1 (the compiled modules off) to it")
    parser.add_argument("--json", type=Path, help="write all results to this file")
    parser.add_argument("--tls", action="store_true",
                        help="also run pgpool and pgbouncer with TLS on both sides (targets pgpool-tls, pgbouncer-tls)")
    parser.add_argument("--burst-clients", type=int, default=300,
                        help="with --tls: clients logging in at once per pooler for the connect-time percentiles "
                             "(0 = skip)")
    args = parser.parse_args(argv)
    if any("=" not in item for item in args.pgpool_env):
        parser.error("--pgpool-env expects KEY=VALUE")
    args.pgpool_env = dict(item.split("=", 1) for item in args.pgpool_env)
    args.modes = [m for m in args.mode.split(",") if m]
    args.target_names = [t for t in args.targets.split(",") if t]
    if args.tls:
        args.target_names += [t for t in TLS_TARGETS if t not in args.target_names]
    if not args.modes or not args.target_names:
        parser.error("--mode and --targets need at least one entry")
    for mode in args.modes:
        if mode not in MODES:
            parser.error(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    for name in args.target_names:
        if name not in TARGETS:
            parser.error(f"unknown target {name!r}; choose from {', '.join(TARGETS)}")
    args.threads = args.threads or max(1, min(args.clients, os.cpu_count() or 1))
    return args


def raise_nofile_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit; the poolers we start inherit it. Returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def pgbench_env(tls: bool = False) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = ROLES[USER]
    env["PGSSLMODE"] = "require" if tls else "disable"
    return env


def run_pgbench(pgbench: str, host: str, port: int, extra: list[str], timeout: float, tls: bool = False) -> str:
    cmd = [pgbench, "-h", host, "-p", str(port), "-U", USER, *extra, APP_DATABASE]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, env=pgbench_env(tls), timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"pgbench did not finish within {timeout:.0f}s") from None
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines() or [""]
        # The first line names the cause; the rest repeat it for other clients, then the verdict.
        summary = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
        raise RuntimeError(f"pgbench exit code {result.returncode}: {summary}")
    return result.stdout


def read_cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its live children (`--workers`), from /proc/PID/stat
    (fields 14 and 15, after the comm in parentheses; field 4 is the parent)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def measure_tps(pgbench: str, target: Target, mode: str, args: argparse.Namespace,
                seconds: int) -> tuple[float, float | None]:
    """TPS of one pgbench run, and the pooler's CPU microseconds per transaction (None for direct)."""
    extra = ["-n", "-S", "-M", mode, "-c", str(args.clients), "-j", str(args.threads), "-T", str(seconds)]
    pid = target.proc.pid if target.proc is not None else None
    cpu_before = read_cpu_seconds(pid) if pid else 0.0
    out = run_pgbench(pgbench, target.host, target.port, extra, timeout=seconds + 120, tls=target.tls)
    cpu = read_cpu_seconds(pid) - cpu_before if pid else None
    match = TPS_RE.search(out)
    if not match:
        raise RuntimeError(f"no tps line in pgbench output: {out.strip()[-300:]}")
    xacts = XACTS_RE.search(out)
    cpu_us = cpu * 1e6 / int(xacts.group(1)) if cpu is not None and xacts and int(xacts.group(1)) else None
    return float(match.group(1)), cpu_us


class BenchCerts:
    """A throwaway CA, Postgres' certificate and the poolers' certificate, as files both poolers can read."""

    def __init__(self) -> None:
        import trustme   # a dev dependency: only the TLS mode needs it

        self.dir = Path(tempfile.mkdtemp(prefix="pgbench-tls-"))
        os.chmod(self.dir, 0o755)   # PgBouncer runs as an unprivileged user
        ca = trustme.CA()
        server = ca.issue_cert("localhost", "127.0.0.1")
        self.postgres = TlsFiles(server.private_key_and_cert_chain_pem.bytes().decode(),
                                 server.private_key_pem.bytes().decode(), only=False)
        self.cert_file, self.key_file = self.dir / "pooler.crt", self.dir / "pooler.key"
        self.cert_file.write_bytes(server.cert_chain_pems[0].bytes())
        self.key_file.write_bytes(server.private_key_pem.bytes())
        os.chmod(self.key_file, 0o644)   # a throwaway key, read by the unprivileged PgBouncer

    def pooler_settings(self) -> dict[str, object]:
        return {"client_tls_sslmode": "require", "client_tls_cert_file": str(self.cert_file),
                "client_tls_key_file": str(self.key_file), "server_tls_sslmode": "require"}

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def start_target(name: str, pg: PostgresCluster | ExternalPostgres, args: argparse.Namespace,
                 certs: BenchCerts | None = None) -> Target:
    if name == "direct":
        return Target(name, pg.host, pg.port)
    settings: dict[str, object] = {
        "pool_mode": "transaction",
        "default_pool_size": args.pool_size,
        "max_client_conn": args.clients + args.idle_clients + args.burst_clients + 100,
        # Same for both: no TLS unless this is a TLS target (pgpool's default is prefer, PgBouncer 1.18's disable).
        "server_tls_sslmode": "disable",
    }
    tls = name in TLS_TARGETS
    if tls:
        assert certs is not None
        settings.update(certs.pooler_settings())
    target = Target(name, tls=tls)
    try:
        if name.startswith("pgbouncer") and find_pgbouncer() is None:
            raise RuntimeError("pgbouncer is not installed (apt-get install pgbouncer)")
        if name.startswith("pgpool"):
            # pgpool-w2: `pgpool --workers 2` (two peered processes on one port, each with its pools).
            # pgpool-pure: the same tree with its compiled modules switched off (pgpool/_build.py).
            env = {**args.pgpool_env, **({"PGPOOL_PURE_PYTHON": "1"} if name == "pgpool-pure" else {})}
            extra_args = ["--workers", "2"] if name == "pgpool-w2" else []
            proc: PgpoolProcess | PgBouncerProcess = PgpoolProcess(
                backend_host=pg.host, backend_port=pg.port, users=dict(ROLES), settings=settings, env=env,
                extra_args=extra_args)
        else:
            proc = PgBouncerProcess(backend_host=pg.host, backend_port=pg.port, users=dict(ROLES), settings=settings)
        target.proc = proc
        proc.start()
        target.host, target.port = proc.host, proc.port
    except Exception as exc:  # report and carry on with the other targets
        target.error = f"failed to start: {exc}"
        target.proc = None
    return target


def read_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _message(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("!I", len(payload) + 4) + payload


async def login_idle_client(host: str, port: int, user: str, password: str, dbname: str,
                            tls: ssl.SSLContext | None = None) -> asyncio.StreamWriter:
    """A bare protocol-3 login (trust, cleartext or md5) that stops at the first ReadyForQuery.

    asyncpg or psycopg would cost far more memory per connection on our side
    than the pooler spends on its side, which is what we measure. With `tls`: SSLRequest first.
    """
    reader, writer = await asyncio.open_connection(host, port)
    if tls is not None:
        writer.write(struct.pack("!II", 8, 80877103))   # SSLRequest
        if await reader.readexactly(1) != b"S":
            raise RuntimeError("the pooler refused TLS")
        await writer.start_tls(tls)
    params = f"user\0{user}\0database\0{dbname}\0\0".encode()
    body = struct.pack("!I", 196608) + params  # protocol version 3.0
    writer.write(struct.pack("!I", len(body) + 4) + body)
    while True:
        kind = await reader.readexactly(1)
        (length,) = struct.unpack("!I", await reader.readexactly(4))
        payload = await reader.readexactly(length - 4)
        if kind == b"R":
            (code,) = struct.unpack_from("!I", payload)
            if code == 3:  # AuthenticationCleartextPassword
                writer.write(_message(b"p", password.encode() + b"\0"))
            elif code == 5:  # AuthenticationMD5Password: md5(md5(password + user) + salt)
                inner = hashlib.md5((password + user).encode()).hexdigest()
                digest = hashlib.md5(inner.encode() + payload[4:8]).hexdigest()
                writer.write(_message(b"p", b"md5" + digest.encode() + b"\0"))
            elif code != 0:
                raise RuntimeError(f"idle clients support trust/password/md5 only, server asked for auth code {code}")
        elif kind == b"E":
            fields = dict((f[:1], f[1:].decode(errors="replace")) for f in payload.split(b"\0") if f)
            raise RuntimeError(f"login failed: {fields.get(b'M', payload)!r}")
        elif kind == b"Z":
            return writer


async def open_idle_clients(target: Target, count: int, concurrency: int = 100) -> list[asyncio.StreamWriter]:
    # Bounded concurrent logins keep the pooler's listen backlog from overflowing into SYN retries.
    gate = asyncio.Semaphore(concurrency)

    async def one() -> asyncio.StreamWriter:
        async with gate:
            return await login_idle_client(target.host, target.port, USER, ROLES[USER], APP_DATABASE)

    return await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count))), timeout=60 + count / 50)


async def close_idle_clients(writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        writer.write(_message(b"X", b""))  # Terminate
        writer.close()
    await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)


def measure_idle_clients(target: Target, count: int) -> dict[str, object]:
    assert target.proc is not None and target.proc.pid is not None
    pid = target.proc.pid
    before = read_rss_kib(pid)

    async def run() -> tuple[int, float]:
        started = time.monotonic()
        writers = await open_idle_clients(target, count)
        elapsed = time.monotonic() - started
        after = read_rss_kib(pid)  # all logged in and idle: this is the steady state per client
        await close_idle_clients(writers)
        return after, elapsed

    after, elapsed = asyncio.run(run())
    return {
        "clients": count,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "rss_per_client_kib": (after - before) / count,
        "login_seconds": round(elapsed, 2),
    }


def measure_connect_burst(target: Target, count: int) -> dict[str, object]:
    """`count` clients log in at once (SSLRequest + TLS handshake + md5 for TLS targets): connect-time percentiles."""
    ctx: ssl.SSLContext | None = None
    if target.tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE   # sslmode=require: encrypted, not verified, as pgbench here

    async def run() -> tuple[list[float], int]:
        times: list[float] = []

        async def one() -> asyncio.StreamWriter:
            started = time.monotonic()
            writer = await login_idle_client(target.host, target.port, USER, ROLES[USER], APP_DATABASE, ctx)
            times.append(time.monotonic() - started)
            return writer

        results = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count)), return_exceptions=True),
                                         timeout=120)
        writers = [r for r in results if isinstance(r, asyncio.StreamWriter)]
        await close_idle_clients(writers)
        return times, count - len(writers)

    times, failed = asyncio.run(run())
    times.sort()

    def pct(q: float) -> float | None:
        return round(times[min(len(times) - 1, int(q * len(times)))] * 1000, 1) if times else None
    return {"clients": count, "failed": failed, "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "max_ms": round(times[-1] * 1000, 1) if times else None}


def fmt_tps(cell: Cell, target: Target) -> str:
    if cell.median is not None:
        return f"{cell.median:,.0f}"
    return "failed" if target.error or cell.errors else "-"


def fmt_ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "-"


def print_table(args: argparse.Namespace, results: dict[str, dict[str, Cell]], targets: dict[str, Target]) -> None:
    names = [n for n in TARGETS if n in targets]
    ratios = [(a, b) for a, b in RATIOS if a in targets and b in targets]
    poolers = [n for n in names if n != "direct"]
    cpu_ratios = [(a, b) for a, b in (("pgpool", "pgbouncer"), ("pgpool-tls", "pgbouncer-tls"))
                  if {a, b} <= set(poolers)]
    headers = ["mode", *(f"{n} TPS" for n in names), *(f"{a}/{b}" for a, b in ratios),
               *(f"{n} us CPU/xact" for n in poolers), *(f"CPU {a}/{b}" for a, b in cpu_ratios)]
    rows = []
    for mode in args.modes:
        cells = results[mode]
        medians = {n: cells[n].median for n in names}
        cpu = {n: cells[n].median_cpu_us for n in poolers}
        tps = [fmt_tps(cells[n], targets[n]) for n in names]
        rows.append([mode, *tps, *(fmt_ratio(medians[a], medians[b]) for a, b in ratios),
                     *(f"{cpu[n]:.1f}" if cpu[n] is not None else "-" for n in poolers),
                     *(fmt_ratio(cpu[a], cpu[b]) for a, b in cpu_ratios)])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print(
        f"\npgbench -S, {args.clients} clients, {args.threads} threads, pool size {args.pool_size}, "
        f"{args.seconds}s x {args.rounds} rounds (median), scale {args.scale}"
    )
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths)))
    for row in rows:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))


def print_failures(args: argparse.Namespace, results: dict[str, dict[str, Cell]], targets: dict[str, Target]) -> None:
    failures = [f"{n}: {t.error}" for n, t in targets.items() if t.error]
    for mode in args.modes:
        for name, cell in results[mode].items():
            failures += [f"{name} {mode}: {e}" for e in sorted(set(cell.errors))]
    if failures:
        print("\nfailures:")
        for line in failures:
            print("  " + line.replace("\n", "\n    "))


def print_idle(idle: dict[str, dict[str, object]]) -> None:
    print("\nidle clients (RSS growth of the pooler process):")
    for name, result in idle.items():
        if "error" in result:
            print(f"  {name}: failed: {result['error']}")
        else:
            print(
                f"  {name}: {result['clients']} clients logged in in {result['login_seconds']}s, "
                f"RSS {result['rss_before_kib']} -> {result['rss_after_kib']} KiB, "
                f"{result['rss_per_client_kib']:.2f} KiB per client"
            )


def print_bursts(bursts: dict[str, dict[str, object]]) -> None:
    print("\nconnect burst (all clients log in at once; per-connection time to ReadyForQuery):")
    for name, result in bursts.items():
        if "error" in result:
            print(f"  {name}: failed: {result['error']}")
        else:
            print(f"  {name:14} {result['clients']} clients: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
                  f"max {result['max_ms']} ms, failed {result['failed']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    nofile = raise_nofile_limit()
    if args.idle_clients and nofile < args.idle_clients + args.clients + 200:
        log(f"warning: RLIMIT_NOFILE hard limit {nofile} is low for {args.idle_clients} idle clients")
    pgbench = find_client_program("pgbench")

    # The poolers keep their server connections open while direct pgbench runs: room for all of them.
    poolers = len([n for n in args.target_names if n != "direct"])
    max_connections = args.clients + poolers * args.pool_size + 20
    certs = BenchCerts() if args.tls else None
    if args.dsn:
        pg: PostgresCluster | ExternalPostgres = ExternalPostgres(args.dsn)
    else:
        # A cache that holds the whole scale-10 data set keeps disk reads out of the comparison.
        pg = PostgresCluster(max_connections=max_connections, settings={"shared_buffers": "512MB"},
                             tls=certs.postgres if certs else None)
    targets: dict[str, Target] = {}
    bursts: dict[str, dict[str, object]] = {}
    results = {mode: {name: Cell() for name in args.target_names} for mode in args.modes}
    idle: dict[str, dict[str, object]] = {}
    try:
        pg.start()
        if args.dsn and int(pg.run_sql("SHOW max_connections")) < max_connections:
            log(f"warning: the server's max_connections is below {max_connections}; direct runs may fail")
        log(f"postgres {pg.run_sql('SHOW server_version')} on port {pg.port}; pgbench -i -s {args.scale} ...")
        run_pgbench(pgbench, pg.host, pg.port, ["-i", "-q", "-s", str(args.scale)], timeout=1800)

        for name in args.target_names:
            targets[name] = target = start_target(name, pg, args, certs)
            log(f"{name}: {'port ' + str(target.port) if not target.error else target.error}")
        if args.warmup > 0:
            measure_tps(pgbench, Target("direct", pg.host, pg.port), "simple", args, args.warmup)

        running = [t for t in targets.values() if not t.error]
        for round_no in range(args.rounds):
            # Rotate the order each round so no target always runs right after the same neighbour.
            shift = round_no % max(1, len(running))
            order = running[shift:] + running[:shift]
            for mode in args.modes:
                for target in order:
                    cell = results[mode][target.name]
                    try:
                        tps, cpu_us = measure_tps(pgbench, target, mode, args, args.seconds)
                        cell.tps.append(tps)
                        if cpu_us is not None:
                            cell.cpu_us.append(cpu_us)
                        cpu_text = f", {cpu_us:6.1f} us CPU/xact" if cpu_us is not None else ""
                        log(f"round {round_no + 1}/{args.rounds} {mode:8} {target.name:9} {tps:12,.0f} tps{cpu_text}")
                    except Exception as exc:
                        cell.errors.append(str(exc))
                        log(f"round {round_no + 1}/{args.rounds} {mode:8} {target.name:9} failed: {exc}")

        if args.tls and args.burst_clients:
            for target in running:
                if target.proc is None:
                    continue
                try:
                    bursts[target.name] = measure_connect_burst(target, args.burst_clients)
                except Exception as exc:
                    bursts[target.name] = {"error": f"{type(exc).__name__}: {exc}"}
                log(f"connect burst {target.name}: {bursts[target.name]}")

        if args.idle_clients:
            for target in running:
                if target.proc is None or target.tls:
                    continue  # direct Postgres forks a backend per client: no single process to weigh
                try:
                    idle[target.name] = measure_idle_clients(target, args.idle_clients)
                except Exception as exc:
                    idle[target.name] = {"error": f"{type(exc).__name__}: {exc}"}
                log(f"idle clients {target.name}: {idle[target.name]}")
    finally:
        for target in targets.values():
            if target.proc is not None:
                target.proc.stop()
        pg.stop()
        if certs is not None:
            certs.remove()

    if args.rounds > 0:
        print_table(args, results, targets)
    print_failures(args, results, targets)
    if idle:
        print_idle(idle)
    if bursts:
        print_bursts(bursts)
    if args.json:
        medians = {mode: {n: c.median for n, c in cells.items()} for mode, cells in results.items()}
        report = {
            "settings": {k: v for k, v in vars(args).items() if k not in ("json", "dsn")},
            "targets": {n: {"error": t.error} for n, t in targets.items()},
            "results": {
                mode: {n: {"tps": c.tps, "median_tps": c.median, "cpu_us_per_xact": c.cpu_us,
                           "median_cpu_us_per_xact": c.median_cpu_us, "errors": c.errors}
                       for n, c in cells.items()}
                for mode, cells in results.items()
            },
            "ratios": {
                mode: {
                    f"{a}/{b}": (m[a] / m[b] if m.get(a) is not None and m.get(b) else None)
                    for a, b in RATIOS
                    if a in m and b in m
                }
                for mode, m in medians.items()
            },
            "idle_clients": idle,
            "connect_burst": bursts,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
