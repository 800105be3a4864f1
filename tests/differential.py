"""Differential toolkit: the same steps through pgpool and on a direct connection, observations compared.

Usage:
    async def test_x(pgpool_proc, postgres):
        proc = pgpool_proc({"default_pool_size": 1})
        async with open_twins(proc, postgres, n=2, driver="asyncpg") as (a, b):
            await a.same("SET search_path = tenant_b")            # asserts pooled == direct
            await b.same("SELECT current_setting('search_path')")
            pooled, direct = await a.run(lambda conn: conn.fetchval("SELECT 1"))  # compare yourself
Advisory locks: pass direct_dbname=create_twin_database(postgres), or the two sides block each other.
A step is SQL (run the driver's usual way: asyncpg fetch, psycopg execute+fetchall, SQLAlchemy
exec_driver_sql+commit) or an async callable taking the driver's connection. Drivers (DRIVERS):
"asyncpg" (statement cache on), "psycopg" (default prepare_threshold), "psycopg-prepare0", "sqlalchemy".

Owns opening twin clients, normalising what they observe and the failure diff; it must not know
which behaviour is right (the direct connection is the oracle) nor start processes (conftest does).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Union

import asyncpg
import psycopg
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from benchmarks.targets import ROLES

Step = Union[str, Callable[[Any], Awaitable[Any]]]
DRIVERS = ("asyncpg", "psycopg", "psycopg-prepare0", "sqlalchemy")
STEP_TIMEOUT = 15.0  # longer than any step should take; a hang becomes an observation, not a stuck test

# Names the server or a driver makes up: they differ between the pooled and the direct side.
_GENERATED = [
    (re.compile(r"__asyncpg_[a-z_]*\w*?__"), "<asyncpg-name>"),
    (re.compile(r"_pg3_\d+"), "<psycopg-name>"),
    (re.compile(r"PGPOOL_\w+"), "<pgpool-name>"),
    (re.compile(r"pg_(toast_)?temp_\d+"), r"pg_\1temp_N"),
]


def normalise_text(text: str) -> str:
    for pattern, repl in _GENERATED:
        text = pattern.sub(repl, text)
    return text


def normalise_value(value: Any) -> Any:
    if isinstance(value, str):
        return normalise_text(value)
    if isinstance(value, (list, tuple)):
        return tuple(normalise_value(v) for v in value)
    return value


def _sqlstate(exc: BaseException) -> str | None:
    # asyncpg and psycopg carry .sqlstate; SQLAlchemy wraps the driver's error in .orig.
    for candidate in (exc, getattr(exc, "orig", None), getattr(getattr(exc, "orig", None), "__cause__", None)):
        state = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(state, str):
            return state
    return None


def _message(exc: BaseException) -> str:
    diag = getattr(exc, "diag", None) or getattr(getattr(exc, "orig", None), "diag", None)
    text = getattr(diag, "message_primary", None) if diag is not None else None
    if text is None:
        text = str(getattr(exc, "orig", None) or exc).splitlines()[0] if str(exc) else type(exc).__name__
        text = re.sub(r"^<class '[^']*'>: ", "", text)
    return normalise_text(text)


def observe_error(exc: BaseException) -> tuple:
    """("error", SQLSTATE, message without digits or generated names); ("lost", type, message) without
    SQLSTATE (a driver-side error: connection lost, protocol violation)."""
    state = _sqlstate(exc)
    return ("error" if state else "lost", state or type(exc).__name__, re.sub(r"\d+", "N", _message(exc)))


def observe_rows(rows: Any) -> tuple:
    if rows is None:
        return ("ok",)
    return ("rows", tuple(normalise_value(tuple(r)) for r in rows))


# Driver adapters: connect(dsn, **kw) and run_sql(conn, sql) -> observation; close(conn).

async def _asyncpg_run(conn: asyncpg.Connection, sql: str) -> tuple:
    return observe_rows(await conn.fetch(sql))


async def _psycopg_run(conn: psycopg.AsyncConnection, sql: str) -> tuple:
    cur = await conn.execute(sql)
    return observe_rows(await cur.fetchall() if cur.description is not None else None)


async def _sqlalchemy_run(conn: Any, sql: str) -> tuple:
    try:
        result = await conn.exec_driver_sql(sql)
        rows = result.fetchall() if result.returns_rows else None
        await conn.commit()
        return observe_rows(rows)
    except BaseException:
        await conn.rollback()
        raise


async def _connect(driver: str, dsn: str, kw: dict) -> Any:
    if driver == "asyncpg":
        return await asyncpg.connect(dsn, **kw)
    if driver.startswith("psycopg"):
        kw = {"autocommit": True, **kw}  # a psycopg transaction would hold the pool's only server
        if driver == "psycopg-prepare0":
            kw.setdefault("prepare_threshold", 0)
        return await psycopg.AsyncConnection.connect(dsn, **kw)
    if driver == "sqlalchemy":
        engine = create_async_engine(dsn.replace("postgresql://", "postgresql+asyncpg://", 1),
                                     poolclass=NullPool, **kw)
        return await engine.connect()
    raise ValueError(f"unknown driver {driver!r}; one of {DRIVERS}")


_RUN = {"asyncpg": _asyncpg_run, "psycopg": _psycopg_run, "psycopg-prepare0": _psycopg_run,
        "sqlalchemy": _sqlalchemy_run}


async def _close(conn: Any) -> None:
    with contextlib.suppress(Exception):
        if hasattr(conn, "engine"):  # SQLAlchemy AsyncConnection
            await conn.close()
            await conn.engine.dispose()
        else:
            await asyncio.wait_for(conn.close(), 5)


def label_of(step: Step) -> str:
    return step if isinstance(step, str) else getattr(step, "__name__", repr(step))


@dataclass
class Twin:
    """One client seen twice: `pooled` goes through pgpool, `direct` straight to Postgres."""

    name: str
    driver: str
    pooled: Any
    direct: Any
    trace: list[str] = field(default_factory=list)  # shared by all twins of one open_twins
    timeout: float = STEP_TIMEOUT

    async def _observe(self, conn: Any, step: Step) -> Any:
        try:
            if isinstance(step, str):
                return await asyncio.wait_for(_RUN[self.driver](conn, step), self.timeout)
            return normalise_value(await asyncio.wait_for(step(conn), self.timeout))
        except asyncio.TimeoutError:
            return ("timeout", self.timeout)
        except Exception as exc:
            return observe_error(exc)

    async def run(self, step: Step) -> tuple[Any, Any]:
        """(pooled observation, direct observation); the pooled side runs first."""
        pooled = await self._observe(self.pooled, step)
        direct = await self._observe(self.direct, step)
        self.trace.append(f"{self.name}: {label_of(step)} -> {pooled!r}")
        return pooled, direct

    async def same(self, step: Step, label: str | None = None) -> Any:
        """Run `step` on both sides and assert equal observations; returns the observation."""
        pooled, direct = await self.run(step)
        assert pooled == direct, self.diff(label or label_of(step), pooled, direct)
        return pooled

    def __repr__(self) -> str:   # short: Hypothesis prints the twins it drew
        return f"Twin({self.name})"

    def diff(self, label: str, pooled: Any, direct: Any) -> str:
        history = "\n  ".join(self.trace[-30:])
        return (f"client {self.name} ({self.driver}), step {label!r}:\n"
                f"  through pgpool: {pooled!r}\n  direct:         {direct!r}\n"
                f"steps so far (newest last, pooled observations):\n  {history}")

    async def close(self) -> None:
        await _close(self.pooled)
        await _close(self.direct)


def direct_dsn(postgres: Any, user: str = "app", dbname: str = "app") -> str:
    return postgres.dsn(user=user, password=ROLES[user], dbname=dbname)


def create_twin_database(postgres: Any, name: str = "app_direct", owner: str = "app") -> str:
    """An empty database for direct sides that must not share database-wide state with pooled ones."""
    if postgres.run_sql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'") != "1":
        postgres.run_sql(f"CREATE DATABASE {name} OWNER {owner}")
    return name


async def open_twin(proc: Any, postgres: Any, *, name: str, driver: str = "asyncpg", user: str = "app",
                    dbname: str = "app", direct_dbname: str | None = None, trace: list[str] | None = None,
                    timeout: float = STEP_TIMEOUT, **connect_kw: Any) -> Twin:
    """One twin; connect_kw (e.g. server_settings={...}) go to both sides unchanged.

    direct_dbname: a twin database for the direct side, for steps whose effects are shared
    database-wide (advisory lock keys): there, the two sides would otherwise wait for each other."""
    pooled = await _connect(driver, proc.dsn(user=user, dbname=dbname), dict(connect_kw))
    try:
        direct = await _connect(driver, direct_dsn(postgres, user, direct_dbname or dbname), dict(connect_kw))
    except BaseException:
        await _close(pooled)
        raise
    return Twin(name, driver, pooled, direct, trace if trace is not None else [], timeout)


@contextlib.asynccontextmanager
async def open_twins(proc: Any, postgres: Any, n: int = 2, driver: str = "asyncpg",
                     kw_for: Callable[[int], dict] | None = None, **connect_kw: Any) -> AsyncIterator[list[Twin]]:
    """n twins named A, B, C... sharing one trace; all closed on exit. Keywords as open_twin's;
    kw_for(i) adds connect arguments for the i-th twin only (e.g. its own server_settings)."""
    trace: list[str] = []
    twins: list[Twin] = []
    try:
        for i in range(n):
            own = kw_for(i) if kw_for is not None else {}
            twins.append(await open_twin(proc, postgres, name=chr(ord("A") + i), driver=driver,
                                         trace=trace, **{**connect_kw, **own}))
        yield twins
    finally:
        for twin in twins:
            await twin.close()
