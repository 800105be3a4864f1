"""Prometheus metrics: a Collector that reads pool containers and PoolStats at scrape time.

Owns: metric names, types, help texts and labels (`database`, `user`; `cause` on the error
counter, a short fixed vocabulary), and the registry /metrics serves (pgpool's metrics plus
the process and Python metrics of prometheus-client). Must not create metric objects that the
data plane updates: every figure here is read from counters that are plain ints.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Iterator

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily, Metric,
)
from prometheus_client.utils import floatToGoString

from . import __version__

if TYPE_CHECKING:
    from .app import App
    from .pool import Pool
    from .stats import Histogram

POOL_LABELS = ["database", "user"]

# name -> (help, how to read it from a pool). Gauges: what the pool holds right now.
POOL_GAUGES: dict[str, tuple[str, Callable[["Pool"], float]]] = {
    "pgpool_clients_active": ("Clients linked to a server connection.", lambda p: len(p.active_clients)),
    "pgpool_clients_waiting": ("Clients queued for a server connection.", lambda p: len(p.waiting)),
    "pgpool_clients_idle": ("Logged-in clients holding no server connection.", lambda p: len(p.idle_clients)),
    "pgpool_clients_pinned": ("Clients pinned to their server by session state.",
                              lambda p: sum(1 for c in p.active_clients if getattr(c, "pinned", False))),
    "pgpool_servers_active": ("Server connections linked to a client.", lambda p: len(p.active)),
    "pgpool_servers_idle": ("Server connections ready for a client.",
                            lambda p: sum(1 for s in p.idle if not s.needs_check())),
    "pgpool_servers_used": ("Idle server connections that need server_check_query before reuse.",
                            lambda p: sum(1 for s in p.idle if s.needs_check())),
    "pgpool_servers_testing": ("Server connections running a check, reset or rollback.",
                               lambda p: len(p.maintenance)),
    "pgpool_servers_connecting": ("Server connections being opened and logged in.", lambda p: len(p.connecting)),
    "pgpool_client_max_wait_seconds": ("How long the oldest queued client has waited for a server.",
                                       lambda p: p.max_wait()),
    "pgpool_pool_size": ("Configured server connections for the pool (pool_size).", lambda p: p.conf.pool_size),
    "pgpool_pool_paused": ("1 while the pool is paused (PAUSE, KILL).", lambda p: int(p.paused)),
}

# Counters since start.
POOL_COUNTERS: dict[str, tuple[str, Callable[["Pool"], float]]] = {
    "pgpool_transactions": ("Transactions finished through the pool.", lambda p: p.stats.xact_count),
    "pgpool_queries": ("Queries (ReadyForQuery answers) through the pool.", lambda p: p.stats.query_count),
    "pgpool_server_assignments": ("Times a server connection was assigned to a client.",
                                  lambda p: p.stats.wait_count),
    "pgpool_client_received_bytes": ("Bytes received from clients.", lambda p: p.stats.bytes_received),
    "pgpool_client_sent_bytes": ("Bytes sent to clients.", lambda p: p.stats.bytes_sent),
    "pgpool_client_logins": ("Client logins completed.", lambda p: p.stats.client_logins),
    "pgpool_server_connects": ("Server connections opened and logged in.", lambda p: p.stats.server_connects),
    "pgpool_server_login_failures": ("Server logins that failed.", lambda p: p.stats.server_login_failures),
    "pgpool_session_audits": ("Audit queries run to learn what session state a transaction left.",
                              lambda p: p.stats.session_audits),
    "pgpool_session_settings_adopted": ("Session settings found by an audit that now follow their client.",
                                        lambda p: p.stats.settings_adopted),
}

POOL_HISTOGRAMS: dict[str, tuple[str, Callable[["Pool"], "Histogram"]]] = {
    "pgpool_client_wait_seconds": ("Time clients waited for a server connection.", lambda p: p.stats.wait_hist),
    "pgpool_transaction_duration_seconds": ("Time from server assignment to the end of the transaction.",
                                            lambda p: p.stats.xact_hist),
    "pgpool_server_connect_seconds": ("Time to open and log in a server connection.",
                                      lambda p: p.stats.connect_hist),
}


class PgpoolCollector:
    """Builds every pgpool_* family from the app's pools at each scrape."""

    def __init__(self, app: "App"):
        self.app = app

    def describe(self) -> list[Metric]:
        return []   # families depend on the pools of the moment; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        app = self.app
        pools = list(app.pools.values())
        for name, (doc, read) in POOL_GAUGES.items():
            family = GaugeMetricFamily(name, doc, labels=POOL_LABELS)
            for pool in pools:
                family.add_metric(_labels(pool), read(pool))
            yield family
        for name, (doc, read) in POOL_COUNTERS.items():
            family = CounterMetricFamily(name, doc, labels=POOL_LABELS)
            for pool in pools:
                family.add_metric(_labels(pool), read(pool))
            yield family
        errors = CounterMetricFamily("pgpool_errors", "Errors pgpool sent or saw, by cause (query_wait_timeout, "
                                     "server_login, server_error, query_timeout, ...).",
                                     labels=[*POOL_LABELS, "cause"])
        for pool in pools:
            for cause, count in list(pool.stats.errors.items()):
                errors.add_metric([*_labels(pool), cause], count)
        yield errors
        pins = CounterMetricFamily("pgpool_session_pins", "Clients pinned to their server, by the session state "
                                   "the audit found (listen, advisory_lock, temp_object, cursor, "
                                   "prepared_statement, role, unknown).", labels=[*POOL_LABELS, "cause"])
        for pool in pools:
            for cause, count in list(pool.stats.pins.items()):
                pins.add_metric([*_labels(pool), cause], count)
        yield pins
        for name, (doc, read) in POOL_HISTOGRAMS.items():
            family = HistogramMetricFamily(name, doc, labels=POOL_LABELS)
            for pool in pools:
                histogram = read(pool)
                buckets = [(floatToGoString(bound), count) for bound, count in histogram.cumulative()]
                family.add_metric(_labels(pool), buckets, histogram.sum)
            yield family
        yield from self._process_wide(app)

    def _process_wide(self, app: "App") -> Iterator[Metric]:
        settings = app.settings
        yield GaugeMetricFamily("pgpool_client_connections", "Client connections, logged in or not, admin console "
                                "included.", value=len(app.clients))
        yield GaugeMetricFamily("pgpool_max_client_conn", "The max_client_conn limit.",
                                value=settings.max_client_conn)
        yield CounterMetricFamily("pgpool_client_login_failures", "Client logins that named a user and did not "
                                  "complete (bad password, unknown database, limits, timeouts).",
                                  value=app.client_login_failures)
        yield GaugeMetricFamily("pgpool_paused", "1 while PAUSE (all databases) is in force.",
                                value=int(app.paused_all))
        yield GaugeMetricFamily("pgpool_shutting_down", "1 once a shutdown or drain has begun.",
                                value=int(app.shutting_down))
        yield CounterMetricFamily("pgpool_config_reloads", "Configuration reloads applied (SIGHUP, RELOAD).",
                                  value=app.reloads)
        yield CounterMetricFamily("pgpool_config_reload_failures", "Configuration reloads refused as invalid.",
                                  value=app.reload_failures)
        yield GaugeMetricFamily("pgpool_config_last_reload_successful", "1 unless the last reload was refused.",
                                value=int(app.last_reload_ok))
        yield GaugeMetricFamily("pgpool_start_time_seconds", "Start time of pgpool, seconds since the epoch.",
                                value=app.started_at)
        yield GaugeMetricFamily("pgpool_uptime_seconds", "Seconds since pgpool started.",
                                value=time.time() - app.started_at)
        info = InfoMetricFamily("pgpool", "pgpool version.")
        info.add_metric([], {"version": __version__})
        yield info


def _labels(pool: "Pool") -> list[str]:
    return [pool.db.name, pool.user]


def make_registry(app: "App") -> CollectorRegistry:
    """The registry /metrics serves: pgpool's families plus process_* and python_* metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PgpoolCollector(app))  # type: ignore[arg-type]
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry
