"""The burst harness on tiny runs: what its user reads (table, JSON, plots) and how it counts failures.

A few flows for a few seconds against the session's throwaway Postgres, a
closed port, a wrong password, and pgpool. The numbers themselves are not
asserted (they depend on the machine); the shape of the report and the
bookkeeping are.
"""

from __future__ import annotations

import json
import subprocess
import sys

from benchmarks import burst, report, workload
from benchmarks.targets import REPO_ROOT, free_port

TINY = dict(flows=6, tasks_per_flow=2, clients=4, duration_s=30.0, burst_window_s=0.2, task_work_ms=30.0,
            ui_interval_s=0.05, seed=7)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def expected_transitions(opts: burst.BurstOptions) -> int:
    """State rows the plan writes: the same seed gives the same failures and retries."""
    plans = workload.plan_flows(
        flows=opts.flows, tasks_per_flow=opts.tasks_per_flow, flow_ids=[None], waves=opts.waves,
        wave_interval_s=opts.wave_interval_s, burst_window_s=opts.burst_window_s, fail_rate=opts.fail_rate,
        task_work_ms=opts.task_work_ms, seed=opts.seed,
    )
    return sum(step.op in workload.TRANSITION_OPS for plan in plans for step in plan.steps)


def schema_exists(postgres) -> bool:
    return postgres.run_sql(
        f"SELECT count(*) FROM pg_namespace WHERE nspname = '{workload.SCHEMA}'", dbname="app") != "0"


