"""`pgpool top`: a live terminal view of running pgpools, read through their admin consoles.

Owns: a small blocking admin-console client (startup, trust/cleartext/md5/SCRAM login, simple
queries; built on protocol/messages and protocol/scram), turning successive SHOW POOLS /
HISTOGRAMS / ERRORS snapshots into per-pool rates and percentiles, and drawing them with rich in
80 columns, refreshed every second and sorted by a key the user presses. Must not touch a running
pgpool other than by reading SHOW tables: it is an operator surface like psql, nothing more.
"""

from __future__ import annotations

import argparse
import getpass
import math
import os
import select
import socket
import struct
import sys
import termios
import time
import tty
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator
from urllib.parse import unquote, urlsplit

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from . import auth
from .protocol import messages as m
from .protocol.errors import parse_error_fields
from .protocol.scram import ScramClient, ScramError

DEFAULT_DSN = "postgresql://127.0.0.1:6432/pgbouncer"
P99_WINDOW = 10.0          # seconds of histogram deltas behind the p99 column
_HEADER = struct.Struct("!cI")
_INT16 = struct.Struct("!h")
_INT32 = struct.Struct("!i")

# key -> (what it sorts by, label, column header). Numbers sort largest first; names A to Z.
SORT_KEYS = {
    "w": ("waiting", "waiting clients", "WAIT"),
    "m": ("maxwait", "longest wait", "MAXWAIT"),
    "a": ("active", "active clients", "ACT"),
    "t": ("tps", "transactions/s", "TX/S"),
    "p": ("p99", "wait p99", "P99WAIT"),
    "e": ("errors", "errors", "ERR"),
    "n": ("name", "pool name", "POOL"),
}


class ConsoleError(Exception):
    """The admin console could not be reached or refused us; str() is shown in place of the pools."""


# ---- the admin console client ----------------------------------------------------------------

@dataclass
class Target:
    host: str
    port: int
    user: str
    password: str | None
    dbname: str

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}"


def parse_dsn(dsn: str) -> Target:
    """postgresql://user:password@host:port/dbname (user: PGUSER or the login name; password:
    PGPASSWORD; database: pgbouncer). A bare host:port is accepted too."""
    if "://" not in dsn:
        dsn = "postgresql://" + dsn
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"not a postgresql:// DSN: {dsn!r}")
    return Target(host=parts.hostname or "127.0.0.1", port=parts.port or 6432,
                  user=unquote(parts.username) if parts.username else os.environ.get("PGUSER", getpass.getuser()),
                  password=unquote(parts.password) if parts.password else os.environ.get("PGPASSWORD"),
                  dbname=unquote(parts.path.lstrip("/")) or "pgbouncer")


class AdminClient:
    """One blocking connection to an admin console: log in once, then run SHOW commands."""

    def __init__(self, target: Target, timeout: float = 5.0):
        self.target = target
        self.timeout = timeout
        self.sock: socket.socket | None = None

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.sendall(m.message(b"X"))
            except OSError:
                pass
            self.sock.close()
            self.sock = None

    def query(self, sql: str) -> list[dict[str, str | None]]:
        """Rows of one simple query, as column -> text; reconnects once if the link was lost."""
        if self.sock is None:
            self._connect()
        try:
            return self._query(sql)
        except OSError as error:
            self.close()
            raise ConsoleError(f"{self.target.label}: {error}") from None

    def _connect(self) -> None:
        target = self.target
        try:
            self.sock = socket.create_connection((target.host, target.port), timeout=self.timeout)
        except OSError as error:
            raise ConsoleError(f"{target.label}: cannot connect: {error.strerror or error}") from None
        try:
            self.sock.sendall(m.startup_message({"user": target.user, "database": target.dbname,
                                                 "application_name": "pgpool top"}))
            self._login()
        except OSError as error:
            self.close()
            raise ConsoleError(f"{target.label}: login failed: {error}") from None
        except ConsoleError:
            self.close()
            raise

    def _login(self) -> None:
        scram: ScramClient | None = None
        while True:
            kind, body = self._read()
            if kind == b"R":
                code = _INT32.unpack_from(body)[0]
                data = body[4:]
                if code == 0:
                    continue
                password = self.target.password
                if password is None:
                    raise ConsoleError(f"{self.target.label}: the console asks for a password "
                                       f"(put it in the DSN or PGPASSWORD)")
                if code == 3:
                    self.sock.sendall(m.password_message(password))  # type: ignore[union-attr]
                elif code == 5:
                    self.sock.sendall(m.password_message(  # type: ignore[union-attr]
                        auth.md5_response(password, self.target.user, data[:4])))
                elif code == 10:
                    scram = ScramClient(password)
                    self.sock.sendall(m.sasl_initial_response(  # type: ignore[union-attr]
                        "SCRAM-SHA-256", scram.client_first()))
                elif code == 11 and scram is not None:
                    self.sock.sendall(m.sasl_response(scram.handle_server_first(data)))  # type: ignore[union-attr]
                elif code == 12 and scram is not None:
                    try:
                        scram.handle_server_final(data)
                    except ScramError as error:
                        raise ConsoleError(f"{self.target.label}: SCRAM: {error}") from None
                else:
                    raise ConsoleError(f"{self.target.label}: unsupported authentication request {code}")
            elif kind == b"E":
                raise ConsoleError(f"{self.target.label}: {_error_text(body)}")
            elif kind == b"Z":
                return

    def _query(self, sql: str) -> list[dict[str, str | None]]:
        self.sock.sendall(m.query(sql))  # type: ignore[union-attr]
        names: list[str] = []
        rows: list[dict[str, str | None]] = []
        error = None
        while True:
            kind, body = self._read()
            if kind == b"T":
                names = _row_description(body)
            elif kind == b"D":
                rows.append(dict(zip(names, _data_row(body))))
            elif kind == b"E":
                error = _error_text(body)
            elif kind == b"Z":
                if error is not None:
                    raise ConsoleError(f"{self.target.label}: {sql}: {error}")
                return rows

    def _read(self) -> tuple[bytes, bytes]:
        kind, length = _HEADER.unpack(self._read_exactly(5))
        return kind, self._read_exactly(length - 4)

    def _read_exactly(self, size: int) -> bytes:
        chunks = []
        while size:
            chunk = self.sock.recv(size)  # type: ignore[union-attr]
            if not chunk:
                raise ConnectionError("the admin console closed the connection")
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)


