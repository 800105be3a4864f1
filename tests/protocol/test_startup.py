"""Login as sans-IO machines (pgpool/protocol/startup.py), both roles, without sockets.

Each conversation is scripted against a real peer: for the client role a libpq-like client
(its SCRAM side is protocol/scram.py's ScramClient), for the server role a Postgres-like server
(ScramServer), and the adapter's part (answers to events) is a small table here. The
transcript (events, bytes written, error, leftover bytes) is asserted on, then the peer's turns
are cut at every offset and into random chunks: the transcript must not change.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Generator, Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgpool import auth
from pgpool.protocol import messages as m
from pgpool.protocol import scram
from pgpool.protocol.constants import CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, SSL_REQUEST_CODE
from pgpool.protocol.errors import ProtocolError, error_response
from pgpool.protocol.startup import (
    NEED_DATA, CancelRequest, ClientLogin, DirectTls, Password, PasswordRequest, Ready, ScramDone, ScramRequest,
    ServerLogin, SslAnswer, SslRequest, Startup, welcome,
)

_int32 = struct.Struct("!I")

PASSWORD = "pencil"
VERIFIER = scram.make_verifier(PASSWORD, salt=b"startup-test-salt", iterations=16)
CLIENT_NONCE = "c" * 24
SERVER_NONCE = "s" * 24
SALT = b"\x01\x02\x03\x04"
WELCOME_PARAMS = {"server_version": "15.0", "client_encoding": "UTF8"}
WELCOME = welcome(WELCOME_PARAMS, 4242, 77)
QUERY = m.query("SELECT 1")

Turns = Generator[bytes, bytes, None]
Peer = Callable[[bytes], Turns]


def frame(msg_type: bytes, body: bytes = b"") -> bytes:
    return msg_type + _int32.pack(len(body) + 4) + body


def messages(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, body) of each whole typed message in `data`, which must hold nothing else."""
    found, pos = [], 0
    while pos < len(data):
        length = _int32.unpack_from(data, pos + 1)[0]
        found.append((data[pos:pos + 1], data[pos + 5:pos + 1 + length]))
        pos += 1 + length
    assert pos == len(data), data
    return found


def script(*turns: bytes) -> Peer:
    """A peer that sends these turns whatever pgpool writes."""
    def peer(_first: bytes) -> Turns:
        for turn in turns:
            yield turn
    return peer


def packet(code: int, body: bytes = b"") -> bytes:
    return _int32.pack(8 + len(body)) + _int32.pack(code) + body


SSL_REQUEST = packet(SSL_REQUEST_CODE)
GSSENC_REQUEST = packet(GSSENC_REQUEST_CODE)


# ---- the driver ------------------------------------------------------------------------------

class Transcript:
    """What a login did, in order: ("out", bytes) merged between events, ("event", e),
    ("tls", bytes) handed to a TLS layer, ("error", sqlstate, message), ("rest", bytes)."""

    def __init__(self) -> None:
        self.items: list[tuple] = []
        self.tls_raw: bytearray | None = None    # after DirectTls, the raw bytes belong to the TLS layer

    def out(self, data: bytes) -> None:
        if not data:
            return
        if self.items and self.items[-1][0] == "out":
            self.items[-1] = ("out", self.items[-1][1] + data)
        else:
            self.items.append(("out", data))

    def add(self, *item: object) -> None:
        self.items.append(item)

    def of(self, kind: str) -> list:
        return [item[1] if len(item) == 2 else item[1:] for item in self.items if item[0] == kind]

    @property
    def written(self) -> bytes:
        return b"".join(self.of("out"))

    @property
    def events(self) -> list:
        return self.of("event")

    @property
    def error(self) -> tuple[str, str] | None:
        errors = self.of("error")
        return errors[0] if errors else None


Respond = Callable[[object, object, Transcript], None]   # (machine, event, transcript)
Chunker = Callable[[int, bytes], Iterable[bytes]]          # (turn number, turn) -> chunks


def whole(_turn: int, data: bytes) -> list[bytes]:
    return [data]


