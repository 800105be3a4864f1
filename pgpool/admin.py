"""The admin console: PgBouncer's virtual database `pgbouncer` (and `pgpool`).

Owns: the console session over the simple query protocol, the command grammar, who may run
what (admin_users run everything, stats_users only SHOW), and every SHOW table as a handler
returning (columns, rows) with PgBouncer's column names and types (pgpool's own columns come
after PgBouncer's). One function, `encode_table`, turns a table into wire messages through
protocol/messages. Must not build wire bytes by hand or change pool state itself: commands
go through App's operations (pause, reload, kill, drain, ...).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Sequence

from . import describe_version
from .admingate import ADMIN_DATABASES
from .config import RELOADABLE_SETTINGS, Settings, implemented_settings
from .pool import DNS, ClientState, ServerState
from .statslog import Totals
from .protocol import messages as m
from .protocol.errors import INVALID_AUTHORIZATION_SPECIFICATION, PROTOCOL_VIOLATION, ProtocolError, error_response

if TYPE_CHECKING:
    from .app import App
    from .auth import Credentials
    from .client import ClientConnection
    from .pool import Pool

log = logging.getLogger("pgpool.admin")

# Column types as PgBouncer's RowDescription letters: s text, i int4, q int8, N numeric,
# T a timestamp sent as text.
_TYPE_OIDS = {"s": m.TEXT_OID, "i": 23, "q": m.INT8_OID, "N": m.NUMERIC_OID, "T": m.TEXT_OID}

Columns = list[tuple[str, int]]
Table = tuple[Columns, list[Sequence[object]]]

CONFIG_FILE_ERROR = "F0000"
MAX_QUERY = 64 * 1024       # a console query is one short command
READ_AHEAD = 64 * 1024      # console bytes received and not yet run before reading from the client pauses
_COMMAND = re.compile(r'(\w+)(.*)', re.ASCII | re.DOTALL)
_ARGUMENT = re.compile(r'\s*("(?:[^"]|"")*"|[^\s"]+)?\s*', re.ASCII)
# PgBouncer's grammar (src/admin.c): SET key = value | SET key TO value, the value a word or a
# quoted string ('it''s', or "a ""b""").
_SET = re.compile(r"set\s+(\w+)\s*(?:=|\s[tT][oO]\s)\s*(?:'((?:[^']|'')*)'|\"((?:[^\"]|\"\")*)\"|([^\s'\"]+))\s*",
                  re.IGNORECASE | re.DOTALL)
_SET_START = re.compile(r"set\s", re.IGNORECASE)
# Session parameters drivers set on connect: PgBouncer answers "SET ignored" instead of failing.
_FAKE_SET = frozenset({"client_encoding", "default_transaction_isolation", "standard_conforming_strings",
                       "datestyle", "timezone"})


def columns(types: str, *names: str) -> Columns:
    """`columns("si", "list", "items")`: names with PgBouncer's type letters, in order."""
    assert len(types) == len(names), names
    return [(name, _TYPE_OIDS[letter]) for letter, name in zip(types, names)]


def encode_table(table: Table, tag: str = "SHOW") -> bytes:
    cols, rows = table
    return b"".join([m.row_description(cols), *(m.data_row(row) for row in rows), m.command_complete(tag)])


class AdminError(Exception):
    """A command failed; the console answers with an ErrorResponse and stays open."""

    def __init__(self, message: str, sqlstate: str = PROTOCOL_VIOLATION):
        super().__init__(message)
        self.sqlstate = sqlstate


# ---- the console session ------------------------------------------------------------------------

def open_console(app: "App", client: "ClientConnection", creds: "Credentials") -> "AdminConsole":
    """Called after the password check; refuses users that are neither admin nor stats users."""
    user = client.user
    settings = app.settings
    if user in settings.admin_users:
        return AdminConsole(app, client, may_change=True)
    if user in settings.stats_users:
        return AdminConsole(app, client, may_change=False)
    raise ProtocolError(INVALID_AUTHORIZATION_SPECIFICATION,
                        f'user "{user}" may not use the admin console: not in admin_users or stats_users',
                        hint="add the user to admin_users (all commands) or stats_users (SHOW only)")


