"""Login for both roles as sans-IO state machines: bytes in, bytes to write and events out.

Owns: the startup phase and authentication exchanges of the wire protocol.
- `ClientLogin`, pgpool as the server a client logs into: direct TLS detection, SSLRequest /
  GSSENCRequest / CancelRequest / StartupMessage with their length checks, protocol-version
  negotiation, then the password (cleartext, md5) or SCRAM-SHA-256 exchange, the welcome.
- `ServerLogin`, pgpool as the client of PostgreSQL: SSLRequest and its answer byte, the
  StartupMessage, authentication requests (ok, cleartext, md5, SCRAM-SHA-256), ErrorResponse,
  ParameterStatus, BackendKeyData until ReadyForQuery; then an optional connect_query.

How it is driven (h11's shape): the adapter passes what it read to `receive_data` (and
`receive_eof` when the peer closed), calls `next_event()` until it returns `NEED_DATA`, writes what `data_to_send()` returns (also when
an event raised: a NegotiateProtocolVersion may precede an error), and answers the events
that need IO or app state (TLS, credential lookups, the method choice) with a method call.
A `ProtocolError` raised by the machine is the error to report; the machine is then dead.

Must not: import asyncio, sockets or ssl, look up users, choose methods or hold secrets it
was not handed. Bytes after the login belong to the data plane: `take_rest()`.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Mapping

from . import messages as m
from .constants import (
    AUTH_CLEARTEXT, AUTH_MD5, AUTH_OK, AUTH_SASL, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL, B_AUTHENTICATION,
    B_BACKEND_KEY_DATA, B_ERROR_RESPONSE, B_PARAMETER_STATUS, B_READY_FOR_QUERY, F_PASSWORD, MAX_STARTUP_PACKET,
    TX_IDLE,
)
from .errors import (
    CONNECTION_FAILURE, FEATURE_NOT_SUPPORTED, INVALID_AUTHORIZATION_SPECIFICATION, INVALID_PASSWORD,
    PROTOCOL_VIOLATION, ProtocolError, parse_error_fields,
)
from .scram import ScramClient, ScramError, ScramServer

_int32 = struct.Struct("!I")

TLS_RECORD_HANDSHAKE = 0x16      # first byte of a TLS ClientHello: a direct TLS client (PostgreSQL 17)


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()   # next_event(): nothing to report until more bytes arrive


# ---- events ------------------------------------------------------------------------------------

class Event:
    """Base of what the machines report; equal when of one type with equal fields (tests compare)."""
    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({fields})"


class DirectTls(Event):
    """The client opened with a TLS ClientHello: `start_direct_tls()` hands over its bytes."""
    __slots__ = ()


class SslRequest(Event):
    """SSLRequest (or GSSENCRequest): answer with `answer_ssl(accept)`."""
    __slots__ = ("gssenc",)

    def __init__(self, gssenc: bool):
        self.gssenc = gssenc


class CancelRequest(Event):
    """A CancelRequest: the login ends here (the connection carries nothing else)."""
    __slots__ = ("pid", "key")

    def __init__(self, pid: int, key: int):
        self.pid = pid
        self.key = key


class Startup(Event):
    """A StartupMessage: authenticate with `trust()` / `ask_password()` / `ask_scram()`."""
    __slots__ = ("params", "user", "database")

    def __init__(self, params: dict[str, str], user: str, database: str):
        self.params = params
        self.user = user
        self.database = database


class Password(Event):
    """The client's PasswordMessage (cleartext or md5 response): the adapter checks it."""
    __slots__ = ("password",)

    def __init__(self, password: str):
        self.password = password


class ScramDone(Event):
    """The client proved its SCRAM password; `client_key` serves SCRAM pass-through to servers."""
    __slots__ = ("client_key",)

    def __init__(self, client_key: bytes | None):
        self.client_key = client_key


class SslAnswer(Event):
    """The server's answer to SSLRequest (b'S', b'N' or anything else): the adapter decides."""
    __slots__ = ("answer",)

    def __init__(self, answer: bytes):
        self.answer = answer


class PasswordRequest(Event):
    """The server asks for a password ("cleartext" or "md5", with its salt): `send_password()`."""
    __slots__ = ("method", "salt")

    def __init__(self, method: str, salt: bytes = b""):
        self.method = method
        self.salt = salt


class ScramRequest(Event):
    """The server asks for SCRAM-SHA-256: `start_scram(ScramClient)`."""
    __slots__ = ()