def converse(machine: ClientLogin | ServerLogin, peer: Peer, respond: Respond,
             chunker: Chunker = whole) -> Transcript:
    """Run a login: the adapter's first step, then each peer turn fed in chunks, events answered."""
    t = Transcript()
    try:
        respond(machine, None, t)
    except ProtocolError as error:
        t.add("error", error.sqlstate, error.message)
        return t
    first = machine.data_to_send()
    t.out(first)
    turns = peer(first)
    try:
        turn = next(turns)
    except StopIteration:
        turn = None
    number = 0
    while turn is not None:
        written = bytearray()
        for chunk in chunker(number, turn):
            if t.tls_raw is not None:
                t.tls_raw += chunk
                continue
            machine.receive_data(chunk)
            while True:
                try:
                    event = machine.next_event()
                    data = machine.data_to_send()
                    t.out(data)
                    written += data
                    if event is NEED_DATA:
                        break
                    t.add("event", event)
                    respond(machine, event, t)
                    data = machine.data_to_send()
                    t.out(data)
                    written += data
                except ProtocolError as error:
                    t.out(machine.data_to_send())   # what the adapter writes before the ErrorResponse
                    t.add("error", error.sqlstate, error.message)
                    return t
        if t.tls_raw is not None:
            t.add("tls", bytes(t.tls_raw))
            t.tls_raw = None
        number += 1
        try:
            turn = turns.send(bytes(written))
        except StopIteration:
            turn = None
    if isinstance(machine, ClientLogin):
        t.add("rest", machine.take_rest())
    return t


def assert_split_invariant(machine_factory: Callable[[], object], peer: Peer, respond: Respond,
                           expected: Transcript, turns: int) -> None:
    """Every turn cut at every offset gives the transcript of the whole turns."""
    lengths = []

    def record(number: int, data: bytes) -> list[bytes]:
        lengths.append(len(data))
        return [data]
    converse(machine_factory(), peer, respond, record)   # learn the turns' lengths
    assert len(lengths) >= turns
    for number, length in enumerate(lengths):
        for offset in range(1, length):
            def cut(n: int, data: bytes, number: int = number, offset: int = offset) -> list[bytes]:
                return [data[:offset], data[offset:]] if n == number else [data]
            got = converse(machine_factory(), peer, respond, cut)
            assert got.items == expected.items, (number, offset)

    def bytewise(_n: int, data: bytes) -> list[bytes]:
        return [data[i:i + 1] for i in range(len(data))]
    assert converse(machine_factory(), peer, respond, bytewise).items == expected.items


def random_chunker(sizes: list[int]) -> Chunker:
    """Cut every turn into chunks of the given sizes, cycling through them."""
    def cut(_n: int, data: bytes) -> list[bytes]:
        chunks, pos, i = [], 0, 0
        while pos < len(data):
            size = sizes[i % len(sizes)]
            chunks.append(data[pos:pos + size])
            pos += size
            i += 1
        return chunks
    return cut


# ---- the client role: a libpq-like client against ClientLogin -----------------------------------

def libpq(startup: dict[str, str] | None = None, *, password: str = PASSWORD, ssl: bool = False,
          direct_tls: bytes = b"", after_login: bytes = b"", first: bytes = b"") -> Peer:
    """A client that logs in as libpq does: its answers are computed from what pgpool wrote."""
    params = {"user": "app", "database": "appdb"} if startup is None else startup

    def turns(_first: bytes) -> Turns:
        if direct_tls:
            out = yield direct_tls
            assert out == b""
        if ssl:
            out = yield SSL_REQUEST
            assert out in (b"S", b"N")
        out = yield first + m.startup_message(params)
        exchange: scram.ScramClient | None = None
        while True:
            replies = messages(out)
            if not replies:
                return
            kind, body = replies[-1]
            if kind != b"R":
                return      # the welcome, or an error: the client is done talking
            code, data = m.parse_authentication(body)
            if code == 0:
                return
            if code == 3:
                out = yield m.password_message(password) + after_login
            elif code == 5:
                out = yield m.password_message(auth.md5_response(password, params["user"], data)) + after_login
            elif code == 10:
                exchange = scram.ScramClient(password, nonce=CLIENT_NONCE)
                out = yield m.sasl_initial_response("SCRAM-SHA-256", exchange.client_first())
            elif code == 11:
                assert exchange is not None
                out = yield m.sasl_response(exchange.handle_server_first(data)) + after_login
            elif code == 12:
                assert exchange is not None
                exchange.handle_server_final(data)
                return
    return turns


