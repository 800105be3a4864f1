"""One client connection: login, then the client->server half of the data plane.

Owns: the startup phase (SSLRequest/GSSENCRequest answered 'N', CancelRequest handed to
the app), client authentication (trust, plain, md5, SCRAM-SHA-256), the welcome, and on
the data plane the request counting that says when a transaction is over: every Query,
Sync and FunctionCall is owed one ReadyForQuery; an extended-protocol message since the
last Sync keeps the server linked; COPY IN ignores Syncs until it ends. Holds no pool
policy: it asks the pool for a server and tells it when the link may end.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import ssl
import time
from asyncio import sslproto
from typing import TYPE_CHECKING, Any, Protocol

from . import auth, tls
from .config import PoolMode
from .loginstream import LoginStream
from .netopts import apply_tcp_options
from .prepared import ClientStatements
from .params import STARTUP_CONTROL_KEYS, SessionChange, canonical_name, parse_options, search_path_key, \
    set_config_sql, sync_sql
from .session import AUDIT, DROPS, REFUSE, STATELESS, UNDO, Verdict, audit_sql, classify, parse_audit, refusal_sql
from .pool import ClientState
from .protocol import messages as m
from .protocol.constants import (
    F_BIND, F_CLOSE, F_COPY_DATA, F_COPY_DONE, F_COPY_FAIL, F_DESCRIBE, F_EXECUTE, F_FLUSH, F_FUNCTION_CALL,
    F_PARSE, F_PASSWORD, F_QUERY, F_SYNC, F_TERMINATE, MAX_STARTUP_PACKET, TX_FAILED, TX_IDLE, TX_IN_BLOCK,
)
from .protocol.errors import (
    ADMIN_SHUTDOWN, CONNECTION_FAILURE, FEATURE_NOT_SUPPORTED, INTERNAL_ERROR, INVALID_AUTHORIZATION_SPECIFICATION,
    INVALID_PASSWORD, PROTOCOL_VIOLATION, QUERY_CANCELED, ProtocolError,
)
from .protocol.framing import MessageScanner
from .protocol.scram import ScramError, ScramServer

try:   # under uvloop, direct TLS uses uvloop's TLS layer, as loop.start_tls does
    from uvloop.loop import Loop as UvLoop, SSLProtocol as UvSSLProtocol
except ImportError:
    UvLoop = UvSSLProtocol = None

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .authquery import AuthQuery
    from .config import DatabaseEntry, Settings
    from .params import SessionParams
    from .pool import Pool
    from .server import ServerConnection

log = logging.getLogger("pgpool.client")


class ClientHost(Protocol):
    """What a client connection needs from the process that accepted it (app.py's App): settings,
    secrets, limits, pools, cancel keys and the admin console. Defined here, not imported from
    app.py: app.py sits above this module (imports run one way); App satisfies it by shape."""
    settings: "Settings"
    tls: tls.TlsContexts
    loop: asyncio.AbstractEventLoop
    auth_users: dict[str, str]
    auth_query: "AuthQuery"

    def on_client_connected(self, client: "ClientConnection") -> None: ...
    def on_client_logged_in(self, client: "ClientConnection") -> None: ...
    def on_client_closed(self, client: "ClientConnection") -> None: ...
    def check_client_limit(self, client: "ClientConnection") -> None: ...
    def register_cancel_key(self, client: "ClientConnection") -> tuple[int, int]: ...
    def forward_cancel(self, pid: int, key: int) -> None: ...
    def find_database(self, name: str) -> "DatabaseEntry | None": ...
    def get_pool(self, database: str, user: str, creds: auth.Credentials | None,
                 replication: str | None = None) -> "Pool": ...
    def client_auth_method(self, client: "ClientConnection", creds: auth.Credentials) -> str: ...
    async def open_replication_server(self, client: "ClientConnection", pool: "Pool",
                                      startup: "Mapping[str, str]") -> "SessionParams": ...
    def open_admin_console(self, client: "ClientConnection", creds: auth.Credentials) -> Any: ...
    def admin_welcome(self, database: str) -> bytes: ...

# Every type but CopyData is looked at: the ones that drive pooling, and the invalid ones to refuse.
WATCH_CLIENT = bytes(0 if t == F_COPY_DATA else 1 for t in range(256))
# Messages that leave state on the server until a Sync. Flush is not one: alone it asks for nothing.
_EXTENDED = frozenset((F_PARSE, F_BIND, F_DESCRIBE, F_EXECUTE, F_CLOSE))

# Bytes a client may send while it waits for a server before pgpool stops reading it.
PENDING_LIMIT = 256 * 1024
# Largest Parse/Bind/Describe/Close read whole to rewrite statement names (bigger: refused, 54000).
MAX_REWRITE = 64 * 1024 * 1024
WRITE_HIGH_WATER = 256 * 1024
WRITE_LOW_WATER = 64 * 1024

ADMIN_DATABASES = ("pgbouncer", "pgpool")

PARSE_COMPLETE_READY = m.message(b"1") + m.READY_FOR_QUERY_IDLE
QUERY_CANCELED_READY = ProtocolError(QUERY_CANCELED, "canceling statement due to user request",
                                     severity="ERROR").to_bytes() + m.READY_FOR_QUERY_IDLE

_ids = itertools.count(1)


def replication_kind(value: str | None) -> str | None:
    """The startup parameter `replication` as PostgreSQL reads it: physical, logical or none."""
    if value is None:
        return None
    lowered = value.lower()
    if lowered == "database":
        return "logical"
    if lowered in ("true", "on", "yes", "1"):
        return "physical"
    if lowered in ("false", "off", "no", "0"):
        return None
    raise ProtocolError(PROTOCOL_VIOLATION, f'invalid value for parameter "replication": "{value}"',
                        hint="valid values are: \"false\", 0, \"true\", 1, \"database\"")


def _parse_is_stateless(data: bytes) -> bool:
    """A Parse pgpool may answer itself must be proven stateless: its verdict is recorded on the way."""
    name_end = data.find(b"\x00", 5)
    query_end = data.find(b"\x00", name_end + 1)
    return 0 <= name_end < query_end and classify(data, name_end + 1, query_end) is STATELESS


class TlsHandshakeFailed(Exception):
    """A client's TLS handshake failed (garbage instead of a ClientHello, bad certificate, ...)."""


class ClientConnection(asyncio.Protocol):
    __slots__ = ("app", "id", "transport", "state", "pool", "server", "scanner", "params", "login", "login_task",
                 "pending", "pending_size", "peer", "user", "database", "cancel_key", "pending_rfq", "open_extended",
                 "copy_in", "copy_end_seen", "syncs_since_execute", "rfq_seen", "pending_changes", "tx_changes", "query_failed", "last_tag",
                 "xact_start", "last_activity", "wait_start", "connected_at", "write_paused", "reading_paused",
                 "syncing", "closing", "closed", "admin", "log_prefix", "mode", "drain", "rfq_replacement", "pinned",
                 "audit_due", "auditing", "audit_cause", "resync_due", "resync_reported", "tx_snapshot", "query_start",
                 "statements", "stmt_verdicts", "portal_verdicts", "cancel_deferred", "replication")

    def __init__(self, app: ClientHost):
        self.app = app
        self.id = next(_ids)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.state = ClientState.LOGIN
        self.pool: Pool | None = None
        self.server: ServerConnection | None = None
        self.scanner: MessageScanner | None = None
        self.params: SessionParams | None = None
        self.login: LoginStream | None = LoginStream(MAX_STARTUP_PACKET, "client")
        self.login_task: asyncio.Task | None = None
        # An idle client holds no containers: each list is () and each dict None until first needed.
        self.pending: list[bytes] | tuple[()] = ()   # bytes received while no server was linked
        self.pending_size = 0
        self.peer = "?"
        self.user = ""
        self.database = ""
        self.cancel_key: tuple[int, int] | None = None
        self.pending_rfq = 0                     # ReadyForQuery owed for Query / Sync / FunctionCall sent
        self.open_extended = False               # extended-protocol messages sent since the last Sync
        self.copy_in = False                     # in COPY FROM STDIN: the server ignores Syncs
        self.copy_end_seen = False               # CopyDone/CopyFail sent since the last Execute/Query
        self.syncs_since_execute = 0             # Syncs sent between the last Execute/Query and CopyDone
        self.rfq_seen = 0                        # ReadyForQuery received so far: numbers the replies
        # SET/RESET sent, not yet answered, each with the number of the ReadyForQuery that answers it.
        self.pending_changes: list[tuple[int, SessionChange]] | tuple[()] = ()
        self.tx_changes: list[SessionChange] | tuple[()] = ()   # SET/RESET inside a transaction, kept if it commits
        self.tx_snapshot: tuple[dict[str, str], dict[str, str]] | None = None   # statements before them
        self.query_failed = False
        self.last_tag = b""
        now = time.monotonic()
        self.xact_start = now
        self.last_activity = now
        self.wait_start = now
        self.connected_at = now
        self.write_paused = False
        self.reading_paused = False
        self.syncing = False                     # a linked server is being given this client's parameters
        self.cancel_deferred = False             # a CancelRequest came before its query reached the server
        self.closing = False
        self.closed = False
        self.admin = None                        # the admin console session, for the virtual databases
        self.log_prefix = f"C-{self.id}"
        self.mode = PoolMode.TRANSACTION
        self.drain = False                       # shutting down: leave at the next transaction boundary
        self.rfq_replacement: bytes | None = None  # what the client sees instead of a ReadyForQuery
        self.pinned = False                      # keeps its server: it holds unshareable session state
        self.audit_due = False                   # ask the server about session state at the transaction's end
        self.auditing = False                    # an audit is on its way: its answer may pin
        self.audit_cause = ""                    # the statement that made the audit due, for the log
        self.resync_due = False                  # a RESET left the server off the client's startup values
        self.resync_reported: list[str] | tuple[()] = ()   # reported names to announce once the server has them again
        self.query_start = now
        self.statements = ClientStatements()     # this client's names of protocol-level prepared statements
        # Verdicts of what is not stateless: statement name -> verdict, portal name -> verdict. A
        # verdict belongs to the statement and counts at every Execute, in whatever transaction.
        self.stmt_verdicts: dict[bytes, Verdict] | None = None
        self.portal_verdicts: dict[bytes, Verdict] | None = None
        self.replication: str | None = None      # "physical" / "logical": passed through, never pooled

    # ---- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer = f"{peer[0]}:{peer[1]}"
        elif isinstance(transport.get_extra_info("sockname"), str):
            self.peer = "unix"
        apply_tcp_options(transport.get_extra_info("socket"), self.app.settings)
        self.transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)
        self.log_prefix = f"C-{self.id} {self.peer}"
        self.app.on_client_connected(self)
        self.login_task = asyncio.get_running_loop().create_task(self._run_login())

    def data_received(self, data: bytes) -> None:
        if self.login is not None:
            self.login.feed(data)
            return
        if self.admin is not None:
            self.admin.feed(data)
            return
        pool = self.pool
        pool.stats.bytes_received += len(data)  # type: ignore[union-attr]
        self.last_activity = time.monotonic()
        server = self.server
        if server is None or self.syncing:
            # Messages are walked when they go to a server: what they become may depend on it.
            if server is None and not self.pending:
                if data == m.TERMINATE:
                    self.disconnect("client close request")
                    return
                # Answered here only while the client reads what pgpool writes; otherwise it queues for a
                # server like any request, and PENDING_LIMIT bounds what pgpool holds for it.
                if data[:1] == b"P" and not self.write_paused and self.mode != PoolMode.SESSION \
                        and self.app.settings.max_prepared_statements and _parse_is_stateless(data) \
                        and self.statements.parse_without_server(pool.statement_registry, data):
                    pool.stats.client_parse_count += 1  # type: ignore[union-attr]
                    self.transport.write(PARSE_COMPLETE_READY)
                    return
            if self.pending:
                self.pending.append(data)  # type: ignore[union-attr]
            else:
                self.pending = [data]
            self.pending_size += len(data)
            if server is None and self.state == ClientState.IDLE:
                pool.request_server(self)  # type: ignore[union-attr]
            if self.pending_size > PENDING_LIMIT:
                self.update_reading()
            return
        self._forward(data)

    def _forward(self, data: bytes) -> None:
        scanner = self.scanner
        if scanner is None:   # made at the first request, not at login: an idle client needs none
            settings = self.app.settings
            # Messages naming prepared statements are rewritten whole, so they are read whole up to a bound.
            scanner = self.scanner = MessageScanner(WATCH_CLIENT, self._on_message, max_message=settings.max_packet_size,
                                                    max_inspect=min(settings.max_packet_size, MAX_REWRITE))
        try:
            out = scanner.feed(data)
        except ProtocolError as error:
            self.disconnect(f"protocol error: {error.message}", error)
            return
        except Exception as error:   # a bug must cost one client, never the process
            log.exception("%s: internal error on client data", self.log_prefix)
            self.disconnect("internal error", ProtocolError(INTERNAL_ERROR, f"pgpool internal error: {error!r}"))
            return
        server = self.server
        if server is not None:
            if out:
                server.transport.write(out)
            if server.prepared is not None:
                made_up = server.prepared.take_client_output()
                if made_up:
                    self.transport.write(made_up)
                if not server.injected:
                    server.scanner.watch = server.normal_watch()
        if self.closing:
            self.disconnect("client close request")

    def connection_lost(self, exc: Exception | None) -> None:
        if self.login is not None:
            self.login.feed_eof()
        if not self.closed:
            self._cleanup("client closed the connection" if exc is None else f"client connection lost: {exc}")

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.server is not None:
            self.server.set_reading(False)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.server is not None:
            self.server.set_reading(True)
        elif self.admin is not None:
            self.admin.on_writable()

    def update_reading(self) -> None:
        """Read from the client unless its server cannot take more, or it queued too much while waiting."""
        server = self.server
        blocked = (server is not None and server.write_paused) or \
                  ((server is None or self.syncing) and self.pending_size > PENDING_LIMIT)
        if blocked != self.reading_paused and not self.closed:
            self.reading_paused = blocked
            if blocked:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    # ---- login ---------------------------------------------------------------------------------

    async def _run_login(self) -> None:
        settings = self.app.settings
        try:
            async with asyncio.timeout(settings.client_login_timeout or None):
                await self._login()
        except ProtocolError as error:
            if self.pool is not None:
                self.pool.stats.client_login_failures += 1
            if settings.log_connections or error.sqlstate == INVALID_PASSWORD:
                log.warning("%s: login failed: db=%s user=%s: %s (%s)", self.log_prefix, self.database or "?",
                            self.user or "?", error.message, error.sqlstate)
            self.disconnect(f"login failed: {error.message}", error, quiet=True)
        except TimeoutError:
            self.disconnect("client_login_timeout", ProtocolError(
                PROTOCOL_VIOLATION, f"client_login_timeout: login not completed within {settings.client_login_timeout:g}s"))
        except ConnectionResetError:
            self.disconnect("client closed the connection during login", quiet=not settings.log_connections)
        except TlsHandshakeFailed as error:
            # The client expects TLS records: a clear-text ErrorResponse would be garbage to it.
            log.warning("%s: TLS handshake failed: %s", self.log_prefix, error)
            self.disconnect(f"TLS handshake failed: {error}", quiet=True)
        except asyncio.CancelledError:
            self.disconnect("login cancelled", ProtocolError(ADMIN_SHUTDOWN, "pgpool is shutting down"))
            raise
        except Exception as error:
            log.exception("%s: internal error during login", self.log_prefix)
            self.disconnect("internal error during login", ProtocolError(INTERNAL_ERROR, f"pgpool internal error: {error!r}"))
        finally:
            self.login_task = None

    async def _login(self) -> None:
        assert self.login is not None
        contexts = self.app.tls     # one set for the whole login, even if a RELOAD swaps them meanwhile
        unix = self.peer == "unix"
        if contexts.client is not None and not unix and await self.login.peek_byte() == tls.TLS_RECORD_HANDSHAKE:
            await self._start_direct_tls(contexts.client)
        while True:
            packet = await self.login.read_startup_packet(MAX_STARTUP_PACKET)
            kind, payload = m.parse_startup_packet(packet)
            if kind in (m.StartupKind.SSL, m.StartupKind.GSSENC):
                if self.login.buffer:
                    # Bytes after SSLRequest before our answer could be spliced into a TLS session later.
                    raise ProtocolError(PROTOCOL_VIOLATION, "unexpected data after SSLRequest/GSSENCRequest")
                if self.encrypted():
                    raise ProtocolError(PROTOCOL_VIOLATION, "SSLRequest/GSSENCRequest inside a TLS session")
                answer = tls.answer_ssl_request(contexts) if kind == m.StartupKind.SSL and not unix else b"N"
                self.transport.write(answer)
                if answer == b"S":
                    await self._start_tls(contexts.client)  # type: ignore[arg-type]
                continue
            if kind == m.StartupKind.CANCEL:
                pid, key = payload  # type: ignore[misc]
                self.app.forward_cancel(pid, key)
                self.disconnect("cancel request", quiet=True)
                return
            break
        startup: dict[str, str] = payload  # type: ignore[assignment]
        protocol_options = [name for name in startup if name.startswith("_pq_.")]
        if m.startup_minor_version(packet) > 0 or protocol_options:
            self.transport.write(m.negotiate_protocol_version(0, protocol_options))
        self.user = startup.get("user", "")
        if not self.user:
            raise ProtocolError(INVALID_AUTHORIZATION_SPECIFICATION, "no PostgreSQL user name specified in startup packet")
        self.database = startup.get("database") or self.user
        self.log_prefix = f"C-{self.id} {self.database}/{self.user}@{self.peer}"
        self.app.check_client_limit(self)
        if not unix and not self.encrypted():
            tls.check_clear_text_client(contexts, self.user, self.database, self.peer)
        self.replication = replication_kind(startup.get("replication"))

        creds = auth.lookup_credentials(self.app.auth_users, self.user)
        is_admin = self.database in ADMIN_DATABASES and self.app.find_database(self.database) is None
        if not creds.known and not is_admin:
            creds = await self.app.auth_query.lookup(self.app.settings, self.app.auth_users, self.database,
                                                     self.user, creds)
        scram_keys = await self._authenticate(creds)
        if is_admin:
            self.admin = self.app.open_admin_console(self, creds)
            self.transport.write(m.AUTHENTICATION_OK + self.app.admin_welcome(self.database))
            self._end_login(admin=True)
            return
        pool = self.app.get_pool(self.database, self.user, creds, self.replication)
        self.pool = pool
        self.mode = pool.conf.pool_mode
        if scram_keys is not None and pool.server_password is None:
            pool.scram_keys = scram_keys
        self.transport.write(m.AUTHENTICATION_OK)
        if self.replication:
            session = await self.app.open_replication_server(self, pool, startup)
        else:
            session = await pool.client_session(self._session_startup_params(startup))
        session.remember_startup()
        self.params = session
        self.cancel_key = self.app.register_cancel_key(self)
        welcome = [m.parameter_status(name, value) for name, value in session.reported_items()]
        welcome.append(m.backend_key_data(*self.cancel_key))
        welcome.append(m.READY_FOR_QUERY_IDLE)
        self.transport.write(b"".join(welcome))
        pool.stats.client_logins += 1
        self._end_login(admin=False)

    async def _start_tls(self, ctx: ssl.SSLContext) -> None:
        """TLS on this connection after answering 'S'; the handshake is bounded by client_login_timeout."""
        try:
            self.transport = await asyncio.get_running_loop().start_tls(
                self.transport, self, ctx, server_side=True,
                ssl_handshake_timeout=self.app.settings.client_login_timeout or None)
        except (ssl.SSLError, OSError, EOFError) as error:
            raise TlsHandshakeFailed(tls.describe_tls_error(error)) from None
        self._after_handshake(direct=False)

    async def _start_direct_tls(self, ctx: ssl.SSLContext) -> None:
        """PostgreSQL 17's direct TLS: the ClientHello is already in the login buffer, so the TLS layer
        is put under this protocol by hand (what loop.start_tls does) and fed those bytes first."""
        assert self.login is not None
        loop = asyncio.get_running_loop()
        handshake_done = loop.create_future()
        first = self.login.take_rest()
        tls_layer = UvSSLProtocol if UvLoop is not None and isinstance(loop, UvLoop) else sslproto.SSLProtocol
        layer = tls_layer(loop, self, ctx, handshake_done, server_side=True,
                          ssl_handshake_timeout=self.app.settings.client_login_timeout or None,
                          call_connection_made=False)
        raw = self.transport
        raw.set_protocol(layer)
        layer.connection_made(raw)
        buffer = layer.get_buffer(len(first))
        buffer[:len(first)] = first
        layer.buffer_updated(len(first))
        try:
            await handshake_done
        except (ssl.SSLError, OSError, EOFError) as error:
            raw.close()
            raise TlsHandshakeFailed(tls.describe_tls_error(error)) from None
        self.transport = layer._get_app_transport()   # what loop.start_tls returns
        self._after_handshake(direct=True)

    def _after_handshake(self, direct: bool) -> None:
        self.transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)
        ssl_object = self.transport.get_extra_info("ssl_object")
        if direct and ssl_object.selected_alpn_protocol() != tls.ALPN_POSTGRESQL:
            # PostgreSQL 17 refuses direct TLS without ALPN "postgresql" (protects against cross-protocol attacks).
            raise ProtocolError(PROTOCOL_VIOLATION, "direct TLS connection without ALPN protocol \"postgresql\"")
        if self.app.settings.log_connections:
            log.info("%s: TLS%s established (%s, %s)", self.log_prefix, " (direct)" if direct else "",
                     ssl_object.version(), ssl_object.cipher()[0])

    def encrypted(self) -> bool:
        return self.transport.get_extra_info("ssl_object") is not None

    def _end_login(self, admin: bool) -> None:
        assert self.login is not None
        rest = self.login.take_rest()
        self.login = None
        if not admin:
            # Shared prepared statements are keyed by search_path too.
            self.statements.path_key = search_path_key(self.params)  # type: ignore[arg-type]
            self.pool.set_client_state(self, ClientState.IDLE)  # type: ignore[union-attr]
            self.app.on_client_logged_in(self)
        if self.app.settings.log_connections:
            log.info("%s: login ok%s", self.log_prefix, " (admin console)" if admin else "")
        if rest:
            self.data_received(rest)

    def _session_startup_params(self, startup: dict[str, str]) -> dict[str, str]:
        """Startup keys that become session parameters, minus ignore_startup_parameters."""
        ignored = {name.lower() for name in self.app.settings.ignore_startup_parameters}
        result: dict[str, str] = {}
        merged = dict(parse_options(startup.get("options", "")))
        merged.update((k, v) for k, v in startup.items() if k not in STARTUP_CONTROL_KEYS)
        for name, value in merged.items():
            if name.lower() in ignored or name.startswith("_pq_."):
                continue
            result[canonical_name(name)] = value
        return result

    async def _authenticate(self, creds: auth.Credentials) -> tuple[bytes, bytes] | None:
        """Run the auth exchange; return SCRAM keys usable for pass-through, if any."""
        if self.app.settings.auth_type == "cert":
            cert_user = tls.certificate_user(self.transport.get_extra_info("peercert")) if self.encrypted() else None
            refusal = auth.check_certificate_user(self.user, cert_user)
            if refusal is not None:
                raise ProtocolError(INVALID_AUTHORIZATION_SPECIFICATION, refusal,
                                    detail=None if cert_user is None else f'the certificate is for "{cert_user}"')
            return None
        try:
            method = self.app.client_auth_method(self, creds)
        except ValueError as error:
            raise ProtocolError(FEATURE_NOT_SUPPORTED, str(error)) from None
        failed = ProtocolError(INVALID_PASSWORD, f'password authentication failed for user "{self.user}"')
        if method == "trust":
            if not creds.known and self.app.settings.auth_type == "trust" and self.app.auth_users:
                raise ProtocolError(INVALID_AUTHORIZATION_SPECIFICATION,
                                    f'"trust" authentication failed for user "{self.user}"')
            return None
        if method == "plain":
            self.transport.write(m.AUTHENTICATION_CLEARTEXT)
            if not auth.check_plain(creds, m.parse_password(await self._read_password())):
                raise failed
            return None
        if method == "md5":
            salt = os.urandom(4)
            self.transport.write(m.authentication_md5(salt))
            if not auth.check_md5(creds, salt, m.parse_password(await self._read_password())):
                raise failed
            return None
        verifier = auth.scram_verifier_for(creds)
        exchange = ScramServer(verifier)
        self.transport.write(m.authentication_sasl())
        mechanism, data = m.parse_sasl_initial_response(await self._read_password())
        if mechanism != "SCRAM-SHA-256":
            raise ProtocolError(PROTOCOL_VIOLATION, f"client selected an invalid SASL authentication mechanism {mechanism!r}")
        try:
            self.transport.write(m.authentication_sasl_continue(exchange.handle_client_first(data)))
            final = exchange.handle_client_final(await self._read_password())
        except ScramError:
            raise failed from None
        if not creds.known:
            raise failed
        self.transport.write(m.authentication_sasl_final(final))
        if exchange.client_key is not None and creds.kind is auth.SecretKind.SCRAM:
            return exchange.client_key, verifier.server_key
        return None

    async def _read_password(self) -> bytes:
        assert self.login is not None
        msg_type, body = await self.login.read_message()
        if msg_type != F_PASSWORD:
            raise ProtocolError(PROTOCOL_VIOLATION, f"expected password response, got message type {chr(msg_type)!r}")
        return body

    # ---- data plane: client -> server ----------------------------------------------------------

    def _on_message(self, msg_type: int, buf: bytes | None, start: int, end: int) -> bytes | None:
        out = self._track_message(msg_type, buf, start, end)
        server = self.server
        if server is not None and server.prepared is not None and msg_type != F_TERMINATE:
            if out:   # pgpool replaced the message (a refusal): the tracker sees what is sent
                tracked = server.prepared.on_client_message(msg_type, out, 5, len(out))
                return out if tracked is None else tracked
            return server.prepared.on_client_message(msg_type, buf, start, end)
        return out

    def _track_message(self, msg_type: int, buf: bytes | None, start: int, end: int) -> bytes | None:
        """The core's bookkeeping: requests owed a ReadyForQuery, session changes, Terminate."""
        if msg_type == F_QUERY:
            if not self.pending_rfq:
                self.query_start = time.monotonic()
            self.pending_rfq += 1
            self.syncs_since_execute = 0
            self.copy_end_seen = False
            if buf is not None:
                verdict = classify(buf, start, end - 1)
                if verdict is not STATELESS:
                    # Its changes settle at the ReadyForQuery that answers this Query.
                    if self._note_verdict(verdict, self.rfq_seen + self.pending_rfq):
                        return m.query(refusal_sql(self.pool.name, buf[start:end - 1].decode(  # type: ignore[union-attr]
                            "utf-8", "replace")))
        elif msg_type == F_SYNC:
            if not self.copy_in:
                if not self.pending_rfq:
                    self.query_start = time.monotonic()
                self.pending_rfq += 1
                if not self.copy_end_seen:
                    self.syncs_since_execute += 1
            self.open_extended = False
        elif msg_type in _EXTENDED:
            self.open_extended = True
            if msg_type == F_EXECUTE:
                self.syncs_since_execute = 0
                self.copy_end_seen = False
                if self.portal_verdicts and buf is not None:
                    verdict = self.portal_verdicts.get(buf[start:buf.find(b"\x00", start, end)])
                    if verdict is not None:   # settles at the ReadyForQuery of the next Sync
                        self._note_verdict(verdict, self.rfq_seen + self.pending_rfq + 1)
            elif msg_type == F_BIND:
                if (self.stmt_verdicts or self.portal_verdicts) and buf is not None:
                    portal_end = buf.find(b"\x00", start, end)
                    statement = buf[portal_end + 1:buf.find(b"\x00", portal_end + 1, end)]
                    verdict = self.stmt_verdicts.get(statement) if self.stmt_verdicts else None
                    if verdict is not None:
                        if self.portal_verdicts is None:
                            self.portal_verdicts = {}
                        self.portal_verdicts[buf[start:portal_end]] = verdict
                    elif self.portal_verdicts:
                        self.portal_verdicts.pop(buf[start:portal_end], None)
            elif msg_type == F_PARSE and buf is not None:
                name_end = buf.find(b"\x00", start, end)
                query_end = buf.find(b"\x00", name_end + 1, end)
                if 0 <= name_end < query_end:
                    verdict = classify(buf, name_end + 1, query_end)
                    if verdict is STATELESS:
                        if self.stmt_verdicts:
                            self.stmt_verdicts.pop(buf[start:name_end], None)
                    else:
                        name = buf[start:name_end]
                        if self.stmt_verdicts is None:
                            self.stmt_verdicts = {}
                        self.stmt_verdicts[name] = verdict
                        if verdict.flags & REFUSE and self._refuses():
                            self.pool.stats.count_error("session_state_refused")  # type: ignore[union-attr]
                            sql = refusal_sql(self.pool.name,  # type: ignore[union-attr]
                                              buf[name_end + 1:query_end].decode("utf-8", "replace"))
                            return m.message(b"P", name + b"\x00" + m.cstring(sql) + b"\x00\x00")
        elif msg_type == F_FUNCTION_CALL:
            self.pending_rfq += 1
        elif msg_type == F_FLUSH:
            if end != start:
                # Postgres fails a Flush with a body and skips to the next Sync: a reply is owed.
                self.open_extended = True
        elif msg_type == F_COPY_DONE or msg_type == F_COPY_FAIL:
            self.copy_in = False
            self.copy_end_seen = True
        elif msg_type == F_TERMINATE:
            self.closing = True
            return b""
        else:
            raise ProtocolError(PROTOCOL_VIOLATION, f"invalid frontend message type {msg_type} ({chr(msg_type)!r})")
        return None

    def _refuses(self) -> bool:
        return self.mode != PoolMode.SESSION and not self.app.settings.session_pinning

    def _note_verdict(self, verdict: Verdict, answer: int) -> bool:
        """A statement that is not proven stateless is being executed; True: refuse it instead.

        Its SET / RESETs wait for ReadyForQuery number `answer`; whatever else it may do makes
        the audit due at the end of the transaction (dropping state matters to a pinned client only).
        """
        flags = verdict.flags
        if flags & REFUSE and self._refuses():
            self.pool.stats.count_error("session_state_refused")  # type: ignore[union-attr]
            return True
        for change in verdict.changes:
            if not self.pending_changes:
                self.pending_changes = []
            self.pending_changes.append((answer, change))  # type: ignore[union-attr]
        if self.mode == PoolMode.SESSION:
            return False
        if flags & AUDIT or (flags & DROPS and (self.pinned or self.auditing)) or \
                (flags & UNDO and (self.tx_changes or self.pending_changes)):
            if not self.audit_due:
                self.audit_due = True
                self.audit_cause = verdict.cause or ("ROLLBACK TO SAVEPOINT after SET" if flags & UNDO
                                                     else "a statement that may drop session state")
        return False

    def _on_audited(self, error: ProtocolError | None) -> None:
        """The server said what session state it holds: adopt settings, pin or unpin, then release."""
        self.auditing = False
        server = self.server
        if server is None:
            return
        pool = self.pool
        stats = pool.stats  # type: ignore[union-attr]
        stats.session_audits += 1
        try:
            if error is not None:
                raise ValueError(f"{error.message} ({error.sqlstate})")
            result = parse_audit(server.injected_rows)
        except ValueError as problem:
            log.warning("%s: session audit failed (%s); keeping the server pinned", self.log_prefix, problem)
            self._set_pins(("unknown",), server)
        else:
            self._adopt_settings(result.settings, server)
            self._set_pins(result.pins, server)
        if self.resync_due and self.pinned:
            self._resync()
            return
        self._release_if_done(server)

    def _adopt_settings(self, found: dict[str, str], server: "ServerConnection") -> None:
        """Settings the audit found are the truth for both sides: follow them, forget what is gone."""
        reported = self.pool.reported_names  # type: ignore[union-attr]
        client_statements = self.params.statements  # type: ignore[union-attr]
        server_statements = server.params.statements
        for name, value in found.items():
            if name in reported:
                continue   # followed through ParameterStatus
            sql = set_config_sql(name, value)
            if name not in server_statements:
                self.pool.stats.settings_adopted += 1  # type: ignore[union-attr]
                log.info("%s: follows setting %s = %r found by the session audit (after: %s)", self.log_prefix,
                         name, value, self.audit_cause)
            client_statements[name] = sql
            server_statements[name] = sql
        for name in [name for name in server_statements if name not in found]:
            del server_statements[name]   # undone on the server (ROLLBACK TO SAVEPOINT, RESET in a function)
            client_statements.pop(name, None)
        self.statements.path_key = search_path_key(self.params)  # type: ignore[arg-type]

    def _set_pins(self, pins: tuple[str, ...], server: "ServerConnection") -> None:
        if pins and not self.app.settings.session_pinning:
            # Nothing refused it up front (a function, a DO block): never hand the state over.
            log.warning("%s: session state (%s) left by %s and session_pinning is off: the server is reset "
                        "before reuse", self.log_prefix, ", ".join(pins), self.audit_cause)
            server.needs_reset = True
            if not self.app.settings.server_reset_query:
                server.close_needed = "session state left on it, session_pinning off, server_reset_query empty"
            pins = ()
        if pins and not self.pinned:
            self.pinned = True
            stats = self.pool.stats  # type: ignore[union-attr]
            for cause in pins:
                stats.pins[cause] = stats.pins.get(cause, 0) + 1
            log.info("%s: pinned to server %s: session state (%s) from: %s", self.log_prefix,
                     server.log_prefix, ", ".join(pins), self.audit_cause)
        elif not pins and self.pinned:
            self.pinned = False
            log.info("%s: unpinned: no session state left on server %s", self.log_prefix, server.log_prefix)

    def _release_if_done(self, server: "ServerConnection") -> None:
        if (not self.pinned and not (self.pending_rfq or self.open_extended or self.copy_in)
                and server.tx_status == TX_IDLE and self.mode != PoolMode.SESSION):
            if self.resync_due:   # the next server gets the startup values at attach; tell the client now
                self.resync_due = False
                self.transport.write(self._reported_after_reset(server))
            server.request_release()

    # ---- data plane: what the server said ------------------------------------------------------

    def on_ready_for_query(self, status: int) -> bool:
        """A ReadyForQuery reached this client; True when the server may go back to the pool."""
        if self.pending_rfq:
            self.pending_rfq -= 1
        self.rfq_seen += 1
        self.copy_in = False      # ReadyForQuery: the backend has left any COPY
        pool = self.pool
        stats = pool.stats  # type: ignore[union-attr]
        now = time.monotonic()
        stats.query_count += 1
        stats.query_time += now - self.query_start
        self.query_start = now
        if self.pending_changes:
            self._settle_changes(status)
        if self.tx_changes and status == TX_IDLE:
            self._settle_tx_changes()
        self.query_failed = False
        if self.pending_rfq or self.open_extended or self.copy_in:
            return False
        server = self.server
        if status == TX_IDLE:
            elapsed = now - self.xact_start
            stats.xact_count += 1
            stats.xact_time += elapsed
            stats.xact_hist.observe(elapsed)
            self.xact_start = now
            if self.portal_verdicts:
                self.portal_verdicts.clear()   # portals end with their transaction
            if self.drain:
                self.app.loop.call_soon(self._drain_now)
            if server is None:
                return False
            if self.mode == PoolMode.SESSION:
                if self.resync_due:
                    self._resync()
                return False
            if self.audit_due or self.app.settings.session_audit == "always":
                if not self.audit_due:
                    self.audit_cause = "session_audit = always"
                self.audit_due = False
                self.auditing = True
                server.inject(audit_sql(pool.server_user), self._on_audited)
                return False
            if self.pinned:
                if self.resync_due:
                    self._resync()
                return False
            if self.resync_due:
                # Released here: the next server is given the startup values at attach.
                self.resync_due = False
                self.rfq_replacement = self._reported_after_reset(server) + m.READY_FOR_QUERY_IDLE
            return True
        if self.mode == PoolMode.STATEMENT:
            # The client sees its BEGIN fail; the server is rolled back on release.
            pool.stats.count_error("statement_mode_transaction")
            self.rfq_replacement = ProtocolError(
                FEATURE_NOT_SUPPORTED, f"transaction blocks not allowed in statement pooling mode (pool {pool.name})",
                severity="ERROR").to_bytes() + m.READY_FOR_QUERY_IDLE
            return True
        if self.resync_due and status == TX_IN_BLOCK and server is not None:
            self._resync()   # BEGIN; RESET ALL; ... : the rest of the transaction sees the startup values
        return False

    def _reported_after_reset(self, server: "ServerConnection") -> bytes:
        """ParameterStatus for reported values a RESET put back to the client's startup value."""
        names = self.resync_reported or [name for name in self.pool.reported_names  # type: ignore[union-attr]
                                         if self.params.reported.get(name) != server.params.reported.get(name)]  # type: ignore[union-attr]
        self.resync_reported = ()
        return b"".join(m.parameter_status(name, self.params.reported[name])  # type: ignore[union-attr]
                        for name in names if name in self.params.reported)  # type: ignore[union-attr]

    def _resync(self) -> None:
        """Give the linked server the client's values again (after a RESET), before its next request."""
        self.resync_due = False
        server = self.server
        if server is None:
            return
        reported = self.pool.reported_names  # type: ignore[union-attr]
        self.resync_reported = [name for name in reported
                                if self.params.reported.get(name) != server.params.reported.get(name)]  # type: ignore[union-attr]
        sql = sync_sql(self.params, server.params, reported)  # type: ignore[arg-type]
        if sql:
            server.inject(sql, self._on_resynced)

    def _on_resynced(self, error: ProtocolError | None) -> None:
        server = self._synced_server(error, " after RESET")
        if server is None:
            return
        announce = self._reported_after_reset(server)
        if announce:
            self.transport.write(announce)
        self._release_if_done(server)

    def _drain_now(self) -> None:
        if self.server is None or not (self.pending_rfq or self.open_extended):
            self.disconnect("shutting down", ProtocolError(ADMIN_SHUTDOWN, "pgpool is shutting down (client drained "
                                                                           "at transaction boundary)"))

    def _settle_changes(self, status: int) -> None:
        """Settle the SET/RESETs this ReadyForQuery answers; later ones in a pipeline wait for theirs.

        Inside a transaction they count at once (the rest of it must see them), and the
        statements from before are kept to put back if it does not commit.
        """
        answered = [change for number, change in self.pending_changes if number <= self.rfq_seen]
        if not answered:
            return
        self.pending_changes = [item for item in self.pending_changes if item[0] > self.rfq_seen]
        if self.query_failed or status == TX_FAILED:
            return
        if status == TX_IN_BLOCK:
            if not self.tx_changes:
                self.tx_changes = []
                server_statements = dict(self.server.params.statements) if self.server is not None else {}
                self.tx_snapshot = (dict(self.params.statements), server_statements)  # type: ignore[union-attr]
            self.tx_changes.extend(answered)  # type: ignore[union-attr]
            if self.server is not None:
                self.server.scanner.watch = self.server.normal_watch()
        self._apply_changes(answered)

    def _settle_tx_changes(self) -> None:
        self.tx_changes = ()
        snapshot, self.tx_snapshot = self.tx_snapshot, None
        if self.server is not None:
            self.server.scanner.watch = self.server.normal_watch()
        if not self.last_tag.startswith(b"COMMIT") and snapshot is not None:
            # Rolled back: the SETs and RESETs went with it (reported values come back as ParameterStatus).
            self.params.statements = snapshot[0]  # type: ignore[union-attr]
            if self.server is not None:
                self.server.params.statements = snapshot[1]
            self.statements.path_key = search_path_key(self.params)  # type: ignore[arg-type]

    def _apply_changes(self, changes: list[SessionChange]) -> None:
        """Apply settled changes to both sides; a RESET leaves the server off the client's startup values."""
        reported = self.pool.reported_names  # type: ignore[union-attr]
        for change in changes:
            if change.kind != "set":
                self.resync_due = True
            self.params.apply(change, reported)  # type: ignore[union-attr]
            if self.server is not None:
                self.server.params.apply(change, reported)
        self.statements.path_key = search_path_key(self.params)  # type: ignore[arg-type]

    @property
    def prepared_count(self) -> int:
        return self.statements.count()

    def on_command_complete(self, tag: bytes) -> None:
        self.last_tag = tag

    def on_server_error(self, fields: dict[str, str]) -> None:
        self.query_failed = True
        self.pool.stats.count_error("server_error")  # type: ignore[union-attr]

    def on_copy_in(self) -> None:
        # Syncs sent after the Execute that started COPY, before CopyDone, are ignored by the server.
        self.pending_rfq = max(0, self.pending_rfq - self.syncs_since_execute)
        self.syncs_since_execute = 0
        # A client that already sent CopyDone (everything in one write) is not in COPY any more.
        self.copy_in = not self.copy_end_seen

    # ---- linking -------------------------------------------------------------------------------

    def attach_server(self, server: "ServerConnection") -> None:
        self.server = server
        server.client = self
        if server.prepared is not None:
            server.prepared.link(self.statements)
        self.xact_start = time.monotonic()
        if self.write_paused:
            server.set_reading(False)
        sql = sync_sql(self.params, server.params, server.pool.reported_names)  # type: ignore[arg-type]
        if sql:
            self.syncing = True
            server.inject(sql, self._on_params_synced)
        else:
            self._flush_pending()
        self.update_reading()

    def _on_params_synced(self, error: ProtocolError | None) -> None:
        self.syncing = False
        if self._synced_server(error, "") is None:
            return
        self._flush_pending()
        self.update_reading()

    def _synced_server(self, error: ProtocolError | None, when: str) -> "ServerConnection | None":
        """The linked server once pgpool's replay of this client's parameters on it succeeded, now
        holding them; None when the client has no server any more or the replay failed (closed)."""
        server = self.server
        if server is None:
            return None
        if error is not None:
            server.close(f"could not restore session parameters{when}: {error.message}")
            return None
        server.params.statements = self.params.copy_statements()  # type: ignore[union-attr]
        return server

    def _flush_pending(self) -> None:
        if self.pending:
            data = self.pending[0] if len(self.pending) == 1 else b"".join(self.pending)
            self.pending = ()
            self.pending_size = 0
            self._forward(data)
        if self.cancel_deferred:
            # The query it was meant for is on the server now: deliver it there.
            self.cancel_deferred = False
            self.app.forward_cancel(*self.cancel_key)  # type: ignore[misc]

    def detach_server(self) -> None:
        server = self.server
        if server is None:
            return
        self.server = None
        server.client = None
        server.set_reading(True)
        self.syncing = False
        self.cancel_deferred = False
        if server.prepared is not None and not server.prepared.unlink():
            server.close("released with prepared statement replies outstanding")
        self.tx_changes = ()   # a SET inside an unfinished transaction dies with it
        self.tx_snapshot = None
        if not server.injected:
            server.scanner.watch = server.normal_watch()
        self.update_reading()

    def on_server_lost(self, reason: str) -> None:
        """The linked server went away: this client's session is gone with it."""
        server = self.server
        if server is not None:
            self.server = None
            server.client = None
        pool_name = self.pool.name if self.pool else "?"
        self.disconnect(f"server connection lost: {reason}", ProtocolError(
            CONNECTION_FAILURE, f"server conn crashed? server connection lost for pool {pool_name}: {reason}"))

    def cancel_while_waiting(self) -> bool:
        """A CancelRequest for a client still queued for a server: answer as Postgres would.

        Done when what waits is one request (a Query, or extended messages up to their first
        Sync): it is dropped and the client gets 57014 and ReadyForQuery, exactly what a server
        cancelling it at its first message sends. Otherwise False: the caller sends the cancel
        to the server once the queries reach one, where Postgres cancels whichever runs.
        """
        data = b"".join(self.pending)
        pos, last_type = 0, 0
        while pos + 5 <= len(data):
            last_type = data[pos]
            if last_type in (F_QUERY, F_SYNC, F_FUNCTION_CALL):
                pos += 1 + int.from_bytes(data[pos + 1:pos + 5], "big")
                break
            pos += 1 + int.from_bytes(data[pos + 1:pos + 5], "big")
        if pos != len(data) or last_type not in (F_QUERY, F_SYNC, F_FUNCTION_CALL):
            return False
        self.pending = ()
        self.pending_size = 0
        self.pool.set_client_state(self, ClientState.IDLE)  # type: ignore[union-attr]
        self.pool.stats.count_error("cancelled_while_waiting")  # type: ignore[union-attr]
        self.transport.write(QUERY_CANCELED_READY)
        self.update_reading()
        log.info("%s: query cancelled while waiting for a server (%.1fs)", self.log_prefix,
                 time.monotonic() - self.wait_start)
        return True

    # ---- leaving -------------------------------------------------------------------------------

    def fail(self, error: ProtocolError) -> None:
        """Waiting ended in an error (query_wait_timeout, server login failure)."""
        self.disconnect(error.message, error)

    def disconnect(self, reason: str, error: ProtocolError | None = None, quiet: bool = False) -> None:
        """The one way a client leaves: optional ErrorResponse, log line with reason and age, cleanup."""
        if self.closed:
            return
        if error is not None and not self.transport.is_closing():
            self.transport.write(error.to_bytes())
            if self.app.settings.log_pooler_errors and not quiet:
                log.warning("%s: sent error %s: %s", self.log_prefix, error.sqlstate, error.message)
        if not self.transport.is_closing():
            self.transport.close()
        if self.app.settings.log_disconnections and not quiet:
            log.info("%s: closing: %s (age %.1fs)", self.log_prefix, reason, time.monotonic() - self.connected_at)
        self._cleanup(reason)

    def _cleanup(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        if self.login_task is not None and asyncio.current_task() is not self.login_task:
            self.login_task.cancel()
        pool = self.pool
        server = self.server
        if server is not None:
            if self.pending_rfq or self.open_extended or self.copy_in or self.syncing or server.injected:
                # Mid-query (its own or pgpool's check): cancel it, and drop the server rather than wait.
                self.server = None
                server.client = None
                server.cancel_and_close(f"client left mid-query ({reason})")
            else:
                # Idle (maybe inside a transaction): release rolls back / resets before reuse.
                # Session state it may have made (pinned, or not yet checked) is reset before reuse.
                dirty = self.pinned or self.audit_due
                server.needs_reset = self.mode == PoolMode.SESSION or dirty
                if dirty and not self.app.settings.server_reset_query:
                    server.close_needed = "client left session state on it and server_reset_query is empty"
                pool.release_server(server)  # type: ignore[union-attr]
        if pool is not None:
            pool.set_client_state(self, ClientState.CLOSED)
        if self.admin is not None:
            self.admin.close()
        self.app.on_client_closed(self)
