"""The burst report: the JSON schema, its numbers, and what people read (table, Markdown, HTML, PNGs).

Owns turning raw measurements into the documented JSON (`build_target_result`,
`build_report`), checking a report has every field (`missing_fields`), and
rendering it: the console comparison table, Markdown, a self-contained HTML
page and matplotlib plots (Agg backend). `python -m benchmarks.report FILE.json
--report DIR` re-renders a saved report.

Must not: talk to databases or start processes. Rendering reads only the JSON
dict, so a saved report renders exactly like a fresh one.

JSON schema (schema_version 1). Every field is always present; a number that
could not be measured is null. Times `t` are seconds since the target's burst
started (negative: the client connect phase before it). Latencies are in ms.

    schema_version: 1
    generated_by: "benchmarks.burst"
    started_at, finished_at: ISO 8601 UTC
    host: {cpus, platform, python, asyncpg}
    config: the workload options (flows, tasks_per_flow, clients, waves, wave_interval_s,
            burst_window_s, duration_s, seed, fail_rate, task_work_ms, ui_pollers,
            ui_interval_s, statement_cache_size, retries, connect_timeout_s,
            command_timeout_s, sample_interval_s, monitor_dsn)
    checks: [{name, passed, detail}]       the demo's checks of the performance targets ([] otherwise);
                                           passed is true, false, or null (informational)
    targets: [ per target:
        name, dsn, admin_dsn, monitor_dsn  passwords masked; admin_dsn null when not given
        status: "finished" (every flow completed or gave up) | "deadline" (the duration ran out first)
                | "unreachable" (the schema could not be set up: nothing was burst)
        statement_cache_size: int          asyncpg's; > 0 means named prepared statements
        prepared_statements: bool
        started_at: ISO 8601
        elapsed_s: burst duration (first flow start to last flow end or the deadline)
        flows: {planned, completed, failed, unfinished}
        clients: {requested, connected}     connected: at the end of the connect phase
        transitions: {count, per_s}         state changes written (every op that inserts a state row)
        operations: {count, per_s}          all successful transactions, reads included (not connects)
        latency_ms: {op: {count, mean, p50, p90, p99, p99_9, max}} for every op in OPS and "transitions"
        latency_timeline: [{t, count, p50_ms, p99_ms}]   transitions, 0.5 s bins by completion time
        latency_cdf: [[latency_ms, fraction]]           transitions, up to 200 points
        errors: {total, kinds: [{sqlstate, message, origin: "server"|"client", count, ops: {op: n}}]}
        server_connections: {source: "pg_stat_activity", sampled, max_connections, peak, peak_active,
                             samples: [{t, total, active, idle, idle_in_transaction}]}
        pool: {source: "SHOW POOLS", sampled, peak_cl_waiting, max_wait_s, session_audits,
               samples: [{t, cl_active, cl_waiting, sv_active, sv_idle, sv_used, maxwait_s, session_audits}]}
               (session_audits: pgpool's audits of session state so far; None for PgBouncer)
        notes: [str]
      ]

Client-side errors have SQLSTATEs chosen by the harness: 08001 could not
connect, 08006 connection lost, 57014 client-side timeout, XX000 other.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from benchmarks.workload import OP_TYPES, TRANSITION_OPS

SCHEMA_VERSION = 1
TRANSITIONS = "transitions"
OPS = (*OP_TYPES, TRANSITIONS)
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99_9", 99.9))
TIMELINE_BIN_S = 0.5
CDF_POINTS = 200

# The documented shape, used by missing_fields(): a dict lists required keys
# (with the shape of their values); a one-item list is a list of items of that shape.
_LATENCY = {k: None for k in ("count", "mean", "p50", "p90", "p99", "p99_9", "max")}
TARGET_FIELDS = {
    "name": None, "dsn": None, "admin_dsn": None, "monitor_dsn": None, "status": None,
    "statement_cache_size": None, "prepared_statements": None, "started_at": None, "elapsed_s": None,
    "flows": {k: None for k in ("planned", "completed", "failed", "unfinished")},
    "clients": {"requested": None, "connected": None},
    "transitions": {"count": None, "per_s": None},
    "operations": {"count": None, "per_s": None},
    "latency_ms": {op: _LATENCY for op in OPS},
    "latency_timeline": [dict.fromkeys(("t", "count", "p50_ms", "p99_ms"))],
    "latency_cdf": None,
    "errors": {"total": None, "kinds": [dict.fromkeys(("sqlstate", "message", "origin", "count", "ops"))]},
    "server_connections": {
        **dict.fromkeys(("source", "sampled", "max_connections", "peak", "peak_active")),
        "samples": [dict.fromkeys(("t", "total", "active", "idle", "idle_in_transaction"))],
    },
    "pool": {
        **dict.fromkeys(("source", "sampled", "peak_cl_waiting", "max_wait_s", "session_audits")),
        "samples": [dict.fromkeys(("t", "cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_used", "maxwait_s",
                                   "session_audits"))],
    },
    "notes": None,
}
REPORT_FIELDS = {
    "schema_version": None, "generated_by": None, "started_at": None, "finished_at": None,
    "host": {k: None for k in ("cpus", "platform", "python", "asyncpg")},
    "config": None, "checks": [dict.fromkeys(("name", "passed", "detail"))], "targets": [TARGET_FIELDS],
}


def missing_fields(report: dict) -> list[str]:
    """Dotted paths of documented fields absent from `report` (empty when complete)."""
    missing: list[str] = []

    def walk(obj, shape, path):
        for key, sub in shape.items():
            if not isinstance(obj, dict) or key not in obj:
                missing.append(f"{path}{key}")
            elif isinstance(sub, dict):
                walk(obj[key], sub, f"{path}{key}.")
            elif isinstance(sub, list):
                if not isinstance(obj[key], list):
                    missing.append(f"{path}{key}[]")
                    continue
                for i, item in enumerate(obj[key]):
                    walk(item, sub[0], f"{path}{key}[{i}].")

    walk(report, REPORT_FIELDS, "")
    return missing


# --- numbers

def latency_summary(seconds) -> dict:
    """count, mean and percentiles (linear interpolation) in ms; null values when there is no sample."""
    if len(seconds) == 0:
        return {"count": 0, "mean": None, **{name: None for name, _ in PERCENTILES}, "max": None}
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    values = np.percentile(ms, [q for _, q in PERCENTILES])
    out = {"count": int(ms.size), "mean": _r(ms.mean())}
    out.update({name: _r(v) for (name, _), v in zip(PERCENTILES, values, strict=True)})
    out["max"] = _r(ms.max())
    return out


def _r(value: float, digits: int = 3) -> float:
    return round(float(value), digits)


def _concat(arrays) -> np.ndarray:
    parts = [np.asarray(a, dtype=np.float64) for a in arrays]
    return np.concatenate(parts) if parts else np.zeros(0)


def _timeline(ends, lats) -> list[dict]:
    if ends.size == 0:
        return []
    bins = np.floor(ends / TIMELINE_BIN_S).astype(np.int64)
    out = []
    for b in np.unique(bins):
        sel = lats[bins == b] * 1000.0
        out.append({"t": _r((b + 0.5) * TIMELINE_BIN_S), "count": int(sel.size),
                    "p50_ms": _r(np.percentile(sel, 50)), "p99_ms": _r(np.percentile(sel, 99))})
    return out


def _cdf(lats) -> list[list[float]]:
    if lats.size == 0:
        return []
    ms = np.sort(lats) * 1000.0
    n = ms.size
    idx = np.unique(np.linspace(0, n - 1, min(CDF_POINTS, n)).round().astype(np.int64))
    return [[_r(ms[i]), _r((i + 1) / n, 5)] for i in idx]


def build_target_result(*, name, dsn, admin_dsn, monitor_dsn, status, statement_cache_size, started_at,
                        burst_start_s, burst_end_s, flows_planned, flows_completed, flows_failed,
                        clients_requested, clients_connected, latencies, ends, errors, server_samples,
                        max_connections, pool_samples, notes) -> dict:
    """One target's section of the report, from the harness' raw measurements.

    `latencies[op]`/`ends[op]` are seconds (latency, completion time on the
    recorder's clock); `burst_start_s` on that clock becomes t = 0."""
    elapsed = max(0.0, burst_end_s - burst_start_s)
    trans_lat = _concat([latencies[op] for op in TRANSITION_OPS])
    trans_end = _concat([ends[op] for op in TRANSITION_OPS]) - burst_start_s
    transitions = int(trans_lat.size)
    operations = sum(len(latencies[op]) for op in OP_TYPES if op != "connect")
    latency_ms = {op: latency_summary(latencies[op]) for op in OP_TYPES}
    latency_ms[TRANSITIONS] = latency_summary(trans_lat)
    kinds = sorted(errors, key=lambda k: (-k["count"], k["sqlstate"], k["message"]))
    shift = lambda samples: [{**s, "t": _r(s["t"] - burst_start_s)} for s in samples]  # noqa: E731
    server = shift(server_samples)
    pool = shift(pool_samples or [])
    return {
        "name": name,
        "dsn": dsn,
        "admin_dsn": admin_dsn,
        "monitor_dsn": monitor_dsn,
        "status": status,
        "statement_cache_size": statement_cache_size,
        "prepared_statements": statement_cache_size > 0,
        "started_at": started_at,
        "elapsed_s": _r(elapsed),
        "flows": {"planned": flows_planned, "completed": flows_completed, "failed": flows_failed,
                  "unfinished": flows_planned - flows_completed - flows_failed},
        "clients": {"requested": clients_requested, "connected": clients_connected},
        "transitions": {"count": transitions, "per_s": _r(transitions / elapsed, 1) if elapsed > 0 else None},
        "operations": {"count": operations, "per_s": _r(operations / elapsed, 1) if elapsed > 0 else None},
        "latency_ms": latency_ms,
        "latency_timeline": _timeline(trans_end, trans_lat),
        "latency_cdf": _cdf(trans_lat),
        "errors": {"total": sum(k["count"] for k in kinds), "kinds": kinds},
        "server_connections": {
            "source": "pg_stat_activity",
            "sampled": bool(server),
            "max_connections": max_connections,
            "peak": max((s["total"] for s in server), default=None),
            "peak_active": max((s["active"] for s in server), default=None),
            "samples": server,
        },
        "pool": {
            "source": "SHOW POOLS",
            "sampled": bool(pool),
            "peak_cl_waiting": max((s["cl_waiting"] for s in pool), default=None),
            "max_wait_s": max((s["maxwait_s"] for s in pool), default=None),
            "session_audits": pool[-1].get("session_audits") if pool else None,
            "samples": pool,
        },
        "notes": list(notes),
    }


def build_report(*, config: dict, targets: list[dict], started_at: str, checks: list[dict] | None = None) -> dict:
    import asyncpg

    return {
        "schema_version": SCHEMA_VERSION,
        "generated_by": "benchmarks.burst",
        "started_at": started_at,
        "finished_at": datetime.now(timezone.utc).isoformat(),
        "host": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                 "asyncpg": asyncpg.__version__},
        "config": config,
        "checks": list(checks or []),
        "targets": targets,
    }


