"""/metrics, /healthz and the stats log as an SRE sees them, with real clients making the numbers move."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import urllib.error
import urllib.request

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.targets import free_port
from tests.waiting import wait_until, wait_until_sync

POOL = {"database": "app", "user": "app"}


async def fetch(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    def get() -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()
    return await asyncio.to_thread(get)


class Scrape:
    """One /metrics answer: sample values by sample name and labels."""

    def __init__(self, text: str):
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = [s for f in self.families.values() for s in f.samples]

    def value(self, name: str, **labels: str) -> float:
        found = [s.value for s in self.samples
                 if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
        assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
        return found[0]


async def scrape(port: int) -> Scrape:
    status, headers, body = await fetch(port, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return Scrape(body.decode())


def start(pgpool_proc, settings=None, **kw):
    port = free_port()
    proc = pgpool_proc({"metrics_port": port, **(settings or {})}, **kw)
    return proc, port


async def wait_http(port: int) -> None:
    """pgpool listens for clients a moment before its HTTP endpoint is up."""
    async def answers() -> bool:
        try:
            return (await fetch(port, "/healthz"))[0] == 200
        except urllib.error.URLError:
            return False
    await wait_until(answers, message=f"the HTTP endpoint on port {port}")


async def connect_app(proc, **kw) -> asyncpg.Connection:
    return await asyncpg.connect(proc.dsn("app"), **kw)


async def test_metric_families_follow_prometheus_conventions(pgpool_proc):
    proc, port = start(pgpool_proc)
    conn = await connect_app(proc)
    await conn.execute("SELECT 1")
    await wait_http(port)
    result = await scrape(port)
    await conn.close()
    pgpool_families = {name: f for name, f in result.families.items() if name.startswith("pgpool")}
    assert all(name.startswith(("pgpool_", "process_", "python_")) for name in result.families)
    for name, family in pgpool_families.items():
        allowed = {"database", "user", "le"} | ({"cause"} if name == "pgpool_errors" else set())
        for sample in family.samples:
            assert set(sample.labels) <= allowed | ({"version"} if sample.name == "pgpool_info" else set()), sample
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), name
        if family.type == "histogram":
            assert name.endswith("_seconds"), name
    for expected in ("pgpool_clients_active", "pgpool_clients_waiting", "pgpool_clients_idle", "pgpool_clients_pinned",
                     "pgpool_servers_active", "pgpool_servers_idle", "pgpool_servers_used",
                     "pgpool_servers_connecting", "pgpool_client_max_wait_seconds", "pgpool_transactions",
                     "pgpool_queries", "pgpool_client_received_bytes", "pgpool_client_sent_bytes", "pgpool_errors",
                     "pgpool_client_login_failures", "pgpool_server_login_failures", "pgpool_client_wait_seconds",
                     "pgpool_transaction_duration_seconds", "pgpool_server_connect_seconds"):
        assert expected in pgpool_families, expected
    (info,) = [s for s in result.samples if s.name == "pgpool_info"]
    assert info.value == 1 and re.fullmatch(r"\d+\.\d+\.\d+.*", info.labels["version"])
    assert result.value("process_resident_memory_bytes") > 0 and result.value("process_open_fds") > 0


async def test_counters_and_histograms_move_with_traffic(pgpool_proc):
    proc, port = start(pgpool_proc)
    conn = await connect_app(proc)
    try:
        await conn.execute("SELECT 1")
        await wait_http(port)
        before = await scrape(port)
        for _ in range(10):
            async with conn.transaction():
                await conn.execute("SELECT 1")
        after = await scrape(port)

        def grew(name: str) -> float:
            return after.value(name, **POOL) - before.value(name, **POOL)
        assert grew("pgpool_transactions_total") == 10
        assert grew("pgpool_queries_total") == 30                 # BEGIN, SELECT, COMMIT
        assert grew("pgpool_server_assignments_total") == 10
        assert grew("pgpool_transaction_duration_seconds_count") == 10
        assert grew("pgpool_transaction_duration_seconds_sum") > 0
        assert grew("pgpool_client_wait_seconds_count") == 10
        assert grew("pgpool_client_received_bytes_total") > 0 and grew("pgpool_client_sent_bytes_total") > 0
        assert after.value("pgpool_transaction_duration_seconds_bucket", le="+Inf", **POOL) == \
            after.value("pgpool_transaction_duration_seconds_count", **POOL)
        assert after.value("pgpool_server_connect_seconds_count", **POOL) == \
            after.value("pgpool_server_connects_total", **POOL) == 1
        assert after.value("pgpool_client_logins_total", **POOL) == 1
    finally:
        await conn.close()


async def test_gauges_show_active_waiting_and_idle(pgpool_proc):
    proc, port = start(pgpool_proc, {"default_pool_size": 3})
    conns = [await connect_app(proc) for _ in range(10)]
    await wait_http(port)
    try:
        for holder in conns[:3]:
            await holder.execute("BEGIN")
        queued = [asyncio.create_task(c.execute("SELECT 1")) for c in conns[3:]]

        async def arranged():
            result = await scrape(port)
            return result if result.value("pgpool_clients_waiting", **POOL) == 7 else None
        result = await wait_until(arranged, message="7 clients waiting")
        assert result.value("pgpool_clients_active", **POOL) == 3
        assert result.value("pgpool_servers_active", **POOL) == 3
        assert result.value("pgpool_servers_idle", **POOL) == 0
        assert result.value("pgpool_pool_size", **POOL) == 3
        assert result.value("pgpool_client_max_wait_seconds", **POOL) > 0
        assert result.value("pgpool_client_connections") == 10

        for holder in conns[:3]:
            await holder.execute("COMMIT")
        await asyncio.gather(*queued)
        result = await scrape(port)
        assert result.value("pgpool_clients_idle", **POOL) == 10
        assert result.value("pgpool_clients_waiting", **POOL) == 0
        assert result.value("pgpool_servers_idle", **POOL) + result.value("pgpool_servers_used", **POOL) == 3
        assert result.value("pgpool_client_max_wait_seconds", **POOL) == 0
    finally:
        for conn in conns:
            await conn.close()


async def test_error_and_login_failure_counters(pgpool_proc, postgres):
    backend = f"host={postgres.host} port={postgres.port}"
    databases = {"app": f"{backend} dbname=app", "badpass": f"{backend} dbname=app user=app password=wrong"}
    proc, port = start(pgpool_proc, {"default_pool_size": 1, "query_wait_timeout": 1}, databases=databases)
    holder = await connect_app(proc)
    waiter = await connect_app(proc)
    try:
        await holder.execute("BEGIN")
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError), match="query_wait_timeout"):
            await waiter.execute("SELECT 1")
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(proc.dsn("app", password="not-the-password"))
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(proc.dsn("app", dbname="badpass"))
        await wait_http(port)
        result = await scrape(port)
        assert result.value("pgpool_errors_total", cause="query_wait_timeout", **POOL) == 1
        assert result.value("pgpool_client_login_failures_total") == 2
        assert result.value("pgpool_server_login_failures_total", database="badpass", user="app") == 1
        assert result.value("pgpool_errors_total", database="badpass", user="app", cause="server_login") == 1
        await holder.execute("COMMIT")
    finally:
        await holder.close()
        try:
            await waiter.close(timeout=2)
        except (asyncpg.InterfaceError, OSError):
            pass


async def test_reload_and_drain_show_in_metrics(pgpool_proc):
    proc, port = start(pgpool_proc, {"default_pool_size": 2, "shutdown_timeout": 30})
    await wait_http(port)
    assert (await scrape(port)).value("pgpool_config_reloads_total") == 0

    proc.settings["default_pool_size"] = "many"
    proc.write_config()
    proc.send_signal(signal.SIGHUP)

    async def refused():
        result = await scrape(port)
        return result if result.value("pgpool_config_reload_failures_total") == 1 else None
    result = await wait_until(refused, message="the refused reload to be counted")
    assert result.value("pgpool_config_last_reload_successful") == 0

    proc.settings["default_pool_size"] = 4
    proc.write_config()
    proc.send_signal(signal.SIGHUP)

    async def applied():
        result = await scrape(port)
        return result if result.value("pgpool_config_reloads_total") == 1 else None
    result = await wait_until(applied, message="the applied reload to be counted")
    assert result.value("pgpool_config_last_reload_successful") == 1

    conn = await connect_app(proc)
    await conn.execute("BEGIN")
    assert (await scrape(port)).value("pgpool_pool_size", **POOL) == 4
    proc.send_signal(signal.SIGTERM)

    async def draining():
        return (await scrape(port)).value("pgpool_shutting_down") == 1
    await wait_until(draining, message="pgpool_shutting_down 1")
    await conn.execute("COMMIT")
    await wait_until(lambda: proc.returncode is not None, timeout=15, message="pgpool to exit")
    try:
        await conn.close(timeout=2)
    except (asyncpg.InterfaceError, OSError):
        pass


async def test_http_endpoint_answers_head_and_names_its_paths(pgpool_proc):
    proc, port = start(pgpool_proc)
    await wait_http(port)
    status, _, body = await fetch(port, "/metrics", method="HEAD")
    assert status == 200 and body == b""
    assert (await fetch(port, "/healthz"))[0:3:2] == (200, b"ok\n")
    status, _, body = await fetch(port, "/nope")
    assert status == 404 and b"/metrics" in body
    assert (await fetch(port, "/metrics", method="POST"))[0] == 405


def test_metrics_port_zero_starts_no_endpoint(pgpool_proc):
    proc = pgpool_proc({"metrics_port": 0})
    wait_until_sync(lambda: "pgpool 0" in proc.log_text() and "started" in proc.log_text(),
                    message="the started log line")
    assert "metrics and health on" not in proc.log_text()


# ---- the stats log -------------------------------------------------------------------------------

STATS_LINE = re.compile(r"stats: app/app (\d+) xacts/s, (\d+) queries/s, .* in (\d+) B/s, out (\d+) B/s, "
                        r"xact (\d+) us, query \d+ us, wait \d+ us")


async def test_stats_log_prints_each_pools_averages_every_stats_period(pgpool_proc):
    proc = pgpool_proc({"stats_period": 1, "log_stats": True})
    conn = await connect_app(proc)
    try:
        async def busy_period():
            for _ in range(5):
                async with conn.transaction():
                    await conn.execute("SELECT 1")
            lines = [STATS_LINE.search(line) for line in proc.log_text().splitlines()]
            return [m for m in lines if m and int(m.group(1)) > 0]
        found = await wait_until(busy_period, timeout=10, message="a stats line with transactions")
        xacts, queries, received, sent, xact_us = map(int, found[0].groups())
        assert queries >= xacts and received > 0 and sent > 0 and xact_us > 0
    finally:
        await conn.close()


async def test_log_format_json_writes_one_object_per_line(pgpool_proc):
    proc = pgpool_proc({"stats_period": 1, "log_format": "json"})
    conn = await connect_app(proc)
    try:
        await conn.execute("SELECT 1")

        def stats_entry():
            entries = [json.loads(line) for line in proc.log_text().splitlines() if line.strip()]
            return [e for e in entries if e["msg"].startswith("stats: app/app")]
        entry = (await wait_until(stats_entry, timeout=10, message="a JSON stats line"))[0]
        assert entry["logger"] == "pgpool.stats" and entry["level"] == "info" and entry["ts"].endswith("Z")
    finally:
        await conn.close()
