"""Memory per idle logged-in client: pgpool against PgBouncer in one run, and where pgpool's goes.

Owns two measurements, both with bare protocol-3 clients that log in and stay idle (no driver:
the load generator's own memory must not matter):

* the ratio: each pooler's RSS growth (/proc/PID/status VmRSS) from before the clients connect to
  when all N are logged in and idle, per client, pgpool and PgBouncer started side by side
  against one throwaway cluster, and beside them the floor: a bare uvloop server whose protocol
  object holds only its transport (what pgpool's event loop costs per connection before pgpool
  keeps anything);
* the breakdown (pgpool only): pgpool run in-process under a probe (`idle_memory probe ...`) that
  snapshots the Python heap before and after the N logins and reports, per client, the bytes of
  new objects by type, the bytes reachable from each attribute of a ClientConnection (objects
  that existed before the logins, and objects shared between clients, are counted once, not per
  client), the allocation sites tracemalloc saw (it sees C allocations too: uvloop's libuv
  handles), and RSS against what Python allocated (the difference is malloc/arena waste, e.g.
  left by the login coroutines; kernel socket buffers are not in RSS at all).

It judges nothing (no pass/fail): it prints numbers. The RSS run and the breakdown run are
separate processes, as tracemalloc costs memory of its own.

    python -m benchmarks.idle_memory [--clients 10000] [--targets pgpool,pgbouncer,uvloop-floor] [--no-breakdown]
        [--login-phase] [--top 25] [--json FILE] [--pgpool-env K=V]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ctypes
import gc
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import uvloop

from benchmarks.pgbench_compare import Target, close_idle_clients, open_idle_clients, raise_nofile_limit, read_rss_kib
from benchmarks.targets import ROLES, PgBouncerProcess, PgpoolProcess, PostgresCluster, find_pgbouncer, free_port

POOLERS = ("pgpool", "pgbouncer")
# uvloop-floor: a bare uvloop server (one-slot protocol, no login): what the event loop's transport costs.
TARGETS = (*POOLERS, "uvloop-floor")


# ---- the probe: runs inside the pgpool process --------------------------------------------------

class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def read_mallinfo() -> dict[str, int] | None:
    """glibc's heap: bytes malloc handed out (in use) and bytes it holds free (fragmentation)."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return None
    info = libc.mallinfo2()
    return {"heap_bytes": info.arena + info.hblkhd, "in_use_bytes": info.uordblks + info.hblkhd,
            "free_bytes": info.fordblks}


# Never walked into: shared by every client (or the process), never per-client state.
_STOP_TYPES = (type, type(sys), type(read_mallinfo))


def _heap_objects(skip: tuple[object, ...] = ()) -> dict[int, object]:
    """Every object gc tracks, plus the untracked ones they hold (str, bytes, int, atomic tuples).

    `skip`: the probe's own containers, neither listed nor walked into."""
    gc.collect()
    found: dict[int, object] = {}
    stack: list[object] = []
    tracked = gc.get_objects()
    skipped = {id(found), id(stack), id(tracked), *(id(obj) for obj in skip)}
    for obj in tracked:
        if id(obj) not in skipped:
            found[id(obj)] = obj
            stack.append(obj)
    while stack:
        for ref in gc.get_referents(stack.pop()):
            if id(ref) not in found and id(ref) not in skipped and not gc.is_tracked(ref):
                found[id(ref)] = ref
                stack.append(ref)
    return found


# Allocations of the probe itself (its heap walks, tracemalloc's own lists) are left out of the sites.
_PROBE_FILTERS = (tracemalloc.Filter(False, __file__), tracemalloc.Filter(False, tracemalloc.__file__))


def _site_totals(snapshot: tracemalloc.Snapshot) -> dict[str, tuple[int, int]]:
    """file:line -> (blocks, bytes) still allocated there."""
    stats = snapshot.filter_traces(_PROBE_FILTERS).statistics("lineno")
    return {str(stat.traceback[0]): (stat.count, stat.size) for stat in stats}