class AdminConsole:
    """One console connection: queries run one after another, each answered before the next.

    Backpressure as on the data plane: while the client does not read its replies (its
    transport is over the high-water mark) no further command runs, and once READ_AHEAD
    bytes of commands wait, reading from the client pauses, so a client that pipelines
    commands without reading costs a bounded amount of memory.
    """

    def __init__(self, app: "App", client: "ClientConnection", *, may_change: bool):
        self.app = app
        self.client = client
        self.may_change = may_change
        self.buffer = bytearray()                # received, not yet run: whole and partial messages
        self.task: asyncio.Task | None = None
        self.closed = False
        self.reading_paused = False
        self.writable: asyncio.Future | None = None   # resolved when the client's transport drains

    def feed(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > READ_AHEAD and not self.reading_paused:
            self.reading_paused = True
            self.client.transport.pause_reading()
        if self.task is None and not self.closed:
            self.task = asyncio.get_running_loop().create_task(self._run())

    def on_writable(self) -> None:
        """The client's transport went below its low-water mark (ClientConnection.resume_writing)."""
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)

    def close(self) -> None:
        self.closed = True
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()

    def _next_message(self) -> tuple[int, bytes] | None:
        """The next whole message, taken off the buffer; None if there is none yet (or the length is bad)."""
        buf = self.buffer
        if len(buf) < 5:
            return None
        length = int.from_bytes(buf[1:5], "big")
        if length < 4 or length > MAX_QUERY:
            self._fail(f"invalid message length {length} on the admin console")
            return None
        if len(buf) < 1 + length:
            return None
        message = (buf[0], bytes(buf[5:1 + length]))
        del buf[:1 + length]
        return message

    async def _run(self) -> None:
        try:
            while not self.closed:
                message = self._next_message()
                if message is None:
                    break
                await self._handle(*message)
                if self.client.write_paused and not self.closed:
                    self.writable = asyncio.get_running_loop().create_future()
                    await self.writable
                    self.writable = None
                if self.reading_paused and len(self.buffer) <= READ_AHEAD // 2 and not self.closed:
                    self.reading_paused = False
                    self.client.transport.resume_reading()
        except Exception as error:   # a console bug must cost this console only
            log.exception("admin console: internal error")
            self._fail(f"pgpool internal error on the admin console: {error!r}")
        finally:
            self.task = None

    async def _handle(self, msg_type: int, body: bytes) -> None:
        if msg_type == ord("Q"):
            reply = await self.execute(body.rstrip(b"\x00").decode("utf-8", "replace"))
            if reply is not None and not self.closed:
                self.client.transport.write(reply + m.READY_FOR_QUERY_IDLE)
        elif msg_type == ord("X"):
            self.client.disconnect("admin console: client close request")
        else:
            # As PgBouncer: the console speaks the simple query protocol only.
            self._fail(f"the admin console supports only the simple query protocol; got message type "
                       f"{chr(msg_type)!r} (use psql, or a driver's simple-query mode)")

    def _fail(self, message: str) -> None:
        self.client.disconnect(message, ProtocolError(PROTOCOL_VIOLATION, message))

    async def execute(self, sql: str) -> bytes | None:
        """Run every ';'-separated command; stop at the first error. None: send nothing back."""
        out: list[bytes] = []
        commands = [part.strip() for part in _split_commands(sql) if part.strip()]
        if not commands:
            return m.empty_query_response()
        for text in commands:
            try:
                reply = await self.run_command(text)
            except AdminError as error:
                log.info("admin console %s: %r failed: %s", self.client.user, text, error)
                out.append(error_response(error.sqlstate, str(error)))
                break
            if reply is None:
                return None
            out.append(reply)
        return b"".join(out)

    async def run_command(self, text: str) -> bytes | None:
        if _SET_START.match(text):
            return self.run_set(text)
        match = _COMMAND.fullmatch(text)
        command = COMMANDS.get(match.group(1).lower()) if match else None
        if command is None:
            raise AdminError(f"unknown command {text.split()[0]!r}; commands: {', '.join(sorted(COMMANDS)).upper()} "
                             f"(SHOW HELP explains them)")
        argument = _ARGUMENT.fullmatch(match.group(2))  # type: ignore[union-attr]
        if argument is None:
            raise AdminError(f"syntax error in {text!r}: {match.group(1).upper()} takes at most one argument "  # type: ignore[union-attr]
                             f"(quote a name with spaces in double quotes)")
        arg = _unquote(argument.group(1) or "")
        if command.changes and not self.may_change:
            raise AdminError(f'admin access needed: user "{self.client.user}" is in stats_users, which may only SHOW',
                             "42501")
        if command.changes:
            log.info("admin console %s: %s", self.client.user, text)
        result = command.run(self, arg)
        if asyncio.iscoroutine(result):
            result = await result
        return result


    def run_set(self, text: str) -> bytes:
        """SET key = value: change one setting as a RELOAD that read this value would."""
        match = _SET.fullmatch(text)
        if match is None:
            raise AdminError(f"invalid command {text!r}, use SHOW HELP; (SET key = value, or SET key TO value)")
        key = match.group(1)
        single, double, word = match.group(2), match.group(3), match.group(4)
        value = (single.replace("''", "'") if single is not None
                 else double.replace('""', '"') if double is not None else word)
        if key.lower() in _FAKE_SET:
            return m.notice_response("SET ignored") + m.command_complete("SET")
        if not self.may_change:
            raise AdminError("admin access needed", "42501")
        log.info("admin console %s: SET %s = %r", self.client.user, key, value)
        ok, message = self.app.change_setting(key, value)
        if not ok:
            raise AdminError(f"SET failed: {message}")
        return m.command_complete(f"SET {key}={value}")