def pgpool_adapter(method: str = "trust", *, accept_ssl: bool = False, secret: str = PASSWORD,
                   known: bool = True) -> Respond:
    """What client.py does with each event: answer SSL, choose the method, check, welcome."""
    creds = auth.lookup_credentials({"app": secret}, "app")

    def respond(login: ClientLogin, event: object, t: Transcript) -> None:
        if event is None:
            return
        if isinstance(event, DirectTls):
            t.tls_raw = bytearray(login.start_direct_tls())
        elif isinstance(event, SslRequest):
            login.answer_ssl(accept_ssl and not event.gssenc)
        elif isinstance(event, Startup):
            if method == "trust":
                login.authenticated()
                login.finish(WELCOME)
            elif method == "plain":
                login.ask_password()
            elif method == "md5":
                login.ask_password(md5_salt=SALT)
            else:
                login.ask_scram(scram.ScramServer(VERIFIER, nonce=SERVER_NONCE), known)
        elif isinstance(event, Password):
            ok = auth.check_plain(creds, event.password) if method == "plain" else \
                auth.check_md5(creds, SALT, event.password)
            if not ok:
                raise ProtocolError("28P01", 'password authentication failed for user "app"')
            login.authenticated()
            login.finish(WELCOME)
        elif isinstance(event, ScramDone):
            login.authenticated()
            login.finish(WELCOME)
    return respond


def client_login(direct_tls: bool = False) -> Callable[[], ClientLogin]:
    return lambda: ClientLogin(direct_tls=direct_tls)


STARTUP = Startup({"user": "app", "database": "appdb"}, "app", "appdb")


def check_client(peer: Peer, respond: Respond, direct_tls: bool = False) -> Transcript:
    """The transcript of whole turns, after checking every split gives it too."""
    expected = converse(ClientLogin(direct_tls=direct_tls), peer, respond)
    assert_split_invariant(client_login(direct_tls), peer, respond, expected, 1)
    return expected


def test_trust_login_welcomes_and_keeps_the_bytes_after_it():
    t = check_client(libpq(first=b"", after_login=b""), pgpool_adapter("trust"))
    assert t.events == [STARTUP]
    assert t.written == m.AUTHENTICATION_OK + WELCOME
    assert t.error is None and t.of("rest") == [b""]

    # A client that pipelines a query behind its startup packet: the data plane gets it.
    def eager(_first: bytes) -> Turns:
        yield m.startup_message({"user": "app"}) + QUERY
    t = check_client(eager, pgpool_adapter("trust"))
    assert t.events == [Startup({"user": "app"}, "app", "app")]   # database defaults to the user
    assert t.of("rest") == [QUERY]


def test_plain_login():
    t = check_client(libpq(after_login=QUERY), pgpool_adapter("plain"))
    assert t.events == [STARTUP, Password(PASSWORD)]
    assert t.written == m.AUTHENTICATION_CLEARTEXT + m.AUTHENTICATION_OK + WELCOME
    assert t.of("rest") == [QUERY]


def test_plain_login_with_a_wrong_password_fails_in_the_adapter():
    t = check_client(libpq(password="wrong"), pgpool_adapter("plain"))
    assert t.events == [STARTUP, Password("wrong")]
    assert t.error == ("28P01", 'password authentication failed for user "app"')
    assert t.written == m.AUTHENTICATION_CLEARTEXT


def test_md5_login():
    t = check_client(libpq(), pgpool_adapter("md5", secret=auth.md5_secret("app", PASSWORD)))
    response = auth.md5_response(PASSWORD, "app", SALT)
    assert t.events == [STARTUP, Password(response)]
    assert t.written == m.authentication_md5(SALT) + m.AUTHENTICATION_OK + WELCOME


def test_scram_login_against_a_real_scram_client():
    t = check_client(libpq(after_login=QUERY), pgpool_adapter("scram"))
    [startup, done] = t.events
    assert startup == STARTUP and isinstance(done, ScramDone)
    # The proven ClientKey is the one the password derives: it serves pass-through to servers.
    salted = scram.hashlib.pbkdf2_hmac("sha256", PASSWORD.encode(), VERIFIER.salt, VERIFIER.iterations)
    assert done.client_key == scram._hmac(salted, b"Client Key")
    written = messages(t.written)
    assert [kind for kind, _ in written] == [b"R"] * 4 + [b"S", b"S", b"K", b"Z"]
    assert [m.parse_authentication(body)[0] for _, body in written[:4]] == [10, 11, 12, 0]
    assert t.of("rest") == [QUERY]