class Probe:
    """Heap snapshots on request, from a thread beside pgpool's event loop (the clients are idle)."""

    def __init__(self, trace: bool):
        self.trace = trace
        self.before: dict[int, object] = {}   # strong references: their ids cannot be reused meanwhile
        self.before_sites: dict[str, tuple[int, int]] = {}
        self.before_rss = 0
        self.before_traced = 0
        self.before_malloc: dict[str, int] | None = None

    def snapshot_before(self) -> dict[str, object]:
        self.before = _heap_objects()
        gc.collect()
        if self.trace:
            self.before_sites = _site_totals(tracemalloc.take_snapshot())
            self.before_traced = tracemalloc.get_traced_memory()[0]
        self.before_malloc = read_mallinfo()
        self.before_rss = read_rss_kib(os.getpid())
        return {"objects": len(self.before), "rss_kib": self.before_rss}

    def snapshot_after(self, clients: int, top: int) -> dict[str, object]:
        # Read first: the walk below allocates.
        rss = read_rss_kib(os.getpid())
        malloc = read_mallinfo()
        traced = tracemalloc.get_traced_memory()[0] if self.trace else 0
        after = _heap_objects(skip=(self.before, self.before_sites, self.__dict__))
        new = {key: obj for key, obj in after.items() if key not in self.before}
        del after
        by_type: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
        for obj in new.values():
            entry = by_type[_type_name(obj)]
            entry[0] += 1
            entry[1] += sys.getsizeof(obj)
        report: dict[str, object] = {
            "clients": clients,
            "rss_before_kib": self.before_rss,
            "rss_after_kib": rss,
            "rss_per_client_bytes": (rss - self.before_rss) * 1024 / clients,
            "new_objects_per_client": len(new) / clients,
            "new_object_bytes_per_client": sum(e[1] for e in by_type.values()) / clients,
            "by_type": sorted(((name, count / clients, size / clients) for name, (count, size) in by_type.items()),
                              key=lambda row: -row[2])[:top],
            "by_client_attribute": _attribute_bytes(new, clients),
        }
        del new, by_type
        if malloc is not None and self.before_malloc is not None:
            report["malloc_in_use_per_client_bytes"] = (malloc["in_use_bytes"] - self.before_malloc["in_use_bytes"]) / clients
            report["malloc_free_per_client_bytes"] = (malloc["free_bytes"] - self.before_malloc["free_bytes"]) / clients
        if self.trace:
            report["traced_per_client_bytes"] = (traced - self.before_traced) / clients
            gc.collect()
            sites = _site_totals(tracemalloc.take_snapshot())
            diff = []
            for site in sites.keys() | self.before_sites.keys():
                count, size = sites.get(site, (0, 0))
                count0, size0 = self.before_sites.get(site, (0, 0))
                diff.append((site, (count - count0) / clients, (size - size0) / clients))
            diff.sort(key=lambda row: -abs(row[2]))
            report["sites"] = diff[:top]
        return report


def _type_name(obj: object) -> str:
    cls = type(obj)
    return cls.__qualname__ if cls.__module__ in ("builtins", None) else f"{cls.__module__}.{cls.__qualname__}"


def _attribute_bytes(new: dict[int, object], clients: int) -> list[tuple[str, float]]:
    """Bytes of new objects reachable from each ClientConnection attribute, per client.

    An object is counted once, for the first attribute (in __slots__ order) of the first client
    that reaches it, so what clients share is not multiplied. The walk stops at other
    connections, pools and the app: what they hold is theirs.
    """
    conns = [obj for obj in new.values() if type(obj).__name__ == "ClientConnection"]
    if not conns:
        return []
    cls = type(conns[0])
    slots = [name for klass in cls.__mro__ for name in getattr(klass, "__slots__", ())]
    stop_names = {"ClientConnection", "ServerConnection", "Pool", "App"}
    claimed: set[int] = {id(conn) for conn in conns}
    totals = collections.Counter({"(the object itself)": sum(sys.getsizeof(c) for c in conns)})
    for conn in conns:
        for slot in slots:
            try:
                value = getattr(conn, slot)
            except AttributeError:
                continue
            stack = [value]
            while stack:
                obj = stack.pop()
                key = id(obj)
                if key in claimed or key not in new or isinstance(obj, _STOP_TYPES) \
                        or type(obj).__name__ in stop_names:
                    continue
                claimed.add(key)
                totals[slot] += sys.getsizeof(obj)
                stack.extend(gc.get_referents(obj))
    unclaimed = sum(sys.getsizeof(obj) for key, obj in new.items() if key not in claimed)
    totals["(new objects no client attribute reaches)"] = unclaimed
    return [(name, size / clients) for name, size in totals.most_common()]


