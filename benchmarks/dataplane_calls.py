"""pgpool's own Python per transaction, socket-free, with clients queueing for servers as under pgbench.

Owns one measurement: the socket-free data plane of tests/protocol/fakes.py (the real App, Pool,
ClientConnection and ServerConnection over fake transports) plays pgbench -S rounds in which
--queue clients share one server (100 clients over a pool of 20 is 5): every client sends its
request, the first gets the server and the others wait; each reply's ReadyForQuery gives the
server back and links the next waiting client, whose request is flushed in the same call, as in
the real process. It reports CPU µs per transaction (time.process_time) and, in a second pass under
sys.setprofile, how many Python functions and C functions run per transaction, with the top ones.
No kernel and no event loop: what it shows is exactly the part of pgpool's CPU that
benchmarks/syscalls.py finds above the `floor` forwarder. It judges nothing.

    python -m benchmarks.dataplane_calls [--mode simple,extended,prepared] [--queue 5]
        [--transactions 20000] [--top 15] [--set SETTING=VALUE ...] [--model bare]
"""

from __future__ import annotations

import argparse
import collections
import itertools
import random
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

# pgbench -S's statement; in simple mode the literal changes every time (a random aid), which matters:
# pgpool's statement classification is cached per text.
SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
SIMPLE_SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = {};"
DISTINCT_TEXTS = 100_000      # pgbench -i -s 1: aid in 1..100000
_unpack_int32 = struct.Struct("!I").unpack_from


def build_round(mode: str, queue: int, settings: dict[str, str]) -> tuple[Callable[[], None], int]:
    """A function playing one round (`queue` transactions on one server), and that count."""
    from tests.protocol import fakes as f

    # A full pool, as pgpool's 20 of 20 under pgbench: the waiters queue.
    plane = f.Plane(**{"default_pool_size": "1", **settings})
    del plane.pool.release_server      # the recording wrapper: measure the real method alone
    server = plane.servers[0]
    clients = [plane.add_client() for _ in range(queue)]
    requests = None
    if mode == "simple":
        # Drawn from a fixed-seed shuffle, so every run sees the same sequence of texts.
        aids = list(range(1, DISTINCT_TEXTS + 1))
        random.Random(42).shuffle(aids)
        requests = itertools.cycle([f.query(SIMPLE_SQL.format(aid)) for aid in aids])
        request, reply = f.query(SIMPLE_SQL.format(1)), f.select_reply(b"1234")
    elif mode == "extended":
        request, reply = f.extended(SQL), f.extended_reply(b"1234")
    else:
        # pgbench -M prepared: Parse once per client connection, then Bind/Describe/Execute/Sync.
        statement = "P_0"
        request = f.bind(statement=statement) + f.describe(b"P") + f.execute() + f.SYNC
        reply = f.BIND_COMPLETE + f.row_description("v") + f.data_row(b"1234") + f.complete("SELECT 1") + f.ready()
        for client in clients:
            client.data_received(f.parse(SQL, statement) + f.SYNC)
            if client.server is not None:
                server.data_received(f.PARSE_COMPLETE + f.ready())
            client.transport.writes.clear()
    writes = [c.transport.writes for c in clients] + [server.transport.writes]

    def one_round() -> None:
        for client in clients:
            client.data_received(request if requests is None else next(requests))
        for _ in clients:
            server.data_received(reply)
        for w in writes:
            w.clear()

    for _ in range(200):   # warm up (3.11's specialising interpreter, caches) and check the flow
        one_round()
    assert server.client is None and all(c.server is None for c in clients), "each reply must release the server"
    return one_round, queue


class BarePool:
    """--model bare: the least a Python transaction pooler does per transaction (a yardstick, not pgpool):
    walk the headers each way, count requests, release on ReadyForQuery 'I', hand the server to
    the next waiter from a FIFO. No statement tracking, classification, stats or timers."""

    __slots__ = ("idle", "waiting")

    def __init__(self) -> None:
        self.idle: list[BareServer] = []
        self.waiting: collections.deque[BareClient] = collections.deque()

    def request(self, client: BareClient) -> None:
        if self.idle:
            self.link(client, self.idle.pop())
        else:
            self.waiting.append(client)

    def link(self, client: BareClient, server: BareServer) -> None:
        client.server, server.client = server, client
        data, client.pending = client.pending, None
        if data is not None:
            client.forward(data)

    def release(self, server: BareServer) -> None:
        client = server.client
        if client is not None:
            client.server = server.client = None
        if self.waiting:
            self.link(self.waiting.popleft(), server)
        else:
            self.idle.append(server)


class BareClient:
    __slots__ = ("pool", "server", "pending", "owed", "writes")

    def __init__(self, pool: BarePool) -> None:
        self.pool, self.server, self.pending, self.owed, self.writes = pool, None, None, 0, []

    def data_received(self, data: bytes) -> None:
        if self.server is None:
            self.pending = data
            self.pool.request(self)
        else:
            self.forward(data)

    def forward(self, data: bytes) -> None:
        pos, n = 0, len(data)
        while pos < n:
            if data[pos] in b"QS":          # Query and Sync are owed a ReadyForQuery
                self.owed += 1
            pos += 1 + _unpack_int32(data, pos + 1)[0]
        self.server.writes.append(data)   # type: ignore[union-attr]


