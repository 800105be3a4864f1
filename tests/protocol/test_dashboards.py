"""config/grafana/pgpool.json and config/prometheus/pgpool-rules.yml: every PromQL expression
parses and names only series pgpool exports (from the collector, and a scrape of the registry
/metrics serves), and the dashboard shows what an operator needs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import promql_parser
import yaml
from prometheus_client import generate_latest

from pgpool.app import App
from pgpool.config import load_settings
from pgpool.docs import exported_series
from pgpool.metrics import make_registry

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = json.loads((REPO / "config" / "grafana" / "pgpool.json").read_text())
RULES = yaml.safe_load((REPO / "config" / "prometheus" / "pgpool-rules.yml").read_text())
# Grafana's built-in interval variables, as Grafana substitutes them before Prometheus sees the query.
GRAFANA_INTERVALS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


def scraped_series() -> set[str]:
    """Series names in a scrape: pgpool's families (from the collector) plus process_*, python_*."""
    text = generate_latest(make_registry(App(load_settings(None, environ={})))).decode()
    scraped = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    return scraped | exported_series()


def selector_names(expr: str) -> set[str]:
    names: set[str] = set()

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)   # parse raises on a syntax error
    return names


def dashboard_expressions() -> list[tuple[str, str]]:
    found = []
    for panel in DASHBOARD["panels"]:
        for target in panel.get("targets", []):
            found.append((panel["title"], target["expr"]))
    for variable in DASHBOARD["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", query["query"])
            if inner:   # label_values(selector, label): the selector is PromQL
                found.append((f"variable {variable['name']}", inner.group(1)))
    return found


def grafana_to_promql(expr: str) -> str:
    for variable, value in GRAFANA_INTERVALS.items():
        expr = expr.replace(variable, value)
    return expr


def test_every_dashboard_expression_parses_and_uses_exported_metrics():
    exported = scraped_series()
    expressions = dashboard_expressions()
    assert len(expressions) >= 20
    for title, expr in expressions:
        names = selector_names(grafana_to_promql(expr))
        assert names, f"{title}: no metric in {expr!r}"
        unknown = names - exported
        assert not unknown, f"dashboard panel {title!r} uses {sorted(unknown)}, which pgpool does not export"


def test_every_alert_rule_parses_and_uses_exported_metrics():
    exported = scraped_series() | {"up"}   # `up` is Prometheus' own, per scrape target
    rules = [rule for group in RULES["groups"] for rule in group["rules"]]
    assert len(rules) >= 8
    for rule in rules:
        unknown = selector_names(rule["expr"]) - exported
        assert not unknown, f"alert {rule['alert']} uses {sorted(unknown)}, which pgpool does not export"


def test_dashboard_shows_what_an_operator_needs():
    used = set().union(*(selector_names(grafana_to_promql(expr)) for _, expr in dashboard_expressions()))
    needed = {
        "pgpool_clients_waiting", "pgpool_client_wait_seconds_bucket",             # waiting, wait percentiles
        "pgpool_servers_active", "pgpool_servers_idle", "pgpool_servers_used",     # servers by state ...
        "pgpool_servers_connecting", "pgpool_pool_size",                           # ... against the limit
        "pgpool_transactions_total", "pgpool_transaction_duration_seconds_bucket", # rate and latency
        "pgpool_errors_total", "pgpool_clients_pinned",                            # errors by cause, pins
        "pgpool_client_login_failures_total", "pgpool_server_login_failures_total",
    }
    assert needed <= used, f"the dashboard does not show {sorted(needed - used)}"
    quantiles = [expr for _, expr in dashboard_expressions()
                 if "histogram_quantile" in expr and "pgpool_client_wait_seconds_bucket" in expr]
    assert any("0.99" in expr for expr in quantiles)
    errors = [expr for _, expr in dashboard_expressions() if "pgpool_errors_total" in expr]
    assert any("cause" in expr for expr in errors), "errors are shown by cause"


def test_dashboard_is_importable_grafana_json():
    assert DASHBOARD["uid"] and DASHBOARD["title"] == "pgpool" and DASHBOARD["schemaVersion"] >= 36
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    variables = {variable["name"] for variable in DASHBOARD["templating"]["list"]}
    assert {"datasource", "job", "instance", "database"} <= variables
    for panel in DASHBOARD["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel["targets"]:
            for variable in re.findall(r"\$(\w+)", target["expr"]):
                assert variable in variables or f"${variable}" in GRAFANA_INTERVALS, (panel["title"], variable)