def _split_commands(sql: str) -> list[str]:
    """Split on ';' outside quotes, so a SET value may hold one."""
    parts: list[str] = []
    start, quote = 0, ""
    for i, char in enumerate(sql):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == ";":
            parts.append(sql[start:i])
            start = i + 1
    parts.append(sql[start:])
    return parts


def _unquote(arg: str) -> str:
    if len(arg) >= 2 and arg[0] == arg[-1] == '"':
        return arg[1:-1].replace('""', '"')
    return arg


@dataclass(frozen=True)
class Command:
    run: Callable[[AdminConsole, str], "bytes | None | Awaitable[bytes | None]"]
    changes: bool    # needs admin_users; stats_users may run only the others


# ---- commands ------------------------------------------------------------------------------------

def _database_arg(console: AdminConsole, arg: str, command: str, required: bool = False) -> str | None:
    if not arg:
        if required:
            raise AdminError(f"{command} needs a database name")
        return None
    if arg in ADMIN_DATABASES and console.app.pool_directory.find_database(arg) is None:
        raise AdminError(f"cannot {command.lower()} the admin database: {arg}")
    if console.app.pool_directory.find_database(arg) is None and not console.app.pools_of(arg):
        raise AdminError(f"no such database: {arg}")
    return arg


def cmd_show(console: AdminConsole, arg: str) -> bytes:
    name = arg.lower()
    if name == "help":
        return m.notice_response(HELP_TEXT) + m.command_complete("SHOW")
    handler = SHOW_TABLES.get(name)
    if handler is None:
        raise AdminError(f"unknown SHOW table {arg!r}; tables: {', '.join(sorted(SHOW_TABLES)).upper()}"
                         if arg else f"SHOW needs a table: {', '.join(sorted(SHOW_TABLES)).upper()}")
    return encode_table(handler(console.app))


async def cmd_pause(console: AdminConsole, arg: str) -> bytes:
    database = _database_arg(console, arg, "PAUSE")
    if console.app.shutting_down:
        raise AdminError("pgpool is shutting down")
    console.app.pause(database)
    await console.app.wait_paused(database)
    return m.command_complete("PAUSE")


def cmd_resume(console: AdminConsole, arg: str) -> bytes:
    app = console.app
    database = _database_arg(console, arg, "RESUME")
    if app.shutting_down:
        raise AdminError("pgpool is shutting down")
    if database is None and app.suspended:
        app.resume_suspended()
        return m.command_complete("RESUME")
    if database is None and not (app.paused_all or app.paused_dbs):
        raise AdminError("pgpool is not paused")
    if database is not None and database not in app.paused_dbs:
        raise AdminError(f"database {database} is not paused" + (
            " (everything is paused: RESUME without a database resumes all)" if app.paused_all else ""))
    app.resume(database)
    return m.command_complete("RESUME")


def cmd_reconnect(console: AdminConsole, arg: str) -> bytes:
    console.app.reconnect(_database_arg(console, arg, "RECONNECT"))
    return m.command_complete("RECONNECT")


def cmd_kill(console: AdminConsole, arg: str) -> bytes:
    console.app.kill(_database_arg(console, arg, "KILL"))
    return m.command_complete("KILL")


def cmd_kill_client(console: AdminConsole, arg: str) -> bytes:
    try:
        client_id = int(arg)
    except ValueError:
        raise AdminError(f"KILL_CLIENT needs a client id (the id column of SHOW CLIENTS), got {arg!r}") from None
    if not console.app.kill_client(client_id):
        raise AdminError(f"client not found: {client_id}")
    return m.command_complete("KILL_CLIENT")


def cmd_disable(console: AdminConsole, arg: str) -> bytes:
    console.app.set_disabled(_database_arg(console, arg, "DISABLE", required=True), True)  # type: ignore[arg-type]
    return m.command_complete("DISABLE")