@pytest.mark.parametrize("password, known", [("wrong", True), (PASSWORD, False)])
def test_scram_refusals_look_the_same(password, known):
    # A wrong proof, and a right one for an unknown user (fake verifier): one error, after the exchange.
    t = check_client(libpq(password=password), pgpool_adapter("scram", known=known))
    assert t.events == [STARTUP]
    assert t.error == ("28P01", 'password authentication failed for user "app"')
    assert [m.parse_authentication(body)[0] for _, body in messages(t.written)] == [10, 11]


def test_scram_with_another_mechanism_is_refused():
    def plus(_first: bytes) -> Turns:
        yield m.startup_message({"user": "app"})
        yield m.sasl_initial_response("SCRAM-SHA-256-PLUS", b"p=tls-server-end-point,,n=,r=abc")
    t = check_client(plus, pgpool_adapter("scram"))
    assert t.error == ("08P01", "client selected an invalid SASL authentication mechanism 'SCRAM-SHA-256-PLUS'")


def test_a_malformed_scram_first_message_fails_as_a_wrong_password():
    def broken(_first: bytes) -> Turns:
        yield m.startup_message({"user": "app"})
        yield m.sasl_initial_response("SCRAM-SHA-256", b"garbage")
    t = check_client(broken, pgpool_adapter("scram"))
    assert t.error == ("28P01", 'password authentication failed for user "app"')


@pytest.mark.parametrize("method", ["plain", "md5", "scram"])
def test_another_message_instead_of_the_password_is_a_protocol_violation(method):
    def impatient(_first: bytes) -> Turns:
        yield m.startup_message({"user": "app"})
        yield QUERY
    t = check_client(impatient, pgpool_adapter(method))
    assert t.error == ("08P01", "expected password response, got message type 'Q'")


@pytest.mark.parametrize("length, error", [(3, "invalid message length 3 from client during login"),
                                           (10001, "invalid message length 10001 from client during login")])
def test_password_message_length_is_bounded(length, error):
    def bad(_first: bytes) -> Turns:
        yield m.startup_message({"user": "app"})
        yield b"p" + _int32.pack(length)
    t = check_client(bad, pgpool_adapter("plain"))
    assert t.error == ("08P01", error)


def test_a_password_without_terminator_is_refused():
    def bad(_first: bytes) -> Turns:
        yield m.startup_message({"user": "app"})
        yield frame(b"p", b"pencil")
    assert check_client(bad, pgpool_adapter("plain")).error == ("08P01", "malformed password message")


@pytest.mark.parametrize("accept", [False, True])
def test_ssl_request_is_asked_of_the_adapter(accept):
    t = check_client(libpq(ssl=True), pgpool_adapter("trust", accept_ssl=accept))
    assert t.events == [SslRequest(gssenc=False), STARTUP]
    assert t.written == (b"S" if accept else b"N") + m.AUTHENTICATION_OK + WELCOME


def test_gssenc_request_is_answered_no_then_ssl_may_follow():
    def gss_then_ssl(_first: bytes) -> Turns:
        assert (yield GSSENC_REQUEST) == b"N"
        assert (yield SSL_REQUEST) == b"S"
        yield m.startup_message({"user": "app"})
    t = check_client(gss_then_ssl, pgpool_adapter("trust", accept_ssl=True))
    assert t.events[:2] == [SslRequest(gssenc=True), SslRequest(gssenc=False)]


def test_a_second_ssl_request_inside_tls_is_refused():
    def twice(_first: bytes) -> Turns:
        yield SSL_REQUEST
        yield SSL_REQUEST
    t = check_client(twice, pgpool_adapter("trust", accept_ssl=True))
    assert t.error == ("08P01", "SSLRequest/GSSENCRequest inside a TLS session")


def test_bytes_after_ssl_request_before_the_answer_are_refused():
    # Bytes that came with the SSLRequest, before pgpool answered, could be spliced into the TLS
    # session. Only the whole read shows them: cut after the request, they come after the answer.
    t = converse(ClientLogin(), script(SSL_REQUEST + m.startup_message({"user": "app"})),
                 pgpool_adapter("trust", accept_ssl=True))
    assert t.error == ("08P01", "unexpected data after SSLRequest/GSSENCRequest") and t.written == b""
    t = converse(ClientLogin(), script(SSL_REQUEST + m.startup_message({"user": "app"})),
                 pgpool_adapter("trust"), lambda _n, data: [data[:8], data[8:]])
    assert t.events == [SslRequest(False), Startup({"user": "app"}, "app", "app")]


