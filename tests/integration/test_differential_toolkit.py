"""The differential toolkit itself: every driver opens twins, equal things compare equal, a difference fails."""

from __future__ import annotations

import pytest

from tests.differential import DRIVERS, observe_error, open_twins


@pytest.mark.parametrize("driver", DRIVERS)
async def test_twins_agree_on_rows_and_errors(pgpool_proc, postgres, driver):
    proc = pgpool_proc({"default_pool_size": 1})
    async with open_twins(proc, postgres, n=2, driver=driver) as (a, b):
        assert await a.same("SELECT 1 AS one, 'x' AS x") == ("rows", ((1, "x"),))
        assert (await b.same("SELECT * FROM no_such_table"))[:2] == ("error", "42P01")
        assert await a.same("SELECT current_user") == ("rows", (("app",),))


async def test_a_difference_fails_naming_step_and_client(pgpool_proc, postgres):
    proc = pgpool_proc({"default_pool_size": 1})
    async with open_twins(proc, postgres, n=1) as (a,):
        with pytest.raises(AssertionError) as failure:
            await a.same("SELECT pg_backend_pid()")  # two different backends: must not compare equal
        assert "client A (asyncpg)" in str(failure.value)
        assert "SELECT pg_backend_pid()" in str(failure.value)


def test_errors_lose_generated_names_and_numbers():
    class Fake(Exception):
        sqlstate = "26000"
    first = observe_error(Fake('prepared statement "__asyncpg_stmt_1a__" does not exist'))
    second = observe_error(Fake('prepared statement "PGPOOL_17" does not exist'))
    assert first[:2] == second[:2] == ("error", "26000")
    assert "asyncpg-name" in first[2] and "pgpool-name" in second[2]
