"""One client connection: login, then the client->server half of the data plane.

Owns: driving the login machine (protocol/startup.py's ClientLogin, which holds the wire
protocol of the startup phase and the auth exchanges) with what needs IO or shared state, asked
of the collaborators App hands down (`ClientHost`): TLS (answer 'S', direct TLS), CancelRequest
routed by the cancel registry, the client limits, credential lookups, the method choice and
password checks, the pool and the welcome; then the asyncio side of the data
plane: transport, flow control, bytes held while no server is linked. What is owed and when
a transaction is over is the linked server's `Link` (protocol/link.py, one queue of
outstanding requests); what the session carries is `ClientSession` (clientsession.py).
Holds no pool policy: it asks the pool for a server and tells it when the link may end.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import ssl
import sys
import time
from asyncio import sslproto
from typing import TYPE_CHECKING, Protocol

from . import auth, tls
from .admingate import ADMIN_DATABASES, ADMIN_WELCOME, AdminGate
from .cancel import CancelRegistry
from .clientauth import ClientAuth
from .clientregistry import ClientRegistry
from .clientsession import ClientSession
from .config import PoolMode
from .loginwait import LoginWaiter
from .netopts import apply_tcp_options
from .prepared import ClientStatements
from .params import STARTUP_CONTROL_KEYS, SessionChange, canonical_name, parse_options, search_path_key, sync_sql
from .session import STATELESS, audit_sql, classify
from .pool import ClientState
from .pooldirectory import PoolDirectory
from .protocol import messages as m
from .protocol.constants import (
    F_BIND, F_COPY_DATA, F_EXECUTE, F_FUNCTION_CALL, F_PARSE, F_QUERY, F_SYNC, F_TERMINATE, TX_IDLE, TX_IN_BLOCK,
)
from .protocol.errors import (
    ADMIN_SHUTDOWN, CONNECTION_FAILURE, FEATURE_NOT_SUPPORTED, INTERNAL_ERROR, INVALID_AUTHORIZATION_SPECIFICATION,
    INVALID_PASSWORD, PROTOCOL_VIOLATION, QUERY_CANCELED, ProtocolError,
)
from .protocol.framing import MessageScanner, watch_table
from .protocol.link import Link
from .protocol.scram import ScramServer
from .protocol.startup import (
    CancelRequest, ClientLogin, DirectTls, Event, Password, ScramDone, SslRequest, Startup, welcome,
)

try:   # under uvloop, direct TLS uses uvloop's TLS layer, as loop.start_tls does
    from uvloop.loop import Loop as UvLoop, SSLProtocol as UvSSLProtocol
except ImportError:
    UvLoop = UvSSLProtocol = None

if TYPE_CHECKING:
    from .config import Settings
    from .params import SessionParams
    from .pool import Pool
    from .server import ServerConnection

log = logging.getLogger("pgpool.client")


class ClientHost(Protocol):
    """What a client connection is handed by the process that accepted it (app.py's App): the
    settings and the collaborators it asks, each owning one thing; a client never calls App.
    Defined here, not imported from app.py: app.py sits above this module (imports run one way);
    App satisfies it by shape. A client holds this one reference, shared by every client."""
    settings: "Settings"
    tls: tls.TlsContexts
    loop: asyncio.AbstractEventLoop
    client_registry: ClientRegistry   # every client; max_client_conn and per-database/user limits; the drain
    pool_directory: PoolDirectory     # the database a login names, its pool, replication servers
    admin_gate: AdminGate             # the admin console's way in
    client_auth: ClientAuth           # credentials and auth methods
    cancel: CancelRegistry            # cancel keys; a CancelRequest routed to its client or peer, or sent to a server

# Every type but CopyData is looked at: the ones that drive pooling, and the invalid ones to refuse.
WATCH_CLIENT = bytes(0 if t == F_COPY_DATA else 1 for t in range(256))
# Requests that may change the session (ClientSession.on_request), and those that start the query clock.
_SESSION_TYPES = watch_table(F_QUERY, F_PARSE, F_BIND, F_EXECUTE)
_STARTS_CLOCK = watch_table(F_QUERY, F_SYNC, F_FUNCTION_CALL)

# Bytes a client may send while it waits for a server before pgpool stops reading it.
PENDING_LIMIT = 256 * 1024
# Largest Parse/Bind/Describe/Close read whole to rewrite statement names (bigger: refused, 54000).
MAX_REWRITE = 64 * 1024 * 1024
WRITE_HIGH_WATER = 256 * 1024
WRITE_LOW_WATER = 64 * 1024

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


def _is_parse_sync(data: bytes) -> bool:
    """`data` is exactly one Parse and a Sync (PQprepare's shape): cheap, checked before classifying."""
    return data.endswith(m.SYNC) and int.from_bytes(data[1:5], "big") + 6 == len(data)


def _parse_is_stateless(data: bytes) -> bool:
    """A Parse pgpool may answer itself must be proven stateless: its verdict is recorded on the way."""
    name_end = data.find(b"\x00", 5)
    query_end = data.find(b"\x00", name_end + 1)
    return 0 <= name_end < query_end and classify(data, name_end + 1, query_end) is STATELESS


class TlsHandshakeFailed(Exception):
    """A client's TLS handshake failed (garbage instead of a ClientHello, bad certificate, ...)."""


class ClientConnection(asyncio.Protocol):
    __slots__ = ("app", "id", "transport", "state", "pool", "server", "scanner", "params", "login", "login_waiter", "login_task",
                 "pending", "pending_size", "peer", "user", "database", "cancel_key", "session",
                 "xact_start", "last_activity", "wait_start", "connected_at", "write_paused", "reading_paused",
                 "syncing", "closing", "closed", "admin", "log_prefix", "mode", "drain", "rfq_replacement",
                 "query_start", "statements", "cancel_deferred", "replication")

    def __init__(self, app: ClientHost):
        self.app = app
        self.id = next(_ids)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.state = ClientState.LOGIN
        self.pool: Pool | None = None
        self.server: ServerConnection | None = None
        self.scanner: MessageScanner | None = None
        self.params: SessionParams | None = None
        self.login: ClientLogin | None = None     # the login machine, from connection_made until logged in
        self.login_waiter: LoginWaiter | None = None   # what the login coroutine awaits bytes with
        self.login_task: asyncio.Task | None = None
        # An idle client holds no containers: a list is () and the scanner None until first needed.
        self.pending: list[bytes] | tuple[()] = ()   # bytes received while no server was linked
        self.pending_size = 0
        self.peer = "?"
        self.user = ""
        self.database = ""
        self.cancel_key: tuple[int, int] | None = None
        self.session: ClientSession | None = None   # what the session carries, from its first link on
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
        self.query_start = now
        self.statements = ClientStatements()     # this client's names of protocol-level prepared statements
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
        contexts = self.app.tls     # one set for the whole login, even if a RELOAD swaps them meanwhile
        self.login = ClientLogin(direct_tls=contexts.client is not None and self.peer != "unix")
        self.login_waiter = LoginWaiter()
        self.app.client_registry.add(self)
        self.login_task = asyncio.get_running_loop().create_task(self._run_login(contexts))

    def data_received(self, data: bytes) -> None:
        if self.login is not None:
            self.login.receive_data(data)
            self._wake_login()
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
            if server is None and not self.pending and (self.scanner is None or self.scanner.at_boundary):
                # `data` starts a message (none is half received): whole messages can be judged here.
                if data == m.TERMINATE:
                    self.disconnect("client close request")
                    return
                if not data.replace(m.FLUSH, b""):
                    # Flush asks for output pending on the server; with none linked nothing is pending
                    # (a server goes back only once everything is answered). Taking a server for it
                    # would hold one no reply ever releases (psycopg flushes after its pipeline's
                    # ReadyForQuery at times): a pool of N then deadlocks N such clients.
                    return
                # Answered here only while the client reads what pgpool writes; otherwise it queues for a
                # server like any request, and PENDING_LIMIT bounds what pgpool holds for it.
                if data[:1] == b"P" and _is_parse_sync(data) and not self.write_paused \
                        and self.mode != PoolMode.SESSION \
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
            link = server.link
            made_up = link.take_client_output()
            if made_up:
                self.transport.write(made_up)
            link.update_watch()
        if self.closing:
            self.disconnect("client close request")

    def connection_lost(self, exc: Exception | None) -> None:
        if self.login is not None:
            self.login.receive_eof()
            self._wake_login()
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

    async def _run_login(self, contexts: tls.TlsContexts) -> None:
        settings = self.app.settings
        try:
            async with asyncio.timeout(settings.client_login_timeout or None):
                await self._login(contexts)
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

    async def _login(self, contexts: tls.TlsContexts) -> None:
        unix = self.peer == "unix"
        login = self.login
        assert login is not None
        while True:
            event = await self._next_login_event()
            if isinstance(event, DirectTls):
                await self._start_direct_tls(contexts.client, login.start_direct_tls())  # type: ignore[arg-type]
            elif isinstance(event, SslRequest):
                accept = not event.gssenc and not unix and tls.answer_ssl_request(contexts) == b"S"
                login.answer_ssl(accept)
                self._write_login_output()
                if accept:
                    await self._start_tls(contexts.client)  # type: ignore[arg-type]
            elif isinstance(event, CancelRequest):
                self.app.cancel.forward(event.pid, event.key)
                self.disconnect("cancel request", quiet=True)
                return
            else:
                break
        assert isinstance(event, Startup)
        startup = event.params
        # Interned: every client of a pool holds the same two strings, not its own copies.
        self.user = sys.intern(event.user)
        self.database = sys.intern(event.database)
        self.log_prefix = f"C-{self.id} {self.database}/{self.user}@{self.peer}"
        self.app.client_registry.check_client_limit()
        if not unix and not self.encrypted():
            tls.check_clear_text_client(contexts, self.user, self.database, self.peer)
        self.replication = replication_kind(startup.get("replication"))

        client_auth = self.app.client_auth
        directory = self.app.pool_directory
        is_admin = self.database in ADMIN_DATABASES and directory.find_database(self.database) is None
        creds = await client_auth.credentials(self.user, self.database, admin=is_admin)
        scram_keys = await self._authenticate(creds)
        if is_admin:
            self.admin = self.app.admin_gate.open(self, creds)
            login.authenticated()
            login.finish(ADMIN_WELCOME)
            self._write_login_output()
            self._end_login(admin=True)
            return
        pool = directory.get_pool(self.database, self.user, creds, self.replication)
        self.pool = pool
        self.mode = pool.conf.pool_mode
        if scram_keys is not None and pool.server_password is None:
            pool.scram_keys = scram_keys
        login.authenticated()
        self._write_login_output()
        if self.replication:
            session = await directory.open_replication_server(self, pool, startup)
        else:
            session = await pool.client_session(self._session_startup_params(startup))
        session.remember_startup()
        self.params = session
        self.cancel_key = self.app.cancel.register(self, self.app.settings.peer_id)
        login.finish(welcome(session.reported_view(), *self.cancel_key))
        self._write_login_output()
        pool.stats.client_logins += 1
        self._end_login(admin=False)

    async def _next_login_event(self) -> Event:
        """The login machine's next event (bytes awaited from data_received; its output written first)."""
        return await self.login_waiter.next_event(self.login, self._write_login_bytes, "client")  # type: ignore[union-attr,arg-type]

    def _write_login_output(self) -> None:
        self._write_login_bytes(self.login.data_to_send())  # type: ignore[union-attr]

    def _write_login_bytes(self, out: bytes) -> None:
        if out and not self.transport.is_closing():
            self.transport.write(out)

    def _wake_login(self) -> None:
        if self.login_waiter is not None:
            self.login_waiter.wake()

    async def _start_tls(self, ctx: ssl.SSLContext) -> None:
        """TLS on this connection after answering 'S'; the handshake is bounded by client_login_timeout."""
        try:
            self.transport = await asyncio.get_running_loop().start_tls(
                self.transport, self, ctx, server_side=True,
                ssl_handshake_timeout=self.app.settings.client_login_timeout or None)
        except (ssl.SSLError, OSError, EOFError) as error:
            raise TlsHandshakeFailed(tls.describe_tls_error(error)) from None
        self._after_handshake(direct=False)

    async def _start_direct_tls(self, ctx: ssl.SSLContext, first: bytes) -> None:
        """PostgreSQL 17's direct TLS: the ClientHello (`first`) was read already, so the TLS layer
        is put under this protocol by hand (what loop.start_tls does) and fed those bytes first."""
        loop = asyncio.get_running_loop()
        handshake_done = loop.create_future()
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
        rest = self.login.take_rest() if self.login is not None else b""
        self.login = None
        self.login_waiter = None
        if not admin:
            # Shared prepared statements are keyed by search_path too (a Parse may be answered before any link).
            self.statements.path_key = search_path_key(self.params)  # type: ignore[arg-type]
            self.pool.set_client_state(self, ClientState.IDLE)  # type: ignore[union-attr]
            self.app.client_registry.on_logged_in(self)
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
            method = self.app.client_auth.method_for(self, creds)
        except ValueError as error:
            raise ProtocolError(FEATURE_NOT_SUPPORTED, str(error)) from None
        failed = ProtocolError(INVALID_PASSWORD, f'password authentication failed for user "{self.user}"')
        login = self.login
        assert login is not None
        if method == "trust":
            if not creds.known and self.app.settings.auth_type == "trust" and self.app.client_auth.users:
                raise ProtocolError(INVALID_AUTHORIZATION_SPECIFICATION,
                                    f'"trust" authentication failed for user "{self.user}"')
            return None
        if method == "plain":
            login.ask_password()
            if not auth.check_plain(creds, await self._read_password()):
                raise failed
            return None
        if method == "md5":
            salt = os.urandom(4)
            login.ask_password(md5_salt=salt)
            if not auth.check_md5(creds, salt, await self._read_password()):
                raise failed
            return None
        verifier = auth.scram_verifier_for(creds)
        login.ask_scram(ScramServer(verifier), known=creds.known)
        done = await self._next_login_event()
        assert isinstance(done, ScramDone)
        if done.client_key is not None and creds.kind is auth.SecretKind.SCRAM:
            return done.client_key, verifier.server_key
        return None

    async def _read_password(self) -> str:
        event = await self._next_login_event()
        assert isinstance(event, Password)
        return event.password

    # ---- data plane: client -> server ----------------------------------------------------------

    def _on_message(self, msg_type: int, buf: bytes | None, start: int, end: int) -> bytes | None:
        if msg_type == F_TERMINATE:
            self.closing = True
            return b""
        link: Link = self.server.link  # type: ignore[union-attr]   # the scanner runs only while a server is linked
        if _STARTS_CLOCK[msg_type] and link.idle:
            self.query_start = time.monotonic()
        if _SESSION_TYPES[msg_type]:
            # What it does to the session; a refusal is sent instead, and the link sees what is sent.
            out = self.session.on_request(link, msg_type, buf, start, end)  # type: ignore[union-attr]
            if out:
                tracked = link.on_client_message(msg_type, out, 5, len(out))
                return out if tracked is None else tracked
        return link.on_client_message(msg_type, buf, start, end)

    def _on_audited(self, error: ProtocolError | None) -> None:
        """The server said what session state it holds: adopt settings, pin or unpin, then release."""
        session = self.session
        server = self.server
        if server is None:
            session.auditing = False  # type: ignore[union-attr]
            return
        failure = None if error is None else f"{error.message} ({error.sqlstate})"
        session.adopt_audit(server.injected_rows, failure, server)  # type: ignore[union-attr]
        if session.resync_due and session.pinned:  # type: ignore[union-attr]
            self._resync()
            return
        self._release_if_done(server)

    def _release_if_done(self, server: "ServerConnection") -> None:
        session: ClientSession = self.session  # type: ignore[assignment]
        if not session.pinned and server.link.releasable and self.mode != PoolMode.SESSION:
            if session.resync_due:   # the next server gets the startup values at attach; tell the client now
                session.resync_due = False
                self.transport.write(session.reported_after_reset(server))
            server.request_release()

    # ---- data plane: what the server said ------------------------------------------------------

    def on_ready_for_query(self, status: int) -> bool:
        """A ReadyForQuery reached this client; True when the server may go back to the pool."""
        session: ClientSession = self.session  # type: ignore[assignment]
        server = self.server
        session.on_ready(status, server)
        pool = self.pool
        stats = pool.stats  # type: ignore[union-attr]
        now = time.monotonic()
        stats.query_count += 1
        stats.query_time += now - self.query_start
        self.query_start = now
        if server is not None and not server.link.settled:
            return False
        if status == TX_IDLE:
            elapsed = now - self.xact_start
            stats.xact_count += 1
            stats.xact_time += elapsed
            stats.xact_hist.observe(elapsed)
            self.xact_start = now
            session.end_transaction()
            if self.drain:
                self.app.loop.call_soon(self._drain_now)
            if server is None:
                return False
            if self.mode == PoolMode.SESSION:
                if session.resync_due:
                    self._resync()
                return False
            if session.start_audit(self.app.settings.session_audit == "always"):
                server.inject(audit_sql(pool.server_user), self._on_audited)
                return False
            if session.pinned:
                if session.resync_due:
                    self._resync()
                return False
            if session.resync_due:
                # Released here: the next server is given the startup values at attach.
                session.resync_due = False
                self.rfq_replacement = session.reported_after_reset(server) + m.READY_FOR_QUERY_IDLE
            return True
        if self.mode == PoolMode.STATEMENT:
            # The client sees its BEGIN fail; the server is rolled back on release.
            pool.stats.count_error("statement_mode_transaction")
            self.rfq_replacement = ProtocolError(
                FEATURE_NOT_SUPPORTED, f"transaction blocks not allowed in statement pooling mode (pool {pool.name})",
                severity="ERROR").to_bytes() + m.READY_FOR_QUERY_IDLE
            return True
        if session.resync_due and status == TX_IN_BLOCK and server is not None:
            self._resync()   # BEGIN; RESET ALL; ... : the rest of the transaction sees the startup values
        return False

    def _resync(self) -> None:
        """Give the linked server the client's values again (after a RESET), before its next request."""
        server = self.server
        if server is None:
            self.session.resync_due = False  # type: ignore[union-attr]
            return
        sql = self.session.resync_sql(server)  # type: ignore[union-attr]
        if sql:
            server.inject(sql, self._on_resynced)

    def _on_resynced(self, error: ProtocolError | None) -> None:
        server = self._synced_server(error, " after RESET")
        if server is None:
            return
        announce = self.session.reported_after_reset(server)  # type: ignore[union-attr]
        if announce:
            self.transport.write(announce)
        self._release_if_done(server)

    def _drain_now(self) -> None:
        if not self.busy:
            self.disconnect("shutting down", ProtocolError(ADMIN_SHUTDOWN, "pgpool is shutting down (client drained "
                                                                           "at transaction boundary)"))

    @property
    def prepared_count(self) -> int:
        return self.statements.count()

    @property
    def tx_changes(self) -> list[SessionChange]:
        """SET / RESET inside the current transaction, kept if it commits (their tags are watched)."""
        return self.session.tx_changes if self.session is not None else []

    @property
    def pinned(self) -> bool:
        return self.session is not None and self.session.pinned

    def on_command_complete(self, tag: bytes) -> None:
        self.session.on_command_complete(tag)  # type: ignore[union-attr]

    def on_server_error(self, fields: dict[str, str]) -> None:
        self.session.on_error()  # type: ignore[union-attr]
        self.pool.stats.count_error("server_error")  # type: ignore[union-attr]

    @property
    def busy(self) -> bool:
        """A request of this client's is outstanding on its server (pgpool's own queries do not count)."""
        server = self.server
        return server is not None and server.link.client_busy

    # ---- linking -------------------------------------------------------------------------------

    def attach_server(self, server: "ServerConnection") -> None:
        if self.session is None:   # made at the first link, not at login: an idle client needs none
            pool = self.pool
            self.session = ClientSession(self.app, self.params, self.statements, pool.stats, pool.name,  # type: ignore[arg-type,union-attr]
                                         pool.reported_names, self.mode == PoolMode.SESSION,  # type: ignore[union-attr]
                                         self.log_prefix)
        self.server = server
        server.client = self
        if server.prepared is not None:
            server.prepared.link(self.statements)
        else:
            server.link.link()
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
            self.cancel_query()

    def detach_server(self) -> None:
        server = self.server
        if server is None:
            return
        self.server = None
        server.client = None
        server.set_reading(True)
        self.syncing = False
        self.cancel_deferred = False
        if not server.link.unlink():
            server.close("released with replies outstanding")
        self.session.forget_transaction()  # type: ignore[union-attr]
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

    def cancel_query(self) -> None:
        """A CancelRequest with this client's key: stop its query, wherever that query is now."""
        if self.state == ClientState.WAITING:
            if not self.cancel_while_waiting():   # answered here if its one query never reached a server
                self.cancel_deferred = True       # else sent once its queries do
            return
        server = self.server
        if server is not None and self.syncing:
            # pgpool is still giving the server this client's parameters; a cancel now would hit
            # that, or nothing. It goes to the client's query right after it is sent.
            self.cancel_deferred = True
            return
        # Only a query in flight is cancelled: an idle link has nothing of this client's to stop.
        if server is not None and self.busy and server.backend_pid:
            # Until Postgres has handled it, the server is not lent to anyone else (see release_server).
            server.cancels_in_flight += 1
            self.app.cancel.send(server.address, server.pool.db.port, server.backend_pid, server.backend_key,
                                 done=server.on_cancel_done)

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
            # Session state it may have made (pinned, or not yet checked) must not reach the next client.
            pool.release_abandoned(server, reason, mid_query=self.syncing or not server.link.settled,  # type: ignore[union-attr]
                                   session_left=self.mode == PoolMode.SESSION or (self.session is not None and (
                                       self.session.pinned or self.session.audit_due)))
        if pool is not None:
            pool.set_client_state(self, ClientState.CLOSED)
        if self.admin is not None:
            self.admin.close()
        app = self.app
        if pool is not None and pool.replication:
            app.pool_directory.free_replication_pool(pool)
        app.cancel.unregister(self.cancel_key)
        app.client_registry.remove(self)