def _row_description(body: bytes) -> list[str]:
    (count,) = _INT16.unpack_from(body)
    names, offset = [], 2
    for _ in range(count):
        end = body.index(b"\0", offset)
        names.append(body[offset:end].decode())
        offset = end + 1 + 18          # table oid, attnum, type oid, typlen, typmod, format
    return names


def _data_row(body: bytes) -> list[str | None]:
    (count,) = _INT16.unpack_from(body)
    values: list[str | None] = []
    offset = 2
    for _ in range(count):
        (size,) = _INT32.unpack_from(body, offset)
        offset += 4
        if size < 0:
            values.append(None)
        else:
            values.append(body[offset:offset + size].decode())
            offset += size
    return values


def _error_text(body: bytes) -> str:
    fields = parse_error_fields(body)
    return f"{fields.get('S', 'ERROR')}: {fields.get('M', '?')} ({fields.get('C', '?')})"


# ---- snapshots, rates and percentiles ---------------------------------------------------------

@dataclass
class PoolSnapshot:
    cl_active: int
    cl_waiting: int
    maxwait: float
    sv_active: int
    sv_idle: int
    sv_used: int
    sv_login: int
    pool_size: int
    pinned: int
    wait_buckets: list[tuple[float, int]] = field(default_factory=list)   # (le, cumulative count)
    xacts: int = 0
    errors: int = 0


@dataclass
class Snapshot:
    at: float
    pools: dict[tuple[str, str], PoolSnapshot]


def _int(value: str | None) -> int:
    return int(value) if value else 0


def take_snapshot(client: AdminClient, now: float) -> Snapshot:
    pools: dict[tuple[str, str], PoolSnapshot] = {}
    for row in client.query("SHOW POOLS"):
        key = (row["database"] or "", row["user"] or "")
        pools[key] = PoolSnapshot(
            cl_active=_int(row["cl_active"]), cl_waiting=_int(row["cl_waiting"]),
            maxwait=_int(row["maxwait"]) + _int(row.get("maxwait_us")) / 1e6,
            sv_active=_int(row["sv_active"]), sv_idle=_int(row["sv_idle"]), sv_used=_int(row["sv_used"]),
            sv_login=_int(row["sv_login"]), pool_size=_int(row.get("pool_size")), pinned=_int(row.get("cl_pinned")))
    for row in client.query("SHOW HISTOGRAMS"):
        pool = pools.get((row["database"] or "", row["user"] or ""))
        if pool is None:
            continue
        le = math.inf if row["le"] == "+Inf" else float(row["le"] or 0)
        if row["histogram"] == "wait":
            pool.wait_buckets.append((le, _int(row["count"])))
        elif row["histogram"] == "xact" and le == math.inf:
            pool.xacts = _int(row["count"])
    for row in client.query("SHOW ERRORS"):
        pool = pools.get((row["database"] or "", row["user"] or ""))
        if pool is not None:
            pool.errors += _int(row["count"])
    return Snapshot(at=now, pools=pools)


