"""µs per statement classification (session.classify), texts with a new literal each time against one constant text.

Owns one measurement: session.classify on Query bodies as the data plane sees them (inside the
message, NUL-terminated), for the shapes pgbench and ORMs send: a new literal in every text (as
pgbench -S's random aid, or an ORM that inlines literals) and the same text every time (extended
protocol, $1). 100,000 texts per shape, the cache cleared before each pass, the best of --rounds
passes. prepared.scan_deallocations, which reads the same bytes for the statement tracker, is
timed beside it. Whichever build imports runs (PGPOOL_PURE_PYTHON=1 for the pure one). It judges
nothing.

    python -m benchmarks.classify [--rounds 5]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

from pgpool import describe_build, prepared, session

COUNT = 100_000


def shapes() -> dict[str, list[bytes]]:
    aids = list(range(1, COUNT + 1))
    random.Random(42).shuffle(aids)
    return {
        "pgbench -S, new literal each time": [
            b"SELECT abalance FROM pgbench_accounts WHERE aid = %d;" % a for a in aids],
        "pgbench -S, constant text": [b"SELECT abalance FROM pgbench_accounts WHERE aid = 1;"] * COUNT,
        "pgbench -S extended ($1), constant": [b"SELECT abalance FROM pgbench_accounts WHERE aid = $1;"] * COUNT,
        "ORM lookup, new literals": [
            b"SELECT flow_run.id, flow_run.name FROM flow_run WHERE flow_run.state_type = 'RUNNING' AND flow_run.id"
            b" = '%d' ORDER BY flow_run.created LIMIT %d" % (a, a % 50) for a in aids],
        "ORM with calls, new literals": [
            b"SELECT count(*) FROM flow_run WHERE flow_run.state_type IN ('RUNNING', 'PENDING') AND flow_run.id = %d"
            % a for a in aids],
        "ORM with calls, constant": [
            b"SELECT count(*) FROM flow_run WHERE flow_run.state_type IN ($1, $2) AND flow_run.id = $3"] * COUNT,
        "pgbench TPC-B UPDATE, new literals": [
            b"UPDATE pgbench_accounts SET abalance = abalance + %d WHERE aid = %d;" % (a, a) for a in aids],
        "pgbench TPC-B INSERT, new literals": [
            b"INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (%d, 1, %d, 5, CURRENT_TIMESTAMP);"
            % (a, a) for a in aids],
    }


def best_us(function: Callable[[bytes, int, int], object], messages: list[bytes], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        session.clear_cache()
        started = time.perf_counter()
        for message in messages:
            function(message, 5, len(message) - 1)
        best = min(best, (time.perf_counter() - started) / len(messages) * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"pgpool {describe_build()}")
    print(f"{'texts':40s} {'classify us':>12s} {'scan_deallocations us':>22s}")
    for name, texts in shapes().items():
        messages = [b"Q\x00\x00\x00\x00" + text + b"\x00" for text in texts]
        print(f"{name:40s} {best_us(session.classify, messages, args.rounds):12.3f} "
              f"{best_us(prepared.scan_deallocations, messages, args.rounds):22.3f}")


if __name__ == "__main__":
    main()