def test_cli_reports_postgres_and_counts_a_closed_port_as_errors(postgres, tmp_path):
    closed = f"postgresql://app:app@127.0.0.1:{free_port()}/app"
    json_file = tmp_path / "out.json"
    cmd = [
        sys.executable, "-m", "benchmarks.burst",
        "--dsn", f"direct={postgres.dsn('app', dbname='app')}", "--dsn", f"closed={closed}",
        "--monitor-dsn", postgres.dsn(),
        "--flows", "6", "--tasks-per-flow", "2", "--clients", "4", "--duration", "30", "--burst-window", "0.2",
        "--task-work-ms", "30", "--ui-interval", "0.05", "--seed", "7",
        "--json", str(json_file), "--report", str(tmp_path / "report"),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert run.returncode == 0, run.stderr

    # The comparison table names both targets; the closed port is an error line, not a traceback.
    assert "Traceback" not in run.stderr
    table = run.stdout
    assert "direct" in table and "closed" in table and "transitions/s" in table
    assert "08001" in table
    assert "[direct]" in run.stderr  # progress lines

    result = json.loads(json_file.read_text())
    assert report.missing_fields(result) == []
    direct, closed_t = result["targets"]

    assert direct["status"] == "finished"
    assert direct["flows"] == {"planned": 6, "completed": 6, "failed": 0, "unfinished": 0}
    assert direct["errors"] == {"total": 0, "kinds": []}
    assert direct["transitions"]["count"] == expected_transitions(burst.BurstOptions(**TINY))
    assert direct["transitions"]["per_s"] > 0
    assert direct["clients"] == {"requested": 4, "connected": 4}
    assert direct["statement_cache_size"] == burst.ASYNCPG_DEFAULT_STATEMENT_CACHE_SIZE
    assert direct["prepared_statements"] is True
    for op in (*workload.TRANSITION_OPS, workload.READ_FLOW_RUNS, "transitions"):
        stats = direct["latency_ms"][op]
        assert stats["count"] > 0, op
        assert 0 < stats["p50"] <= stats["p90"] <= stats["p99"] <= stats["p99_9"] <= stats["max"], op
    assert direct["latency_cdf"][-1][1] == 1.0
    assert direct["latency_timeline"]
    assert direct["server_connections"]["sampled"] is True
    assert direct["server_connections"]["peak"] >= 4  # the four clients, at least
    assert direct["server_connections"]["max_connections"] > 0
    assert direct["pool"] == {"source": "SHOW POOLS", "sampled": False, "peak_cl_waiting": None,
                              "max_wait_s": None, "session_audits": None, "samples": []}
    assert "***" in direct["dsn"] and ":app@" not in direct["dsn"]

    assert closed_t["status"] == "unreachable"
    assert closed_t["errors"]["total"] >= 1
    kind = closed_t["errors"]["kinds"][0]
    assert (kind["sqlstate"], kind["origin"], kind["ops"]) == ("08001", "client", {"connect": kind["count"]})
    assert closed_t["transitions"] == {"count": 0, "per_s": None}
    assert closed_t["latency_ms"]["transitions"]["p99"] is None

    out = tmp_path / "report"
    assert json.loads((out / "report.json").read_text())["targets"][0]["name"] == "direct"
    for name in report.PLOT_NAMES:
        png = (out / f"{name}.png").read_bytes()
        assert png.startswith(PNG_MAGIC) and len(png) > 10_000, name
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(report.PLOT_NAMES)
    assert "| direct |" in (out / "report.md").read_text()
    assert not schema_exists(postgres)  # the harness dropped what it created


async def test_wrong_password_is_counted_with_the_servers_sqlstate(postgres):
    target = burst.Target("badpass", postgres.dsn("app", password="not-the-password", dbname="app"))
    result = await burst.run_target(target, burst.BurstOptions(**TINY, progress=False))
    assert result["status"] == "unreachable"
    kinds = result["errors"]["kinds"]
    assert [(k["sqlstate"], k["origin"]) for k in kinds] == [("28P01", "server")]
    assert "password authentication failed" in kinds[0]["message"]


async def test_failing_transactions_are_counted_per_sqlstate_and_op(postgres):
    # A workload step that fails on the server: every attempt is one error, the flow gives up.
    opts = burst.BurstOptions(**{**TINY, "flows": 2, "clients": 2, "retries": 1}, progress=False)
    rec = burst.Recorder()
    client = burst.Client(0, burst.connector(postgres.dsn("app", dbname="app"), opts, None))

    async def broken(conn):
        await conn.execute("SELECT 1/0")

    try:
        await workload_schema(postgres, opts)
        ok, _ = await client.call(rec, workload.SET_TASK_RUN_STATE, broken, ())
        ok2, _ = await client.call(rec, workload.SET_TASK_RUN_STATE, broken, ())
    finally:
        await client.close()
        await drop_workload_schema(postgres, opts)
    assert (ok, ok2) == (False, False)
    key = ("22012", "division by zero", "server")
    assert rec.errors == {key: {workload.SET_TASK_RUN_STATE: 2}}
    assert rec.error_total == 2


async def workload_schema(postgres, opts):
    conn = await burst.connector(postgres.dsn("app", dbname="app"), opts, None)()
    try:
        await workload.create_schema(conn, [])
    finally:
        await conn.close()


async def drop_workload_schema(postgres, opts):
    conn = await burst.connector(postgres.dsn("app", dbname="app"), opts, None)()
    try:
        await workload.drop_schema(conn)
    finally:
        await conn.close()


async def test_burst_through_pgpool_stays_within_the_pool_and_samples_its_admin_console(
        postgres, pgpool_proc, tmp_path):
    pool_size = 3
    proc = pgpool_proc({"pool_mode": "transaction", "default_pool_size": pool_size, "reserve_pool_size": 0,
                        "max_client_conn": 50, "admin_users": ["postgres"]})
    target = burst.Target("pgpool", proc.dsn("app", dbname="app"),
                          admin_dsn=proc.dsn("postgres", dbname="pgbouncer"))
    opts = burst.BurstOptions(**{**TINY, "clients": 8}, monitor_dsn=postgres.dsn(), progress=False)

    result = await burst.run_burst([target], opts)

    assert report.missing_fields(result) == []
    t = result["targets"][0]
    assert t["errors"] == {"total": 0, "kinds": []}, t["errors"]
    assert t["status"] == "finished" and t["flows"]["completed"] == 6
    assert t["clients"]["connected"] == 8
    assert t["transitions"]["count"] == expected_transitions(opts)
    # 8 clients, but Postgres never sees more than the pool's server connections.
    assert 1 <= t["server_connections"]["peak"] <= pool_size
    assert t["pool"]["sampled"] is True, t["notes"]
    assert t["pool"]["peak_cl_waiting"] >= 0 and t["pool"]["max_wait_s"] >= 0
    files = report.write_report(result, tmp_path)
    assert set(files["plots"]) == {*report.PLOT_NAMES, "pool_waiting"}
    assert not schema_exists(postgres)
