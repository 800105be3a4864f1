"""The ledger workload: many clients commit uniquely-identified rows and remember what was acknowledged.

Owns: the load loop used by the fault tests and `python -m benchmarks.faults`, and the audit that
compares what clients were told with what the database holds:
- acknowledged-but-missing: COMMIT returned OK, row absent (must be 0);
- duplicated: one id present twice (must be 0);
- in doubt: the connection broke while COMMIT was on its way; present or not, both are correct;
- unexplained: present although the client saw the transaction fail before COMMIT (must be 0);
- errors without cause: a transaction's connection ended with no ErrorResponse (no SQLSTATE) to say
  why (failed connects are not counted: a refused connection explains itself).
Must not decide pass/fail: tests and the bench read the `Audit`.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from dataclasses import dataclass, field

import asyncpg

TABLE = "ledger"
CREATE_SQL = f"CREATE TABLE IF NOT EXISTS {TABLE} (id uuid NOT NULL, client int NOT NULL, at timestamptz DEFAULT now())"
INSERT_SQL = f"INSERT INTO {TABLE} (id, client) VALUES ($1, $2)"
RECONNECT_PAUSE = 0.05   # between failed connects of one client: load, not a connect storm


def cause_of(error: BaseException) -> asyncpg.PostgresError | None:
    """The ErrorResponse a client got, if any. asyncpg reports an ErrorResponse followed by the
    connection closing (every FATAL) as ConnectionDoesNotExistError caused by the server's error;
    without that cause, the connection just ended and the client was told nothing."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, asyncpg.PostgresError) and not isinstance(seen, asyncpg.ConnectionDoesNotExistError):
            return seen
        seen = seen.__cause__
    return None


@dataclass
class ErrorSeen:
    at: float           # seconds since the run started
    sqlstate: str       # "" when the client got no ErrorResponse at all
    message: str
    stage: str          # connect, begin, insert, commit


@dataclass
class Ledger:
    """What one run's clients were told; `audit` compares it with the table."""
    started: float = field(default_factory=time.monotonic)
    acked: set[uuid.UUID] = field(default_factory=set)
    in_doubt: set[uuid.UUID] = field(default_factory=set)
    failed: set[uuid.UUID] = field(default_factory=set)
    commits: list[float] = field(default_factory=list)    # times of acknowledged commits
    errors: list[ErrorSeen] = field(default_factory=list)
    connects: int = 0

    def now(self) -> float:
        return time.monotonic() - self.started

    def record_error(self, error: BaseException, stage: str) -> None:
        cause = cause_of(error)
        sqlstate = getattr(cause, "sqlstate", None) or "" if cause is not None else ""
        self.errors.append(ErrorSeen(self.now(), sqlstate, f"{type(error).__name__}: {error}", stage))

    def longest_gap(self, start: float = 0.0, end: float | None = None) -> float:
        """Longest time without an acknowledged commit inside [start, end]: the outage clients saw."""
        end = self.now() if end is None else end
        times = [start] + sorted(t for t in self.commits if start <= t <= end) + [end]
        return max(b - a for a, b in zip(times, times[1:]))

    def first_commit_after(self, moment: float) -> float | None:
        later = [t for t in self.commits if t >= moment]
        return min(later) if later else None

    def throughput(self, bucket: float = 0.25) -> list[tuple[float, int, int]]:
        """(bucket start, commits, errors) over the run, for plots."""
        end = self.now()
        rows = []
        for i in range(int(end / bucket) + 1):
            lo, hi = i * bucket, (i + 1) * bucket
            rows.append((lo, sum(lo <= t < hi for t in self.commits), sum(lo <= e.at < hi for e in self.errors)))
        return rows


@dataclass
class Audit:
    acknowledged: int
    missing: int
    duplicated: int
    in_doubt: int
    in_doubt_present: int
    unexplained: int
    errors: int
    errors_without_cause: int

    def violations(self) -> list[str]:
        found = []
        if self.missing:
            found.append(f"{self.missing} acknowledged commits missing")
        if self.duplicated:
            found.append(f"{self.duplicated} rows duplicated")
        if self.unexplained:
            found.append(f"{self.unexplained} rows present whose transaction failed before COMMIT")
        return found


