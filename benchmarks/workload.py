"""The burst workload: Prefect-like schema, the SQL an ORM would send, and flow plans.

Owns the `pgpool_burst` schema (a reduced copy of Prefect's core tables with
Prefect's index names), the transactions a Prefect API server runs when flows
and tasks change state, the UI's polling reads, and the deterministic plan of
what each simulated flow does. Every transaction function takes one asyncpg
connection and uses plain `conn.fetch*/execute` with parameters, so asyncpg's
named prepared statements are used exactly as an application would use them.

Must not: time, count or retry anything, open connections, or print
(burst.py owns all of that).
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

import asyncpg

SCHEMA = "pgpool_burst"

# Prefect's StateType enum values; state names are the display names Prefect uses.
PENDING, RUNNING, COMPLETED, FAILED, SCHEDULED = "PENDING", "RUNNING", "COMPLETED", "FAILED", "SCHEDULED"
TERMINAL_STATES = (COMPLETED, FAILED)

# Transaction types, in the order the report lists them.
CREATE_FLOW_RUN = "create_flow_run"
SET_FLOW_RUN_STATE = "set_flow_run_state"
CREATE_TASK_RUN = "create_task_run"
SET_TASK_RUN_STATE = "set_task_run_state"
READ_FLOW_RUNS = "read_flow_runs"
COUNT_TASK_RUNS = "count_task_runs"
CONNECT = "connect"

# Every op that writes a state row is a state transition (creating a run
# writes its initial PENDING state, as Prefect does).
TRANSITION_OPS = (CREATE_FLOW_RUN, SET_FLOW_RUN_STATE, CREATE_TASK_RUN, SET_TASK_RUN_STATE)
READ_OPS = (READ_FLOW_RUNS, COUNT_TASK_RUNS)
OP_TYPES = (*TRANSITION_OPS, *READ_OPS, CONNECT)

_S = SCHEMA
SCHEMA_DDL = f"""
DROP SCHEMA IF EXISTS {_S} CASCADE;
CREATE SCHEMA {_S};
CREATE TYPE {_S}.state_type AS ENUM
    ('SCHEDULED', 'PENDING', 'RUNNING', 'COMPLETED', 'FAILED', 'CANCELLED', 'CRASHED', 'PAUSED', 'CANCELLING');

CREATE TABLE {_S}.flow (
    id uuid PRIMARY KEY,
    created timestamptz NOT NULL DEFAULT now(),
    updated timestamptz NOT NULL DEFAULT now(),
    name varchar NOT NULL,
    tags jsonb NOT NULL DEFAULT '[]',
    CONSTRAINT uq_flow__name UNIQUE (name)
);

CREATE TABLE {_S}.flow_run (
    id uuid PRIMARY KEY,
    created timestamptz NOT NULL DEFAULT now(),
    updated timestamptz NOT NULL DEFAULT now(),
    name varchar NOT NULL,
    flow_id uuid NOT NULL REFERENCES {_S}.flow (id) ON DELETE CASCADE,
    state_id uuid,
    state_type {_S}.state_type,
    state_name varchar,
    state_timestamp timestamptz,
    run_count integer NOT NULL DEFAULT 0,
    expected_start_time timestamptz,
    next_scheduled_start_time timestamptz,
    start_time timestamptz,
    end_time timestamptz,
    total_run_time interval NOT NULL DEFAULT '0',
    idempotency_key varchar,
    parameters jsonb NOT NULL DEFAULT '{{}}',
    empirical_policy jsonb NOT NULL DEFAULT '{{}}',
    tags jsonb NOT NULL DEFAULT '[]'
);

CREATE TABLE {_S}.flow_run_state (
    id uuid PRIMARY KEY,
    created timestamptz NOT NULL DEFAULT now(),
    updated timestamptz NOT NULL DEFAULT now(),
    flow_run_id uuid NOT NULL REFERENCES {_S}.flow_run (id) ON DELETE CASCADE,
    type {_S}.state_type NOT NULL,
    timestamp timestamptz NOT NULL DEFAULT now(),
    name varchar NOT NULL,
    message varchar,
    state_details jsonb NOT NULL DEFAULT '{{}}'
);