def cmd_enable(console: AdminConsole, arg: str) -> bytes:
    console.app.set_disabled(_database_arg(console, arg, "ENABLE", required=True), False)  # type: ignore[arg-type]
    return m.command_complete("ENABLE")


async def cmd_wait_close(console: AdminConsole, arg: str) -> bytes:
    await console.app.wait_close(_database_arg(console, arg, "WAIT_CLOSE"))
    return m.command_complete("WAIT_CLOSE")


def cmd_reload(console: AdminConsole, arg: str) -> bytes:
    if arg:
        raise AdminError("RELOAD takes no argument")
    ok, message = console.app.reload("RELOAD command")
    if not ok:
        raise AdminError(message, CONFIG_FILE_ERROR)
    return m.notice_response(f"RELOAD: {message}") + m.command_complete("RELOAD")


def cmd_shutdown(console: AdminConsole, arg: str) -> bytes | None:
    app = console.app
    mode = arg.upper()
    if mode == "":
        # As PgBouncer: no reply; the console closes with everything else.
        app.loop.call_soon(app.shutdown_now, "SHUTDOWN command")
        return None
    if mode == "WAIT_FOR_CLIENTS":
        app.begin_drain("SHUTDOWN WAIT_FOR_CLIENTS")
    elif mode == "WAIT_FOR_SERVERS":
        app.begin_drain("SHUTDOWN WAIT_FOR_SERVERS", serve_waiting=False)
    else:
        raise AdminError(f"SHUTDOWN takes WAIT_FOR_CLIENTS or WAIT_FOR_SERVERS, got {arg!r}")
    return m.command_complete("SHUTDOWN")


async def cmd_suspend(console: AdminConsole, arg: str) -> bytes:
    app = console.app
    if arg:
        raise AdminError("SUSPEND takes no argument")
    if app.shutting_down:
        raise AdminError("pgpool is shutting down")
    if app.suspended:
        raise AdminError("already suspended")
    await app.suspend(keep=console.client)
    return m.command_complete("SUSPEND")


COMMANDS: dict[str, Command] = {
    "show": Command(cmd_show, changes=False),
    "pause": Command(cmd_pause, changes=True),
    "resume": Command(cmd_resume, changes=True),
    "reconnect": Command(cmd_reconnect, changes=True),
    "kill": Command(cmd_kill, changes=True),
    "kill_client": Command(cmd_kill_client, changes=True),
    "disable": Command(cmd_disable, changes=True),
    "enable": Command(cmd_enable, changes=True),
    "wait_close": Command(cmd_wait_close, changes=True),
    "reload": Command(cmd_reload, changes=True),
    "shutdown": Command(cmd_shutdown, changes=True),
    "suspend": Command(cmd_suspend, changes=True),
}

HELP_TEXT = """Console usage
\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION|LISTS|MEM|STATE
\tSHOW PEERS|PEER_POOLS|SOCKETS|ACTIVE_SOCKETS|DNS_HOSTS|DNS_ZONES
\tSHOW STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS
\tSET key = arg
\tSHOW HISTOGRAMS|ERRORS (pgpool's own)
\tRELOAD
\tPAUSE [<db>]
\tSUSPEND
\tRESUME [<db>]
\tDISABLE <db>
\tENABLE <db>
\tRECONNECT [<db>]
\tKILL [<db>]
\tKILL_CLIENT <client_id>
\tWAIT_CLOSE [<db>]
\tSHUTDOWN [WAIT_FOR_CLIENTS|WAIT_FOR_SERVERS]"""


# ---- SHOW tables ---------------------------------------------------------------------------------

def _pins_text(pins: dict[str, int]) -> str:
    """Clients pinned since start, by cause: "advisory_lock=2,listen=1" ("" when none)."""
    return ",".join(f"{cause}={count}" for cause, count in sorted(pins.items()))