# --- text

def fmt(value, digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{unit}"
    return f"{value:,}{unit}"


def summary_line(t: dict) -> str:
    lat = t["latency_ms"][TRANSITIONS]
    sc = t["server_connections"]
    return (f"[{t['name']}] {t['status']}: {t['flows']['completed']}/{t['flows']['planned']} flows, "
            f"{fmt(t['transitions']['per_s'])} transitions/s, p50 {fmt(lat['p50'])} ms, "
            f"p99 {fmt(lat['p99'])} ms, errors {t['errors']['total']}, "
            f"peak server connections {fmt(sc['peak'])}")


TABLE_COLUMNS = ("target", "status", "flows done", "transitions/s", "p50 ms", "p99 ms", "max ms", "errors",
                 "peak server conns", "peak waiting")


def table_rows(report: dict) -> list[list[str]]:
    rows = []
    for t in report["targets"]:
        lat = t["latency_ms"][TRANSITIONS]
        sc = t["server_connections"]
        peak = fmt(sc["peak"])
        if sc["peak"] is not None and sc["max_connections"]:
            peak += f" / {sc['max_connections']}"
        rows.append([
            t["name"] + ("" if t["prepared_statements"] else " *"),
            t["status"],
            f"{t['flows']['completed']}/{t['flows']['planned']}",
            fmt(t["transitions"]["per_s"]),
            fmt(lat["p50"]),
            fmt(lat["p99"]),
            fmt(lat["max"]),
            fmt(t["errors"]["total"]),
            peak,
            fmt(t["pool"]["peak_cl_waiting"]),
        ])
    return rows


def _footnotes(report: dict, max_errors: int = 3) -> list[str]:
    lines = []
    if any(not t["prepared_statements"] for t in report["targets"]):
        lines.append("* ran with asyncpg statement_cache_size=0 (no named prepared statements)")
    for t in report["targets"]:
        for kind in t["errors"]["kinds"][:max_errors]:
            ops = ", ".join(f"{op} {n}" for op, n in sorted(kind["ops"].items(), key=lambda x: -x[1]))
            lines.append(f"{t['name']}: {kind['count']} x {kind['sqlstate']} {kind['message']} ({ops})")
        extra = len(t["errors"]["kinds"]) - max_errors
        if max_errors and extra > 0:
            lines.append(f"{t['name']}: ... {extra} more kinds of errors in the report")
        if t["pool"]["session_audits"] is not None:
            lines.append(f"{t['name']}: {t['pool']['session_audits']} session-state audits (ordinary traffic needs none)")
        for note in t["notes"]:
            lines.append(f"{t['name']}: {note}")
    for check in report["checks"]:
        lines.append(f"{_verdict(check)}: {check['name']}: {check['detail']}")
    return lines


def _verdict(check: dict) -> str:
    return {True: "PASS", False: "FAIL", None: "INFO"}[check["passed"]]


def render_table(report: dict) -> str:
    """The console comparison: one row per target, then errors, notes and checks."""
    rows = table_rows(report)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(TABLE_COLUMNS)]
    right = lambda i: i >= 2  # noqa: E731  (numbers right-aligned)
    fmt_row = lambda r: "  ".join(c.rjust(w) if right(i) else c.ljust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(r, widths, strict=True)))
    cfg = report["config"]
    lines = [f"burst: {cfg['flows']} flows x {cfg['tasks_per_flow']} tasks, {cfg['clients']} clients, "
             f"{cfg['waves']} wave(s); latencies are of state transitions",
             fmt_row(TABLE_COLUMNS), fmt_row(["-" * w for w in widths])]
    lines += [fmt_row(r) for r in rows]
    notes = _footnotes(report)
    if notes:
        lines.append("")
        lines += notes
    return "\n".join(lines)


def _md_table(header, rows) -> list[str]:
    esc = lambda s: str(s).replace("|", "\\|").replace("*", "\\*")  # noqa: E731
    return ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(map(esc, r)) + " |" for r in rows]


def _latency_rows(t: dict) -> list[list[str]]:
    rows = []
    for op in OPS:
        s = t["latency_ms"][op]
        if s["count"]:
            rows.append([op, fmt(s["count"]), *(fmt(s[k], 2) for k in ("p50", "p90", "p99", "p99_9", "max"))])
    return rows


def render_markdown(report: dict, plots: dict[str, str]) -> str:
    cfg = report["config"]
    out = ["# Burst report", "",
           f"{report['started_at']} on {report['host']['cpus']} CPUs ({report['host']['platform']}), "
           f"asyncpg {report['host']['asyncpg']}.", "",
           f"Workload: {cfg['flows']} flows x {cfg['tasks_per_flow']} tasks over {cfg['clients']} client "
           f"connections, {cfg['waves']} wave(s), fail rate {cfg['fail_rate']}, seed {cfg['seed']}, "
           f"{cfg['ui_pollers']} UI pollers. Latencies are of state transitions (ms).", ""]
    out += _md_table(TABLE_COLUMNS, table_rows(report))
    notes = _footnotes(report, max_errors=0)
    if notes:
        out += [""] + ["- " + n.replace("*", "\\*") for n in notes]
    for t in report["targets"]:
        out += ["", f"## {t['name']}", "",
                f"`{t['dsn']}`, status **{t['status']}**, {t['elapsed_s']} s, "
                f"statement_cache_size {t['statement_cache_size']}, "
                f"clients connected {t['clients']['connected']}/{t['clients']['requested']}.", ""]
        rows = _latency_rows(t)
        if rows:
            out += _md_table(["transaction", "count", "p50", "p90", "p99", "p99.9", "max"], rows)
        if t["errors"]["kinds"]:
            out += ["", "Errors:", ""]
            out += _md_table(["count", "SQLSTATE", "origin", "message", "in"],
                             [[k["count"], k["sqlstate"], k["origin"], k["message"],
                               ", ".join(f"{op} {n}" for op, n in k["ops"].items())] for k in t["errors"]["kinds"]])
    if plots:
        out += ["", "## Plots", ""]
        out += [f"![{name}]({path})" for name, path in plots.items()]
    return "\n".join(out) + "\n"