CREATE TABLE {_S}.task_run (
    id uuid PRIMARY KEY,
    created timestamptz NOT NULL DEFAULT now(),
    updated timestamptz NOT NULL DEFAULT now(),
    name varchar NOT NULL,
    flow_run_id uuid REFERENCES {_S}.flow_run (id) ON DELETE CASCADE,
    task_key varchar NOT NULL,
    dynamic_key varchar NOT NULL,
    state_id uuid,
    state_type {_S}.state_type,
    state_name varchar,
    state_timestamp timestamptz,
    run_count integer NOT NULL DEFAULT 0,
    flow_run_run_count integer NOT NULL DEFAULT 0,
    expected_start_time timestamptz,
    next_scheduled_start_time timestamptz,
    start_time timestamptz,
    end_time timestamptz,
    total_run_time interval NOT NULL DEFAULT '0',
    empirical_policy jsonb NOT NULL DEFAULT '{{}}',
    task_inputs jsonb NOT NULL DEFAULT '{{}}',
    tags jsonb NOT NULL DEFAULT '[]'
);

CREATE TABLE {_S}.task_run_state (
    id uuid PRIMARY KEY,
    created timestamptz NOT NULL DEFAULT now(),
    updated timestamptz NOT NULL DEFAULT now(),
    task_run_id uuid NOT NULL REFERENCES {_S}.task_run (id) ON DELETE CASCADE,
    type {_S}.state_type NOT NULL,
    timestamp timestamptz NOT NULL DEFAULT now(),
    name varchar NOT NULL,
    message varchar,
    state_details jsonb NOT NULL DEFAULT '{{}}'
);

-- The current-state pointers, as in Prefect (foreign keys added after both tables exist).
ALTER TABLE {_S}.flow_run ADD CONSTRAINT fk_flow_run__state_id__flow_run_state
    FOREIGN KEY (state_id) REFERENCES {_S}.flow_run_state (id) ON DELETE SET NULL;
ALTER TABLE {_S}.task_run ADD CONSTRAINT fk_task_run__state_id__task_run_state
    FOREIGN KEY (state_id) REFERENCES {_S}.task_run_state (id) ON DELETE SET NULL;

-- Prefect's indexes on these tables (names follow Prefect's naming convention).
CREATE INDEX ix_flow_run__updated ON {_S}.flow_run (updated);
CREATE INDEX ix_flow_run__name ON {_S}.flow_run (name);
CREATE INDEX ix_flow_run__flow_id ON {_S}.flow_run (flow_id);
CREATE INDEX ix_flow_run__state_id ON {_S}.flow_run (state_id);
CREATE UNIQUE INDEX uq_flow_run__flow_id_idempotency_key ON {_S}.flow_run (flow_id, idempotency_key);
CREATE INDEX ix_flow_run__coalesce_start_time_expected_start_time_desc
    ON {_S}.flow_run (coalesce(start_time, expected_start_time) DESC);
CREATE INDEX ix_flow_run__coalesce_start_time_expected_start_time_asc
    ON {_S}.flow_run (coalesce(start_time, expected_start_time) ASC);
CREATE INDEX ix_flow_run__expected_start_time_desc ON {_S}.flow_run (expected_start_time DESC);
CREATE INDEX ix_flow_run__next_scheduled_start_time_asc ON {_S}.flow_run (next_scheduled_start_time ASC);
CREATE INDEX ix_flow_run__end_time_desc ON {_S}.flow_run (end_time DESC);
CREATE INDEX ix_flow_run__start_time ON {_S}.flow_run (start_time);
CREATE INDEX ix_flow_run__state_type ON {_S}.flow_run (state_type);
CREATE INDEX ix_flow_run__state_name ON {_S}.flow_run (state_name);
CREATE INDEX ix_flow_run__state_timestamp ON {_S}.flow_run (state_timestamp);