def _serve_probe(probe: Probe, path: str) -> None:
    """One request per connection: `before` or `after N TOP`; the answer is JSON."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    while True:
        conn, _ = listener.accept()
        with conn:
            words = conn.recv(256).decode().split()
            if words[0] == "before":
                answer = probe.snapshot_before()
            else:
                answer = probe.snapshot_after(int(words[1]), int(words[2]))
            conn.sendall(json.dumps(answer).encode())


def run_probe(argv: list[str]) -> int:
    """`probe SOCKET [--trace] -- <pgpool arguments>`: pgpool's main in this process, with the probe."""
    split = argv.index("--")
    own, pgpool_args = argv[:split], argv[split + 1:]
    trace = "--trace" in own
    if trace:
        tracemalloc.start(1)
    probe = Probe(trace)
    threading.Thread(target=_serve_probe, args=(probe, own[0]), daemon=True).start()
    from pgpool.cli import main as pgpool_main   # after tracemalloc.start: its imports are traced too
    return pgpool_main(pgpool_args)


def ask_probe(path: str, request: str) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(600)
        conn.connect(path)
        conn.sendall(request.encode())
        chunks = []
        while chunk := conn.recv(1 << 16):
            chunks.append(chunk)
    return json.loads(b"".join(chunks))


class ProbedPgpool(PgpoolProcess):
    """pgpool started through the probe: `python -m benchmarks.idle_memory probe SOCKET -- ...`."""

    def __init__(self, probe_socket: str, trace: bool, **kwargs: object):
        self.probe_socket = probe_socket
        self.trace = trace
        super().__init__(**kwargs)  # type: ignore[arg-type]

    def _command(self) -> list[str]:
        pgpool_args = super()._command()[3:]   # drop: python -m pgpool
        return [sys.executable, "-m", "benchmarks.idle_memory", "probe", self.probe_socket,
                *(["--trace"] if self.trace else []), "--", *pgpool_args]


# ---- the floor: what one idle uvloop transport costs, with nothing of pgpool on it -----------------

class _BareProtocol(asyncio.Protocol):
    __slots__ = ("transport",)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport   # type: ignore[assignment]
        transport.get_extra_info("peername")   # as pgpool does: uvloop caches a socket object for it
        transport.get_extra_info("socket")


def run_floor(argv: list[str]) -> int:
    """`floor PORT`: a uvloop server whose protocol holds its transport and nothing else."""
    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(_BareProtocol, "127.0.0.1", int(argv[0]), backlog=1024)
        print("ready", flush=True)
        async with server:
            await server.serve_forever()

    uvloop.run(serve())
    return 0


