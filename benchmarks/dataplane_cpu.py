"""CPU of pgpool's own code per transaction, without sockets: compiled vs pure Python, same process layout.

Owns one measurement: the socket-free data plane of tests/protocol/fakes.py (the real App, Pool,
ClientConnection and ServerConnection over fake transports) plays pgbench -S transactions
(simple: Query; extended: Parse/Bind/Describe/Execute/Sync) N times, and time.process_time()
divides by N. No kernel, no event loop, no other process: what is left is exactly the Python
that the compiled build replaces. Each build runs in its own interpreter (PGPOOL_PURE_PYTHON=1
for pure), alternating, --rounds times; the table shows medians. It judges nothing.

    python -m benchmarks.dataplane_cpu [--transactions 20000] [--rounds 5]
    python -m benchmarks.dataplane_cpu --profile simple    # cProfile of the pure-Python run, by self time
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = 4242;"


def play(mode: str, transactions: int) -> dict[str, object]:
    """Run in the child: N transactions through one client and one server; µs of CPU per transaction."""
    import pgpool
    from tests.protocol import fakes as f

    plane = f.Plane()
    client = plane.add_client()
    request = f.query(SQL) if mode == "simple" else f.extended(SQL)
    reply = f.select_reply(b"1234") if mode == "simple" else f.extended_reply(b"1234")
    server = plane.servers[0]
    client_writes, server_writes = client.transport.writes, server.transport.writes

    def one() -> None:
        client.data_received(request)
        server.data_received(reply)
        client_writes.clear()
        server_writes.clear()
        plane.releases.clear()

    for _ in range(1000):   # warm up (3.11's specialising interpreter, caches)
        one()
    assert client.server is None and not client_writes, "the server must go back after each transaction"
    start = time.process_time()
    for _ in range(transactions):
        one()
    spent = time.process_time() - start
    return {"build": pgpool.describe_build(), "us_per_xact": spent * 1e6 / transactions}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dataplane_cpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--transactions", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mode", default="simple,extended")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--profile", metavar="MODE", help="print cProfile's top functions by self time for MODE")
    args = parser.parse_args(argv)
    if args.profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.runcall(play, args.profile, args.transactions)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        return 0
    if args.child:
        print(json.dumps(play(args.child, args.transactions)))
        return 0
    results: dict[tuple[str, str], list[float]] = {}
    builds: dict[str, str] = {}
    for _ in range(args.rounds):
        for mode in [m for m in args.mode.split(",") if m]:
            for name, pure in (("compiled", ""), ("pure", "1")):
                env = {**os.environ, "PGPOOL_PURE_PYTHON": pure,
                       "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
                out = subprocess.run([sys.executable, "-m", "benchmarks.dataplane_cpu", "--child", mode,
                                      "--transactions", str(args.transactions)], cwd=REPO_ROOT, env=env,
                                     capture_output=True, text=True, timeout=600, check=True)
                result = json.loads(out.stdout.strip().splitlines()[-1])
                builds[name] = str(result["build"])
                results.setdefault((mode, name), []).append(float(result["us_per_xact"]))
    for name, build in builds.items():
        print(f"{name}: {build}")
    print(f"{'mode':>9} {'compiled us/xact':>17} {'pure us/xact':>13} {'compiled/pure':>14}")
    for mode in [m for m in args.mode.split(",") if m]:
        compiled, pure = (statistics.median(results[(mode, n)]) for n in ("compiled", "pure"))
        print(f"{mode:>9} {compiled:17.2f} {pure:13.2f} {compiled / pure:14.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
