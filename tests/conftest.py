"""Fixtures shared by all tests: one real Postgres per session, pooler process factories, Hypothesis profiles.

Owns only wiring benchmarks/targets.py into pytest; how servers are started
lives there. A missing Postgres is an error, never a skip: a suite that
quietly skips its integration tests looks green while testing nothing.
"""

from __future__ import annotations

import os
from typing import Callable, Iterator, Mapping, Sequence

import pytest
from hypothesis import HealthCheck, settings

from benchmarks.targets import (
    ROLES,
    ExternalPostgres,
    PgBouncerProcess,
    PgpoolProcess,
    PostgresCluster,
    PostgresNotFound,
    start_postgres,
)

# Shared CI machines are slow and noisy: a per-example deadline would only make tests flaky.
settings.register_profile("pgpool", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", parent=settings.get_profile("pgpool"), max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "pgpool"))

# The auth_file every pooler gets: plain passwords, so any auth_type can be served.
TEST_USERS: dict[str, str] = {
    "app": ROLES["app"],
    "md5user": ROLES["md5user"],
    "plainuser": ROLES["plainuser"],
    "postgres": ROLES["postgres"],
}


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster | ExternalPostgres]:
    try:
        server = start_postgres()
    except PostgresNotFound as exc:
        pytest.fail(f"no PostgreSQL to test against: {exc}", pytrace=False)
    yield server
    server.stop()


StartPgpool = Callable[..., PgpoolProcess]
StartPgBouncer = Callable[..., PgBouncerProcess]


def _print_logs(procs: Sequence[PgpoolProcess | PgBouncerProcess]) -> None:
    # Captured output is shown only for failing tests: exactly when the log helps.
    for proc in procs:
        tail = "\n".join(proc.log_text().splitlines()[-60:])
        print(f"--- {proc.name} on port {proc.port} (exit {proc.returncode}) log tail ---\n{tail}")


def _started(postgres: PostgresCluster | ExternalPostgres, cls: type,
             started: list) -> Callable[..., PgpoolProcess | PgBouncerProcess]:
    """A factory that starts `cls` in front of `postgres` and remembers it for teardown."""

    def start(
        settings: Mapping[str, object] | None = None,
        *,
        users: Mapping[str, str] | None = None,
        databases: Mapping[str, object] | None = None,
        port: int | None = None,
        wait: float = 15.0,
        **extra: object,
    ) -> PgpoolProcess | PgBouncerProcess:
        proc = cls(
            backend_host=postgres.host,
            backend_port=postgres.port,
            users=dict(users if users is not None else TEST_USERS),
            settings=dict(settings or {}),
            databases=dict(databases) if databases is not None else None,
            port=port,
            **extra,
        )
        started.append(proc)
        return proc.start(wait)

    return start


def _stop_all(started: list) -> None:
    for proc in started:
        proc.stop()
    _print_logs(started)


@pytest.fixture
def pgpool_proc(postgres: PostgresCluster | ExternalPostgres) -> Iterator[StartPgpool]:
    """Factory: pgpool_proc(settings=None, *, users=TEST_USERS, databases=None, port=None, wait=15.0,
    extra_args=(), env=None) -> started PgpoolProcess."""
    started: list[PgpoolProcess] = []
    yield _started(postgres, PgpoolProcess, started)
    _stop_all(started)


@pytest.fixture
def pgbouncer_proc(postgres: PostgresCluster | ExternalPostgres) -> Iterator[StartPgBouncer]:
    """Factory like pgpool_proc, for comparing behaviour with the real PgBouncer."""
    if not PgBouncerProcess.available():
        pytest.fail("pgbouncer is not installed (apt-get install pgbouncer, or bash scripts/install.sh)", pytrace=False)
    started: list[PgBouncerProcess] = []
    yield _started(postgres, PgBouncerProcess, started)
    _stop_all(started)
