"""pgpool top without a terminal or a server: percentiles, sorting, the 80-column drawing, DSNs."""

from __future__ import annotations

import math

import pytest
from rich.console import Console

from pgpool import top
from pgpool.top import PoolRow, PoolSnapshot, parse_dsn, quantile, render, sort_rows


def snapshot(waiting=0, active=1, errors=0, xacts=0) -> PoolSnapshot:
    return PoolSnapshot(cl_active=active, cl_waiting=waiting, maxwait=0.25 if waiting else 0.0, sv_active=2,
                        sv_idle=0, sv_used=0, sv_login=1, pool_size=20, pinned=1, xacts=xacts, errors=errors)


def test_quantile_interpolates_within_the_bucket_as_prometheus_does():
    buckets = [(0.001, 50), (0.01, 90), (0.1, 100), (math.inf, 100)]
    assert quantile(0.5, buckets) == pytest.approx(0.001)
    assert quantile(0.7, buckets) == pytest.approx(0.001 + 0.009 * (70 - 50) / 40)
    assert quantile(0.99, buckets) == pytest.approx(0.01 + 0.09 * (99 - 90) / 10)
    assert quantile(0.99, [(0.1, 0), (math.inf, 5)]) == 0.1          # only +Inf: the last finite bound
    assert quantile(0.99, [(0.1, 0), (math.inf, 0)]) is None          # nothing observed


def test_rows_sort_by_the_chosen_column_largest_first_and_reverse():
    rows = [PoolRow("i", "b/x", snapshot(waiting=1, errors=9), 10.0, 0.5),
            PoolRow("i", "a/x", snapshot(waiting=7), 30.0, 0.01),
            PoolRow("i", "c/x", snapshot(), None, None)]
    assert [r.name for r in sort_rows(rows, "w", False)] == ["a/x", "b/x", "c/x"]
    assert [r.name for r in sort_rows(rows, "e", False)][0] == "b/x"
    assert [r.name for r in sort_rows(rows, "t", False)] == ["a/x", "b/x", "c/x"]
    assert [r.name for r in sort_rows(rows, "p", False)][0] == "b/x"
    assert [r.name for r in sort_rows(rows, "n", False)] == ["a/x", "b/x", "c/x"]
    assert [r.name for r in sort_rows(rows, "n", True)] == ["c/x", "b/x", "a/x"]


def test_view_fits_80_columns_with_long_names_big_numbers_and_an_unreachable_instance():
    big = PoolSnapshot(cl_active=12345, cl_waiting=9999, maxwait=119.9, sv_active=100, sv_idle=100, sv_used=100,
                       sv_login=10, pool_size=310, pinned=250, xacts=0, errors=99999)
    rows = [PoolRow("db1:6432", "a_very_long_database_name/an_even_longer_user_name", big, 123456.0, 59.9),
            PoolRow("db1:6432", "app/app", snapshot(), 12.0, 0.0004)]
    console = Console(width=80, record=True, color_system=None)
    console.print(render([("db1:6432", rows), ("db2:6432", "db2:6432: cannot connect: Connection refused")],
                         "w", False, 1.0))
    text = console.export_text()
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines)
    big_row = next(line for line in lines if line.startswith("a_very"))
    assert big_row.split()[1:] == ["12345", "9999", "119.9s", "100/100/100/10", "310", "123456", "59.9s",
                                   "250", "99999"]
    assert "db2:6432: cannot connect" in text and "sort: waiting clients" in text


def test_dsn_defaults_to_the_local_console(monkeypatch):
    monkeypatch.setenv("PGUSER", "admin")
    monkeypatch.setenv("PGPASSWORD", "pw")
    target = parse_dsn(top.DEFAULT_DSN)
    assert (target.host, target.port, target.user, target.password, target.dbname) == (
        "127.0.0.1", 6432, "admin", "pw", "pgbouncer")
    target = parse_dsn("postgresql://ops:s%40cret@db.internal:7432/pgpool")
    assert (target.host, target.port, target.user, target.password, target.dbname) == (
        "db.internal", 7432, "ops", "s@cret", "pgpool")
    with pytest.raises(ValueError):
        parse_dsn("mysql://x@y/z")