def show_pools(app: "App") -> Table:
    cols = columns("ssiiiiiiiiiiiiiss" "iiiis",
                   "database", "user", "cl_active", "cl_waiting", "cl_active_cancel_req", "cl_waiting_cancel_req",
                   "sv_active", "sv_active_cancel", "sv_being_canceled", "sv_idle", "sv_used", "sv_tested",
                   "sv_login", "maxwait", "maxwait_us", "pool_mode", "load_balance_hosts",
                   # pgpool's own
                   "cl_pinned", "pool_size", "session_audits", "settings_adopted", "pins")
    rows = []
    for pool in app.pools.values():
        wait_us = int(pool.max_wait() * 1_000_000)
        used = sum(1 for server in pool.idle if server.needs_check())
        rows.append((pool.db.name, pool.user,
                     # PgBouncer's cl_active counts linked and idle logged-in clients alike.
                     len(pool.active_clients) + len(pool.idle_clients), len(pool.waiting), 0, 0,
                     len(pool.active), 0, 0, len(pool.idle) - used, used, len(pool.maintenance),
                     len(pool.connecting), wait_us // 1_000_000, wait_us % 1_000_000, pool.conf.pool_mode.value, None,
                     sum(1 for c in pool.active_clients if getattr(c, "pinned", False)), pool.conf.pool_size,
                     pool.stats.session_audits, pool.stats.settings_adopted, _pins_text(pool.stats.pins)))
    return cols, rows


def show_histograms(app: "App") -> Table:
    """pgpool's own: each pool's latency histograms as cumulative bucket counts since start, the
    same figures /metrics serves, so a console reader (`pgpool top`) can compute percentiles."""
    cols = columns("sssNq", "database", "user", "histogram", "le", "count")
    rows = []
    for pool in app.pools.values():
        for kind, histogram in (("wait", pool.stats.wait_hist), ("xact", pool.stats.xact_hist),
                                ("connect", pool.stats.connect_hist)):
            for bound, count in histogram.cumulative():
                rows.append((pool.db.name, pool.user, kind, "+Inf" if bound == float("inf") else repr(bound), count))
    return cols, rows


def show_errors(app: "App") -> Table:
    """pgpool's own: errors by cause per pool since start (pgpool_errors_total on /metrics)."""
    cols = columns("sssq", "database", "user", "cause", "count")
    rows = [(pool.db.name, pool.user, cause, count)
            for pool in app.pools.values() for cause, count in sorted(pool.stats.errors.items())]
    return cols, rows


def show_databases(app: "App") -> Table:
    cols = columns("ssissiiiissiiiiii" "i",
                   "name", "host", "port", "database", "force_user", "pool_size", "min_pool_size",
                   "reserve_pool_size", "server_lifetime", "pool_mode", "load_balance_hosts", "max_connections",
                   "current_connections", "max_client_connections", "current_client_connections", "paused",
                   "disabled",
                   # PgBouncer before 1.23 called reserve_pool_size this; pgbouncer_exporter still reads it.
                   "reserve_pool")
    settings = app.settings
    entries = {name: entry for name, entry in settings.databases.items() if name != "*"}
    for pool in app.pools.values():
        entries.setdefault(pool.db.name, pool.db)   # databases reached through the "*" fallback
    client_counts: collections.Counter[str] = collections.Counter(
        c.pool.db.name for c in app.clients if c.pool is not None)
    rows: list[Sequence[object]] = []
    for name, entry in entries.items():
        reserve = entry.reserve_pool if entry.reserve_pool is not None else settings.reserve_pool_size
        rows.append((name, entry.host, entry.port, entry.dbname, entry.user,
                     entry.pool_size if entry.pool_size is not None else settings.default_pool_size,
                     entry.min_pool_size if entry.min_pool_size is not None else settings.min_pool_size,
                     reserve, int(settings.server_lifetime),
                     entry.pool_mode.value if entry.pool_mode is not None else None, None,
                     entry.max_db_connections or settings.max_db_connections, app.db_servers[name],
                     0, client_counts[name], int(app.is_paused(name)), int(name in app.disabled_dbs), reserve))
    admin_clients = sum(1 for c in app.clients if c.admin is not None)
    rows.append(("pgbouncer", None, settings.listen_port, "pgbouncer", "pgbouncer", 2, 0, 0, 0, "statement", None,
                 0, 0, 0, admin_clients, 0, 0, 0))
    return cols, rows


def show_users(app: "App") -> Table:
    cols = columns("ssssiiii", "name", "pool_size", "reserve_pool_size", "pool_mode", "max_user_connections",
                   "current_connections", "max_user_client_connections", "current_client_connections")
    settings = app.settings
    names = dict.fromkeys([*settings.users, *app.client_auth.users, *(p.server_user for p in app.pools.values())])
    client_counts = collections.Counter(c.user for c in app.clients if c.login is None)
    rows = []
    for name in names:
        entry = settings.users.get(name)
        # PgBouncer sends these two as text: empty when the user entry does not set them.
        rows.append((name, _config_text(entry and entry.pool_size), _config_text(entry and entry.reserve_pool_size),
                     entry.pool_mode.value if entry and entry.pool_mode else None,
                     (entry and entry.max_user_connections) or settings.max_user_connections,
                     app.user_servers[name], 0, client_counts[name]))
    return cols, rows