def measure_floor(clients: int) -> dict[str, object]:
    """RSS per connection of the bare uvloop server: the part of pgpool's figure that its event loop costs."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.idle_memory", "floor", str(port)],
                            stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"

        async def run() -> tuple[int, int]:
            gate = asyncio.Semaphore(100)

            async def one() -> asyncio.StreamWriter:
                async with gate:
                    return (await asyncio.open_connection("127.0.0.1", port))[1]

            first = await one()
            before = read_rss_kib(proc.pid)
            writers = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(clients))), timeout=60 + clients / 50)
            await asyncio.sleep(0.5)   # the server has accepted them all
            after = read_rss_kib(proc.pid)
            for writer in [first, *writers]:
                writer.close()
            return before, after

        before, after = asyncio.run(run())
    finally:
        proc.kill()
        proc.wait()
    return {"clients": clients, "rss_before_kib": before, "rss_after_kib": after,
            "kib_per_client": (after - before) / clients, "login_seconds": 0.0}


# ---- the benchmark -------------------------------------------------------------------------------

def pooler_settings(clients: int) -> dict[str, object]:
    return {"pool_mode": "transaction", "default_pool_size": 5, "max_client_conn": clients + 100,
            "server_tls_sslmode": "disable"}


def measure_rss(proc: PgpoolProcess | PgBouncerProcess, name: str, clients: int) -> dict[str, object]:
    target = Target(name, proc.host, proc.port, proc)
    pid = proc.pid
    assert pid is not None
    before = read_rss_kib(pid)

    async def run() -> tuple[int, float]:
        started = time.monotonic()
        writers = await open_idle_clients(target, clients)
        elapsed = time.monotonic() - started
        after = read_rss_kib(pid)
        await close_idle_clients(writers)
        return after, elapsed

    after, elapsed = asyncio.run(run())
    return {"clients": clients, "rss_before_kib": before, "rss_after_kib": after,
            "kib_per_client": (after - before) / clients, "login_seconds": round(elapsed, 2)}


def measure_breakdown(pg: PostgresCluster, clients: int, top: int, trace: bool, env: dict[str, str],
                      login_phase: bool) -> dict[str, dict[str, object]]:
    """The probe's reports: N idle logged-in clients; with `login_phase`, also N clients that connected
    and sent nothing yet (each holds its login coroutine, Task and login buffer meanwhile)."""
    with tempfile.TemporaryDirectory(prefix="idle-memory-") as tmp:
        path = os.path.join(tmp, "probe.sock")
        proc = ProbedPgpool(path, trace, backend_host=pg.host, backend_port=pg.port, users=dict(ROLES),
                            settings=pooler_settings(clients), env=env)
        proc.start()
        try:
            target = Target("pgpool", proc.host, proc.port, proc)

            async def run() -> dict[str, dict[str, object]]:
                reports = {}
                # One client first, so one-time costs (the pool, its first server, caches) are in "before".
                first = await open_idle_clients(target, 1)
                await asyncio.to_thread(ask_probe, path, "before")
                writers = await open_idle_clients(target, clients)
                reports["idle, logged in"] = await asyncio.to_thread(ask_probe, path, f"after {clients} {top}")
                await close_idle_clients(writers)
                if login_phase:
                    await asyncio.to_thread(ask_probe, path, "before")
                    gate = asyncio.Semaphore(100)

                    async def connect() -> asyncio.StreamWriter:
                        async with gate:
                            return (await asyncio.open_connection(proc.host, proc.port))[1]

                    silent = await asyncio.gather(*(connect() for _ in range(clients)))
                    await asyncio.sleep(1)   # a benchmark, not a test: pgpool has accepted them all by then
                    reports["mid-login, no startup packet yet"] = await asyncio.to_thread(
                        ask_probe, path, f"after {clients} {top}")
                    for writer in silent:
                        writer.close()
                await close_idle_clients(first)
                return reports

            return asyncio.run(run())
        finally:
            proc.stop()


def print_report(rss: dict[str, dict[str, object]], breakdowns: dict[str, dict[str, object]]) -> None:
    print("\nidle logged-in clients: RSS growth of the pooler process per client")
    for name, result in rss.items():
        if "error" in result:
            print(f"  {name:12} failed: {result['error']}")
            continue
        what = "connections (no login)" if name == "uvloop-floor" else f"clients logged in in {result['login_seconds']}s"
        print(f"  {name:12} {result['clients']} {what}: RSS {result['rss_before_kib']} -> "
              f"{result['rss_after_kib']} KiB, {result['kib_per_client']:.2f} KiB per client")
    ok = {n: r for n, r in rss.items() if "error" not in r}
    if "pgpool" in ok and "pgbouncer" in ok and ok["pgbouncer"]["kib_per_client"]:
        print(f"  pgpool/pgbouncer: {ok['pgpool']['kib_per_client'] / ok['pgbouncer']['kib_per_client']:.2f}x")
    if "pgpool" in ok and "uvloop-floor" in ok:
        own = ok["pgpool"]["kib_per_client"] - ok["uvloop-floor"]["kib_per_client"]   # type: ignore[operator]
        print(f"  pgpool above the uvloop floor (its own objects per client): {own:.2f} KiB")
    for label, report in breakdowns.items():
        if "error" in report:
            print(f"\nbreakdown ({label}) failed: {report['error']}")
            continue
        print(f"\npgpool in-process breakdown ({label}), bytes per client:")
        print(f"  RSS growth {report['rss_per_client_bytes']:.0f}; Python objects {report['new_object_bytes_per_client']:.0f} "
              f"({report['new_objects_per_client']:.1f} objects)", end="")
        if "traced_per_client_bytes" in report:
            print(f"; tracemalloc {report['traced_per_client_bytes']:.0f}", end="")
        if "malloc_in_use_per_client_bytes" in report:
            print(f"; malloc in use {report['malloc_in_use_per_client_bytes']:.0f}, "
                  f"malloc free {report['malloc_free_per_client_bytes']:.0f}", end="")
        print()
        print("  by type (objects, bytes):")
        for name, count, size in report["by_type"]:  # type: ignore[union-attr]
            print(f"    {size:8.1f}  {count:6.2f}  {name}")
        print("  by ClientConnection attribute (bytes of new objects it reaches):")
        for name, size in report["by_client_attribute"]:  # type: ignore[union-attr]
            if size >= 0.5:
                print(f"    {size:8.1f}  {name}")
        if "sites" in report:
            print("  allocation sites (tracemalloc, net blocks and bytes):")
            for site, count, size in report["sites"]:  # type: ignore[union-attr]
                print(f"    {size:8.1f}  {count:6.2f}  {site}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["probe"]:
        return run_probe(argv[1:])
    if argv[:1] == ["floor"]:
        return run_floor(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m benchmarks.idle_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=10000, help="idle clients per pooler")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated subset of " + ",".join(TARGETS))
    parser.add_argument("--no-breakdown", action="store_true", help="only the RSS ratio")
    parser.add_argument("--no-trace", action="store_true", help="breakdown without tracemalloc (allocation sites)")
    parser.add_argument("--login-phase", action="store_true",
                        help="also break down N clients that connected and sent no startup packet yet")
    parser.add_argument("--top", type=int, default=25, help="rows per breakdown table")
    parser.add_argument("--pgpool-env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment of the pgpool processes (repeatable), e.g. PGPOOL_PURE_PYTHON=1")
    parser.add_argument("--json", type=Path, help="write all results to this file")
    args = parser.parse_args(argv)
    env = dict(item.split("=", 1) for item in args.pgpool_env)
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    nofile = raise_nofile_limit()
    if nofile < args.clients + 200:
        print(f"warning: RLIMIT_NOFILE hard limit {nofile} is low for {args.clients} clients", file=sys.stderr)

    pg = PostgresCluster(max_connections=50)
    rss: dict[str, dict[str, object]] = {}
    breakdowns: dict[str, dict[str, object]] = {}
    try:
        pg.start()
        for name in names:
            if name == "uvloop-floor":
                try:
                    rss[name] = measure_floor(args.clients)
                except Exception as exc:
                    rss[name] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
            if name == "pgbouncer" and find_pgbouncer() is None:
                rss[name] = {"error": "pgbouncer is not installed"}
                continue
            settings = pooler_settings(args.clients)
            proc: PgpoolProcess | PgBouncerProcess = (
                PgpoolProcess(backend_host=pg.host, backend_port=pg.port, users=dict(ROLES), settings=settings, env=env)
                if name == "pgpool" else
                PgBouncerProcess(backend_host=pg.host, backend_port=pg.port, users=dict(ROLES), settings=settings))
            proc.start()
            try:
                rss[name] = measure_rss(proc, name, args.clients)
            except Exception as exc:   # report and carry on with the other target
                rss[name] = {"error": f"{type(exc).__name__}: {exc}"}
            finally:
                proc.stop()
            print(f"{name}: {rss[name]}", file=sys.stderr)
        if "pgpool" in names and not args.no_breakdown:
            label = "tracemalloc" if not args.no_trace else "no tracemalloc"
            try:
                for phase, report in measure_breakdown(pg, args.clients, args.top, not args.no_trace, env,
                                                       args.login_phase).items():
                    breakdowns[f"{phase}; {label}"] = report
            except Exception as exc:
                breakdowns[label] = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        pg.stop()
    print_report(rss, breakdowns)
    if args.json:
        args.json.write_text(json.dumps({"rss": rss, "breakdown": breakdowns}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