class Ready(Event):
    """ReadyForQuery: the server login (or the connect_query) is over."""
    __slots__ = ("status",)

    def __init__(self, status: int):
        self.status = status


# ---- shared: buffer and message reads ----------------------------------------------------------

class _Reader:
    __slots__ = ("_buffer", "_out", "_max_message", "_peer", "eof")

    def __init__(self, max_message: int, peer: str):
        self.eof = False                 # the peer closed: NEED_DATA now means it never comes
        self._buffer = bytearray()
        self._out: list[bytes] = []
        self._max_message = max_message
        self._peer = peer

    def receive_data(self, data: bytes) -> None:
        self._buffer += data

    def receive_eof(self) -> None:
        self.eof = True

    def data_to_send(self) -> bytes:
        """Bytes to write to the peer, in order; empty when there are none."""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def take_rest(self) -> bytes:
        """Bytes received past what the login read: the start of the data plane."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest

    def _send(self, data: bytes) -> None:
        self._out.append(data)

    def _read_message(self) -> tuple[int, bytes] | None:
        """(type, body) of the next whole typed message, or None until it is all here."""
        buffer = self._buffer
        if len(buffer) < 5:
            return None
        length = _int32.unpack_from(buffer, 1)[0]
        if length < 4 or length > self._max_message:
            raise ProtocolError(PROTOCOL_VIOLATION, f"invalid message length {length} from {self._peer} during login")
        if len(buffer) < 1 + length:
            return None
        msg_type = buffer[0]
        body = bytes(buffer[5:1 + length])
        del buffer[:1 + length]
        return msg_type, body


# ---- pgpool as the server a client logs into ---------------------------------------------------

class ClientLoginState(enum.IntEnum):
    FIRST_BYTE = 0      # a direct TLS ClientHello may come first
    STARTUP = 1         # reading SSLRequest / GSSENCRequest / CancelRequest / StartupMessage
    SSL_ANSWER = 2      # SslRequest reported, answer_ssl() owed
    STARTED = 3         # Startup reported, the adapter chooses how to authenticate
    PASSWORD = 4        # AuthenticationCleartext / MD5 sent, PasswordMessage owed
    PASSWORD_CHECK = 5  # Password reported, the adapter checks it
    SASL_INITIAL = 6    # AuthenticationSASL sent, SASLInitialResponse owed
    SASL_RESPONSE = 7   # AuthenticationSASLContinue sent, SASLResponse owed
    AUTHENTICATED = 8   # AuthenticationOk sent, the welcome owed
    DONE = 9            # logged in or cancel request: take_rest() for the data plane


class ClientLogin(_Reader):
    """The client's side of login, pgpool answering. `direct_tls`: a ClientHello may open it."""
    __slots__ = ("state", "encrypted", "user", "_scram", "_known")

    def __init__(self, direct_tls: bool = False):
        super().__init__(MAX_STARTUP_PACKET, "client")
        self.state = ClientLoginState.FIRST_BYTE if direct_tls else ClientLoginState.STARTUP
        self.encrypted = False           # TLS was started (answer 'S' or direct): no second SSLRequest
        self.user = ""
        self._scram: ScramServer | None = None
        self._known = False

    def next_event(self) -> Event | _NeedData:
        state = self.state
        if state == ClientLoginState.FIRST_BYTE:
            if not self._buffer:
                return NEED_DATA
            if self._buffer[0] == TLS_RECORD_HANDSHAKE:
                return DirectTls()
            self.state = ClientLoginState.STARTUP
            return self.next_event()
        if state == ClientLoginState.STARTUP:
            return self._read_startup()
        if state == ClientLoginState.PASSWORD:
            body = self._read_password()
            if body is None:
                return NEED_DATA
            self.state = ClientLoginState.PASSWORD_CHECK
            return Password(m.parse_password(body))
        if state == ClientLoginState.SASL_INITIAL:
            return self._read_sasl_initial()
        if state == ClientLoginState.SASL_RESPONSE:
            return self._read_sasl_response()
        # Waiting for the adapter's answer (or done): nothing to read.
        return NEED_DATA

    def _read_startup(self) -> Event | _NeedData:
        buffer = self._buffer
        if len(buffer) < 4:
            return NEED_DATA
        length = _int32.unpack_from(buffer, 0)[0]
        if length < 8 or length > MAX_STARTUP_PACKET:
            raise ProtocolError(PROTOCOL_VIOLATION, f"invalid startup packet length {length}")
        if len(buffer) < length:
            return NEED_DATA
        packet = bytes(buffer[:length])
        del buffer[:length]
        kind, payload = m.parse_startup_packet(packet)
        if kind in (m.StartupKind.SSL, m.StartupKind.GSSENC):
            if buffer:
                # Bytes after SSLRequest before our answer could be spliced into a TLS session later.
                raise ProtocolError(PROTOCOL_VIOLATION, "unexpected data after SSLRequest/GSSENCRequest")
            if self.encrypted:
                raise ProtocolError(PROTOCOL_VIOLATION, "SSLRequest/GSSENCRequest inside a TLS session")
            self.state = ClientLoginState.SSL_ANSWER
            return SslRequest(gssenc=kind == m.StartupKind.GSSENC)
        if kind == m.StartupKind.CANCEL:
            self.state = ClientLoginState.DONE
            pid, key = payload  # type: ignore[misc]
            return CancelRequest(pid, key)
        params: dict[str, str] = payload  # type: ignore[assignment]
        protocol_options = [name for name in params if name.startswith("_pq_.")]
        if m.startup_minor_version(packet) > 0 or protocol_options:
            # A 3.0 server's answer to a newer minor version or to protocol options it does not know.
            self._send(m.negotiate_protocol_version(0, protocol_options))
        user = params.get("user", "")
        if not user:
            raise ProtocolError(INVALID_AUTHORIZATION_SPECIFICATION, "no PostgreSQL user name specified in startup packet")
        self.user = user
        self.state = ClientLoginState.STARTED
        return Startup(params, user, params.get("database") or user)

    def _read_password(self) -> bytes | None:
        message = self._read_message()
        if message is None:
            return None
        msg_type, body = message
        if msg_type != F_PASSWORD:
            raise ProtocolError(PROTOCOL_VIOLATION, f"expected password response, got message type {chr(msg_type)!r}")
        return body

    def _read_sasl_initial(self) -> Event | _NeedData:
        body = self._read_password()
        if body is None:
            return NEED_DATA
        mechanism, data = m.parse_sasl_initial_response(body)
        if mechanism != "SCRAM-SHA-256":
            raise ProtocolError(PROTOCOL_VIOLATION,
                                f"client selected an invalid SASL authentication mechanism {mechanism!r}")
        try:
            server_first = self._scram.handle_client_first(data)  # type: ignore[union-attr]
        except ScramError:
            raise self._failed() from None
        self._send(m.authentication_sasl_continue(server_first))
        self.state = ClientLoginState.SASL_RESPONSE
        return self.next_event()

    def _read_sasl_response(self) -> Event | _NeedData:
        body = self._read_password()
        if body is None:
            return NEED_DATA
        exchange = self._scram
        try:
            final = exchange.handle_client_final(body)  # type: ignore[union-attr]
        except ScramError:
            raise self._failed() from None
        if not self._known:
            # A fake verifier no password matches; refused here all the same, as a wrong password.
            raise self._failed()
        self._send(m.authentication_sasl_final(final))
        self.state = ClientLoginState.PASSWORD_CHECK
        return ScramDone(exchange.client_key)  # type: ignore[union-attr]

    def _failed(self) -> ProtocolError:
        return ProtocolError(INVALID_PASSWORD, f'password authentication failed for user "{self.user}"')

    def _expect(self, *states: ClientLoginState) -> None:
        if self.state not in states:
            raise RuntimeError(f"login step out of order in state {self.state.name}")

    # -- the adapter's answers --

    def start_direct_tls(self) -> bytes:
        """The ClientHello and whatever followed it, for the TLS layer; login goes on inside TLS."""
        self._expect(ClientLoginState.FIRST_BYTE)
        self.state = ClientLoginState.STARTUP
        self.encrypted = True
        return self.take_rest()

    def answer_ssl(self, accept: bool) -> None:
        """'S' (the adapter starts TLS next, before feeding more bytes) or 'N'."""
        self._expect(ClientLoginState.SSL_ANSWER)
        self._send(b"S" if accept else b"N")
        self.encrypted = accept
        self.state = ClientLoginState.STARTUP

    def ask_password(self, md5_salt: bytes | None = None) -> None:
        """AuthenticationCleartextPassword, or AuthenticationMD5Password with this salt."""
        self._expect(ClientLoginState.STARTED)
        self._send(m.AUTHENTICATION_CLEARTEXT if md5_salt is None else m.authentication_md5(md5_salt))
        self.state = ClientLoginState.PASSWORD

    def ask_scram(self, exchange: ScramServer, known: bool) -> None:
        """AuthenticationSASL; `known` False (a fake verifier): the exchange runs, then fails."""
        self._expect(ClientLoginState.STARTED)
        self._scram = exchange
        self._known = known
        self._send(m.authentication_sasl())
        self.state = ClientLoginState.SASL_INITIAL

    def authenticated(self) -> None:
        """AuthenticationOk: trust, or the adapter accepted what the client proved."""
        self._expect(ClientLoginState.STARTED, ClientLoginState.PASSWORD_CHECK)
        self._scram = None
        self._send(m.AUTHENTICATION_OK)
        self.state = ClientLoginState.AUTHENTICATED

    def finish(self, welcome: bytes) -> None:
        """The welcome (ParameterStatus..., BackendKeyData, ReadyForQuery): the client is in."""
        self._expect(ClientLoginState.AUTHENTICATED)
        self._send(welcome)
        self.state = ClientLoginState.DONE


