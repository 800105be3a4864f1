"""Plain counters per pool: the one source for the admin console, the stats log and /metrics.

Owns: `PoolStats` (ints bumped with += on the hot path, read at scrape time) and a
fixed-bucket `Histogram`. Must not touch prometheus objects: metrics.py reads these.
"""

from __future__ import annotations

from bisect import bisect_left

# Seconds; chosen to cover a fast pool hit (sub-millisecond) up to query_wait_timeout.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Histogram:
    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # last bucket is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, cumulative count) pairs, +Inf last, as Prometheus wants them."""
        total = 0
        result = []
        for bound, count in zip(self.bounds + (float("inf"),), self.counts):
            total += count
            result.append((bound, total))
        return result


class PoolStats:
    """Totals since start for one pool (PgBouncer's SHOW STATS_TOTALS, in microseconds there)."""
    __slots__ = ("xact_count", "query_count", "bytes_received", "bytes_sent", "xact_time",
                 "query_time", "wait_time", "wait_count", "server_connects", "server_login_failures",
                 "client_logins", "client_login_failures", "errors", "wait_hist", "xact_hist",
                 "connect_hist", "client_parse_count", "server_parse_count", "bind_count", "session_audits",
                 "settings_adopted", "pins")

    def __init__(self) -> None:
        self.xact_count = 0
        self.query_count = 0
        self.bytes_received = 0     # from clients
        self.bytes_sent = 0         # to clients
        self.xact_time = 0.0        # seconds, summed
        self.query_time = 0.0
        self.wait_time = 0.0        # seconds clients spent waiting for a server connection
        self.wait_count = 0
        self.server_connects = 0
        self.server_login_failures = 0
        self.client_logins = 0
        self.client_login_failures = 0
        self.errors: dict[str, int] = {}   # cause -> count, for errors pgpool sent or saw
        self.wait_hist = Histogram()
        self.xact_hist = Histogram()
        self.connect_hist = Histogram()
        self.client_parse_count = 0   # named Parse messages from clients
        self.server_parse_count = 0   # Parse messages pgpool sent to servers (re-prepares included)
        self.bind_count = 0           # Binds of named statements
        self.session_audits = 0       # audit queries run (session.py): what statements left on a server
        self.settings_adopted = 0     # settings an audit found that the client now carries
        self.pins: dict[str, int] = {}   # cause (session.PIN_CAUSES, "unknown") -> clients pinned by it

    def count_error(self, cause: str) -> None:
        self.errors[cause] = self.errors.get(cause, 0) + 1
