"""One server connection: login to PostgreSQL, then the server->client half of the data plane.

Owns: connecting, TLS and driving the login machine (protocol/startup.py's ServerLogin,
which holds the wire protocol) with pgpool's secrets for the server, within
server_connect_timeout; watching the replies that drive pooling (ReadyForQuery,
ErrorResponse, ParameterStatus, CopyInResponse); swallowing the replies to queries pgpool
itself injected (parameter sync, check, reset, rollback); closing. Pool policy lives in
pool.py, the client half in client.py.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
import time
from typing import TYPE_CHECKING, Any, Callable, Protocol

from . import auth, tls
from .hosts import needs_writer, unfit
from .loginwait import LoginWaiter
from .netopts import apply_tcp_options
from .params import SessionParams
from .config import PoolMode
from .pool import ServerState
from .prepared import ServerStatements
from .protocol import messages as m
from .protocol.constants import (
    B_COMMAND_COMPLETE, B_ERROR_RESPONSE, B_PARAMETER_STATUS, B_READY_FOR_QUERY, TX_IDLE,
)
from .protocol.errors import (
    CONNECTION_FAILURE, INVALID_PASSWORD, READ_ONLY_SQL_TRANSACTION,
    ProtocolError,
    parse_error_fields,
)
from .protocol.framing import MessageScanner
from .protocol.link import WATCH_CORE, Done, Link
from .protocol.scram import ScramClient
from .protocol.startup import Event, PasswordRequest, ScramRequest, ServerLogin, SslAnswer

if TYPE_CHECKING:
    from .params import SessionChange
    from .pool import Pool

log = logging.getLogger("pgpool.server")


class LinkedClient(Protocol):
    """What a server needs of the client linked to it (client.py's ClientConnection). Defined here,
    not imported from client.py: client.py sits above this module (imports run one way)."""
    transport: Any
    params: SessionParams | None
    tx_changes: "list[SessionChange]"
    rfq_replacement: Any

    def update_reading(self) -> None: ...
    def on_server_lost(self, reason: str | None) -> None: ...
    def on_ready_for_query(self, status: int) -> bool: ...
    def on_server_error(self, fields: dict[str, str]) -> None: ...
    def on_command_complete(self, tag: bytes) -> None: ...


WRITE_HIGH_WATER = 256 * 1024
WRITE_LOW_WATER = 64 * 1024

_ids = itertools.count(1)

_TLS_HINTS = {ssl.SSLCertVerificationError: "check server_tls_ca_file (the CA that signed the server's certificate) "
                                            "and that the database entry's host is a name in the certificate"}


def unix_socket_path(directory: str, port: int) -> str:
    """Where Postgres (and pgpool) listen in a socket directory: <dir>/.s.PGSQL.<port>."""
    return f"{directory.rstrip('/')}/.s.PGSQL.{port}"



class ServerConnection(asyncio.Protocol):
    __slots__ = ("pool", "app", "id", "transport", "state", "client", "scanner", "link", "params", "backend_pid",
                 "backend_key", "created_at", "last_used", "needs_reset", "close_needed", "_login", "_login_waiter", "_release",
                 "write_paused", "reading_paused", "closed_reason", "log_prefix", "prepared", "cancels_in_flight",
                 "parked", "fatal_cause", "host", "address", "extra_startup")

    def __init__(self, pool: "Pool"):
        self.pool = pool
        self.extra_startup: dict[str, str] = {}     # a replication client's own startup parameters
        self.app = pool.app
        self.id = next(_ids)
        self.transport: asyncio.Transport | None = None
        self.state = ServerState.CLOSED
        self.client: LinkedClient | None = None
        settings = self.app.settings
        self.scanner = MessageScanner(WATCH_CORE, self._on_message, max_message=settings.max_packet_size,
                                      peer="server")
        # The conversation (what is owed, what goes where). Named prepared statements are tracked
        # where servers are shared (transaction / statement mode): then it is the statement tracker.
        self.prepared: ServerStatements | None = None
        if settings.max_prepared_statements and pool.conf.pool_mode != PoolMode.SESSION:
            self.prepared = ServerStatements(pool.statement_registry, settings.max_prepared_statements,
                                             stats=pool.stats, scanner=self.scanner)
        self.link: Link = self.prepared if self.prepared is not None else Link(self.scanner)
        self.params = SessionParams()
        self.backend_pid = 0
        self.backend_key = 0
        self.created_at = time.monotonic()
        self.last_used = self.created_at
        self.cancels_in_flight = 0              # CancelRequests sent for this backend, not yet handled
        self.parked = False                     # released while a cancel was in flight: held back
        self.needs_reset = False                # server_reset_query owed before reuse
        self.close_needed: str | None = None    # close instead of reuse, with this reason
        self._login: ServerLogin | None = None        # the login machine, while connect_and_login runs
        self._login_waiter: LoginWaiter | None = None   # what connect_and_login awaits bytes with
        self._release = False
        self.write_paused = False
        self.reading_paused = False
        self.closed_reason: str | None = None
        self.fatal_cause: str | None = None     # a FATAL the server sent its client before closing
        self.host = pool.db.host        # the host name of the entry's list this connection went to
        self.address = pool.db.host     # what it resolved to (cancel requests go there)
        self.log_prefix = f"S-{self.id} {pool.name}@{pool.db.host}:{pool.db.port}"

    @property
    def tx_status(self) -> int:
        """Status byte of the server's last ReadyForQuery (I, T, E)."""
        return self.link.tx_status

    @tx_status.setter
    def tx_status(self, status: int) -> None:
        self.link.tx_status = status

    @property
    def injected(self) -> int:
        """pgpool's own queries still owed a reply."""
        return self.link.injected

    @property
    def injected_rows(self) -> list[str | None]:
        """First column of each DataRow of pgpool's last own query."""
        return self.link.rows

    def set_target(self, host: str, address: str) -> None:
        """Which host of the database entry (and which of its addresses) connect_and_login dials."""
        self.host = host
        self.address = address
        self.log_prefix = f"S-{self.id} {self.pool.name}@{host}:{self.pool.db.port}"

    # ---- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        apply_tcp_options(transport.get_extra_info("socket"), self.app.settings)
        transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self._login is not None:
            self._login.receive_data(data)
            self._wake_login()
            return
        try:
            out = self.scanner.feed(data)
        except ProtocolError as error:
            self.close(f"protocol error from server: {error.message}")
            return
        if out:
            client = self.client
            if client is not None:
                client.transport.write(out)
                self.pool.stats.bytes_sent += len(out)
        if self._release:
            self._release = False
            self.pool.release_server(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed_reason is None:
            self.closed_reason = f"server closed the connection ({exc})" if exc else "server closed the connection"
            if self.fatal_cause:
                self.closed_reason = f"server closed the connection after FATAL: {self.fatal_cause}"
            if self.state != ServerState.CONNECTING and self.app.settings.log_disconnections:
                log.info("%s: closed: %s", self.log_prefix, self.closed_reason)
        if self._login is not None:
            self._login.receive_eof()
            self._wake_login()
        client = self.client
        if client is not None:
            client.on_server_lost(self.closed_reason)
        self.link.fail_injected(self.closed_reason)
        if self.state != ServerState.CONNECTING:
            self.pool.on_server_closed(self)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.client is not None:
            self.client.update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.client is not None:
            self.client.update_reading()

    def set_reading(self, enabled: bool) -> None:
        """Idempotent pause/resume of reads from this server (backpressure from the client)."""
        if self.transport is None or self.reading_paused == (not enabled):
            return
        self.reading_paused = not enabled
        if enabled:
            self.transport.resume_reading()
        else:
            self.transport.pause_reading()

    # ---- login ---------------------------------------------------------------------------------

    async def connect_and_login(self) -> None:
        pool = self.pool
        db = pool.db
        settings = self.app.settings
        where = f"{self.host}:{db.port}" if not self.host.startswith("/") else unix_socket_path(self.host, db.port)
        self._login = ServerLogin(settings.max_packet_size, pool.name, where, f"{self.host}:{db.port}")
        self._login_waiter = LoginWaiter()
        try:
            async with asyncio.timeout(settings.server_connect_timeout):
                await self._open(where)
                await self._negotiate_tls(where)
                await self._login_exchange()
                if db.connect_query:
                    self._login.send_query(db.connect_query)
                    await self._next_login_event()
        except TimeoutError:
            raise ProtocolError(CONNECTION_FAILURE,
                                f"server_connect_timeout: no login to {where} for pool {pool.name} "
                                f"within {settings.server_connect_timeout:g}s", transient=True) from None
        except ConnectionResetError as error:
            raise ProtocolError(CONNECTION_FAILURE, f"server {where} closed the connection during "
                                                    f"login for pool {pool.name}: {error}", transient=True) from None
        login = self._login
        self._login = None
        self._login_waiter = None
        self.params.reported.update(login.reported)
        self.backend_pid, self.backend_key = login.backend_pid, login.backend_key
        self.tx_status = login.tx_status
        self.last_used = time.monotonic()
        if settings.log_connections:
            log.info("%s: new server connection (backend pid %d%s)", self.log_prefix, self.backend_pid,
                     ", TLS" if self.transport.get_extra_info("ssl_object") is not None else "")  # type: ignore[union-attr]

    async def _next_login_event(self) -> Event:
        """The login machine's next event (bytes awaited from data_received; its output written first)."""
        return await self._login_waiter.next_event(self._login, self._write_login_bytes, "server")  # type: ignore[union-attr,arg-type]

    def _write_login_bytes(self, out: bytes) -> None:
        self.transport.write(out)  # type: ignore[union-attr]   # the TLS transport once start_tls replaced it

    def _wake_login(self) -> None:
        if self._login_waiter is not None:
            self._login_waiter.wake()

    async def _open(self, where: str) -> None:
        """TCP, or the server's Unix socket when the entry's host is a directory (starts with '/')."""
        db = self.pool.db
        loop = asyncio.get_running_loop()
        try:
            if self.host.startswith("/"):
                await loop.create_unix_connection(lambda: self, where)
            else:
                await loop.create_connection(lambda: self, self.address, db.port)
        except OSError as error:
            raise ProtocolError(CONNECTION_FAILURE,
                                f"could not connect to server {where} for pool {self.pool.name}: "
                                f"{error.strerror or error}", transient=True) from None

    async def _negotiate_tls(self, where: str) -> None:
        """SSLRequest, then TLS on this connection if the server says 'S' (never silently without under
        require/verify-*). Unix sockets stay in clear, as with libpq."""
        contexts = self.app.tls
        ctx = contexts.server
        if ctx is None or self.host.startswith("/"):
            return
        assert self.transport is not None and self._login is not None
        what = f"server {where} for pool {self.pool.name}"
        self._login.request_ssl()
        answer = await self._next_login_event()
        assert isinstance(answer, SslAnswer)
        if not tls.server_answer_means_tls(answer.answer, contexts.server_mode, what):
            return
        host = self.host   # the name from the host list (SNI, verify-full), not the address it resolved to
        try:
            self.transport = await asyncio.get_running_loop().start_tls(
                self.transport, self, ctx, server_hostname=host)
        except (ssl.SSLError, OSError) as error:
            raise ProtocolError(CONNECTION_FAILURE, f"TLS connection to {what} failed: "
                                                    f"{tls.describe_tls_error(error)}",
                                detail=f"server_tls_sslmode = {contexts.server_mode}",
                                hint=_TLS_HINTS.get(type(error))) from None
        self.transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)

    async def _login_exchange(self) -> None:
        pool = self.pool
        db = pool.db
        login = self._login
        assert login is not None
        login.send_startup({"user": pool.server_user, "database": db.dbname or db.name, **db.server_parameters(),
                            **self.extra_startup})
        while True:
            event = await self._next_login_event()
            if isinstance(event, PasswordRequest):
                if event.method == "md5":
                    secret = pool.server_password
                    if secret is None:
                        raise self._no_password("md5")
                    login.send_password(auth.md5_response(secret, pool.server_user, event.salt))
                else:
                    login.send_password(self._plain_password("cleartext"))
            elif isinstance(event, ScramRequest):
                login.start_scram(self._scram_client())
            else:
                return      # Ready

    def _plain_password(self, method: str) -> str:
        secret = self.pool.server_password
        if secret is None or auth.secret_kind(secret) != auth.SecretKind.PLAIN:
            raise self._no_password(method)
        return secret

    def _no_password(self, method: str) -> ProtocolError:
        return ProtocolError(INVALID_PASSWORD,
                             f"pool {self.pool.name}: server asks for {method} authentication but pgpool has no usable "
                             f"password for user \"{self.pool.server_user}\"",
                             hint="set password= in the [databases] entry, or a plain password in auth_file "
                                  "(an md5 hash only works for md5; a SCRAM verifier only after the client logged "
                                  "in with SCRAM)")

    def _scram_client(self) -> ScramClient:
        secret = self.pool.server_password
        if secret is not None and auth.secret_kind(secret) == auth.SecretKind.PLAIN:
            return ScramClient(secret)
        if self.pool.scram_keys is not None:
            client_key, server_key = self.pool.scram_keys
            return ScramClient(client_key=client_key, server_key=server_key)
        raise self._no_password("SCRAM-SHA-256")

    # ---- data plane ----------------------------------------------------------------------------

    def _on_message(self, msg_type: int, buf: bytes | None, start: int, end: int) -> bytes | None:
        link = self.link
        own = link.injected and link.head_is_injected()   # a reply to pgpool's own query: never forwarded
        out = link.on_server_message(msg_type, buf, start, end)
        if buf is None:
            return out      # too large to inspect; nothing the core tracks is that large
        client = self.client
        if msg_type == B_PARAMETER_STATUS:
            name, value = m.parse_parameter_status(buf[start:end])
            self.params.reported[name] = value
            if client is not None and not own:
                client.params.reported[name] = value
            return out
        if own:
            return out
        if msg_type == B_READY_FOR_QUERY:
            if client is not None and client.on_ready_for_query(buf[start]):
                self._release = True
                replacement = client.rfq_replacement
                if replacement is not None:
                    client.rfq_replacement = None
                    # Keep any replies the tracker put before this ReadyForQuery (6 bytes).
                    return (out[:-6] if out else b"") + replacement
        elif msg_type == B_ERROR_RESPONSE:
            fields = parse_error_fields(buf[start:end])
            if fields.get("C") == READ_ONLY_SQL_TRANSACTION and needs_writer(self.pool.db.target_session_attrs):
                self.pool.on_read_only_error(self)
            if client is not None:
                client.on_server_error(fields)
                if fields.get("V", fields.get("S")) in ("FATAL", "PANIC"):
                    # The server is closing: its client gets one error, pgpool's 08006 naming this cause,
                    # when it does (two ErrorResponses make libpq report two results for one command).
                    self.fatal_cause = f"{fields.get('M', '')} ({fields.get('C', '')})"
                    return b""
            else:
                log.warning("%s: error while idle: %s (%s)", self.log_prefix, fields.get("M"), fields.get("C"))
        elif msg_type == B_COMMAND_COMPLETE:
            if client is not None and client.tx_changes:
                client.on_command_complete(buf[start:end - 1])
        return out

    def inject(self, sql: str, done: Done) -> None:
        """Send pgpool's own simple query; its replies never reach a client; `done(error)` at its ReadyForQuery."""
        assert self.transport is not None
        self.transport.write(self.link.inject(m.query(sql), done))

    async def run_query(self, sql: str) -> tuple[ProtocolError | None, None]:
        future = asyncio.get_running_loop().create_future()

        def done(error: ProtocolError | None) -> None:
            if not future.done():
                future.set_result(error)
        self.inject(sql, done)
        return await future, None

    def request_release(self) -> None:
        """Give the server back once the current read is handled (never from inside the scanner)."""
        self._release = True

    def run_maintenance(self, sql: str, then: Callable[["ServerConnection"], None]) -> None:
        """Run a check / reset / rollback with the server out of every client's reach."""
        self.pool.set_server_state(self, ServerState.MAINTENANCE)

        def done(error: ProtocolError | None) -> None:
            if self.state == ServerState.CLOSED:
                return
            if error is not None:
                self.close(f"{sql!r} failed: {error.message} ({error.sqlstate})")
            elif self.tx_status != TX_IDLE:
                self.close(f"{sql!r} left the server in a transaction")
            else:
                then(self)
        self.inject(sql, done)

    def needs_check(self) -> bool:
        settings = self.app.settings
        return bool(settings.server_check_query) and settings.server_check_delay >= 0 and \
            time.monotonic() - self.last_used > settings.server_check_delay

    def check_sql(self) -> str:
        query = self.app.settings.server_check_query
        return "" if query == "<empty>" else query   # PgBouncer's spelling of an empty query

    def start_check(self) -> None:
        self.run_maintenance(self.check_sql(), self.pool.server_available)

    def close_reason_on_release(self) -> str | None:
        if self.close_needed:
            return self.close_needed
        attrs = self.pool.db.target_session_attrs
        if attrs != "any" and unfit(attrs, self.params.reported):   # a ParameterStatus said its role changed
            return f"server role changed: no longer fits target_session_attrs={attrs}"
        lifetime = self.pool.conf.server_lifetime   # the [databases] entry's, else the global one
        if time.monotonic() - self.created_at > lifetime:   # 0: use once, as in PgBouncer
            return f"server_lifetime ({lifetime:g}s) reached"
        return None

    def on_cancel_done(self) -> None:
        self.cancels_in_flight -= 1
        if not self.cancels_in_flight and self.parked and self.state == ServerState.MAINTENANCE:
            self.parked = False
            # A cancel signal still on its way would hit this query, never another client's.
            self.run_maintenance(self.check_sql() or "SELECT 1", self.pool.server_available)

    def cancel_and_close(self, reason: str) -> None:
        """Stop whatever the server runs for a client that left, then drop the connection."""
        self.app.send_cancel(self.address, self.pool.db.port, self.backend_pid, self.backend_key)
        self.close(reason)

    def close(self, reason: str) -> None:
        """The one way pgpool closes a server connection; logs why and how old it was."""
        if self.closed_reason is not None:
            return
        self.closed_reason = reason
        if self.app.settings.log_disconnections:
            log.info("%s: closing: %s (age %.1fs)", self.log_prefix, reason, time.monotonic() - self.created_at)
        client = self.client
        if client is not None:
            client.on_server_lost(reason)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(m.TERMINATE)
            self.transport.close()
        if self.state != ServerState.CONNECTING:
            self.pool.on_server_closed(self)

    def close_transport(self) -> None:
        if self.closed_reason is None:
            self.closed_reason = "login failed"
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