async def create_table(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(CREATE_SQL)
        await conn.execute(f"GRANT ALL ON {TABLE} TO PUBLIC")
        await conn.execute(f"TRUNCATE {TABLE}")
    finally:
        await conn.close()


async def audit(ledger: Ledger, dsn: str) -> Audit:
    """Read the table directly (not through the pooler) and compare it with what clients were told."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(f"SELECT id, count(*) AS n FROM {TABLE} GROUP BY id")
    finally:
        await conn.close()
    present = {row["id"]: row["n"] for row in rows}
    ids = set(present)
    return Audit(
        acknowledged=len(ledger.acked),
        missing=len(ledger.acked - ids),
        duplicated=sum(1 for n in present.values() if n > 1),
        in_doubt=len(ledger.in_doubt),
        in_doubt_present=len(ledger.in_doubt & ids),
        unexplained=len(ids - ledger.acked - ledger.in_doubt),
        errors=len(ledger.errors),
        # A refused connect explains itself (the pooler is gone); a query that just lost its connection does not.
        errors_without_cause=sum(1 for e in ledger.errors if not e.sqlstate and e.stage != "connect"),
    )


async def run_client(ledger: Ledger, dsn: str, number: int, stop: asyncio.Event, *,
                     think: float = 0.0, statement_timeout: float = 30.0, connect_kwargs: dict | None = None) -> None:
    """One client: connect, commit rows one transaction at a time, reconnect after any error."""
    conn: asyncpg.Connection | None = None
    try:
        while not stop.is_set():
            if conn is None or conn.is_closed():
                try:
                    conn = await asyncpg.connect(dsn, timeout=statement_timeout, **(connect_kwargs or {}))
                    ledger.connects += 1
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as error:
                    ledger.record_error(error, "connect")
                    conn = None
                    await asyncio.sleep(RECONNECT_PAUSE)
                    continue
            row_id = uuid.uuid4()
            stage = "begin"
            try:
                async with asyncio.timeout(statement_timeout):
                    await conn.execute("BEGIN")
                    stage = "insert"
                    await conn.execute(INSERT_SQL, row_id, number)
                    stage = "commit"
                    await conn.execute("COMMIT")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as error:
                ledger.record_error(error, stage)
                (ledger.in_doubt if stage == "commit" else ledger.failed).add(row_id)
                await _discard(conn)
                conn = None
                continue
            except asyncio.CancelledError:   # the run ended while this transaction was open
                (ledger.in_doubt if stage == "commit" else ledger.failed).add(row_id)
                raise
            ledger.acked.add(row_id)
            ledger.commits.append(ledger.now())
            if think:
                await asyncio.sleep(think)
    finally:
        if conn is not None:
            await _discard(conn)


async def _discard(conn: asyncpg.Connection) -> None:
    """Drop a connection after an error: its session is unknown, so never reuse it."""
    try:
        conn.terminate()
    except Exception:   # already gone
        pass


class LedgerLoad:
    """`clients` ledger clients against `dsn` until stopped: `async with LedgerLoad(...) as load:`."""

    def __init__(self, dsn: str, clients: int, *, think: float = 0.0, connect_kwargs: dict | None = None):
        self.dsn = dsn
        self.clients = clients
        self.think = think
        self.connect_kwargs = connect_kwargs
        self.ledger = Ledger()
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task] = []
        self._numbers = itertools.count(1)

    async def __aenter__(self) -> "LedgerLoad":
        self.ledger = Ledger()
        self.tasks = [asyncio.create_task(run_client(self.ledger, self.dsn, next(self._numbers), self.stop,
                                                     think=self.think, connect_kwargs=self.connect_kwargs))
                      for _ in range(self.clients)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        _, late = await asyncio.wait(self.tasks, timeout=5.0)
        for task in late:   # stuck on a server that stopped answering: its row is in doubt or failed
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