def test_direct_tls_hands_the_client_hello_over():
    hello = b"\x16\x03\x01\x00\x05hello"
    t = check_client(libpq(direct_tls=hello), pgpool_adapter("trust"), direct_tls=True)
    assert t.events == [DirectTls(), STARTUP]
    assert t.of("tls") == [hello]
    assert t.written == m.AUTHENTICATION_OK + WELCOME
    # Without TLS configured, 0x16... is read as a startup packet length, as before.
    t = converse(ClientLogin(), script(hello), pgpool_adapter("trust"))
    assert t.error == ("08P01", f"invalid startup packet length {_int32.unpack(hello[:4])[0]}")


def test_a_second_ssl_request_after_direct_tls_is_refused():
    def twice(_first: bytes) -> Turns:
        yield b"\x16\x03\x01"
        yield SSL_REQUEST
    t = check_client(twice, pgpool_adapter("trust"), direct_tls=True)
    assert t.error == ("08P01", "SSLRequest/GSSENCRequest inside a TLS session")


def test_cancel_request_ends_the_login():
    t = check_client(script(m.cancel_request(1234, 5678)), pgpool_adapter("trust"))
    assert t.events == [CancelRequest(1234, 5678)] and t.written == b""
    t = check_client(script(packet(CANCEL_REQUEST_CODE, b"\x00\x00\x00\x01")), pgpool_adapter("trust"))
    assert t.error == ("08P01", "invalid CancelRequest length")


@pytest.mark.parametrize("data, error", [
    (_int32.pack(4) + b"\x00" * 4, ("08P01", "invalid startup packet length 4")),
    (_int32.pack(7), ("08P01", "invalid startup packet length 7")),
    (_int32.pack(10001), ("08P01", "invalid startup packet length 10001")),
    (packet(2 << 16, b"user\x00u\x00\x00"), ("0A000", "unsupported frontend protocol 2.0: server supports 3.0")),
    (packet(3 << 16, b"user\x00u\x00"), ("08P01", "invalid startup packet layout: expected terminator as last byte")),
    (packet(3 << 16, b"database\x00d\x00\x00"), ("28000", "no PostgreSQL user name specified in startup packet")),
])
def test_bad_startup_packets(data, error):
    t = check_client(script(data), pgpool_adapter("trust"))
    assert t.error == error and t.written == b""


def test_a_newer_minor_version_and_protocol_options_are_negotiated():
    body = b"user\x00app\x00_pq_.compress\x00on\x00\x00"
    t = check_client(script(packet(3 << 16 | 2, body)), pgpool_adapter("trust"))
    assert t.events == [Startup({"user": "app", "_pq_.compress": "on"}, "app", "app")]
    assert t.written == m.negotiate_protocol_version(0, ["_pq_.compress"]) + m.AUTHENTICATION_OK + WELCOME
    # Written before the error that follows it, as a server does.
    t = check_client(script(packet(3 << 16 | 1, b"\x00")), pgpool_adapter("trust"))
    assert t.written == m.negotiate_protocol_version(0, [])
    assert t.error == ("28000", "no PostgreSQL user name specified in startup packet")


def test_eof_is_seen_and_steps_out_of_order_are_bugs():
    login = ClientLogin()
    login.receive_data(m.startup_message({"user": "app"})[:5])
    login.receive_eof()
    assert login.next_event() is NEED_DATA and login.eof
    with pytest.raises(RuntimeError):
        login.authenticated()
    with pytest.raises(RuntimeError):
        ClientLogin().start_direct_tls()


# ---- the server role: ServerLogin against a Postgres-like server ---------------------------------

SERVER_WELCOME = (m.parameter_status("server_version", "15.4") + m.parameter_status("TimeZone", "UTC")
                  + m.backend_key_data(99, 12345) + m.READY_FOR_QUERY_IDLE)
NOTICE = m.notice_response("hello")