CREATE INDEX ix_flow_run_state__updated ON {_S}.flow_run_state (updated);
CREATE INDEX ix_flow_run_state__type ON {_S}.flow_run_state (type);
CREATE INDEX ix_flow_run_state__name ON {_S}.flow_run_state (name);
CREATE UNIQUE INDEX uq_flow_run_state__flow_run_id_timestamp_desc
    ON {_S}.flow_run_state (flow_run_id, timestamp DESC);

CREATE INDEX ix_task_run__updated ON {_S}.task_run (updated);
CREATE INDEX ix_task_run__name ON {_S}.task_run (name);
CREATE INDEX ix_task_run__flow_run_id ON {_S}.task_run (flow_run_id);
CREATE INDEX ix_task_run__state_id ON {_S}.task_run (state_id);
CREATE UNIQUE INDEX uq_task_run__flow_run_id_task_key_dynamic_key
    ON {_S}.task_run (flow_run_id, task_key, dynamic_key);
CREATE INDEX ix_task_run__expected_start_time_desc ON {_S}.task_run (expected_start_time DESC);
CREATE INDEX ix_task_run__next_scheduled_start_time_asc ON {_S}.task_run (next_scheduled_start_time ASC);
CREATE INDEX ix_task_run__end_time_desc ON {_S}.task_run (end_time DESC);
CREATE INDEX ix_task_run__start_time ON {_S}.task_run (start_time);
CREATE INDEX ix_task_run__state_type ON {_S}.task_run (state_type);
CREATE INDEX ix_task_run__state_name ON {_S}.task_run (state_name);
CREATE INDEX ix_task_run__state_timestamp ON {_S}.task_run (state_timestamp);

CREATE INDEX ix_task_run_state__updated ON {_S}.task_run_state (updated);
CREATE INDEX ix_task_run_state__type ON {_S}.task_run_state (type);
CREATE INDEX ix_task_run_state__name ON {_S}.task_run_state (name);
CREATE UNIQUE INDEX uq_task_run_state__task_run_id_timestamp_desc
    ON {_S}.task_run_state (task_run_id, timestamp DESC);
"""

DROP_DDL = f"DROP SCHEMA IF EXISTS {_S} CASCADE"


async def create_schema(conn: asyncpg.Connection, flow_ids: list[uuid.UUID]) -> None:
    """(Re)create the schema and the flows every run belongs to."""
    # One simple-protocol script: works through transaction-pooling proxies too.
    await conn.execute(SCHEMA_DDL)
    await conn.executemany(
        f"INSERT INTO {_S}.flow (id, name) VALUES ($1, $2)",
        [(fid, f"burst-flow-{i}") for i, fid in enumerate(flow_ids)],
    )


async def drop_schema(conn: asyncpg.Connection) -> None:
    await conn.execute(DROP_DDL)


async def warm_up(conn: asyncpg.Connection) -> None:
    """What a long-running API replica's connection has already done: asyncpg's
    one-time introspection of the state_type enum (otherwise the burst's first
    transaction on every client connection pays for it)."""
    await conn.fetchval(f"SELECT $1::{_S}.state_type", PENDING)


def _now() -> datetime:
    # Prefect sets timestamps client-side (pendulum.now("UTC")), so do we.
    return datetime.now(timezone.utc)


def _details(run_id: uuid.UUID, key: str, retry: int = 0) -> str:
    return json.dumps({key: str(run_id), "retriable": retry > 0, "run_count": retry})


def _run_fields(state_type: str, now: datetime) -> tuple[int, datetime | None, datetime | None]:
    """(run_count increment, start_time if starting, end_time if finishing), as Prefect's ORM computes them."""
    running = state_type == RUNNING
    return (1 if running else 0, now if running else None, now if state_type in TERMINAL_STATES else None)


