"""The soak harness itself, run for ~20 s: load with every kind of fault, zero unexplained errors, a report."""

from __future__ import annotations

import json

from benchmarks.soak import run_soak, slope_per_minute


def test_slope_is_least_squares_per_minute():
    assert slope_per_minute([(0, 5), (60, 5), (120, 5)]) == 0
    assert abs(slope_per_minute([(0, 0), (30, 1), (60, 2), (90, 3)]) - 2.0) < 1e-9
    assert abs(slope_per_minute([(0, 1), (60, 0), (120, 3)]) - 1.0) < 1e-9
    assert slope_per_minute([(5, 1)]) == 0


async def test_soak_smoke(postgres, tmp_path):
    report = await run_soak(seconds=20, backend=postgres, out_dir=tmp_path, pool_size=4, asyncpg_clients=4,
                            psycopg_clients=2, fault_interval=2.0, sample_interval=1.0)
    assert report["pgpool_alive"]
    assert report["errors_unexplained"] == 0, report["unexplained"]
    assert all(count >= 2 for count in report["faults"].values()), report["fault_log"]
    assert not report["failed_faults"], report["failed_faults"]
    assert report["operations"] > 100
    assert report["notifications_received"] > 0
    assert len(report["samples"]) >= 10
    assert all("sv_active" in sample for sample in report["samples"]), report["samples"][:3]
    written = json.loads((tmp_path / "soak.json").read_text())
    assert written["rss_slope_kb_per_min"] == report["rss_slope_kb_per_min"]
    assert (tmp_path / "soak.png").stat().st_size > 0