_SOCKET_COLUMNS = columns("ssssssisiTTiiississii",
                          "type", "user", "database", "replication", "state", "addr", "port", "local_addr",
                          "local_port", "connect_time", "request_time", "wait", "wait_us", "close_needed", "ptr",
                          "link", "remote_pid", "tls", "application_name", "prepared_statements", "id")

_CLIENT_STATES = {ClientState.ACTIVE: "active", ClientState.IDLE: "idle", ClientState.WAITING: "waiting"}


def show_clients(app: "App") -> Table:
    now = time.monotonic()
    return _SOCKET_COLUMNS, [row for _, row in _client_rows(app, now, logging_in=False)]


def _client_rows(app: "App", now: float, *, logging_in: bool) -> list[tuple[Any, Sequence[object]]]:
    rows = []
    for client in sorted(app.clients, key=lambda c: c.id):
        if client.admin is not None:
            state, database = "active", client.database
        elif client.state in _CLIENT_STATES and client.pool is not None:
            state, database = _CLIENT_STATES[client.state], client.pool.db.name
        elif logging_in:
            state, database = "login", client.database or "(nodb)"
        else:
            continue    # still logging in: PgBouncer lists these only in SHOW SOCKETS
        addr, port = _split_peer(client.peer)
        local_addr, local_port = _sockname(client.transport)
        wait_us = int((now - client.wait_start) * 1_000_000) if client.state == ClientState.WAITING else 0
        params = client.params
        rows.append((client, ("C", client.user or "(nouser)", database, getattr(client, "replication", None) or "none",
                              state, addr, port, local_addr, local_port,
                              _wall(client.connected_at, now), _wall(client.last_activity, now),
                              wait_us // 1_000_000, wait_us % 1_000_000, 0, _ptr(client), _ptr(client.server), 0, "",
                              params.get_reported("application_name", "") if params is not None else "",
                              _prepared_count(client), client.id)))
    return rows


_SERVER_STATES = {ServerState.ACTIVE: "active", ServerState.MAINTENANCE: "tested", ServerState.CONNECTING: "new"}


def show_servers(app: "App") -> Table:
    return _SOCKET_COLUMNS, [row for _, row in _server_rows(app, time.monotonic())]


def _server_rows(app: "App", now: float) -> list[tuple[Any, Sequence[object]]]:
    rows = []
    for pool in app.pools.values():
        servers = [*pool.active, *pool.idle, *pool.maintenance, *pool.connecting]
        for server in sorted(servers, key=lambda s: s.id):
            state = _SERVER_STATES.get(server.state) or ("used" if server.needs_check() else "idle")
            local_addr, local_port = _sockname(server.transport)
            client = server.client
            app_name = ""
            if client is not None and getattr(client, "params", None) is not None:
                app_name = client.params.get_reported("application_name", "")
            rows.append((server, ("S", pool.server_user, pool.db.name, pool.replication or "none", state,
                                  server.host, pool.db.port,
                                  local_addr, local_port, _wall(server.created_at, now), _wall(server.last_used, now),
                                  0, 0, int(bool(server.close_needed)), _ptr(server), _ptr(client), server.backend_pid,
                                  "", app_name, _prepared_count(server), server.id)))
    return rows


# SHOW SOCKETS: PgBouncer's list names for the state column, and its buffer columns. pgpool has no
# fixed packet buffer: recv_pos/pkt_* are the bytes a client queued while it waited for a server,
# send_remain what the transport still has to write.
_DEBUG_COLUMNS = columns("iiiiiii", "recv_pos", "pkt_pos", "pkt_remain", "send_pos", "send_remain", "pkt_avail",
                         "send_avail")
_SOCKET_LISTS = {"active": "cl_active", "idle": "cl_active", "waiting": "cl_waiting", "login": "cl_login"}
_SERVER_LISTS = {"active": "sv_active", "idle": "sv_idle", "used": "sv_used", "tested": "sv_tested", "new": "sv_login"}


def _socket_table(app: "App", only_busy: bool) -> Table:
    now = time.monotonic()
    rows: list[Sequence[object]] = []
    for kind, found, names in (("C", _client_rows(app, now, logging_in=True), _SOCKET_LISTS),
                               ("S", _server_rows(app, now), _SERVER_LISTS)):
        for conn, row in found:
            transport = conn.transport
            queued = int(getattr(conn, "pending_size", 0) or 0)
            unsent = transport.get_write_buffer_size() if transport is not None and not transport.is_closing() else 0
            if only_busy and not (queued or unsent):
                continue
            state = names.get(str(row[4]), str(row[4]))
            rows.append((*row[:4], state, *row[5:], queued, 0, queued, 0, unsent, queued, unsent))
    return _SOCKET_COLUMNS + _DEBUG_COLUMNS, rows


