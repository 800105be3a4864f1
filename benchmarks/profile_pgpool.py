"""Where pgpool spends its CPU under `pgbench -S`: py-spy samples of the pgpool process, top functions by self time.

Owns one profiling run: a throwaway cluster and one pgpool (benchmarks/targets.py), pgbench
select-only in each mode while `py-spy record --format raw` samples the pgpool process, then a
table of the functions with the most self time (the innermost frame of each sample) and the
collapsed stacks kept for flame graphs. It does not compare poolers (pgbench_compare does).

    python -m benchmarks.profile_pgpool [--clients 50] [--pool-size 10] [--seconds 15]
        [--mode simple,extended] [--top 25] [--out DIR] [--native] [--pgpool-env KEY=VALUE ...]

Needs py-spy (pip install py-spy) and permission to ptrace the pgpool process (root, or
kernel.yama.ptrace_scope = 0).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from benchmarks.pgbench_compare import CLOCK_TICKS, Target, measure_tps, run_pgbench
from benchmarks.targets import ROLES, PgpoolProcess, PostgresCluster, find_client_program


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_pgpool", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pool-size", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--mode", default="simple,extended")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, default=None, help="keep the collapsed stacks here (default: a temp dir)")
    parser.add_argument("--native", action="store_true", help="py-spy --native (C frames of compiled modules)")
    parser.add_argument("--pgpool-env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment of the pgpool process, e.g. PGPOOL_PURE_PYTHON=1")
    return parser.parse_args(argv)


def summarize_self_time(collapsed: Path, top: int) -> list[tuple[str, float]]:
    """(function, share of samples) for the `top` innermost frames of a py-spy raw (collapsed) file."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaf = stack.rsplit(";", 1)[-1]
        counts[leaf] += int(count)
        total += int(count)
    return [(name, n / total) for name, n in counts.most_common(top)] if total else []


def read_user_system_seconds(pid: int) -> tuple[float, float]:
    """utime and stime of one process from /proc/PID/stat: Python and uvloop vs the kernel's sockets."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        print("py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return 2
    env = dict(item.split("=", 1) for item in args.pgpool_env)
    out = args.out or Path(tempfile.mkdtemp(prefix="pgpool-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    pgbench = find_client_program("pgbench")
    pg = PostgresCluster(max_connections=args.pool_size + args.clients + 20)
    proc = None
    try:
        pg.start()
        run_pgbench(pgbench, pg.host, pg.port, ["-i", "-q", "-s", "10"], timeout=900)
        proc = PgpoolProcess(backend_host=pg.host, backend_port=pg.port, users=dict(ROLES), env=env,
                             settings={"pool_mode": "transaction", "default_pool_size": args.pool_size,
                                       "max_client_conn": args.clients + 100, "server_tls_sslmode": "disable"})
        proc.start()
        target = Target("pgpool", proc.host, proc.port, proc)
        for mode in [m for m in args.mode.split(",") if m]:
            raw = out / f"{mode}.txt"
            record = [py_spy, "record", "--format", "raw", "-o", str(raw), "-p", str(proc.pid),
                      "-d", str(args.seconds)]
            if args.native:
                record.append("--native")
            spy = threading.Thread(target=subprocess.run, args=(record,),
                                   kwargs={"capture_output": True, "timeout": args.seconds + 60})
            spy.start()
            user_before, system_before = read_user_system_seconds(proc.pid)
            tps, cpu_us = measure_tps(pgbench, target, mode, args, args.seconds)
            user, system = (after - before for after, before in
                            zip(read_user_system_seconds(proc.pid), (user_before, system_before)))
            spy.join()
            share = user / (user + system) if user + system else 0.0
            print(f"\n## {mode}: {tps:,.0f} tps, {cpu_us or 0:.1f} us CPU/xact, {share * 100:.0f}% of it in user space "
                  f"(the rest in the kernel: send/recv/epoll) (pgpool env {env or '{}'})")
            for name, share in summarize_self_time(raw, args.top):
                print(f"{share * 100:5.1f}%  {name}")
        print(f"\ncollapsed stacks in {out}")
    finally:
        if proc is not None:
            proc.stop()
        pg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