def postgres(method: str = "trust", *, password: str = PASSWORD, ssl: bytes | None = None,
             after_ssl: bytes = b"", welcome_: bytes = SERVER_WELCOME, query_reply: bytes = b"",
             verifier: scram.ScramVerifier = VERIFIER) -> Peer:
    """A server that checks what pgpool sends, as Postgres would, and answers per `method`."""
    def turns(first: bytes) -> Turns:
        out = first
        if ssl is not None:
            assert out == m.SSL_REQUEST
            out = yield ssl + after_ssl
        length = _int32.unpack_from(out, 0)[0]
        assert len(out) == length
        params = m.parse_startup_parameters(out[8:])
        assert params["user"] == "app"
        if method == "trust":
            out = yield m.AUTHENTICATION_OK + NOTICE + welcome_
        elif method == "cleartext":
            out = yield m.AUTHENTICATION_CLEARTEXT
            [(kind, body)] = messages(out)
            ok = m.parse_password(body) == password
            out = yield m.AUTHENTICATION_OK + welcome_ if ok else error_response("28P01", "bad password", severity="FATAL")
        elif method == "md5":
            out = yield m.authentication_md5(SALT)
            [(kind, body)] = messages(out)
            ok = m.parse_password(body) == auth.md5_response(password, "app", SALT)
            out = yield m.AUTHENTICATION_OK + welcome_ if ok else error_response("28P01", "bad md5", severity="FATAL")
        elif method == "scram":
            server = scram.ScramServer(verifier, nonce=SERVER_NONCE)
            out = yield m.authentication_sasl(["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"])
            [(kind, body)] = messages(out)
            mechanism, data = m.parse_sasl_initial_response(body)
            assert mechanism == "SCRAM-SHA-256"
            out = yield m.authentication_sasl_continue(server.handle_client_first(data))
            [(kind, body)] = messages(out)
            try:
                final = server.handle_client_final(body)
            except scram.ScramError:
                out = yield error_response("28P01", "password authentication failed", severity="FATAL")
            else:
                out = yield m.authentication_sasl_final(final) + m.AUTHENTICATION_OK + welcome_
        if query_reply:
            assert out == QUERY
            yield query_reply
    return turns


def pgpool_server_adapter(*, password: str | None = PASSWORD, keys: tuple[bytes, bytes] | None = None,
                          ssl: bool = False, connect_query: bool = False) -> Respond:
    """What server.py does with each event: SSLRequest first, the startup, passwords, SCRAM."""
    def respond(login: ServerLogin, event: object, t: Transcript) -> None:
        if event is None:
            if ssl:
                login.request_ssl()
            else:
                login.send_startup({"user": "app", "database": "appdb"})
        elif isinstance(event, SslAnswer):
            if event.answer not in (b"S", b"N"):
                raise ProtocolError("08006", f"received invalid response to SSL negotiation: {event.answer!r}")
            login.send_startup({"user": "app", "database": "appdb"})
        elif isinstance(event, PasswordRequest):
            if password is None:
                raise ProtocolError("28P01", "no usable password")
            login.send_password(password if event.method == "cleartext" else
                                auth.md5_response(password, "app", event.salt))
        elif isinstance(event, ScramRequest):
            if keys is not None:
                login.start_scram(scram.ScramClient(client_key=keys[0], server_key=keys[1], nonce=CLIENT_NONCE))
            else:
                login.start_scram(scram.ScramClient(password, nonce=CLIENT_NONCE))
        elif isinstance(event, Ready) and connect_query and not t.of("query"):
            t.add("query", "sent")
            login.send_query("SELECT 1")
    return respond


def server_login(max_message: int = 1 << 20) -> Callable[[], ServerLogin]:
    return lambda: ServerLogin(max_message, "appdb/app", "db1:5432", "db1:5432")


def check_server(peer: Peer, respond: Respond, max_message: int = 1 << 20) -> tuple[Transcript, ServerLogin]:
    login = server_login(max_message)()
    expected = converse(login, peer, respond)
    assert_split_invariant(server_login(max_message), peer, respond, expected, 1)
    return expected, login


STARTUP_BYTES = m.startup_message({"user": "app", "database": "appdb"})


def assert_logged_in(login: ServerLogin) -> None:
    assert login.reported == {"server_version": "15.4", "TimeZone": "UTC"}
    assert (login.backend_pid, login.backend_key, login.tx_status) == (99, 12345, ord("I"))


def test_server_trust_login_records_parameters_and_key():
    t, login = check_server(postgres("trust"), pgpool_server_adapter())
    assert t.events == [Ready(ord("I"))] and t.error is None
    assert t.written == STARTUP_BYTES
    assert_logged_in(login)


