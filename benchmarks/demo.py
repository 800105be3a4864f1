"""The one-command demo: the same burst directly against Postgres, through pgpool and through PgBouncer.

Owns the demo's story: with no --dsn, start a throwaway Postgres
(max_connections=100), then for each target in turn start it (pgpool with the
pool sizes of config/pgpool.toml, PgBouncer with the same knobs when
installed), burst it with 300 client connections, stop it; then print the
comparison and the checks from the project's performance targets, and write
the report to reports/demo-<timestamp>/. With --dsn it bursts the given
targets instead. Everything it started is stopped on exit, Ctrl-C and SIGTERM.

Must not: measure anything itself (benchmarks/burst.py does) or know how to
start servers (benchmarks/targets.py does).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import subprocess
import sys
import tomllib
from datetime import datetime, timezone
from pathlib import Path

from benchmarks import burst, report
from benchmarks.targets import (
    REPO_ROOT,
    ROLES,
    PgBouncerProcess,
    PgpoolProcess,
    PostgresCluster,
    find_pgbouncer,
)

DEMO_DEFAULTS = burst.BurstOptions(flows=300, tasks_per_flow=4, clients=300, duration_s=15.0)
CONFIG_FILE = REPO_ROOT / "config" / "pgpool.toml"
FALLBACK_POOL = {"default_pool_size": 20, "reserve_pool_size": 5, "pool_mode": "transaction"}
USERS = {"app": ROLES["app"], "postgres": ROLES["postgres"]}


def pool_settings(config_file: Path = CONFIG_FILE) -> tuple[dict, str]:
    """The pool knobs both poolers get: from config/pgpool.toml when present, else the fallbacks."""
    settings = dict(FALLBACK_POOL)
    source = "built-in defaults"
    if config_file.is_file():
        data = tomllib.loads(config_file.read_text())
        section = data.get("pgpool") or data.get("pgbouncer") or {}
        for key in FALLBACK_POOL:
            if key in section:
                settings[key] = section[key]
        source = str(config_file.relative_to(REPO_ROOT) if config_file.is_relative_to(REPO_ROOT) else config_file)
    return settings, source


def pgbouncer_version() -> tuple[int, ...] | None:
    binary = find_pgbouncer()
    if binary is None:
        return None
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"PgBouncer (\d+)\.(\d+)", out)
    return tuple(int(x) for x in match.groups()) if match else None


def _raise_interrupt(signum, frame):
    # SIGTERM/SIGHUP take the same cleanup path as Ctrl-C.
    raise KeyboardInterrupt


def _say(message: str) -> None:
    print(f"demo: {message}", file=sys.stderr, flush=True)


class Demo:
    """Runs the targets one at a time, so a finished pooler's idle server connections
    never count against the next target, and records every process it starts."""

    def __init__(self, args: argparse.Namespace, opts: burst.BurstOptions) -> None:
        self.args = args
        self.opts = opts
        self.started: list = []  # everything with a stop(), stopped in reverse order
        self.results: list[dict] = []
        self.checks: list[dict] = []

    def stop_all(self) -> None:
        while self.started:
            proc = self.started.pop()
            try:
                proc.stop()
            except Exception as exc:
                _say(f"warning: stopping {type(proc).__name__} failed: {exc}")

    def _stop(self, proc) -> None:
        if proc in self.started:
            self.started.remove(proc)
        proc.stop()

    def burst(self, target: burst.Target) -> dict:
        result = asyncio.run(burst.run_target(target, self.opts))
        self.results.append(result)
        return result

    def run_local(self) -> None:
        """No --dsn: throwaway Postgres, then direct, pgpool, PgBouncer."""
        _say("starting a throwaway Postgres (max_connections=100) ...")
        pg = PostgresCluster(max_connections=100)
        self.started.append(pg)
        pg.start()
        self.opts.monitor_dsn = pg.dsn()
        pool, source = pool_settings()
        self.pool = pool
        limit = pool["default_pool_size"] + pool["reserve_pool_size"]
        proxy_settings = {**pool, "max_client_conn": max(1000, self.opts.clients + 100)}
        _say(f"pool settings from {source}: default_pool_size={pool['default_pool_size']}, "
             f"reserve_pool_size={pool['reserve_pool_size']}, pool_mode={pool['pool_mode']}")

        self.burst(burst.Target("postgres-direct", pg.dsn("app", dbname="app"),
                                notes=["clients connect straight to Postgres (max_connections=100)"]))

        if not self.args.no_pgpool:
            self._run_pgpool(pg, proxy_settings, limit)
        if self.args.no_pgbouncer:
            pass
        elif not PgBouncerProcess.available():
            _say("PgBouncer is not installed: skipping it (bash scripts/install.sh installs it)")
        else:
            self._run_pgbouncer(pg, proxy_settings)

    def _run_pgpool(self, pg: PostgresCluster, settings: dict, limit: int) -> None:
        _say("starting pgpool ...")
        proc = PgpoolProcess(backend_host=pg.host, backend_port=pg.port, users=USERS,
                             settings={**settings, "admin_users": ["postgres"]})
        self.started.append(proc)
        try:
            proc.start(wait=20.0)
        except Exception as exc:
            self._stop(proc)
            log_lines = [line for line in proc.log_text().splitlines() if line.strip()]
            message = str(exc).split("\n", 1)[0].removesuffix("; log tail:")
            if log_lines:
                message += f"; last log line: {log_lines[-1].strip()}"
            _say(f"PGPOOL FAILED TO START: {message}")
            if log_lines:
                print("\n".join(log_lines[-15:]), file=sys.stderr)
            _say("continuing with the other targets")
            self.checks.append({"name": "pgpool started", "passed": False, "detail": message[:500]})
            return
        try:
            result = self.burst(burst.Target("pgpool", proc.dsn("app", dbname="app"),
                                             admin_dsn=proc.dsn("postgres", dbname="pgbouncer")))
            if self.args.pgpool_unprepared:
                self.burst(burst.Target("pgpool-unprepared", proc.dsn("app", dbname="app"),
                                        admin_dsn=proc.dsn("postgres", dbname="pgbouncer"), statement_cache_size=0,
                                        notes=["the same pgpool, with asyncpg statement_cache_size=0"]))
        finally:
            self._stop(proc)
        errors = result["errors"]["total"]
        self.checks.append({"name": "pgpool: zero errors", "passed": errors == 0 and result["status"] == "finished",
                            "detail": f"{errors} errors, status {result['status']}"})
        peak = result["server_connections"]["peak"]
        self.checks.append({
            "name": "pgpool: Postgres never sees more than default_pool_size + reserve_pool_size",
            "passed": peak is not None and peak <= limit,
            "detail": f"peak {peak} server connections, limit {limit}",
        })

    def _run_pgbouncer(self, pg: PostgresCluster, settings: dict) -> None:
        version = pgbouncer_version()
        notes = []
        extra = {"admin_users": "postgres"}
        cache = None
        if version is not None and version >= (1, 21):
            extra["max_prepared_statements"] = 200
        else:
            # Before 1.21 PgBouncer cannot pool named prepared statements in transaction mode;
            # asyncpg's default would fail with 26000 "prepared statement ... does not exist".
            cache = 0
            shown = ".".join(map(str, version)) if version else "unknown version"
            notes.append(f"PgBouncer {shown} lacks prepared statement support in transaction mode (added in "
                         "1.21), so this run uses asyncpg statement_cache_size=0: unnamed statements, "
                         "a lighter protocol load than the other targets")
        _say("starting PgBouncer ...")
        proc = PgBouncerProcess(backend_host=pg.host, backend_port=pg.port, users=USERS,
                                settings={**settings, **extra})
        self.started.append(proc)
        try:
            proc.start(wait=20.0)
        except Exception as exc:
            self._stop(proc)
            _say(f"PgBouncer failed to start: {exc}")
            self.checks.append({"name": "PgBouncer started", "passed": False, "detail": str(exc)[:500]})
            return
        try:
            self.burst(burst.Target("pgbouncer", proc.dsn("app", dbname="app"),
                                    admin_dsn=proc.dsn("postgres", dbname="pgbouncer"),
                                    statement_cache_size=cache, notes=notes))
        finally:
            self._stop(proc)

    def compare(self) -> None:
        """The issue's performance targets that need two targets of the same run."""
        by_name = {r["name"]: r for r in self.results}
        direct, pgpool, bouncer = (by_name.get(n) for n in ("postgres-direct", "pgpool", "pgbouncer"))
        if bouncer is not None and not bouncer["prepared_statements"] and "pgpool-unprepared" in by_name:
            pgpool = by_name["pgpool-unprepared"]  # compare like with like
        if direct is not None:
            refused = sum(k["count"] for k in direct["errors"]["kinds"] if k["sqlstate"] == "53300")
            sc = direct["server_connections"]
            self.checks.append({
                "name": "direct to Postgres: what users escape",
                "passed": None,
                "detail": f"{direct['clients']['connected']}/{direct['clients']['requested']} clients got a "
                          f"connection, {refused} connection attempts refused with 53300, "
                          f"peak {sc['peak']} of max_connections {sc['max_connections']}, "
                          f"transitions p99 {report.fmt(direct['latency_ms']['transitions']['p99'])} ms",
            })
        if pgpool is None or bouncer is None:
            return
        caveat = f" ({pgpool['name']} vs pgbouncer)"
        if bouncer["prepared_statements"] != pgpool["prepared_statements"]:
            caveat = " (PgBouncer ran without prepared statements; --pgpool-unprepared compares like with like)"
        p99_pgpool = pgpool["latency_ms"]["transitions"]["p99"]
        p99_bouncer = bouncer["latency_ms"]["transitions"]["p99"]
        if p99_pgpool is not None and p99_bouncer:
            ratio = p99_pgpool / p99_bouncer
            self.checks.append({"name": "pgpool p99 transition latency <= 1.2x PgBouncer's", "passed": ratio <= 1.2,
                                "detail": f"{p99_pgpool:.1f} ms vs {p99_bouncer:.1f} ms = {ratio:.2f}x{caveat}"})
        tp_pgpool, tp_bouncer = pgpool["transitions"]["per_s"], bouncer["transitions"]["per_s"]
        if tp_pgpool is not None and tp_bouncer:
            ratio = tp_pgpool / tp_bouncer
            self.checks.append({"name": "pgpool throughput >= 0.8x PgBouncer's", "passed": ratio >= 0.8,
                                "detail": f"{tp_pgpool:.0f} vs {tp_bouncer:.0f} transitions/s = {ratio:.2f}x{caveat}"})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.demo",
        description="Burst a Prefect-like workload at Postgres directly, through pgpool and through PgBouncer, "
                    "and compare. With no --dsn everything runs on a throwaway local Postgres.",
    )
    parser.add_argument("--dsn", action="append", default=[], metavar="[NAME=]DSN",
                        help="burst these targets instead of starting local ones (repeatable)")
    parser.add_argument("--admin-dsn", action="append", default=[], metavar="NAME=DSN",
                        help="admin console of the --dsn target NAME (SHOW POOLS is sampled)")
    parser.add_argument("--monitor-dsn", help="superuser DSN of the Postgres behind --dsn targets "
                                              "(default: the first target's DSN)")
    parser.add_argument("--no-pgpool", action="store_true", help="local mode: skip pgpool")
    parser.add_argument("--no-pgbouncer", action="store_true", help="local mode: skip PgBouncer")
    parser.add_argument("--pgpool-unprepared", action="store_true",
                        help="local mode: burst pgpool a second time with statement_cache_size=0, the protocol "
                             "load PgBouncer before 1.21 gets, and compare that run with PgBouncer")
    parser.add_argument("--report", type=Path, metavar="DIR",
                        help="report directory (default: reports/demo-<timestamp>)")
    burst.add_workload_arguments(parser, DEMO_DEFAULTS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        opts = burst.options_from_args(args, monitor_dsn=args.monitor_dsn)
        if args.dsn:
            burst.targets_from_args(args)  # fail on a bad option before starting anything
    except ValueError as exc:
        print(f"python -m benchmarks.demo: error: {exc}", file=sys.stderr)
        return 2
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = args.report or REPO_ROOT / "reports" / f"demo-{stamp}"
    burst.install_uvloop()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)

    demo = Demo(args, opts)
    started_at = datetime.now(timezone.utc).isoformat()
    try:
        if args.dsn:
            targets = burst.targets_from_args(args)
            opts.monitor_dsn = opts.monitor_dsn or targets[0].dsn
            for target in targets:
                demo.burst(target)
        else:
            demo.run_local()
    except KeyboardInterrupt:
        _say("interrupted: stopping everything the demo started ...")
        demo.stop_all()
        _say("stopped.")
        return 130
    finally:
        demo.stop_all()

    demo.compare()
    result = report.build_report(config=burst.config_dict(opts), targets=demo.results, started_at=started_at,
                                 checks=demo.checks)
    files = report.write_report(result, out_dir)
    print()
    print(report.render_table(result))
    print()
    print(f"report: {files['html']}  (also report.md, report.json and "
          f"{', '.join(p.name for p in files['plots'].values())})")
    return 0 if all(c["passed"] is not False for c in demo.checks) else 1


if __name__ == "__main__":
    sys.exit(main())