class BareServer:
    __slots__ = ("pool", "client", "writes")

    def __init__(self, pool: BarePool) -> None:
        self.pool, self.client, self.writes = pool, None, []

    def data_received(self, data: bytes) -> None:
        client = self.client
        pos, n, idle = 0, len(data), False
        while pos < n:
            if data[pos] == 90:             # ReadyForQuery
                client.owed -= 1            # type: ignore[union-attr]
                idle = data[pos + 5] == 73 and not client.owed   # type: ignore[union-attr]
            pos += 1 + _unpack_int32(data, pos + 1)[0]
        client.writes.append(data)        # type: ignore[union-attr]
        if idle:
            self.pool.release(self)


def build_bare_round(mode: str, queue: int) -> tuple[Callable[[], None], int]:
    from tests.protocol import fakes as f

    pool = BarePool()
    server = BareServer(pool)
    pool.idle.append(server)
    clients = [BareClient(pool) for _ in range(queue)]
    if mode == "simple":
        request, reply = f.query(SIMPLE_SQL.format(4242)), f.select_reply(b"1234")
    elif mode == "extended":
        request, reply = f.extended(SQL), f.extended_reply(b"1234")
    else:
        request = f.bind(statement="P_0") + f.describe(b"P") + f.execute() + f.SYNC
        reply = f.BIND_COMPLETE + f.row_description("v") + f.data_row(b"1234") + f.complete("SELECT 1") + f.ready()
    writes = [c.writes for c in clients] + [server.writes]

    def one_round() -> None:
        for client in clients:
            client.data_received(request)
        for _ in clients:
            server.data_received(reply)
        for w in writes:
            w.clear()

    one_round()
    assert server.client is None and pool.idle == [server]
    return one_round, queue


def measure_cpu(one_round: Callable[[], None], per_round: int, transactions: int) -> float:
    rounds = max(1, transactions // per_round)
    start = time.process_time()
    for _ in range(rounds):
        one_round()
    return (time.process_time() - start) * 1e6 / (rounds * per_round)


def count_calls(one_round: Callable[[], None], per_round: int, rounds: int = 200) -> tuple[float, float, Any]:
    """Python and C function calls per transaction, and a Counter of them by name."""
    counts: collections.Counter[str] = collections.Counter()

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            code = frame.f_code
            counts[f"{code.co_filename.rsplit('/', 1)[-1]}:{code.co_name}"] += 1
        elif event == "c_call":
            counts[f"C {getattr(arg, '__qualname__', arg)}"] += 1

    sys.setprofile(profile)
    try:
        for _ in range(rounds):
            one_round()
    finally:
        sys.setprofile(None)
    counts.pop("C setprofile", None)
    xacts = rounds * per_round
    python = sum(n for k, n in counts.items() if not k.startswith("C ")) / xacts
    c = sum(n for k, n in counts.items() if k.startswith("C ")) / xacts
    return python, c, counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dataplane_calls", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", default="simple,extended,prepared")
    parser.add_argument("--queue", type=int, default=5, help="clients per server (pgbench 100 over a pool of 20: 5)")
    parser.add_argument("--transactions", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3, help="CPU measurements per mode (median shown)")
    parser.add_argument("--top", type=int, default=15, help="functions listed per mode, by calls")
    parser.add_argument("--model", choices=("pgpool", "bare"), default="pgpool",
                        help="bare: the same rounds through a minimal Python transaction pooler (BarePool), "
                             "the floor of any Python data plane")
    parser.add_argument("--set", action="append", default=[], metavar="SETTING=VALUE",
                        help="a pgpool setting for the plane, e.g. max_prepared_statements=0 (repeatable)")
    args = parser.parse_args(argv)
    if any("=" not in item for item in args.set):
        parser.error("--set expects SETTING=VALUE")
    settings = dict(item.split("=", 1) for item in args.set)
    import pgpool

    what = "bare model (BarePool)" if args.model == "bare" else f"pgpool {pgpool.describe_build()}"
    print(f"{what}; {args.queue} clients per server; settings {settings or 'default'}")
    print(f"{'mode':>9} {'us/xact':>8} {'py calls/xact':>14} {'C calls/xact':>13}")
    details = []
    for mode in [m for m in args.mode.split(",") if m]:
        if args.model == "bare":
            one_round, per_round = build_bare_round(mode, args.queue)
        else:
            one_round, per_round = build_round(mode, args.queue, settings)
        cpu = sorted(measure_cpu(one_round, per_round, args.transactions) for _ in range(args.rounds))
        python, c, counts = count_calls(one_round, per_round)
        print(f"{mode:>9} {cpu[len(cpu) // 2]:8.2f} {python:14.1f} {c:13.1f}")
        details.append((mode, counts, 200 * per_round))
    for mode, counts, xacts in details:
        if args.top:
            print(f"\n{mode}: calls per transaction")
            for name, n in counts.most_common(args.top):
                print(f"  {n / xacts:5.2f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