def welcome(reported: Mapping[str, str], pid: int, key: int) -> bytes:
    """What a logged-in client is told: its reported parameters, its cancel key, ReadyForQuery idle."""
    parts = [m.parameter_status(name, value) for name, value in reported.items()]
    parts.append(m.backend_key_data(pid, key))
    parts.append(m.READY_FOR_QUERY_IDLE)
    return b"".join(parts)


# ---- pgpool as a client of PostgreSQL ----------------------------------------------------------

class ServerLoginState(enum.IntEnum):
    NEW = 0             # nothing sent yet: request_ssl() or send_startup()
    SSL_ANSWER = 1      # SSLRequest sent, its one-byte answer owed
    SSL_DECIDED = 2     # SslAnswer reported: the adapter starts TLS (or not), then send_startup()
    AUTH = 3            # StartupMessage sent: authentication, parameters, until ReadyForQuery
    PASSWORD = 4        # PasswordRequest reported, send_password() owed
    SCRAM = 5           # ScramRequest reported, start_scram() owed
    IDLE = 6            # logged in (ReadyForQuery seen): send_query() or the data plane
    QUERY = 7           # connect_query sent, until ReadyForQuery


class ServerLogin(_Reader):
    """pgpool's login into a PostgreSQL server. `pool`, `where` (host:port or socket path) and
    `server` (host:port) only word the errors; `max_message` is max_packet_size."""
    __slots__ = ("state", "reported", "backend_pid", "backend_key", "tx_status", "_scram", "_query_error",
                 "_pool", "_where", "_server")

    def __init__(self, max_message: int, pool: str, where: str, server: str):
        super().__init__(max_message, "server")
        self.state = ServerLoginState.NEW
        self.reported: dict[str, str] = {}     # ParameterStatus seen (login and connect_query)
        self.backend_pid = 0
        self.backend_key = 0
        self.tx_status = TX_IDLE
        self._scram: ScramClient | None = None
        self._query_error: ProtocolError | None = None
        self._pool = pool
        self._where = where
        self._server = server

    # -- the adapter's steps --

    def request_ssl(self) -> None:
        self._expect(ServerLoginState.NEW)
        self._send(m.SSL_REQUEST)
        self.state = ServerLoginState.SSL_ANSWER

    def send_startup(self, params: Mapping[str, str]) -> None:
        self._expect(ServerLoginState.NEW, ServerLoginState.SSL_DECIDED)
        self._send(m.startup_message(dict(params)))
        self.state = ServerLoginState.AUTH

    def send_password(self, password: str) -> None:
        """PasswordMessage: the cleartext password or the md5 response."""
        self._expect(ServerLoginState.PASSWORD)
        self._send(m.password_message(password))
        self.state = ServerLoginState.AUTH

    def start_scram(self, exchange: ScramClient) -> None:
        self._expect(ServerLoginState.SCRAM)
        self._scram = exchange
        self._send(m.sasl_initial_response("SCRAM-SHA-256", exchange.client_first()))
        self.state = ServerLoginState.AUTH

    def send_query(self, sql: str) -> None:
        """A simple query after login (connect_query): its error fails the login."""
        self._expect(ServerLoginState.IDLE)
        self._send(m.query(sql))
        self.state = ServerLoginState.QUERY

    def _expect(self, *states: ServerLoginState) -> None:
        if self.state not in states:
            raise RuntimeError(f"server login step out of order in state {self.state.name}")

    # -- reading --

    def next_event(self) -> Event | _NeedData:
        state = self.state
        if state == ServerLoginState.SSL_ANSWER:
            if not self._buffer:
                return NEED_DATA
            answer = bytes(self._buffer[:1])
            del self._buffer[:1]
            if answer == b"S" and self._buffer:
                # Bytes sent before the handshake could be spliced into the session (CVE-2021-23222).
                raise ProtocolError(PROTOCOL_VIOLATION, f"server sent unencrypted data after SSL response: "
                                                        f"server {self._where} for pool {self._pool}")
            self.state = ServerLoginState.SSL_DECIDED
            return SslAnswer(answer)
        if state == ServerLoginState.AUTH:
            return self._read_login()
        if state == ServerLoginState.QUERY:
            return self._read_query()
        return NEED_DATA

    def _read_login(self) -> Event | _NeedData:
        while True:
            message = self._read_message()
            if message is None:
                return NEED_DATA
            msg_type, body = message
            if msg_type == B_AUTHENTICATION:
                event = self._on_authentication(*m.parse_authentication(body))
                if event is not None:
                    return event
            elif msg_type == B_ERROR_RESPONSE:
                fields = parse_error_fields(body)
                raise ProtocolError(fields.get("C", CONNECTION_FAILURE), fields.get("M", "server login failed"),
                                    detail=f"pgpool pool {self._pool} could not log into server {self._server}")
            elif msg_type == B_PARAMETER_STATUS:
                name, value = m.parse_parameter_status(body)
                self.reported[name] = value
            elif msg_type == B_BACKEND_KEY_DATA:
                self.backend_pid, self.backend_key = m.parse_backend_key_data(body)
            elif msg_type == B_READY_FOR_QUERY:
                self.tx_status = body[0] if body else TX_IDLE
                self.state = ServerLoginState.IDLE
                return Ready(self.tx_status)
            # NoticeResponse and NegotiateProtocolVersion need no answer.

    def _on_authentication(self, code: int, data: bytes) -> Event | None:
        if code == AUTH_OK:
            return None
        if code == AUTH_CLEARTEXT:
            self.state = ServerLoginState.PASSWORD
            return PasswordRequest("cleartext")
        if code == AUTH_MD5:
            self.state = ServerLoginState.PASSWORD
            return PasswordRequest("md5", data)
        if code == AUTH_SASL:
            if "SCRAM-SHA-256" not in m.parse_sasl_mechanisms(data):
                raise ProtocolError(FEATURE_NOT_SUPPORTED, f"server offers no supported SASL mechanism "
                                                           f"for pool {self._pool}")
            self.state = ServerLoginState.SCRAM
            return ScramRequest()
        scram = self._scram
        if code == AUTH_SASL_CONTINUE and scram is not None:
            self._send(m.sasl_response(self._scram_step(scram.handle_server_first, data)))
            return None
        if code == AUTH_SASL_FINAL and scram is not None:
            self._scram_step(scram.handle_server_final, data)
            return None
        raise ProtocolError(FEATURE_NOT_SUPPORTED,
                            f"server asked for unsupported authentication method {code} for pool {self._pool}")

    def _scram_step(self, step: Callable[[bytes], bytes | None], data: bytes) -> bytes:
        try:
            return step(data) or b""
        except ScramError as error:
            raise ProtocolError(INVALID_PASSWORD,
                                f"SCRAM login to server failed for pool {self._pool}: {error}") from None

    def _read_query(self) -> Event | _NeedData:
        while True:
            message = self._read_message()
            if message is None:
                return NEED_DATA
            msg_type, body = message
            if msg_type == B_ERROR_RESPONSE and self._query_error is None:
                fields = parse_error_fields(body)
                self._query_error = ProtocolError(fields.get("C", PROTOCOL_VIOLATION), f"connect_query failed for "
                                                  f"pool {self._pool}: {fields.get('M', '')}")
            elif msg_type == B_PARAMETER_STATUS:
                name, value = m.parse_parameter_status(body)
                self.reported[name] = value
            elif msg_type == B_READY_FOR_QUERY:
                if self._query_error is not None:
                    raise self._query_error
                self.state = ServerLoginState.IDLE
                return Ready(body[0] if body else TX_IDLE)