@pytest.mark.parametrize("method", ["cleartext", "md5"])
def test_server_password_logins(method):
    t, login = check_server(postgres(method), pgpool_server_adapter())
    salt = SALT if method == "md5" else b""
    assert t.events == [PasswordRequest(method, salt), Ready(ord("I"))]
    sent = PASSWORD if method == "cleartext" else auth.md5_response(PASSWORD, "app", SALT)
    assert t.written == STARTUP_BYTES + m.password_message(sent)
    assert_logged_in(login)


@pytest.mark.parametrize("method", ["cleartext", "md5"])
def test_server_refusal_passes_its_sqlstate_and_message(method):
    t, _ = check_server(postgres(method, password="other"), pgpool_server_adapter())
    assert t.error == ("28P01", "bad password" if method == "cleartext" else "bad md5")


def test_server_scram_login_with_password_and_with_pass_through_keys():
    t, login = check_server(postgres("scram"), pgpool_server_adapter())
    assert t.events == [ScramRequest(), Ready(ord("I"))] and t.error is None
    assert [kind for kind, _ in messages(t.written[len(STARTUP_BYTES):])] == [b"p", b"p"]
    assert_logged_in(login)
    salted = scram.hashlib.pbkdf2_hmac("sha256", PASSWORD.encode(), VERIFIER.salt, VERIFIER.iterations)
    keys = (scram._hmac(salted, b"Client Key"), VERIFIER.server_key)
    t, login = check_server(postgres("scram"), pgpool_server_adapter(password=None, keys=keys))
    assert t.events == [ScramRequest(), Ready(ord("I"))]


def test_server_scram_wrong_password_and_forged_server_signature():
    t, _ = check_server(postgres("scram"), pgpool_server_adapter(password="wrong"))
    assert t.error == ("28P01", "password authentication failed")
    # A server that does not know the verifier cannot prove it: pgpool stops before AuthenticationOk.
    other = scram.make_verifier("different", salt=b"startup-test-salt", iterations=16)
    impostor = scram.ScramVerifier(other.iterations, other.salt, VERIFIER.stored_key, other.server_key)
    t, _ = check_server(postgres("scram", verifier=impostor), pgpool_server_adapter())
    assert t.error == ("28P01", "SCRAM login to server failed for pool appdb/app: SCRAM server signature does "
                                "not match: the server could not prove it knows the password")


@pytest.mark.parametrize("reply, error", [
    (m.authentication_sasl(["SCRAM-SHA-256-PLUS"]), ("0A000", "server offers no supported SASL mechanism for pool appdb/app")),
    (frame(b"R", _int32.pack(7)), ("0A000", "server asked for unsupported authentication method 7 for pool appdb/app")),
    (m.authentication_sasl_continue(b"r=x"),
     ("0A000", "server asked for unsupported authentication method 11 for pool appdb/app")),
    (frame(b"R", b"\x00"), ("08P01", "invalid authentication message")),
    (error_response("3D000", 'database "appdb" does not exist', severity="FATAL"),
     ("3D000", 'database "appdb" does not exist')),
    (frame(b"E", b"\x00"), ("08006", "server login failed")),
    (b"Z" + _int32.pack((1 << 20) + 1), ("08P01", f"invalid message length {(1 << 20) + 1} from server during login")),
    (b"Z" + _int32.pack(3), ("08P01", "invalid message length 3 from server during login")),
])
def test_server_login_failures(reply, error):
    t, _ = check_server(script(reply), pgpool_server_adapter())
    assert t.error == error


def test_server_error_carries_the_pool_in_its_detail():
    login = server_login()()
    login.send_startup({"user": "app"})
    login.receive_data(error_response("53300", "sorry, too many clients already", severity="FATAL"))
    with pytest.raises(ProtocolError) as caught:
        login.next_event()
    assert caught.value.detail == "pgpool pool appdb/app could not log into server db1:5432"


def test_server_ignores_notices_and_protocol_negotiation():
    reply = m.AUTHENTICATION_OK + m.negotiate_protocol_version(0, []) + NOTICE + SERVER_WELCOME
    t, login = check_server(script(reply), pgpool_server_adapter())
    assert t.events == [Ready(ord("I"))]
    assert_logged_in(login)


@pytest.mark.parametrize("answer", [b"S", b"N", b"E"])
def test_server_ssl_answer_is_reported(answer):
    t, login = check_server(postgres("trust", ssl=answer), pgpool_server_adapter(ssl=True))
    assert t.events[0] == SslAnswer(answer)
    if answer == b"E":
        assert t.error == ("08006", "received invalid response to SSL negotiation: b'E'")
    else:
        assert t.written == m.SSL_REQUEST + STARTUP_BYTES and t.events[1:] == [Ready(ord("I"))]