def render_html(report: dict, plot_files: dict[str, Path]) -> str:
    """A single self-contained page (plots inlined as data: URIs)."""
    e = html.escape

    def table(header, rows):
        head = "".join(f"<th>{e(str(h))}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    cfg = report["config"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>pgpool burst report</title><style>",
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
        ".pass{color:#070}.fail{color:#b00}",
        "</style></head><body><h1>Burst report</h1>",
        f"<p>{e(report['started_at'])}, {report['host']['cpus']} CPUs. {cfg['flows']} flows x "
        f"{cfg['tasks_per_flow']} tasks over {cfg['clients']} client connections, {cfg['waves']} wave(s). "
        "Latencies are of state transitions, in ms.</p>",
        table(TABLE_COLUMNS, table_rows(report)),
    ]
    for check in report["checks"]:
        parts.append(f"<p class='{_verdict(check).lower()}'>{_verdict(check)}: {e(check['name'])}: "
                     f"{e(check['detail'])}</p>")
    for t in report["targets"]:
        parts.append(f"<h2>{e(t['name'])}</h2><p>status {e(t['status'])}, statement_cache_size "
                     f"{t['statement_cache_size']}, clients connected {t['clients']['connected']}/"
                     f"{t['clients']['requested']}</p>")
        rows = _latency_rows(t)
        if rows:
            parts.append(table(["transaction", "count", "p50", "p90", "p99", "p99.9", "max"], rows))
        if t["errors"]["kinds"]:
            parts.append(table(["count", "SQLSTATE", "origin", "message"],
                               [[k["count"], k["sqlstate"], k["origin"], k["message"]] for k in t["errors"]["kinds"]]))
        for note in t["notes"]:
            parts.append(f"<p>{e(note)}</p>")
    for name, path in plot_files.items():
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        parts.append(f"<h3>{e(name)}</h3><img alt='{e(name)}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


# --- plots

PLOT_NAMES = ("latency_over_time", "server_connections", "latency_cdf")


def write_plots(report: dict, out_dir: Path) -> dict[str, Path]:
    """latency over time, server connections over time, latency CDF (all targets in each), and the
    pooler's waiting clients when any target had an admin console sampled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    targets = report["targets"]
    colors = {t["name"]: f"C{i % 10}" for i, t in enumerate(targets)}
    files: dict[str, Path] = {}

    def finish(fig, ax_list, name, empty):
        for ax in ax_list:
            ax.grid(True, alpha=0.3)
            if empty:
                ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="gray")
            elif ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files[name] = path

    fig, ax = plt.subplots(figsize=(9, 4.5))
    empty = True
    for t in targets:
        tl = t["latency_timeline"]
        if tl:
            empty = False
            xs = [p["t"] for p in tl]
            ax.plot(xs, [p["p99_ms"] for p in tl], color=colors[t["name"]], label=f"{t['name']} p99")
            ax.plot(xs, [p["p50_ms"] for p in tl], color=colors[t["name"]], ls="--", alpha=0.7,
                    label=f"{t['name']} p50")
    if not empty:
        ax.set_yscale("log")
    ax.set_title("State transition latency over time (0.5 s bins)")
    ax.set_xlabel("seconds since burst start")
    ax.set_ylabel("latency (ms, log)")
    finish(fig, [ax], "latency_over_time", empty)

    fig, ax = plt.subplots(figsize=(9, 4.5))
    empty = True
    limits = set()
    for t in targets:
        sc = t["server_connections"]
        if sc["samples"]:
            empty = False
            # Poolers often sit at the same count: thinner lines for later targets keep each visible.
            ax.step([s["t"] for s in sc["samples"]], [s["total"] for s in sc["samples"]], where="post",
                    color=colors[t["name"]], lw=max(1.0, 3.0 - 0.7 * targets.index(t)),
                    label=f"{t['name']} (peak {sc['peak']})")
        if sc["max_connections"]:
            limits.add(sc["max_connections"])
    for limit in sorted(limits):
        ax.axhline(limit, color="gray", ls=":", lw=1)
        ax.annotate(f"max_connections {limit}", (0.01, limit), xycoords=("axes fraction", "data"),
                    va="bottom", fontsize=8, color="gray")
    ax.set_ylim(bottom=0, top=(max(limits) * 1.12) if limits else None)
    ax.set_title("Server connections seen by Postgres (pg_stat_activity)")
    ax.set_xlabel("seconds since burst start (negative: clients connecting)")
    ax.set_ylabel("client backends")
    finish(fig, [ax], "server_connections", empty)

    fig, ax = plt.subplots(figsize=(9, 4.5))
    empty = True
    for t in targets:
        cdf = t["latency_cdf"]
        if cdf:
            empty = False
            p99 = t["latency_ms"][TRANSITIONS]["p99"]
            ax.plot([p[0] for p in cdf], [p[1] for p in cdf], color=colors[t["name"]],
                    label=f"{t['name']} (p99 {fmt(p99)} ms)")
    if not empty:
        ax.set_xscale("log")
    ax.set_ylim(0, 1.01)
    ax.set_title("State transition latency CDF")
    ax.set_xlabel("latency (ms, log)")
    ax.set_ylabel("fraction of transitions")
    finish(fig, [ax], "latency_cdf", empty)

    pooled = [t for t in targets if t["pool"]["samples"]]
    if pooled:
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
        for t in pooled:
            s = t["pool"]["samples"]
            ax1.step([p["t"] for p in s], [p["cl_waiting"] for p in s], where="post", color=colors[t["name"]],
                     label=f"{t['name']} (peak {t['pool']['peak_cl_waiting']})")
            ax2.step([p["t"] for p in s], [p["maxwait_s"] * 1000 for p in s], where="post",
                     color=colors[t["name"]], label=t["name"])
        ax1.set_title("Pooler admin console (SHOW POOLS)")
        ax1.set_ylabel("cl_waiting")
        ax2.set_ylabel("maxwait (ms)")
        ax2.set_xlabel("seconds since burst start")
        finish(fig, [ax1, ax2], "pool_waiting", False)
    return files


# --- files

def write_json(report: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    return path


def write_report(report: dict, out_dir: Path) -> dict:
    """report.json, report.md, report.html and the PNGs in `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = write_plots(report, out_dir)
    json_path = write_json(report, out_dir / "report.json")
    md_path = out_dir / "report.md"
    md_path.write_text(render_markdown(report, {name: p.name for name, p in plots.items()}))
    html_path = out_dir / "report.html"
    html_path.write_text(render_html(report, plots))
    return {"json": json_path, "markdown": md_path, "html": html_path, "plots": plots}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.report",
        description="Re-render a saved burst report (JSON) as table, Markdown, HTML, PNGs.")
    parser.add_argument("json_file", type=Path)
    parser.add_argument("--report", type=Path, metavar="DIR", help="write Markdown, HTML and PNGs here")
    args = parser.parse_args(argv)
    report = json.loads(args.json_file.read_text())
    missing = missing_fields(report)
    if missing:
        print(f"warning: fields missing from {args.json_file}: {', '.join(missing[:20])}", file=sys.stderr)
    print(render_table(report))
    if args.report:
        files = write_report(report, args.report)
        print(f"report: {files['markdown']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