def quantile(q: float, buckets: list[tuple[float, int]]) -> float | None:
    """histogram_quantile as Prometheus computes it: linear within the bucket that holds rank q."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound        # beyond the last finite bucket: its bound, as Prometheus
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return None


def _delta_buckets(new: list[tuple[float, int]], old: list[tuple[float, int]]) -> list[tuple[float, int]]:
    if len(old) != len(new):
        return new
    return [(bound, count - old_count) for (bound, count), (_, old_count) in zip(new, old)]


@dataclass
class PoolRow:
    instance: str
    name: str
    now: PoolSnapshot
    tps: float | None
    p99: float | None


def pool_rows(instance: str, history: deque[Snapshot]) -> list[PoolRow]:
    """Rows for the newest snapshot: tx/s against the previous one, p99 wait over P99_WINDOW."""
    newest = history[-1]
    previous = history[-2] if len(history) > 1 else None
    window = next((s for s in history if newest.at - s.at <= P99_WINDOW), history[0])
    rows = []
    for key, pool in newest.pools.items():
        tps = p99 = None
        if previous is not None and key in previous.pools and newest.at > previous.at:
            tps = max(0, pool.xacts - previous.pools[key].xacts) / (newest.at - previous.at)
        if window is not newest and key in window.pools:
            p99 = quantile(0.99, _delta_buckets(pool.wait_buckets, window.pools[key].wait_buckets))
        rows.append(PoolRow(instance, f"{key[0]}/{key[1]}", pool, tps, p99))
    return rows


def sort_rows(rows: list[PoolRow], key: str, reverse: bool) -> list[PoolRow]:
    column = SORT_KEYS[key][0]
    if column == "name":
        return sorted(rows, key=lambda r: r.name, reverse=reverse)
    value = {
        "waiting": lambda r: r.now.cl_waiting, "maxwait": lambda r: r.now.maxwait,
        "active": lambda r: r.now.cl_active, "tps": lambda r: r.tps or 0.0,
        "p99": lambda r: r.p99 or 0.0, "errors": lambda r: r.now.errors,
    }[column]
    return sorted(rows, key=lambda r: (value(r), r.name), reverse=not reverse)


# ---- drawing ---------------------------------------------------------------------------------

def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 0.001:
        return f"{value * 1e6:.0f}us" if value else "0"
    if value < 1:
        return f"{value * 1000:.1f}ms" if value < 0.1 else f"{value * 1000:.0f}ms"
    return f"{value:.1f}s"


def render(instances: list[tuple[str, list[PoolRow] | str]], sort_key: str, reverse: bool,
           interval: float) -> Group:
    """The whole screen: a header line, one table per instance, a keys line; fits 80 columns."""
    label = SORT_KEYS[sort_key][1] + (" (reversed)" if reverse else "")
    header = Text.assemble(("pgpool top", "bold"), f"  {time.strftime('%H:%M:%S')}  every {interval:g}s  ",
                           ("sort: ", "dim"), (label, "bold cyan"))
    parts: list[object] = [header]
    for instance, rows in instances:
        if isinstance(rows, str):
            parts.append(Text(rows, style="bold red"))   # the error names the instance already
            continue
        table = Table(title=f"{instance}  {len(rows)} pool(s)", title_justify="left", box=None, pad_edge=False,
                      padding=(0, 1), collapse_padding=True, header_style="bold", expand=False)
        table.add_column("POOL", max_width=16, no_wrap=True, overflow="ellipsis")
        for name, width in (("ACT", 4), ("WAIT", 4), ("MAXWAIT", 7), ("SV A/I/U/L", 11), ("SIZE", 4),
                            ("TX/S", 6), ("P99WAIT", 7), ("PIN", 3), ("ERR", 5)):
            table.add_column(name, justify="right", min_width=width, no_wrap=True)
        for row in sort_rows(rows, sort_key, reverse):
            pool = row.now
            servers = pool.sv_active + pool.sv_idle + pool.sv_used + pool.sv_login
            waiting = Text(str(pool.cl_waiting), style="bold yellow" if pool.cl_waiting else "")
            full = pool.pool_size and servers >= pool.pool_size
            table.add_row(
                row.name, str(pool.cl_active), waiting, _seconds(pool.maxwait) if pool.cl_waiting else "-",
                Text(f"{pool.sv_active}/{pool.sv_idle}/{pool.sv_used}/{pool.sv_login}",
                     style="bold" if full else ""),
                str(pool.pool_size), "-" if row.tps is None else f"{row.tps:.0f}", _seconds(row.p99),
                str(pool.pinned), Text(str(pool.errors), style="red" if pool.errors else ""))
        if not rows:
            table.add_row("(no pools yet)", *[""] * 9)
        parts.append(table)
    keys = " ".join(f"{key} {column}" for key, (_, _, column) in SORT_KEYS.items())
    parts.append(Text(f"keys: {keys}, r reverse, q quit", style="dim"))
    return Group(*parts)  # type: ignore[arg-type]


# ---- the loop --------------------------------------------------------------------------------

class Monitor:
    """Snapshots of every target, newest last, bounded to the p99 window."""

    def __init__(self, targets: list[Target]):
        self.clients = [AdminClient(target) for target in targets]
        self.history: list[deque[Snapshot]] = [deque() for _ in targets]

    def sample(self) -> list[tuple[str, list[PoolRow] | str]]:
        result: list[tuple[str, list[PoolRow] | str]] = []
        for client, history in zip(self.clients, self.history):
            now = time.monotonic()
            try:
                history.append(take_snapshot(client, now))
            except ConsoleError as error:
                history.clear()
                result.append((client.target.label, str(error)))
                continue
            while len(history) > 2 and now - history[1].at >= P99_WINDOW:
                history.popleft()
            result.append((client.target.label, pool_rows(client.target.label, history)))
        return result

    def close(self) -> None:
        for client in self.clients:
            client.close()


def read_keys(timeout: float) -> Iterator[str]:
    """Keys typed within `timeout` seconds (stdin in cbreak mode)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        ready, _, _ = select.select([sys.stdin], [], [], left)
        if not ready:
            return
        data = os.read(sys.stdin.fileno(), 32).decode(errors="replace")
        if not data:
            return
        yield from data