def test_server_bytes_after_ssl_yes_are_refused():
    # CVE-2021-23222: what a server (or a man in the middle) sends before the handshake is refused.
    peer = postgres("trust", ssl=b"S", after_ssl=m.AUTHENTICATION_OK)
    t = converse(server_login()(), peer, pgpool_server_adapter(ssl=True))
    assert t.error == ("08P01", "server sent unencrypted data after SSL response: server db1:5432 for pool appdb/app")
    t = converse(server_login()(), postgres("trust", ssl=b"N", after_ssl=b"x"), pgpool_server_adapter(ssl=True))
    assert t.events[0] == SslAnswer(b"N")   # in clear anyway: the byte is read as the login's
    assert t.error is not None and "unencrypted" not in t.error[1]


def test_connect_query_records_parameters_and_fails_on_error():
    ok = m.parameter_status("search_path", "app") + m.command_complete("SELECT 1") + m.READY_FOR_QUERY_IDLE
    t, login = check_server(postgres("trust", query_reply=ok), pgpool_server_adapter(connect_query=True))
    assert t.events == [Ready(ord("I")), Ready(ord("I"))] and t.error is None
    assert t.written == STARTUP_BYTES + QUERY
    assert login.reported["search_path"] == "app"
    failed = (error_response("42P01", 'relation "x" does not exist') + error_response("XX000", "second")
              + m.READY_FOR_QUERY_IDLE)
    t, _ = check_server(postgres("trust", query_reply=failed), pgpool_server_adapter(connect_query=True))
    assert t.error == ("42P01", 'connect_query failed for pool appdb/app: relation "x" does not exist')
    t, _ = check_server(postgres("trust", query_reply=frame(b"E", b"\x00") + m.READY_FOR_QUERY_IDLE),
                        pgpool_server_adapter(connect_query=True))
    assert t.error == ("08P01", "connect_query failed for pool appdb/app: ")


def test_server_steps_out_of_order_are_bugs():
    login = server_login()()
    with pytest.raises(RuntimeError):
        login.send_password("x")
    login.send_startup({"user": "app"})
    with pytest.raises(RuntimeError):
        login.request_ssl()


# ---- random chunks: every scripted conversation, any cut -------------------------------------------

CONVERSATIONS = {
    "client trust": (client_login(), libpq(after_login=QUERY), pgpool_adapter("trust")),
    "client plain": (client_login(), libpq(after_login=QUERY), pgpool_adapter("plain")),
    "client md5": (client_login(), libpq(), pgpool_adapter("md5", secret=auth.md5_secret("app", PASSWORD))),
    "client scram ssl": (client_login(), libpq(ssl=True, after_login=QUERY), pgpool_adapter("scram", accept_ssl=True)),
    "client direct tls": (client_login(True), libpq(direct_tls=b"\x16\x03\x01xyz"), pgpool_adapter("plain")),
    "client scram wrong": (client_login(), libpq(password="nope"), pgpool_adapter("scram")),
    "server trust": (server_login(), postgres("trust", query_reply=m.READY_FOR_QUERY_IDLE),
                     pgpool_server_adapter(connect_query=True)),
    "server md5 ssl": (server_login(), postgres("md5", ssl=b"S"), pgpool_server_adapter(ssl=True)),
    "server scram": (server_login(), postgres("scram"), pgpool_server_adapter()),
    "server cleartext wrong": (server_login(), postgres("cleartext", password="x"), pgpool_server_adapter()),
}


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(sorted(CONVERSATIONS)), st.lists(st.integers(1, 40), min_size=1, max_size=12))
def test_any_chunking_gives_the_same_transcript(name, sizes):
    factory, peer, respond = CONVERSATIONS[name]
    expected = converse(factory(), peer, respond)
    assert expected.events, name
    assert converse(factory(), peer, respond, random_chunker(sizes)).items == expected.items


def test_the_welcome_is_parameters_key_and_ready():
    assert messages(WELCOME) == [(b"S", b"server_version\x0015.0\x00"), (b"S", b"client_encoding\x00UTF8\x00"),
                                 (b"K", _int32.pack(4242) + _int32.pack(77)), (b"Z", b"I")]