def show_sockets(app: "App") -> Table:
    return _socket_table(app, only_busy=False)


def show_active_sockets(app: "App") -> Table:
    """Sockets with bytes waiting in either direction (PgBouncer: non-empty buffers)."""
    return _socket_table(app, only_busy=True)


def show_peers(app: "App") -> Table:
    settings = app.settings
    rows = [(int(entry.name), entry.host, entry.port, entry.pool_size or settings.default_pool_size)
            for entry in sorted(settings.peers.values(), key=lambda e: int(e.name))]
    return columns("isii", "peer_id", "host", "port", "pool_size"), rows


def show_peer_pools(app: "App") -> Table:
    rows = [(p.peer_id, p.in_flight, p.waiting, p.in_flight, p.connecting)
            for p in sorted(app.peer_forwarder.pools.values(), key=lambda p: p.peer_id)]
    return columns("iiiii", "peer_id", "cl_active_cancel_req", "cl_waiting_cancel_req", "sv_active_cancel",
                   "sv_login"), rows


def show_dns_hosts(app: "App") -> Table:
    """pgpool's name cache (dns_max_ttl): each resolved host, seconds left, its addresses as ip:port."""
    rows = [(host, int(max(0.0, left)), ",".join(f"{addr}:{port}" for addr in addrs))
            for host, port, addrs, left in DNS.resolved()]
    return columns("sqs", "hostname", "ttl", "addrs"), rows


def show_dns_zones(app: "App") -> Table:
    return columns("sqi", "zonename", "serial", "count"), []


# SHOW STATS* figures: totals since start, averages over the last stats_period (statslog.py).
_STAT_FIELDS = ("server_assignment_count", "xact_count", "query_count", "bytes_received", "bytes_sent",
                "xact_time", "query_time", "wait_time", "client_parse_count", "server_parse_count", "bind_count",
                "client_login_count")


def show_stats(app: "App") -> Table:
    total_names = ["total_" + n for n in ("server_assignment_count", "xact_count", "query_count", "received",
                                          "sent", "xact_time", "query_time", "wait_time", "client_parse_count",
                                          "server_parse_count", "bind_count", "client_login_count")]
    avg_names = ["avg_" + n for n in ("server_assignment_count", "xact_count", "query_count", "recv", "sent",
                                      "xact_time", "query_time", "wait_time", "client_parse_count",
                                      "server_parse_count", "bind_count", "client_login_count")]
    cols = columns("s" + "N" * 24, "database", *total_names, *avg_names)
    rows = [(db, *_values(totals), *_values(averages)) for db, totals, averages in _stats_by_database(app)]
    return cols, rows


def show_stats_totals(app: "App") -> Table:
    cols = columns("s" + "N" * 12, "database", *_STAT_FIELDS)
    return cols, [(db, *_values(totals)) for db, totals, _ in _stats_by_database(app)]


def show_stats_averages(app: "App") -> Table:
    names = [*_STAT_FIELDS[:8], *("avg_" + n for n in _STAT_FIELDS[8:])]
    cols = columns("s" + "N" * 12, "database", *names)
    return cols, [(db, *_values(averages)) for db, _, averages in _stats_by_database(app)]


def show_totals(app: "App") -> Table:
    totals = Totals()
    for pool in app.pools.values():
        totals = totals + Totals.from_stats(pool.stats)
    averages = app.stats_log.averages_for(list(app.pools.values())) if app.stats_log else None
    names = ("server_assignment_count", "xact_count", "query_count", "client_bytes", "server_bytes", "xact_time",
             "query_time", "wait_time", "client_parse_count", "server_parse_count", "bind_count",
             "client_login_count")
    rows: list[Sequence[object]] = [("total_" + n, v) for n, v in zip(names, _values(totals))]
    rows += [("avg_" + n, v) for n, v in zip(names, _values(averages))]
    return columns("sN", "name", "value"), rows


def _stats_by_database(app: "App") -> list[tuple[str, Any, Any]]:
    by_db: dict[str, list["Pool"]] = {}
    for pool in app.pools.values():
        by_db.setdefault(pool.db.name, []).append(pool)
    result = []
    for db, pools in by_db.items():
        totals = Totals()
        for pool in pools:
            totals = totals + Totals.from_stats(pool.stats)
        averages = app.stats_log.averages_for(pools) if app.stats_log else None
        result.append((db, totals, averages))
    return result