# --- writes: one short transaction each, shaped like SQLAlchemy's flush of Prefect's models

async def create_flow_run(conn: asyncpg.Connection, run: "FlowPlan") -> None:
    now = _now()
    async with conn.transaction():
        await conn.execute(
            f"INSERT INTO {_S}.flow_run (id, name, flow_id, expected_start_time, idempotency_key,"
            " parameters, empirical_policy, tags) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            run.id, run.name, run.flow_id, now, str(run.id), '{"n": 1}', '{"retries": 0}', '["burst"]',
        )
        await _write_flow_run_state(conn, run.id, PENDING, "Pending", now, 0)


async def set_flow_run_state(conn: asyncpg.Connection, run_id: uuid.UUID, state_type: str, name: str) -> None:
    async with conn.transaction():
        await conn.fetchrow(
            f"SELECT id, state_id, state_type, run_count, start_time FROM {_S}.flow_run"
            " WHERE id = $1 FOR UPDATE",
            run_id,
        )
        await _write_flow_run_state(conn, run_id, state_type, name, _now(), 0)


async def _write_flow_run_state(conn, run_id, state_type, name, now, retry) -> None:
    state_id = uuid.uuid4()
    await conn.execute(
        f"INSERT INTO {_S}.flow_run_state (id, flow_run_id, type, timestamp, name, state_details)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        state_id, run_id, state_type, now, name, _details(run_id, "flow_run_id", retry),
    )
    await conn.execute(
        f"UPDATE {_S}.flow_run SET state_id = $2, state_type = $3, state_name = $4, state_timestamp = $5,"
        " run_count = run_count + $6, start_time = coalesce(start_time, $7), end_time = coalesce($8, end_time),"
        " updated = now() WHERE id = $1",
        run_id, state_id, state_type, name, now, *_run_fields(state_type, now),
    )


async def create_task_run(conn: asyncpg.Connection, task: "TaskPlan") -> None:
    now = _now()
    async with conn.transaction():
        await conn.execute(
            f"INSERT INTO {_S}.task_run (id, name, flow_run_id, task_key, dynamic_key, expected_start_time,"
            " empirical_policy, task_inputs, tags) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            task.id, task.name, task.flow_run_id, task.task_key, "0", now,
            '{"retries": 1, "retry_delay": 0}', "{}", '["burst"]',
        )
        await _write_task_run_state(conn, task.id, PENDING, "Pending", now, 0)


async def set_task_run_state(conn: asyncpg.Connection, task_run_id: uuid.UUID, state_type: str, name: str,
                             retry: int = 0) -> None:
    async with conn.transaction():
        await conn.fetchrow(
            f"SELECT id, state_id, state_type, run_count, flow_run_run_count, start_time FROM {_S}.task_run"
            " WHERE id = $1 FOR UPDATE",
            task_run_id,
        )
        await _write_task_run_state(conn, task_run_id, state_type, name, _now(), retry)


async def _write_task_run_state(conn, task_run_id, state_type, name, now, retry) -> None:
    state_id = uuid.uuid4()
    await conn.execute(
        f"INSERT INTO {_S}.task_run_state (id, task_run_id, type, timestamp, name, state_details)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        state_id, task_run_id, state_type, now, name, _details(task_run_id, "task_run_id", retry),
    )
    await conn.execute(
        f"UPDATE {_S}.task_run SET state_id = $2, state_type = $3, state_name = $4, state_timestamp = $5,"
        " run_count = run_count + $6, start_time = coalesce(start_time, $7), end_time = coalesce($8, end_time),"
        " updated = now() WHERE id = $1",
        task_run_id, state_id, state_type, name, now, *_run_fields(state_type, now),
    )


# --- reads: the UI's dashboard polling (flow runs list, then task run counts per state)

