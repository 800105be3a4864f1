"""Every stats_period: the averages SHOW STATS shows, and one stats log line per pool.

Owns: a snapshot of each pool's counters taken every stats_period, the difference between
the last two snapshots (what PgBouncer calls the averages: per-second rates and mean
durations in microseconds), and the log line per pool in PgBouncer's wording. Reads
PoolStats only; never changes them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .app import App
    from .pool import Pool
    from .stats import PoolStats

log = logging.getLogger("pgpool.stats")

USEC = 1_000_000


@dataclass(frozen=True)
class Totals:
    """Counters since start, in PgBouncer's units (times in microseconds)."""
    server_assignment_count: int = 0
    xact_count: int = 0
    query_count: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    xact_time: int = 0
    query_time: int = 0
    wait_time: int = 0
    client_parse_count: int = 0
    server_parse_count: int = 0
    bind_count: int = 0
    client_login_count: int = 0

    @classmethod
    def from_stats(cls, stats: "PoolStats") -> "Totals":
        return cls(server_assignment_count=stats.wait_count, xact_count=stats.xact_count,
                   query_count=stats.query_count, bytes_received=stats.bytes_received,
                   bytes_sent=stats.bytes_sent, xact_time=int(stats.xact_time * USEC),
                   query_time=int(stats.query_time * USEC), wait_time=int(stats.wait_time * USEC),
                   # Counted by the prepared-statement tracker where it runs; 0 otherwise.
                   client_parse_count=stats.client_parse_count,
                   server_parse_count=stats.server_parse_count,
                   bind_count=stats.bind_count,
                   client_login_count=stats.client_logins)

    def __add__(self, other: "Totals") -> "Totals":
        return Totals(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __sub__(self, other: "Totals") -> "Totals":
        return Totals(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(self)))


def averages(delta: Totals, seconds: float) -> Totals:
    """PgBouncer's averages over a period: counts and bytes per second, times per transaction /
    query / server assignment (microseconds)."""
    if seconds <= 0:
        return Totals()

    def rate(value: int) -> int:
        return int(value / seconds)
    return Totals(
        server_assignment_count=rate(delta.server_assignment_count), xact_count=rate(delta.xact_count),
        query_count=rate(delta.query_count), bytes_received=rate(delta.bytes_received),
        bytes_sent=rate(delta.bytes_sent),
        xact_time=delta.xact_time // delta.xact_count if delta.xact_count else 0,
        query_time=delta.query_time // delta.query_count if delta.query_count else 0,
        wait_time=delta.wait_time // delta.server_assignment_count if delta.server_assignment_count else 0,
        client_parse_count=rate(delta.client_parse_count), server_parse_count=rate(delta.server_parse_count),
        bind_count=rate(delta.bind_count), client_login_count=rate(delta.client_login_count))


def format_line(pool_name: str, avg: Totals) -> str:
    return (f"stats: {pool_name} {avg.xact_count} xacts/s, {avg.query_count} queries/s, "
            f"{avg.client_parse_count} client parses/s, {avg.server_parse_count} server parses/s, "
            f"{avg.bind_count} binds/s, {avg.client_login_count} client logins/s, in {avg.bytes_received} B/s, "
            f"out {avg.bytes_sent} B/s, xact {avg.xact_time} us, query {avg.query_time} us, wait {avg.wait_time} us")


class StatsLog:
    """Snapshots per pool; `averages_for(pools)` sums the last period's differences."""

    def __init__(self, app: "App"):
        self.app = app
        self.snapshots: dict[Pool, Totals] = {}    # pool -> counters at the last tick
        self.deltas: dict[Pool, Totals] = {}       # pool -> change over the last period
        self.period = 0.0                          # seconds the deltas cover
        self.last_tick = time.monotonic()
        self.task: asyncio.Task | None = None

    def tick(self) -> None:
        now = time.monotonic()
        self.period = now - self.last_tick
        self.last_tick = now
        deltas: dict[Pool, Totals] = {}
        snapshots: dict[Pool, Totals] = {}
        for pool in list(self.app.pools.values()):
            current = Totals.from_stats(pool.stats)
            delta = current - self.snapshots.get(pool, Totals())
            snapshots[pool] = current
            deltas[pool] = delta
            if self.app.settings.log_stats and (delta != Totals() or pool.client_count()):
                log.info("%s", format_line(pool.name, averages(delta, self.period)))
        self.snapshots = snapshots
        self.deltas = deltas

    def averages_for(self, pools: "list[Pool]") -> Totals:
        delta = Totals()
        for pool in pools:
            delta = delta + self.deltas.get(pool, Totals())
        return averages(delta, self.period)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.app.settings.stats_period)   # reloadable: read every time
            try:
                self.tick()
            except Exception:    # statistics must never stop the pooler
                log.exception("stats period failed")

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()


def start(app: "App") -> StatsLog:
    stats_log = StatsLog(app)
    stats_log.task = asyncio.get_running_loop().create_task(stats_log.run())
    return stats_log