def run_interactive(monitor: Monitor, interval: float, sort_key: str) -> int:
    console = Console()
    reverse = False
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        with Live(console=console, screen=True, auto_refresh=False, transient=True) as live:
            while True:
                instances = monitor.sample()
                live.update(render(instances, sort_key, reverse, interval), refresh=True)
                for key in read_keys(interval):
                    if key in ("q", "Q", "\x03"):
                        return 0
                    if key.lower() in SORT_KEYS:
                        sort_key, reverse = key.lower(), False
                    elif key in ("r", "R"):
                        reverse = not reverse
                    else:
                        continue
                    # Re-sort what is on screen now; rates keep their one-interval spacing.
                    live.update(render(instances, sort_key, reverse, interval), refresh=True)
    except KeyboardInterrupt:
        return 0
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        monitor.close()


def run_once(monitor: Monitor, interval: float, sort_key: str, width: int) -> int:
    """Two snapshots `interval` apart (rates need two), printed once: for scripts and pipes."""
    monitor.sample()
    time.sleep(interval)   # the measuring interval itself, not synchronisation
    instances = monitor.sample()
    monitor.close()
    Console(width=width).print(render(instances, sort_key, False, interval))
    return 1 if any(isinstance(rows, str) for _, rows in instances) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pgpool top", description="Live view of running pgpools through their admin consoles "
        "(users in admin_users or stats_users). Keys: " + ", ".join(
            f"{key} sort by {label}" for key, (_, label, _) in SORT_KEYS.items()) + ", r reverse, q quit.")
    parser.add_argument("dsn", nargs="*", default=[DEFAULT_DSN],
                        help=f"admin console DSN, e.g. postgresql://admin:secret@127.0.0.1:6432/pgbouncer "
                             f"(repeat for several pgpools; default {DEFAULT_DSN}, user PGUSER, password PGPASSWORD)")
    parser.add_argument("--interval", "-i", type=float, default=1.0, help="seconds between refreshes (default 1)")
    parser.add_argument("--sort", choices=sorted(SORT_KEYS), default="w",
                        help="initial sort key (default w: waiting clients)")
    parser.add_argument("--once", action="store_true", help="print one view (after one interval) and exit")
    parser.add_argument("--width", type=int, default=80, help="width of the --once output (default 80)")
    args = parser.parse_args(argv)
    try:
        targets = [parse_dsn(dsn) for dsn in args.dsn]
    except ValueError as error:
        parser.error(str(error))
    monitor = Monitor(targets)
    if args.once or not sys.stdin.isatty():
        return run_once(monitor, args.interval, args.sort, args.width)
    return run_interactive(monitor, args.interval, args.sort)