async def read_flow_runs(conn: asyncpg.Connection, limit: int = 50) -> list[uuid.UUID]:
    rows = await conn.fetch(
        f"SELECT fr.id, fr.name, fr.state_type, fr.state_name, fr.state_timestamp, fr.start_time,"
        f" fr.end_time, fr.run_count, frs.message FROM {_S}.flow_run fr"
        f" LEFT JOIN {_S}.flow_run_state frs ON frs.id = fr.state_id"
        " ORDER BY coalesce(fr.start_time, fr.expected_start_time) DESC LIMIT $1",
        limit,
    )
    return [r["id"] for r in rows]


async def count_task_runs(conn: asyncpg.Connection, flow_run_ids: list[uuid.UUID]) -> int:
    rows = await conn.fetch(
        f"SELECT state_type, count(*) AS n FROM {_S}.task_run WHERE flow_run_id = ANY($1::uuid[])"
        " GROUP BY state_type",
        flow_run_ids,
    )
    return sum(r["n"] for r in rows)


# --- plans: what each flow does, decided up front from the seed

@dataclass(slots=True)
class TaskPlan:
    id: uuid.UUID
    flow_run_id: uuid.UUID
    name: str
    task_key: str


@dataclass(slots=True)
class Step:
    """One API call of a flow: an op type, its coroutine function and arguments,
    and the simulated work (seconds) the flow does before making the call."""

    op: str
    func: object
    args: tuple
    work_s: float = 0.0


@dataclass(slots=True)
class FlowPlan:
    index: int
    id: uuid.UUID
    flow_id: uuid.UUID
    name: str
    start_offset_s: float
    steps: list[Step] = field(default_factory=list)


def plan_flows(*, flows: int, tasks_per_flow: int, flow_ids: list[uuid.UUID], waves: int,
               wave_interval_s: float, burst_window_s: float, fail_rate: float, task_work_ms: float,
               seed: int) -> list[FlowPlan]:
    """Decide every flow's start time and state changes from `seed` alone, so each
    target gets the same workload (the UUIDs differ per call: each target run
    writes fresh rows)."""
    rng = random.Random(seed)
    waves = max(1, min(waves, flows))
    plans = []
    for i in range(flows):
        wave = i % waves
        start = wave * wave_interval_s + rng.uniform(0.0, burst_window_s)
        run_id = uuid.uuid4()
        plan = FlowPlan(i, run_id, flow_ids[i % len(flow_ids)], f"burst-run-{i}", start)
        steps = plan.steps
        steps.append(Step(CREATE_FLOW_RUN, create_flow_run, (plan,)))
        steps.append(Step(SET_FLOW_RUN_STATE, set_flow_run_state, (run_id, RUNNING, "Running")))
        for t in range(tasks_per_flow):
            task = TaskPlan(uuid.uuid4(), run_id, f"task-{t}", f"burst.task_{t}")
            work = rng.uniform(0.0, task_work_ms) / 1000.0
            steps.append(Step(CREATE_TASK_RUN, create_task_run, (task,)))
            steps.append(Step(SET_TASK_RUN_STATE, set_task_run_state, (task.id, RUNNING, "Running")))
            if rng.random() < fail_rate:
                # A failed attempt, Prefect's AwaitingRetry, then the retry that succeeds.
                steps.append(Step(SET_TASK_RUN_STATE, set_task_run_state, (task.id, FAILED, "Failed"), work))
                steps.append(Step(SET_TASK_RUN_STATE, set_task_run_state,
                                  (task.id, SCHEDULED, "AwaitingRetry", 1)))
                steps.append(Step(SET_TASK_RUN_STATE, set_task_run_state, (task.id, RUNNING, "Retrying", 1)))
            steps.append(Step(SET_TASK_RUN_STATE, set_task_run_state, (task.id, COMPLETED, "Completed"), work))
        steps.append(Step(SET_FLOW_RUN_STATE, set_flow_run_state, (run_id, COMPLETED, "Completed")))
        plans.append(plan)
    return plans
