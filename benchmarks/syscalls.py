"""Syscalls and CPU per transaction of pgpool and PgBouncer under the same `pgbench -S` load, in one run.

Owns one measurement: a throwaway cluster, the poolers started as pgbench_compare starts them
(same pool size, same settings), and per (mode, pooler) one bounded pgbench run with two
windows taken from its steady state (after every client logged in):

- a CPU window, untraced: the pooler's CPU from the scheduler's run time of each thread
  (/proc/PID/task/*/schedstat, nanoseconds), split into user and system in the ratio of
  /proc/PID/stat's ticks, its context switches (voluntary: an epoll wait that slept) and minor
  faults, per transaction;
- a syscall window: `perf stat` counting the pooler's syscalls by tracepoint (cheap: no stop
  per syscall), switched on and off through perf's control FIFO so the window is exact; or
  `strace -c -f` where perf is missing (slower, and it slows the pooler, but the counts per
  transaction hold).

Transactions are counted inside each window from pgbench's per-transaction log (`-l`, its
completion time stamps), so logins and the ramp are never in the numbers. It judges nothing
and starts nothing that outlives it: every process it starts is stopped by PID.

    python -m benchmarks.syscalls [--targets pgpool,pgbouncer] [--mode simple,extended,prepared]
        [--clients 100] [--pool-size 20] [--window 1.5] [--tracer perf|strace] [--json FILE]
        [--pgpool-env KEY=VALUE] [--targets pgpool,pgpool-alt --alt-tree DIR]

Needs root or kernel.perf_event_paranoid <= 1 for perf (ptrace rights for strace).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.pgbench_compare import (
    APP_DATABASE,
    CLOCK_TICKS,
    MODES,
    USER,
    Target,
    log,
    pgbench_env,
    raise_nofile_limit,
    run_pgbench,
    start_target,
)
from benchmarks.targets import (
    LOOPBACK,
    REPO_ROOT,
    PostgresCluster,
    find_client_program,
    free_port,
)

# pgpool-alt: pgpool run from another checkout (--alt-tree), to measure a patch beside the unpatched tree.
POOLERS = ("pgpool", "pgbouncer", "pgpool-pure", "pgpool-alt", "floor")
# The syscalls a pooler's data plane makes, each counted by its own tracepoint; the rest is "other".
SYSCALLS = ("read", "write", "readv", "writev", "recvfrom", "sendto", "recvmsg", "sendmsg", "epoll_wait",
            "epoll_pwait", "epoll_ctl", "getsockopt", "setsockopt", "accept4", "close", "futex", "ioctl",
            "getpid", "timerfd_settime", "brk", "mmap", "munmap", "madvise")
WARMUP = 0.6       # seconds after pgbench starts before the first window: all clients logged in
TAIL = 0.4         # seconds after the last window before pgbench's -T ends


@dataclass
class Window:
    """One measured stretch of a pgbench run."""

    seconds: float = 0.0
    xacts: int = 0
    cpu_us: float = 0.0             # pooler CPU per transaction, from the scheduler's ns run time (exact)
    user_us: float = 0.0            # ... of which in user space (Python, uvloop, libevent): cpu_us split in
    system_us: float = 0.0          # the ratio of /proc's utime to stime (10 ms ticks) ... and in the kernel
    switches: float = 0.0           # voluntary context switches per transaction (sleeps in epoll_wait)
    preempted: float = 0.0          # involuntary ones: the CPU taken away (2 cores shared with pgbench, Postgres)
    faults: float = 0.0             # minor page faults per transaction (kernel time spent on the allocator's behalf)
    syscalls: dict[str, float] = field(default_factory=dict)   # name -> calls per transaction

    @property
    def tps(self) -> float:
        return self.xacts / self.seconds if self.seconds else 0.0


@dataclass
class Result:
    mode: str
    target: str
    cpu: Window | None = None
    traced: Window | None = None
    tracer: str = ""
    error: str | None = None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.syscalls", description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default="pgpool,pgbouncer", help="comma-separated subset of " + ",".join(POOLERS))
    parser.add_argument("--mode", default=",".join(MODES), help="comma-separated pgbench -M modes")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None, help="pgbench -j, default min(clients, CPUs)")
    parser.add_argument("--pool-size", type=int, default=20)
    parser.add_argument("--scale", type=int, default=1, help="pgbench -i scale (select-only: size barely matters)")
    parser.add_argument("--window", type=float, default=1.5, help="seconds of each window (CPU, then syscalls)")
    parser.add_argument("--tracer", choices=("perf", "strace"), default=None,
                        help="default: perf if installed, else strace")
    parser.add_argument("--pgpool-env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--alt-tree", type=Path, help="a checkout whose pgpool package target pgpool-alt runs")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    args.modes = [m for m in args.mode.split(",") if m]
    args.target_names = [t for t in args.targets.split(",") if t]
    for mode in args.modes:
        if mode not in MODES:
            parser.error(f"unknown mode {mode!r}")
    for name in args.target_names:
        if name not in POOLERS:
            parser.error(f"unknown target {name!r}; choose from {', '.join(POOLERS)}")
    if any("=" not in item for item in args.pgpool_env):
        parser.error("--pgpool-env expects KEY=VALUE")
    args.pgpool_env = dict(item.split("=", 1) for item in args.pgpool_env)
    if ("pgpool-alt" in args.target_names) != (args.alt_tree is not None):
        parser.error("target pgpool-alt and --alt-tree go together")
    if args.alt_tree is not None and not (args.alt_tree / "pgpool" / "__init__.py").is_file():
        parser.error(f"--alt-tree {args.alt_tree}: no pgpool package there")
    args.threads = args.threads or max(1, min(args.clients, os.cpu_count() or 1))
    args.tracer = args.tracer or ("perf" if shutil.which("perf") else "strace")
    if not shutil.which(args.tracer):
        parser.error(f"{args.tracer} is not installed (apt-get install linux-perf, or strace)")
    # What start_target reads besides the above.
    args.idle_clients = args.burst_clients = 0
    return args


class FloorProcess:
    """benchmarks/floor_proxy.py as a subprocess: what uvloop and the kernel cost with no pooler logic."""

    def __init__(self, backend_host: str, backend_port: int) -> None:
        self.host, self.port = LOOPBACK, free_port()
        path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.floor_proxy", "--port", str(self.port),
             "--backend-host", backend_host, "--backend-port", str(backend_port)],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                break
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("floor_proxy did not listen")
                time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


def start_pooler(name: str, pg: PostgresCluster, args: argparse.Namespace) -> Target:
    if name == "pgpool-alt":
        # PYTHONPATH from --pgpool-env wins over the tree's own (targets.PgpoolProcess._environment).
        alt = argparse.Namespace(**{**vars(args), "pgpool_env": {**args.pgpool_env,
                                                                  "PYTHONPATH": str(args.alt_tree.resolve())}})
        target = start_target("pgpool", pg, alt)
        target.name = name
        return target
    if name != "floor":
        return start_target(name, pg, args)
    target = Target(name)
    try:
        target.proc = FloorProcess(pg.host, pg.port)  # type: ignore[assignment]
        target.host, target.port = target.proc.host, target.proc.port  # type: ignore[union-attr]
    except Exception as exc:
        target.error = f"failed to start: {exc}"
    return target


def process_ids(pid: int) -> list[int]:
    """The pooler and its live children (`--workers`): CPU and syscalls count for all of them."""
    ids = [pid]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[1] == str(pid):
                ids.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return ids


def read_cpu(pids: list[int]) -> tuple[float, float, float, int, int, int]:
    """(run seconds, user seconds, system seconds, voluntary and involuntary context switches, minor
    faults), summed over the processes: run time from each thread's /proc/PID/task/TID/schedstat
    (nanoseconds), the rest from /proc/PID/stat fields 10, 14, 15 (ticks) and /proc/PID/status."""
    run = user = system = 0.0
    switches = preempted = faults = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*/schedstat"):
            try:
                run += int(task.read_text().split()[0]) / 1e9
            except (OSError, IndexError, ValueError):
                continue   # a thread that just ended
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        faults += int(fields[7])
        user += int(fields[11]) / CLOCK_TICKS
        system += int(fields[12]) / CLOCK_TICKS
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                switches += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                preempted += int(line.split()[1])
    return run, user, system, switches, preempted, faults


def count_xacts(log_dir: Path, start: float, end: float) -> int:
    """Transactions pgbench completed between two wall-clock times (its -l log: ... epoch usec)."""
    total = 0
    for path in log_dir.glob("pgbench_log*"):
        for line in path.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 6 and start <= int(fields[4]) + int(fields[5]) / 1e6 < end:
                total += 1
    return total


class PerfCounter:
    """`perf stat` on the pooler's processes, counting only between enable() and disable()."""

    def __init__(self, pids: list[int], work_dir: Path) -> None:
        self.ctl_path, self.ack_path, self.out_path = work_dir / "ctl", work_dir / "ack", work_dir / "perf.csv"
        os.mkfifo(self.ctl_path)
        os.mkfifo(self.ack_path)
        events = ["raw_syscalls:sys_enter", *(f"syscalls:sys_enter_{name}" for name in SYSCALLS)]
        self.proc = subprocess.Popen(
            ["perf", "stat", "-D", "-1", "--control", f"fifo:{self.ctl_path},{self.ack_path}", "-x,",
             "-e", ",".join(events), "-p", ",".join(map(str, pids)), "-o", str(self.out_path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.ack = os.open(self.ack_path, os.O_RDONLY | os.O_NONBLOCK)
        # Writing end of the control FIFO: opens once perf, set up, reads it (ENXIO until then).
        deadline = time.monotonic() + 10
        while True:
            try:
                self.ctl = os.open(self.ctl_path, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    os.close(self.ack)
                    err = self.proc.communicate()[1] if self.proc.poll() is not None else b"timed out"
                    raise RuntimeError(f"perf stat did not start: {err.decode(errors='replace').strip()[-300:]}")
                time.sleep(0.01)

    def _command(self, word: bytes) -> None:
        os.write(self.ctl, word + b"\n")
        ready, _, _ = select.select([self.ack], [], [], 10)
        if not ready or not os.read(self.ack, 16).startswith(b"ack"):
            raise RuntimeError(f"perf did not acknowledge {word!r}")

    def enable(self) -> None:
        self._command(b"enable")

    def disable(self) -> None:
        self._command(b"disable")

    def finish(self) -> dict[str, int]:
        self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=10)
        finally:
            os.close(self.ctl)
            os.close(self.ack)
        counts: dict[str, int] = {}
        for line in self.out_path.read_text().splitlines():
            fields = line.split(",")
            if len(fields) > 2 and fields[0].isdigit():
                name = fields[2].split(":sys_enter_", 1)[-1]
                counts["total" if name == "raw_syscalls:sys_enter" else name] = int(fields[0])
        if "total" not in counts:
            raise RuntimeError(f"perf counted nothing: {err.decode(errors='replace').strip()[-300:]}")
        return counts


class StraceCounter:
    """`strace -c -f` attached for a window: counts each syscall (the pooler runs slower meanwhile)."""

    LINE_RE = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$")

    def __init__(self, pids: list[int], work_dir: Path) -> None:
        self.pids = pids
        self.out_path = work_dir / "strace.txt"
        self.proc: subprocess.Popen[bytes] | None = None

    def enable(self) -> None:
        args = ["strace", "-c", "-f", "-o", str(self.out_path)]
        for pid in self.pids:
            args += ["-p", str(pid)]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        assert self.proc.stderr is not None
        # strace says "Process N attached" for each thread once it traces it.
        deadline = time.monotonic() + 5
        attached = 0
        while attached < len(self.pids) and time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            attached += b"attached" in line

    def disable(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=10)

    def finish(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for line in self.out_path.read_text().splitlines():
            match = self.LINE_RE.match(line)
            if match:
                name = match.group(2)
                if name == "total":
                    counts["total"] = int(match.group(1))
                else:
                    counts[name if name in SYSCALLS else "other"] = \
                        counts.get(name if name in SYSCALLS else "other", 0) + int(match.group(1))
        return counts


def measure(pgbench: str, target: Target, mode: str, args: argparse.Namespace) -> Result:
    """One pgbench run against one pooler: the CPU window, then the syscall window."""
    result = Result(mode, target.name, tracer=args.tracer)
    assert target.proc is not None and target.proc.pid is not None
    seconds = WARMUP + 2 * args.window + TAIL
    work = Path(tempfile.mkdtemp(prefix="pgbench-syscalls-"))
    cmd = [pgbench, "-h", target.host, "-p", str(target.port), "-U", USER, "-n", "-S", "-M", mode,
           "-c", str(args.clients), "-j", str(args.threads), "-T", str(int(seconds + 0.999)), "-l",
           f"--log-prefix={work / 'pgbench_log'}", APP_DATABASE]
    bench = subprocess.Popen(cmd, cwd=work, env=pgbench_env(), stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    counter: PerfCounter | StraceCounter | None = None
    try:
        pids = process_ids(target.proc.pid)
        if args.tracer == "perf":
            counter = PerfCounter(pids, work)
        else:
            counter = StraceCounter(pids, work)
        time.sleep(WARMUP)

        cpu = Window()
        wall0, (run0, user0, sys0, sw0, pre0, flt0) = time.time(), read_cpu(pids)
        time.sleep(args.window)
        wall1, (run1, user1, sys1, sw1, pre1, flt1) = time.time(), read_cpu(pids)
        cpu.seconds = wall1 - wall0

        counter.enable()
        trace0 = time.time()
        time.sleep(args.window)
        trace1 = time.time()
        counter.disable()
        counts = counter.finish()
        counter = None

        out, err = bench.communicate(timeout=seconds + 60)
        if bench.returncode != 0:
            lines = (err or out).strip().splitlines() or [""]
            raise RuntimeError(f"pgbench exit code {bench.returncode}: "
                               + next((line for line in lines if "error" in line), lines[-1])[:200])
        cpu.xacts = count_xacts(work, wall0, wall1)
        if not cpu.xacts:
            raise RuntimeError("no transactions in the CPU window")
        cpu.cpu_us = (run1 - run0) * 1e6 / cpu.xacts
        ticks = (user1 - user0) + (sys1 - sys0)
        user_share = (user1 - user0) / ticks if ticks else 0.0
        cpu.user_us = cpu.cpu_us * user_share
        cpu.system_us = cpu.cpu_us - cpu.user_us
        cpu.switches = (sw1 - sw0) / cpu.xacts
        cpu.preempted = (pre1 - pre0) / cpu.xacts
        cpu.faults = (flt1 - flt0) / cpu.xacts
        traced = Window(seconds=trace1 - trace0, xacts=count_xacts(work, trace0, trace1))
        if not traced.xacts:
            raise RuntimeError("no transactions in the syscall window")
        listed = sum(v for k, v in counts.items() if k not in ("total", "other"))
        counts.setdefault("other", 0)
        if args.tracer == "perf":
            # The counters open one by one: a few calls apart at most, never below zero.
            counts["other"] = max(0, counts["total"] - listed)
        traced.syscalls = {name: n / traced.xacts for name, n in counts.items() if n}
        result.cpu, result.traced = cpu, traced
    except Exception as exc:   # report and go on with the next run
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        tracer = counter.proc if counter is not None else None
        if tracer is not None and tracer.poll() is None:   # a window that failed half-way
            tracer.kill()
            tracer.wait()
        if bench.poll() is None:
            bench.kill()
            bench.wait()
        shutil.rmtree(work, ignore_errors=True)
    return result


def print_results(results: list[Result], args: argparse.Namespace) -> None:
    print(f"\npgbench -S, {args.clients} clients, {args.threads} threads, pool size {args.pool_size}; "
          f"windows of {args.window:g}s; syscalls by {args.tracer}; per transaction:")
    names = ["total", *SYSCALLS, "other"]
    shown = [n for n in names if any(r.traced and r.traced.syscalls.get(n, 0) >= 0.005 for r in results)]
    headers = ["mode", "target", "tps", "user us", "sys us", "cpu us", "sleeps", "preempt", "faults", *shown]
    rows = []
    for r in results:
        if r.error or r.cpu is None or r.traced is None:
            rows.append([r.mode, r.target, "failed: " + (r.error or "?")[:100]])
            continue
        c, t = r.cpu, r.traced
        rows.append([r.mode, r.target, f"{c.tps:,.0f}", f"{c.user_us:.1f}", f"{c.system_us:.1f}",
                     f"{c.cpu_us:.1f}", f"{c.switches:.2f}", f"{c.preempted:.2f}", f"{c.faults:.2f}",
                     *(f"{t.syscalls.get(n, 0):.2f}" for n in shown)])
    full = [row for row in rows if len(row) == len(headers)]
    widths = [max([len(h), *(len(row[i]) for row in full)]) for i, h in enumerate(headers)]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths)))
    for row in rows:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
    print("(cpu us: the scheduler's run time, split into user/sys in the ratio of /proc's ticks; sleeps:\n"
          " voluntary context switches; preempt: involuntary ones; faults: minor. These from the untraced window,\n"
          " the syscall columns from the traced one; all per transaction)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_nofile_limit()
    pgbench = find_client_program("pgbench")
    # floor opens one server connection per client.
    per_target = [args.clients if name == "floor" else args.pool_size for name in args.target_names]
    pg = PostgresCluster(max_connections=args.clients + sum(per_target) + 20,
                         settings={"shared_buffers": "128MB"})
    targets: list[Target] = []
    results: list[Result] = []
    try:
        pg.start()
        log(f"postgres on port {pg.port}; pgbench -i -s {args.scale} ...")
        run_pgbench(pgbench, pg.host, pg.port, ["-i", "-q", "-s", str(args.scale)], timeout=600)
        for name in args.target_names:
            target = start_pooler(name, pg, args)
            log(f"{name}: {target.error or 'port ' + str(target.port)}")
            if target.error:
                results += [Result(mode, name, error=target.error) for mode in args.modes]
            else:
                targets.append(target)
        for number, mode in enumerate(args.modes):
            # Rotate the order per mode, so no target always runs first (the machine's load drifts).
            shift = number % max(1, len(targets))
            for target in targets[shift:] + targets[:shift]:
                result = measure(pgbench, target, mode, args)
                results.append(result)
                if result.error:
                    log(f"{mode:8} {target.name:10} failed: {result.error}")
                else:
                    assert result.cpu is not None and result.traced is not None
                    log(f"{mode:8} {target.name:10} {result.cpu.tps:8,.0f} tps, "
                        f"{result.cpu.cpu_us:5.1f} us CPU/xact, "
                        f"{result.traced.syscalls.get('total', 0):5.2f} syscalls/xact")
    finally:
        for target in targets:
            if target.proc is not None:
                target.proc.stop()
        pg.stop()
    print_results(results, args)
    if args.json:
        args.json.write_text(json.dumps([{**asdict(r), "cpu_tps": r.cpu.tps if r.cpu else None} for r in results],
                                        indent=2))
    return 0 if all(r.error is None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