def _values(figures: Any) -> list[int]:
    if figures is None:
        return [0] * len(_STAT_FIELDS)
    return [int(getattr(figures, name)) for name in _STAT_FIELDS]


def show_lists(app: "App") -> Table:
    servers = sum(pool.server_count() for pool in app.pools.values())
    logging_in = sum(1 for c in app.clients if c.login is not None)
    rows = [("databases", len(show_databases(app)[1])), ("users", len(show_users(app)[1])),
            ("peers", len(app.settings.peers)), ("pools", len(app.pools)),
            ("peer_pools", len(app.peer_forwarder.pools)), ("free_clients", 0),
            ("used_clients", len(app.clients)), ("login_clients", logging_in), ("free_servers", 0),
            ("used_servers", servers), ("dns_names", 0), ("dns_zones", 0), ("dns_queries", 0), ("dns_pending", 0)]
    return columns("si", "list", "items"), rows


def show_config(app: "App") -> Table:
    rows = []
    for name in implemented_settings():
        info = Settings.model_fields[name]
        rows.append((name, _config_text(getattr(app.settings, name)),
                     _config_text(info.get_default(call_default_factory=True)),
                     "yes" if name in RELOADABLE_SETTINGS else "no"))
    return columns("ssss", "key", "value", "default", "changeable"), rows


def _config_text(value: object) -> str:
    # As PgBouncer prints them: booleans 1/0, lists comma-separated, durations in seconds.
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(getattr(value, "value", value))


def show_mem(app: "App") -> Table:
    # PgBouncer reports its slab caches; the nearest Python figures are per-object sizes times counts.
    clients = list(app.clients)
    servers = [s for pool in app.pools.values() for s in (*pool.idle, *pool.active, *pool.maintenance,
                                                          *pool.connecting)]
    pools = list(app.pools.values())
    rows = []
    for name, objects in (("client_cache", clients), ("server_cache", servers), ("pool_cache", pools)):
        size = sys.getsizeof(objects[0]) if objects else 0
        rows.append((name, size, len(objects), 0, size * len(objects)))
    return columns("siiii", "name", "size", "used", "free", "memtotal"), rows


def show_version(app: "App") -> Table:
    return columns("s", "version"), [(describe_version(),)]   # what `pgpool --version` prints


def show_state(app: "App") -> Table:
    paused = app.paused_all
    rows = [("active", "no" if paused else "yes"), ("paused", "yes" if paused else "no"),
            ("suspended", "yes" if app.suspended else "no"),
            ("shutting_down", "yes" if app.shutting_down else "no")]
    return columns("ss", "key", "value"), rows


SHOW_TABLES: dict[str, Callable[["App"], Table]] = {
    "pools": show_pools,
    "stats": show_stats,
    "stats_totals": show_stats_totals,
    "stats_averages": show_stats_averages,
    "totals": show_totals,
    "clients": show_clients,
    "servers": show_servers,
    "databases": show_databases,
    "users": show_users,
    "config": show_config,
    "lists": show_lists,
    "mem": show_mem,
    "version": show_version,
    "state": show_state,
    "sockets": show_sockets,
    "active_sockets": show_active_sockets,
    "peers": show_peers,
    "peer_pools": show_peer_pools,
    "dns_hosts": show_dns_hosts,
    "dns_zones": show_dns_zones,
    "histograms": show_histograms,
    "errors": show_errors,
}


# ---- helpers -------------------------------------------------------------------------------------

def _wall(monotonic_at: float, monotonic_now: float) -> str:
    """A monotonic timestamp as PgBouncer prints times: 'YYYY-MM-DD HH:MM:SS UTC'."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(time.time() - (monotonic_now - monotonic_at)))


def _ptr(obj: object) -> str:
    return "" if obj is None else f"0x{id(obj):x}"


def _split_peer(peer: str) -> tuple[str, int]:
    host, _, port = peer.rpartition(":")
    return (host, int(port)) if port.isdigit() else (peer, 0)


def _sockname(transport: Any) -> tuple[str, int]:
    name = transport.get_extra_info("sockname") if transport is not None else None
    return (str(name[0]), int(name[1])) if isinstance(name, tuple) else ("", 0)


def _prepared_count(conn: object) -> int:
    # The prepared-statement tracker, when present, exposes its count under this name.
    return int(getattr(conn, "prepared_count", 0) or 0)
